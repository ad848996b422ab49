"""The waypoint's decisions without sockets: CONNECT admission, per-request verdicts, and the
destination node proxy's view of a flow that came through the waypoint; each checked against
`PolicyEngine.trace`, which `nodemesh trace` prints."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from nodemesh.model.world import Workload, World
from nodemesh.nodeproxy import InboundRequest, decide_inbound
from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.policy.decision import Point
from nodemesh.policy.engine import PolicyEngine
from nodemesh.policy.probe import Probe, resolve
from nodemesh.protocols import forwarded_header
from nodemesh.protocols.connect import parse_forwarded
from nodemesh.waypoint.decide import (
    CILIUM_DENIED,
    RBAC_DENIED,
    WaypointConnect,
    decide_connect,
    decide_http,
    decide_request,
    http_request,
)
from nodemesh.waypoint.http import Exchange
from nodemesh.waypoint.jwt_authn import JwtPolicies
from nodemesh.waypoint.observe import SessionInfo, request_flow
from tests.waypoint.shop import live_shop

IP = ipaddress.ip_address
SPIFFE = "spiffe://cluster.local/ns/shop/sa/"


def _first(endpoints: Sequence[Workload]) -> Workload:
    return endpoints[0]


def _pod(world: World, key: str) -> Workload:
    return next(w for w in world.workloads if w.key == key)


def _connect(world: World, src: str, authority: str, method: str = "CONNECT") -> WaypointConnect:
    pod = _pod(world, src)
    assert pod.ip is not None
    return WaypointConnect(method, authority, (pod.ip, 40000), identity_uri(world.principal(pod)))


def _engine(*extra: str) -> PolicyEngine:
    return PolicyEngine(live_shop(*extra)[0], "ambient")


def _vip(world: World, name: str) -> str:
    return f"{world.services[('shop', name)].cluster_ip}:8080"


def test_connect_to_a_service_of_this_waypoint_picks_an_endpoint_and_its_target_port() -> None:
    """Envoy's waypoint accepts a CONNECT for a Service VIP:port it serves (the original
    destination, reference §1.3) and load-balances to an endpoint: `podIP:targetPort` with the
    endpoint pod's identity (reference §1.2: the client checks the server's SAN)."""
    engine = _engine()
    world = engine.world
    waypoint = world.waypoints[("shop", "waypoint")]
    plan = decide_connect(_connect(world, "shop/frontend-0", _vip(world, "orders")), waypoint, engine, _first)
    assert plan.status == 200 and plan.target is not None and plan.target.name == "orders"
    assert plan.upstream == (plan.target.ip, 15008)
    assert plan.upstream_authority == f"{plan.target.ip}:8080"
    assert plan.route is not None and plan.route.waypoint == waypoint and plan.route.service_port == 8080
    assert plan.src is not None and plan.src.principal == "cluster.local/ns/shop/sa/frontend"


@pytest.mark.parametrize(
    ("authority", "method", "reason"),
    [
        ("VIP", "GET", "is not CONNECT"),
        ("orders.shop:8080", "CONNECT", "not an IP address"),
        ("VIP:9999", "CONNECT", "has no TCP port 9999"),
        ("FRONTEND_POD", "CONNECT", "is not a destination of waypoint shop/waypoint"),
        ("10.1.2.3:80", "CONNECT", "is not a destination of waypoint shop/waypoint"),
    ],
)
def test_connect_refusals_are_400(authority: str, method: str, reason: str) -> None:
    """ztunnel/Envoy answer 400 to a CONNECT that is not CONNECT, whose authority does not parse
    as `IP:port`, or that names a target the server does not serve (reference §1.3, §1.7): a
    pod addressed directly only goes through a waypoint that is its WORKLOAD waypoint."""
    engine = _engine()
    world = engine.world
    frontend = _pod(world, "shop/frontend-0")
    vip = str(world.services[("shop", "orders")].cluster_ip)
    authority = authority.replace("VIP", vip if ":" in authority else f"{vip}:8080")
    authority = authority.replace("FRONTEND_POD", f"{frontend.ip}:8080")
    waypoint = world.waypoints[("shop", "waypoint")]
    plan = decide_connect(_connect(world, "shop/reporting-0", authority, method), waypoint, engine, _first)
    assert plan.status == 400 and reason in plan.reason


def test_a_service_with_another_or_no_waypoint_is_400() -> None:
    """The waypoint serves only destinations that name it (`istio.io/use-waypoint`), ztunnel's
    `validate_destination`: a Service opted out with `istio.io/use-waypoint: none` is refused."""
    opted_out = """
apiVersion: v1
kind: Service
metadata: {name: audit, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec:
  selector: {app: orders}
  ports: [{port: 8080, targetPort: http}]
"""
    engine = _engine(opted_out)
    world = engine.world
    waypoint = world.waypoints[("shop", "waypoint")]
    plan = decide_connect(_connect(world, "shop/frontend-0", _vip(world, "audit")), waypoint, engine, _first)
    assert plan.status == 400 and "does not use waypoint shop/waypoint" in plan.reason


PROBES = [
    ("shop/frontend", "orders", "GET", "/api/v1/orders/7"),
    ("shop/frontend", "orders", "POST", "/api/v1/orders"),
    ("shop/frontend", "orders", "DELETE", "/api/v1/orders/7"),
    ("shop/frontend", "orders", "GET", "/healthz"),
    ("shop/reporting", "orders", "GET", "/api/v1/orders/7"),
    ("shop/reporting", "frontend", "GET", "/"),
]


@pytest.mark.parametrize(("src", "service", "method", "path"), PROBES)
def test_request_verdicts_equal_the_trace_waypoint_point(
    src: str, service: str, method: str, path: str
) -> None:
    """AuthorizationPolicy at a waypoint is full L7 (reference §4.2: `targetRefs` policies are
    enforced by waypoints only): the waypoint's verdict for each request is the waypoint point
    of `nodemesh trace` for the same probe, policy and rule included; a deny is Envoy's 403
    `RBAC: access denied`."""
    engine = _engine()
    world = engine.world
    ctx, route = resolve(
        world, Probe(src, f"shop/{service}", 8080, method=method, path=path, host=f"{service}.shop:8080")
    )
    trace = engine.trace(ctx, route)
    at_waypoint = next(p for p in trace.points if p.point is Point.WAYPOINT).decision
    waypoint = world.waypoints[("shop", "waypoint")]
    plan = decide_connect(_connect(world, f"{src}-0", _vip(world, service)), waypoint, engine, _first)
    verdict = decide_request(
        plan, http_request(method, path + "?q=1", [("Host", f"{service}.shop:8080")]), engine
    )
    assert verdict.decision.verdict is at_waypoint.verdict
    assert (verdict.decision.policy, verdict.decision.rule) == (at_waypoint.policy, at_waypoint.rule)
    if not at_waypoint.allowed:
        assert (verdict.status, verdict.body) == (403, RBAC_DENIED)
    else:
        assert verdict.forward


def test_an_unverifiable_token_is_401_where_request_authentication_applies() -> None:
    """RequestAuthentication at a waypoint: "An invalid token → rejected with 401" (reference
    §4.8), with Envoy's challenge `www-authenticate: Bearer realm="<original URI>",
    error="invalid_token"` and jwt_verify's status string as the body (Envoy `jwt_authn/filter.cc`
    "return failure reason as message body"); `abc.def.ghi` does not even parse.
    Without a RequestAuthentication Envoy has no jwt_authn filter and the token is ignored: the
    request is decided (and forwarded) as if it had none."""
    authn = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: orders-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: orders}]
  jwtRules: [{issuer: "https://issuer.example"}]
"""
    headers = [("Host", "orders.shop:8080"), ("Authorization", "Bearer abc.def.ghi")]
    unparsable = b"Jwt header is an invalid Base64url input or an invalid JSON"  # jwt_verify's status string
    for extra, expected in (((authn,), (401, unparsable)), ((), None)):
        engine = _engine(*extra)
        world = engine.world
        waypoint = world.waypoints[("shop", "waypoint")]
        plan = decide_connect(
            _connect(world, "shop/frontend-0", _vip(world, "orders")), waypoint, engine, _first
        )
        verdict = decide_http(
            plan, "GET", "/api/v1/orders/7", headers, engine=engine, jwt=JwtPolicies(world), now=0
        )
        assert (None if verdict.forward else (verdict.status, verdict.body)) == expected
        if expected is not None:
            realm = 'Bearer realm="http://orders.shop:8080/api/v1/orders/7", error="invalid_token"'
            assert verdict.headers == (("www-authenticate", realm),)
            assert any("Jwt header is an invalid" in n for n in verdict.decision.notes)
        else:
            assert verdict.edits is None  # no jwt_authn filter: the token is forwarded untouched


def test_cilium_http_rules_deny_with_ciliums_403() -> None:
    """Cilium `rules.http` at the waypoint (the engine's waypoint point evaluates them, ingress):
    "If a request does not match any rule, it is rejected with 403 Access denied" (Cilium's
    proxy). Without the L4-only allow of the same peer and port the HTTP rules take effect."""
    engine = _engine()
    docs_without = [d for d in engine.world.documents if d.name != "orders-allow-frontend"]
    world = World.build(docs_without, ips={w.key: str(w.ip) for w in engine.world.workloads if w.ip})
    world.services = engine.world.services
    engine = PolicyEngine(world, "ambient")
    frontend_orders = (
        _connect(world, "shop/frontend-0", _vip(world, "orders")),
        world.waypoints[("shop", "waypoint")],
    )
    plan = decide_connect(*frontend_orders, engine, _first)
    verdict = decide_request(plan, http_request("POST", "/api/v1/orders/7", [("host", "orders")]), engine)
    assert (verdict.status, verdict.body) == (403, CILIUM_DENIED)
    assert decide_request(plan, http_request("GET", "/api/v1/orders/7", [("host", "orders")]), engine).forward


def test_request_view_strips_the_query_and_merges_headers() -> None:
    """Istio `paths` match the path without the query string; header names are case-insensitive
    (RFC 9110 §5.1), repeated fields combine with commas (§5.3)."""
    req = http_request("get", "/a/b?x=1", [("X-Id", "1"), ("x-id", "2"), ("Host", "orders")])
    assert (req.method, req.path, req.host, req.headers["x-id"], req.jwt) == (
        "GET",
        "/a/b",
        "orders",
        "1,2",
        None,
    )


def test_forwarded_round_trip() -> None:
    """RFC 7239: `for` is a node (quoted `ip:port`, `[v6]:port` or a bare address), `host` the
    original Host; ztunnel writes `for="<ip:port>";host=<service>`."""
    header = forwarded_header(IP("10.244.0.3"), 43210, "orders.shop.svc.cluster.local")
    assert parse_forwarded(header) == (IP("10.244.0.3"), "orders.shop.svc.cluster.local")
    assert parse_forwarded('for="[fd00::1]:80", for=10.0.0.9') == (IP("fd00::1"), None)
    assert parse_forwarded("for=_hidden;proto=https") == (None, None)


def _inbound(world: World, engine: PolicyEngine, peer: str, identity: str, forwarded: str | None) -> object:
    orders = _pod(world, "shop/orders-0")
    src = _pod(world, peer)
    assert orders.ip is not None and src.ip is not None
    req = InboundRequest("CONNECT", f"{orders.ip}:8080", orders.ip, (src.ip, 5555), identity, forwarded)
    return decide_inbound(req, orders, engine)


def test_destination_after_the_waypoint_is_evaluated_as_trace_evaluates_it() -> None:
    """Reference §4.2: at the destination "the source identity it sees is the waypoint's SA";
    the engine's destination point (what trace prints) evaluates Kubernetes/Cilium rules with
    the original client, which the node proxy takes from the waypoint's `forwarded: for=`. With
    `orders-from-reporting` the waypoint lets reporting through and the destination denies it
    (CiliumNetworkPolicy orders-allow-frontend), live decision and trace alike."""
    allow_reporting = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-from-reporting, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: orders}]
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/reporting"]}}]}]
"""
    engine = _engine(allow_reporting)
    world = engine.world
    for client, expected in (("shop/frontend-0", True), ("shop/reporting-0", False)):
        pod = _pod(world, client)
        assert pod.ip is not None
        fwd = forwarded_header(pod.ip, 40000, "orders.shop.svc.cluster.local")
        plan = _inbound(world, engine, "shop/waypoint-0", SPIFFE + "waypoint", fwd)
        ctx, route = resolve(world, Probe(client.removesuffix("-0"), "shop/orders", 8080))
        trace_point = next(p for p in engine.trace(ctx, route).points if p.point is Point.DESTINATION)
        assert plan.allowed is expected is trace_point.decision.allowed  # type: ignore[attr-defined]
        assert plan.decision.policy == trace_point.decision.policy  # type: ignore[attr-defined]
        assert plan.route.waypoint == world.waypoints[("shop", "waypoint")]  # type: ignore[attr-defined]


def test_forwarded_is_ignored_unless_the_peer_is_the_waypoint() -> None:
    """ztunnel trusts what a waypoint says about the original client only when the peer IS the
    waypoint (its address and its certificate): a pod claiming `for=<frontend>` is judged as
    itself, and so is the waypoint's address with another certificate."""
    engine = _engine()
    world = engine.world
    frontend = _pod(world, "shop/frontend-0")
    assert frontend.ip is not None
    fwd = forwarded_header(frontend.ip, 1, "orders.shop.svc.cluster.local")
    spoofed = _inbound(world, engine, "shop/reporting-0", SPIFFE + "reporting", fwd)
    assert not spoofed.allowed and spoofed.route.waypoint is None  # type: ignore[attr-defined]
    wrong_cert = _inbound(world, engine, "shop/waypoint-0", SPIFFE + "reporting", fwd)
    assert wrong_cert.route.waypoint is None  # type: ignore[attr-defined]


def test_requests_are_balanced_over_every_endpoint_each_with_its_own_destination() -> None:
    """Envoy load-balances each request of a connection over the Service's healthy endpoints
    (LEAST_REQUEST, `waypoint.balance`), so the CONNECT's plan lists every endpoint and one
    request's plan (`to_endpoint`) goes to `podIP:targetPort` of the endpoint chosen for it
    (reference §1.3), with that pod as the engine's destination and in the request's flow record."""
    engine = _engine()
    world = engine.world
    waypoint = world.waypoints[("shop", "waypoint")]
    connect = _connect(world, "shop/frontend-0", _vip(world, "orders"))
    plan = decide_connect(connect, waypoint, engine, _first)
    assert sorted(w.key for w in plan.endpoints) == ["shop/orders-0", "shop/orders-1"]
    assert plan.target is not None and plan.target.key == "shop/orders-0"
    other = plan.to_endpoint(_pod(world, "shop/orders-1"))
    assert other.target is not None and other.target.key == "shop/orders-1"
    assert other.route is not None and other.route.dst_workload == other.target
    assert other.upstream_authority == f"{other.target.ip}:8080" and other.status == 200
    assert plan.to_endpoint(_pod(world, "shop/orders-0")) is plan
    verdict = decide_request(other, http_request("GET", "/api/v1/orders/7", [("host", "orders")]), engine)
    assert verdict.forward
    exchange = Exchange("GET", "/api/v1/orders/7", 1.0, 1.1, verdict, 200, 0, 2)
    record = request_flow(exchange, SessionInfo(connect, other, None), world, "node-0")
    assert record.destination.pod == "orders-1"
