"""Verdicts with their reasons: what every evaluation returns, never a bare bool.

A `Decision` names the API, the policy (kind/namespace/name) and the rule index that decided,
and says why in words. A `PointDecision` is the verdict at one enforcement point (source egress,
waypoint, node L7 proxy, destination) with each API's own decision; the flow is allowed only if
every API that has a say allows it, so the point's decision is the first API decision that denies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from nodemesh.policy.ir import Api, PolicyRef

__all__ = ["Decision", "DropReason", "Point", "PointDecision", "Verdict", "combine"]


class Verdict(Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class DropReason(Enum):
    """Why a flow was dropped, in Cilium's drop-reason words (flow.proto DropReason)."""

    POLICY_DENY = "POLICY_DENY"  # an explicit deny rule matched (181)
    POLICY_DENIED = "POLICY_DENIED"  # default deny: no allow rule matched (133)
    L7_UNINSPECTABLE = "L7_UNINSPECTABLE"  # an L7 rule applies, but no proxy sees the request here
    UNENCRYPTED = "UNENCRYPTED_TRAFFIC"  # STRICT mTLS and the connection is plaintext


class Point(Enum):
    """Enforcement points a flow crosses, in path order."""

    SOURCE = "source"  # source egress (K8s / Cilium egress rules), at the source's node
    WAYPOINT = "waypoint"  # ambient: the waypoint proxy (L7)
    L7_PROXY = "l7-proxy"  # kernel: the destination node's L7 proxy
    DESTINATION = "destination"  # destination ingress, at the destination's node (proxy or kernel)


@dataclass(frozen=True, slots=True)
class Decision:
    """One verdict and why. `api`/`policy`/`rule` are None when no policy had a say.

    `status` is what an HTTP client sees for an L7 deny (403 Cilium/waypoint RBAC, 401 for a
    request with an invalid JWT); `redirect` marks an L4 allow that still needs the L7 rules of
    the same policy checked by a proxy that sees the request (Cilium's REDIRECTED); `notes` carry
    what the user should know even on allow
    (dry-run would-deny, AUDIT matches, L7 fields dropped at the node proxy).
    """

    verdict: Verdict
    reason: str
    api: Api | None = None
    policy: PolicyRef | None = None
    rule: int | None = None
    drop_reason: DropReason | None = None
    status: int | None = None
    notes: tuple[str, ...] = ()
    redirect: bool = False

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @classmethod
    def allow(cls, reason: str, **kw: object) -> Decision:
        return cls(Verdict.ALLOW, reason, **kw)  # type: ignore[arg-type]

    @classmethod
    def deny(cls, reason: str, **kw: object) -> Decision:
        return cls(Verdict.DENY, reason, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PointDecision:
    """The verdict at one enforcement point, with every API's own decision there."""

    point: Point
    where: str
    decision: Decision
    by_api: tuple[Decision, ...] = ()
    notes: tuple[str, ...] = ()


def combine(decisions: Sequence[Decision], none_reason: str = "no policy applies") -> Decision:
    """Every API that has a say must allow: the first deny wins, else the last allow with a policy."""
    for d in decisions:
        if not d.allowed:
            return d
    with_policy = [d for d in decisions if d.policy is not None]
    if with_policy:
        return with_policy[-1]
    notes = tuple(n for d in decisions for n in d.notes)
    return Decision.allow(none_reason, notes=notes)
