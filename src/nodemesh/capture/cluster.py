"""Capture for a whole local cluster: which pods are ambient (pure), then install per node.

istio-cni's node agent captures a pod when it is in the ambient mesh (istio-ambient.md §3.1
step 1: `istio.io/dataplane-mode=ambient` on the namespace or pod); nodemesh's rule is
`World.in_mesh` (a pod or namespace labelled `istio.io/dataplane-mode: none`, and host-network
pods, stay out; every other pod is in when the cluster's mode is a mesh mode). For each node it
then installs the in-pod capture in each ambient pod and the probe SNAT for those pods in the
node's namespace (§3.4), so the runtime's readiness probes, made from the node as root, keep
reaching the apps themselves.

`runtime/supervisor.py` calls `capture_cluster` right after building the network, before any
workload starts, and only when the plan's mode is `ambient`; the runtime plans that mode only
once a node proxy serves the captured ports (`topology.SUPPORTED_MODES`), because captured
traffic with no proxy listening is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from nodemesh.capture.install import install_capture, install_probe_snat
from nodemesh.capture.rules import CaptureConfig
from nodemesh.model.world import World
from nodemesh.runtime.topology import ClusterPlan

__all__ = ["NodeCapture", "PodCapture", "apply_cluster_capture", "capture_cluster", "plan_cluster_capture"]


@dataclass(frozen=True, slots=True)
class PodCapture:
    key: str
    netns: str  # the namespace file's name under the cluster's netns directory
    ip: IPv4Address


@dataclass(frozen=True, slots=True)
class NodeCapture:
    node: str  # the node's namespace file name
    pods: tuple[PodCapture, ...]


def plan_cluster_capture(world: World, plan: ClusterPlan) -> tuple[NodeCapture, ...]:
    """The ambient pods of each node (nodes without any are left out). System pods (the
    cluster DNS) and host-network pods are never captured."""
    in_mesh = {(w.namespace, w.pod) for w in world.workloads if world.in_mesh(w)}
    out = []
    for node in plan.nodes:
        pods = tuple(
            PodCapture(p.key, p.netns, p.ip)
            for p in plan.pods_on(node.name)
            if not p.system and not p.host_network and (p.namespace, p.name) in in_mesh
        )
        if pods:
            out.append(NodeCapture(node.name, pods))
    return tuple(out)


def apply_cluster_capture(
    nodes: Sequence[NodeCapture],
    netns_dir: str,
    config: CaptureConfig | None = None,
    report: Callable[[str], None] | None = None,
) -> int:
    """Install the capture in every listed pod and the probe SNAT on its node; returns the
    number of pods captured. Raises `InstallError` on the first step a tool refuses."""
    count = 0
    for node in nodes:
        for pod in node.pods:
            install_capture(f"{netns_dir}/{pod.netns}", config)
            count += 1
        install_probe_snat(f"{netns_dir}/{node.node}", [p.ip for p in node.pods], config=config)
    if report is not None:
        report(f"in-pod capture in {count} ambient pods on {len(nodes)} nodes")
    return count


def capture_cluster(
    world: World, plan: ClusterPlan, netns_dir: str, report: Callable[[str], None] | None = None
) -> int:
    """What the supervisor calls: plan, then apply, with the default (Istio) configuration."""
    return apply_cluster_capture(plan_cluster_capture(world, plan), netns_dir, report=report)
