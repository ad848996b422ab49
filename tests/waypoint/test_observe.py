"""The waypoint's flow records and `istio_requests_total` labels."""

from __future__ import annotations

import ipaddress

from prometheus_client import CollectorRegistry, generate_latest

from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.policy.engine import PolicyEngine
from nodemesh.waypoint.decide import WaypointConnect, decide_connect, decide_request, http_request
from nodemesh.waypoint.http import Exchange
from nodemesh.waypoint.observe import HTTP_LABELS, HttpMetrics, SessionInfo, http_labels, request_flow
from tests.waypoint.shop import live_shop


def _session(src: str) -> tuple[PolicyEngine, SessionInfo]:
    world = live_shop()[0]
    engine = PolicyEngine(world, "ambient")
    pod = next(w for w in world.workloads if w.key == src)
    assert pod.ip is not None
    connect = WaypointConnect(
        "CONNECT",
        f"{world.services[('shop', 'orders')].cluster_ip}:8080",
        (pod.ip, 40000),
        identity_uri(world.principal(pod)),
    )
    plan = decide_connect(connect, world.waypoints[("shop", "waypoint")], engine, lambda e: e[0])
    return engine, SessionInfo(connect, plan, identity_uri("cluster.local/ns/shop/sa/orders"))


def test_denied_request_record_names_the_policy_and_counts_as_waypoint_403() -> None:
    """One L7 record per request with reporter `waypoint`; a deny names the deciding policy
    (Hubble's `ingress_denied_by`), and `istio_requests_total` carries `reporter="waypoint"`,
    `response_code` and the source principal from the verified certificate (reference §5.2)."""
    engine, session = _session("shop/reporting-0")
    verdict = decide_request(
        session.plan, http_request("GET", "/api/v1/orders/7", [("host", "orders")]), engine
    )
    exchange = Exchange("GET", "/api/v1/orders/7", 10.0, 10.002, verdict, 403, 0, 19)
    flow = request_flow(exchange, session, engine.world, "node-0")
    body = flow.to_dict()
    assert body["reporter"] == "waypoint" and body["verdict"] == "DROPPED" and body["Type"] == "L7"
    assert body["ingress_denied_by"] == [
        {"kind": "AuthorizationPolicy", "namespace": "shop", "name": "orders-from-frontend"}
    ]
    assert body["l7"]["http"] == {
        "method": "GET",
        "url": "/api/v1/orders/7",
        "protocol": "HTTP/1.1",
        "code": 403,
    }  # type: ignore[index]
    assert flow.destination.identity is None  # nothing was forwarded: no peer proved it
    labels = dict(zip(HTTP_LABELS, http_labels(flow), strict=True))
    assert labels["reporter"] == "waypoint" and labels["response_code"] == "403"
    assert labels["request_protocol"] == "http" and labels["response_flags"] == "DENY"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/shop/sa/reporting"
    assert labels["destination_service"] == "orders.shop.svc.cluster.local"
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    assert metrics.record(flow) and metrics.value(http_labels(flow)) == 1
    text = generate_latest(registry).decode()
    assert "istio_requests_total{" in text and 'reporter="waypoint"' in text


def test_forwarded_request_record_has_the_endpoint_identity_and_the_allowing_policy() -> None:
    """An allowed request's record is FORWARDED with the response code and the endpoint's
    verified identity; the policy that allowed it is named (`ingress_allowed_by`)."""
    engine, session = _session("shop/frontend-0")
    verdict = decide_request(
        session.plan, http_request("GET", "/api/v1/orders/7", [("host", "orders")]), engine
    )
    flow = request_flow(
        Exchange("GET", "/api/v1/orders/7", 1.0, 1.01, verdict, 200, 0, 5), session, engine.world, "n"
    )
    body = flow.to_dict()
    assert body["verdict"] == "FORWARDED" and body["ingress_allowed_by"][0]["name"] == "orders-from-frontend"  # type: ignore[index]
    assert flow.destination.identity == "spiffe://cluster.local/ns/shop/sa/orders"
    assert flow.source.address == str(ipaddress.ip_address(session.connect.peer[0]))


def test_request_duration_and_size_histograms_use_envoys_default_buckets() -> None:
    """Istio's standard HTTP metrics besides the counter: `istio_request_duration_milliseconds`
    ("the duration of requests"), `istio_request_bytes` / `istio_response_bytes` ("HTTP
    request/response body sizes"), with the counter's labels; the buckets are Envoy's defaults
    (`HistogramStatisticsImpl::supportedBuckets`: 0.5, 1, 5, 10, 25, ... 3600000), and `le` is
    cumulative (a value equal to a bound is counted in that bucket)."""
    engine, session = _session("shop/frontend-0")
    verdict = decide_request(
        session.plan, http_request("GET", "/api/v1/orders/7", [("host", "orders")]), engine
    )
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    for end, sent, received in ((10.002, 0, 1000), (10.030, 5, 1001)):  # 2 ms and 30 ms
        exchange = Exchange("GET", "/api/v1/orders/7", 10.0, end, verdict, 200, sent, received)
        assert metrics.record(request_flow(exchange, session, engine.world, "node-0"))
    text = generate_latest(registry).decode()

    def bucket(name: str, le: str) -> float:
        line = next(
            ln for ln in text.splitlines() if ln.startswith(f"{name}_bucket{{") and f'le="{le}"' in ln
        )
        assert 'reporter="waypoint"' in line and 'response_code="200"' in line
        return float(line.rsplit(" ", 1)[1])

    duration = "istio_request_duration_milliseconds"
    assert [bucket(duration, le) for le in ("1", "5", "25", "50", "+Inf")] == [0, 1, 1, 2, 2]
    assert [bucket("istio_request_bytes", le) for le in ("0.5", "5", "10")] == [1, 2, 2]
    assert [bucket("istio_response_bytes", le) for le in ("500", "1000", "2500")] == [0, 1, 2]
    total = next(ln for ln in text.splitlines() if ln.startswith(f"{duration}_sum{{"))
    assert abs(float(total.rsplit(" ", 1)[1]) - 32.0) < 1e-3  # float seconds -> ns -> ms
    count = next(ln for ln in text.splitlines() if ln.startswith(f"{duration}_count{{"))
    assert float(count.rsplit(" ", 1)[1]) == 2
