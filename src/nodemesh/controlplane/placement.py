"""Where pods run and which addresses they have: the control plane's scheduler.

Node authorization and every node's view depend on which node a pod runs on, so the control
plane decides it once and keeps it (stored as bindings next to the resources, like a pod's
`spec.nodeName` binding in Kubernetes): a pod that is already placed never moves while its node
exists, and keeps its address. New pods are spread like the local runtime does it
(runtime/topology `_schedule`): `spec.nodeName` when given, else the node with the fewest
replicas of the same workload, then the fewest pods, then the lowest index.

The naming and addressing follow the local runtime so that both agree: node `i` is `node-<i>`
at underlay address `172.18.0.(i+2)`, owning the i-th /24 of the pod CIDR; pod addresses start
at `.2` of their node's subnet. The runtime (`nodemesh up`) may pass its own `Scheduler` built
from its plan instead.

Pure: `SpreadScheduler.place` is a function of the world and the previous placement.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # types only: a node agent imports this module without the schemas
    from nodemesh.model.world import World

__all__ = ["NodeInfo", "Placement", "PodPlacement", "Scheduler", "SpreadScheduler"]

UNDERLAY = ipaddress.IPv4Network("172.18.0.0/24")
BINDING_NODES = "nodes"
POD_PREFIX = "pod/"
SERVICE_PREFIX = "service/"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    address: str
    pod_cidr: str


@dataclass(frozen=True, slots=True)
class PodPlacement:
    node: str
    ip: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Nodes, pods (`ns/pod` -> node and address) and Service ClusterIPs (`ns/name`)."""

    nodes: tuple[NodeInfo, ...] = ()
    pods: Mapping[str, PodPlacement] = field(default_factory=dict)
    service_ips: Mapping[str, str] = field(default_factory=dict)

    def node(self, name: str) -> NodeInfo | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_bindings(self) -> dict[str, str]:
        out = {BINDING_NODES: json.dumps([[n.name, n.address, n.pod_cidr] for n in self.nodes])}
        out.update({f"{POD_PREFIX}{k}": f"{p.node} {p.ip}" for k, p in self.pods.items()})
        out.update({f"{SERVICE_PREFIX}{k}": ip for k, ip in self.service_ips.items()})
        return out

    @classmethod
    def from_bindings(cls, bindings: Mapping[str, str]) -> Placement:
        nodes = tuple(NodeInfo(*n) for n in json.loads(bindings.get(BINDING_NODES, "[]")))
        pods = {}
        services = {}
        for key, value in bindings.items():
            if key.startswith(POD_PREFIX):
                node, ip = value.split(" ", 1)
                pods[key[len(POD_PREFIX) :]] = PodPlacement(node, ip)
            elif key.startswith(SERVICE_PREFIX):
                services[key[len(SERVICE_PREFIX) :]] = value
        return cls(nodes, pods, services)


class Scheduler(Protocol):
    """Places a world's pods onto nodes, keeping what `previous` already decided."""

    def place(self, world: World, previous: Placement) -> Placement: ...


def plan_nodes(count: int, pod_cidr: str) -> tuple[NodeInfo, ...]:
    net = ipaddress.ip_network(pod_cidr)
    bits = max(0, math.ceil(math.log2(count))) if count > 1 else 0
    prefix = max(24, net.prefixlen + bits)
    subnets = net.subnets(new_prefix=prefix)
    return tuple(
        NodeInfo(f"node-{i}", str(UNDERLAY.network_address + 2 + i), str(next(subnets))) for i in range(count)
    )


@dataclass(frozen=True, slots=True)
class SpreadScheduler:
    """The default scheduler: sticky placement, spreading new pods (see module doc)."""

    node_count: int | None = None

    def place(self, world: World, previous: Placement) -> Placement:
        count = self.node_count if self.node_count is not None else world.settings.nodes
        nodes = plan_nodes(count, world.settings.pod_cidr)
        by_name = {n.name: n for n in nodes}
        pods: dict[str, PodPlacement] = {}
        used: dict[str, set[str]] = {n.name: set() for n in nodes}
        total = dict.fromkeys(by_name, 0)
        per_workload: dict[tuple[str, str, str], int] = {}
        pending = []
        for w in world.workloads:
            old = previous.pods.get(w.key)
            wanted = w.node
            if old is not None and old.node in by_name and (wanted is None or wanted == old.node):
                pods[w.key] = old
                used[old.node].add(old.ip)
                total[old.node] += 1
                per_workload[(w.namespace, w.name, old.node)] = (
                    per_workload.get((w.namespace, w.name, old.node), 0) + 1
                )
            else:
                pending.append(w)
        for w in pending:
            if w.node is not None and w.node in by_name:
                node = by_name[w.node]
            elif w.node is not None or not nodes:
                continue  # unknown node: refused at apply (references); nothing to place on
            else:
                node = min(
                    nodes,
                    key=lambda n: (
                        per_workload.get((w.namespace, w.name, n.name), 0),
                        total[n.name],
                        nodes.index(n),
                    ),
                )
            per_workload[(w.namespace, w.name, node.name)] = (
                per_workload.get((w.namespace, w.name, node.name), 0) + 1
            )
            total[node.name] += 1
            if w.host_network:
                pods[w.key] = PodPlacement(node.name, node.address)
                continue
            subnet = ipaddress.ip_network(node.pod_cidr)
            ip = next(
                (
                    str(a)
                    for a in subnet.hosts()
                    if a != subnet.network_address + 1 and str(a) not in used[node.name]
                ),
                None,
            )
            if ip is None:
                continue  # the node's pod CIDR is full
            used[node.name].add(ip)
            pods[w.key] = PodPlacement(node.name, ip)
        return Placement(nodes, pods, self._service_ips(world, previous))

    @staticmethod
    def _service_ips(world: World, previous: Placement) -> dict[str, str]:
        net = ipaddress.ip_network(world.settings.service_cidr)
        out: dict[str, str] = {}
        taken = {str(s.cluster_ip) for s in world.services.values() if s.cluster_ip is not None}
        taken.add(str(net.network_address + 10))  # kube-dns, as kubeadm and the runtime reserve it
        for (ns, name), svc in world.services.items():
            key = f"{ns}/{name}"
            if svc.cluster_ip is not None:
                out[key] = str(svc.cluster_ip)
            elif key in previous.service_ips and previous.service_ips[key] not in taken:
                out[key] = previous.service_ips[key]
                taken.add(out[key])
        hosts = net.hosts()
        for ns, name in world.services:
            key = f"{ns}/{name}"
            if key in out:
                continue
            for addr in hosts:
                if str(addr) not in taken:
                    out[key] = str(addr)
                    taken.add(str(addr))
                    break
        return out
