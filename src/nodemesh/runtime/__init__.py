"""The local cluster runtime: a multi-node cluster on one Linux machine, from network namespaces.

`topology` plans it (pure), `services` and `dns` decide load balancing and names (pure cores),
`sandbox`, `workloads` and `supervisor` build and run it inside a sandbox that owns its
namespaces, `mesh` runs the cluster's control plane and one node agent per node (`nodeagent`,
with the runtime's `viewcheck`; `placement` makes the control plane place pods as the plan
did), and `control` is what the CLI verbs call. Other code that needs the running cluster's pods
with their real addresses calls `live_world(name)`.

Names are imported lazily: a node agent process imports `nodemesh.runtime.nodeagent` and must
not pay for the schemas and the planner that `control` pulls in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.runtime.control import down, exec_in, find_cluster, live_world, plan_from, status, up
    from nodemesh.runtime.errors import (
        BuildError,
        ClusterExistsError,
        ClusterNotFoundError,
        MissingPrivilegeError,
        RuntimeFailureError,
    )
    from nodemesh.runtime.topology import ClusterPlan, plan_cluster

__all__ = [
    "BuildError",
    "ClusterExistsError",
    "ClusterNotFoundError",
    "ClusterPlan",
    "MissingPrivilegeError",
    "RuntimeFailureError",
    "down",
    "exec_in",
    "find_cluster",
    "live_world",
    "plan_cluster",
    "plan_from",
    "status",
    "up",
]

_HOME = {
    "BuildError": "errors",
    "ClusterExistsError": "errors",
    "ClusterNotFoundError": "errors",
    "MissingPrivilegeError": "errors",
    "RuntimeFailureError": "errors",
    "ClusterPlan": "topology",
    "plan_cluster": "topology",
    **dict.fromkeys(
        ("down", "exec_in", "find_cluster", "live_world", "plan_from", "status", "up"), "control"
    ),
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"nodemesh.runtime.{home}"), name)
