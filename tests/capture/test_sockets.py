"""SO_ORIGINAL_DST parsing and the socket factory's options, without namespaces or root.

The kernel answers SO_ORIGINAL_DST with a `struct sockaddr_in` (`getorigdst` in
`net/netfilter/nf_conntrack_proto.c`: family in host order, port and address in network order)
or, at SOL_IPV6, a `struct sockaddr_in6` (`ipv6_getorigdst`); ztunnel parses the same bytes in
`ZT:src/socket.rs` `orig_dst_addr`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.capture.errors import NetnsSwitchError, OriginalDestinationError
from nodemesh.capture.sockets import (
    HostSocketFactory,
    PodSocketFactory,
    SocketAddress,
    SocketFactory,
    parse_sockaddr,
)


def sockaddr_in(ip: ipaddress.IPv4Address, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + ip.packed + b"\0" * 8


def sockaddr_in6(ip: ipaddress.IPv6Address, port: int, flow: int = 0, scope: int = 0) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, flow)
        + ip.packed
        + struct.pack("=I", scope)
    )


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_sockaddr_in_round_trips(ip: ipaddress.IPv4Address, port: int) -> None:
    """`struct sockaddr_in`: family (host order), port (network order), address (network order)."""
    assert parse_sockaddr(sockaddr_in(ip, port)) == SocketAddress(ip, port)


@given(st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 2**20 - 1))
def test_sockaddr_in6_round_trips(ip: ipaddress.IPv6Address, port: int, flow: int) -> None:
    """`struct sockaddr_in6`: family, port, flowinfo, 16-byte address, scope id."""
    assert parse_sockaddr(sockaddr_in6(ip, port, flow)) == SocketAddress(ip, port)


def test_known_bytes() -> None:
    """10.244.1.2:8080 as the kernel lays it out: port 8080 is bytes 0x1f 0x90 on any host."""
    raw = struct.pack("=H", socket.AF_INET) + bytes([0x1F, 0x90, 10, 244, 1, 2]) + b"\0" * 8
    addr = parse_sockaddr(raw)
    assert str(addr) == "10.244.1.2:8080" and addr.as_tuple() == ("10.244.1.2", 8080)
    assert str(SocketAddress(ipaddress.IPv6Address("fd00::1"), 443)) == "[fd00::1]:443"


def test_short_or_foreign_sockaddrs_are_errors() -> None:
    """Anything but AF_INET/AF_INET6 of the right size is refused, never guessed at."""
    with pytest.raises(OriginalDestinationError):
        parse_sockaddr(b"\x02\x00")
    with pytest.raises(OriginalDestinationError):
        parse_sockaddr(struct.pack("=H", socket.AF_UNIX) + b"\0" * 14)
    with pytest.raises(OriginalDestinationError):
        parse_sockaddr(struct.pack("=H", socket.AF_INET6) + b"\0" * 14)  # truncated sockaddr_in6


def test_host_factory_makes_nonblocking_sockets_ready_for_asyncio() -> None:
    """ztunnel hands tokio non-blocking sockets (`set_nonblocking(true)`); asyncio needs the same."""
    factory: SocketFactory = HostSocketFactory()  # both factories satisfy the seam (mypy checks)
    pod_seam: type[SocketFactory] = PodSocketFactory
    assert pod_seam is PodSocketFactory
    listener = factory.tcp_bind(0, "127.0.0.1")
    try:
        assert listener.getblocking() is False
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert listener.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()
    client = factory.new_tcp()
    try:
        assert client.getblocking() is False and client.type == socket.SOCK_STREAM
    finally:
        client.close()


def test_closed_pod_factory_refuses_to_switch() -> None:
    """A factory whose namespace was released must not fall back to the caller's namespace."""
    factory = PodSocketFactory("/proc/self/ns/net", mark=None)
    factory.close()
    factory.close()  # idempotent
    with pytest.raises(NetnsSwitchError) as err:
        factory.new_tcp()
    assert err.value.thread_stranded is False
