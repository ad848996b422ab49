"""Per-node views (pure) and the push state machine (ACK/NACK, versions, nonces)."""

from __future__ import annotations

from nodemesh.controlplane.placement import Placement, SpreadScheduler
from nodemesh.controlplane.push import NodePushState, Reply
from nodemesh.controlplane.views import NodeView, ViewInputs, ViewResource, ViewSet, compute_views
from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World

EXTRA = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: reporting-only, namespace: shop}
spec:
  podSelector: {matchLabels: {app: reporting}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: selects-nothing, namespace: shop}
spec:
  podSelector: {matchLabels: {app: nobody}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""


def views_for(
    manifests: list[tuple[str, str]], revision: int = 1, previous: Placement | None = None
) -> tuple[ViewSet, Placement]:
    raws = [d for f, t in manifests for d in load_text(t, f)]
    docs = parse_documents(raws)
    world = World.build(docs)
    placement = SpreadScheduler().place(world, previous or Placement())
    bodies = {(d.kind, d.namespace, d.name): r.body for d, r in zip(docs, raws, strict=True)}
    return compute_views(ViewInputs(revision, world, placement, ("ROOT",), bodies)), placement


def test_each_node_gets_its_own_pods_and_the_policies_that_select_them(shop: list[tuple[str, str]]) -> None:
    """A node's view holds its pods, the policies that select them (a NetworkPolicy selects the
    pods of its namespace matching `podSelector`; a root-namespace Istio policy with no selector
    applies mesh-wide), every service with its endpoints, the waypoints, every peer, the bundle."""
    views, placement = views_for([*shop, ("extra.yaml", EXTRA)])
    where = {k: p.node for k, p in placement.pods.items()}
    assert where == {
        "shop/frontend-0": "node-0",
        "shop/orders-0": "node-1",
        "shop/orders-1": "node-0",
        "shop/reporting-0": "node-1",
    }
    node0, node1 = views.for_node("node-0"), views.for_node("node-1")
    assert {r.name for r in node0.of_type("workload")} == {"shop/frontend-0", "shop/orders-1"}
    assert {r.name for r in node1.of_type("workload")} == {"shop/orders-0", "shop/reporting-0"}
    policies0 = {r.name for r in node0.of_type("policy")}
    policies1 = {r.name for r in node1.of_type("policy")}
    assert "NetworkPolicy/shop/reporting-only" in policies1 - policies0
    assert "PeerAuthentication/istio-system/mesh-wide" in policies0 & policies1
    assert "CiliumNetworkPolicy/shop/orders-allow-frontend" in policies0 & policies1  # orders runs on both
    assert not any("selects-nothing" in p for p in policies0 | policies1)
    orders = node0.resources["service/shop/orders"].value()
    assert {e["pod"] for e in orders["endpoints"]} == {"shop/orders-0", "shop/orders-1"}
    assert {e["ports"]["http"] for e in orders["endpoints"]} == {8080}  # named targetPort resolved
    assert orders["endpoints"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/orders"
    assert {r.name for r in node0.of_type("peer")} == {"node-0", "node-1"}
    assert node0.resources["bundle/roots"].value() == {"roots": ["ROOT"]}


def test_an_unrelated_change_keeps_versions_so_only_the_change_is_pushed(shop: list[tuple[str, str]]) -> None:
    """Delta push: a resource's version is its content digest, so a change that concerns one node
    leaves every other resource's version, and the other node's whole view, as they were."""
    before, placement = views_for(shop, 1)
    after, _ = views_for([*shop, ("extra.yaml", EXTRA)], 2, previous=placement)
    v0_before, v0_after = before.for_node("node-0").versions(), after.for_node("node-0").versions()
    changed = {k for k in v0_after if v0_before.get(k) != v0_after[k]}
    assert changed == {"policy/PeerAuthentication/istio-system/mesh-wide"}
    v1_before, v1_after = before.for_node("node-1").versions(), after.for_node("node-1").versions()
    assert {k for k in v1_after if v1_before.get(k) != v1_after[k]} == {
        "policy/PeerAuthentication/istio-system/mesh-wide",
        "policy/NetworkPolicy/shop/reporting-only",
    }


def test_placement_is_sticky(shop: list[tuple[str, str]]) -> None:
    """A placed pod never moves and keeps its address when other workloads come and go (like a
    pod's nodeName binding)."""
    _, first = views_for(shop)
    scaled = [(f, t.replace("replicas: 1", "replicas: 3", 1)) for f, t in shop]
    _, second = views_for(scaled, previous=first)
    for key, placed in first.pods.items():
        assert second.pods[key] == placed


def view(revision: int, **bodies: object) -> NodeView:
    resources = {r.key: r for r in (ViewResource.make("policy", name, body) for name, body in bodies.items())}
    return NodeView("node-0", revision, resources)


def test_ack_updates_what_the_node_holds() -> None:
    """xDS: the client answers each response with its nonce; an ACK carries the new version."""
    state = NodePushState("node-0", {})
    state.set_view(view(1, a=1, b=2))
    push = state.next_push()
    assert push is not None and push.version_info == "1" and len(push.resources) == 2
    assert state.next_push() is None  # one push in flight at a time
    assert state.on_reply("bogus-nonce", "") is Reply.STALE
    assert state.on_reply(push.nonce, "") is Reply.ACKED
    assert state.synced and state.acked_version == "1"
    state.set_view(view(2, a=1, c=3))
    delta = state.next_push()
    assert delta is not None
    assert [r.name for r in delta.resources] == ["c"] and delta.removed == ("policy/b",)
    assert delta.nonce != push.nonce


def test_nack_changes_nothing_and_is_not_resent() -> None:
    """xDS: a NACK returns "the previous API config version"; the node keeps what it had. The
    same rejected push is not sent again; a change to the desired view is."""
    state = NodePushState("node-0", {})
    state.set_view(view(1, a=1))
    first = state.next_push()
    assert first is not None
    state.on_reply(first.nonce, "")
    held = dict(state.held)
    state.set_view(view(2, a=1, broken="x"))
    bad = state.next_push()
    assert bad is not None
    assert state.on_reply(bad.nonce, "cannot compile policy broken") is Reply.NACKED
    assert state.held == held and state.acked_version == "1"
    assert state.last_nack is not None and state.last_nack.reason == "cannot compile policy broken"
    assert state.next_push() is None
    state.set_view(view(3, a=1, broken="x", other=2))
    assert state.next_push() is not None  # a new change: a new push (with the still-broken one)


def test_resync_from_held_versions_sends_nothing() -> None:
    """Delta xDS `initial_resource_versions`: a reconnecting client says what it holds, and only
    differences are sent, so a reconnect without changes pushes nothing."""
    desired = view(5, a=1, b=2)
    state = NodePushState("node-0", desired.versions(), "5")
    state.set_view(desired)
    assert state.next_push() is None and state.synced


def test_policy_only_recompute_equals_a_full_recompute(shop: list[tuple[str, str]]) -> None:
    """When only policies change, reusing the previous topology (pods, services, peers) and
    policy selections gives exactly the views a full computation gives."""

    def inputs(extra: str, revision: int, placement: Placement | None) -> tuple[ViewInputs, Placement]:
        raws = [d for f, t in [*shop, ("extra.yaml", extra)] for d in load_text(t, f)]
        docs = parse_documents(raws)
        world = World.build(docs)
        placed = placement or SpreadScheduler().place(world, Placement())
        bodies = {(d.kind, d.namespace, d.name): r.body for d, r in zip(docs, raws, strict=True)}
        return ViewInputs(revision, world, placed, ("ROOT",), bodies), placed

    first_inputs, placement = inputs(EXTRA, 1, None)
    first = compute_views(first_inputs)
    edited_inputs, _ = inputs(EXTRA.replace("app: reporting", "app: frontend"), 2, placement)
    fresh = compute_views(edited_inputs)
    reused = compute_views(edited_inputs, first)
    for node in ("node-0", "node-1"):
        assert reused.for_node(node).versions() == fresh.for_node(node).versions()
    assert "policy/NetworkPolicy/shop/reporting-only" in fresh.for_node("node-0").resources
    assert "policy/NetworkPolicy/shop/reporting-only" not in fresh.for_node("node-1").resources
