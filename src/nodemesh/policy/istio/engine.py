"""IstioEngine: which Istio policies apply where, in which order, and the verdict.

Attachment (reference §4.2): at the NODE_PROXY and SIDECAR views, the policies of the
destination's namespace and of the root namespace whose selector (if any) matches its labels; at
the WAYPOINT view, the `targetRefs` policies naming the waypoint's Gateway or the destination
Service, and GatewayClass istio-waypoint ones from the root namespace. Ports at a waypoint are the
Service port (`IS:pilot/pkg/security/authz/model/model.go` `AmbientDestinationPortAdapations`:
the port comes from the inbound-vip listener).

Order (API proto, reference §4.1): CUSTOM (never enforced by nodemesh: always noted), DENY,
"no ALLOW policies -> allow", any ALLOW match -> allow, else "allow policies exist, but none
allowed". AUDIT never changes the verdict; dry-run (`istio.io/dry-run: "true"`) policies are
evaluated and only noted. At WAYPOINT and SIDECAR the RequestAuthentication check
(`authn.py`) runs first when the request is seen; PeerAuthentication is its own verdict
(`peer.py`).

Invariants: the world is read-only. A policy is compiled on first use (most destinations never
meet most policies) with equal conditions interned; its projections and their compiled predicates
are built once (`projection.Entry`). The applicable, already projected policy list is cached per
(view, destination workload) or (view, waypoint, service); node-proxy decisions, a pure function
of (destination, source principal, port, and the addresses when a policy tests them), are
memoized per destination in a bounded table: the steady state of a node proxy is two dictionary
lookups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodemesh.model.schema.istio import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from nodemesh.model.world import ServiceInfo, Waypoint, World
from nodemesh.policy.conditions import CidrCondition
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.findings import Finding
from nodemesh.policy.flow import Endpoint, FlowContext
from nodemesh.policy.ir import Action, Api, Policy, Rule
from nodemesh.policy.istio.analyze import IstioAnalyzer
from nodemesh.policy.istio.authn import Authn, authenticate, authn_for
from nodemesh.policy.istio.compile import WAYPOINT_CLASS, ConditionCache, target_key
from nodemesh.policy.istio.conditions import Attribute, IstioCondition
from nodemesh.policy.istio.matching import match_compiled
from nodemesh.policy.istio.peer import PeerAuthentications
from nodemesh.policy.istio.projection import Entry, IstioView, Ready
from nodemesh.policy.selector import LabelSelector

__all__ = ["IstioEngine"]

_MEMO_LIMIT = 4096  # memoized node-proxy decisions per destination workload


@dataclass(frozen=True, slots=True)
class _Applicable:
    """What applies at one view for one destination (or waypoint/service), already projected."""

    labels: Mapping[str, str] | None
    custom: tuple[Policy, ...] = ()
    deny: tuple[Ready, ...] = ()
    deny_dry: tuple[Ready, ...] = ()
    audit: tuple[Ready, ...] = ()
    allow: tuple[Ready, ...] = ()
    allow_dry: tuple[Ready, ...] = ()
    authn: tuple[Authn, ...] = ()
    notes: tuple[str, ...] = ()
    ip_sensitive: bool = False
    memo: dict[tuple[object, ...], Decision] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        """Nothing applies and there is nothing to say (an AUDIT policy skipped at the node proxy
        still leaves a note, so it is not empty)."""
        return not (
            self.custom
            or self.deny
            or self.deny_dry
            or self.audit
            or self.allow
            or self.allow_dry
            or self.notes
        )


class IstioEngine:
    """Every Istio security policy of a world, compiled once; evaluated per view."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.root = world.root_namespace
        self._entries: list[Entry] = []
        self._conditions: ConditionCache = {}
        self._by_namespace: dict[str, list[Entry]] = {}
        self._by_target: dict[tuple[str, str, str], list[Entry]] = {}
        self._class_targeted: list[Entry] = []
        self._peer: list[PeerAuthentication] = []
        self._authn: list[RequestAuthentication] = []
        self._cache: dict[tuple[object, ...], _Applicable] = {}
        self._node_cache: dict[tuple[object, ...], _Applicable] = {}
        for doc in world.policies:
            if isinstance(doc, AuthorizationPolicy):
                self._add(doc)
            elif isinstance(doc, PeerAuthentication):
                self._peer.append(doc)
            elif isinstance(doc, RequestAuthentication):
                self._authn.append(doc)
        self._peers = PeerAuthentications(self.root, self._peer)

    @property
    def policies(self) -> list[Policy]:
        """Every AuthorizationPolicy in the IR, in full (all fields), in manifest order."""
        return [e.policy for e in self._entries]

    def _add(self, doc: AuthorizationPolicy) -> None:
        spec = doc.spec
        targets = tuple(target_key(r, doc.namespace) for r in spec.all_target_refs)
        selector = LabelSelector.from_labels(spec.selector.match_labels) if spec.selector else None
        entry = Entry(len(self._entries), doc, self.root, self._conditions, selector, targets)
        self._entries.append(entry)
        if targets:
            for t in targets:
                if t[0] == "GatewayClass":
                    if (
                        t[2] == WAYPOINT_CLASS
                        and doc.namespace == self.root
                        and entry not in self._class_targeted
                    ):
                        self._class_targeted.append(entry)
                else:
                    self._by_target.setdefault(t, []).append(entry)
        else:
            self._by_namespace.setdefault(doc.namespace, []).append(entry)

    # ---- which policies apply ---------------------------------------------------------------
    def _workload_entries(self, namespace: str, labels: Mapping[str, str]) -> list[Entry]:
        """Selector / namespace / mesh policies for a workload (reference §4.2)."""
        out: list[Entry] = []
        spaces = (namespace,) if namespace == self.root else (namespace, self.root)
        for ns in spaces:
            for e in self._by_namespace.get(ns, ()):
                if e.selector is None or e.selector.matches(labels):
                    out.append(e)
        return out

    def _waypoint_entries(self, waypoint: Waypoint | None, service: ServiceInfo | None) -> list[Entry]:
        """targetRefs policies: the waypoint's Gateway, the Service, GatewayClass istio-waypoint."""
        out: list[Entry] = []
        keys: list[tuple[str, str, str]] = []
        if waypoint is not None:
            keys.append(("Gateway", waypoint.namespace, waypoint.name))
        if service is not None:
            keys.append(("Service", service.namespace, service.name))
        for key in keys:
            for e in self._by_target.get(key, ()):
                if e not in out:
                    out.append(e)
        if waypoint is not None:
            out += [e for e in self._class_targeted if e not in out]
        out.sort(key=lambda e: e.order)
        return out

    def _applicable(
        self,
        view: IstioView,
        tcp: bool,
        dst: Endpoint,
        waypoint: Waypoint | None,
        service: ServiceInfo | None,
    ) -> _Applicable:
        if view is IstioView.WAYPOINT:
            key: tuple[object, ...] = (
                view,
                tcp,
                waypoint.key if waypoint else None,
                (service.namespace, service.name) if service else None,
            )
        elif view is IstioView.NODE_PROXY:
            key = (dst.namespace, dst.pod or dst.workload)
        else:
            key = (view, tcp, dst.namespace, dst.pod or dst.workload)
        cache = self._node_cache if view is IstioView.NODE_PROXY else self._cache
        cached = cache.get(key)
        if cached is not None and (
            view is IstioView.WAYPOINT or cached.labels is dst.labels or cached.labels == dst.labels
        ):
            return cached
        if view is IstioView.WAYPOINT:
            entries = self._waypoint_entries(waypoint, service)
        elif dst.namespace is None:
            entries = []
        else:
            entries = self._workload_entries(dst.namespace, dst.labels)
        found = self._build(view, tcp=tcp, entries=entries, dst=dst, waypoint=waypoint, service=service)
        cache[key] = found
        return found

    def _build(
        self,
        view: IstioView,
        *,
        tcp: bool,
        entries: list[Entry],
        dst: Endpoint,
        waypoint: Waypoint | None,
        service: ServiceInfo | None,
    ) -> _Applicable:
        custom: list[Policy] = []
        buckets: dict[str, list[Ready]] = {k: [] for k in ("deny", "deny_dry", "audit", "allow", "allow_dry")}
        notes: list[str] = []
        for e in entries:
            action = e.action
            name = f"{e.doc.namespace}/{e.doc.name}"
            if action is Action.CUSTOM:
                provider = e.doc.spec.provider.name if e.doc.spec.provider else "?"
                notes.append(
                    f"CUSTOM policy {name} is not enforced by nodemesh "
                    f"(external authorizer {provider!r} is never called)"
                )
                custom.append(e.policy)
                continue
            if action is Action.AUDIT and view is IstioView.NODE_PROXY:
                notes.append(
                    f"AUDIT {name} is not evaluated at the node proxy (ztunnel does not support AUDIT)"
                )
                continue
            ready = e.ready(view, tcp)
            notes.extend(ready[0].notes)
            dry = "_dry" if e.doc.dry_run else ""
            if action is Action.AUDIT:
                buckets["audit"].append(ready)
            elif action is Action.DENY:
                buckets["deny" + dry].append(ready)
            else:
                buckets["allow" + dry].append(ready)
        authn = (
            authn_for(self._authn, self.root, view, dst=dst, waypoint=waypoint, service=service)
            if not tcp
            else ()
        )
        ip_sensitive = any(_reads_addresses(p) for bucket in buckets.values() for p, _ in bucket)
        return _Applicable(
            labels=None if view is IstioView.WAYPOINT else dst.labels,
            custom=tuple(custom),
            deny=tuple(buckets["deny"]),
            deny_dry=tuple(buckets["deny_dry"]),
            audit=tuple(buckets["audit"]),
            allow=tuple(buckets["allow"]),
            allow_dry=tuple(buckets["allow_dry"]),
            authn=authn,
            notes=tuple(dict.fromkeys(notes)),
            ip_sensitive=ip_sensitive,
        )

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        ctx: FlowContext,
        view: IstioView,
        *,
        waypoint: Waypoint | None = None,
        service: ServiceInfo | None = None,
    ) -> Decision | None:
        """The Istio verdict at `view` for ctx; None when no Istio policy applies there (no say).

        NODE_PROXY ignores ctx.request (ztunnel sees none). WAYPOINT and SIDECAR use the request
        when there is one, Envoy's TCP semantics when there is none.
        """
        if view is IstioView.NODE_PROXY:
            # The node proxy's verdict depends only on the destination, the source principal, the
            # port and (if a policy tests them) the addresses: memoized per destination.
            dst, src = ctx.dst, ctx.src
            found = self._node_cache.get((dst.namespace, dst.pod or dst.workload))
            if found is None or not (found.labels is dst.labels or found.labels == dst.labels):
                found = self._applicable(view, True, dst, None, None)
            if found.empty:
                return None
            if found.ip_sensitive:
                dkey: tuple[object, ...] = (src.principal, ctx.port, _ip_key(src.ip), _ip_key(dst.ip))
            else:
                dkey = (src.principal, ctx.port)
            memo = found.memo
            decision = memo.get(dkey)
            if decision is None:
                decision = self._decide(found, ctx, view)
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[dkey] = decision
            return decision
        tcp = ctx.request is None
        found = self._applicable(view, tcp, ctx.dst, waypoint, service)
        if view is IstioView.WAYPOINT and service is not None:
            ctx = self._at_service_port(ctx, service)
        if not tcp:
            rejected, ctx = authenticate(found.authn, ctx)
            if rejected is not None:
                return rejected
        if found.empty:
            return None
        return self._decide(found, ctx, view)

    def applicable(
        self,
        ctx: FlowContext,
        view: IstioView,
        *,
        waypoint: Waypoint | None = None,
        service: ServiceInfo | None = None,
    ) -> list[Policy]:
        """The AuthorizationPolicies that apply to ctx at `view`, as that view sees them (projected,
        with their notes), in evaluation order: DENY, AUDIT, ALLOW (dry-run ones after each)."""
        tcp = view is IstioView.NODE_PROXY or ctx.request is None
        found = self._applicable(view, tcp, ctx.dst, waypoint, service)
        ready = (*found.deny, *found.deny_dry, *found.audit, *found.allow, *found.allow_dry)
        return [*found.custom, *(p for p, _ in ready)]

    @staticmethod
    def _at_service_port(ctx: FlowContext, service: ServiceInfo) -> FlowContext:
        """A waypoint sees the Service port (inbound-vip listener), not the target port."""
        for p in service.ports:
            target = p.target_port
            port = target if isinstance(target, int) else ctx.dst.named_port(target, p.protocol)
            if port == ctx.port and p.protocol is ctx.protocol:
                if p.port == ctx.port:
                    return ctx
                return FlowContext(ctx.src, ctx.dst, p.port, ctx.protocol, ctx.request)
        return ctx

    def _decide(self, found: _Applicable, ctx: FlowContext, view: IstioView) -> Decision:
        notes = list(found.notes)
        l7 = view is not IstioView.NODE_PROXY and ctx.request is not None
        status = 403 if l7 else None
        head = "RBAC: access denied: " if l7 else ""
        for p, compiled in found.deny_dry:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                notes.append(f"dry-run DENY {p.ref.namespace}/{p.ref.name} would deny (rule {rule.index})")
        for p, compiled in found.deny:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                return Decision.deny(
                    f"{head}explicitly denied by: {p.ref.namespace}/{p.ref.name} (DENY rule {rule.index})",
                    api=Api.ISTIO,
                    policy=p.ref,
                    rule=rule.index,
                    drop_reason=DropReason.POLICY_DENY,
                    status=status,
                    notes=tuple(self._audit_notes(found, ctx, notes)),
                )
        notes = self._audit_notes(found, ctx, notes)
        for p, compiled in found.allow_dry:
            rule = match_compiled(compiled, ctx)
            verdict = f"would allow (rule {rule.index})" if rule is not None else "would not allow"
            notes.append(f"dry-run ALLOW {p.ref.namespace}/{p.ref.name} {verdict}")
        if not found.allow:
            return Decision.allow(
                "no DENY policy matched and no ALLOW policy applies", api=Api.ISTIO, notes=tuple(notes)
            )
        for p, compiled in found.allow:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                return Decision.allow(
                    f"allowed by {p.ref.namespace}/{p.ref.name} (ALLOW rule {rule.index})",
                    api=Api.ISTIO,
                    policy=p.ref,
                    rule=rule.index,
                    notes=tuple(notes),
                )
        names = ", ".join(f"{p.ref.namespace}/{p.ref.name}" for p, _ in found.allow)
        for p, _ in found.allow[:2]:
            notes.extend(_why_not(p, ctx))
        return Decision.deny(
            f"{head}allow policies exist, but none allowed (ALLOW policies: {names})",
            api=Api.ISTIO,
            policy=found.allow[0][0].ref,
            drop_reason=DropReason.POLICY_DENIED,
            status=status,
            notes=tuple(notes),
        )

    @staticmethod
    def _audit_notes(found: _Applicable, ctx: FlowContext, notes: list[str]) -> list[str]:
        for p, compiled in found.audit:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                notes.append(
                    f"AUDIT {p.ref.namespace}/{p.ref.name} matched (rule {rule.index}): "
                    "the request is marked for audit"
                )
        return notes

    def has_l7_rules(self, ctx: FlowContext) -> bool:
        """Kernel mode: does a policy applying to ctx.dst at the SIDECAR view have HTTP-only fields
        that could apply to ctx.port (so the flow must go through the node L7 proxy)? A
        RequestAuthentication selecting the workload counts: its token check needs the proxy."""
        found = self._applicable(IstioView.SIDECAR, False, ctx.dst, None, None)
        if found.authn:
            return True
        for p, _ in (*found.deny, *found.deny_dry, *found.audit, *found.allow, *found.allow_dry):
            for rule in p.rules:
                if rule.has_l7 and _port_possible(rule, ctx):
                    return True
        return False

    # ---- PeerAuthentication, analysis ------------------------------------------------------------
    def peer_authentication(self, ctx: FlowContext) -> Decision | None:
        """The effective mTLS mode for ctx.dst at ctx.port and its verdict (reference §4.7,
        resolved in `peer.py`): STRICT and plaintext is denied. None when no PeerAuthentication
        applies."""
        return self._peers.decide(ctx)

    def analyze(self) -> list[Finding]:
        """NM201-NM208: Istio policies that cannot work as written in this world (`analyze.py`)."""
        return IstioAnalyzer(self.world, self._entries, self._authn, self._peer).findings()


def _ip_key(ip: object) -> int | None:
    """An address as a cheap dictionary key (ipaddress objects hash slowly)."""
    return int(ip) if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else None


def _reads_addresses(policy: Policy) -> bool:
    """Does any condition of `policy` test a source or destination address?"""
    return any(
        isinstance(c, CidrCondition) or (isinstance(c, IstioCondition) and c.attribute is Attribute.REMOTE_IP)
        for rule in policy.rules
        for clause in rule.clauses
        for m in clause.matches
        for c in m.conditions
    )


def _why_not(policy: Policy, ctx: FlowContext) -> list[str]:
    """For a denied flow: per ALLOW rule, the first clause that did not hold."""
    out: list[str] = []
    name = f"{policy.ref.namespace}/{policy.ref.name}"
    if not policy.rules:
        return [] if policy.notes else [f"ALLOW {name} has no rule: it allows nothing"]
    for rule in policy.rules[:2]:
        clause = rule.first_failing(ctx)
        if clause is not None:
            out.append(f"ALLOW {name} rule {rule.index}: {clause.describe()} did not match")
    return out


def _port_possible(rule: Rule, ctx: FlowContext) -> bool:
    """Could `rule` match at ctx.port, assuming every non-port condition could?"""
    for clause in rule.clauses:
        if not clause.matches:
            continue
        ok = False
        for m in clause.matches:
            if m.void:
                continue
            if all(
                c.matches(ctx)
                for c in m.conditions
                if isinstance(c, IstioCondition) and c.attribute is Attribute.PORT
            ):
                ok = True
                break
        if not ok:
            return False
    return True
