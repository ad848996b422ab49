"""What the policy engine evaluates: a connection (L3/L4) and, where a proxy sees it, a request.

These are plain values built once per flow by whoever asks (the node proxy, the waypoint,
`nodemesh trace`). Every attribute a policy API can match on is here, already resolved:
a pod's labels, its namespace's labels, Cilium's identity labels, its verified SPIFFE principal
(None for plaintext: identities come only from verified certificates), its reserved entities.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

__all__ = ["EMPTY", "Endpoint", "FlowContext", "HttpRequest", "Jwt", "NamedPort", "Protocol"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EMPTY: Mapping[str, str] = MappingProxyType({})


class Protocol(Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"
    ICMP = "ICMP"


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a flow: a pod of the cluster, or an address outside it.

    `principal` is the peer's SPIFFE id without `spiffe://` (`cluster.local/ns/shop/sa/frontend`),
    set only when the connection is mTLS with a verified certificate; plaintext has None.
    `entities` are the Cilium reserved entities the endpoint belongs to (`world`, `host`,
    `remote-node`, `cluster`, ...): a pod is in `cluster`, an outside address in `world`.
    `key` is a cheap hashable identity for caches (derived; never compared).
    """

    ip: IPAddress | None = None
    namespace: str | None = None
    workload: str | None = None
    pod: str | None = None
    service_account: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    namespace_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    identity_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    principal: str | None = None
    entities: frozenset[str] = frozenset({"world"})
    ports: tuple[NamedPort, ...] = ()
    node: str | None = None
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A cheap, hashable identity for caches keyed by flow: `ns/pod|principal`, or the IP.
        if not self.key:
            key = f"{self.namespace}/{self.pod}|{self.principal or ''}" if self.pod else str(self.ip)
            object.__setattr__(self, "key", key)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None and self.workload is not None

    @property
    def trust_domain(self) -> str | None:
        return self.principal.split("/", 1)[0] if self.principal else None

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol is protocol:
                return p.port
        return None

    def __str__(self) -> str:
        if self.is_pod:
            return f"{self.namespace}/{self.workload}"
        return str(self.ip) if self.ip is not None else "<unknown>"


@dataclass(frozen=True, slots=True)
class Jwt:
    """A request's JWT as the waypoint sees it after RequestAuthentication."""

    claims: Mapping[str, object] = field(default_factory=dict)
    valid: bool = True
    error: str | None = None
    """Why verification failed, in Envoy's words (jwt_verify_lib `getStatusString`, e.g. "Jwt is
    expired", "Audiences in Jwt are not allowed"); None: "Jwt verification fails"."""

    @property
    def request_principal(self) -> str | None:
        """`<iss>/<sub>`, as Istio's requestPrincipals match it."""
        iss, sub = self.claims.get("iss"), self.claims.get("sub")
        return f"{iss}/{sub}" if iss is not None and sub is not None else None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request (L7). Header names are lower-case; `host` is the :authority."""

    method: str = "GET"
    path: str = "/"
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    jwt: Jwt | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class FlowContext:
    """A connection from `src` to `dst:port/protocol`, and the request on it if one is seen.

    `port` is the destination (container/target) port: policies apply after service translation.
    """

    src: Endpoint
    dst: Endpoint
    port: int
    protocol: Protocol = Protocol.TCP
    request: HttpRequest | None = None

    def with_src(self, src: Endpoint) -> FlowContext:
        return FlowContext(src, self.dst, self.port, self.protocol, self.request)

    def without_request(self) -> FlowContext:
        return FlowContext(self.src, self.dst, self.port, self.protocol, None)
