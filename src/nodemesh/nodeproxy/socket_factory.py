"""The seam every node proxy socket is opened through (ztunnel's `proxy::SocketFactory`).

The same proxy code binds in the node's namespace, inside a pod's namespace (ztunnel's in-pod
mode: `setns` into the pod, `socket()`, switch back; `nodemesh.capture.sockets.PodSocketFactory`
implements this Protocol), with or without `SO_MARK` 0x539 — the mark the in-pod rules exempt
from capture so the proxy's own connections are not redirected back to it (reference §3).

`OriginalDestination` is the second seam: where a captured connection was really going
(SO_ORIGINAL_DST after the in-pod REDIRECT). Tests and benchmarks without capture plug in a
fixed mapping instead.

Sockets are returned non-blocking, ready for asyncio.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "INPOD_MARK",
    "LISTEN_BACKLOG",
    "MarkedSocketFactory",
    "OriginalDestination",
    "SocketFactory",
    "bind_source",
    "so_original_dst",
]

INPOD_MARK = 0x539  # 1337, ztunnel's PACKET_MARK in shared mode
LISTEN_BACKLOG = 1024
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80
SOL_IPV6 = 41
IP_FREEBIND = 15  # linux/in.h
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not bind()
IPV6_TRANSPARENT = 75

OriginalDestination = Callable[[socket.socket], tuple[str, int]]
"""Where an accepted (captured) connection was headed: `(ip, port)`; OSError if unknown."""


class SocketFactory(Protocol):
    """How the node proxy opens its sockets (listeners, upstream and transparent connectors)."""

    def tcp_bind(
        self, port: int, host: str = "0.0.0.0", *, backlog: int = LISTEN_BACKLOG, transparent: bool = False
    ) -> socket.socket:
        """A listening TCP socket on `host:port`."""
        ...

    def new_tcp(self, family: int = socket.AF_INET) -> socket.socket:
        """An unconnected TCP socket for a connection the proxy originates."""
        ...

    def transparent_tcp(self, source: str) -> socket.socket:
        """An unconnected TCP socket bound to `source` with IP_TRANSPARENT (the original client's
        address, which need not be local): ztunnel's `freebind_connect`."""
        ...


class MarkedSocketFactory:
    """Sockets in the caller's own namespace, marked with `mark` (None: unmarked)."""

    def __init__(self, *, mark: int | None = INPOD_MARK, reuse_port: bool = False) -> None:
        self.mark = mark
        self.reuse_port = reuse_port

    def _new(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def tcp_bind(
        self, port: int, host: str = "0.0.0.0", *, backlog: int = LISTEN_BACKLOG, transparent: bool = False
    ) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._new(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:
                _set_transparent(sock)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def new_tcp(self, family: int = socket.AF_INET) -> socket.socket:
        return self._new(family)

    def transparent_tcp(self, source: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        sock = self._new(family)
        try:
            _set_transparent(sock)
            bind_source(sock, source)
        except BaseException:
            sock.close()
            raise
        return sock


def _set_transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)


def bind_source(sock: socket.socket, source: str) -> None:
    """Bind an outgoing socket to `source` with its port chosen at connect() time
    (IP_BIND_ADDRESS_NO_PORT): `bind(ip, 0)` would search the ephemeral range for a port unused
    by ANY socket on that address, which becomes milliseconds under connection churn."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """SO_ORIGINAL_DST of an accepted IPv4/IPv6 connection (conntrack's original tuple)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), int(port)
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    if len(raw) < 8:
        raise OSError(errno.EINVAL, "short SO_ORIGINAL_DST answer")
    port = struct.unpack_from("!H", raw, 2)[0]
    return str(ipaddress.IPv4Address(raw[4:8])), int(port)
