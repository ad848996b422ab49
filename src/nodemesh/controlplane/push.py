"""The push protocol's server side for one node stream, as a state machine (no I/O).

Semantics are Envoy's xDS ACK/NACK (envoy api v2/v3 `DiscoveryRequest`): "The version_info
provided in the request messages will be the version_info received with the most recent
successfully processed response [...] ACK/NACK takes place by returning the new API config
version as applied or the previous API config version respectively", with `response_nonce`
naming the response being answered and `error_detail` set on a NACK. The resource model is the
incremental (delta) variant: a push carries changed resources and removed names only, and on
(re)connect the client's `initial_resource_versions` tell the server what it already holds.

Invariants
- At most one push is in flight per node: the next is computed only once the previous one has
  been ACKed or NACKed (replies with another nonce are stale and ignored).
- `held` is exactly what the agent holds: the initial versions, plus every ACKed push. A NACKed
  push changes nothing in `held` (the agent keeps its previous config).
- A push identical to the last NACKed one is not sent again; any change to the desired view
  (e.g. the user fixes or deletes the offending resource) produces a new push. The NACK stays
  visible (`last_nack`) until the node ACKs a push or holds the desired view again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from nodemesh.controlplane.views import NodeView, ViewResource

__all__ = ["Nack", "NodePushState", "Push", "Reply"]


@dataclass(frozen=True, slots=True)
class Push:
    nonce: str
    version_info: str
    resources: tuple[ViewResource, ...]
    removed: tuple[str, ...]

    @property
    def signature(self) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        return tuple(sorted((r.key, r.version) for r in self.resources)), tuple(sorted(self.removed))


@dataclass(frozen=True, slots=True)
class Nack:
    version_info: str
    nonce: str
    reason: str


class Reply(Enum):
    ACKED = "acked"
    NACKED = "nacked"
    STALE = "stale"


class NodePushState:
    """What one node holds, what it should hold, and the push in between."""

    def __init__(self, node: str, held: Mapping[str, str], held_version: str = "") -> None:
        self.node = node
        self.held: dict[str, str] = dict(held)
        self.acked_version = held_version
        self.desired: NodeView | None = None
        self.in_flight: Push | None = None
        self.last_nack: Nack | None = None
        self._rejected: tuple[object, ...] | None = None
        self._counter = 0

    @property
    def synced(self) -> bool:
        """The node holds exactly the desired view (nothing in flight, nothing to send)."""
        return self.in_flight is None and self.desired is not None and self.held == self.desired.versions()

    def set_view(self, view: NodeView) -> None:
        self.desired = view

    def next_push(self) -> Push | None:
        """The push to send now, or None (one in flight, nothing changed, or already NACKed)."""
        if self.in_flight is not None or self.desired is None:
            return None
        want = self.desired.resources
        changed = tuple(r for k, r in sorted(want.items()) if self.held.get(k) != r.version)
        removed = tuple(sorted(k for k in self.held if k not in want))
        if not changed and not removed:
            # The node holds exactly what is desired: an earlier NACK is about a view that is
            # no longer wanted (the user fixed or removed the resource).
            self.last_nack = None
            self._rejected = None
            return None
        self._counter += 1
        push = Push(f"{self.node}-{self._counter}", str(self.desired.revision), changed, removed)
        if self._rejected is not None and push.signature == self._rejected:
            self._counter -= 1
            return None
        self.in_flight = push
        return push

    def on_reply(self, nonce: str, error_detail: str) -> Reply:
        """An ACK (no error) or a NACK for `nonce`."""
        push = self.in_flight
        if push is None or nonce != push.nonce:
            return Reply.STALE
        self.in_flight = None
        if error_detail:
            self.last_nack = Nack(push.version_info, push.nonce, error_detail)
            self._rejected = push.signature
            return Reply.NACKED
        for res in push.resources:
            self.held[res.key] = res.version
        for key in push.removed:
            self.held.pop(key, None)
        self.acked_version = push.version_info
        self.last_nack = None
        self._rejected = None
        return Reply.ACKED
