"""Which pods of a local cluster are captured, and installing that for a whole node.

Upstream: istio-ambient.md §3.1 step 1 ("The istio-cni node agent detects an ambient pod
(`istio.io/dataplane-mode=ambient` on the namespace or pod)") and §3.4 (the node-side probe SNAT
for the ambient pods' IPs).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nodemesh.capture.cluster import NodeCapture, PodCapture, apply_cluster_capture, plan_cluster_capture
from nodemesh.capture.install import capture_state, list_ruleset, remove_capture, remove_probe_snat
from nodemesh.capture.rules import PROBE_TABLE, TABLE
from nodemesh.model.loader import load_text
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World
from nodemesh.runtime.topology import plan_cluster
from tests.capture.conftest import Topology

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def _world(text: str) -> World:
    return World.build(parse_documents(load_text(text, "t.yaml")))


def test_shop_ambient_pods_are_captured_and_the_cluster_dns_is_not() -> None:
    """The shop namespace is labelled `istio.io/dataplane-mode: ambient`: every shop pod is
    captured, grouped by the node it runs on; the system DNS pod never is."""
    world = World.build(load_documents([SHOP]))
    plan = plan_cluster(world)
    nodes = plan_cluster_capture(world, plan)
    captured = {p.key for n in nodes for p in n.pods}
    assert captured == {p.key for p in plan.pods if p.namespace == "shop"}
    assert "kube-system/coredns" not in captured
    for node in nodes:
        assert all(plan.pod(p.key).node == node.node for p in node.pods)  # type: ignore[union-attr]
        assert all(p.netns == f"pod.shop.{p.key.split('/')[1]}" for p in node.pods)


def test_opted_out_pods_namespaces_and_host_network_are_not_captured() -> None:
    """Istio: a pod or namespace labelled `istio.io/dataplane-mode: none` is out of the mesh, and
    a host-network pod has no namespace of its own to capture in."""
    world = _world(
        """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec: {nodes: 1, mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata: {name: out, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {name: in, namespace: app}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, namespace: app, labels: {istio.io/dataplane-mode: none}}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: skipped, namespace: out}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: app}
spec: {hostNetwork: true, containers: [{name: c, command: [sleep, "1"]}]}
"""
    )
    nodes = plan_cluster_capture(world, plan_cluster(world))
    assert [p.key for n in nodes for p in n.pods] == ["app/in"]


def test_mode_none_captures_nothing() -> None:
    """With the mesh off (`mode: none`, what `up` runs today), no pod is in the mesh."""
    world = World.build(load_documents([SHOP]))
    plan = plan_cluster(world)
    world.mode_override = "none"
    assert plan_cluster_capture(world, plan) == ()


@pytest.mark.netns
def test_apply_installs_in_listed_pods_and_probe_snat_on_their_node(
    topology: Topology, tmp_path: Path
) -> None:
    """Per node: the in-pod capture in each ambient pod, the probe SNAT set with their IPs in
    the node's namespace; a pod not listed (B) is left alone."""
    for name, ns in (("node-0", topology.node), ("pod.app.a", topology.a), ("pod.app.b", topology.b)):
        os.symlink(ns.path, tmp_path / name)
    nodes = (
        NodeCapture("node-0", (PodCapture("app/a", "pod.app.a", ipaddress.IPv4Address(topology.a.ip)),)),
    )
    messages: list[str] = []
    try:
        assert apply_cluster_capture(nodes, str(tmp_path), report=messages.append) == 1
        assert capture_state(topology.a.path).installed
        assert capture_state(topology.b.path).absent
        node_rules = list_ruleset(topology.node.path)
        assert f"table inet {PROBE_TABLE}" in node_rules and f"elements = {{ {topology.a.ip} }}" in node_rules
        assert TABLE not in node_rules
        assert messages == ["in-pod capture in 1 ambient pods on 1 nodes"]
    finally:
        remove_capture(topology.a.path)
        remove_probe_snat(topology.node.path)
