"""CiliumEngine: which Cilium rules apply to an endpoint, and the verdict per direction.

Verdict per direction (`pkg/policy/repository.go` `computePolicyEnforcementAndRules`,
/work/shared/reference/cilium.md 1.11): no selecting rule with entries in that direction = no
say (None); a matching deny rule = POLICY_DENY; else local-host ingress is allowed
(`--allow-localhost`); else a matching allow; else default deny (POLICY_DENIED) unless every
selecting rule sets `enableDefaultDeny.<dir>: false`. `fromRequires`/`toRequires` narrow every
allowed peer of every rule selecting the endpoint (language.rst).

L7: if every allow that matches the flow carries HTTP rules, the flow is redirected to the proxy
and a request must fully match one http rule of one of them, else HTTP 403 "Access denied"; an
L4-only (or L3-only) allow that covers the same flow makes every request allowed ("the layer 7
portions of the latter rule will have no effect"). L7 rules still apply with
`enableDefaultDeny: false` (intro.rst). `authentication.mode: required` is reported in the
decision's notes (nodemesh does not model the mutual-auth handshake).

Invariants: evaluation never mutates a policy. The engine keeps three caches keyed by endpoint
identity (namespace/pod, or the address and labels of an outside endpoint): the policies
selecting an endpoint (Cilium's per-identity `selectorPolicy`), the rules whose peer matches a
(subject, peer) pair (its selector cache), and the L4 outcome per (subject, peer, port,
protocol) (its per-endpoint policy map); each is cleared when it reaches `_CACHE_LIMIT`. The hot
path for a known flow is one dictionary lookup. Namespaced rules are indexed by one label their
subject requires, so an endpoint only tests the rules that may select it.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from nodemesh.model.schema.cilium import CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy
from nodemesh.model.world import World
from nodemesh.policy.cilium.analyze import findings
from nodemesh.policy.cilium.compile import DNS_NOTE, Compiled, Compiler, Entry
from nodemesh.policy.cilium.conditions import IdentityCondition, same_node
from nodemesh.policy.cilium.selectors import CiliumSelector, Labels, label_view
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.findings import Finding
from nodemesh.policy.flow import Endpoint, FlowContext, Protocol
from nodemesh.policy.ir import Api, Clause, Direction, Policy, PolicyRef

__all__ = ["CiliumEngine", "EndpointKey"]

_CACHE_LIMIT: Final = 200_000
EndpointKey = tuple[object, ...]


@dataclass
class _NamespaceIndex:
    """The namespaced rules of one namespace, indexed by one label their subject requires."""

    by_label: dict[tuple[bool, str, str], list[Compiled]] = field(default_factory=dict)
    unindexed: list[Compiled] = field(default_factory=list)

    def add(self, compiled: Compiled) -> None:
        key = compiled.index_key()
        if key is None:
            self.unindexed.append(compiled)
        else:
            self.by_label.setdefault(key, []).append(compiled)


@dataclass(frozen=True, slots=True)
class _View:
    """Everything that applies to one endpoint in one direction (union over policies)."""

    allows: tuple[Entry, ...]
    denies: tuple[Entry, ...]
    default_deny: PolicyRef | None  # the first policy that puts the endpoint in default deny
    refs: tuple[PolicyRef, ...]
    requires: tuple[CiliumSelector, ...]


@dataclass(frozen=True, slots=True)
class _PeerMatch:
    allows: tuple[Entry, ...]
    denies: tuple[Entry, ...]
    localhost: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: Decision
    l7: tuple[Entry, ...] = ()  # the allows whose http rules a request must satisfy


def _endpoint_key(ep: Endpoint) -> EndpointKey:
    if ep.namespace is not None and (ep.pod or ep.workload):
        return (ep.namespace, ep.pod or ep.workload)
    return ("", ep.ip, ep.entities, tuple(sorted(ep.identity_labels.items())))


_MISSING: Final = object()


class CiliumEngine:
    """Every CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy of a world, compiled."""

    def __init__(self, world: World) -> None:
        self.world = world
        compiler = Compiler(world.cluster_name)
        self._compiled: list[Compiled] = []
        self._by_namespace: dict[str, _NamespaceIndex] = {}
        self._clusterwide: list[Compiled] = []
        # Compiling allocates many small immutable objects and no cycles; the cyclic collector
        # would rescan the whole (large) heap over and over meanwhile, so it waits until the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for doc in world.policies:
                if isinstance(doc, CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy):
                    for compiled in compiler.compile(doc, seq=len(self._compiled)):
                        self._compiled.append(compiled)
                        if compiled.namespace and not compiled.subject.node:
                            index = self._by_namespace.get(compiled.namespace)
                            if index is None:
                                index = self._by_namespace[compiled.namespace] = _NamespaceIndex()
                            index.add(compiled)
                        else:
                            self._clusterwide.append(compiled)
        finally:
            if collecting:
                gc.enable()
        self.policies: list[Policy] = _ir_policies(self._compiled)
        self._views: dict[tuple[Direction, EndpointKey], _View | None] = {}
        self._peers: dict[tuple[Direction, EndpointKey, EndpointKey], _PeerMatch] = {}
        self._outcomes: dict[tuple[Direction, EndpointKey, EndpointKey, int, Protocol], _Outcome | None] = {}

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate_l4(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """L3/L4 verdict (ctx.request ignored). An allow whose matching rules all carry HTTP
        rules has `redirect=True`. None when no policy selects the endpoint in that direction."""
        outcome = self._outcome(ctx, direction)
        return None if outcome is None else outcome.decision

    def evaluate_l7(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """Full verdict for the request in ctx.request (L4 first, then the http rules): a request
        on an L7-ruled port that matches no http rule is denied with status 403."""
        outcome = self._outcome(ctx, direction)
        if outcome is None:
            return None
        if not outcome.l7 or ctx.request is None:
            return outcome.decision
        req = ctx.request
        for entry in outcome.l7:
            assert entry.http is not None
            for j, match in enumerate(entry.http.matches):
                if match.matches(ctx):
                    return Decision.allow(
                        f"allowed by {entry.ref} {entry.label} (http[{j}]: {match.describe()})",
                        api=Api.CILIUM,
                        policy=entry.ref,
                        rule=entry.rule.index,
                        notes=outcome.decision.notes,
                    )
        first = outcome.l7[0]
        rules = ", ".join(f"{e.ref} {e.label}" for e in outcome.l7)
        return Decision.deny(
            f"Access denied: {req.method} {req.path} matches no http rule of {rules} (HTTP 403)",
            api=Api.CILIUM,
            policy=first.ref,
            rule=first.rule.index,
            status=403,
        )

    def _outcome(self, ctx: FlowContext, direction: Direction) -> _Outcome | None:
        ingress = direction is Direction.INGRESS
        subject, peer = (ctx.dst, ctx.src) if ingress else (ctx.src, ctx.dst)
        skey, pkey = _endpoint_key(subject), _endpoint_key(peer)
        key = (direction, skey, pkey, ctx.port, ctx.protocol)
        hit = self._outcomes.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        view = self._view(subject, skey, direction)
        outcome = (
            None
            if view is None
            else self._decide(ctx, direction, view, self._peer(ctx, direction, view, skey, pkey))
        )
        if len(self._outcomes) >= _CACHE_LIMIT:
            self._outcomes.clear()
        self._outcomes[key] = outcome
        return outcome

    def _view(self, subject: Endpoint, skey: EndpointKey, direction: Direction) -> _View | None:
        key = (direction, skey)
        hit = self._views.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        view = self._build_view(subject, direction)
        if len(self._views) >= _CACHE_LIMIT:
            self._views.clear()
        self._views[key] = view
        return view

    def _candidates(self, subject: Endpoint, full: Labels, bare: Labels) -> list[Compiled]:
        """The policies that may select `subject`, in policy order: the clusterwide ones, and
        those of its namespace that are indexed under one of its labels or not indexable."""
        found: list[Compiled] = list(self._clusterwide)
        if subject.namespace is not None:
            index = self._by_namespace.get(subject.namespace)
            if index is not None:
                found.extend(index.unindexed)
                by_label = index.by_label
                for k, v in full.items():
                    found.extend(by_label.get((False, k, v), ()))
                for k, v in bare.items():
                    found.extend(by_label.get((True, k, v), ()))
        found.sort(key=lambda c: c.seq)
        return found

    def _build_view(self, subject: Endpoint, direction: Direction) -> _View | None:
        ingress = direction is Direction.INGRESS
        allows: list[Entry] = []
        denies: list[Entry] = []
        refs: dict[PolicyRef, None] = {}
        requires: list[CiliumSelector] = []
        default_deny: PolicyRef | None = None
        views = (label_view(subject), label_view(subject, node=True))
        for compiled in self._candidates(subject, *views[0]):
            rules = compiled.ingress if ingress else compiled.egress
            if rules is None or not compiled.subject.selects_labels(subject, *views[compiled.subject.node]):
                continue
            allows.extend(rules.allows)
            denies.extend(rules.denies)
            requires.extend(rules.requires)
            refs[rules.ref] = None
            if rules.default_deny and default_deny is None:
                default_deny = rules.ref
        if not refs:
            return None
        return _View(tuple(allows), tuple(denies), default_deny, tuple(refs), tuple(requires))

    def _peer(
        self, ctx: FlowContext, direction: Direction, view: _View, skey: EndpointKey, pkey: EndpointKey
    ) -> _PeerMatch:
        key = (direction, skey, pkey)
        hit = self._peers.get(key)
        if hit is not None:
            return hit
        ingress = direction is Direction.INGRESS
        peer = ctx.src if ingress else ctx.dst
        labels = label_view(peer)
        # Entries of many policies share one compiled peer clause: decide each clause once.
        memo: dict[int, bool] = {}

        def holds(clause: Clause | None) -> bool:
            if clause is None:
                return True
            got = memo.get(id(clause))
            if got is None:
                got = memo[id(clause)] = _peer_holds(clause, ctx, labels)
            return got

        denies = tuple(e for e in view.denies if holds(e.peer))
        allows: tuple[Entry, ...] = ()
        if not view.requires or all(sel.matches(*labels) for sel in view.requires):
            allows = tuple(e for e in view.allows if holds(e.peer))
        localhost = ingress and "host" in peer.entities and same_node(ctx.src, ctx.dst)
        match = _PeerMatch(allows, denies, localhost)
        if len(self._peers) >= _CACHE_LIMIT:
            self._peers.clear()
        self._peers[key] = match
        return match

    def _decide(self, ctx: FlowContext, direction: Direction, view: _View, peer: _PeerMatch) -> _Outcome:
        for entry in peer.denies:
            if entry.ports_match(ctx):
                return _Outcome(
                    Decision.deny(
                        f"denied by {entry.ref} {entry.label}",
                        api=Api.CILIUM,
                        policy=entry.ref,
                        rule=entry.rule.index,
                        drop_reason=DropReason.POLICY_DENY,
                    )
                )
        if peer.localhost:
            return _Outcome(
                Decision.allow(
                    "ingress from the local host is always allowed (Cilium --allow-localhost)",
                    api=Api.CILIUM,
                    policy=view.refs[0],
                )
            )
        matching = [e for e in peer.allows if e.ports_match(ctx)]
        if matching:
            notes = tuple(
                f"{e.ref} {e.label}: authentication.mode {e.auth} (Cilium mutual auth; nodemesh does not "
                "model the handshake)"
                for e in matching
                if e.auth in ("required", "test-always-fail")
            )
            plain = next((e for e in matching if e.http is None), None)
            if plain is not None:
                extra = (DNS_NOTE,) if plain.dns else ()
                return _Outcome(
                    Decision.allow(
                        f"allowed by {plain.ref} {plain.label}",
                        api=Api.CILIUM,
                        policy=plain.ref,
                        rule=plain.rule.index,
                        notes=notes + extra,
                    )
                )
            first = matching[0]
            return _Outcome(
                Decision.allow(
                    f"allowed at L4 by {first.ref} {first.label}; its http rules apply "
                    "(redirected to the L7 proxy)",
                    api=Api.CILIUM,
                    policy=first.ref,
                    rule=first.rule.index,
                    redirect=True,
                    notes=notes,
                ),
                tuple(matching),
            )
        where = "from" if direction is Direction.INGRESS else "to"
        peer_ep = ctx.src if direction is Direction.INGRESS else ctx.dst
        subject = ctx.dst if direction is Direction.INGRESS else ctx.src
        what = f"{ctx.protocol.value}/{ctx.port}" if ctx.protocol is not Protocol.ICMP else "ICMP"
        if view.default_deny is not None:
            names = ", ".join(str(r) for r in view.refs[:3])
            if len(view.refs) > 3:
                names += f" and {len(view.refs) - 3} more"
            return _Outcome(
                Decision.deny(
                    f"no {direction.value} rule of {names} allows {what} {where} {peer_ep} "
                    f"(default deny of {subject} set by {view.default_deny})",
                    api=Api.CILIUM,
                    policy=view.default_deny,
                    drop_reason=DropReason.POLICY_DENIED,
                )
            )
        return _Outcome(
            Decision.allow(
                f"no rule matches and every policy selecting {subject} sets "
                f"enableDefaultDeny.{direction.value}: false (synthesized allow-all)",
                api=Api.CILIUM,
                policy=view.refs[0],
            )
        )

    # ---- analysis ------------------------------------------------------------------------
    def analyze(self) -> list[Finding]:
        """Policies that cannot work as written (NM301-NM307, see `analyze.py`)."""
        return findings(self.world, self._compiled, self._allows)

    def _allows(self, subject: Endpoint, direction: Direction) -> tuple[Entry, ...] | None:
        """The allow entries that apply to `subject` in `direction`; None when no policy selects it."""
        view = self._build_view(subject, direction)
        return None if view is None else view.allows


def _peer_holds(clause: Clause, ctx: FlowContext, labels: tuple[Labels, Labels]) -> bool:
    """`clause.holds(ctx)`, with the peer's label view computed once for identity selectors."""
    for match in clause.matches:
        if match.void:
            continue
        for cond in match.conditions:
            if isinstance(cond, IdentityCondition) and not cond.node:
                ok = cond.selector.matches(*labels)
            else:
                ok = cond.matches(ctx)
            if not ok:
                break
        else:
            return True
    return False


def _ir_policies(compiled: Sequence[Compiled]) -> list[Policy]:
    out: list[Policy] = []
    seen: set[int] = set()
    for c in compiled:
        for d in (c.ingress, c.egress):
            if d is None:
                continue
            for entries in (d.allows, d.denies):
                for e in entries:
                    if id(e.policy) not in seen:
                        seen.add(id(e.policy))
                        out.append(e.policy)
    return out
