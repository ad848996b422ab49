"""The control plane (the istiod role): a durable store of resources validated atomically, one
view per node computed from it and pushed incrementally with ACK/NACK, and the CA.

Public API: `ControlPlane.start(ControlPlaneSettings(...))` runs it in the current event loop;
`ControlPlaneClient(address)` talks to a running one (apply, get, delete, status).

Names are imported lazily: every `nodemesh` command builds its parser from the verb modules,
and the light ones (`client`, `settings`) must not pull in the schema and the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.controlplane.client import ControlPlaneClient
    from nodemesh.controlplane.credentials import NodeCredential
    from nodemesh.controlplane.placement import NodeInfo, Placement, PodPlacement, Scheduler, SpreadScheduler
    from nodemesh.controlplane.server import ControlPlane, NodeSyncStatus, Refusal
    from nodemesh.controlplane.settings import ControlPlaneSettings
    from nodemesh.controlplane.store import Store
    from nodemesh.controlplane.views import NodeView, ViewResource, ViewSet, compute_views

__all__ = [
    "ControlPlane",
    "ControlPlaneClient",
    "ControlPlaneSettings",
    "NodeCredential",
    "NodeInfo",
    "NodeSyncStatus",
    "NodeView",
    "Placement",
    "PodPlacement",
    "Refusal",
    "Scheduler",
    "SpreadScheduler",
    "Store",
    "ViewResource",
    "ViewSet",
    "compute_views",
]

_HOME = {
    "ControlPlane": "server",
    "NodeSyncStatus": "server",
    "Refusal": "server",
    "ControlPlaneClient": "client",
    "ControlPlaneSettings": "settings",
    "NodeCredential": "credentials",
    "NodeInfo": "placement",
    "Placement": "placement",
    "PodPlacement": "placement",
    "Scheduler": "placement",
    "SpreadScheduler": "placement",
    "Store": "store",
    "NodeView": "views",
    "ViewResource": "views",
    "ViewSet": "views",
    "compute_views": "views",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"nodemesh.controlplane.{home}"), name)
