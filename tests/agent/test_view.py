"""The agent's local view (pure): a push applies whole or not at all."""

from __future__ import annotations

import pytest

from nodemesh.agent import LocalView, ViewRejectedError
from nodemesh.controlplane.views import ViewResource

PEER = ViewResource.make(
    "peer", "node-1", {"name": "node-1", "address": "172.18.0.3", "podCIDR": "10.244.1.0/24"}
)
WORKLOAD = ViewResource.make(
    "workload",
    "shop/orders-0",
    {"ip": "10.244.1.2", "identity": "spiffe://cluster.local/ns/shop/sa/orders", "inMesh": True},
)


def test_push_applies_whole_or_not_at_all() -> None:
    """xDS: a rejected config is NACKed and "the previous API config version" stays; one bad
    resource rejects the whole push, and the view it was applied to is untouched."""
    view = LocalView().apply("1", [PEER], [])
    corrupted = ViewResource("workload", "shop/x", WORKLOAD.version, b'{"ip": "10.0.0.1"}')
    with pytest.raises(ViewRejectedError, match="does not match its version"):
        view.apply("2", [WORKLOAD, corrupted], ["peer/node-1"])
    bad_ip = ViewResource.make("workload", "shop/y", {"ip": "not-an-ip", "identity": "spiffe://td/ns/a/sa/b"})
    with pytest.raises(ViewRejectedError, match="invalid workload"):
        view.apply("2", [bad_ip], [])
    with pytest.raises(ViewRejectedError, match="unknown resource type"):
        view.apply("2", [ViewResource.make("gizmo", "x", {})], [])
    assert view.version_info == "1" and set(view.resources) == {"peer/node-1"}
    after = view.apply("2", [WORKLOAD], ["peer/node-1"])
    assert set(after.resources) == {"workload/shop/orders-0"}
    assert [str(i) for i in after.identities()] == ["spiffe://cluster.local/ns/shop/sa/orders"]


def test_view_round_trips_through_its_disk_format() -> None:
    view = LocalView().apply("7", [PEER, WORKLOAD], [])
    again = LocalView.from_json(view.to_json())
    assert again.version_info == "7" and again.versions() == view.versions()
