"""Workload processes: start each container's command in its pod, probe its ports, reap its exit.

A pod's phase follows Kubernetes (Pending, Running, Succeeded, Failed) with `restartPolicy: Never`
semantics: a container that exits is reported with its exit code and not restarted (a crash is
something to see, in `status` and `logs`, not to hide). A pod is *ready* when every container is
running and every declared TCP port accepts a connection from the pod's node, as a kubelet TCP
probe would see it.

The supervisor is PID 1 of the sandbox, so it reaps every child, including orphans of the
workloads; `Workloads.reaped(pid, status)` records exit codes for the containers it started and
ignores the rest. Process creation is `subprocess.Popen` with a pre-exec step that joins the pod
(`netns.enter_pod`); the supervisor starts no threads while it spawns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from nodemesh.runtime import netns
from nodemesh.runtime.state import ClusterDir, ContainerStatus, PodStatus
from nodemesh.runtime.topology import ClusterPlan, ContainerPlan, PodPlan

__all__ = ["Phase", "Workloads", "container_env", "exit_code_of"]

PROBE_INTERVAL = 0.05


class Phase(Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def container_env(
    plan: ClusterPlan, pod: PodPlan, container: ContainerPlan, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment a container starts with: PATH and locale from the supervisor, the pod's
    identity (`NODEMESH_POD_*`, `HOSTNAME`), then the container's own `env`, which wins."""
    env = {k: v for k, v in base.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TERM")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.update(
        {
            "HOSTNAME": pod.name,
            "NODEMESH_CLUSTER": plan.name,
            "NODEMESH_POD_NAME": pod.name,
            "NODEMESH_POD_NAMESPACE": pod.namespace,
            "NODEMESH_POD_IP": str(pod.ip),
            "NODEMESH_NODE_NAME": pod.node,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(dict(container.env))
    return env


def exit_code_of(wait_status: int) -> int:
    """A container's exit code as Kubernetes reports it: the code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


@dataclass
class _Container:
    plan: ContainerPlan
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    ready_ports: set[int] = field(default_factory=set)

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None

    @property
    def ready(self) -> bool:
        return self.running and self.ready_ports >= set(self.plan.tcp_ports)


@dataclass
class _Pod:
    plan: PodPlan
    containers: list[_Container]

    @property
    def phase(self) -> Phase:
        codes = [c.exit_code for c in self.containers]
        if any(c.process is None and c.exit_code is None for c in self.containers):
            return Phase.PENDING
        if all(code is not None for code in codes):
            return Phase.SUCCEEDED if all(code == 0 for code in codes) else Phase.FAILED
        return Phase.RUNNING

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self.containers)


class Workloads:
    """The containers of every pod: start, probe, reap, stop. Owned by the supervisor."""

    def __init__(
        self,
        plan: ClusterPlan,
        state: ClusterDir,
        pod_files: Mapping[str, Mapping[str, str]],
        changed: asyncio.Event | None = None,
    ) -> None:
        self._plan = plan
        self._state = state
        self._pod_files = pod_files
        # the DNS pod is served by the supervisor, a waypoint pod by its waypoint process (`mesh`)
        self._pods = [
            _Pod(p, [_Container(c) for c in p.containers])
            for p in plan.pods
            if not p.system and p.waypoint is None
        ]
        self._by_pid: dict[int, _Container] = {}
        self.changed = changed or asyncio.Event()
        """Set on every change (shared with the mesh's processes: one event for the supervisor)."""

    def start_all(self) -> None:
        self._state.logs.mkdir(parents=True, exist_ok=True)
        for pod in self._pods:
            for c in pod.containers:
                self._start(pod.plan, c)

    def _start(self, pod: PodPlan, c: _Container) -> None:
        log_path = self._state.log_file(pod.key, c.plan.name)
        path = str(self._state.netns / pod.netns)
        binds = dict(self._pod_files.get(pod.key, {}))
        hostname = None if pod.host_network else pod.name
        with open(log_path, "ab") as log:
            try:
                c.process = subprocess.Popen(
                    list(c.plan.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=container_env(self._plan, pod, c.plan, os.environ),
                    cwd=c.plan.working_dir,
                    preexec_fn=lambda: netns.enter_pod(path, binds, hostname),  # noqa: PLW1509
                    start_new_session=True,
                )
            except OSError as exc:
                log.write(f"nodemesh: cannot start {c.plan.argv[0]!r}: {exc}\n".encode())
                c.process = None
                c.exit_code = 127
                return
        self._by_pid[c.process.pid] = c

    def reaped(self, pid: int, wait_status: int) -> None:
        c = self._by_pid.pop(pid, None)
        if c is None:
            return
        c.exit_code = exit_code_of(wait_status)
        if c.process is not None:
            c.process.returncode = c.exit_code
        self._state_changed()

    def _state_changed(self) -> None:
        self.changed.set()

    async def probe_until_ready(self) -> None:
        """Probe every declared port from the pod's node until each accepts a connection or its
        container exits; returns when no pod is still starting."""
        await asyncio.gather(
            *(
                self._probe(pod, c, port)
                for pod in self._pods
                for c in pod.containers
                for port in c.plan.tcp_ports
            )
        )
        self._state_changed()

    async def _probe(self, pod: _Pod, c: _Container, port: int) -> None:
        loop = asyncio.get_running_loop()
        node_ns = str(self._state.netns / pod.plan.node)
        while c.running:
            sock = netns.socket_in(node_ns)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (str(pod.plan.ip), port)), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(PROBE_INTERVAL)
                continue
            finally:
                sock.close()
            c.ready_ports.add(port)
            self._state_changed()
            return

    def settled(self) -> bool:
        """Every pod is ready, or has a container that exited (it cannot become ready: nothing is
        restarted): what `up` waits for."""
        return all(p.ready or any(c.exit_code is not None for c in p.containers) for p in self._pods)

    def statuses(self) -> list[PodStatus]:
        out = []
        for pod in self._pods:
            out.append(
                PodStatus(
                    pod.plan.namespace,
                    pod.plan.name,
                    pod.plan.node,
                    str(pod.plan.ip),
                    pod.phase.value,
                    pod.ready,
                    containers=tuple(
                        ContainerStatus(
                            c.plan.name, c.process.pid if c.process else None, c.exit_code, c.ready
                        )
                        for c in pod.containers
                    ),
                )
            )
        return out

    def running_pids(self) -> list[int]:
        return [c.process.pid for p in self._pods for c in p.containers if c.running and c.process]

    def signal_all(self, signum: signal.Signals) -> None:
        """Signal every running container's process group (its children too)."""
        for pid in self.running_pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signum)
