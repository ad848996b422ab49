"""A local cluster runs its control plane and one node agent per node, end to end.

One cluster for the module (two nodes, pods on both, a user-supplied root CA), in a private run
directory so the resource verbs' discovery ("the running cluster") is exercised without
`--cluster` and cannot pick up another cluster on this machine. Every step waits for the event
it expects (an ACK, a NACK, a reconnection) in the cluster's status, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodemesh.runtime import control
from nodemesh.runtime.state import ClusterDir, ClusterStatus
from tests.netns.conftest import cli, echo_pod, require_root, unique_name

pytestmark = pytest.mark.netns


def _manifests(name: str) -> str:
    return (
        f"""
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec: {{nodes: 2, mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: app, labels: {{istio.io/dataplane-mode: ambient}}}}
---
"""
        + echo_pod("a", "app", "node-0")
        + echo_pod("b", "app", "node-1")
        + echo_pod("c", "app", "node-0")
    )


POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-app, namespace: app}
spec:
  rules: [{from: [{source: {namespaces: [app]}}]}]
"""

LATE_POD_AND_POLICY = """\
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: app, labels: {app: late}}
spec:
  nodeName: node-1
  containers: [{name: c, command: [nodemesh, echo, --http, "8080"]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-app, namespace: app}
spec:
  podSelector: {}
"""


Check = Callable[[ClusterStatus], bool]


@dataclass(frozen=True)
class MeshCluster:
    name: str
    run_dir: str
    up_stdout: str
    up_code: int
    ca_pem: str

    @property
    def state(self) -> ClusterDir:
        return ClusterDir.of(self.name, self.run_dir)

    def cli(self, *args: str) -> tuple[int, str, str]:
        out = cli(*args, "--run-dir", self.run_dir)
        return out.returncode, out.stdout, out.stderr

    def status(self, live: bool = True) -> ClusterStatus:
        return control.status(self.name, self.run_dir, live=live)

    def wait(self, what: str, predicate: Check, *, live: bool = True, timeout: float = 30) -> ClusterStatus:
        try:
            return control.wait_for_status(
                self.name, predicate, live=live, timeout=timeout, run_dir=self.run_dir
            )
        except TimeoutError as exc:
            raise AssertionError(f"waiting for {what}: {exc}") from exc

    def view_on_disk(self, node: str) -> tuple[str, set[str]]:
        """The version and resource keys of the view a node agent persisted (what it serves)."""
        db = sqlite3.connect(str(self.state.agent_dir(node) / "view.db"))
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'version_info'").fetchone()
            keys = {k for (k,) in db.execute("SELECT key FROM resources")}
        finally:
            db.close()
        return (row[0] if row else ""), keys

    def controlplane_host_pid(self) -> int:
        root = str(self.state.root).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"controlplane" in argv and b"--cluster-dir" in argv and root in argv:
                return int(entry.name)
        raise AssertionError("no control plane process")


def _all_acked(version: int) -> Check:
    def check(s: ClusterStatus) -> bool:
        return bool(s.agents) and all(
            a.connected and a.acked_version == str(version) and a.synced and not a.nack_reason
            for a in s.agents
        )

    return check


def _in_sync(revision: int) -> Check:
    """The control plane is at `revision` and every agent holds its current view (a node whose
    view a write did not change is sent nothing, so its ACKed version may be older)."""

    def check(s: ClusterStatus) -> bool:
        return (
            s.controlplane is not None
            and s.controlplane.revision == revision
            and bool(s.agents)
            and all(a.connected and a.synced and not a.nack_reason for a in s.agents)
        )

    return check


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    require_root()
    from nodemesh.ca import RootCA

    name = unique_name("m")
    manifests = tmp_path_factory.mktemp("mesh")
    (manifests / "all.yaml").write_text(_manifests(name))
    ca_dir = tmp_path_factory.mktemp("ca")
    ca = RootCA.generate("cluster.local", datetime.now(UTC))
    (ca_dir / "ca.crt").write_text(ca.cert_pem)
    (ca_dir / "ca.key").write_text(ca.key_pem)
    run_dir = str(tmp_path_factory.mktemp("run"))
    try:
        up = cli(
            "up",
            "-f",
            str(manifests),
            "--name",
            name,
            "--run-dir",
            run_dir,
            "--ca-cert",
            str(ca_dir / "ca.crt"),
            "--ca-key",
            str(ca_dir / "ca.key"),
        )
        yield MeshCluster(name, run_dir, up.stdout + up.stderr, up.returncode, ca.cert_pem)
    finally:
        cli("down", "--name", name, "--run-dir", run_dir)


def test_up_returns_once_every_agent_acked_its_first_view(mesh: MeshCluster) -> None:
    """The issue: `up` starts the control plane, applies the manifests to it, and starts one
    node agent per node, which "receives its view and ACKs it"; `up` returns after the ACKs."""
    assert mesh.up_code == 0, mesh.up_stdout
    assert "control plane serving nodes on 172.18.0.1:15012" in mesh.up_stdout
    for node in ("node-0", "node-1"):
        assert re.search(rf"agent {node}\s+ACKed version 1\b", mesh.up_stdout), mesh.up_stdout
    status = mesh.status()
    assert status.controlplane is not None
    assert (status.controlplane.phase, status.controlplane.revision) == ("Running", 1)
    assert _all_acked(1)(status)


def test_the_control_plane_places_pods_where_the_runtime_runs_them(mesh: MeshCluster) -> None:
    """Each agent's view holds exactly its node's pods with the addresses of their namespaces."""
    pods = {p.key: (p.node, p.ip) for p in mesh.status(live=False).pods if not p.system}
    for node in ("node-0", "node-1"):
        db = sqlite3.connect(str(mesh.state.agent_dir(node) / "view.db"))
        try:
            bodies = [
                json.loads(b) for (b,) in db.execute("SELECT body FROM resources WHERE type = 'workload'")
            ]
        finally:
            db.close()
        held = {f"{w['namespace']}/{w['pod']}": (w["node"], w["ip"]) for w in bodies}
        assert held == {k: v for k, v in pods.items() if v[0] == node}


def test_workload_certificates_chain_to_the_user_ca(mesh: MeshCluster) -> None:
    """`up --ca-cert/--ca-key`: the control plane signs with the user's root; each agent holds
    an SVID per in-mesh identity of its pods, whose chain ends at that root."""
    status = mesh.status(live=False)
    assert all(a.certificates == 1 for a in status.agents)  # app/default on each node
    for node in ("node-0", "node-1"):
        (held,) = (mesh.state.agent_dir(node) / "certs").glob("*.json")
        cert = json.loads(held.read_text())
        assert cert["identity"] == "spiffe://cluster.local/ns/app/sa/default"
        assert cert["chain"][-1] == mesh.ca_pem


def test_nodemesh_apply_reaches_every_agent(mesh: MeshCluster) -> None:
    """`nodemesh apply` with no address talks to the running cluster's control plane; the new
    policy (the whole namespace, so both nodes) is pushed, and each agent ACKs the new version,
    as `nodemesh status` shows."""
    before = mesh.status()
    assert before.controlplane is not None and before.controlplane.revision is not None
    policy = Path(mesh.run_dir).parent / "policy.yaml"
    policy.write_text(POLICY)
    code, out, err = mesh.cli("apply", "-f", str(policy))
    assert code == 0, err
    assert out.strip() == "authorizationpolicy.security.istio.io/allow-app created"
    revision = before.controlplane.revision + 1
    mesh.wait(f"every agent to ACK version {revision}", _all_acked(revision))
    code, text, _ = mesh.cli("status", "--name", mesh.name)
    for node in ("node-0", "node-1"):
        assert re.search(rf"^{node}\s+Running\s+yes\s+{revision}\s+yes\s", text, re.M), text
    code, out, _ = mesh.cli("get", "authorizationpolicies", "-n", "app")
    assert code == 0 and "allow-app" in out
    for node in ("node-0", "node-1"):
        assert "policy/AuthorizationPolicy/app/allow-app" in mesh.view_on_disk(node)[1]


def test_a_push_a_node_cannot_serve_is_nacked_and_its_previous_view_kept(mesh: MeshCluster) -> None:
    """A pod applied after `up` is placed on node-1, whose agent refuses the whole push (the
    runtime does not start pods after `up`): a NACK with the reason, visible in `nodemesh
    status`, and node-1 keeps serving its previous view (xDS: NACK returns "the previous API
    config version"), while node-0 ACKs. Deleting the pod lets node-1 take the rest."""
    before = mesh.status()
    assert before.controlplane is not None and before.controlplane.revision is not None
    old_version, old_keys = mesh.view_on_disk("node-1")
    batch = Path(mesh.run_dir).parent / "late.yaml"
    batch.write_text(LATE_POD_AND_POLICY)
    code, _, err = mesh.cli("apply", "-f", str(batch))
    assert code == 0, err
    revision = before.controlplane.revision + 1

    def nacked(s: ClusterStatus) -> bool:
        node0, node1 = s.agents
        return node0.acked_version == str(revision) and bool(node1.nack_reason)

    status = mesh.wait("node-1's NACK", nacked)
    node1 = status.agents[1]
    assert node1.nack_version == str(revision) and node1.acked_version == old_version
    assert "pod app/late is not running on node-1" in node1.nack_reason
    assert node1.connected and node1.synced is False
    assert mesh.view_on_disk("node-1") == (old_version, old_keys)  # previous view kept
    assert "policy/NetworkPolicy/app/all-app" in mesh.view_on_disk("node-0")[1]
    code, text, _ = mesh.cli("status", "--name", mesh.name)
    assert f"version {revision}: pod app/late is not running on node-1" in text

    code, out, err = mesh.cli("delete", "pod", "late", "-n", "app")
    assert code == 0 and "pod/late deleted" in out, err
    fixed = mesh.wait("node-1 to take the fixed view", _in_sync(revision + 1))
    assert [a.acked_version for a in fixed.agents] == [str(revision), str(revision + 1)]
    assert "policy/NetworkPolicy/app/all-app" in mesh.view_on_disk("node-1")[1]


def test_agents_serve_their_view_while_the_control_plane_is_down_and_resync(mesh: MeshCluster) -> None:
    """Static stability: SIGKILL the control plane; the agents keep the view they hold (on
    disk, unchanged) and reconnect with backoff; the supervisor restarts the control plane on
    its store, and the agents resync to its revision without a new view; a change applied
    after the restart reaches them."""
    before = mesh.status()
    assert before.controlplane is not None and before.controlplane.revision is not None
    revision = before.controlplane.revision
    acked = [a.acked_version for a in before.agents]
    views = {node: mesh.view_on_disk(node) for node in ("node-0", "node-1")}
    os.kill(mesh.controlplane_host_pid(), signal.SIGKILL)

    down = mesh.wait(
        "the agents to lose the control plane",
        lambda s: (
            s.controlplane is not None
            and s.controlplane.restarts >= 1
            and not any(a.connected for a in s.agents)
        ),
        live=False,
    )
    assert all(a.phase == "Running" for a in down.agents) and [a.acked_version for a in down.agents] == acked
    assert {node: mesh.view_on_disk(node) for node in views} == views

    back = mesh.wait("the restarted control plane and the resync", _in_sync(revision), timeout=45)
    assert [a.acked_version for a in back.agents] == acked
    assert {node: mesh.view_on_disk(node) for node in views} == views
    policy = Path(mesh.run_dir).parent / "after-restart.yaml"
    policy.write_text(POLICY.replace("allow-app", "after-restart"))
    code, _, err = mesh.cli("apply", "-f", str(policy))
    assert code == 0, err
    mesh.wait(f"every agent to ACK version {revision + 1}", _all_acked(revision + 1))
