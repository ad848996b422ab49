"""Istio static analysis: policies that cannot work as written in this world (NM201-NM208).

- NM201 (Warning) L7 fields in a selector / namespace / mesh policy, which the ambient node proxy
  enforces without seeing requests (istiod `handleRule`, reference §4.6: the ALLOW rule is
  dropped, the DENY rule stripped); a selector RequestAuthentication in ambient mode, which no
  waypoint applies (reference §4.8).
- NM202 (Error) a targetRef that nothing enforces: a missing Service or Gateway, a Service with
  no waypoint, a Gateway that is not a waypoint, GatewayClass other than istio-waypoint or outside
  the root namespace, any targetRef outside ambient mode (reference §4.2).
- NM203 (Warning) a selector that matches no workload.
- NM204 (Warning) a DENY rule that can never fire (`subsumption.never_matches`).
- NM205 (Warning) a rule shadowed by an earlier rule of the same action and attachment.
- NM206 CUSTOM (Error: the external authorizer is never called) and AUDIT (Warning: no sink).
- NM207 an `istio.io/use-waypoint` label naming no waypoint (Error), or a waypoint whose
  `istio.io/waypoint-for` does not serve that kind of traffic (Warning).
- NM208 (Warning) PeerAuthentication DISABLE, unsupported in ambient and treated as PERMISSIVE.

Invariants: reads the world and the engine's compiled policies, changes neither; linear in the
number of rules except NM205, which compares rules in full only while fewer than `_SHADOW_FULL`
precede within one attachment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nodemesh.model.schema.base import Document
from nodemesh.model.schema.istio import PeerAuthentication, RequestAuthentication
from nodemesh.model.world import USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR, Workload, World
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.ir import Action, Rule
from nodemesh.policy.istio.compile import WAYPOINT_CLASS, target_key
from nodemesh.policy.istio.projection import (
    Entry,
    IstioView,
    is_noop,
    l7_fields,
    node_proxy_keeps,
    strip_rule,
)
from nodemesh.policy.istio.subsumption import RuleIndex, index_rule, never_matches, rule_shape, subsumes
from nodemesh.policy.selector import LabelSelector

__all__ = ["IstioAnalyzer"]

_SHADOW_FULL = 256  # earlier rules compared in full for NM205, per attachment


class IstioAnalyzer:
    """The findings for one world's Istio policies, as compiled by its `IstioEngine`."""

    def __init__(
        self,
        world: World,
        entries: Sequence[Entry],
        authn: Sequence[RequestAuthentication],
        peer: Sequence[PeerAuthentication],
    ) -> None:
        self.world = world
        self.root = world.root_namespace
        self._entries = entries
        self._authn = authn
        self._peer = peer
        self._by_ns: dict[str, list[Workload]] | None = None

    def findings(self) -> list[Finding]:
        """NM201-NM208: Istio policies that cannot work as written in this world."""
        out: list[Finding] = []
        for e in self._entries:
            out += self._l7_at_node_proxy(e)
            out += self._targets(e.doc, e.targets)
            out += self._selector_matches(e.doc, e.doc.spec.selector)
            out += self._never_fires(e)
            out += self._unsupported(e)
        out += self._shadowed()
        for ra in self._authn:
            targets = tuple(target_key(r, ra.namespace) for r in ra.spec.all_target_refs)
            out += self._targets(ra, targets)
            out += self._selector_matches(ra, ra.spec.selector)
            if self.world.mode == "ambient" and not targets:
                out.append(
                    self._finding(
                        "NM201",
                        Severity.WARNING,
                        ra,
                        "in ambient mode only waypoints validate JWTs and they ignore selector policies: "
                        "this RequestAuthentication has no effect; attach it with targetRefs to a waypoint "
                        "(Gateway) or a Service that uses one",
                    )
                )
        for pa in self._peer:
            out += self._selector_matches(pa, pa.spec.selector)
            disabled = [str(p) for p, m in (pa.spec.port_level_mtls or {}).items() if m.mode == "DISABLE"]
            if pa.spec.mode == "DISABLE" or disabled:
                where = "" if pa.spec.mode == "DISABLE" else f" on port(s) {', '.join(disabled)}"
                out.append(
                    self._finding(
                        "NM208",
                        Severity.WARNING,
                        pa,
                        f"mTLS mode DISABLE{where} is not supported by nodemesh (as in Istio ambient): it is "
                        "treated as PERMISSIVE; mesh workloads still use mTLS, plaintext is still accepted",
                    )
                )
        out += self._use_waypoint_labels()
        return out

    @staticmethod
    def _finding(code: str, severity: Severity, doc: Document, message: str) -> Finding:
        line = doc.location.line
        return Finding(
            code, severity, f"{doc.kind} {doc.namespace}/{doc.name}", message, doc.location.file, line
        )

    def _workloads_in(self, namespace: str) -> list[Workload]:
        """The workloads a policy in `namespace` can select (all of them from the root namespace)."""
        if self._by_ns is None:
            self._by_ns = {}
            for w in self.world.workloads:
                self._by_ns.setdefault(w.namespace, []).append(w)
        if namespace == self.root:
            return self.world.workloads
        return self._by_ns.get(namespace, [])

    def _selected(self, doc: Document, labels: Mapping[str, str]) -> list[str]:
        selector = LabelSelector.from_labels(labels)
        seen = {
            f"{w.namespace}/{w.name}": None
            for w in self._workloads_in(doc.namespace)
            if selector.matches(w.labels)
        }
        return list(seen)

    def _l7_at_node_proxy(self, e: Entry) -> list[Finding]:
        if self.world.mode != "ambient" or e.targets or e.policy.action not in (Action.ALLOW, Action.DENY):
            return []
        node = e.view(IstioView.NODE_PROXY, True)
        if node.notes == e.policy.notes:
            return []
        if e.policy.action is Action.ALLOW:
            if not node.rules:
                effect = "so this ALLOW denies more than written: it allows nothing at the node proxy"
            else:
                effect = "so this ALLOW denies more than written (those rules allow nothing)"
        elif all(is_noop(r) for r in node.rules):
            effect = "so this DENY silently does nothing"
        else:
            stripped = [
                strip_rule(r, node_proxy_keeps, void_when_empty=True)
                for r in e.policy.rules
                if l7_fields(r, node_proxy_keeps)
            ]
            parts = []
            if any(x.broader for x in stripped):
                parts.append("denies more than written (L4 parts kept without their L7 conditions)")
            if any(x.noop or x.narrower for x in stripped):
                parts.append("denies less than written (L7-only parts can never match)")
            effect = "so this DENY " + " and ".join(parts)
        waypoints: set[str] = set()
        for w in self._workloads_of(e):
            found = [
                self.world.workload_waypoint(w),
                *map(self.world.service_waypoint, self.world.services_of(w)),
            ]
            waypoints.update(wp.key for wp in found if wp is not None)
        hint = (
            f"; waypoint(s) {', '.join(sorted(waypoints))} serve these workloads but ignore selector "
            "policies: target the waypoint or the Service with targetRefs"
            if waypoints
            else "; no waypoint serves these workloads: attach one (istio.io/use-waypoint) and use targetRefs"
        )
        details = "; ".join(n for n in node.notes if n not in e.policy.notes)
        return [
            self._finding(
                "NM201",
                Severity.WARNING,
                e.doc,
                "L7 fields in a selector/namespace-scoped policy are enforced by the node proxy, which "
                f"cannot see requests, {effect}{hint}. {details}",
            )
        ]

    def _workloads_of(self, e: Entry) -> list[Workload]:
        return [
            w
            for w in self._workloads_in(e.doc.namespace)
            if e.selector is None or e.selector.matches(w.labels)
        ]

    def _targets(self, doc: Document, targets: tuple[tuple[str, str, str], ...]) -> list[Finding]:
        out: list[Finding] = []
        for kind, ns, name in targets:
            problem: str | None = None
            if self.world.mode != "ambient":
                problem = (
                    f"targetRefs {kind} {ns}/{name}: mode {self.world.mode} runs no waypoints, nothing "
                    "enforces this policy; use a selector (enforced by the node L7 proxy in kernel mode)"
                )
            elif kind == "Service":
                svc = self.world.services.get((ns, name))
                if svc is None:
                    problem = (
                        f"targets Service {ns}/{name}, which does not exist: nothing enforces this policy"
                    )
                elif self.world.service_waypoint(svc) is None:
                    problem = (
                        f"targets Service {ns}/{name}, which has no waypoint (label it "
                        "istio.io/use-waypoint, or its namespace): nothing enforces this policy"
                    )
            elif kind == "Gateway":
                if (ns, name) not in self.world.waypoints:
                    other = any(
                        d.kind == "Gateway" and d.namespace == ns and d.name == name
                        for d in self.world.documents
                    )
                    problem = (
                        f"targets Gateway {ns}/{name}, which is not a waypoint (gatewayClassName is not "
                        f"{WAYPOINT_CLASS}): nodemesh runs no other gateways, nothing enforces this policy"
                        if other
                        else f"targets Gateway {ns}/{name}, which does not exist: nothing enforces it"
                    )
            elif kind == "GatewayClass":
                if name != WAYPOINT_CLASS:
                    problem = f"targets GatewayClass {name}: only {WAYPOINT_CLASS} is a waypoint class"
                elif doc.namespace != self.root:
                    problem = (
                        f"targets GatewayClass {name} outside the root namespace {self.root}: "
                        "it applies to nothing"
                    )
                elif not self.world.waypoints:
                    problem = "targets every waypoint (GatewayClass istio-waypoint), but there is none"
            else:
                problem = (
                    f"targets {kind} {ns}/{name}: nodemesh does not support {kind}, nothing enforces this"
                )
            if problem:
                out.append(self._finding("NM202", Severity.ERROR, doc, problem))
        return out

    def _selector_matches(self, doc: Document, selector: object) -> list[Finding]:
        labels = getattr(selector, "match_labels", None)
        if not labels:
            return []
        if self._selected(doc, labels):
            return []
        where = "any namespace" if doc.namespace == self.root else f"namespace {doc.namespace}"
        sel = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return [
            self._finding("NM203", Severity.WARNING, doc, f"selector {sel} matches no workload in {where}")
        ]

    def _never_fires(self, e: Entry) -> list[Finding]:
        if e.policy.action is not Action.DENY:
            return []
        out = []
        for rule in e.policy.rules:
            why = never_matches(rule)
            if why:
                out.append(
                    self._finding(
                        "NM204", Severity.WARNING, e.doc, f"DENY rule {rule.index} can never fire: {why}"
                    )
                )
        return out

    def _unsupported(self, e: Entry) -> list[Finding]:
        if e.policy.action is Action.CUSTOM:
            provider = e.doc.spec.provider.name if e.doc.spec.provider else "?"
            return [
                self._finding(
                    "NM206",
                    Severity.ERROR,
                    e.doc,
                    "CUSTOM policies are not enforced by nodemesh: the external authorizer "
                    f"{provider!r} is never called, so requests it would deny are let through "
                    "(decisions carry a note)",
                )
            ]
        if e.policy.action is Action.AUDIT:
            at = " and ztunnel ignores AUDIT (not evaluated at the node proxy)" if not e.targets else ""
            return [
                self._finding(
                    "NM206",
                    Severity.WARNING,
                    e.doc,
                    "AUDIT only marks requests: nodemesh notes matches in its decisions but has no "
                    f"audit sink{at}",
                )
            ]
        return []

    def _shadowed(self) -> list[Finding]:
        """A rule that an earlier rule of the same action and attachment already covers.

        Rules are compared in full (`subsumes`) within a policy and, across policies of one
        attachment, while fewer than `_SHADOW_FULL` rules precede; past that (thousands of
        policies on one selector) only identical rules and match-everything rules are found,
        which keeps `analyze` linear."""
        out: list[Finding] = []
        groups: dict[tuple[object, ...], list[Entry]] = {}
        for e in self._entries:
            sel = tuple(sorted(e.doc.spec.selector.match_labels.items())) if e.doc.spec.selector else None
            key = (e.action, e.doc.namespace, sel, tuple(sorted(e.targets)), e.doc.dry_run)
            groups.setdefault(key, []).append(e)
        for entries in groups.values():
            earlier: list[tuple[Entry, Rule, RuleIndex]] = []
            by_shape: dict[frozenset[object], tuple[Entry, Rule]] = {}
            catch_all: tuple[Entry, Rule] | None = None
            for e in entries:
                own: list[tuple[Entry, Rule, RuleIndex]] = []
                for rule in e.policy.rules:
                    shape, index = rule_shape(rule), index_rule(rule)
                    pool = earlier if len(earlier) < _SHADOW_FULL else own
                    cover = catch_all or by_shape.get(shape)
                    if cover is None:
                        cover = next(((pe, r) for pe, r, ri in pool if subsumes(ri, index)), None)
                    if cover is not None:
                        out.append(self._shadow_finding(e, rule, *cover))
                    earlier.append((e, rule, index))
                    own.append((e, rule, index))
                    by_shape.setdefault(shape, (e, rule))
                    if not index and catch_all is None:
                        catch_all = (e, rule)
        return out

    def _shadow_finding(self, e: Entry, rule: Rule, pe: Entry, r: Rule) -> Finding:
        by = f"rule {r.index}" if pe is e else f"rule {r.index} of {pe.doc.namespace}/{pe.doc.name}"
        return self._finding(
            "NM205",
            Severity.WARNING,
            e.doc,
            f"{e.action.value} rule {rule.index} is shadowed by {by}: everything it matches is already "
            "matched there",
        )

    def _use_waypoint_labels(self) -> list[Finding]:
        out: list[Finding] = []
        subjects: list[tuple[str, str, str, Mapping[str, str], tuple[str, ...]]] = []
        for ns, labels in self.world.namespaces.items():
            subjects.append(("Namespace", ns, ns, labels, ("service", "workload", "all")))
        for svc in self.world.services.values():
            subjects.append(
                ("Service", svc.namespace, f"{svc.namespace}/{svc.name}", svc.labels, ("service", "all"))
            )
        seen: set[tuple[str, str]] = set()
        for w in self.world.workloads:
            if (w.namespace, w.name) in seen:
                continue
            seen.add((w.namespace, w.name))
            kind = "Deployment" if w.kind == "deployment" else "Pod"
            subjects.append((kind, w.namespace, f"{w.namespace}/{w.name}", w.labels, ("workload", "all")))
        for kind, ns, name, labels, accepts in subjects:
            wanted = labels.get(USE_WAYPOINT)
            if wanted is None or wanted == "none":
                continue
            wp_ns = labels.get(USE_WAYPOINT_NAMESPACE, ns)
            doc = self._document(kind, name)
            file, line = (doc.location.file, doc.location.line) if doc is not None else ("", 0)
            wp = self.world.waypoints.get((wp_ns, wanted))
            if wp is None:
                gw = any(
                    d.kind == "Gateway" and d.namespace == wp_ns and d.name == wanted
                    for d in self.world.documents
                )
                what = (
                    f"Gateway {wp_ns}/{wanted} is not a waypoint (gatewayClassName is not {WAYPOINT_CLASS})"
                    if gw
                    else f"there is no Gateway {wp_ns}/{wanted}"
                )
                out.append(
                    Finding(
                        "NM207",
                        Severity.ERROR,
                        f"{kind} {name}",
                        f"{USE_WAYPOINT}={wanted}, but {what}: traffic goes direct and L7 policy "
                        "is not applied",
                        file,
                        line,
                    )
                )
            elif kind != "Namespace" and wp.waypoint_for not in accepts:
                out.append(
                    Finding(
                        "NM207",
                        Severity.WARNING,
                        f"{kind} {name}",
                        f"{USE_WAYPOINT}={wanted}, but waypoint {wp.key} has "
                        f"{WAYPOINT_FOR}={wp.waypoint_for}: it does not serve {kind.lower()} traffic, "
                        "which goes direct",
                        file,
                        line,
                    )
                )
        return out

    def _document(self, kind: str, name: str) -> Document | None:
        for d in self.world.documents:
            full = d.name if kind == "Namespace" else f"{d.namespace}/{d.name}"
            if d.kind == kind and full == name:
                return d
        return None
