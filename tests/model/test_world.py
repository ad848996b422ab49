"""The world: deployments expanded to pods, implicit namespaces, mesh membership, waypoints."""

from __future__ import annotations

import dataclasses
import ipaddress
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


def test_lookups_by_address_follow_reindex_after_an_in_place_change() -> None:
    """Pod and Service lookups are indexed (the node proxy asks several times per connection);
    an in-place change (the runtime giving Services their ClusterIPs) is seen after `reindex()`,
    and the old VIP is gone."""
    ips = {"shop/orders-0": "10.244.1.2", "shop/orders-1": "10.244.0.4", "shop/frontend-0": "10.244.0.3"}
    world = World.build(load_documents([SHOP]), ips=ips)
    orders0 = world.workload_by_ip(ipaddress.ip_address("10.244.1.2"))
    assert orders0 is not None and orders0.pod == "orders-0"
    assert world.workload_by_ip(ipaddress.ip_address("10.244.9.9")) is None
    orders = world.services[("shop", "orders")]
    old_vip = ipaddress.ip_address("10.96.0.2")
    world.services[("shop", "orders")] = dataclasses.replace(orders, cluster_ip=old_vip)
    world.reindex()
    assert world.service_by_ip(old_vip) is world.services[("shop", "orders")]
    new_vip = ipaddress.ip_address("10.96.0.20")
    world.services[("shop", "orders")] = dataclasses.replace(orders, cluster_ip=new_vip)
    world.reindex()
    assert world.service_by_ip(old_vip) is None
    moved = world.service_by_ip(new_vip)
    assert moved is not None and moved.cluster_ip == new_vip
    assert {w.pod for w in world.endpoints_of(moved)} == {"orders-0", "orders-1"}
    assert [s.name for s in world.services_of(orders0)] == ["orders"]
