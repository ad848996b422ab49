"""The engine across APIs and enforcement points: where each API is enforced per data path,
and how their verdicts combine."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.model.loader import load_text
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World
from nodemesh.policy.decision import DropReason, Point, Verdict
from nodemesh.policy.engine import Mode, PolicyEngine, Route, Trace
from nodemesh.policy.flow import FlowContext, Protocol
from nodemesh.policy.ir import Api
from nodemesh.policy.probe import Probe, resolve

SHOP = Path(__file__).parents[2] / "examples" / "shop"


def _trace(world: World, mode: str, **probe: object) -> Trace:
    p = Probe.from_json({k.replace("src", "from").replace("dst", "to"): v for k, v in probe.items()})
    ctx, route = resolve(world, p)
    return PolicyEngine(world, mode).trace(ctx, route)


@pytest.fixture(scope="module")
def shop() -> World:
    return World.build(load_documents([str(SHOP)]))


@pytest.fixture(scope="module")
def shop_l7_only() -> World:
    files = [
        SHOP / "00-namespace.yaml",
        SHOP / "10-workloads.yaml",
        SHOP / "21-orders-http.yaml",
        SHOP / "30-istio-policies.yaml",
    ]
    return World.build(load_documents([str(f) for f in files]))


def test_seed_frontend_may_get_an_order(shop: World) -> None:
    """Seed: orders-from-frontend allows principal cluster.local/ns/shop/sa/frontend to GET
    /api/v1/orders*, and orders-allow-frontend admits app=frontend on 8080/TCP."""
    t = _trace(
        shop,
        "ambient",
        src="shop/frontend",
        dst="shop/orders",
        port=8080,
        method="GET",
        path="/api/v1/orders/7",
    )
    assert t.verdict is Verdict.ALLOW
    assert [p.point for p in t.points] == [Point.SOURCE, Point.WAYPOINT, Point.DESTINATION]
    assert t.route.waypoint is not None and t.route.waypoint.key == "shop/waypoint"


def test_seed_reporting_is_denied_with_the_policy_named(shop: World) -> None:
    """Istio: "If there are any ALLOW policies ... and none match, deny" — at the waypoint, which
    enforces the targetRefs policy orders-from-frontend."""
    t = _trace(
        shop,
        "ambient",
        src="shop/reporting",
        dst="shop/orders",
        port=8080,
        method="GET",
        path="/api/v1/orders/7",
    )
    assert t.verdict is Verdict.DENY
    assert t.decided_at is Point.WAYPOINT
    assert t.decision.api is Api.ISTIO
    assert t.decision.policy is not None and t.decision.policy.name == "orders-from-frontend"
    # the Cilium L3/L4 policy at the destination denies it too, and says so
    dest = t.points[-1]
    cilium = [d for d in dest.by_api if d.api is Api.CILIUM]
    assert cilium and not cilium[0].allowed


def test_seed_post_to_an_order_is_denied_by_the_cilium_http_rules(shop_l7_only: World) -> None:
    """Cilium: path is a regex matched against the whole :path, so "/api/v1/orders" does not
    admit POST /api/v1/orders/7; a request matching no http rule gets 403."""
    t = _trace(
        shop_l7_only,
        "ambient",
        src="shop/frontend",
        dst="shop/orders",
        port=8080,
        method="POST",
        path="/api/v1/orders/7",
    )
    assert t.verdict is Verdict.DENY
    assert t.decision.api is Api.CILIUM and t.decision.policy is not None
    assert t.decision.policy.name == "orders-http"
    assert t.decision.status == 403


def test_l4_only_rule_on_the_same_selector_voids_http_rules(shop: World) -> None:
    """Cilium: "If a layer 4 rule is specified in the policy, and a similar layer 4 rule with
    layer 7 rules is also specified, then the layer 7 portions of the latter rule will have no
    effect." (Layer 7 Policies). With both seed CNPs, POST /api/v1/orders/7 passes Cilium."""
    t = _trace(
        shop,
        "ambient",
        src="shop/frontend",
        dst="shop/orders",
        port=8080,
        method="POST",
        path="/api/v1/orders/7",
    )
    assert t.verdict is Verdict.ALLOW


AMBIENT_NO_WAYPOINT = """
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ns, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ns, labels: {app: server}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"""


def test_cilium_http_port_without_waypoint_fails_closed_in_ambient() -> None:
    """Issue #2: in ambient mode a Cilium rules.http port with no waypoint cannot be inspected:
    fail closed (deny), and say why."""
    world = World.build(parse_documents(load_text(AMBIENT_NO_WAYPOINT, "w.yaml")))
    t = _trace(world, "ambient", src="ns/client", dst="ns/server", port=80, method="GET", path="/")
    assert t.verdict is Verdict.DENY
    assert t.decision.drop_reason is DropReason.L7_UNINSPECTABLE
    assert "waypoint" in t.decision.reason
    findings = PolicyEngine(world, "ambient").analyze()
    assert any(f.code == "NM101" for f in findings)


def test_cilium_http_port_in_kernel_mode_is_enforced_by_the_node_l7_proxy() -> None:
    """Kernel mode: a port with L7 rules is steered to the node's L7 proxy (Cilium's Envoy
    redirect), which allows GET and answers 403 to anything else."""
    world = World.build(parse_documents(load_text(AMBIENT_NO_WAYPOINT, "w.yaml")))
    ok = _trace(world, "kernel", src="ns/client", dst="ns/server", port=80, method="GET", path="/")
    assert ok.verdict is Verdict.ALLOW
    assert Point.L7_PROXY in [p.point for p in ok.points]
    bad = _trace(world, "kernel", src="ns/client", dst="ns/server", port=80, method="PUT", path="/")
    assert bad.verdict is Verdict.DENY and bad.decided_at is Point.L7_PROXY and bad.decision.status == 403


def test_both_sides_must_allow_egress_is_checked_at_the_source() -> None:
    """Cilium and Kubernetes: source egress and destination ingress are evaluated independently;
    both must allow (cilium.md §1.9 "Two sides")."""
    text = (
        AMBIENT_NO_WAYPOINT.split("---\napiVersion: cilium.io/v2", maxsplit=1)[0]
        + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: ns}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
"""
    )
    world = World.build(parse_documents(load_text(text, "w.yaml")))
    t = _trace(world, "ambient", src="ns/client", dst="ns/server", port=80)
    assert t.verdict is Verdict.DENY
    assert t.decided_at is Point.SOURCE
    assert t.decision.api is Api.KUBERNETES and t.decision.policy is not None
    assert t.decision.policy.name == "client-egress"


def test_destination_sees_the_waypoint_identity_for_istio_policies(shop: World) -> None:
    """Istio ambient: "the destination ztunnel still enforces selector/namespace policies, but the
    source identity it sees is the waypoint's SA" (istio-ambient.md §4.2)."""
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
"""
    docs = [*shop.documents, *parse_documents(load_text(text, "p.yaml"))]
    world = World.build(docs)
    t = _trace(
        world,
        "ambient",
        src="shop/frontend",
        dst="shop/orders",
        port=8080,
        method="GET",
        path="/api/v1/orders/7",
    )
    assert t.verdict is Verdict.DENY
    assert t.decided_at is Point.DESTINATION
    assert t.decision.policy is not None and t.decision.policy.name == "only-frontend"
    # addressed to the pod directly (no service waypoint), the principal is frontend's own
    t2 = _trace(world, "ambient", src="shop/frontend", dst="workload:shop/orders", port=8080)
    assert t2.verdict is Verdict.ALLOW


def test_mode_none_enforces_nothing(shop: World) -> None:
    t = PolicyEngine(shop, Mode.NONE).trace(*resolve(shop, Probe("shop/reporting", "shop/orders", 8080)))
    assert t.verdict is Verdict.ALLOW and not t.points
    assert "no data path" in t.decision.reason


def test_outside_the_mesh_means_plaintext_without_identity() -> None:
    """A pod labelled istio.io/dataplane-mode: none sends plaintext: no principal, so STRICT
    PeerAuthentication refuses it (Istio: STRICT = "Connection is an mTLS tunnel")."""
    text = (
        AMBIENT_NO_WAYPOINT.split("---\napiVersion: cilium.io/v2", maxsplit=1)[0].replace(
            "labels: {app: client}", "labels: {app: client, istio.io/dataplane-mode: none}"
        )
        + """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: ns}
spec: {mtls: {mode: STRICT}}
"""
    )
    world = World.build(parse_documents(load_text(text, "w.yaml")))
    t = _trace(world, "ambient", src="ns/client", dst="ns/server", port=80)
    assert t.ctx.src.principal is None
    assert t.verdict is Verdict.DENY
    assert t.decision.drop_reason is DropReason.UNENCRYPTED


def test_an_address_outside_the_cluster_has_no_source_point_and_no_identity(shop: World) -> None:
    """Cilium: CIDR/world peers carry the `world` identity; egress policy applies only to
    endpoints (pods), so a flow from outside starts at the destination."""
    t = _trace(shop, "ambient", src="203.0.113.9", dst="shop/orders", port=8080)
    assert [p.point for p in t.points] == [Point.DESTINATION]
    assert t.ctx.src.principal is None and "world" in t.ctx.src.entities
    assert t.verdict is Verdict.DENY and t.decision.api is Api.CILIUM


def test_connection_verdicts_are_cached_per_port_and_protocol() -> None:
    """Kubernetes NetworkPolicy: "each rule allows traffic which matches both the from and ports
    sections" - a port and protocol the policy does not list stay denied. `connection()` caches
    its verdict per flow key, so a remembered allow for TCP/80 must not answer for TCP/81 or
    UDP/80 between the same two pods."""
    text = (
        AMBIENT_NO_WAYPOINT.split("---\napiVersion: cilium.io/v2", maxsplit=1)[0]
        + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-80, namespace: ns}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{ports: [{port: 80}]}]
"""
    )
    world = World.build(parse_documents(load_text(text, "w.yaml")))
    engine = PolicyEngine(world, "kernel")
    client = world.find_workloads("ns", "client")[0]
    server = world.find_workloads("ns", "server")[0]
    route = Route(src_workload=client, dst_workload=server)
    src, dst = world.endpoint(client), world.endpoint(server)
    assert engine.connection(FlowContext(src, dst, 80), route).allowed
    assert not engine.connection(FlowContext(src, dst, 81), route).allowed
    assert not engine.connection(FlowContext(src, dst, 80, Protocol.UDP), route).allowed
    assert engine.connection(FlowContext(src, dst, 80), route).allowed
