"""Cleanup by construction: `down`, a killed supervisor, and two clusters side by side."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

import pytest

from nodemesh.runtime.state import ClusterDir
from tests.netns.conftest import (
    cli,
    echo_pod,
    host_snapshot,
    pid_namespace_members,
    require_root,
    running_cluster,
    unique_name,
)

pytestmark = pytest.mark.netns


def _tiny(tmp_path: Path) -> Path:
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: nodemesh.io/v1alpha1\nkind: Cluster\nmetadata: {name: tiny}\nspec: {nodes: 2, mode: none}\n---\n"
        + echo_pod("solo", "default", "node-1")
    )
    return tmp_path


def _wait_gone(pid: int, timeout: float = 15) -> None:
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(timeout * 1000), f"process {pid} still running"
    finally:
        os.close(fd)


def _commands(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def test_down_leaves_the_host_exactly_as_before(tmp_path: Path) -> None:
    """Also the cluster's control plane, its node agents and their state (store, CA, node
    credentials, views): processes of the sandbox, files under the cluster's directory."""
    require_root()
    before = host_snapshot()
    name = unique_name("d")
    with running_cluster(_tiny(tmp_path), name) as c:
        assert c.up.returncode == 0, c.up.stderr
        state = ClusterDir.of(name)
        status = c.status()
        assert status["controlplane"]["phase"] == "Running"  # type: ignore[index]
        assert [a["acked_version"] for a in status["agents"]] == ["1", "1"]  # type: ignore[attr-defined]
        assert (state.controlplane / "store.db").exists() and (state.agent_dir("node-1") / "view.db").exists()
        members_ns = os.readlink(f"/proc/{state.alive_pid()}/ns/pid")
        commands = _commands(pid_namespace_members(members_ns))
        assert sum("controlplane serve" in cmd for cmd in commands) == 1
        assert sum("nodemesh.runtime.nodeagent" in cmd for cmd in commands) == 2
        down = cli("down", "--name", name)
        assert down.returncode == 0 and "is down" in down.stdout
    assert host_snapshot() == before
    assert pid_namespace_members(members_ns) == []
    assert not state.root.exists()


def test_a_killed_supervisor_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL to the sandbox's init: the kernel kills its PID namespace, and the namespaces,
    links and rules go with the last process (ztunnel's namespaced tests rely on the same)."""
    require_root()
    before = host_snapshot()
    name = unique_name("k")
    with running_cluster(_tiny(tmp_path), name) as c:
        assert c.up.returncode == 0, c.up.stderr
        state = ClusterDir.of(name)
        pid = state.alive_pid()
        keeper = state.pid(state.keeper_pid)
        assert pid is not None and keeper is not None
        ns_link = os.readlink(f"/proc/{pid}/ns/pid")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(keeper)
        assert pid_namespace_members(ns_link) == []
        assert not state.root.exists()
        assert host_snapshot() == before
        gone = cli("status", "--name", name)
        assert gone.returncode == 3


def test_two_clusters_side_by_side_with_the_same_addresses(tmp_path: Path) -> None:
    """Each cluster has its own sandbox, so two can even use the same CIDRs."""
    require_root()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    name_a, name_b = unique_name("a"), unique_name("b")
    with running_cluster(_tiny(a_dir), name_a) as a, running_cluster(_tiny(b_dir), name_b) as b:
        assert a.up.returncode == 0 and b.up.returncode == 0, a.up.stderr + b.up.stderr
        ip_a, ip_b = a.pod_ip("default/solo"), b.pod_ip("default/solo")
        assert ip_a == ip_b
        assert a.curl_json("default/solo", f"http://{ip_a}:8080/")["pod"] == "solo"
        assert cli("down", "--name", name_b).returncode == 0
        assert a.curl_json("default/solo", f"http://{ip_a}:8080/again")["path"] == "/again"
        both = cli("status")
        assert name_a in both.stdout and name_b not in both.stdout


def test_starting_a_cluster_twice_is_refused(tmp_path: Path) -> None:
    require_root()
    name = unique_name("t")
    with running_cluster(_tiny(tmp_path), name) as c:
        assert c.up.returncode == 0
        again = cli("up", "-f", str(tmp_path), "--name", name)
        assert again.returncode == 3 and "already running" in again.stderr
        assert c.curl_json("default/solo", f"http://{c.pod_ip('default/solo')}:8080/")["pod"] == "solo"


def test_a_failing_build_leaves_nothing(tmp_path: Path) -> None:
    """A workload command that does not exist is a failed pod, not a broken host; and a
    supervisor that cannot build exits with everything it made."""
    require_root()
    before = host_snapshot()
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n"
        "  containers: [{name: c, command: [/nonexistent/binary]}]\n"
    )
    name = unique_name("f")
    with running_cluster(tmp_path, name, "--timeout", "20") as c:
        assert c.up.returncode == 1
        status = cli("status", "--name", name, "-o", "json")
        assert '"exit_code": 127' in status.stdout
    assert host_snapshot() == before
