"""`ConnectionRecord` -> `observe.Flow` (pure): the node proxy's records as Hubble-shaped flows
with Istio's TCP metric labels. Decisions come from the real policy engine through the same
pure functions the proxies call (`decide_inbound`, `decide_plaintext`, `build_request`)."""

from __future__ import annotations

import asyncio
import ipaddress
import textwrap
from datetime import UTC, datetime

from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.nodeproxy.flow import ConnectionRecord, Direction, FlowVerdict, SecurityPolicy
from nodemesh.nodeproxy.inbound import InboundRequest, decide_inbound, decide_plaintext
from nodemesh.nodeproxy.observe_adapter import FlowRecorder, flow_from_record
from nodemesh.observe import FlowPipeline, FlowService, Reporter, TrafficDirection, Verdict, tcp_labels
from nodemesh.observe.metrics import LABELS
from nodemesh.policy.decision import Decision
from nodemesh.policy.engine import PolicyEngine

IP = ipaddress.ip_address
CLIENT, SERVER, OUTSIDE = "10.244.0.5", "10.244.1.7", "192.0.2.9"
ID_CLIENT = "spiffe://cluster.local/ns/shop/sa/client"
ID_SERVER = "spiffe://cluster.local/ns/shop/sa/server"
BASE = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client, namespace: shop, labels: {app: client}}
    spec: {serviceAccountName: client, containers: [{name: c}]}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: server, namespace: shop}
    spec:
      replicas: 1
      selector: {matchLabels: {app: server}}
      template:
        metadata: {labels: {app: server, version: v2}}
        spec:
          serviceAccountName: server
          containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: server, namespace: shop}
    spec: {clusterIP: 10.96.0.30, selector: {app: server}, ports: [{port: 80, targetPort: http}]}
    """
)
ALLOW_OTHER = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: only-other, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      action: ALLOW
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/other"]}}]}]
    """
)
DENY_CLIENT = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-client, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      action: DENY
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
    """
)
NETPOL = textwrap.dedent(
    """\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: isolate-server, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: server}}
      policyTypes: [Ingress]
    """
)


def engine(extra: str = "") -> PolicyEngine:
    text = BASE + (f"---\n{extra}" if extra else "")
    world = World.build(
        parse_documents(load_text(text, "adapter.yaml")), ips={"shop/client": CLIENT, "shop/server-0": SERVER}
    )
    return PolicyEngine(world, "ambient")


def inbound_record(e: PolicyEngine, *, verdict: FlowVerdict | None = None) -> ConnectionRecord:
    """What `InboundProxy` records for an HBONE CONNECT from the client, decided by `e`."""
    server = e.world.find_workloads("shop", "server")[0]
    req = InboundRequest("CONNECT", f"{SERVER}:8080", IP(SERVER), (IP(CLIENT), 40000), ID_CLIENT)
    plan = decide_inbound(req, server, e)
    decision = plan.decision
    assert decision is not None
    return ConnectionRecord(
        start_time=1_700_000_000.0,
        duration=0.25,
        direction=Direction.INBOUND,
        src_addr=f"{CLIENT}:40000",
        dst_addr=f"{SERVER}:8080",
        verdict=verdict or (FlowVerdict.FORWARDED if plan.allowed else FlowVerdict.DROPPED),
        src_workload="client",
        src_namespace="shop",
        src_identity=ID_CLIENT,
        dst_hbone_addr=f"{SERVER}:8080",
        dst_workload="server",
        dst_namespace="shop",
        dst_identity=ID_SERVER,
        policy=str(decision.policy) if decision.policy else None,
        rule=decision.rule,
        reason=plan.reason,
        security_policy=SecurityPolicy.MUTUAL_TLS,
        response_flags=plan.response_flag,
        decision=decision,
    )


def outbound_record(**kw: object) -> ConnectionRecord:
    base: dict[str, object] = {
        "start_time": 1_700_000_000.0,
        "duration": 0.5,
        "direction": Direction.OUTBOUND,
        "src_addr": f"{CLIENT}:51000",
        "dst_addr": f"{SERVER}:15008",
        "verdict": FlowVerdict.FORWARDED,
        "src_workload": "client",
        "src_namespace": "shop",
        "src_identity": ID_CLIENT,
        "dst_hbone_addr": f"{SERVER}:8080",
        "dst_service": "server.shop.svc.cluster.local",
        "dst_workload": "server",
        "dst_namespace": "shop",
        "dst_identity": ID_SERVER,
        "bytes_sent": 79,
        "bytes_received": 420,
        "security_policy": SecurityPolicy.MUTUAL_TLS,
    }
    base.update(kw)
    return ConnectionRecord(**base)  # type: ignore[arg-type]


def labels(flow: object) -> dict[str, str]:
    return dict(zip(LABELS, tcp_labels(flow), strict=True))  # type: ignore[arg-type]


def test_outbound_hbone_record_is_a_source_flow_to_the_pod_behind_the_service() -> None:
    """istio-ambient.md §5.1: `reporter` is `source` on the outbound side;
    `connection_security_policy` is `mutual_tls` for HBONE; §5.3: `dst.hbone_addr` is the
    CONNECT target and `dst.service` the Service addressed. The destination endpoint is the pod
    at the target port (the application's connection), not the next hop `:15008`."""
    e = engine()
    flow = flow_from_record(outbound_record(), e.world, "node-0")
    assert flow.reporter is Reporter.SOURCE and flow.direction is TrafficDirection.EGRESS
    assert flow.verdict is Verdict.FORWARDED and flow.mtls and flow.hbone_target == f"{SERVER}:8080"
    assert flow.destination.pod == "server-0" and flow.destination.workload == "server"
    assert flow.destination.workload_kind == "Deployment" and flow.destination.port == 8080
    assert flow.destination.identity == ID_SERVER and flow.source.identity == ID_CLIENT
    assert flow.destination_service == FlowService("shop", "server")
    assert flow.time == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert flow.duration_ns == 500_000_000 and (flow.bytes_sent, flow.bytes_received) == (79, 420)
    got = labels(flow)
    assert got["reporter"] == "source" and got["connection_security_policy"] == "mutual_tls"
    assert got["destination_workload"] == "server" and got["destination_version"] == "v2"
    assert got["destination_service"] == "server.shop.svc.cluster.local"
    assert got["source_principal"] == ID_CLIENT and got["response_flags"] == "-"


def test_default_deny_names_the_allow_policy_in_ztunnels_words() -> None:
    """istio-ambient.md §4.1: with ALLOW policies and none matching, the connection is denied;
    ztunnel's reason: "allow policies exist, but none allowed" (§5.3); the metrics flag is
    `DENY` (§5.1). The record names the policy (no single rule decided)."""
    flow = flow_from_record(inbound_record(engine(ALLOW_OTHER)), engine(ALLOW_OTHER).world, "node-1")
    assert flow.reporter is Reporter.DESTINATION and flow.direction is TrafficDirection.INGRESS
    assert flow.verdict is Verdict.DROPPED and flow.drop_reason == "POLICY_DENIED"
    assert flow.policy is not None and (flow.policy.kind, flow.policy.name) == (
        "AuthorizationPolicy",
        "only-other",
    )
    assert flow.policy.rule is None
    assert "allow policies exist, but none allowed" in flow.reason
    assert flow.to_dict()["ingress_denied_by"] == [
        {"kind": "AuthorizationPolicy", "namespace": "shop", "name": "only-other"}
    ]
    assert labels(flow)["response_flags"] == "DENY"


def test_explicit_deny_names_the_policy_and_rule() -> None:
    """istio-ambient.md §4.1: DENY policies are evaluated first; §5.3: "explicitly denied by:
    <ns>/<name>"; Hubble's POLICY_DENY (181) for an explicit deny."""
    e = engine(DENY_CLIENT)
    flow = flow_from_record(inbound_record(e), e.world, "node-1")
    assert flow.drop_reason == "POLICY_DENY" and flow.policy is not None
    assert (flow.policy.name, flow.policy.rule) == ("deny-client", 0)
    assert "explicitly denied by: shop/deny-client" in flow.reason


def test_a_default_deny_of_another_api_gets_the_same_words() -> None:
    """A Kubernetes NetworkPolicy that isolates the pod and allows nothing is a default deny
    (Hubble's POLICY_DENIED): the record says "allow policies exist, but none allowed", then the
    engine's own explanation, and names the policy."""
    e = engine(NETPOL)
    flow = flow_from_record(inbound_record(e), e.world, "node-1")
    assert flow.verdict is Verdict.DROPPED and flow.drop_reason == "POLICY_DENIED"
    assert flow.reason.startswith("allow policies exist, but none allowed: ")
    assert flow.policy is not None and flow.policy.name == "isolate-server"


def test_allowed_inbound_names_the_service_as_ztunnel_guesses_it() -> None:
    """istio-ambient.md §5.1: "`destination_service` on inbound is guessed: first the
    `Forwarded: host=`, else the first service whose targetPort matches" (a named targetPort
    resolves to the pod's container port)."""
    e = engine()
    flow = flow_from_record(inbound_record(e), e.world, "node-1")
    assert flow.verdict is Verdict.FORWARDED and flow.drop_reason is None
    assert flow.destination_service == FlowService("shop", "server")
    assert flow.source.pod == "client" and flow.source.identity == ID_CLIENT
    assert labels(flow)["reporter"] == "destination"


def test_refusals_without_a_policy_decision_are_connect_or_deny_flags() -> None:
    """istio-ambient.md §5.1 `response_flags`: the source learns of the destination's RBAC deny
    only as "http status: 401" (§5.3), counted as `DENY`; a failed upstream connection is
    `CONNECT`. Neither names a policy (the source cannot know which one)."""
    e = engine()
    refused = outbound_record(
        verdict=FlowVerdict.DROPPED, response_flags="DENY", error="http status: 401", bytes_received=0
    )
    flow = flow_from_record(refused, e.world, "node-0")
    assert flow.verdict is Verdict.DROPPED and flow.drop_reason == "POLICY_DENIED" and flow.policy is None
    assert flow.error == "http status: 401" and labels(flow)["response_flags"] == "DENY"
    failed = outbound_record(
        verdict=FlowVerdict.DROPPED,
        response_flags="CONNECT",
        error="waypoint shop/wp has no address: no waypoint proxy is running for it",
        dst_identity=None,
    )
    flow = flow_from_record(failed, e.world, "node-0")
    assert flow.drop_reason == "DROP_REASON_UNKNOWN" and labels(flow)["response_flags"] == "CONNECT"
    assert flow.reason == failed.error


def test_plaintext_from_outside_the_cluster_has_no_identity() -> None:
    """istio-ambient.md §1.7: 15006 plaintext runs RBAC with `src_identity=None` and
    `connection_security_policy=unknown`; an address no pod has is Hubble's `reserved:world`."""
    e = engine()
    server = e.world.find_workloads("shop", "server")[0]
    plan = decide_plaintext((IP(SERVER), 8080), (IP(OUTSIDE), 3333), server, e)
    record = ConnectionRecord(
        start_time=1_700_000_000.0,
        duration=0.1,
        direction=Direction.INBOUND,
        src_addr=f"{OUTSIDE}:3333",
        dst_addr=f"{SERVER}:8080",
        verdict=FlowVerdict.FORWARDED,
        dst_workload="server",
        dst_namespace="shop",
        reason=plan.reason,
        decision=plan.decision,
    )
    flow = flow_from_record(record, e.world, "node-1")
    assert flow.source.labels == ("reserved:world",) and flow.source.identity is None
    assert flow.source.address == OUTSIDE and not flow.mtls
    got = labels(flow)
    assert got["connection_security_policy"] == "unknown" and got["source_principal"] == "unknown"


def test_recorder_feeds_the_pipeline_and_follows_the_world() -> None:
    """One flow per record into the node's pipeline (ring + metrics); after a world change, pod
    lookups use the new addresses."""
    e = engine()
    pipeline = FlowPipeline()
    recorder = FlowRecorder(pipeline, "node-0", e.world)
    recorder.record(outbound_record())
    moved = World.build(
        parse_documents(load_text(BASE, "moved.yaml")),
        ips={"shop/client": CLIENT, "shop/server-0": "10.244.1.99"},
    )
    recorder.world = moved
    recorder.record(outbound_record(dst_hbone_addr="10.244.1.99:8080"))
    first, second = pipeline.ring.last(2)
    assert first.destination.pod == "server-0" and second.destination.pod == "server-0"
    assert second.destination.address == "10.244.1.99" and recorder.recorded == 2


def test_a_batching_recorder_delivers_later_in_order_with_the_world_of_each_record() -> None:
    """`FlowRecorder(batch_delay=...)` on a running loop queues records and maps them off the
    connection path: nothing reaches the pipeline at `record`, everything does `batch_delay`
    later, in order, each mapped with the world it was recorded in (a policy change in between
    must not relabel an older record); `flush()` delivers what is queued at once."""
    e = engine()
    moved = World.build(
        parse_documents(load_text(BASE, "moved.yaml")),
        ips={"shop/client": CLIENT, "shop/server-0": "10.244.1.99"},
    )

    async def scenario() -> tuple[int, int, list[str | None]]:
        pipeline = FlowPipeline()
        recorder = FlowRecorder(pipeline, "node-0", e.world, batch_delay=0.05)
        recorder.record(outbound_record(dst_hbone_addr=f"{SERVER}:8080"))
        recorder.world = moved
        recorder.record(outbound_record(dst_hbone_addr="10.244.1.99:8080"))
        queued = len(pipeline.ring.last(10))
        await asyncio.sleep(0.2)
        delivered = pipeline.ring.last(10)
        recorder.record(outbound_record(dst_hbone_addr="10.244.1.99:8080"))
        recorder.flush()
        return queued, len(pipeline.ring.last(10)), [f.destination.address for f in delivered]

    queued, after_flush, addresses = asyncio.run(scenario())
    assert queued == 0
    assert addresses == [SERVER, "10.244.1.99"]
    assert after_flush == 3


def test_a_tunnel_the_destination_refused_says_so_at_the_source() -> None:
    """The source's egress allowed the connection, then the destination answered 401 (RBAC,
    istio-ambient.md §1.3): the source's DROPPED record must say the destination refused it, not
    repeat the source's allow reason ("no egress policy selects the source")."""
    e = engine()
    allow = Decision.allow("no egress policy selects the source")
    refused = outbound_record(
        verdict=FlowVerdict.DROPPED,
        response_flags="DENY",
        error="http status: 401",
        reason=allow.reason,
        decision=allow,
    )
    flow = flow_from_record(refused, e.world, "node-0")
    assert flow.verdict is Verdict.DROPPED
    assert flow.reason.startswith("refused by the destination (http status: 401)")
    assert "no egress policy" not in flow.reason
