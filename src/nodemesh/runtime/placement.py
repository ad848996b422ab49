"""The control plane's scheduler in a local cluster: the runtime's plan decides where pods run.

`nodemesh up` builds namespaces, veths and routes for the pods of its plan (`topology`), and the
control plane computes each node's view and authorizes certificate requests from a `Placement`.
Both must agree on every pod's node and address, or a node agent would be told about pods that
are not on its node, and the CA would sign for the wrong node. So the cluster's control plane
runs with `PlanScheduler(plan)` (`ControlPlaneSettings(scheduler=...)`): the plan's nodes, the
plan's pod bindings and the plan's ClusterIPs, taken as given.

Pods and Services the control plane learns about after `up` (`nodemesh apply`) are not in the
plan. They get a placement by the runtime's own rule (`spec.nodeName`, else the node with the
fewest replicas of the same workload, then the fewest pods, then the lowest index), an address
no planned pod holds (the DNS pod's included, which the control plane does not know about) and a
free ClusterIP; like Kubernetes bindings they never move afterwards. The runtime does not start
pods after `up`: a node agent refuses (NACKs) a view placing such a pod on its node
(`viewcheck.runtime_pods_check`).

Pure: a function of the plan, the world and the previous placement.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from nodemesh.controlplane.placement import NodeInfo, Placement, PodPlacement
from nodemesh.model.world import Workload, World
from nodemesh.runtime.topology import ClusterPlan

__all__ = ["PlanScheduler", "node_pods"]


def node_pods(plan: ClusterPlan, node: str) -> dict[str, str]:
    """`ns/pod` -> address of the workload pods the runtime runs on `node` (what its agent
    may be told about)."""
    return {p.key: str(p.ip) for p in plan.pods if p.node == node and not p.system}


@dataclass(frozen=True, slots=True)
class PlanScheduler:
    """A `nodemesh.controlplane.Scheduler` that follows a runtime plan (see module doc)."""

    plan: ClusterPlan

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(NodeInfo(n.name, str(n.ip), str(n.pod_cidr)) for n in self.plan.nodes)

    def place(self, world: World, previous: Placement) -> Placement:
        nodes = self.nodes()
        names = [n.name for n in nodes]
        planned = {p.key: PodPlacement(p.node, str(p.ip)) for p in self.plan.pods if not p.system}
        # Every address the runtime gave out stays reserved, even for a pod since deleted from
        # the store: the runtime still runs it until `down`.
        taken = {str(p.ip) for p in self.plan.pods if not p.host_network}
        pods: dict[str, PodPlacement] = {}
        pending = []
        for w in world.workloads:
            at = planned.get(w.key)
            old = previous.pods.get(w.key)
            sticky = old is not None and old.node in names and w.node in (None, old.node)
            if at is None and old is not None and sticky and (old.ip not in taken or w.host_network):
                at = old
            if at is None:
                pending.append(w)
                continue
            pods[w.key] = at
            taken.add(at.ip)
        for w in pending:
            if w.node is not None and w.node not in names:
                continue  # an unknown node: refused at apply (controlplane.references)
            node = (
                next(n for n in nodes if n.name == w.node) if w.node else self._spread(nodes, w, pods, world)
            )
            if w.host_network:
                pods[w.key] = PodPlacement(node.name, node.address)
                continue
            subnet = ipaddress.ip_network(node.pod_cidr)
            gateway = subnet.network_address + 1
            ip = next((str(a) for a in subnet.hosts() if a != gateway and str(a) not in taken), None)
            if ip is None:
                continue  # the node's pod CIDR is full
            taken.add(ip)
            pods[w.key] = PodPlacement(node.name, ip)
        return Placement(nodes, pods, self._service_ips(world, previous))

    @staticmethod
    def _spread(
        nodes: tuple[NodeInfo, ...], w: Workload, pods: Mapping[str, PodPlacement], world: World
    ) -> NodeInfo:
        """The runtime's rule (topology `_schedule`): fewest replicas of the same workload, then
        fewest pods, then the lowest index."""
        siblings = {o.key for o in world.workloads if (o.namespace, o.name) == (w.namespace, w.name)}
        own = dict.fromkeys((n.name for n in nodes), 0)
        total = dict.fromkeys((n.name for n in nodes), 0)
        for key, at in pods.items():
            total[at.node] = total.get(at.node, 0) + 1
            if key in siblings:
                own[at.node] = own.get(at.node, 0) + 1
        return min(nodes, key=lambda n: (own[n.name], total[n.name], nodes.index(n)))

    def _service_ips(self, world: World, previous: Placement) -> dict[str, str]:
        planned = {s.key: str(s.cluster_ip) for s in self.plan.services}
        taken = set(planned.values())
        taken |= {str(s.cluster_ip) for s in world.services.values() if s.cluster_ip is not None}
        out: dict[str, str] = {}
        for (ns, name), svc in world.services.items():
            key = f"{ns}/{name}"
            if svc.cluster_ip is not None:
                out[key] = str(svc.cluster_ip)
            elif key in planned:
                out[key] = planned[key]
            elif key in previous.service_ips and previous.service_ips[key] not in taken:
                out[key] = previous.service_ips[key]
                taken.add(out[key])
        hosts = ipaddress.ip_network(str(self.plan.service_cidr)).hosts()
        for ns, name in world.services:
            key = f"{ns}/{name}"
            if key not in out:
                ip = next((str(a) for a in hosts if str(a) not in taken), None)
                if ip is not None:
                    out[key] = ip
                    taken.add(ip)
        return out
