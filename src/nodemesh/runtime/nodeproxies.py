"""What each node proxy of an ambient cluster is given: its config and the pods it must serve (pure).

In mode `ambient` the runtime runs one node proxy per node (`python -m nodemesh.nodeproxy.process`,
ztunnel's role: one shared proxy per node serving every ambient pod of the node from inside the
pods' network namespaces, istio-ambient.md §3.1 "in-pod" mode). This module computes, without
I/O, the `NodeProxyConfig` document of each node (the JSON format of docs/hbone.md, "Running a
node proxy") from the cluster's plan, and the set of pods each proxy must serve before the
workloads start:

- the world is the cluster's manifest snapshot with the plan's pod addresses and ClusterIPs
  (the node proxy resolves a captured Service VIP itself, so it must know the runtime's VIPs);
- the policies are those of the view the node's agent last ACKed (`policies`:
  `agents/<node>/policies.json`, written by `nodeagent` on every ACK; the node proxy falls back
  to the snapshot's policies while the file does not exist): a policy applied or deleted after
  `up` reaches the data path, with a SIGHUP from the supervisor (`mesh`);
- SVIDs come from the node agent (`credentials.kind = agent`: `agents/<node>/certs`, and the
  trust bundle the control plane issued to the node, `controlplane/nodes/<node>/ca.crt`): the
  node proxy never talks to the CA, so node authorization stays the only gate;
- `manage_capture` is false: **the supervisor owns the in-pod capture rules** (it installs them
  for every ambient pod while it builds the network, before any workload or proxy starts, and
  they disappear with the sandbox). A node proxy that exits or restarts therefore leaves its pods
  captured: their traffic is refused until the next proxy serves them (fail closed), never sent
  around the mesh in the clear (ztunnel's restart behaviour, istio-ambient.md §3.1);
- flows go to `<cluster>/flows/<node>.jsonl`, where `nodemesh observe` reads them; metrics on
  `0.0.0.0:15020` in the node's namespace (ztunnel's port);
- `waypoint_ips`: each waypoint's pod address (`ns/gateway` -> IP), where the node proxies send
  traffic that must go through that waypoint (ztunnel's `GatewayAddress`, reference §1.6).

The dictionary mirrors `NodeProxyConfig.to_dict()`; building it here keeps the supervisor from
importing the node proxy's code (about 1.3 s of imports) on its critical path. A test checks
that `NodeProxyConfig.from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.model.world import World
    from nodemesh.runtime.state import ClusterDir
    from nodemesh.runtime.topology import ClusterPlan

__all__ = ["NodeProxyPlan", "plan_node_proxies", "proxy_config_base"]

METRICS_ADDRESS = "0.0.0.0:15020"
RETRY_SECONDS = 0.1
"""How often a node proxy retries a pod whose SVID the agent has not written yet."""


@dataclass(frozen=True, slots=True)
class NodeProxyPlan:
    """One node's proxy: its config document and the ambient pods it must serve."""

    node: str
    config: dict[str, object]
    expected: tuple[str, ...]


def proxy_config_base(plan: ClusterPlan, state: ClusterDir, node: str) -> dict[str, object]:
    """What a node proxy's and a waypoint's configs share: the cluster's world and addresses,
    the policies and SVIDs of `node`'s agent, flows, metrics and timings."""
    return {
        "manifests": [str(state.manifests)],
        "policies": str(state.agent_policies(node)),
        "credentials": {
            "kind": "agent",
            "directory": str(state.agent_dir(node) / "certs"),
            "bundle": str(state.controlplane / "nodes" / node / "ca.crt"),
        },
        "pod_ips": plan.ips(),
        "service_ips": {f"{s.namespace}/{s.name}": str(s.cluster_ip) for s in plan.services},
        "cluster_name": plan.name,
        "mode": plan.mode,
        "flows_dir": str(state.flows),
        "metrics": METRICS_ADDRESS,
        "use_uvloop": True,
        "credential_refresh_seconds": 30.0,
        "retry_seconds": RETRY_SECONDS,
    }


def plan_node_proxies(world: World, plan: ClusterPlan, state: ClusterDir) -> tuple[NodeProxyPlan, ...]:
    """A node proxy per node (even one with no ambient pod yet: it serves `/metrics`)."""
    from nodemesh.capture.cluster import plan_cluster_capture

    captured = {n.node: tuple(sorted(p.key for p in n.pods)) for n in plan_cluster_capture(world, plan)}
    waypoint_ips = {p.waypoint: str(p.ip) for p in plan.pods if p.waypoint is not None}
    out = []
    for node in plan.nodes:
        pods = [
            {"namespace": p.namespace, "name": p.name, "netns": str(state.netns / p.netns)}
            for p in plan.pods_on(node.name)
            if not p.system and not p.host_network
        ]
        config: dict[str, object] = {
            "node": node.name,
            **proxy_config_base(plan, state, node.name),
            "pods": pods,
            "manage_capture": False,
            "waypoint_ips": waypoint_ips,
        }
        out.append(NodeProxyPlan(node.name, config, captured.get(node.name, ())))
    return tuple(out)
