"""Host-side control without root: privilege messages, bad input builds nothing, state files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodemesh.cli.main import main
from nodemesh.runtime import control
from nodemesh.runtime.errors import ClusterNotFoundError, MissingPrivilegeError
from nodemesh.runtime.state import ClusterDir, ClusterStatus, ContainerStatus, PodStatus, ServiceStatus
from nodemesh.runtime.topology import plan_cluster
from nodemesh.runtime.workloads import container_env, exit_code_of

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def test_non_root_gets_a_message_naming_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MissingPrivilegeError) as err:
        control.check_privileges()
    text = str(err.value)
    assert "root" in text and "CAP_SYS_ADMIN" in text and "CAP_NET_ADMIN" in text and "sudo" in text


def test_missing_tools_are_named_with_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nft" else "/usr/bin/" + tool)
    with pytest.raises(MissingPrivilegeError, match="`nft` command \\(Debian package nftables\\)"):
        control.check_privileges()


def test_up_with_bad_input_fails_before_building_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All or nothing: an unknown node is reported with file and line, and no state exists after."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: t}\n"
        "spec:\n  nodeName: node-9\n  containers: [{name: c, command: [sleep, '9']}]\n"
    )
    run_dir = tmp_path / "run"
    code = main(["up", "-f", str(bad), "--name", "nmbad", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:5" in err and "unknown node 'node-9'" in err
    assert not run_dir.exists()


def test_verbs_without_a_cluster_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--run-dir", str(tmp_path)]) == 3
    assert "no cluster is running" in capsys.readouterr().err
    with pytest.raises(ClusterNotFoundError):
        control.find_cluster("nmnothing", str(tmp_path))


def test_stale_state_is_removed_when_found(tmp_path: Path) -> None:
    state = ClusterDir.of("nmstale", str(tmp_path))
    state.root.mkdir(parents=True)
    state.supervisor_pid.write_text("999999999")
    assert state.alive_pid() is None
    assert "was not running" in control.down("nmstale", str(tmp_path))
    assert not state.root.exists() and not tmp_path.exists()


def test_alive_pid_ignores_a_reused_pid(tmp_path: Path) -> None:
    """A PID file naming some other process (PID reuse) does not make the cluster look alive."""
    state = ClusterDir.of("nmreuse", str(tmp_path))
    state.root.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state.supervisor_pid.write_text(str(proc.pid))
        assert state.alive_pid() is None
    finally:
        proc.kill()
        proc.wait()


def test_status_json_round_trip(tmp_path: Path) -> None:
    status = ClusterStatus(
        "c",
        "none",
        "Ready",
        (("node-0", "172.18.0.2", "10.244.0.0/24"),),
        (
            PodStatus(
                "shop",
                "a-0",
                "node-0",
                "10.244.0.3",
                "Failed",
                False,
                containers=(ContainerStatus("c", 5, 3),),
            ),
        ),
        (ServiceStatus("shop", "a", "10.96.0.1", ("http:80/TCP",), ("10.244.0.3:8080",)),),
        ("w",),
    )
    state = ClusterDir(tmp_path / "c")
    state.root.mkdir()
    state.write_status(status)
    assert state.read_status() == status


def test_exit_codes_follow_kubernetes() -> None:
    """Kubernetes reports a container killed by signal N with exit code 128 + N."""
    assert exit_code_of(3 << 8) == 3
    assert exit_code_of(signal.SIGKILL) == 137


def test_container_env_carries_the_pod_identity_and_its_own_env_wins() -> None:
    from nodemesh.model.validate import load_documents
    from nodemesh.model.world import World

    plan = plan_cluster(World.build(load_documents([SHOP])))
    pod = plan.find_pods("shop/orders")[0]
    env = container_env(plan, pod, pod.containers[0], {"PATH": "/usr/bin", "SECRET": "x"})
    assert env["NODEMESH_POD_NAME"] == "orders-0" and env["NODEMESH_POD_NAMESPACE"] == "shop"
    assert env["NODEMESH_POD_IP"] == str(pod.ip) and env["HOSTNAME"] == "orders-0"
    assert "SECRET" not in env and env["PATH"].endswith("/usr/bin")


def test_up_refuses_a_manifest_the_control_plane_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cluster's control plane applies the manifests at start with Kubernetes' ServiceAccount
    admission rule ("ensures the ServiceAccount referenced by the pod exists"): `up` checks it
    while planning, so nothing is built."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: t}\n"
        "spec:\n  serviceAccountName: ghost\n  containers: [{name: c, command: [sleep, '9']}]\n"
    )
    run_dir = tmp_path / "run"
    assert main(["up", "-f", str(bad), "--name", "nmsa", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5" in err and 'serviceaccount "ghost" not found in namespace "t"' in err
    assert not run_dir.exists()


def test_up_checks_a_user_ca_before_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--ca-cert/--ca-key` go together and must be a CA whose key matches (issue: "a root CA
    generated at `up` (or supplied by the user: `--ca-cert/--ca-key`)")."""
    from datetime import UTC, datetime

    from nodemesh.ca import RootCA

    run_dir = tmp_path / "run"
    base = ["up", "-f", SHOP, "--name", "nmca", "--run-dir", str(run_dir)]
    ca, other = RootCA.generate("cluster.local", datetime.now(UTC)), RootCA.generate("x", datetime.now(UTC))
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    (tmp_path / "other.key").write_text(other.key_pem)
    assert main([*base, "--ca-cert", str(tmp_path / "ca.crt")]) == 2
    assert "--ca-cert and --ca-key go together" in capsys.readouterr().err
    assert main([*base, "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "other.key")]) == 2
    assert "the CA key does not match the CA certificate" in capsys.readouterr().err
    assert not run_dir.exists()


def _fake_cluster(run_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a cluster's supervisor (what `alive_pid` checks)."""
    state = ClusterDir.of(name, str(run_dir))
    state.root.mkdir(parents=True)
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "nodemesh.runtime.supervisor", str(state.root)])
    state.supervisor_pid.write_text(str(proc.pid))
    return proc


def test_apply_get_delete_find_the_running_clusters_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an address, the resource verbs talk to the running local cluster's control plane
    (`<cluster>/controlplane/admin.sock`), found as `status` finds the cluster; with several
    running they ask for `--cluster`; an explicit address or the environment wins."""
    monkeypatch.delenv("NODEMESH_CONTROLPLANE", raising=False)
    monkeypatch.delenv("NODEMESH_STATE_DIR", raising=False)
    run = str(tmp_path)
    first = _fake_cluster(tmp_path, "nmone")
    try:
        assert main(["get", "pods", "--run-dir", run]) == 3
        assert f"{tmp_path}/nmone/controlplane/admin.sock" in capsys.readouterr().err
        second = _fake_cluster(tmp_path, "nmtwo")
        try:
            assert main(["delete", "pod", "x", "--run-dir", run]) == 2
            assert "several clusters are running (nmone, nmtwo): pass --cluster" in capsys.readouterr().err
            assert main(["apply", "-f", SHOP, "--run-dir", run, "--cluster", "nmtwo"]) == 3
            assert f"{tmp_path}/nmtwo/controlplane/admin.sock" in capsys.readouterr().err
            assert main(["get", "pods", "--run-dir", run, "--controlplane", "unix:/nonexistent.sock"]) == 3
            assert "unix:/nonexistent.sock" in capsys.readouterr().err
            monkeypatch.setenv("NODEMESH_STATE_DIR", str(tmp_path / "cp"))
            assert main(["get", "pods", "--run-dir", run]) == 3
            assert f"{tmp_path}/cp/admin.sock" in capsys.readouterr().err
        finally:
            second.kill()
            second.wait()
        assert main(["get", "pods", "--run-dir", run, "--cluster", "nmnone"]) == 3
        assert "no cluster named 'nmnone' is running" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait()
