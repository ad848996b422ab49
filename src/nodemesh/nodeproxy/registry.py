"""The inbound connection registry: live connections, re-checked when policy changes.

Upstream (reference §1.7; ZT:src/proxy/connection_manager.rs): ztunnel tracks every inbound
connection with the RBAC context it was admitted with; its PolicyWatcher re-evaluates them
"whenever policy changes and closes any that are now denied" (`AuthorizationPolicyLateRejection`).

Here a connection is registered with the `FlowContext` and `Route` its admission was decided on
and a `revoke` callback; `reevaluate(engine)` asks the new engine for the same destination verdict
and revokes those it now denies, returning what it closed. Evaluation is the engine's (pure);
only `revoke` does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from nodemesh.policy.decision import Decision
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import FlowContext

__all__ = ["ConnectionRegistry", "Revocation", "TrackedConnection"]


@dataclass(frozen=True, slots=True)
class TrackedConnection:
    """A live inbound connection: what it was admitted as, and how to close it."""

    id: int
    ctx: FlowContext
    route: Route
    revoke: Callable[[Decision], None]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Revocation:
    """A connection closed by a policy change, and the decision that closed it."""

    connection: TrackedConnection
    decision: Decision


class ConnectionRegistry:
    """Live inbound connections of one node proxy (all of its pods)."""

    def __init__(self) -> None:
        self._live: dict[int, TrackedConnection] = {}
        self._ids = itertools.count(1)

    def register(
        self, ctx: FlowContext, route: Route, revoke: Callable[[Decision], None], description: str = ""
    ) -> TrackedConnection:
        conn = TrackedConnection(next(self._ids), ctx, route, revoke, description)
        self._live[conn.id] = conn
        return conn

    def unregister(self, conn: TrackedConnection) -> None:
        self._live.pop(conn.id, None)

    def __len__(self) -> int:
        return len(self._live)

    def reevaluate(self, engine: PolicyEngine) -> list[Revocation]:
        """Close every live connection `engine` no longer allows at the destination."""
        revoked: list[Revocation] = []
        for conn in list(self._live.values()):
            decision = engine.destination(conn.ctx, conn.route).decision
            if not decision.allowed:
                self._live.pop(conn.id, None)
                revoked.append(Revocation(conn, decision))
        for r in revoked:
            r.connection.revoke(r.decision)
        return revoked
