"""The ambient node proxy of a node (`AmbientNode`), end to end on real namespaces.

Two nodes joined by an underlay veth; pods on each (`ambient_cluster.build_topology`); the echo
app (`nodemesh echo`) in the server pods; one `AmbientNode` per node in this process, on its own
uvloop loop, each feeding a real `FlowPipeline` (ring, Istio TCP metrics, JSON lines) and serving
`/metrics`. Clients are real `curl`s run inside the pods with `ip netns exec`: nothing in the
applications knows about the mesh. The last test runs the node proxy as the runtime will, as a
process (`python -m nodemesh.nodeproxy.process`) in its node's namespace.

Pods: node-0 has `mesh/a` (sa client-a), `mesh/c` (sa client-c) and `plain/d` (a namespace with
`istio.io/dataplane-mode: none`); node-1 has `mesh/b` (sa server; echo HTTP 8080, TCP 9000) and
`plain/e` (echo HTTP 8080). Statements are Istio's (reference istio-ambient.md, cited per test).
The first tests are pure (no root needed).
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodemesh.ca import CertificateAuthority, RootCA
from nodemesh.capture import capture_state, list_ruleset
from nodemesh.capture.install import run_in_netns
from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.nodeproxy.credentials import AuthorityCredentials
from nodemesh.nodeproxy.node import (
    AmbientNode,
    CredentialUnavailableError,
    PodAction,
    PodAttachment,
    plan_pod,
    plan_pods,
)
from nodemesh.nodeproxy.observe_adapter import FlowRecorder
from nodemesh.nodeproxy.process import CredentialConfig, NodeProxyConfig, build_world
from nodemesh.nodeproxy.tls import WorkloadCertificate
from nodemesh.observe import (
    Flow,
    FlowPipeline,
    FlowRing,
    FlowService,
    FlowWriter,
    MetricsServer,
    Reporter,
    TcpMetrics,
    Verdict,
)
from nodemesh.policy.engine import PolicyEngine
from nodemesh.runtime.netns import socket_in

from .ambient_cluster import (
    App,
    LoopThread,
    Netns,
    Topology,
    build_topology,
    curl_in,
    delete_topology,
    iter_lines,
    require_root,
    start_echo,
    wait_listening,
    wait_until,
)

NOW = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
ID_A = "spiffe://cluster.local/ns/mesh/sa/client-a"
ID_C = "spiffe://cluster.local/ns/mesh/sa/client-c"
ID_B = "spiffe://cluster.local/ns/mesh/sa/server"
LAYOUT = {"a": 0, "c": 0, "d": 0, "b": 1, "e": 1}
NAMESPACE = {"a": "mesh", "c": "mesh", "b": "mesh", "d": "plain", "e": "plain"}
VIP = "10.96.0.20"
WAYPOINT_VIP = "10.96.0.21"

WORLD = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: Namespace
    metadata: {{name: mesh, labels: {{istio.io/dataplane-mode: ambient}}}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {{name: plain, labels: {{istio.io/dataplane-mode: none}}}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: a, namespace: mesh, labels: {{app: a}}}}
    spec: {{serviceAccountName: client-a, containers: [{{name: c}}]}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: c, namespace: mesh, labels: {{app: c}}}}
    spec: {{serviceAccountName: client-c, containers: [{{name: c}}]}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: b, namespace: mesh, labels: {{app: b}}}}
    spec:
      serviceAccountName: server
      containers:
        - name: echo
          ports: [{{name: http, containerPort: 8080}}, {{name: tcp, containerPort: 9000}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: d, namespace: plain, labels: {{app: d}}}}
    spec: {{containers: [{{name: c}}]}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: e, namespace: plain, labels: {{app: e}}}}
    spec: {{containers: [{{name: echo, ports: [{{containerPort: 8080}}]}}]}}
    ---
    apiVersion: v1
    kind: Service
    metadata: {{name: b, namespace: mesh}}
    spec: {{clusterIP: {VIP}, selector: {{app: b}}, ports: [{{port: 80, targetPort: 8080}}]}}
    ---
    apiVersion: v1
    kind: Service
    metadata: {{name: b-wp, namespace: mesh, labels: {{istio.io/use-waypoint: wp}}}}
    spec: {{clusterIP: {WAYPOINT_VIP}, selector: {{app: b}}, ports: [{{port: 80, targetPort: 8080}}]}}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {{name: wp, namespace: mesh, labels: {{istio.io/waypoint-for: service}}}}
    spec:
      gatewayClassName: istio-waypoint
      listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
    """
)
ALLOW_A = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-a, namespace: mesh}
    spec:
      selector: {matchLabels: {app: b}}
      action: ALLOW
      rules:
        - from: [{source: {principals: ["cluster.local/ns/mesh/sa/client-a"]}}]
    """
)
DENY_A = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-a, namespace: mesh}
    spec:
      selector: {matchLabels: {app: b}}
      action: DENY
      rules:
        - from: [{source: {principals: ["cluster.local/ns/mesh/sa/client-a"]}}]
    """
)
STRICT = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: strict, namespace: mesh}
    spec: {mtls: {mode: STRICT}}
    """
)


def make_world(ips: dict[str, str], extra: str = "") -> World:
    text = WORLD + (f"---\n{extra}" if extra else "")
    return World.build(parse_documents(load_text(text, "test_node.yaml")), ips=ips)


# ---- pure: which pods a node proxy serves ---------------------------------------------------

IPS = {"mesh/a": "10.244.0.2", "mesh/c": "10.244.0.3", "plain/d": "10.244.0.4", "mesh/b": "10.244.1.2"}


def test_plan_serves_ambient_pods_and_skips_the_others() -> None:
    """istio-ambient.md §3.1: the node agent "detects an ambient pod (`istio.io/dataplane-mode=
    ambient` on the namespace or pod)"; a pod of a `dataplane-mode: none` namespace, or one with
    no address, is left alone; the served pod's identity is its SPIFFE id (§1.2)."""
    world = make_world(IPS)
    served = plan_pod(world, PodAttachment("mesh", "a", "/run/netns/x-a"))
    assert served.action is PodAction.SERVE and served.identity == ID_A and str(served.ip) == "10.244.0.2"
    plain = plan_pod(world, PodAttachment("plain", "d", "/run/netns/x-d"))
    assert plain.action is PodAction.SKIP and "dataplane-mode: none" in plain.reason
    no_ip = plan_pod(world, PodAttachment("plain", "e", "/run/netns/x-e"))
    assert no_ip.action is PodAction.SKIP
    unknown = plan_pod(world, PodAttachment("mesh", "zz", "/run/netns/x-zz"))
    assert unknown.action is PodAction.SKIP and "not in the world" in unknown.reason


def test_plan_pods_reconciles_like_a_cni_snapshot() -> None:
    """istio-ambient.md §3.1 (ZDS): after the snapshot "ztunnel drops any proxies not in the
    snapshot"; a pod whose address or identity changed gets a new proxy (new listeners, new
    certificate), an unchanged one keeps its proxy."""
    world = make_world(IPS)
    a = PodAttachment("mesh", "a", "/run/netns/x-a")
    c = PodAttachment("mesh", "c", "/run/netns/x-c")
    served = {"mesh/a": plan_pod(world, a), "mesh/c": plan_pod(world, c)}
    changes = plan_pods(world, [a], served)
    assert (
        [p.pod.key for p in changes.keep] == ["mesh/a"] and changes.remove == ("mesh/c",) and not changes.add
    )
    moved = make_world({**IPS, "mesh/a": "10.244.0.9"})
    changes = plan_pods(moved, [a, c], served)
    assert changes.remove == ("mesh/a",) and [p.pod.key for p in changes.add] == ["mesh/a"]
    assert [p.pod.key for p in changes.keep] == ["mesh/c"]


def test_config_round_trips_and_the_world_gets_the_runtime_addresses(tmp_path: Path) -> None:
    """The runtime assigns pod addresses and Service ClusterIPs (docs/runtime.md); the node proxy
    resolves a captured Service VIP itself (istio-ambient.md §1.6 step 2), so the VIPs it is given
    must be the ones the pods use."""
    manifest = tmp_path / "world.yaml"
    manifest.write_text(WORLD.replace(f"clusterIP: {VIP}, ", ""))
    config = NodeProxyConfig(
        node="node-1",
        manifests=(manifest,),
        pods=(PodAttachment("mesh", "b", "/run/netns/x-b"),),
        credentials=CredentialConfig("agent", tmp_path / "certs", tmp_path / "ca.crt"),
        pod_ips=IPS,
        service_ips={"mesh/b": "10.96.7.7"},
        cluster_name="demo",
        mode="ambient",
        flows_dir=tmp_path / "flows",
        metrics=("0.0.0.0", 15020),
    )
    path = tmp_path / "node-1.json"
    config.write(path)
    assert NodeProxyConfig.load(path) == config
    world = build_world(config)
    assert str(world.services[("mesh", "b")].cluster_ip) == "10.96.7.7"
    assert world.cluster_name == "demo" and world.mode == "ambient"
    assert str(world.find_workloads("mesh", "b")[0].ip) == "10.244.1.2"


# ---- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    topo: Topology
    loop: LoopThread
    ca: CertificateAuthority
    tmp: Path
    nodes: list[AmbientNode] = field(default_factory=list)
    pipelines: list[FlowPipeline] = field(default_factory=list)
    recorders: list[FlowRecorder] = field(default_factory=list)
    metrics: list[MetricsServer] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    def pod(self, name: str) -> Netns:
        return self.topo.pods[name]

    @property
    def ips(self) -> dict[str, str]:
        return {f"{NAMESPACE[p]}/{p}": ns.ip for p, ns in self.topo.pods.items()}

    def attachments(self, node: int) -> list[PodAttachment]:
        return [
            PodAttachment(NAMESPACE[p], p, self.topo.pods[p].path)
            for p, n in self.topo.pod_node.items()
            if n == node
        ]

    def set_policy(self, extra: str = "") -> list[int]:
        """Push a new world (the manifests plus `extra`) to both node proxies, as a control-plane
        push would; returns how many live connections each closed."""
        world = make_world(self.ips, extra)

        def push() -> list[int]:
            closed = []
            for node, recorder in zip(self.nodes, self.recorders, strict=True):
                recorder.world = world
                closed.append(node.update_policy(PolicyEngine(world, "ambient")))
            return closed

        return self.loop.run(push)

    def cursor(self, node: int) -> int:
        return self.loop.run(lambda: self.pipelines[node].ring.written)

    def flows(self, node: int, cursor: int) -> tuple[Flow, ...]:
        return self.loop.run(lambda: self.pipelines[node].ring.read(cursor).flows)

    def wait_flow(self, node: int, cursor: int, match: Callable[[Flow], bool], what: str) -> Flow:
        def find() -> Flow | None:
            return next((f for f in self.flows(node, cursor) if match(f)), None)

        return wait_until(find, 5.0, f"{what} on node-{node}")

    def curl(self, pod: str, url: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        return curl_in(self.pod(pod), url, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_root("curl", "tcpdump")
    topo = build_topology(LAYOUT)
    loop: LoopThread | None = None
    apps: list[App] = []
    try:
        for pod, ports in (("b", ("--http", "8080", "--tcp", "9000")), ("e", ("--http", "8080"))):
            apps.append(start_echo(topo, pod, NAMESPACE[pod], f"node-{LAYOUT[pod]}", *ports))
        for app in apps:
            wait_listening(topo.node_of(app.pod), (app.netns.ip, 8080), app)
        loop = LoopThread()
        ca = CertificateAuthority.create(RootCA.generate("cluster.local", NOW))
        c = Cluster(topo, loop, ca, tmp_path_factory.mktemp("ambient"), apps=apps)
        world = make_world(c.ips)
        for i in range(2):
            metrics = TcpMetrics()
            pipeline = FlowPipeline(FlowRing(), metrics, FlowWriter(c.tmp / "flows", f"node-{i}"))
            recorder = FlowRecorder(pipeline, f"node-{i}", world)
            node = AmbientNode(
                node=f"node-{i}",
                engine=PolicyEngine(world, "ambient"),
                credentials=AuthorityCredentials(ca),
                sink=recorder,
            )
            server = MetricsServer(metrics, "127.0.0.1", 0)
            c.pipelines.append(pipeline)
            c.recorders.append(recorder)
            c.nodes.append(node)
            c.metrics.append(server)
            loop.call(server.start())
            _, failed = loop.call(node.sync_pods(c.attachments(i)))
            assert not failed, failed
        assert sorted(c.nodes[0].pods) == ["mesh/a", "mesh/c"] and sorted(c.nodes[1].pods) == ["mesh/b"]
        yield c
        for node, server, pipeline in zip(c.nodes, c.metrics, c.pipelines, strict=True):
            loop.call(node.close())
            loop.call(server.close())
            loop.run(pipeline.close)
    finally:
        if loop is not None:
            loop.stop()
        for app in apps:
            app.stop()
        delete_topology(topo)


def is_pod(name: str, side: str) -> Callable[[Flow], bool]:
    def match(flow: Flow) -> bool:
        endpoint = flow.source if side == "source" else flow.destination
        return endpoint.pod == name

    return match


# ---- (a) HBONE end to end -------------------------------------------------------------------


@pytest.mark.netns
def test_curl_by_pod_ip_crosses_nodes_over_hbone_with_the_original_client_ip(cluster: Cluster) -> None:
    """istio-ambient.md §3.1: the app's connection is redirected to the node proxy's 15001 in the
    pod; §1.3/§1.7: HBONE to `<podIP>:15008`, `:authority = podIP:port`, and the inbound side
    connects to the app with the client's address (IP_TRANSPARENT, `freebind_connect`). §5.3:
    one record per connection at each end; `src.identity`/`dst.identity` only with mTLS; §5.1:
    `connection_security_policy=mutual_tls` for HBONE."""
    cluster.set_policy()
    a, b = cluster.pod("a"), cluster.pod("b")
    c0, c1 = cluster.cursor(0), cluster.cursor(1)
    result = cluster.curl("a", f"http://{b.ip}:8080/hello")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["pod"] == "b" and seen["path"] == "/hello"
    assert seen["peer_ip"] == a.ip  # the original client address, not the proxy's

    out = cluster.wait_flow(0, c0, is_pod("b", "destination"), "the source's record")
    assert out.reporter is Reporter.SOURCE and out.verdict is Verdict.FORWARDED and out.mtls
    assert out.source.pod == "a" and out.source.identity == ID_A
    assert out.destination.identity == ID_B and out.destination.port == 8080
    assert out.hbone_target == f"{b.ip}:8080" and out.bytes_sent > 0 and out.bytes_received > 0

    inbound = cluster.wait_flow(1, c1, is_pod("a", "source"), "the destination's record")
    assert inbound.reporter is Reporter.DESTINATION and inbound.verdict is Verdict.FORWARDED
    assert inbound.mtls and inbound.source.identity == ID_A and inbound.source.address == a.ip
    assert inbound.destination.pod == "b" and inbound.destination.identity == ID_B
    assert inbound.bytes_received == out.bytes_received  # both count from the source's view


@pytest.mark.netns
def test_curl_to_a_service_vip_is_load_balanced_by_the_node_proxy(cluster: Cluster) -> None:
    """istio-ambient.md §1.6 step 2: a Service VIP without a waypoint resolves to an endpoint
    in the node proxy (the target port translated: 80 -> 8080), and the record names the
    Service (`dst.service`, Istio's `destination_service`)."""
    cluster.set_policy()
    c0 = cluster.cursor(0)
    result = cluster.curl("a", f"http://{VIP}/svc")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["peer_ip"] == cluster.pod("a").ip
    out = cluster.wait_flow(0, c0, lambda f: f.destination_service is not None, "the VIP record")
    assert out.destination_service == FlowService("mesh", "b")
    assert out.destination.pod == "b" and out.destination.port == 8080 and out.mtls


# ---- (b) AuthorizationPolicy ALLOW by principal ---------------------------------------------


@pytest.mark.netns
def test_allow_by_principal_admits_one_client_and_refuses_the_other(cluster: Cluster) -> None:
    """istio-ambient.md §4.1/§4.5: "if any ALLOW policies exist, the request must match one";
    the source principal is the peer certificate's SAN (§1.7). ztunnel's words for the refusal:
    "allow policies exist, but none allowed" (§5.3); the client sees the connection refused."""
    cluster.set_policy(ALLOW_A)
    c0, c1 = cluster.cursor(0), cluster.cursor(1)
    b = cluster.pod("b")
    ok = cluster.curl("a", f"http://{b.ip}:8080/")
    assert ok.returncode == 0, ok.stderr
    refused = cluster.curl("c", f"http://{b.ip}:8080/")
    assert refused.returncode != 0 and refused.stdout == ""

    dropped = cluster.wait_flow(1, c1, is_pod("c", "source"), "c's record at the destination")
    assert dropped.verdict is Verdict.DROPPED and dropped.drop_reason == "POLICY_DENIED"
    assert dropped.policy is not None
    assert (dropped.policy.kind, dropped.policy.namespace, dropped.policy.name) == (
        "AuthorizationPolicy",
        "mesh",
        "allow-a",
    )
    assert "allow policies exist, but none allowed" in dropped.reason
    assert dropped.source.identity == ID_C and dropped.mtls
    admitted = cluster.wait_flow(1, c1, is_pod("a", "source"), "a's record at the destination")
    assert admitted.verdict is Verdict.FORWARDED and admitted.policy is not None
    assert admitted.policy.name == "allow-a" and admitted.policy.rule == 0

    at_source = cluster.wait_flow(0, c0, is_pod("c", "source"), "c's record at the source")
    assert at_source.verdict is Verdict.DROPPED and at_source.error == "http status: 401"


# ---- (c) PeerAuthentication STRICT ----------------------------------------------------------


@pytest.mark.netns
def test_strict_refuses_plaintext_from_a_pod_outside_the_mesh(cluster: Cluster) -> None:
    """istio-ambient.md §4.7: PERMISSIVE (the default) "= no policy. Plaintext is allowed
    through 15006"; STRICT = "deny any connection with no peer identity (plaintext through
    15006)". §1.7: plaintext inbound connects with the original client address too."""
    d, b = cluster.pod("d"), cluster.pod("b")
    cluster.set_policy()
    c1 = cluster.cursor(1)
    plain = cluster.curl("d", f"http://{b.ip}:8080/")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["peer_ip"] == d.ip
    accepted = cluster.wait_flow(1, c1, lambda f: f.source.address == d.ip, "d's plaintext record")
    assert accepted.verdict is Verdict.FORWARDED and not accepted.mtls
    assert accepted.source.identity is None and accepted.source.namespace == "plain"

    cluster.set_policy(STRICT)
    c1 = cluster.cursor(1)
    refused = cluster.curl("d", f"http://{b.ip}:8080/")
    assert refused.returncode != 0
    dropped = cluster.wait_flow(1, c1, lambda f: f.source.address == d.ip, "d's refused record")
    assert dropped.verdict is Verdict.DROPPED and dropped.drop_reason == "UNENCRYPTED_TRAFFIC"
    assert dropped.policy is not None and dropped.policy.kind == "PeerAuthentication"
    assert dropped.policy.name == "strict"
    meshed = cluster.curl("a", f"http://{b.ip}:8080/")  # mTLS still passes under STRICT
    assert meshed.returncode == 0, meshed.stderr


# ---- (d) nothing in the clear on the underlay -----------------------------------------------


@pytest.mark.netns
def test_underlay_capture_shows_no_plaintext_between_meshed_pods(cluster: Cluster) -> None:
    """istio-ambient.md §1.2: HBONE is TLS 1.3 between the nodes; the request of a meshed pod must
    not appear on the wire, while the same request between pods outside the mesh does (the
    capture sees plaintext, so its absence means something)."""
    cluster.set_policy()
    mesh_token, plain_token = f"meshsecret{secrets.token_hex(6)}", f"plainpath{secrets.token_hex(6)}"
    pcap = cluster.tmp / "underlay.pcap"
    node0 = cluster.topo.nodes[0]
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node0.name,
            "tcpdump",
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            str(pcap),
            "tcp",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        started = any("listening on" in line for line in iter_lines(dump.stderr, time.monotonic() + 10))
        assert started, "tcpdump did not start"
        meshed = cluster.curl("a", f"http://{cluster.pod('b').ip}:8080/{mesh_token}")
        assert meshed.returncode == 0 and mesh_token in meshed.stdout, meshed.stderr
        plain = cluster.curl("d", f"http://{cluster.pod('e').ip}:8080/{plain_token}")
        assert plain.returncode == 0 and plain_token in plain.stdout, plain.stderr
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
        if dump.stderr is not None:
            dump.stderr.close()
    data = pcap.read_bytes()
    assert plain_token.encode() in data  # the capture does see plaintext
    assert mesh_token.encode() not in data  # ... but not the meshed request
    assert b"peer_ip" in data and data.count(b"peer_ip") == 1  # only the plain response is readable


# ---- (e) a policy change closes a live connection ---------------------------------------------


@pytest.mark.netns
def test_policy_change_closes_a_live_connection_no_longer_allowed(cluster: Cluster) -> None:
    """istio-ambient.md §1.7: "A PolicyWatcher re-evaluates tracked inbound connections whenever
    policy changes and closes any that are now denied"; §5.3: the record says "connection closed
    due to policy rejection", with the DENY policy and rule that decided."""
    cluster.set_policy()
    b = cluster.pod("b")
    c1 = cluster.cursor(1)
    sock = socket_in(cluster.pod("a").path)  # the app's own (unmarked) socket: captured
    sock.settimeout(5)
    try:
        sock.connect((b.ip, 9000))
        hello = b""  # a server-first protocol: the app writes before the client does
        while not hello.endswith(b"\n"):
            hello += sock.recv(4096)
        assert json.loads(hello)["peer_ip"] == cluster.pod("a").ip
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        closed = cluster.set_policy(DENY_A)
        assert closed == [0, 1]
        try:
            rest = sock.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b""  # the connection is gone
    finally:
        sock.close()
    record = cluster.wait_flow(
        1, c1, lambda f: f.destination.port == 9000 and f.verdict is Verdict.DROPPED, "the revoked record"
    )
    assert record.policy is not None and (record.policy.name, record.policy.rule) == ("deny-a", 0)
    assert record.drop_reason == "POLICY_DENY"
    assert record.error is not None and record.error.startswith("connection closed due to policy rejection")
    assert record.bytes_sent == 4 and record.bytes_received > 4
    again = cluster.curl("a", f"http://{b.ip}:8080/")
    assert again.returncode != 0
    cluster.set_policy()


# ---- (f) metrics ----------------------------------------------------------------------------


def opened(text: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "istio_tcp_connections_opened_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


@pytest.mark.netns
def test_metrics_count_connections_with_istio_labels(cluster: Cluster) -> None:
    """istio-ambient.md §5.1: `istio_tcp_connections_opened_total` with `reporter` (`source` on
    the outbound side, `destination` on the inbound side), workloads, principals ("only from the
    mTLS peer cert"), `connection_security_policy` `mutual_tls` (HBONE) / `unknown`."""
    cluster.set_policy()
    c1 = cluster.cursor(1)
    result = cluster.curl("a", f"http://{cluster.pod('b').ip}:8080/")
    assert result.returncode == 0, result.stderr
    cluster.wait_flow(1, c1, is_pod("a", "source"), "the destination's record")
    common = {
        "source_workload": "a",
        "source_workload_namespace": "mesh",
        "source_principal": ID_A,
        "destination_workload": "b",
        "destination_principal": ID_B,
        "connection_security_policy": "mutual_tls",
        "response_flags": "-",
        "request_protocol": "tcp",
    }
    texts = []
    for node in (0, 1):
        port = cluster.metrics[node].port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            texts.append(response.read().decode())
    assert opened(texts[0], reporter="source", **common) >= 1
    assert opened(texts[1], reporter="destination", **common) >= 1
    assert opened(texts[0], reporter="destination") == 0  # node-0 serves no destination here


# ---- waypoints: refused, not bypassed ---------------------------------------------------------


@pytest.mark.netns
def test_service_with_a_waypoint_is_refused_while_no_waypoint_proxy_runs(cluster: Cluster) -> None:
    """istio-ambient.md §1.6 step 1: a Service VIP with a waypoint goes "HBONE to the waypoint";
    with no waypoint proxy running, the connection is refused with that reason in its record,
    never sent to the pod around the waypoint (whose policies would then be skipped)."""
    cluster.set_policy()
    c0 = cluster.cursor(0)
    result = cluster.curl("a", f"http://{WAYPOINT_VIP}/")
    assert result.returncode != 0
    record = cluster.wait_flow(0, c0, lambda f: f.verdict is Verdict.DROPPED, "the refused record")
    assert record.error is not None and "no waypoint proxy is running" in record.error
    assert record.drop_reason == "DROP_REASON_UNKNOWN"


# ---- remove_pod, and the node proxy as a process ----------------------------------------------


def listening_ports(netns: Netns) -> set[int]:
    out = run_in_netns(netns.path, ("ss", "-Hltn"))
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


@pytest.mark.netns
def test_remove_pod_then_a_node_proxy_process_takes_over(cluster: Cluster) -> None:
    """istio-cni `DelWorkload`: removing a pod removes its listeners and its in-pod rules, and the
    pod's traffic is direct again. Then the node proxy as the runtime runs it (a process in its
    node's namespace, `python -m nodemesh.nodeproxy.process`): it serves the pod, writes flows
    and `/metrics` on 15020, reloads policies on SIGHUP (§1.7 late rejection applies), and on
    SIGTERM exits 0 leaving the capture in place, so the pod fails closed (ztunnel restarts);
    a restarted node proxy restores service for new connections (issue 5 wants it within 2 s:
    the time is printed, not asserted, as timings belong to benchmarks)."""
    node1, b, a, d = cluster.nodes[1], cluster.pod("b"), cluster.pod("a"), cluster.pod("d")
    cluster.set_policy()
    assert cluster.loop.call(node1.remove_pod("mesh/b"))
    procs: list[subprocess.Popen[str]] = []
    stderr = (cluster.tmp / "process.log").open("w")
    try:
        assert capture_state(b.path).absent and list_ruleset(b.path).strip() == ""
        assert not {15001, 15006, 15008} & listening_ports(b)
        direct = cluster.curl("d", f"http://{b.ip}:8080/")
        assert direct.returncode == 0 and json.loads(direct.stdout)["peer_ip"] == d.ip

        ca_dir = cluster.tmp / "ca"
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "signer.crt").write_text(cluster.ca.signer.cert_pem)
        (ca_dir / "signer.key").write_text(cluster.ca.signer.key_pem)
        (ca_dir / "roots.pem").write_text(cluster.ca.bundle.to_pem())
        manifests = cluster.tmp / "manifests"
        manifests.mkdir(exist_ok=True)
        (manifests / "10-world.yaml").write_text(WORLD)
        flows = cluster.tmp / "process-flows"
        config = NodeProxyConfig(
            node="node-1",
            manifests=(manifests,),
            pods=tuple(cluster.attachments(1)),
            credentials=CredentialConfig("ca", ca_dir),
            pod_ips=cluster.ips,
            flows_dir=flows,
            metrics=("0.0.0.0", 15020),
        )
        config_path = cluster.tmp / "node-1.json"
        config.write(config_path)
        node_ns = cluster.topo.nodes[1]

        def start() -> subprocess.Popen[str]:
            argv = ["ip", "netns", "exec", node_ns.name, sys.executable, "-m", "nodemesh.nodeproxy.process"]
            argv += ["--config", str(config_path)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            procs.append(proc)
            return proc

        def event(proc: subprocess.Popen[str], name: str) -> dict[str, object]:
            assert proc.stdout is not None
            for line in iter_lines(proc.stdout, time.monotonic() + 20):
                parsed = json.loads(line)
                if parsed["event"] == name:
                    return dict(parsed)
            raise AssertionError(f"no {name!r} event; log: {(cluster.tmp / 'process.log').read_text()}")

        proc = start()
        ready = event(proc, "ready")
        assert ready["pods"] == ["mesh/b"] and ready["loop"] == "uvloop"
        assert list(ready["skipped"]) == ["plain/e"]  # type: ignore[call-overload]
        served = cluster.curl("a", f"http://{b.ip}:8080/from-process")
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout)["peer_ip"] == a.ip

        def destination_lines() -> list[Flow] | None:
            path = flows / "node-1.jsonl"
            if not path.exists():
                return None
            found = [Flow.from_json(line) for line in path.read_text().splitlines()]
            return [f for f in found if f.reporter is Reporter.DESTINATION and f.source.pod == "a"] or None

        exported = wait_until(destination_lines, 5.0, "the exported flow")
        assert exported[0].verdict is Verdict.FORWARDED and exported[0].mtls
        metrics = run_in_netns(node_ns.path, ("curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics"))
        assert opened(metrics, reporter="destination", source_workload="a", destination_workload="b") >= 1

        (manifests / "20-deny.yaml").write_text(DENY_A)
        proc.send_signal(signal.SIGHUP)
        reloaded = event(proc, "reloaded")
        assert reloaded["generation"] == 1 and reloaded["pods"] == ["mesh/b"]
        denied = cluster.curl("a", f"http://{b.ip}:8080/")
        assert denied.returncode != 0

        proc.send_signal(signal.SIGTERM)
        assert event(proc, "stopped")["node"] == "node-1"
        assert proc.wait(10) == 0
        assert capture_state(b.path).installed  # fails closed: captured, nothing listening
        assert cluster.curl("a", f"http://{b.ip}:8080/").returncode != 0
        assert cluster.curl("d", f"http://{b.ip}:8080/").returncode != 0

        (manifests / "20-deny.yaml").unlink()
        restarted = time.monotonic()
        proc = start()

        def restored() -> bool:
            return cluster.curl("a", f"http://{b.ip}:8080/", timeout=1.0).returncode == 0

        wait_until(restored, 10.0, "service after the restart")
        # Issue 5 asks for service back within 2 s (0.8-1.1 s measured on a quiet machine). Timings
        # are measured, never asserted, in tests (STYLE): print it for the log, assert recovery.
        print(f"service restored {time.monotonic() - restarted:.2f} s after the node proxy restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        stderr.close()
        cluster.loop.call(node1.add_pod(PodAttachment("mesh", "b", b.path)))
    back = cluster.curl("a", f"http://{b.ip}:8080/")
    assert back.returncode == 0, back.stderr


@pytest.mark.netns
def test_a_pod_without_its_certificate_is_not_served(cluster: Cluster) -> None:
    """istio-ambient.md §1.2: the node proxy presents the SOURCE workload's SVID, which it holds
    only once the CA issued it for a pod of its node; without one the pod cannot be served (its
    listeners could not do mTLS), and nothing of it is installed."""

    class NoCertificates:
        def certificate(self, identity: str) -> WorkloadCertificate | None:
            return None

        def trust_bundle(self) -> str:
            return cluster.ca.bundle.to_pem()

    world = make_world(cluster.ips)
    spare = AmbientNode(
        node="node-0",
        engine=PolicyEngine(world, "ambient"),
        credentials=NoCertificates(),
        sink=FlowRecorder(FlowPipeline(), "node-0", world),
    )
    c = cluster.pod("c")
    before = list_ruleset(c.path)
    with pytest.raises(CredentialUnavailableError):
        cluster.loop.call(spare.add_pod(PodAttachment("mesh", "c", c.path)))
    assert list_ruleset(c.path) == before and not spare.pods
    cluster.loop.call(spare.close())
