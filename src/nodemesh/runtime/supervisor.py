"""The supervisor: the process that owns a cluster's namespaces, so cleanup is true by construction.

`python -m nodemesh.runtime.supervisor STATE_DIR --progress-fd N` is started detached by `up`.
It is two processes (ztunnel's namespaced test harness, applied to a long-running cluster):

- the *keeper* (host PID namespace) unshares a PID namespace and forks the init; it forwards
  SIGTERM/SIGINT to it, and when the init ends, however it ends, reports the exit on the
  progress pipe and deletes the state directory;
- the *init* is PID 1 of that new PID namespace and unshares a private mount, network and UTS
  namespace. It builds the whole cluster inside (the underlay bridge lives in its network
  namespace, node and pod namespaces are bind mounts on a tmpfs only its mount namespace sees),
  serves the cluster DNS, starts the workloads and reaps them, and runs the cluster's control
  plane and one node agent per node (`mesh`), restarting them when they exit. In mode `ambient`
  it also installs the in-pod capture of every ambient pod (it owns those rules) and runs one
  node proxy per node; workloads start once every node proxy serves its node's pods.

Why this shape: when PID 1 of a PID namespace exits, the kernel kills every other process in
it; when the last process of the sandbox is gone, its mount namespace goes, taking the netns bind
mounts with it, and with them every node and pod namespace, veth, route and nftables table. The
host's `ip netns list`, `ip link` and `nft list ruleset` never see any of it. `down` is SIGTERM
(workloads get SIGTERM, then SIGKILL after a grace period); `kill -9` of either process is the
same teardown without the grace (the init has PR_SET_PDEATHSIG=SIGKILL on the keeper). No user
namespace: the runtime requires root, and a user namespace would add nothing to the cleanup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nodemesh.runtime import netns
from nodemesh.runtime.mesh import MeshProcesses
from nodemesh.runtime.state import ClusterDir, ClusterStatus, Options, PodStatus, ServiceStatus

if TYPE_CHECKING:
    from nodemesh.model.world import World
    from nodemesh.runtime.topology import ClusterPlan

# The schemas, the planner and the builders are imported by `_init` once it has spawned the
# control plane (~0.4 s of imports that then overlap the control plane's own start-up).

__all__ = ["Progress", "load_plan", "main"]

log = logging.getLogger(__name__)
GRACE_SECONDS = 3.0


class Progress:
    """JSON lines to `up` on the inherited pipe; silent once `up` has gone away."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def emit(self, event: str, **fields: object) -> None:
        if self._fd is None:
            return
        line = json.dumps({"event": event, **fields}) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def load_plan(state: ClusterDir) -> tuple[World, ClusterPlan]:
    """The world and plan of a cluster, recomputed from its manifest snapshot (deterministic)."""
    from nodemesh.model.validate import load_documents
    from nodemesh.model.world import World
    from nodemesh.runtime.topology import plan_cluster

    options = Options.from_json(state.options.read_text())
    docs = load_documents([str(state.manifests)])
    world = World.build(docs)
    plan = plan_cluster(world, name=options.name, nodes=options.nodes)
    world = World.build(docs, ips=plan.ips())
    world.cluster_name = plan.name
    world.mode_override = plan.mode
    return world, plan


# ---- keeper (host PID namespace) ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodemesh-supervisor")
    parser.add_argument("state_dir")
    parser.add_argument("--progress-fd", type=int, default=None)
    args = parser.parse_args(argv)
    state = ClusterDir(Path(args.state_dir))
    progress = Progress(args.progress_fd)
    keeper = os.getpid()
    netns.unshare(netns.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = _init(state, progress)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(code)
    state.keeper_pid.write_text(str(keeper))
    state.supervisor_pid.write_text(str(child))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    tail = ""
    with contextlib.suppress(OSError):
        tail = state.supervisor_log.read_text()[-4000:]
    progress.emit("exited", code=code, log=tail)
    progress.close()
    state.remove()
    return 0 if code in (0, -signal.SIGTERM) else 1


# ---- init (PID 1 of the sandbox) ------------------------------------------------------------


def _init(state: ClusterDir, progress: Progress) -> int:
    # If the keeper dies, so does the sandbox. (getppid() is 0 in a new PID namespace, so the
    # window between fork and this call cannot be checked; it is a few instructions long.)
    netns.set_parent_death_signal(signal.SIGKILL)
    netns.unshare(netns.CLONE_NEWNS | netns.CLONE_NEWNET | netns.CLONE_NEWUTS)
    netns.make_mounts_private()
    netns.mount("proc", "/proc", "proc", netns.MS_NOSUID | netns.MS_NODEV | netns.MS_NOEXEC)
    state.netns.mkdir(exist_ok=True)
    netns.mount("tmpfs", str(state.netns), "tmpfs", 0, "mode=0700,size=1m")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        # The control plane starts first, so its start-up overlaps the planning and the build;
        # it may bind the underlay gateway before the bridge has it (this network namespace
        # only, where nothing else listens).
        Path("/proc/sys/net/ipv4/ip_nonlocal_bind").write_text("1")
        mesh = MeshProcesses(state)
        mesh.start_controlplane()
        from nodemesh.runtime.sandbox import build_network, write_pod_files

        world, plan = load_plan(state)
        socket.sethostname(plan.name)
        progress.emit("planned", nodes=len(plan.nodes), pods=len(plan.pods), services=len(plan.services))
        build_network(plan, state, lambda text: progress.emit("network", message=text))
        # In-pod capture of ambient pods, before any workload starts. The supervisor owns these
        # rules (node proxies run with manage_capture=false): they outlive a proxy's restart, so
        # a pod's traffic fails closed until the next proxy serves it.
        if plan.mode == "ambient":
            from nodemesh.capture.cluster import capture_cluster

            capture_cluster(world, plan, str(state.netns), lambda t: progress.emit("network", message=t))
        pod_files = write_pod_files(plan, state)
        mesh.start_agents(plan)
        if plan.mode == "ambient":
            # One node proxy per node, gated until its agent holds the node's view and SVIDs;
            # one waypoint process per waypoint pod, gated until its node's agent answered.
            mesh.start_node_proxies(plan, world)
            mesh.start_waypoints(plan)
    except Exception as exc:
        log.exception("building the cluster failed")
        progress.emit("error", message=str(exc))
        return 1
    return asyncio.run(Supervisor(plan, state, progress, pod_files, started, mesh=mesh).run())


class Supervisor:
    """The running cluster: DNS, workloads, control plane and node agents, status file, shutdown.

    The cluster is ready (`up` returns) when every pod is ready or has exited, the control plane
    serves, and every node agent has answered its first view; in mode ambient, workloads start
    only once every node proxy serves its node's ambient pods."""

    def __init__(
        self,
        plan: ClusterPlan,
        state: ClusterDir,
        progress: Progress,
        pod_files: dict[str, dict[str, str]],
        started: float,
        *,
        mesh: MeshProcesses,
    ) -> None:
        self.plan = plan
        self.state = state
        self.progress = progress
        from nodemesh.runtime.workloads import Workloads

        self.mesh = mesh
        self.workloads = Workloads(plan, state, pod_files, mesh.changed)
        self.started = started
        self.phase = "Building"
        self.stop = asyncio.Event()
        self.dns_ready = False
        self.failed: str | None = None
        self.probes: asyncio.Task[None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        self.mesh.attach()
        dns_server = await self._start_dns()
        if self.mesh.data_path_ready():  # mode none: nothing to wait for
            self._start_workloads()
        self._write_status()
        watcher = asyncio.create_task(self._watch(), name="status-watcher")
        await self.stop.wait()
        self.phase = "Stopping"
        self._write_status()
        tasks = [t for t in (watcher, self.probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        dns_server.close()
        await self._stop_workloads()
        return 0 if self.failed is None else 1

    def _start_workloads(self) -> None:
        """Start every container and probe it. In mode ambient this waits until every node proxy
        serves its node's ambient pods: their capture is in place, so earlier traffic would be
        refused."""
        self.workloads.start_all()
        self._reap()
        self.progress.emit("started", pods=[p.key for p in self.plan.pods if not p.system])
        self.probes = asyncio.create_task(self.workloads.probe_until_ready(), name="readiness-probes")

    async def _start_dns(self) -> asyncio.Server:
        from nodemesh.runtime import dns

        pod = next(p for p in self.plan.pods if p.system)
        path = str(self.state.netns / pod.netns)

        def sockets() -> tuple[socket.socket, socket.socket]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("0.0.0.0", 53))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(("0.0.0.0", 53))
            tcp.listen(64)
            return udp, tcp

        udp, tcp = netns.in_netns(path, sockets)
        udp.setblocking(False)
        tcp.setblocking(False)
        server = await dns.serve(dns.DnsResolver.for_plan(self.plan), udp, tcp)
        self.dns_ready = True
        return server

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if not self.mesh.reaped(pid, status):
                self.workloads.reaped(pid, status)

    async def _watch(self) -> None:
        announced: dict[str, tuple[str, bool]] = {}
        mesh_announced: dict[str, tuple[object, ...]] = {}
        while True:
            await self.workloads.changed.wait()
            self.workloads.changed.clear()
            self._announce_mesh(mesh_announced)
            failure = self.mesh.failure() if self.phase == "Building" else None
            if failure is not None:
                self.failed = failure
                self.progress.emit("error", message=failure)
                self.stop.set()
                return
            if self.probes is None and self.mesh.data_path_ready():
                self._start_workloads()
            statuses = self.workloads.statuses()
            for pod in statuses:
                now = (pod.phase, pod.ready)
                if announced.get(pod.key) != now:
                    announced[pod.key] = now
                    codes = [c.exit_code for c in pod.containers if c.exit_code is not None]
                    self.progress.emit(
                        "pod",
                        pod=pod.key,
                        node=pod.node,
                        ip=pod.ip,
                        phase=pod.phase,
                        ready=pod.ready,
                        exit_codes=codes,
                    )
            if self.phase == "Building" and self.workloads.settled() and self.mesh.settled():
                self.phase = "Ready"
                self._write_status()
                self.progress.emit("ready", seconds=round(time.monotonic() - self.started, 3))
                self.progress.close()
            else:
                self._write_status()

    def _announce_mesh(self, announced: dict[str, tuple[object, ...]]) -> None:
        """Progress lines for `up`: the control plane serving, each agent's answer."""
        control, agents = self.mesh.statuses()
        now: tuple[object, ...] = (control.phase,)
        if announced.get("") != now:
            announced[""] = now
            self.progress.emit("controlplane", phase=control.phase, address=control.address)
        for agent in agents:
            now = (agent.phase, agent.connected, agent.acked_version, agent.nack_reason)
            if announced.get(agent.node) != now:
                announced[agent.node] = now
                self.progress.emit(
                    "agent",
                    node=agent.node,
                    phase=agent.phase,
                    connected=agent.connected,
                    acked_version=agent.acked_version,
                    nack_reason=agent.nack_reason,
                )
        for wp in self.mesh.waypoint_statuses():
            now = (wp.phase,)
            if announced.get(f"waypoint {wp.pod}") != now:
                announced[f"waypoint {wp.pod}"] = now
                self.progress.emit("waypoint", waypoint=wp.waypoint, pod=wp.pod, node=wp.node, phase=wp.phase)
        for proxy in self.mesh.node_proxy_statuses():
            now = (proxy.phase, proxy.pods)
            if announced.get(f"proxy {proxy.node}") != now:
                announced[f"proxy {proxy.node}"] = now
                self.progress.emit(
                    "nodeproxy",
                    node=proxy.node,
                    phase=proxy.phase,
                    pods=list(proxy.pods),
                    expected=list(proxy.expected),
                )

    def _write_status(self) -> None:
        dns_pod = next(p for p in self.plan.pods if p.system)
        system = PodStatus(
            dns_pod.namespace,
            dns_pod.name,
            dns_pod.node,
            str(dns_pod.ip),
            "Running" if self.dns_ready else "Pending",
            self.dns_ready,
            system=True,
        )
        services = tuple(
            ServiceStatus(
                s.namespace,
                s.name,
                str(s.cluster_ip),
                tuple(f"{p.name + ':' if p.name else ''}{p.port}/{p.protocol.value}" for p in s.ports),
                tuple(sorted({f"{e.ip}:{e.port}" for p in s.ports for e in p.endpoints})),
            )
            for s in self.plan.services
        )
        waypoints = self.mesh.waypoint_statuses()
        waypoint_pods = tuple(
            PodStatus(
                w.pod.partition("/")[0], w.pod.partition("/")[2], w.node, w.ip, w.phase, w.phase == "Running"
            )
            for w in waypoints
        )
        self.state.write_status(
            ClusterStatus(
                self.plan.name,
                self.plan.mode,
                self.phase,
                tuple((n.name, str(n.ip), str(n.pod_cidr)) for n in self.plan.nodes),
                (system, *self.workloads.statuses(), *waypoint_pods),
                services,
                self.plan.warnings,
                *self.mesh.statuses(),
                node_proxies=self.mesh.node_proxy_statuses(),
                waypoints=waypoints,
            )
        )

    async def _stop_workloads(self) -> None:
        """SIGTERM, then SIGKILL whatever still runs after the grace period (the mesh's
        processes too: agents keep their view on disk, the control plane its store)."""
        self.workloads.signal_all(signal.SIGTERM)
        self.mesh.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while (self.workloads.running_pids() or self.mesh.running_pids()) and time.monotonic() < deadline:
            self.workloads.changed.clear()
            try:
                await asyncio.wait_for(self.workloads.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        self.workloads.signal_all(signal.SIGKILL)
        self.mesh.signal_all(signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
