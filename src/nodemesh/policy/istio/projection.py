"""Who evaluates decides what a policy means: each view and its projection of a policy.

Three views (reference §4.2, §4.6):

- NODE_PROXY (ambient ztunnel): selector / namespace / mesh policies, projected exactly as istiod's
  `handleRule` (`IS:pilot/pkg/serviceregistry/ambient/authorization.go`) does: an ALLOW rule with
  any L7 attribute is dropped entirely (a policy left with no rule still exists, so it denies);
  in a DENY rule the L7 fields are stripped per Match and a Match left with nothing becomes
  `void` (ztunnel skips empty matches since ZT PR #495), so its clause can only hold through
  another Match, and a clause of void matches makes the rule a no-op. CUSTOM and AUDIT are not
  sent to ztunnel. L7 for ztunnel = hosts, methods, paths, requestPrincipals, remoteIpBlocks,
  trustDomains and every `when` key but source.ip/namespace/principal and destination.ip/port.
  trustDomains: reference §4.6 observed them silently dropped (neither converted nor flagged);
  the newest istiod source read flags them as L7 ("A Match has no trust domain field ... Report
  it instead"); nodemesh follows the latter (fail closed) and says so in the notes.
- WAYPOINT: only `targetRefs` policies (Gateway = this waypoint, Service = the destination
  service, GatewayClass istio-waypoint from the root namespace = every waypoint); "selector
  policies will be ignored" (API proto). Full L7 when the request is seen. For TCP traffic
  (no request) Envoy's TCP filter chain applies (`IS:pilot/pkg/security/authz/model/model.go`
  `checkError`): an ALLOW rule with HTTP-only fields is dropped, and in DENY/AUDIT rules the
  HTTP-only fields are ignored, because "For a DENY rule, missing attributes are treated as
  matches" (API `authorization_policy.proto`).
- SIDECAR (kernel mode's node L7 proxy, "sidecar semantics without sidecars"): selector /
  namespace / mesh policies in full when the request is seen, Envoy TCP semantics otherwise.

Projections are pure functions of the full IR (`compile.py`) that say in the policy's notes what
they changed. `Entry` holds one AuthorizationPolicy with its attachment; its IR, its projections
and their compiled predicates (`matching.py`) are each built on first use, then kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from nodemesh.model.schema.istio import AuthorizationPolicy
from nodemesh.policy.conditions import CidrCondition
from nodemesh.policy.ir import Action, Clause, Condition, Layer, Match, Policy, Rule
from nodemesh.policy.istio.compile import ConditionCache, compile_authorization_policy
from nodemesh.policy.istio.conditions import IstioCondition
from nodemesh.policy.istio.matching import Compiled, compile_rules
from nodemesh.policy.selector import LabelSelector

__all__ = [
    "Entry",
    "IstioView",
    "Ready",
    "is_noop",
    "l7_fields",
    "node_proxy_keeps",
    "project_node_proxy",
    "project_tcp",
    "strip_rule",
]

Ready = tuple[Policy, Compiled]


class IstioView(Enum):
    """Who evaluates, which decides which policies apply and what they can see."""

    NODE_PROXY = "node-proxy"  # ambient ztunnel role: selector/namespace/mesh policies, L4 projection
    WAYPOINT = "waypoint"  # ambient waypoint: targetRefs policies only, full L7
    SIDECAR = "sidecar"  # kernel mode node L7 proxy: selector/namespace/mesh policies, sidecar semantics


def l7_fields(rule: Rule, keep: Callable[[Condition], bool]) -> list[str]:
    """The field labels (`paths`, `when request.headers[x]`, ...) of `rule` that `keep` refuses."""
    names: list[str] = []
    for clause in rule.clauses:
        for m in clause.matches:
            for c in m.conditions:
                if not keep(c):
                    label = c.label if isinstance(c, IstioCondition) else "?"
                    label = label.removesuffix(" notValues")
                    if label not in names:
                        names.append(label)
    return names


def node_proxy_keeps(c: Condition) -> bool:
    """Can ztunnel enforce `c` (reference §4.6)?"""
    return isinstance(c, CidrCondition) or (isinstance(c, IstioCondition) and c.node_proxy)


def _tcp_keeps(c: Condition) -> bool:
    return c.layer is Layer.L4


@dataclass(frozen=True, slots=True)
class _Stripped:
    rule: Rule
    noop: bool
    broader: bool
    narrower: bool


def strip_rule(rule: Rule, keep: Callable[[Condition], bool], *, void_when_empty: bool) -> _Stripped:
    """Drop the conditions `keep` refuses from every Match. An emptied Match is `void` (ztunnel
    skips it) or matches anything (Envoy: "missing attributes are treated as matches")."""
    clauses: list[Clause] = []
    noop = broader = narrower = False
    for clause in rule.clauses:
        matches: list[Match] = []
        for m in clause.matches:
            kept = tuple(c for c in m.conditions if keep(c))
            if len(kept) == len(m.conditions):
                matches.append(m)
            elif kept:
                broader = True
                matches.append(Match(kept))
            elif void_when_empty:
                narrower = True
                matches.append(Match((), void=True))
            else:
                broader = True
                matches.append(Match(()))
        if void_when_empty and matches and all(m.void for m in matches):
            noop = True
        if not void_when_empty and any(not m.conditions for m in matches):
            continue  # a clause with a match-anything Match holds: drop it
        clauses.append(Clause(clause.name, tuple(matches)))
    return _Stripped(Rule(rule.index, rule.path, tuple(clauses), rule.notes), noop, broader, narrower)


def is_noop(rule: Rule) -> bool:
    """A rule with a clause made only of void matches can never match (reference §4.6)."""
    return any(c.matches and all(m.void for m in c.matches) for c in rule.clauses)


def project_node_proxy(policy: Policy) -> Policy:
    """The policy as ztunnel receives it from istiod (`handleRule`), with notes saying what changed."""
    what = f"{policy.action.value} {policy.ref.namespace}/{policy.ref.name}"
    rules: list[Rule] = []
    notes: list[str] = []
    for rule in policy.rules:
        l7 = l7_fields(rule, node_proxy_keeps)
        if not l7:
            rules.append(rule)
            continue
        fields = ", ".join(l7)
        td = (
            " (trustDomains: ztunnel's Match has no trust-domain field, so istiod cannot send it)"
            if any("rustDomain" in f for f in l7)
            else ""
        )
        if policy.action is Action.ALLOW:
            notes.append(
                f"rule {rule.index} of {what} dropped at the node proxy: it uses L7 fields ({fields}){td}; "
                "attach a waypoint and target it with targetRefs"
            )
            continue
        stripped = strip_rule(rule, node_proxy_keeps, void_when_empty=True)
        if stripped.noop:
            effect = "the rule can never fire (a clause has nothing left to match): it is a no-op"
        else:
            parts = []
            if stripped.broader:
                parts.append("it matches more than written (L4 parts kept without their L7 fields)")
            if stripped.narrower:
                parts.append("sources, operations or conditions made only of L7 fields can no longer match")
            effect = "; ".join(parts)
        note = f"rule {rule.index} of {what}: L7 fields ({fields}) stripped at the node proxy{td}; {effect}"
        notes.append(note)
        rules.append(Rule(rule.index, rule.path, stripped.rule.clauses, (*rule.notes, note)))
    if policy.action is Action.ALLOW and policy.rules and not rules:
        notes.append(
            f"{what} has no rule left at the node proxy: as an ALLOW policy it still applies, "
            "so it allows nothing here (everything not allowed by another policy is denied)"
        )
    if policy.action is Action.DENY and notes and all(is_noop(r) for r in rules):
        notes.append(f"{what} has no enforceable rule at the node proxy: it has no effect here")
    return replace(policy, rules=tuple(rules), notes=(*policy.notes, *notes))


def project_tcp(policy: Policy) -> Policy:
    """The policy in Envoy's TCP filter chain (`model.go` Generate(forTCP=true), `checkError`)."""
    what = f"{policy.action.value} {policy.ref.namespace}/{policy.ref.name}"
    rules: list[Rule] = []
    notes: list[str] = []
    for rule in policy.rules:
        l7 = l7_fields(rule, _tcp_keeps)
        if not l7:
            rules.append(rule)
            continue
        fields = ", ".join(l7)
        if policy.action is Action.ALLOW:
            notes.append(
                f"rule {rule.index} of {what} does not apply to TCP traffic: "
                f"it uses HTTP-only fields ({fields})"
            )
            continue
        note = (
            f"rule {rule.index} of {what} applies to TCP traffic without its HTTP-only fields ({fields}): "
            "for a DENY rule, missing attributes are treated as matches"
        )
        notes.append(note)
        stripped = strip_rule(rule, _tcp_keeps, void_when_empty=False)
        rules.append(Rule(rule.index, rule.path, stripped.rule.clauses, (*rule.notes, note)))
    return replace(policy, rules=tuple(rules), notes=(*policy.notes, *notes))


@dataclass(eq=False)
class Entry:
    """One AuthorizationPolicy: its manifest and attachment, its IR (compiled on first use: most
    destinations never meet most policies) and its projections (also built on first use)."""

    order: int
    doc: AuthorizationPolicy
    root: str
    cache: ConditionCache
    selector: LabelSelector | None
    targets: tuple[tuple[str, str, str], ...]
    _policy: Policy | None = None
    _node: Policy | None = None
    _tcp: Policy | None = None
    _ready: dict[tuple[bool, bool], Ready] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = compile_authorization_policy(self.doc, self.root, self.cache)
        return self._policy

    @property
    def action(self) -> Action:
        return Action(self.doc.spec.action)

    def ready(self, view: IstioView, tcp: bool) -> Ready:
        """The projection for `view` with its compiled predicates (cached)."""
        key = (view is IstioView.NODE_PROXY, tcp and view is not IstioView.NODE_PROXY)
        found = self._ready.get(key)
        if found is None:
            policy = self.view(view, tcp)
            found = self._ready[key] = (policy, compile_rules(policy))
        return found

    def view(self, view: IstioView, tcp: bool) -> Policy:
        if view is IstioView.NODE_PROXY:
            if self._node is None:
                self._node = project_node_proxy(self.policy)
            return self._node
        if tcp:
            if self._tcp is None:
                self._tcp = project_tcp(self.policy)
            return self._tcp
        return self.policy
