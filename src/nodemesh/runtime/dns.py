"""The cluster DNS: `<svc>.<ns>.svc.cluster.local` to the ClusterIP, NXDOMAIN for everything else.

Semantics (Kubernetes "DNS for Services and Pods"): "Normal (not headless) Services are assigned
a DNS A record for a name of the form `my-svc.my-namespace.svc.cluster-domain.example`. This
resolves to the cluster IP of the Service." The short forms `<svc>` and `<svc>.<ns>` are not
answered by the server: the pod's resolv.conf (`search <ns>.svc.cluster.local svc.cluster.local
cluster.local`, `ndots:5`) makes the resolver try them under the search domains, as in a real
cluster. Names inside the zone that exist only as parents (`shop.svc.cluster.local`) get an
empty NOERROR answer, as CoreDNS gives; every other name gets NXDOMAIN. Unlike CoreDNS, nothing is
ever forwarded: a cluster on this machine must not send a query anywhere (the sandbox has no
route out in any case).

`DnsResolver.respond(query) -> bytes | None` is sans-IO (RFC 1035 §4.1 wire format, one
question, A records with a compression pointer to the question); `serve` is the asyncio shell
for UDP and TCP (RFC 1035 §4.2.2: two-byte length prefix) on sockets made in the DNS pod.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import cast

from nodemesh.runtime.topology import CLUSTER_DOMAIN, ClusterPlan

__all__ = [
    "NOERROR",
    "NXDOMAIN",
    "TYPE_A",
    "TYPE_AAAA",
    "DnsQuestion",
    "DnsResolver",
    "build_query",
    "parse_question",
    "parse_response",
    "serve",
]

log = logging.getLogger(__name__)

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
NOERROR = 0
FORMERR = 1
NXDOMAIN = 3
NOTIMP = 4
TTL = 5  # CoreDNS's kubernetes plugin default


class DnsFormatError(ValueError):
    """The query is not a well-formed DNS message (the peer's fault: answered with FORMERR)."""


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    id: int
    flags: int
    name: str  # lower case, without the trailing dot
    qtype: int
    qclass: int
    wire: bytes  # the question section as received (echoed in the answer)


def parse_question(data: bytes) -> DnsQuestion:
    if len(data) < 12:
        raise DnsFormatError("short header")
    ident, flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions")
    labels = []
    i = 12
    while True:
        if i >= len(data):
            raise DnsFormatError("truncated name")
        length = data[i]
        i += 1
        if length == 0:
            break
        if length & 0xC0 or i + length > len(data):
            raise DnsFormatError("bad label")
        labels.append(data[i : i + length].decode("ascii", "replace").lower())
        i += length
    if i + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[i : i + 4])
    return DnsQuestion(ident, flags, ".".join(labels), qtype, qclass, data[12 : i + 4])


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, qtype: int = TYPE_A, ident: int = 0x4E4D) -> bytes:
    """A standard recursive query (for tests and probes)."""
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + _encode_name(name)
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def parse_response(data: bytes) -> tuple[int, list[IPv4Address]]:
    """(rcode, A addresses) of a response to a one-question query."""
    q = parse_question(data)
    _, flags, _, ancount = struct.unpack("!HHHH", data[:8])
    i = 12 + len(q.wire)
    out = []
    for _ in range(ancount):
        if data[i] & 0xC0:
            i += 2
        else:
            while data[i]:
                i += data[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", data[i : i + 10])
        i += 10
        if rtype == TYPE_A and rdlen == 4:
            out.append(IPv4Address(data[i : i + 4]))
        i += rdlen
    return flags & 0xF, out


class DnsResolver:
    """Answers from a fixed table of service names; pure: bytes in, bytes out."""

    def __init__(self, records: Mapping[str, IPv4Address], zone: str = CLUSTER_DOMAIN) -> None:
        self._records = {k.lower().rstrip("."): v for k, v in records.items()}
        self._zone = zone
        parents: set[str] = set()
        for name in self._records:
            labels = name.split(".")
            parents.update(".".join(labels[i:]) for i in range(1, len(labels)))
        self._parents = frozenset(p for p in parents if p == zone or p.endswith("." + zone))

    @classmethod
    def for_plan(cls, plan: ClusterPlan) -> DnsResolver:
        return cls({s.hostname: s.cluster_ip for s in plan.services})

    def lookup(self, name: str, qtype: int) -> tuple[int, list[IPv4Address]]:
        """(rcode, addresses) for one question."""
        name = name.lower().rstrip(".")
        ip = self._records.get(name)
        if ip is not None:
            return NOERROR, [ip] if qtype == TYPE_A else []
        if name in self._parents:
            return NOERROR, []
        return NXDOMAIN, []

    def respond(self, query: bytes) -> bytes | None:
        """The response to `query`, or None when it is not even a header (dropped, as servers do)."""
        try:
            q = parse_question(query)
        except DnsFormatError:
            if len(query) < 12:
                return None
            ident, flags = struct.unpack("!HH", query[:4])
            return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x0100) | FORMERR, 0, 0, 0, 0)
        opcode = (q.flags >> 11) & 0xF
        if opcode != 0:
            return self._header(q, NOTIMP, 0) + q.wire
        addresses: list[IPv4Address] = []
        if q.qclass != CLASS_IN:
            rcode = NXDOMAIN
        else:
            rcode, addresses = self.lookup(q.name, q.qtype)
        out = self._header(q, rcode, len(addresses)) + q.wire
        for ip in addresses:
            out += struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + ip.packed
        return out

    @staticmethod
    def _header(q: DnsQuestion, rcode: int, ancount: int) -> bytes:
        # QR=1, AA=1 (authoritative for its zone), RD copied, RA=0 (it does not recurse)
        flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | rcode
        return struct.pack("!HHHHHH", q.id, flags, 1, ancount, 0, 0)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: DnsResolver) -> None:
        self._resolver = resolver
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport in 3.11
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        answer = self._resolver.respond(data)
        if answer is not None and self._transport is not None:
            self._transport.sendto(answer, addr)


async def _tcp(resolver: DnsResolver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            answer = resolver.respond(await reader.readexactly(size))
            if answer is None:
                break
            writer.write(struct.pack("!H", len(answer)) + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(resolver: DnsResolver, udp: socket.socket, tcp: socket.socket) -> asyncio.Server:
    """Serve on already-bound sockets (made inside the DNS pod's namespace); returns the TCP
    server, whose `close()` stops both (the UDP transport is closed with the loop)."""
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Udp(resolver), sock=udp)
    return await asyncio.start_server(lambda r, w: _tcp(resolver, r, w), sock=tcp)
