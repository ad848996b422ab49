"""Cilium peer and L7 conditions: the IR's conditions for what only Cilium policies test.

- `IdentityCondition`: fromEndpoints / toEndpoints / fromNodes / toNodes / from-toRequires, the
  peer's identity labels against a (widened) selector (`selectors.py`).
- `EntityCondition`: fromEntities / toEntities (`pkg/policy/api/entity.go`): `all`; `cluster` =
  host, remote-node, init, ingress, health, unmanaged, kube-apiserver and every local pod;
  `world-ipv4` / `world-ipv6`; `host` vs `remote-node` by the node the peer runs on.
- `UnresolvedPeer`: a peer nodemesh cannot resolve (toFQDNs, toServices, groups, CIDR groups):
  it matches no peer and says so.
- `IcmpCondition`: `icmps.fields[]`; an ICMP flow carries its type in `FlowContext.port`, as
  Cilium turns an ICMP type into a port (`icmp.go PortProtocol`).
- `HttpRegexCondition`, `HttpHeaderCondition`, `HttpAnyRequest`: an http rule's fields, each a
  regex matched against the full value (Envoy RegexMatcher: "matched against the full string,
  not as a partial match"), headers by exact value or presence (`pkg/envoy/xds_server.go`,
  `http.go`).

CIDR peers are the shared `CidrCondition` with `cluster_matches=False` (CIDR selectors never
match in-cluster pods). Summarised in /work/shared/reference/cilium.md section 1.

Invariants: frozen values with `layer`, `matches(ctx)` and `describe()` (the IR's Condition
protocol); matching reads only the flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from nodemesh.policy.cilium.selectors import CiliumSelector, label_view
from nodemesh.policy.conditions import Side
from nodemesh.policy.flow import Endpoint, FlowContext, Protocol
from nodemesh.policy.ir import Layer

__all__ = [
    "EntityCondition",
    "HttpAnyRequest",
    "HttpHeaderCondition",
    "HttpRegexCondition",
    "IcmpCondition",
    "IdentityCondition",
    "UnresolvedPeer",
    "same_node",
]

# every pod of the local cluster.
_CLUSTER: Final = frozenset(
    {"cluster", "host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"}
)


@dataclass(frozen=True, slots=True)
class IdentityCondition:
    """fromEndpoints / toEndpoints / fromNodes / toNodes / from-toRequires: the peer's identity
    labels match a (widened) selector."""

    selector: CiliumSelector
    side: Side
    label: str = "fromEndpoints"
    node: bool = False

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        return self.selector.matches(*label_view(self.side.of(ctx), node=self.node))

    def describe(self) -> str:
        return f"{self.label} {self.selector}"


@dataclass(frozen=True, slots=True)
class EntityCondition:
    """fromEntities / toEntities: the peer belongs to a reserved entity (entity.go)."""

    entity: str
    side: Side
    label: str = "fromEntities"

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        ep = self.side.of(ctx)
        entity = self.entity
        if entity == "all":
            return True
        if entity in ("host", "remote-node") and "host" in ep.entities:
            # nodemesh marks host-networking endpoints `host`; on another node they are that
            # node's, i.e. `remote-node` from where the policy is enforced.
            return (entity == "host") == same_node(ctx.src, ctx.dst)
        if entity in ("cluster", "cluster-mesh"):
            return not _CLUSTER.isdisjoint(ep.entities)
        if entity in ("world-ipv4", "world-ipv6"):
            version = 4 if entity == "world-ipv4" else 6
            return "world" in ep.entities and (ep.ip is None or ep.ip.version == version)
        return entity in ep.entities

    def describe(self) -> str:
        return f"{self.label} {self.entity}"


@dataclass(frozen=True, slots=True)
class UnresolvedPeer:
    """A peer kind nodemesh cannot resolve (toFQDNs names seen by the DNS proxy, toServices
    backends, fromGroups, CiliumCIDRGroups): it matches no peer, and says so."""

    what: str

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        return False

    def describe(self) -> str:
        return f"{self.what} (not resolvable by nodemesh: matches no peer)"


@dataclass(frozen=True, slots=True)
class IcmpCondition:
    """`icmps.fields[]`: an ICMP flow of that family whose type (carried in `port`) matches."""

    family: str
    type_code: int

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        if ctx.protocol is not Protocol.ICMP or ctx.port != self.type_code:
            return False
        ip = ctx.dst.ip or ctx.src.ip
        return (ip is not None and ip.version == 6) == (self.family == "IPv6")

    def describe(self) -> str:
        return f"icmp {self.family} type {self.type_code}"


@dataclass(frozen=True, slots=True)
class HttpRegexCondition:
    """`method`, `path` or `host` of an http rule: a regex matched against the full value
    (Envoy RegexMatcher: "matched against the full string, not as a partial match")."""

    name: str
    pattern: str
    regex: re.Pattern[str] = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, name: str, pattern: str) -> HttpRegexCondition:
        return cls(name, pattern, re.compile(pattern))

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        req = ctx.request
        if req is None:
            return False
        value = req.method if self.name == "method" else req.path if self.name == "path" else req.host
        return self.regex.fullmatch(value) is not None

    def describe(self) -> str:
        return f"{self.name} ~ {self.pattern}"


@dataclass(frozen=True, slots=True)
class HttpHeaderCondition:
    """`headers: ["Name: value"]` (exact value) / `["Name"]` (presence), or one `headerMatches`
    entry: exact `value` or presence; with a `mismatch` action the rule still matches
    (http.go); a `secret` nodemesh cannot read, with no `value`, never matches."""

    name: str
    value: str | None = None
    mismatch: str | None = None
    never: bool = False

    @classmethod
    def from_header(cls, text: str) -> HttpHeaderCondition:
        parts = text.split(" ", 1)
        if len(parts) == 2:
            return cls(parts[0].rstrip(":"), parts[1])
        return cls(parts[0])

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        req = ctx.request
        if req is None or self.never:
            return False
        if self.mismatch is not None:
            return True
        got = req.header(self.name)
        return got is not None and (self.value is None or got == self.value)

    def describe(self) -> str:
        if self.never:
            return f"header {self.name} = <secret nodemesh cannot read>"
        what = f"header {self.name}" + (" present" if self.value is None else f" = {self.value!r}")
        return what + (f" (on mismatch: {self.mismatch})" if self.mismatch else "")


@dataclass(frozen=True, slots=True)
class HttpAnyRequest:
    """`http: [{}]`: any request (keeps the clause at layer L7)."""

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        return ctx.request is not None

    def describe(self) -> str:
        return "any request"


def same_node(a: Endpoint, b: Endpoint) -> bool:
    return a.node is None or b.node is None or a.node == b.node
