"""Cluster DNS answers (sans-IO): Service A records, empty parents, NXDOMAIN for the rest."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from nodemesh.runtime.dns import (
    NOERROR,
    NXDOMAIN,
    TYPE_AAAA,
    DnsResolver,
    build_query,
    parse_question,
    parse_response,
)

RESOLVER = DnsResolver({"orders.shop.svc.cluster.local": IPv4Address("10.96.0.2")})


def test_service_fqdn_resolves_to_its_cluster_ip() -> None:
    """Kubernetes DNS: "Normal (not headless) Services are assigned a DNS A record for a name of
    the form my-svc.my-namespace.svc.cluster-domain.example. This resolves to the cluster IP"."""
    answer = RESOLVER.respond(build_query("orders.shop.svc.cluster.local", ident=7))
    assert answer is not None
    assert struct.unpack("!H", answer[:2])[0] == 7
    assert parse_response(answer) == (NOERROR, [IPv4Address("10.96.0.2")])
    assert parse_response(RESOLVER.respond(build_query("ORDERS.Shop.svc.cluster.local.")) or b"")[1] == [
        IPv4Address("10.96.0.2")
    ]


def test_search_list_candidates_that_do_not_exist_are_nxdomain() -> None:
    """A pod in `shop` looking up `orders.shop` first tries `orders.shop.shop.svc.cluster.local`
    (search list, ndots:5); that must be NXDOMAIN so the resolver moves on to the next domain."""
    assert RESOLVER.lookup("orders.shop.shop.svc.cluster.local", 1) == (NXDOMAIN, [])
    assert RESOLVER.lookup("orders.shop.svc.cluster.local", 1)[1] == [IPv4Address("10.96.0.2")]


def test_names_outside_the_zone_are_nxdomain_never_forwarded() -> None:
    for name in ("example.com", "orders", "orders.shop", "localhost", "cluster.local.evil.com"):
        assert RESOLVER.lookup(name, 1) == (NXDOMAIN, []), name


def test_parents_and_other_types_of_existing_names_are_empty_noerror() -> None:
    """CoreDNS answers NOERROR with no records (NODATA) for a name that exists without the type
    asked, and for the namespace's `svc` parent names."""
    assert RESOLVER.lookup("orders.shop.svc.cluster.local", TYPE_AAAA) == (NOERROR, [])
    assert RESOLVER.lookup("shop.svc.cluster.local", 1) == (NOERROR, [])


def test_answers_are_authoritative_and_copy_recursion_desired() -> None:
    answer = RESOLVER.respond(build_query("orders.shop.svc.cluster.local"))
    assert answer is not None
    flags = struct.unpack("!H", answer[2:4])[0]
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0100 and not flags & 0x0080


def test_malformed_queries_get_formerr_or_are_dropped() -> None:
    assert RESOLVER.respond(b"\x00\x01") is None
    bad = struct.pack("!HHHHHH", 9, 0x0100, 2, 0, 0, 0)
    answer = RESOLVER.respond(bad)
    assert answer is not None and answer[3] & 0xF == 1


@given(st.binary(max_size=300))
def test_any_bytes_get_an_answer_or_nothing_never_an_exception(data: bytes) -> None:
    RESOLVER.respond(data)


def test_question_round_trip() -> None:
    q = parse_question(build_query("a.b.c", 28, ident=3))
    assert (q.id, q.name, q.qtype) == (3, "a.b.c", 28)


def test_udp_and_tcp_shell_on_loopback() -> None:
    """RFC 1035 §4.2.2: over TCP a message is prefixed with its two-byte length."""
    import asyncio
    import socket

    from nodemesh.runtime.dns import serve

    async def run() -> tuple[bytes, bytes]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.setblocking(False)
        tcp.setblocking(False)
        server = await serve(RESOLVER, udp, tcp)
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        await loop.sock_connect(client, udp.getsockname())
        await loop.sock_sendall(client, build_query("orders.shop.svc.cluster.local"))
        by_udp = await asyncio.wait_for(loop.sock_recv(client, 512), 2)
        client.close()
        r, w = await asyncio.open_connection(*tcp.getsockname())
        query = build_query("nope.cluster.local")
        w.write(struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", await r.readexactly(2))[0]
        by_tcp = await r.readexactly(size)
        w.close()
        server.close()
        return by_udp, by_tcp

    by_udp, by_tcp = asyncio.run(run())
    assert parse_response(by_udp) == (NOERROR, [IPv4Address("10.96.0.2")])
    assert parse_response(by_tcp) == (NXDOMAIN, [])
