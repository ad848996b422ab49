"""The cluster's mesh processes: its control plane and one node agent per node, supervised.

The supervisor (the sandbox's init) starts them and keeps them running:

- the control plane, `nodemesh controlplane serve --cluster-dir <cluster>`, in the sandbox's own
  network namespace, where the underlay bridge carries `172.18.0.1`: it serves node agents on
  `172.18.0.1:15012` (istiod's port) and the CLI on `<cluster>/controlplane/admin.sock`. At its
  first start it generates the root CA (or takes `up --ca-cert/--ca-key`), issues a credential
  per node, and applies the cluster's manifests: from then on it is the source of truth for the
  desired state, and its store lives in `<cluster>/controlplane/`;
- once it serves, a node agent per node (`nodeagent`), each in its node's network namespace,
  which connects over the node's `eth0`, receives its view and ACKs (or NACKs) it.

Both are processes of the sandbox's PID namespace, so they die with the cluster, and their state
is under the cluster's directory, so `down` removes it. A process that exits is restarted with
a growing delay (kubelet's CrashLoopBackOff, 10 s doubling to 5 min, scaled down for a local
cluster: `RestartBackoff`), except a control plane that never became ready: that is a
configuration error, and the cluster's build fails with its log. While the control plane is
down, agents keep serving the view they hold and reconnect with their own backoff; when it is
back they resync (only differences move).

In mode `ambient`, a node proxy per node too (`nodeproxy.process`, ztunnel's role), in the
node's network namespace, supervised the same way. It is spawned with the agents, so its
imports overlap theirs, but gated: it reads its config only once its node's agent has answered
its first view (the agent writes the node's SVIDs; a pod whose SVID is not there yet is retried
by the proxy every 0.1 s). It reports `ready` and `pods` lines naming the pods it serves; the
data path is ready (`data_path_ready`) when every node proxy serves every ambient pod of its
node, and only then does the supervisor start the workloads: the capture is in place from the
build on, so a workload started earlier would have its first connections refused.

Policies follow the agents (ztunnel's policies follow its xDS stream): when a node's agent reports
a newly ACKed version it has already written that view's policies for its node proxy
(`nodeagent`), and the supervisor sends the proxy SIGHUP; the proxy re-reads them, closes the
live connections they no longer allow, and reports the `policy_version` it enforces. Whether a
reload is due is decided by `policy_reload_due` (pure): the agent ACKed a version the proxy does
not enforce and that was not signalled yet. Only a proxy that has reported `ready` since its
last start is signalled (before it installs its handler, SIGHUP would kill it); one that starts
later reads the latest file itself, and if its `ready` names an older version it is signalled
then.

Waypoints (mode ambient): one waypoint process per waypoint pod (`waypoints.plan_waypoints`),
in the pod's network namespace, supervised and gated like the node proxies: released when the
agent of the pod's node has answered (that agent obtains the waypoint's SVID), SIGHUP on that
agent's ACKs (it reads the same `policies.json`). Workloads start only once every waypoint has
reported `ready` too: a client's first request through a waypoint must find it listening.

`up` is ready when the control plane serves and every agent has answered its first view (an
ACK; a NACK or an agent that exited is reported as a failure). Each agent reports what `status`
shows as JSON lines on its stdout, read here without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodemesh.runtime import netns
from nodemesh.runtime.state import (
    AgentStatus,
    ClusterDir,
    ControlPlaneStatus,
    NodeProxyStatus,
    WaypointStatus,
)

if TYPE_CHECKING:
    from nodemesh.model.world import World
    from nodemesh.runtime.topology import ClusterPlan
    from nodemesh.runtime.waypoints import WaypointPlan

# Light on purpose: the supervisor spawns the control plane before it imports the schemas and
# the planner (`placement`, `topology`, `workloads` are imported where they are used).

__all__ = ["MeshProcesses", "RestartBackoff", "Supervised", "policy_reload_due"]

log = logging.getLogger(__name__)
PROXY_START_ATTEMPTS = 3
"""A node proxy that exits this many times without ever reporting ready fails `up`."""


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    """Delay before restarting a process that exited: `initial` doubling up to `maximum`; a run
    of at least `reset_after` seconds counts as healthy and resets the delay."""

    initial: float = 0.25
    maximum: float = 10.0
    reset_after: float = 10.0

    def delay(self, failures: int) -> float:
        """The delay after `failures` consecutive short runs (1 = the first)."""
        return min(self.initial * 2.0 ** max(failures - 1, 0), self.maximum)


def policy_reload_due(acked: str, enforced: str, signalled: str) -> bool:
    """Whether a node proxy needs SIGHUP: its agent ACKed a version (`acked`) other than the one
    whose policies it enforces (`enforced`), and it was not signalled for that version yet."""
    return bool(acked) and acked not in (enforced, signalled)


class Supervised:
    """One process the supervisor starts, reads (JSON lines on stdout) and restarts.

    `start()` may run before the event loop exists (the supervisor spawns the mesh's processes
    while it builds the network, so their start-up overlaps it); `attach()` then hooks the
    output into the loop. A *gated* process waits for a line on its stdin before it connects
    anywhere; `release()` sends it, now and to every later restart."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: os.PathLike[str] | str,
        on_line: Callable[[dict[str, object]], None],
        on_change: Callable[[], None],
        *,
        netns_path: str | None = None,
        gated: bool = False,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.on_line = on_line
        self.on_change = on_change
        self.netns_path = netns_path
        self.gated = gated
        self.released = not gated
        self.backoff = backoff or RestartBackoff()
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self.exits = 0
        self.restart_pending = False
        self.stopping = False
        self._failures = 0
        self._started_at = 0.0
        self._fd: int | None = None
        self._attached = False
        self._buffer = b""
        self._restart: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def start(self) -> None:
        """Spawn the process (and attach its output if the event loop runs)."""
        self.restart_pending = False
        read_fd, write_fd = os.pipe()
        path = self.netns_path
        try:
            with open(self.log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE if self.gated else subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=log_file,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    preexec_fn=(lambda: netns.join_netns(path)) if path else None,  # noqa: PLW1509
                    start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._started_at = time.monotonic()
        self._fd = read_fd
        self._attached = False
        os.set_blocking(read_fd, False)
        log.info("started %s (pid %d)", self.name, self.process.pid)
        if self.gated and self.released:
            self._send_go()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # spawned while the cluster is built: attach() hooks it in once the loop runs
        self.attach()
        self.on_change()

    def attach(self) -> None:
        if self._fd is not None and not self._attached:
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
            self._attached = True

    def release(self) -> None:
        """Let a gated process go on (now, and at every restart)."""
        if not self.released:
            self.released = True
            self._send_go()

    def _send_go(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(b"go\n")
                self.process.stdin.close()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._close_pipe()
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                value = json.loads(line)
            except ValueError:
                log.warning("%s: not a JSON line: %r", self.name, line[:200])
                continue
            if isinstance(value, dict):
                self.on_line(value)

    def _close_pipe(self) -> None:
        if self._fd is not None:
            if self._attached:
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
            self._attached = False
            self._buffer = b""

    def reaped(self, pid: int, wait_status: int) -> bool:
        """Record an exit if `pid` is this process; schedule its restart unless stopping."""
        from nodemesh.runtime.workloads import exit_code_of

        if self.process is None or self.process.pid != pid or self.process.returncode is not None:
            return False
        self.exit_code = exit_code_of(wait_status)
        self.process.returncode = self.exit_code
        self.exits += 1
        if self._fd is not None:  # what it wrote before exiting
            with contextlib.suppress(OSError):
                self._readable()
            self._close_pipe()
        log.warning("%s exited with code %d", self.name, self.exit_code)
        if not self.stopping:
            self._schedule_restart()
        self.on_change()
        return True

    def _schedule_restart(self) -> None:
        healthy = time.monotonic() - self._started_at >= self.backoff.reset_after
        self._failures = 1 if healthy else self._failures + 1
        delay = self.backoff.delay(self._failures)
        self.restart_pending = True
        self.restarts += 1
        self._restart = asyncio.get_running_loop().call_later(delay, self._restart_now)
        log.info("restarting %s in %.2f s", self.name, delay)

    def _restart_now(self) -> None:
        self._restart = None
        if not self.stopping:
            self.start()

    def signal(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGTERM, signal.SIGKILL):
            self.stopping = True
            if self._restart is not None:
                self._restart.cancel()
                self._restart = None
                self.restart_pending = False
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signum)

    def phase(self, ready: bool) -> str:
        if self.running:
            return "Running" if ready else "Starting"
        if self.restart_pending:
            return "Restarting"
        return "Stopped" if self.stopping else "Failed"


class MeshProcesses:
    """The control plane and the node agents of one cluster (see module doc).

    `changed` is set on every event (a process started or exited, the control plane serves, an
    agent reported); the supervisor waits on it."""

    def __init__(self, state: ClusterDir) -> None:
        self.state = state
        self.plan: ClusterPlan | None = None
        self.changed = asyncio.Event()
        self.controlplane = Supervised(
            "control plane",
            [
                *(sys.executable, "-m", "nodemesh.cli.main", "controlplane", "serve"),
                *("--cluster-dir", str(state.root)),
            ],
            state.controlplane_log,
            self._on_controlplane,
            self._changed,
        )
        self.agents: dict[str, Supervised] = {}
        self.ready_once = False
        self.serving = False
        self.reports: dict[str, dict[str, object]] = {}
        self.answered: set[str] = set()
        """Nodes whose agent has ACKed or NACKed a first view."""
        self.node_proxies: dict[str, Supervised] = {}
        self.proxy_expected: dict[str, tuple[str, ...]] = {}
        self.proxy_reports: dict[str, dict[str, object]] = {}
        self.proxy_ready_once: set[str] = set()
        self.proxy_ready_pid: dict[str, int] = {}
        """The pid of each node proxy that reported `ready` (it handles SIGHUP from then on)."""
        self.proxy_signalled: dict[str, str] = {}
        """The agent version each node proxy was last sent SIGHUP for."""
        self.waypoints: dict[str, Supervised] = {}
        """Waypoint processes by waypoint pod (`ns/pod`)."""
        self.waypoint_plans: dict[str, WaypointPlan] = {}
        self.waypoint_reports: dict[str, dict[str, object]] = {}
        self.waypoint_ready_once: set[str] = set()
        self.waypoint_ready_pid: dict[str, int] = {}
        self.waypoint_signalled: dict[str, str] = {}

    def _changed(self) -> None:
        if not self.controlplane.running:
            self.serving = False
        self.changed.set()

    # ---- starting ------------------------------------------------------------------------
    def start_controlplane(self) -> None:
        """Spawn the control plane (in the caller's network namespace: the sandbox's). It needs
        only the cluster's directory (manifests, options): it plans for itself."""
        self.controlplane.start()

    def start_agents(self, plan: ClusterPlan) -> None:
        """Spawn a node agent per node (the node namespaces must exist); each waits, imported
        and ready, until the control plane serves."""
        from nodemesh.runtime.placement import node_pods

        self.plan = plan
        for node in plan.nodes:
            directory = self.state.agent_dir(node.name)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.state.agent_pods(node.name).write_text(json.dumps(node_pods(plan, node.name)))
            agent = Supervised(
                f"node agent {node.name}",
                [
                    *(sys.executable, "-m", "nodemesh.runtime.nodeagent", "--wait-for-go"),
                    *(str(self.state.root), node.name, "--address", plan.controlplane_address),
                ],
                directory / "agent.log",
                functools.partial(self._on_agent, node.name),
                self._changed,
                netns_path=str(self.state.netns / node.name),
                gated=True,
            )
            if self.ready_once:
                agent.release()
            self.agents[node.name] = agent
            agent.start()

    def start_node_proxies(self, plan: ClusterPlan, world: World) -> None:
        """Mode ambient: spawn a node proxy per node, in its namespace, gated until its node's
        agent has answered (see module doc). Writes `<cluster>/nodeproxy/<node>.json`."""
        from nodemesh.runtime.nodeproxies import plan_node_proxies

        for proxy in plan_node_proxies(world, plan, self.state):
            path = self.state.node_proxy_config(proxy.node)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.state.flows.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(proxy.config, indent=2))
            process = Supervised(
                f"node proxy {proxy.node}",
                [
                    *(sys.executable, "-m", "nodemesh.nodeproxy.process", "--wait-for-go"),
                    *("--config", str(path)),
                ],
                path.with_suffix(".log"),
                functools.partial(self._on_node_proxy, proxy.node),
                self._changed,
                netns_path=str(self.state.netns / proxy.node),
                gated=True,
            )
            if proxy.node in self.answered:
                process.release()
            self.node_proxies[proxy.node] = process
            self.proxy_expected[proxy.node] = proxy.expected
            process.start()

    def start_waypoints(self, plan: ClusterPlan) -> None:
        """Mode ambient: spawn a waypoint process per waypoint pod, in the pod's namespace, gated
        until the agent of its node has answered. Writes `<cluster>/waypoint/<ns>.<pod>.json`."""
        from nodemesh.runtime.waypoints import plan_waypoints

        for wp in plan_waypoints(plan, self.state):
            path = self.state.waypoint_config(wp.pod)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.state.flows.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(wp.config, indent=2))
            process = Supervised(
                f"waypoint {wp.waypoint} ({wp.pod})",
                [
                    *(sys.executable, "-m", "nodemesh.waypoint.process", "--wait-for-go"),
                    *("--config", str(path)),
                ],
                path.with_suffix(".log"),
                functools.partial(self._on_waypoint, wp.pod),
                self._changed,
                netns_path=wp.netns,
                gated=True,
            )
            if wp.node in self.answered:
                process.release()
            self.waypoints[wp.pod] = process
            self.waypoint_plans[wp.pod] = wp
            process.start()

    def attach(self) -> None:
        """Hook the processes' output into the running event loop."""
        for process in self._processes():
            process.attach()
        self.changed.set()

    def _on_controlplane(self, line: dict[str, object]) -> None:
        if line.get("event") != "ready":
            return
        self.serving = True
        if not self.ready_once:
            self.ready_once = True
            for agent in self.agents.values():
                agent.release()
        self.changed.set()

    def _on_agent(self, node: str, line: dict[str, object]) -> None:
        if line.get("event") != "agent":
            return
        self.reports[node] = line
        if line.get("acked_version") or line.get("nack_reason"):
            self.answered.add(node)
            proxy = self.node_proxies.get(node)
            if proxy is not None:
                proxy.release()
            for pod, wp in self.waypoint_plans.items():
                if wp.node == node:
                    self.waypoints[pod].release()
        self._reload_policies(node)
        for pod, wp in self.waypoint_plans.items():
            if wp.node == node:
                self._reload_waypoint(pod)
        self.changed.set()

    def _on_node_proxy(self, node: str, line: dict[str, object]) -> None:
        event = line.get("event")
        if event in ("ready", "pods", "reloaded"):
            if event == "ready":
                self.proxy_ready_once.add(node)
                self.proxy_signalled.pop(node, None)
                pid = self.node_proxies[node].pid
                if pid is not None:
                    self.proxy_ready_pid[node] = pid
            self.proxy_reports[node] = line
            self._reload_policies(node)
        elif event == "stopped":
            self.proxy_reports.pop(node, None)
        elif event == "error":
            log.warning("node proxy %s: %s", node, line.get("error"))
        self.changed.set()

    def _on_waypoint(self, pod: str, line: dict[str, object]) -> None:
        event = line.get("event")
        if event in ("ready", "reloaded", "waiting"):
            if event == "ready":
                self.waypoint_ready_once.add(pod)
                self.waypoint_signalled.pop(pod, None)
                pid = self.waypoints[pod].pid
                if pid is not None:
                    self.waypoint_ready_pid[pod] = pid
            if event != "waiting":
                self.waypoint_reports[pod] = line
            self._reload_waypoint(pod)
        elif event == "stopped":
            self.waypoint_reports.pop(pod, None)
        elif event == "error":
            log.warning("waypoint %s: %s", pod, line.get("error"))
        self.changed.set()

    def _reload_waypoint(self, pod: str) -> None:
        """SIGHUP a waypoint whose node agent ACKed policies it does not enforce (as for node
        proxies: only after its `ready`, once per ACKed version)."""
        process = self.waypoints.get(pod)
        if process is None or process.pid is None or self.waypoint_ready_pid.get(pod) != process.pid:
            return
        node = self.waypoint_plans[pod].node
        acked = str(self.reports.get(node, {}).get("acked_version", ""))
        enforced = str(self.waypoint_reports.get(pod, {}).get("policy_version", ""))
        if policy_reload_due(acked, enforced, self.waypoint_signalled.get(pod, "")):
            log.info("waypoint %s: reloading the policies of version %s", pod, acked)
            self.waypoint_signalled[pod] = acked
            process.signal(signal.SIGHUP)

    def _reload_policies(self, node: str) -> None:
        """SIGHUP the node's proxy if its agent ACKed policies it does not enforce (module doc)."""
        proxy = self.node_proxies.get(node)
        if proxy is None or proxy.pid is None or self.proxy_ready_pid.get(node) != proxy.pid:
            return
        acked = str(self.reports.get(node, {}).get("acked_version", ""))
        enforced = str(self.proxy_reports.get(node, {}).get("policy_version", ""))
        if policy_reload_due(acked, enforced, self.proxy_signalled.get(node, "")):
            log.info("node proxy %s: reloading the policies of version %s", node, acked)
            self.proxy_signalled[node] = acked
            proxy.signal(signal.SIGHUP)

    def _processes(self) -> tuple[Supervised, ...]:
        return (
            self.controlplane,
            *self.agents.values(),
            *self.node_proxies.values(),
            *self.waypoints.values(),
        )

    def served(self, node: str) -> tuple[str, ...]:
        """The pods the node's proxy reported serving (none while it is not running)."""
        report = self.proxy_reports.get(node, {})
        pods = report.get("pods", [])
        proxy = self.node_proxies.get(node)
        if proxy is None or not proxy.running or not isinstance(pods, list):
            return ()
        return tuple(str(p) for p in pods)

    def data_path_ready(self) -> bool:
        """Every node proxy serves every ambient pod of its node, and every waypoint listens
        (true without node proxies and waypoints)."""
        proxies = all(set(self.proxy_expected[n]) <= set(self.served(n)) for n in self.node_proxies)
        return proxies and all(self._waypoint_ready(pod) for pod in self.waypoints)

    def _waypoint_ready(self, pod: str) -> bool:
        process = self.waypoints[pod]
        return process.running and self.waypoint_reports.get(pod, {}).get("event") in ("ready", "reloaded")

    # ---- the supervisor's questions ----------------------------------------------------------
    def reaped(self, pid: int, wait_status: int) -> bool:
        return any(p.reaped(pid, wait_status) for p in self._processes())

    def failure(self) -> str | None:
        """Why the cluster cannot be built: the control plane exited before it ever served, or a
        node proxy or waypoint exited three times without ever reporting ready."""
        for pod, process in self.waypoints.items():
            if pod not in self.waypoint_ready_once and process.exits >= PROXY_START_ATTEMPTS:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = self.state.waypoint_config(pod).with_suffix(".log").read_text()[-2000:].strip()
                return (
                    f"the waypoint of pod {pod} exited with code {process.exit_code} before serving:\n{tail}"
                )
        for node, proxy in self.node_proxies.items():
            if node not in self.proxy_ready_once and proxy.exits >= PROXY_START_ATTEMPTS:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = self.state.node_proxy_config(node).with_suffix(".log").read_text()[-2000:].strip()
                return f"the node proxy of {node} exited with code {proxy.exit_code} before serving:\n{tail}"
        if self.ready_once or self.controlplane.exits == 0:
            return None
        tail = ""
        with contextlib.suppress(OSError):
            tail = self.state.controlplane_log.read_text()[-2000:].strip()
        return f"the control plane exited with code {self.controlplane.exit_code} before serving:\n{tail}"

    def settled(self) -> bool:
        """The control plane serves and every agent has answered its first view (or exited)."""
        if not self.ready_once or self.plan is None:
            return False
        return all(n in self.answered or a.exits > 0 for n, a in self.agents.items())

    def statuses(self) -> tuple[ControlPlaneStatus, tuple[AgentStatus, ...]]:
        cp = self.controlplane
        control = ControlPlaneStatus(
            cp.phase(self.serving),
            self.plan.controlplane_address if self.plan is not None else "",
            self.state.admin_address,
            cp.pid,
            cp.restarts,
            cp.exit_code,
        )
        agents = []
        for node in self.plan.nodes if self.plan is not None else ():
            agent = self.agents[node.name]
            report = self.reports.get(node.name, {})
            if agent.process is None:
                agents.append(AgentStatus(node.name, "Pending"))
                continue
            agents.append(
                AgentStatus(
                    node.name,
                    agent.phase(bool(report)),
                    connected=bool(report.get("connected")) and agent.running,
                    acked_version=str(report.get("acked_version", "")),
                    resources=_int(report.get("resources")),
                    certificates=_int(report.get("certificates")),
                    nack_version=str(report.get("nack_version", "")),
                    nack_reason=str(report.get("nack_reason", "")),
                    pid=agent.pid,
                    restarts=agent.restarts,
                )
            )
        return control, tuple(agents)

    def node_proxy_statuses(self) -> tuple[NodeProxyStatus, ...]:
        out = []
        for node, proxy in self.node_proxies.items():
            report = self.proxy_reports.get(node, {})
            failed = report.get("failed", {})
            waiting = tuple(f"{k}: {v}" for k, v in failed.items()) if isinstance(failed, dict) else ()
            out.append(
                NodeProxyStatus(
                    node,
                    "Pending" if proxy.process is None else proxy.phase(bool(report)),
                    pods=self.served(node),
                    expected=self.proxy_expected.get(node, ()),
                    waiting=waiting if proxy.running else (),
                    pid=proxy.pid,
                    restarts=proxy.restarts,
                    exit_code=proxy.exit_code,
                    policy_version=str(report.get("policy_version", "")) if proxy.running else "",
                )
            )
        return tuple(out)

    def waypoint_statuses(self) -> tuple[WaypointStatus, ...]:
        out = []
        for pod, process in self.waypoints.items():
            wp = self.waypoint_plans[pod]
            report = self.waypoint_reports.get(pod, {}) if process.running else {}
            out.append(
                WaypointStatus(
                    wp.waypoint,
                    pod,
                    wp.node,
                    wp.ip,
                    "Pending" if process.process is None else process.phase(bool(report)),
                    identity=str(report.get("identity", "")),
                    pid=process.pid,
                    restarts=process.restarts,
                    exit_code=process.exit_code,
                    policy_version=str(report.get("policy_version", "")),
                )
            )
        return tuple(out)

    # ---- stopping ------------------------------------------------------------------------
    def running_pids(self) -> list[int]:
        return [p for p in (s.pid for s in self._processes()) if p is not None]

    def signal_all(self, signum: signal.Signals) -> None:
        for process in (
            *self.waypoints.values(),
            *self.node_proxies.values(),
            *self.agents.values(),
            self.controlplane,
        ):
            process.signal(signum)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
