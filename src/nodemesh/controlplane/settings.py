"""The control plane's settings, and where its clients find it.

Two endpoints, as istiod has (reference §1.1: xDS and CA on 15012, gRPC over TLS):
- the node endpoint (`listen`, default `127.0.0.1:15012`): mutual TLS; node agents stream their
  views and request certificates there, authenticated by their node credential;
- the admin endpoint: a unix socket `admin.sock` in the state directory (mode 0600 in a 0700
  directory: file permissions are the authorization, like docker.sock); `apply`, `get`,
  `delete` and `status` use it.

Clients find the admin endpoint from `--controlplane` / `$NODEMESH_CONTROLPLANE`, else from the
state directory (`--state-dir` / `$NODEMESH_STATE_DIR`, default `/var/lib/nodemesh/controlplane`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.controlplane.placement import Scheduler

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_STATE_DIR",
    "ENV_ADDRESS",
    "ENV_STATE_DIR",
    "SERVER_NAME",
    "ControlPlaneSettings",
    "default_admin_address",
    "default_state_dir",
]

DEFAULT_STATE_DIR = "/var/lib/nodemesh/controlplane"
DEFAULT_LISTEN = "127.0.0.1:15012"
ENV_STATE_DIR = "NODEMESH_STATE_DIR"
ENV_ADDRESS = "NODEMESH_CONTROLPLANE"
SERVER_NAME = "istiod.istio-system.svc"
"""The name agents verify in the control plane's certificate (istiod's, as ztunnel dials it)."""


def default_state_dir() -> Path:
    return Path(os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)


def default_admin_address(state_dir: Path | None = None) -> str:
    explicit = os.environ.get(ENV_ADDRESS)
    if explicit and state_dir is None:
        return explicit
    return f"unix:{(state_dir or default_state_dir()) / 'admin.sock'}"


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    """Everything `ControlPlane.start` needs; only `state_dir` is required."""

    state_dir: Path
    """Holds the store (store.db), the CA (ca/), node credentials (nodes/<node>/), admin.sock."""
    listen: str = DEFAULT_LISTEN
    """The node endpoint: `host:port` (port 0 picks one) or `unix:/path`."""
    nodes: tuple[str, ...] | None = None
    """Nodes to issue credentials for at start; default: the placement's nodes (`node-<i>`)."""
    node_count: int | None = None
    """Number of nodes to schedule on; default: the Cluster resource's `spec.nodes`."""
    ca_cert: Path | None = None
    """A user-supplied root CA certificate (PEM), with `ca_key`; default: generate one."""
    ca_key: Path | None = None
    cert_lifetime: timedelta = timedelta(hours=24)
    """Default lifetime of workload certificates (24 h, Istio's `DEFAULT_WORKLOAD_CERT_TTL`)."""
    scheduler: Scheduler | None = None
    """Where pods run; default `SpreadScheduler` (the local runtime's rule)."""
    rotation_ack_timeout: float = 10.0
    """Seconds a CA rotation waits for connected nodes to ACK the new bundle before switching."""

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "admin.sock"

    @property
    def admin_address(self) -> str:
        return f"unix:{self.admin_socket}"

    @property
    def store_path(self) -> Path:
        return self.state_dir / "store.db"

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    def node_dir(self, node: str) -> Path:
        return self.state_dir / "nodes" / node
