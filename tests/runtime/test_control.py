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
