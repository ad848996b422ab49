"""Condition types shared by more than one policy API.

- `PortCondition`: destination port / range / named port, with protocol (K8s, Cilium, Istio).
- `CidrCondition`: the peer's (or the destination's) IP in CIDRs minus excepts (K8s ipBlock,
  Cilium fromCIDR/fromCIDRSet/toCIDR, Istio ipBlocks and destination.ip).
- `StringMatch`: Istio's exact / `prefix*` / `*suffix` / `*` (presence) string match, with a
  leading `*` checked before a trailing one (`*a*` is a suffix match on `a*`).

Named ports resolve against the DESTINATION endpoint's container ports, as both Kubernetes
("named port ... on the destination pod") and Cilium (`l4.go`, "resolves against the destination
pod") do, for ingress and egress alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from nodemesh.policy.flow import Endpoint, FlowContext, IPAddress, Protocol
from nodemesh.policy.ir import Layer

__all__ = ["CidrCondition", "Network", "PortCondition", "Side", "StringMatch", "parse_network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A CIDR or a bare IP (a /32 or /128), strictness relaxed as Kubernetes is."""
    return ipaddress.ip_network(text, strict=False)


class Side(Enum):
    SOURCE = "source"
    DESTINATION = "destination"

    def of(self, ctx: FlowContext) -> Endpoint:
        return ctx.src if self is Side.SOURCE else ctx.dst


@dataclass(frozen=True, slots=True)
class PortCondition:
    """`port` (number or name), optional `end_port`, `protocols` (None = any protocol)."""

    port: int | None = None
    end_port: int | None = None
    name: str | None = None
    protocols: frozenset[Protocol] | None = frozenset({Protocol.TCP})
    negated: bool = False
    label: str = "port"

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def _positive(self, ctx: FlowContext) -> bool:
        if self.protocols is not None and ctx.protocol not in self.protocols:
            return False
        if self.name is not None:
            return any(
                ctx.dst.named_port(self.name, proto) == ctx.port for proto in (self.protocols or Protocol)
            )
        if self.port is None:
            return True
        if self.end_port is not None:
            return self.port <= ctx.port <= self.end_port
        return ctx.port == self.port

    def matches(self, ctx: FlowContext) -> bool:
        return self._positive(ctx) != self.negated

    def describe(self) -> str:
        if self.name is not None:
            what = self.name
        elif self.port is None:
            what = "any"
        elif self.end_port is not None:
            what = f"{self.port}-{self.end_port}"
        else:
            what = str(self.port)
        protos = "/".join(sorted(p.value for p in self.protocols)) if self.protocols else "any"
        return f"{'not ' if self.negated else ''}{self.label} {what}/{protos}"


@dataclass(frozen=True, slots=True)
class CidrCondition:
    """The IP of `side` lies in one of `networks` and in none of `excepts`.

    `cluster_matches=False` reproduces Cilium's rule that CIDR selectors do not match in-cluster
    identities (pods), only world/unmanaged addresses (docs: policy-cidr-match-mode).
    """

    networks: tuple[Network, ...]
    excepts: tuple[Network, ...] = ()
    side: Side = Side.SOURCE
    cluster_matches: bool = True
    negated: bool = False
    label: str = "ipBlock"

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def _positive(self, ctx: FlowContext) -> bool:
        endpoint = self.side.of(ctx)
        ip: IPAddress | None = endpoint.ip
        if ip is None:
            return False
        if not self.cluster_matches and endpoint.is_pod:
            return False
        if not any(ip in net for net in self.networks if net.version == ip.version):
            return False
        return not any(ip in net for net in self.excepts if net.version == ip.version)

    def matches(self, ctx: FlowContext) -> bool:
        return self._positive(ctx) != self.negated

    def describe(self) -> str:
        nets = ",".join(str(n) for n in self.networks)
        exc = f" except {','.join(str(n) for n in self.excepts)}" if self.excepts else ""
        return f"{'not ' if self.negated else ''}{self.label} {nets}{exc}"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` presence (non-empty).

    Only a leading or trailing `*` is special (API `Rule` doc). The order is Istio's
    (`pilot/pkg/security/authz/matcher/string.go` `StringMatcherWithPrefix`, and likewise its
    `HeaderMatcher`, `HostMatcher` and ambient `stringToMatch`): `*` alone first, then
    `HasPrefix(v, "*")` (a suffix match), then `HasSuffix(v, "*")` (a prefix match), else exact;
    so `*a*` is a suffix match on `a*`. `ignore_case` serves `hosts`.
    """

    pattern: str
    ignore_case: bool = False

    def compile(self) -> Callable[[str], bool]:
        p = self.pattern.lower() if self.ignore_case else self.pattern
        fold = str.lower if self.ignore_case else (lambda s: s)
        if p == "*":
            return bool
        if p.startswith("*"):
            tail = p[1:]
            return lambda v: fold(v).endswith(tail)
        if p.endswith("*"):
            head = p[:-1]
            return lambda v: fold(v).startswith(head)
        return lambda v: fold(v) == p

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        return self.compile()(value)

    def __str__(self) -> str:
        return self.pattern
