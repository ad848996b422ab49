"""The waypoint's pod as Istio's deployment controller renders it, and how the runtime plans it."""

from __future__ import annotations

from nodemesh.agent.view import LocalView
from nodemesh.controlplane.views import ViewResource
from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.runtime.nodeproxies import plan_node_proxies
from nodemesh.runtime.state import ClusterDir
from nodemesh.runtime.topology import plan_cluster
from nodemesh.runtime.waypoints import plan_waypoints
from nodemesh.waypoint.deployment import waypoint_documents, waypoint_of
from tests.waypoint.shop import SHOP, live_shop, shop_docs


def test_rendered_like_istios_waypoint_template() -> None:
    """IS:manifests/charts/istio-control/istio-discovery/files/waypoint.yaml: a ServiceAccount
    named `.ServiceAccount` (the Gateway's name) and a Deployment named after the Gateway whose
    pods carry `istio.io/dataplane-mode: none`, `gateway.networking.k8s.io/gateway-name` and
    `gateway.istio.io/managed: istio.io-mesh-controller`, selected by the gateway-name label."""
    docs = waypoint_documents(World.build(load_documents([str(SHOP)])))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [  # type: ignore[index]
        ("ServiceAccount", "waypoint"),
        ("Deployment", "waypoint"),
    ]
    deployment = docs[1]
    template = deployment["spec"]["template"]  # type: ignore[index]
    labels = template["metadata"]["labels"]
    assert labels["istio.io/dataplane-mode"] == "none"
    assert labels["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert labels["gateway.istio.io/managed"] == "istio.io-mesh-controller"
    assert template["spec"]["serviceAccountName"] == "waypoint"
    assert deployment["spec"]["selector"] == {
        "matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    }  # type: ignore[index]


def test_waypoint_pod_is_outside_the_mesh_but_known_as_the_waypoint() -> None:
    """The waypoint pod is not redirected by istio-cni (`dataplane-mode: none`), so no node proxy
    captures it; it is still the pod of Gateway shop/waypoint, and no other pod is."""
    world = World.build(shop_docs())
    pod = next(w for w in world.workloads if w.name == "waypoint")
    assert not world.in_mesh(pod)
    assert waypoint_of(world, pod) == world.waypoints[("shop", "waypoint")]
    assert all(waypoint_of(world, w) is None for w in world.workloads if w is not pod)


def test_plan_places_the_waypoint_pod_with_no_containers_and_no_warning() -> None:
    """Without its pod the runtime warns that the node proxies refuse traffic to Services that
    use the waypoint (reference §1.6 step 1: such traffic goes to the waypoint, never around
    it); with the rendered pod the waypoint runs, so there is nothing to warn about."""
    without = plan_cluster(World.build(load_documents([str(SHOP)])))
    assert any("uses waypoint shop/waypoint, which no pod runs" in w for w in without.warnings)
    _, plan = live_shop()
    pod = next(p for p in plan.pods if p.waypoint is not None)
    assert (pod.key, pod.waypoint, pod.containers) == ("shop/waypoint-0", "shop/waypoint", ())
    assert plan.warnings == ()


def test_node_proxies_get_the_waypoint_address_and_the_waypoint_its_nodes_files(tmp_path: object) -> None:
    """ztunnel sends waypoint-bound traffic to the waypoint's address (GatewayAddress, reference
    §1.6); the waypoint's SVID and policies come from the agent of the node its pod runs on."""
    world, plan = live_shop()
    state = ClusterDir(tmp_path)  # type: ignore[arg-type]
    pod = next(p for p in plan.pods if p.waypoint is not None)
    for proxy in plan_node_proxies(world, plan, state):
        assert proxy.config["waypoint_ips"] == {"shop/waypoint": str(pod.ip)}
    (wp,) = plan_waypoints(plan, state)
    assert (wp.waypoint, wp.pod, wp.node, wp.ip) == ("shop/waypoint", pod.key, pod.node, str(pod.ip))
    assert wp.config["policies"] == str(state.agent_policies(pod.node))
    assert wp.config["credentials"]["directory"] == str(state.agent_dir(pod.node) / "certs")  # type: ignore[index]
    assert wp.netns.endswith(f"pod.shop.{pod.name}")


def test_agent_obtains_svids_for_waypoint_pods_too() -> None:
    """Node authorization: a node only obtains certificates for pods placed on it; the agent
    asks for its in-mesh pods' identities, and for its waypoint pods' (not captured, yet they
    serve HBONE with their own SVID)."""

    def workload(name: str, in_mesh: bool, labels: dict[str, str]) -> ViewResource:
        return ViewResource.make(
            "workload",
            f"shop/{name}",
            {"identity": f"spiffe://cluster.local/ns/shop/sa/{name}", "inMesh": in_mesh, "labels": labels},
        )

    resources = [
        workload("frontend", True, {"app": "frontend"}),
        workload("legacy", False, {"app": "legacy"}),
        workload("waypoint", False, {"gateway.istio.io/managed": "istio.io-mesh-controller"}),
    ]
    view = LocalView("1", {r.key: r for r in resources})
    assert sorted(i.service_account for i in view.identities()) == ["frontend", "waypoint"]
