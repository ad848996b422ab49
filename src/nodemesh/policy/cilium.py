"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2): compile, evaluate. [STUB]"""

from __future__ import annotations

from nodemesh.model.world import World
from nodemesh.policy.decision import Decision
from nodemesh.policy.flow import FlowContext
from nodemesh.policy.ir import Direction, Policy

__all__ = ["CiliumEngine"]


class CiliumEngine:
    def __init__(self, world: World) -> None:
        self.world = world
        self.policies: list[Policy] = []

    def evaluate_l4(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """L3/L4 verdict (ctx.request ignored). An allow whose matching rules carry L7 http rules
        has `redirect=True`. None when no policy selects the endpoint in that direction."""
        return None

    def evaluate_l7(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """Full verdict for the request in ctx.request (L4 first, then the http rules): a request
        on an L7-ruled port that matches no http rule is denied with status 403."""
        return None
