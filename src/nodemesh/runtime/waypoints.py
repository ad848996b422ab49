"""What each waypoint process of an ambient cluster is given: its config (pure).

For every waypoint pod of the plan (`PodPlan.waypoint`: the pods `nodemesh up` renders for each
Gateway of class istio-waypoint, `nodemesh.waypoint.deployment`) the runtime runs
`python -m nodemesh.waypoint.process --config <cluster>/waypoint/<ns>.<pod>.json` in the pod's
network namespace. Its config mirrors the node proxy's (`nodeproxies.py`):

- the world: the cluster's manifest snapshot with the plan's pod addresses and ClusterIPs;
- policies: those of the view the waypoint pod's NODE agent last ACKed
  (`agents/<node>/policies.json`); `targetRefs` policies go to every node (controlplane views),
  so that node's view holds every policy a waypoint enforces; the supervisor sends SIGHUP on
  every ACK, as it does to the node's proxy;
- the SVID from that node's agent (`agents/<node>/certs`): node authorization is what lets the
  agent obtain it, since the waypoint pod is placed on its node;
- flows to `<cluster>/flows/waypoint.<ns>.<gateway>.jsonl`, `/metrics` on `:15020` in the pod.

Pure, and free of the waypoint's imports (the supervisor writes these before it spawns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodemesh.runtime.nodeproxies import proxy_config_base

if TYPE_CHECKING:
    from nodemesh.runtime.state import ClusterDir
    from nodemesh.runtime.topology import ClusterPlan

__all__ = ["WaypointPlan", "plan_waypoints"]


@dataclass(frozen=True, slots=True)
class WaypointPlan:
    """One waypoint pod's process: which waypoint, where it runs, its config document."""

    waypoint: str
    pod: str
    node: str
    ip: str
    netns: str
    config: dict[str, object]


def plan_waypoints(plan: ClusterPlan, state: ClusterDir) -> tuple[WaypointPlan, ...]:
    """A waypoint process per waypoint pod (none outside mode ambient)."""
    if plan.mode != "ambient":
        return ()
    out = []
    for pod in plan.pods:
        if pod.waypoint is None:
            continue
        config: dict[str, object] = {
            "waypoint": pod.waypoint,
            "pod": pod.key,
            "node": pod.node,
            **proxy_config_base(plan, state, pod.node),
        }
        out.append(
            WaypointPlan(pod.waypoint, pod.key, pod.node, str(pod.ip), str(state.netns / pod.netns), config)
        )
    return tuple(out)
