"""A cluster's state directory: the one place on the host a running cluster writes to.

`/run/nodemesh/<name>/` holds a snapshot of the manifests the cluster was built from, the options
of `up`, the supervisor's PIDs, a `status.json` the supervisor rewrites atomically on every
change, and one log file per container. The directory is the handle every CLI verb uses to find
a cluster; the supervisor's keeper removes it when the sandbox ends, and a CLI verb that finds
a directory whose supervisor is gone removes it as stale. Nothing else of a cluster is on the
host: its namespaces, links, rules and processes live in the sandbox (see `supervisor`).

The cluster's control plane keeps its own state in `controlplane/` (store, CA, node credentials,
`admin.sock`) and each node agent in `agents/<node>/` (its last good view and certificates):
both are under the cluster's directory, so they live exactly as long as the cluster.

The JSON written here is plain data (`PodStatus`, `ServiceStatus`, `ControlPlaneStatus`,
`AgentStatus`), converted at this edge.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodemesh.errors import UsageError

__all__ = [
    "DEFAULT_RUN_DIR",
    "AgentStatus",
    "ClusterDir",
    "ClusterStatus",
    "ContainerStatus",
    "ControlPlaneStatus",
    "NodeProxyStatus",
    "Options",
    "PodStatus",
    "ServiceStatus",
    "WaypointStatus",
    "list_clusters",
    "running_clusters",
    "validate_name",
]

DEFAULT_RUN_DIR = "/run/nodemesh"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
SUPERVISOR_MODULE = "nodemesh.runtime.supervisor"


def validate_name(name: str) -> str:
    if not NAME.match(name):
        raise UsageError(f"invalid cluster name {name!r}: use 1-32 lowercase letters, digits and '-'")
    return name


@dataclass(frozen=True, slots=True)
class Options:
    """What `up` was asked for, beyond the manifests themselves."""

    name: str
    nodes: int | None = None
    sources: tuple[str, ...] = ()
    ca_cert: str | None = None
    """A user-supplied root CA (`up --ca-cert/--ca-key`, absolute paths); None: generate one."""
    ca_key: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "nodes": self.nodes,
                "sources": list(self.sources),
                "caCert": self.ca_cert,
                "caKey": self.ca_key,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Options:
        raw = json.loads(text)
        return cls(
            str(raw["name"]),
            raw.get("nodes"),
            tuple(raw.get("sources", ())),
            raw.get("caCert"),
            raw.get("caKey"),
        )


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    name: str
    pid: int | None = None
    exit_code: int | None = None
    ready: bool = False


@dataclass(frozen=True, slots=True)
class PodStatus:
    namespace: str
    name: str
    node: str
    ip: str
    phase: str
    ready: bool
    system: bool = False
    containers: tuple[ContainerStatus, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[str, ...]
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ControlPlaneStatus:
    """The cluster's control plane process, as its supervisor sees it."""

    phase: str  # Starting, Running, Restarting, Failed
    address: str = ""
    """The node endpoint (on the underlay gateway), where agents connect."""
    admin: str = ""
    """The admin endpoint (`unix:.../admin.sock`), where apply/get/delete connect."""
    pid: int | None = None
    """PID inside the sandbox's PID namespace."""
    restarts: int = 0
    exit_code: int | None = None
    """Exit code of the last run that ended (None: it never ended)."""
    revision: int | None = None
    """The store revision, when `status` could ask the running control plane."""


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One node agent: its process, its stream to the control plane, the view it holds."""

    node: str
    phase: str  # Starting, Running, Restarting, Failed
    connected: bool = False
    acked_version: str = ""
    """Version (store revision) of the last push this agent ACKed: the view it serves."""
    resources: int = 0
    certificates: int = 0
    nack_version: str = ""
    nack_reason: str = ""
    """The last NACK, while it is current (no later push was ACKed)."""
    pid: int | None = None
    restarts: int = 0
    synced: bool | None = None
    """Whether it holds the control plane's current view (None: the control plane was not asked
    or did not answer)."""


@dataclass(frozen=True, slots=True)
class NodeProxyStatus:
    """One node's proxy (mode ambient): its process and the ambient pods it serves."""

    node: str
    phase: str  # Pending, Starting, Running, Restarting, Failed, Stopped
    pods: tuple[str, ...] = ()
    """`ns/pod` keys whose listeners (15001, 15006, 15008) it serves."""
    expected: tuple[str, ...] = ()
    """The ambient pods of the node (the capture sends their traffic to it)."""
    waiting: tuple[str, ...] = ()
    """Pods it cannot serve yet, with why (`ns/pod: reason`; e.g. no SVID yet)."""
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    policy_version: str = ""
    """The view version whose policies it enforces (its agent's ACKed one once it reloaded)."""


@dataclass(frozen=True, slots=True)
class WaypointStatus:
    """One waypoint pod's proxy (mode ambient): its process and the policies it enforces."""

    waypoint: str
    """`ns/gateway` (the Gateway of class istio-waypoint)."""
    pod: str
    node: str
    ip: str
    phase: str  # Pending, Starting, Running, Restarting, Failed, Stopped
    identity: str = ""
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    policy_version: str = ""
    """The view version of its node's agent whose policies it enforces."""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    name: str
    mode: str
    phase: str  # Building, Ready, Stopping
    nodes: tuple[tuple[str, str, str], ...] = ()  # name, underlay address, pod CIDR
    pods: tuple[PodStatus, ...] = ()
    services: tuple[ServiceStatus, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    controlplane: ControlPlaneStatus | None = None
    agents: tuple[AgentStatus, ...] = ()
    node_proxies: tuple[NodeProxyStatus, ...] = ()
    waypoints: tuple[WaypointStatus, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ClusterStatus:
        raw = json.loads(text)
        pods = tuple(
            PodStatus(
                **{k: v for k, v in p.items() if k != "containers"},
                containers=tuple(ContainerStatus(**c) for c in p.get("containers", ())),
            )
            for p in raw.get("pods", ())
        )
        services = tuple(
            ServiceStatus(
                s["namespace"], s["name"], s["cluster_ip"], tuple(s["ports"]), tuple(s["endpoints"])
            )
            for s in raw.get("services", ())
        )
        cp = raw.get("controlplane")
        return cls(
            raw["name"],
            raw["mode"],
            raw["phase"],
            tuple((str(n[0]), str(n[1]), str(n[2])) for n in raw.get("nodes", ())),
            pods,
            services,
            tuple(raw.get("warnings", ())),
            ControlPlaneStatus(**cp) if isinstance(cp, dict) else None,
            tuple(AgentStatus(**a) for a in raw.get("agents", ())),
            tuple(
                NodeProxyStatus(
                    **{k: v for k, v in n.items() if k not in ("pods", "expected", "waiting")},
                    pods=tuple(n.get("pods", ())),
                    expected=tuple(n.get("expected", ())),
                    waiting=tuple(n.get("waiting", ())),
                )
                for n in raw.get("node_proxies", ())
            ),
            tuple(WaypointStatus(**w) for w in raw.get("waypoints", ())),
        )


@dataclass(frozen=True, slots=True)
class ClusterDir:
    """The paths of one cluster's state directory."""

    root: Path

    @classmethod
    def of(cls, name: str, run_dir: str = DEFAULT_RUN_DIR) -> ClusterDir:
        return cls(Path(run_dir) / validate_name(name))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def options(self) -> Path:
        return self.root / "options.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def supervisor_pid(self) -> Path:
        """Host PID of the sandbox's init (PID 1 inside its PID namespace)."""
        return self.root / "supervisor.pid"

    @property
    def keeper_pid(self) -> Path:
        return self.root / "keeper.pid"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def netns(self) -> Path:
        """Mount point of a tmpfs that exists only inside the sandbox's mount namespace."""
        return self.root / "netns"

    @property
    def pod_files(self) -> Path:
        return self.root / "pods"

    @property
    def controlplane(self) -> Path:
        """The control plane's state directory (store, CA, node credentials, admin.sock)."""
        return self.root / "controlplane"

    @property
    def admin_address(self) -> str:
        """Where `nodemesh apply/get/delete` reach this cluster's control plane."""
        return f"unix:{self.controlplane / 'admin.sock'}"

    @property
    def controlplane_log(self) -> Path:
        return self.root / "controlplane.log"

    def agent_dir(self, node: str) -> Path:
        """A node agent's state: its last good view (view.db), certificates, log."""
        return self.root / "agents" / node

    def agent_pods(self, node: str) -> Path:
        """The pods the runtime runs on `node` (`ns/pod` -> address), for its agent's check."""
        return self.agent_dir(node) / "pods.json"

    def agent_policies(self, node: str) -> Path:
        """The policy documents of the view `node`'s agent last ACKed (`nodeagent`), which its
        node proxy enforces: `{"version": ..., "documents": [...]}`."""
        return self.agent_dir(node) / "policies.json"

    def node_proxy_config(self, node: str) -> Path:
        """A node proxy's config (`nodeproxy.process.NodeProxyConfig`); its log is next to it."""
        return self.root / "nodeproxy" / f"{node}.json"

    def waypoint_config(self, pod_key: str) -> Path:
        """A waypoint process's config (`waypoint.process.WaypointConfig`); its log is next to it."""
        ns, _, pod = pod_key.partition("/")
        return self.root / "waypoint" / f"{ns}.{pod}.json"

    @property
    def flows(self) -> Path:
        """Where the node proxies export flow records (`<node>.jsonl`), read by `nodemesh observe`."""
        return self.root / "flows"

    def log_file(self, pod_key: str, container: str) -> Path:
        ns, _, pod = pod_key.partition("/")
        return self.logs / f"{ns}_{pod}_{container}.log"

    # ---- liveness --------------------------------------------------------------------------
    def pid(self, which: Path) -> int | None:
        try:
            return int(which.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive_pid(self) -> int | None:
        """The supervisor's host PID if it is running and is this cluster's (not a reused PID)."""
        pid = self.pid(self.supervisor_pid)
        if pid is None:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if SUPERVISOR_MODULE.encode() in cmdline and str(self.root).encode() in cmdline:
            return pid
        return None

    def read_status(self) -> ClusterStatus | None:
        try:
            return ClusterStatus.from_json(self.status.read_text())
        except (OSError, ValueError, KeyError):
            return None

    def write_status(self, status: ClusterStatus) -> None:
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(status.to_json())
        os.replace(tmp, self.status)

    def remove(self) -> None:
        """Delete the directory, and the run directory too when this was its last cluster."""
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()


def list_clusters(run_dir: str = DEFAULT_RUN_DIR) -> list[ClusterDir]:
    base = Path(run_dir)
    if not base.is_dir():
        return []
    return [ClusterDir(p) for p in sorted(base.iterdir()) if p.is_dir() and NAME.match(p.name)]


def running_clusters(run_dir: str = DEFAULT_RUN_DIR) -> list[ClusterDir]:
    return [c for c in list_clusters(run_dir) if c.alive_pid() is not None]
