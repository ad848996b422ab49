"""The local cluster runtime: a multi-node cluster on one Linux machine, from network namespaces.

`topology` plans it (pure), `services` and `dns` decide load balancing and names (pure cores),
`sandbox`, `workloads` and `supervisor` build and run it inside a sandbox that owns its
namespaces, and `control` is what the CLI verbs call. Other code that needs the running
cluster's pods with their real addresses calls `live_world(name)`.
"""

from __future__ import annotations

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
