"""A cluster's state directory: the one place on the host a running cluster writes to.

`/run/nodemesh/<name>/` holds a snapshot of the manifests the cluster was built from, the options
of `up`, the supervisor's PIDs, a `status.json` the supervisor rewrites atomically on every
change, and one log file per container. The directory is the handle every CLI verb uses to find
a cluster; the supervisor's keeper removes it when the sandbox ends, and a CLI verb that finds
a directory whose supervisor is gone removes it as stale. Nothing else of a cluster is on the
host: its namespaces, links, rules and processes live in the sandbox (see `supervisor`).

The JSON written here is plain data (`PodStatus`, `ServiceStatus`), converted at this edge.
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
    "ClusterDir",
    "ClusterStatus",
    "ContainerStatus",
    "Options",
    "PodStatus",
    "ServiceStatus",
    "list_clusters",
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

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "nodes": self.nodes, "sources": list(self.sources)})

    @classmethod
    def from_json(cls, text: str) -> Options:
        raw = json.loads(text)
        return cls(str(raw["name"]), raw.get("nodes"), tuple(raw.get("sources", ())))


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
class ClusterStatus:
    name: str
    mode: str
    phase: str  # Building, Ready, Stopping
    nodes: tuple[tuple[str, str, str], ...] = ()  # name, underlay address, pod CIDR
    pods: tuple[PodStatus, ...] = ()
    services: tuple[ServiceStatus, ...] = ()
    warnings: tuple[str, ...] = field(default=())

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
        return cls(
            raw["name"],
            raw["mode"],
            raw["phase"],
            tuple((str(n[0]), str(n[1]), str(n[2])) for n in raw.get("nodes", ())),
            pods,
            services,
            tuple(raw.get("warnings", ())),
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
