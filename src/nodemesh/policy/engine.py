"""The policy engine: every API, at every enforcement point a flow crosses, in one verdict.

This module decides WHERE each API is enforced for a data path and combines the verdicts; the
per-API modules (kubernetes, cilium, istio) decide WHAT each policy says. Semantics by mode:

ambient (Istio Ambient shape)
  source       Kubernetes and Cilium egress rules (L3/L4), at the source's node proxy.
  waypoint     only when the destination (Service, or the pod for workload waypoints) uses one
               and both ends are in the mesh: Istio `targetRefs` policies with full L7, and the
               L7 (`rules.http`) part of Cilium rules, ingress and egress.
  destination  Kubernetes and Cilium ingress rules (L3/L4) with the ORIGINAL source; Istio
               PeerAuthentication and selector/namespace/mesh AuthorizationPolicies, projected
               to L4 as ztunnel does, with the source identity the node proxy sees (the
               waypoint's, when the flow came through one: as in Istio). A Cilium port with HTTP
               rules and no waypoint cannot be inspected: the connection is refused (fail closed).
kernel (Cilium shape)
  source       Kubernetes and Cilium egress rules in the kernel; Cilium egress HTTP rules at the
               source node's L7 proxy.
  destination  Kubernetes and Cilium ingress rules and PeerAuthentication in the kernel; Istio
               selector policies with no L7 field for this port (TCP semantics).
  l7-proxy     only for ports that carry L7 rules: Cilium `rules.http` and Istio selector
               policies in full, as a sidecar would (sidecar semantics without sidecars).
none           no data path enforces anything; the trace says so.

A flow is allowed only if every point allows it; the verdict names the first point that denied.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from nodemesh.model.world import ServiceInfo, Waypoint, Workload, World
from nodemesh.policy.cilium import CiliumEngine
from nodemesh.policy.decision import Decision, DropReason, Point, PointDecision, Verdict, combine
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext
from nodemesh.policy.ir import Api, Direction, Scope
from nodemesh.policy.istio import IstioEngine, IstioView
from nodemesh.policy.kubernetes import KubernetesEngine

__all__ = ["Mode", "PolicyEngine", "Route", "Trace"]

_L4_CACHE_MAX = 200_000


class Mode(Enum):
    NONE = "none"
    AMBIENT = "ambient"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class Route:
    """How a flow travels: the resolved destination pod, the Service it was addressed to (if
    any), and the waypoint on the way (ambient only)."""

    src_workload: Workload | None = None
    dst_workload: Workload | None = None
    service: ServiceInfo | None = None
    service_port: int | None = None
    waypoint: Waypoint | None = None


@dataclass(frozen=True, slots=True)
class Trace:
    """A flow's verdict, where it was decided, and the verdict at every point it crosses."""

    verdict: Verdict
    decision: Decision
    decided_at: Point | None
    points: tuple[PointDecision, ...]
    ctx: FlowContext
    route: Route
    mode: Mode
    notes: tuple[str, ...] = field(default=())


class PolicyEngine:
    """All policies of a world, compiled once; evaluates flows for one data path mode."""

    def __init__(self, world: World, mode: Mode | str | None = None) -> None:
        self.world = world
        self.mode = Mode(mode if mode is not None else world.mode)
        # Compiling allocates many small long-lived objects; the cyclic GC would rescan them over
        # and over (measured: it doubles compile time at 10k policies). Pause it while compiling.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.kubernetes = KubernetesEngine(world)
            self.cilium = CiliumEngine(world)
            self.istio = IstioEngine(world)
        finally:
            if gc_was_enabled:
                gc.enable()
        # L3/L4 verdicts per (point, flow key): the node proxy's hot path is one dict lookup once
        # a (source, destination, port) has been seen, as Cilium's policy map is. The engine is
        # immutable (a policy change builds a new engine), so entries never go stale.
        self._l4_cache: dict[tuple[object, ...], PointDecision] = {}
        self._verdicts: dict[tuple[object, ...], Decision] = {}

    @staticmethod
    def _flow_key(point: Point, ctx: FlowContext, route: Route) -> tuple[object, ...]:
        return (
            point,
            ctx.src.key,
            ctx.dst.key,
            ctx.port,
            ctx.protocol.value,
            id(route.waypoint),
            id(route.service),
        )

    def _cached(
        self, point: Point, ctx: FlowContext, route: Route, compute: Callable[[], PointDecision]
    ) -> PointDecision:
        if ctx.request is not None:
            return compute()
        key = self._flow_key(point, ctx, route)
        hit = self._l4_cache.get(key)
        if hit is None:
            if len(self._l4_cache) >= _L4_CACHE_MAX:
                self._l4_cache.clear()
            hit = self._l4_cache[key] = compute()
        return hit

    # ---- routing -------------------------------------------------------------------------
    def route(self, route: Route) -> Route:
        """Fill in the waypoint a flow goes through (ambient, both ends in the mesh)."""
        if self.mode is not Mode.AMBIENT or route.dst_workload is None:
            return route
        if not self.world.in_mesh(route.dst_workload):
            return route
        if route.src_workload is None or not self.world.in_mesh(route.src_workload):
            return route
        if route.service is not None:
            wp = self.world.service_waypoint(route.service)
        else:
            wp = self.world.workload_waypoint(route.dst_workload)
        if wp is None:
            return route
        return Route(route.src_workload, route.dst_workload, route.service, route.service_port, wp)

    def waypoint_endpoint(self, waypoint: Waypoint) -> Endpoint:
        """The identity a destination node proxy sees for traffic relayed by `waypoint`."""
        principal = f"{self.world.trust_domain}/ns/{waypoint.namespace}/sa/{waypoint.service_account}"
        return Endpoint(
            namespace=waypoint.namespace,
            workload=waypoint.name,
            service_account=waypoint.service_account,
            labels={"gateway.networking.k8s.io/gateway-name": waypoint.name},
            principal=principal,
            entities=frozenset({"cluster"}),
        )

    # ---- enforcement points ---------------------------------------------------------------
    def source_egress(self, ctx: FlowContext, route: Route) -> PointDecision:
        """Source egress: Kubernetes and Cilium egress rules of the source workload."""
        return self._cached(Point.SOURCE, ctx, route, lambda: self._source_egress(ctx, route))

    def _network_policies(self, ctx: FlowContext, route: Route, direction: Direction) -> list[Decision]:
        """Kubernetes and Cilium L3/L4 verdicts for one direction (egress at the source, ingress
        at the destination); a Cilium allow that carries HTTP rules is checked where it can be."""
        decisions: list[Decision] = []
        k8s = self.kubernetes.evaluate(ctx, direction)
        if k8s is not None:
            decisions.append(k8s)
        cil = self.cilium.evaluate_l4(ctx, direction)
        if cil is not None:
            if cil.allowed and cil.redirect:
                cil = self._cilium_l7_here(ctx, direction, cil, route)
            decisions.append(cil)
        return decisions

    def _source_egress(self, ctx: FlowContext, route: Route) -> PointDecision:
        decisions = self._network_policies(ctx, route, Direction.EGRESS)
        where = f"{ctx.src} egress" + (f" (node {ctx.src.node})" if ctx.src.node else "")
        return PointDecision(
            Point.SOURCE, where, combine(decisions, "no egress policy selects the source"), tuple(decisions)
        )

    def _cilium_l7_here(self, ctx: FlowContext, direction: Direction, l4: Decision, route: Route) -> Decision:
        """A Cilium L4 allow that carries HTTP rules: check the request where a proxy sees it."""
        if self.mode is Mode.AMBIENT:
            if route.waypoint is None:
                return Decision.deny(
                    f"{l4.policy} has HTTP rules for port {ctx.port}, but no waypoint is attached to "
                    f"{route.service.name if route.service else ctx.dst}: in ambient mode only a waypoint "
                    "can inspect requests, so the connection is refused (fail closed); attach one with "
                    "the istio.io/use-waypoint label",
                    api=Api.CILIUM,
                    policy=l4.policy,
                    rule=l4.rule,
                    drop_reason=DropReason.L7_UNINSPECTABLE,
                )
            return Decision.allow(
                f"{l4.reason}; its HTTP rules are enforced at waypoint {route.waypoint.key}",
                api=Api.CILIUM,
                policy=l4.policy,
                rule=l4.rule,
                redirect=True,
            )
        # kernel mode: the node's L7 proxy sees the request. Egress rules are checked at the source
        # node here; ingress ones at the destination's L7 proxy point (`l7_proxy`).
        if direction is Direction.INGRESS:
            return l4
        return self._cilium_l7(ctx, direction, l4)

    def _cilium_l7(self, ctx: FlowContext, direction: Direction, l4: Decision) -> Decision:
        if ctx.request is None:
            return Decision.allow(
                f"{l4.reason}; the port has HTTP rules: every request is checked by the L7 proxy "
                "(give --method/--path to evaluate one)",
                api=Api.CILIUM,
                policy=l4.policy,
                rule=l4.rule,
                redirect=True,
            )
        full = self.cilium.evaluate_l7(ctx, direction)
        return full if full is not None else l4

    def waypoint(self, ctx: FlowContext, route: Route) -> PointDecision:
        assert route.waypoint is not None
        decisions: list[Decision] = []
        ist = self.istio.evaluate(ctx, IstioView.WAYPOINT, waypoint=route.waypoint, service=route.service)
        if ist is not None:
            decisions.append(ist)
        for direction in (Direction.EGRESS, Direction.INGRESS):
            l4 = self.cilium.evaluate_l4(ctx, direction)
            if l4 is not None and l4.allowed and l4.redirect:
                decisions.append(self._cilium_l7(ctx, direction, l4))
        where = f"waypoint {route.waypoint.key}"
        return PointDecision(
            Point.WAYPOINT, where, combine(decisions, "no waypoint policy applies"), tuple(decisions)
        )

    def destination(self, ctx: FlowContext, route: Route) -> PointDecision:
        """Destination ingress: Kubernetes and Cilium ingress rules, Istio at the node proxy."""
        return self._cached(Point.DESTINATION, ctx, route, lambda: self._destination(ctx, route))

    def _destination(self, ctx: FlowContext, route: Route) -> PointDecision:
        decisions = self._network_policies(ctx, route, Direction.INGRESS)
        notes: list[str] = []
        dst_in_mesh = route.dst_workload is not None and self.world.in_mesh(route.dst_workload)
        if dst_in_mesh:
            seen = ctx
            if route.waypoint is not None:
                seen = ctx.with_src(self.waypoint_endpoint(route.waypoint))
            peer = self.istio.peer_authentication(seen)
            if peer is not None:
                decisions.append(peer)
            if self.mode is Mode.AMBIENT:
                ist = self.istio.evaluate(seen.without_request(), IstioView.NODE_PROXY)
            elif not self.needs_l7_proxy(ctx):
                ist = self.istio.evaluate(seen.without_request(), IstioView.SIDECAR)
            else:
                ist = None
            if ist is not None:
                decisions.append(ist)
            if route.waypoint is not None and (ist is not None or peer is not None):
                notes.append(
                    f"Istio policies here see the waypoint's identity ({seen.src.principal}), "
                    "not the original client's, as in Istio Ambient"
                )
        where = f"{ctx.dst} ingress" + (f" (node {ctx.dst.node})" if ctx.dst.node else "")
        return PointDecision(
            Point.DESTINATION,
            where,
            combine(decisions, "no ingress policy selects the destination"),
            tuple(decisions),
            tuple(notes),
        )

    def needs_l7_proxy(self, ctx: FlowContext) -> bool:
        """Kernel mode: does this flow's destination port carry L7 rules (steered to the proxy)?"""
        l4 = self.cilium.evaluate_l4(ctx, Direction.INGRESS)
        if l4 is not None and l4.allowed and l4.redirect:
            return True
        return self.istio.has_l7_rules(ctx)

    def l7_proxy(self, ctx: FlowContext, route: Route) -> PointDecision:
        decisions: list[Decision] = []
        l4 = self.cilium.evaluate_l4(ctx, Direction.INGRESS)
        if l4 is not None and l4.allowed and l4.redirect:
            decisions.append(self._cilium_l7(ctx, Direction.INGRESS, l4))
        if route.dst_workload is not None and self.world.in_mesh(route.dst_workload):
            ist = self.istio.evaluate(ctx, IstioView.SIDECAR)
            if ist is not None:
                decisions.append(ist)
        where = f"L7 proxy of node {ctx.dst.node}" if ctx.dst.node else "node L7 proxy"
        return PointDecision(
            Point.L7_PROXY, where, combine(decisions, "no L7 policy applies"), tuple(decisions)
        )

    def connection(self, ctx: FlowContext, route: Route) -> Decision:
        """The L3/L4 verdict for a new connection (source egress, then destination ingress): what
        a node proxy or the kernel path asks per connection. Cached per flow key."""
        # world objects (waypoint, service) are stable for the engine's lifetime: id() is their key
        key = (ctx.src.key, ctx.dst.key, ctx.port, ctx.protocol.value, id(route.waypoint), id(route.service))
        hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        plain = ctx.without_request() if ctx.request is not None else ctx
        src = self.source_egress(plain, route).decision
        verdict = src if not src.allowed else self.destination(plain, route).decision
        if len(self._verdicts) >= _L4_CACHE_MAX:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict

    # ---- whole flows ------------------------------------------------------------------------
    def trace(self, ctx: FlowContext, route: Route) -> Trace:
        """Evaluate a flow at every point it crosses, in path order."""
        route = self.route(route)
        if self.mode is Mode.NONE:
            decision = Decision.allow("mode none: no data path enforces policy")
            return Trace(Verdict.ALLOW, decision, None, (), ctx, route, self.mode)
        # Egress rules exist only for pods: an address outside the cluster has no source point.
        points = [self.source_egress(ctx, route)] if ctx.src.is_pod else []
        if self.mode is Mode.AMBIENT and route.waypoint is not None:
            points.append(self.waypoint(ctx, route))
        points.append(self.destination(ctx, route))
        if self.mode is Mode.KERNEL and self.needs_l7_proxy(ctx):
            points.append(self.l7_proxy(ctx, route))
        for p in points:
            if not p.decision.allowed:
                return Trace(Verdict.DENY, p.decision, p.point, tuple(points), ctx, route, self.mode)
        last = next(
            (p.decision for p in reversed(points) if p.decision.policy is not None), points[-1].decision
        )
        return Trace(Verdict.ALLOW, last, None, tuple(points), ctx, route, self.mode)

    def analyze(self) -> list[Finding]:
        """Every API's findings plus the cross-API ones (NM1xx)."""
        findings = [*self.kubernetes.analyze(), *self.cilium.analyze(), *self.istio.analyze()]
        findings += self._cross_api_findings()
        order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
        return sorted(findings, key=lambda f: (order[f.severity], f.code, f.resource))

    def _cross_api_findings(self) -> list[Finding]:
        out: list[Finding] = []
        if self.mode is Mode.KERNEL:
            for policy in self.istio.policies:
                if policy.scope is Scope.TARGET_REFS:
                    out.append(
                        Finding(
                            "NM102",
                            Severity.ERROR,
                            str(policy.ref),
                            "targetRefs policies are enforced only by waypoints, and kernel mode has none: "
                            "this policy is not enforced (as sidecars ignore targetRefs); use a selector "
                            "to have the node L7 proxy enforce it",
                            policy.file,
                            policy.line,
                        )
                    )
            return out
        if self.mode is not Mode.AMBIENT:
            return out
        for policy in self.cilium.policies:
            if not any(rule.has_l7 for rule in policy.rules) or policy.direction is not Direction.INGRESS:
                continue
            subject = policy.subject
            bare = sorted(
                {
                    f"{w.namespace}/{w.name}"
                    for w in self.world.workloads
                    if subject is not None
                    and subject.selects(self.world.endpoint(w))
                    and not any(self.world.service_waypoint(s) for s in self.world.services_of(w))
                    and self.world.workload_waypoint(w) is None
                }
            )
            if bare:
                out.append(
                    Finding(
                        "NM101",
                        Severity.ERROR,
                        str(policy.ref),
                        f"HTTP rules select {', '.join(bare)}, which no waypoint serves: in ambient mode "
                        "only a waypoint can inspect requests, so these ports refuse every connection "
                        "(fail closed). Attach a waypoint (istio.io/use-waypoint) or use mode: kernel.",
                        policy.file,
                        policy.line,
                    )
                )
        return out
