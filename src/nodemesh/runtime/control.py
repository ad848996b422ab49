"""What the CLI verbs call: bring a cluster up, find it, look at it, run in it, take it down.

Everything here runs on the host, in the caller's process. `up` validates and plans first (a bad
manifest, an unknown node, a port clash, an overlapping CIDR, a reference the control plane would
refuse, an unusable `--ca-cert/--ca-key` fails before anything exists), then starts the supervisor
detached and follows its progress pipe until every pod is ready and every node agent has
answered its first view from the cluster's control plane. `status` reads the supervisor's status
file and, when the control plane serves, asks it for its revision and which nodes are in sync.
`exec_in` joins the sandbox's mount and PID namespaces (the caller is single-threaded: the CLI),
so the command it starts dies with the cluster. `down` is SIGTERM to the sandbox's init and a
wait, through a pidfd, for the keeper to finish removing the state directory.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nodemesh.errors import ManifestError, ManifestProblem, UsageError
from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.runtime import netns
from nodemesh.runtime.errors import (
    BuildError,
    ClusterExistsError,
    ClusterNotFoundError,
    MissingPrivilegeError,
)
from nodemesh.runtime.state import (
    DEFAULT_RUN_DIR,
    ClusterDir,
    ClusterStatus,
    Options,
    list_clusters,
    validate_name,
)
from nodemesh.runtime.topology import ClusterPlan, PodPlan, plan_cluster

__all__ = [
    "UpEvent",
    "check_privileges",
    "down",
    "exec_in",
    "find_cluster",
    "live_world",
    "log_files",
    "status",
    "up",
    "wait_for_status",
]

SUFFIXES = (".yaml", ".yml", ".json")
REQUIRED_TOOLS = (("ip", "iproute2"), ("nft", "nftables"))


@dataclass(frozen=True, slots=True)
class UpEvent:
    """One line of the supervisor's progress: `event` is planned, network, started, pod, ready."""

    event: str
    fields: dict[str, object]


def check_privileges() -> None:
    """Root, and the tools the sandbox drives; the message names what is missing."""
    missing = []
    if os.geteuid() != 0:
        missing.append(
            "root privileges (the cluster is built from network, mount and PID namespaces, which need "
            "CAP_SYS_ADMIN, and links, routes and nftables rules, which need CAP_NET_ADMIN): run it with sudo"
        )
    for tool, package in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            missing.append(f"the `{tool}` command (Debian package {package})")
    if missing:
        raise MissingPrivilegeError("the local runtime needs " + "; and ".join(missing))


def _expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if raw == "-":
            raise UsageError("up reads manifests from files or directories, not stdin")
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES))
        elif path.exists():
            out.append(path)
        else:
            raise ManifestError([ManifestProblem(raw, 0, "", "no such file or directory")])
    return out


def plan_from(paths: Sequence[str], *, name: str | None = None, nodes: int | None = None) -> ClusterPlan:
    """Validate and plan without building anything (also what `up --dry-run` prints).

    The documents must also pass the control plane's cross-document rules (a pod's
    ServiceAccount exists, pod names are unique, ...): the cluster's control plane applies them
    at start, and a refusal there would fail the build."""
    return _plan(paths, name=name, nodes=nodes)[0]


def _plan(
    paths: Sequence[str], *, name: str | None = None, nodes: int | None = None
) -> tuple[ClusterPlan, str]:
    """The plan, and the waypoint documents `up` adds to the manifest snapshot (mode ambient:
    a ServiceAccount and Deployment per Gateway of class istio-waypoint, as Istio's deployment
    controller renders them; "" when there are none)."""
    from nodemesh.controlplane.references import check_references, doc_key
    from nodemesh.model.loader import load_text
    from nodemesh.model.validate import parse_documents
    from nodemesh.waypoint.deployment import GENERATED_MANIFEST, waypoint_manifest

    docs = load_documents(list(paths))
    world = World.build(docs)
    generated = waypoint_manifest(world) if world.mode == "ambient" else ""
    if generated:
        docs = [*docs, *parse_documents(load_text(generated, GENERATED_MANIFEST))]
        world = World.build(docs)
    problems = check_references(docs, [doc_key(d) for d in docs])
    if problems:
        raise ManifestError(problems)
    plan = plan_cluster(world, name=name, nodes=nodes)
    validate_name(plan.name)
    return plan, generated


def _check_ca(ca_cert: str | None, ca_key: str | None) -> tuple[str, str] | None:
    """A user-supplied root CA: both files, readable, a CA whose key matches (absolute paths)."""
    if ca_cert is None and ca_key is None:
        return None
    if ca_cert is None or ca_key is None:
        raise UsageError("--ca-cert and --ca-key go together")
    from nodemesh.ca import RootCA
    from nodemesh.ca.errors import CaError

    try:
        RootCA.from_pem(Path(ca_cert).read_bytes(), Path(ca_key).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the CA: {exc}") from exc
    except CaError as exc:
        raise UsageError(f"--ca-cert/--ca-key: {exc}") from exc
    return str(Path(ca_cert).resolve()), str(Path(ca_key).resolve())


def up(
    paths: Sequence[str],
    *,
    name: str | None = None,
    nodes: int | None = None,
    run_dir: str = DEFAULT_RUN_DIR,
    timeout: float = 60.0,
    on_event: Callable[[UpEvent], None] | None = None,
    ca_cert: str | None = None,
    ca_key: str | None = None,
) -> ClusterPlan:
    """Build and start a cluster; return its plan once every pod is ready or has exited and
    every node agent has answered its first view (`ca_cert`/`ca_key`: a root CA to sign with)."""
    plan, generated = _plan(paths, name=name, nodes=nodes)
    ca = _check_ca(ca_cert, ca_key)
    check_privileges()
    state = ClusterDir.of(plan.name, run_dir)
    if state.root.exists():
        if state.alive_pid() is not None:
            raise ClusterExistsError(
                f"cluster {plan.name!r} is already running: `nodemesh down --name {plan.name}` first"
            )
        state.remove()
    state.root.mkdir(parents=True)
    try:
        state.manifests.mkdir()
        for i, source in enumerate(_expand(paths)):
            shutil.copyfile(source, state.manifests / f"{i:03d}-{source.name}")
        if generated:  # after the user's files (names sort after digits)
            from nodemesh.waypoint.deployment import GENERATED_MANIFEST

            (state.manifests / GENERATED_MANIFEST).write_text(generated)
        sources = tuple(str(Path(p).resolve()) for p in paths)
        state.options.write_text(Options(plan.name, nodes, sources, *(ca or (None, None))).to_json())
        read_fd, write_fd = os.pipe()
        with open(state.supervisor_log, "ab") as log:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nodemesh.runtime.supervisor",
                    str(state.root),
                    "--progress-fd",
                    str(write_fd),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
    except BaseException:
        state.remove()
        raise
    try:
        _follow(read_fd, time.monotonic() + timeout, on_event)
    except BaseException:
        down(plan.name, run_dir=run_dir)
        raise
    finally:
        os.close(read_fd)
    return plan


def _follow(fd: int, deadline: float, on_event: Callable[[UpEvent], None] | None) -> None:
    buffer = b""
    last: dict[str, dict[str, object]] = {}
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            waiting = [k for k, v in last.items() if not v.get("ready")]
            raise BuildError(
                "timed out waiting for the cluster"
                + (": not ready: " + ", ".join(waiting) if waiting else "")
                + " (raise --timeout, or look at `nodemesh logs`)"
            )
        chunk = os.read(fd, 65536)
        if not chunk:
            raise BuildError("the supervisor exited while building the cluster")
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            raw = json.loads(line)
            event = UpEvent(str(raw.pop("event")), raw)
            if event.event == "pod":
                last[str(raw["pod"])] = raw
            if on_event is not None:
                on_event(event)
            if event.event == "ready":
                return
            if event.event == "error":
                raise BuildError(f"building the cluster failed: {raw.get('message')}")
            if event.event == "exited":
                raise BuildError(f"the supervisor exited with code {raw.get('code')}:\n{raw.get('log', '')}")


def find_cluster(name: str | None, run_dir: str = DEFAULT_RUN_DIR) -> ClusterDir:
    """The named cluster, or the only running one."""
    if name is not None:
        state = ClusterDir.of(name, run_dir)
        if not state.root.exists():
            raise ClusterNotFoundError(f"no cluster named {name!r} (is it up? `nodemesh status` lists them)")
        return state
    running = [c for c in list_clusters(run_dir) if c.alive_pid() is not None]
    if not running:
        raise ClusterNotFoundError("no cluster is running: start one with `nodemesh up -f DIR`")
    if len(running) > 1:
        raise UsageError(
            "several clusters are running (" + ", ".join(c.name for c in running) + "): pass --name"
        )
    return running[0]


def _running(state: ClusterDir) -> int:
    pid = state.alive_pid()
    if pid is None:
        state.remove()
        raise ClusterNotFoundError(f"cluster {state.name!r} is not running (its stale state was removed)")
    return pid


def status(name: str | None, run_dir: str = DEFAULT_RUN_DIR, *, live: bool = True) -> ClusterStatus:
    """The supervisor's status file; with `live`, plus what the running control plane says (its
    revision, and per node whether the agent holds the current view)."""
    state = find_cluster(name, run_dir)
    _running(state)
    found = state.read_status()
    if found is None:
        return ClusterStatus(state.name, "none", "Building")
    if live and found.controlplane is not None and found.controlplane.phase == "Running":
        return _with_controlplane(found, found.controlplane.admin)
    return found


def _with_controlplane(found: ClusterStatus, admin: str) -> ClusterStatus:
    from nodemesh.controlplane.client import ControlPlaneClient
    from nodemesh.errors import NodemeshError

    try:
        with ControlPlaneClient(admin, timeout=3.0) as client:
            report = client.status()
    except NodemeshError:
        return found
    rows = {n.node: n for n in report.nodes}
    agents = []
    for agent in found.agents:
        row = rows.get(agent.node)
        if row is None:
            agents.append(agent)
            continue
        # The control plane knows whether a NACK still stands: it forgets it once the node ACKs
        # or holds the desired view again (the offending resource was fixed or deleted), which
        # the agent, sent nothing in that case, cannot see.
        nack = (row.nack_version, row.nack_reason)
        agents.append(
            replace(agent, synced=row.synced and agent.connected, nack_version=nack[0], nack_reason=nack[1])
        )
    assert found.controlplane is not None
    return replace(
        found, controlplane=replace(found.controlplane, revision=report.revision), agents=tuple(agents)
    )


def wait_for_status(
    name: str | None,
    predicate: Callable[[ClusterStatus], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    live: bool = False,
    run_dir: str = DEFAULT_RUN_DIR,
) -> ClusterStatus:
    """Until the cluster's status satisfies `predicate` (e.g. every agent ACKed a version): the
    status file is rewritten on every event, so this waits for the event, not for a fixed time.
    TimeoutError names the last status seen."""
    deadline = time.monotonic() + timeout
    while True:
        now = status(name, run_dir, live=live)
        if predicate(now):
            return now
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"cluster {now.name}: condition not met within {timeout} s; last status: {now}"
            )
        time.sleep(interval)


def live_world(name: str | None = None, run_dir: str = DEFAULT_RUN_DIR) -> World:
    """The running cluster's world with every pod's real address (for policy evaluation)."""
    from nodemesh.runtime.supervisor import load_plan

    state = find_cluster(name, run_dir)
    _running(state)
    return load_plan(state)[0]


def _pods(state: ClusterDir, target: str) -> tuple[ClusterPlan, list[PodPlan]]:
    from nodemesh.runtime.supervisor import load_plan

    plan = load_plan(state)[1]
    pods = plan.find_pods(target)
    if not pods:
        known = ", ".join(sorted({f"{p.namespace}/{p.workload}" for p in plan.pods}))
        raise UsageError(f"no pod or workload {target!r} in cluster {plan.name!r} (there are: {known})")
    return plan, pods


def exec_in(name: str | None, target: str, argv: Sequence[str], run_dir: str = DEFAULT_RUN_DIR) -> int:
    """Run `argv` in the pod (the first pod of a workload), with the terminal; return its exit code."""
    if not argv:
        raise UsageError(
            "give a command after --, e.g. nodemesh exec shop/frontend -- curl -s http://orders:8080/"
        )
    check_privileges()
    state = find_cluster(name, run_dir)
    pid = _running(state)
    _, pods = _pods(state, target)
    pod = pods[0]
    path = str(state.netns / pod.netns)
    files = (
        state.pod_files / pod.netns
        if not pod.host_network
        else state.pod_files / f"{pod.namespace}.{pod.name}"
    )
    binds = {str(files / "resolv.conf"): "/etc/resolv.conf", str(files / "hosts"): "/etc/hosts"}
    hostname = None if pod.host_network else pod.name
    env = dict(os.environ)
    env.update(
        {
            "NODEMESH_POD_NAME": pod.name,
            "NODEMESH_POD_NAMESPACE": pod.namespace,
            "NODEMESH_POD_IP": str(pod.ip),
            "NODEMESH_NODE_NAME": pod.node,
        }
    )
    netns.enter_sandbox(pid)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            preexec_fn=lambda: _child(path, binds, hostname),  # noqa: PLW1509 - the CLI is single-threaded
        )
        return proc.wait()
    except FileNotFoundError as exc:
        raise UsageError(f"{argv[0]}: command not found") from exc
    finally:
        signal.signal(signal.SIGINT, previous)


def _child(path: str, binds: dict[str, str], hostname: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    netns.enter_pod(path, binds, hostname)


def log_files(
    name: str | None, target: str, container: str | None = None, run_dir: str = DEFAULT_RUN_DIR
) -> tuple[ClusterDir, list[tuple[PodPlan, str, Path]]]:
    """(pod, container, log file) for every container of the target's pods."""
    state = find_cluster(name, run_dir)
    _running(state)
    _, pods = _pods(state, target)
    out = []
    for pod in pods:
        for c in pod.containers:
            if container is None or c.name == container:
                out.append((pod, c.name, state.log_file(pod.key, c.name)))
    if not out:
        raise UsageError(f"no container {container!r} in {target}")
    return state, out


def down(name: str | None, run_dir: str = DEFAULT_RUN_DIR, timeout: float = 10.0) -> str:
    """Stop the cluster and wait until its sandbox and state directory are gone."""
    state = find_cluster(name, run_dir)
    pid = state.alive_pid()
    if pid is None:
        state.remove()
        return f"cluster {state.name!r} was not running; removed its stale state"
    keeper = state.pid(state.keeper_pid)
    os.kill(pid, signal.SIGTERM)
    if not _wait_exit(keeper or pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_exit(keeper or pid, timeout)
    _wait_exit(pid, timeout)
    state.remove()
    return f"cluster {state.name!r} is down"


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (pidfd readable = exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)
