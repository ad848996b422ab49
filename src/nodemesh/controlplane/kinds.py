"""Resolving the kind a user typed (`get pods`, `get po`, `get AuthorizationPolicy`) to a
registered kind, as kubectl does with its discovery data: the kind itself (any case), its plural
resource name, the plural qualified by the API group (`authorizationpolicies.security.istio.io`)
and the upstream short names (kubectl's `po`, `svc`, ...; the CRDs' `shortNames`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nodemesh.errors import UsageError
from nodemesh.model.schema import KINDS

__all__ = ["KindInfo", "known_kinds", "resolve_kind"]

# Upstream short names: kubectl api-resources (core, apps, networking.k8s.io), Cilium's CRDs
# (ciliumnetworkpolicies: cnp, ciliumnp; ciliumclusterwidenetworkpolicies: ccnp) and Gateway
# API's (gateways: gtw).
SHORT_NAMES: Mapping[str, str] = {
    "po": "Pod",
    "deploy": "Deployment",
    "svc": "Service",
    "ns": "Namespace",
    "sa": "ServiceAccount",
    "netpol": "NetworkPolicy",
    "cnp": "CiliumNetworkPolicy",
    "ciliumnp": "CiliumNetworkPolicy",
    "ccnp": "CiliumClusterwideNetworkPolicy",
    "gtw": "Gateway",
}


@dataclass(frozen=True, slots=True)
class KindInfo:
    group: str
    kind: str
    namespaced: bool

    @property
    def plural(self) -> str:
        return plural_of(self.kind)


def plural_of(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


def known_kinds() -> list[KindInfo]:
    return sorted(
        (KindInfo(group, kind, model.namespaced) for (group, kind), (_, model) in KINDS.items()),
        key=lambda k: k.kind,
    )


def resolve_kind(text: str) -> KindInfo:
    """The registered kind `text` names; UsageError listing the known kinds otherwise."""
    wanted = text.strip()
    lower = wanted.lower()
    short = SHORT_NAMES.get(lower)
    for info in known_kinds():
        names = {info.kind.lower(), info.plural}
        if info.group:
            names |= {f"{info.plural}.{info.group}", f"{info.kind.lower()}.{info.group}"}
        if lower in names or short == info.kind:
            return info
    known = ", ".join(k.plural for k in known_kinds())
    raise UsageError(f"unknown resource type {text!r}; known: {known}")
