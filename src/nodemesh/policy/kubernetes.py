"""Kubernetes NetworkPolicy (networking.k8s.io/v1): compile to the IR, evaluate.  [STUB]"""

from __future__ import annotations

from nodemesh.model.world import World
from nodemesh.policy.decision import Decision
from nodemesh.policy.flow import FlowContext
from nodemesh.policy.ir import Direction, Policy

__all__ = ["KubernetesEngine"]


class KubernetesEngine:
    """All NetworkPolicies of a world, compiled; evaluates one direction at one endpoint."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.policies: list[Policy] = []

    def evaluate(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """INGRESS: policies selecting ctx.dst; EGRESS: policies selecting ctx.src.
        None when no policy selects that endpoint in that direction (no say)."""
        return None
