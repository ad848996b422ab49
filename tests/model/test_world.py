"""The world: deployments expanded to pods, implicit namespaces, mesh membership, waypoints."""

from __future__ import annotations

from pathlib import Path

from nodemesh.model.loader import load_text
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def _world(text: str) -> World:
    return World.build(parse_documents(load_text(text, "w.yaml")))


def test_shop_example_loads_with_its_workloads_services_and_waypoint() -> None:
    world = World.build(load_documents([SHOP]))
    assert sorted({w.name for w in world.workloads}) == ["frontend", "orders", "reporting"]
    assert [w.pod for w in world.find_workloads("shop", "orders")] == ["orders-0", "orders-1"]
    orders = world.services[("shop", "orders")]
    assert {w.name for w in world.endpoints_of(orders)} == {"orders"}
    wp = world.service_waypoint(orders)
    assert wp is not None and wp.key == "shop/waypoint"


def test_endpoint_carries_identity_and_cilium_labels() -> None:
    world = World.build(load_documents([SHOP]))
    ep = world.endpoint(world.find_workloads("shop", "frontend")[0])
    assert ep.principal == "cluster.local/ns/shop/sa/frontend"
    assert ep.identity_labels["k8s:app"] == "frontend"
    assert ep.identity_labels["k8s:io.kubernetes.pod.namespace"] == "shop"
    assert ep.identity_labels["k8s:io.cilium.k8s.policy.serviceaccount"] == "frontend"
    assert ep.identity_labels["k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"] == "shop"


def test_undeclared_namespace_exists_with_its_name_label() -> None:
    """Kubernetes sets `kubernetes.io/metadata.name` on every namespace (NamespaceDefaultLabelName)."""
    world = _world(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c}]}\n"
    )
    assert world.namespace_labels("x") == {"kubernetes.io/metadata.name": "x"}


def test_dataplane_mode_none_takes_a_pod_out_of_the_mesh() -> None:
    """Istio: pods labelled `istio.io/dataplane-mode: none` are not captured (ambient docs)."""
    world = _world(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {istio.io/dataplane-mode: none}}\n"
        "spec: {containers: [{name: c}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec: {containers: [{name: c}]}\n"
    )
    p, q = world.find_workloads("default", "p")[0], world.find_workloads("default", "q")[0]
    assert not world.in_mesh(p) and world.endpoint(p).principal is None
    assert world.in_mesh(q) and world.endpoint(q).principal == "cluster.local/ns/default/sa/default"


def test_pod_ip_comes_from_status() -> None:
    world = _world(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.7}\n"
    )
    assert str(world.find_workloads("default", "p")[0].ip) == "10.0.0.7"
