"""The flow record: invariants, the Hubble-shaped JSON and its round trip, and the policy verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given

from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.observe.flow import (
    Flow,
    FlowEndpoint,
    FlowFormatError,
    FlowPolicy,
    FlowService,
    HttpFlow,
    Reporter,
    TrafficDirection,
    Verdict,
    format_time,
    parse_time,
    with_decision,
)
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import FlowContext

from .strategies import T0, flow, flows, pod


@given(flows())
def test_json_round_trip(f: Flow) -> None:
    """Every flow survives `to_json` -> `from_json` unchanged: the JSON is the record."""
    assert Flow.from_json(f.to_json()) == f
    assert Flow.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_drop_json_has_hubbles_shape() -> None:
    """cilium.md §2.2: `hubble observe -o json` prints `{"flow": {...}, "node_name", "time"}` with
    proto field names (`drop_reason_desc`, `traffic_direction`, `IP`, `l4`, `Type`), enums as
    strings, RFC 3339 times; a policy drop carries POLICY_DENIED (133) or POLICY_DENY (181)."""
    f = flow(
        verdict=Verdict.DROPPED,
        drop_reason="POLICY_DENY",
        policy=FlowPolicy("AuthorizationPolicy", "shop", "deny-reporting", 0),
        reason="explicitly denied by: shop/deny-reporting (DENY rule 0)",
        destination_service=FlowService("shop", "orders"),
        hbone_target="10.0.2.7:8080",
    )
    line = json.loads(f.to_json())
    assert set(line) == {"flow", "node_name", "time"}
    assert line["time"] == "2026-11-27T09:12:01.123000Z" == line["flow"]["time"]
    body = line["flow"]
    assert body["verdict"] == "DROPPED"
    assert body["drop_reason"] == 181 and body["drop_reason_desc"] == "POLICY_DENY"
    assert body["IP"] == {
        "source": "10.0.1.5",
        "destination": "10.0.2.7",
        "ipVersion": "IPv4",
        "encrypted": True,
    }
    assert body["l4"] == {"TCP": {"source_port": 41234, "destination_port": 8080}}
    assert body["source"]["namespace"] == "shop" and body["source"]["pod_name"] == "frontend-0"
    assert body["source"]["workloads"] == [{"name": "frontend", "kind": "Deployment"}]
    assert body["source"]["principal"] == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert body["Type"] == "L3_L4" and body["traffic_direction"] == "INGRESS"
    assert body["destination_service"] == {"name": "orders", "namespace": "shop"}
    assert body["ingress_denied_by"] == [
        {"kind": "AuthorizationPolicy", "namespace": "shop", "name": "deny-reporting", "rule": 0}
    ]
    assert body["reporter"] == "destination" and body["hbone_target"] == "10.0.2.7:8080"


def test_allowed_flow_names_its_policy_under_allowed_by() -> None:
    """flow.proto 21001/21002: `egress_allowed_by` / `ingress_allowed_by` list the policies that
    allowed a flow, `*_denied_by` those that denied it, per traffic direction."""
    f = flow(
        direction=TrafficDirection.EGRESS,
        reporter=Reporter.SOURCE,
        policy=FlowPolicy("CiliumNetworkPolicy", "shop", "egress", 1),
    )
    body = f.to_dict()
    assert body["egress_allowed_by"] == [
        {"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "egress", "rule": 1}
    ]
    assert "ingress_allowed_by" not in body and "egress_denied_by" not in body


def test_l7_record_uses_hubbles_l7_object() -> None:
    """cilium.md §2.1: an L7 flow has `Type: L7` and `l7 {type, latency_ns, http {code, method,
    url, protocol}}`; a REQUEST record leaves `code` unset."""
    resp = flow(http=HttpFlow("GET", "/api/v1/orders/7", 200, 12_000_000))
    assert resp.to_dict()["Type"] == "L7"
    assert resp.to_dict()["l7"] == {
        "type": "RESPONSE",
        "latency_ns": 12_000_000,
        "http": {"method": "GET", "url": "/api/v1/orders/7", "protocol": "HTTP/1.1", "code": 200},
    }
    req = flow(http=HttpFlow("POST", "/x"))
    l7 = req.to_dict()["l7"]
    assert isinstance(l7, dict) and l7["type"] == "REQUEST" and "code" not in l7["http"]


def test_reads_a_real_hubble_flow() -> None:
    """cilium.md §2.2, the captured `hubble observe -o json` line of an egress default-deny drop:
    a Hubble flow parses (reporter taken from the direction, numeric identity ignored; protojson
    times with nanoseconds are truncated to microseconds)."""
    line = (
        '{"flow":{"time":"2026-09-20T14:56:45.779111730Z","uuid":"2848b6b6-59c0-4be2-8bdc-3a5861de4c68",'
        '"verdict":"DROPPED","drop_reason":133,"IP":{"source":"10.0.1.116","destination":"10.0.1.117",'
        '"ipVersion":"IPv4"},"l4":{"TCP":{"source_port":38160,"destination_port":8080,"flags":{"SYN":true}}},'
        '"source":{"ID":4070,"identity":60176,"namespace":"agent-restricted","labels":["k8s:app=agent-probe"],'
        '"pod_name":"agent-probe"},"destination":{"ID":2376,"identity":10337,"namespace":"corp-prod",'
        '"labels":["k8s:app=corp-prod-target"],"pod_name":"corp-prod-target"},"Type":"L3_L4",'
        '"node_name":"k3d-0","traffic_direction":"EGRESS","drop_reason_desc":"POLICY_DENIED",'
        '"Summary":"TCP Flags: SYN"},"node_name":"k3d-0","time":"2026-09-20T14:56:45.779111730Z"}'
    )
    f = Flow.from_json(line)
    assert f.verdict is Verdict.DROPPED and f.drop_reason == "POLICY_DENIED"
    assert f.reporter is Reporter.SOURCE and f.direction is TrafficDirection.EGRESS
    assert f.source == FlowEndpoint(
        namespace="agent-restricted",
        pod="agent-probe",
        address="10.0.1.116",
        port=38160,
        labels=("k8s:app=agent-probe",),
    )
    assert f.destination.port == 8080 and f.destination.pod == "corp-prod-target"
    assert f.time == datetime(2026, 9, 20, 14, 56, 45, 779111, tzinfo=UTC)
    assert f.node == "k3d-0"


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '{"flow": 3}',
        '{"flow": {"verdict": "DROPPED"}}',
        '{"flow": {"time": "2026-01-01T00:00:00Z", "verdict": "MAYBE", "traffic_direction": "INGRESS"}}',
        '{"flow": {"time": "2026-01-01T00:00:00", "verdict": "FORWARDED", "traffic_direction": "INGRESS"}}',
        '{"flow": {"time": "2026-01-01T00:00:00Z", "verdict": "FORWARDED", "traffic_direction": "INGRESS",'
        ' "bytes_sent": -1}}',
        '{"flow": {"time": "2026-01-01T00:00:00Z", "verdict": "DROPPED", "traffic_direction": "INGRESS"}}',
    ],
)
def test_malformed_records_are_rejected(bad: str) -> None:
    """JSON is converted to typed values once, at the edge: anything not of the documented shape
    is a FlowFormatError (a reader skips and counts it), never a half-built record."""
    with pytest.raises(FlowFormatError):
        Flow.from_json(bad)


def test_invariants() -> None:
    """flow.proto: a drop has a `drop_reason_desc`; a forwarded flow has none. Times are aware
    and kept in UTC; counts are non-negative; labels are kept sorted as Hubble prints them."""
    with pytest.raises(ValueError, match="drop reason"):
        flow(verdict=Verdict.FORWARDED, drop_reason="POLICY_DENIED")
    with pytest.raises(ValueError, match="drop reason"):
        flow(verdict=Verdict.DROPPED, drop_reason=None)
    with pytest.raises(ValueError, match="timezone"):
        flow(time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="bytes_sent"):
        flow(bytes_sent=-1)
    with pytest.raises(ValueError, match="port"):
        FlowEndpoint(port=70000)
    with pytest.raises(ValueError, match="workload_kind"):
        FlowEndpoint(workload_kind="Deployment")
    local = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    assert flow(time=local).time.tzinfo is UTC and flow(time=local).time.hour == 8
    assert FlowEndpoint(labels=("k8s:b=2", "k8s:a=1")).labels == ("k8s:a=1", "k8s:b=2")


def test_time_format() -> None:
    """protojson Timestamps are RFC 3339 in UTC with `Z`; an offset or nanoseconds are accepted."""
    assert format_time(T0) == "2026-11-27T09:12:01.123000Z"
    assert parse_time("2026-11-27T10:12:01.123456789+01:00") == datetime(
        2026, 11, 27, 9, 12, 1, 123456, tzinfo=UTC
    )
    with pytest.raises(FlowFormatError):
        parse_time("yesterday")


AMBIENT = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec: {serviceAccountName: frontend, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reporting, namespace: shop, labels: {app: reporting}}
spec: {serviceAccountName: reporting, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: orders, namespace: shop, labels: {app: orders}}
spec: {serviceAccountName: orders, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
"""


def test_with_decision_names_the_deciding_policy(tmp_path: Path) -> None:
    """istio-ambient.md §5.3 / issue 5: a flow record for a drop names the policy and rule that
    decided, or "allow policies exist, but none allowed" (ztunnel's error) when no rule did; an
    allow names the ALLOW policy and rule. Real decisions from the policy engine (ambient)."""
    (tmp_path / "shop.yaml").write_text(AMBIENT)
    world = World.build(load_documents([str(tmp_path)]))
    engine = PolicyEngine(world, "ambient")
    orders = world.find_workloads("shop", "orders")[0]
    out = []
    for client in ("frontend", "reporting"):
        wl = world.find_workloads("shop", client)[0]
        ctx = FlowContext(world.endpoint(wl), world.endpoint(orders), 8080)
        decision = engine.connection(ctx, Route(src_workload=wl, dst_workload=orders))
        base = flow(
            FlowEndpoint.from_policy(ctx.src, workload_kind=wl.kind),
            FlowEndpoint.from_policy(ctx.dst, port=8080, workload_kind=orders.kind),
        )
        out.append(with_decision(base, decision))
    allowed, denied = out
    assert allowed.verdict is Verdict.FORWARDED and allowed.drop_reason is None
    assert allowed.policy == FlowPolicy("AuthorizationPolicy", "shop", "orders-allow-frontend", 0)
    assert denied.verdict is Verdict.DROPPED and denied.drop_reason == "POLICY_DENIED"
    assert denied.policy is not None and denied.policy.name == "orders-allow-frontend"
    assert denied.policy.rule is None
    assert "allow policies exist, but none allowed" in denied.reason
    assert denied.source.identity == "spiffe://cluster.local/ns/shop/sa/reporting"
    assert "k8s:app=reporting" in denied.source.labels
    audited = with_decision(
        flow(),
        engine.connection(
            FlowContext(
                world.endpoint(world.find_workloads("shop", "reporting")[0]), world.endpoint(orders), 8080
            ),
            Route(src_workload=world.find_workloads("shop", "reporting")[0], dst_workload=orders),
        ),
        audit=True,
    )
    assert audited.verdict is Verdict.AUDIT and audited.drop_reason == "POLICY_DENIED"
    assert "ingress_denied_by" in audited.to_dict()


def test_from_policy_endpoint_outside_the_cluster() -> None:
    """Hubble labels an address outside the cluster `reserved:world`; it has no identity."""
    world_ep = World.build([]).external_endpoint(__import__("ipaddress").ip_address("93.184.216.34"))
    ep = FlowEndpoint.from_policy(world_ep, port=443)
    assert ep == FlowEndpoint(address="93.184.216.34", port=443, labels=("reserved:world",))
    assert not ep.is_pod
    assert pod("shop", "a-0").is_pod
