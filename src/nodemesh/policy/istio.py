"""Istio AuthorizationPolicy, PeerAuthentication, RequestAuthentication: compile, evaluate. [STUB]"""

from __future__ import annotations

from enum import Enum

from nodemesh.model.world import ServiceInfo, Waypoint, World
from nodemesh.policy.decision import Decision
from nodemesh.policy.flow import FlowContext
from nodemesh.policy.ir import Policy

__all__ = ["IstioEngine", "IstioView"]


class IstioView(Enum):
    """Who evaluates, which decides which policies apply and what they can see."""

    NODE_PROXY = "node-proxy"  # ambient ztunnel role: selector/namespace/mesh policies, L4 projection
    WAYPOINT = "waypoint"  # ambient waypoint: targetRefs policies only, full L7
    SIDECAR = "sidecar"  # kernel mode node L7 proxy: selector/namespace/mesh policies, sidecar semantics


class IstioEngine:
    def __init__(self, world: World) -> None:
        self.world = world
        self.policies: list[Policy] = []

    def evaluate(
        self,
        ctx: FlowContext,
        view: IstioView,
        *,
        waypoint: Waypoint | None = None,
        service: ServiceInfo | None = None,
    ) -> Decision | None:
        return None

    def peer_authentication(self, ctx: FlowContext) -> Decision | None:
        return None

    def has_l7_rules(self, ctx: FlowContext) -> bool:
        return False
