"""A real cluster from namespaces: pod to pod, Service VIPs, DNS, exec, status, logs.

One cluster for the module (two nodes; pods pinned and spread; a Service with two replicas on
two nodes; a Service selecting nothing; a pod that exits), driven through the CLI with real curl.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.conftest import Cluster, cli, echo_pod, require_root, running_cluster, unique_name

pytestmark = pytest.mark.netns


def _manifests(name: str) -> str:
    return (
        f"""
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec: {{nodes: 2, mode: none}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: app}}
---
"""
        + echo_pod("client", "app", "node-0")
        + echo_pod("local", "app", "node-0")
        + echo_pod("remote", "app", "node-1")
        + """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          command: [nodemesh, echo, --http, "8080", --no-access-log]
          ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: app}
spec:
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: app}
spec:
  containers:
    - name: main
      command: [sh, -c, "echo boom; exit 3"]
"""
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_root()
    name = unique_name("c")
    d: Path = tmp_path_factory.mktemp("cluster")
    (d / "all.yaml").write_text(_manifests(name))
    with running_cluster(d, name) as c:
        yield c


def test_up_reports_progress_warnings_and_the_pod_that_exited(cluster: Cluster) -> None:
    """`up` waits for every pod, warns about a Service selecting nothing, and fails (exit 1,
    cluster left up for inspection) because a pod exited."""
    assert cluster.up.returncode == 1, cluster.up.stdout + cluster.up.stderr
    assert "Service app/empty selects no pod" in cluster.up.stderr
    assert "app/crasher (Failed: main exited with code 3)" in cluster.up.stderr
    assert "network: links and routes for 2 nodes" in cluster.up.stdout


def test_pod_to_pod_on_the_same_node_preserves_the_source_ip(cluster: Cluster) -> None:
    seen = cluster.curl_json("app/client", f"http://{cluster.pod_ip('app/local')}:8080/same")
    assert seen["pod"] == "local" and seen["node"] == "node-0"
    assert seen["peer_ip"] == cluster.pod_ip("app/client")


def test_pod_to_pod_across_nodes_preserves_the_source_ip(cluster: Cluster) -> None:
    seen = cluster.curl_json("app/client", f"http://{cluster.pod_ip('app/remote')}:8080/across")
    assert seen["pod"] == "remote" and seen["node"] == "node-1"
    assert seen["peer_ip"] == cluster.pod_ip("app/client")
    assert seen["request_line"] == "GET /across HTTP/1.1"


def test_h2c_prior_knowledge_and_upgrade_across_nodes(cluster: Cluster) -> None:
    """RFC 9113 §3.3: HTTP/2 over cleartext TCP with prior knowledge; RFC 7540 §3.2: `Upgrade: h2c`."""
    url = f"http://{cluster.pod_ip('app/remote')}:8080/h2"
    for flag in ("--http2-prior-knowledge", "--http2"):
        seen = cluster.curl_json("app/client", url, flag)
        assert seen["protocol"] == "HTTP/2" and seen["peer_ip"] == cluster.pod_ip("app/client"), flag


def test_service_vip_balances_across_replicas_on_two_nodes(cluster: Cluster) -> None:
    """kube-proxy picks a ready endpoint at random per connection (`numgen random mod N`); over
    40 connections both replicas, on both nodes, answer, and the client's address is kept."""
    script = "for i in $(seq 40); do curl -sS -m 5 http://web/; done"
    out = cluster.exec("app/client", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == 40
    assert {a["pod"] for a in answers} == {"web-0", "web-1"}
    assert {a["node"] for a in answers} == {"node-0", "node-1"}
    assert {a["peer_ip"] for a in answers} == {cluster.pod_ip("app/client")}


def test_dns_resolves_all_three_name_forms_to_the_cluster_ip(cluster: Cluster) -> None:
    """Kubernetes DNS: a pod in `bar` finds Service `foo` as `foo`, `foo.bar` and
    `foo.bar.svc.cluster.local` (search list `<ns>.svc.cluster.local svc.cluster.local ...`)."""
    services = cluster.status()["services"]
    assert isinstance(services, list)
    web_ip = next(s["cluster_ip"] for s in services if s["name"] == "web")
    for name in ("web", "web.app", "web.app.svc.cluster.local"):
        out = cluster.exec("app/client", "getent", "ahostsv4", name)
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.split()[0] == web_ip, name


def test_dns_answers_nxdomain_for_everything_else(cluster: Cluster) -> None:
    """Outside the cluster zone the answer is NXDOMAIN at once, not a timeout: nothing is forwarded."""
    probe = (
        "import socket,sys;"
        "from nodemesh.runtime.dns import build_query,parse_response;"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        "s.sendto(build_query(sys.argv[1]),('10.96.0.10',53));print(parse_response(s.recv(512))[0])"
    )
    for name in ("example.com", "web.other.svc.cluster.local"):
        out = cluster.exec("app/client", sys.executable, "-c", probe, name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "3", name
    assert cluster.exec("app/client", "getent", "hosts", "example.com").returncode == 2


def test_service_without_endpoints_refuses_connections(cluster: Cluster) -> None:
    """kube-proxy rejects traffic to a Service with no endpoints: curl fails with 7 (refused)."""
    out = cluster.exec("app/client", "curl", "-sS", "-m", "5", "http://empty/")
    assert out.returncode == 7, out.stderr


def test_status_and_logs_report_the_exit_code(cluster: Cluster) -> None:
    status = cluster.status()
    listed = status["pods"]
    assert isinstance(listed, list)
    pods = {f"{p['namespace']}/{p['name']}": p for p in listed}
    assert pods["app/crasher"]["phase"] == "Failed"
    assert pods["app/crasher"]["containers"][0]["exit_code"] == 3
    assert pods["app/client"]["ready"] and pods["app/client"]["node"] == "node-0"
    assert {pods["app/web-0"]["node"], pods["app/web-1"]["node"]} == {"node-0", "node-1"}
    logs = cli("logs", "--name", cluster.name, "app/crasher")
    assert "boom" in logs.stdout and "exited with code 3" in logs.stdout
    text = cli("status", "--name", cluster.name).stdout
    assert "app/crasher" in text and "Failed" in text and "kube-system/kube-dns" in text


def test_exec_returns_the_command_exit_code_and_runs_as_the_pod(cluster: Cluster) -> None:
    assert cluster.exec("app/remote", "sh", "-c", "exit 4").returncode == 4
    assert cluster.exec("app/remote", "hostname").stdout.strip() == "remote"
    missing = cli("exec", "--name", cluster.name, "app/nope", "--", "true")
    assert missing.returncode == 2 and "no pod or workload 'app/nope'" in missing.stderr


def test_live_world_carries_the_real_addresses(cluster: Cluster) -> None:
    from nodemesh.runtime import live_world

    world = live_world(cluster.name)
    remote = world.find_workloads("app", "remote")[0]
    assert str(remote.ip) == cluster.pod_ip("app/remote")
    assert world.mode == "none" and world.cluster_name == cluster.name
