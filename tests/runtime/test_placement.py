"""The cluster's control plane places pods as the runtime's plan did (`PlanScheduler`)."""

from __future__ import annotations

from pathlib import Path

from nodemesh.controlplane.placement import Placement, PodPlacement, SpreadScheduler
from nodemesh.controlplane.views import ViewInputs, compute_views
from nodemesh.model.loader import load_text
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World
from nodemesh.runtime.placement import PlanScheduler, node_pods
from nodemesh.runtime.topology import ClusterPlan, plan_cluster

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")

LATE = """\
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: shop, labels: {app: late}}
spec:
  containers: [{name: c, command: [sleep, "9"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: shop, labels: {app: pinned}}
spec:
  nodeName: node-0
  containers: [{name: c, command: [sleep, "9"]}]
---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: shop}
spec:
  selector: {app: late}
  ports: [{port: 80, targetPort: 8080}]
"""


def _shop() -> tuple[World, ClusterPlan]:
    world = World.build(load_documents([SHOP]))
    return world, plan_cluster(world)


def test_every_planned_pod_and_service_keeps_the_runtime_address() -> None:
    """The runtime built each pod's namespace with the plan's address; the control plane's views
    and node authorization must name the same node and address for every pod."""
    world, plan = _shop()
    placement = PlanScheduler(plan).place(world, Placement())
    for pod in plan.pods:
        if not pod.system:
            assert placement.pods[pod.key] == PodPlacement(pod.node, str(pod.ip)), pod.key
    assert [(n.name, n.address, n.pod_cidr) for n in placement.nodes] == [
        (n.name, str(n.ip), str(n.pod_cidr)) for n in plan.nodes
    ]
    for svc in plan.services:
        if not svc.system:
            assert placement.service_ips[svc.key] == str(svc.cluster_ip)


def test_the_default_scheduler_would_disagree_because_of_the_dns_pod() -> None:
    """Why the runtime passes its own scheduler: the runtime's DNS pod takes node-0's first
    address, which the control plane's default scheduler knows nothing about."""
    world, plan = _shop()
    spread = SpreadScheduler().place(world, Placement())
    dns = next(p for p in plan.pods if p.system)
    assert any(p.ip == str(dns.ip) for p in spread.pods.values())
    planned = PlanScheduler(plan).place(world, Placement())
    assert all(p.ip != str(dns.ip) for p in planned.pods.values())


def test_views_carry_the_runtime_addresses() -> None:
    """Each node's view holds exactly the pods the runtime runs on that node, at their addresses."""
    world, plan = _shop()
    placement = PlanScheduler(plan).place(world, Placement())
    views = compute_views(ViewInputs(1, world, placement, ("ROOT",)))
    for node in plan.nodes:
        workloads = views.for_node(node.name).of_type("workload")
        assert {r.name: r.value()["ip"] for r in workloads} == node_pods(plan, node.name)


def test_pods_applied_after_up_get_free_addresses_and_never_move() -> None:
    """Kubernetes: "Pods are only scheduled once in their lifetime": once bound to a node, a pod
    is never rebound to another one. A pod the plan does not know takes an address no planned pod
    holds (the DNS pod's included), `spec.nodeName` is honoured, and the next placement keeps it."""
    world, plan = _shop()
    shop_docs = load_documents([SHOP])
    docs = [*shop_docs, *parse_documents(load_text(LATE, "late.yaml"))]
    later = World.build(docs)
    scheduler = PlanScheduler(plan)
    first = scheduler.place(later, scheduler.place(world, Placement()))
    planned_ips = {str(p.ip) for p in plan.pods}
    late, pinned = first.pods["shop/late"], first.pods["shop/pinned"]
    assert late.ip not in planned_ips and pinned.ip not in planned_ips and late.ip != pinned.ip
    assert pinned.node == "node-0"
    # the runtime's spreading: both nodes run two workload pods, so the lowest index wins
    assert [len([p for p in plan.pods_on(n) if not p.system]) for n in ("node-0", "node-1")] == [2, 2]
    assert late.node == "node-0"
    assert first.service_ips["shop/late"] not in {str(s.cluster_ip) for s in plan.services}
    again = scheduler.place(later, first)
    assert again == first


def test_a_planned_pod_deleted_then_applied_again_gets_its_address_back() -> None:
    """The runtime keeps running a pod deleted from the store until `down`: its address stays
    reserved, and the pod re-applied is placed where it runs."""
    world, plan = _shop()
    scheduler = PlanScheduler(plan)
    docs = [d for d in load_documents([SHOP]) if not (d.kind == "Deployment" and d.name == "reporting")]
    without = scheduler.place(World.build(docs), scheduler.place(world, Placement()))
    assert "shop/reporting-0" not in without.pods
    back = scheduler.place(world, without)
    reporting = plan.pod("shop/reporting-0")
    assert reporting is not None
    assert back.pods["shop/reporting-0"] == PodPlacement(reporting.node, str(reporting.ip))
