"""A node agent in a local cluster refuses views the runtime cannot serve (`RuntimePodsCheck`)."""

from __future__ import annotations

import pytest

from nodemesh.agent.view import LocalView, ViewRejectedError
from nodemesh.controlplane.views import ViewResource
from nodemesh.runtime.viewcheck import RuntimePodsCheck

RUNNING = {"shop/orders-0": "10.244.1.2"}


def _workload(key: str, ip: str, node: str = "node-1") -> ViewResource:
    ns, _, pod = key.partition("/")
    identity = f"spiffe://cluster.local/ns/{ns}/sa/default"
    return ViewResource.make(
        "workload", key, {"namespace": ns, "pod": pod, "node": node, "ip": ip, "identity": identity}
    )


def _base() -> LocalView:
    return LocalView().apply("1", [_workload("shop/orders-0", "10.244.1.2")], ())


def test_a_view_of_the_pods_the_runtime_runs_is_accepted() -> None:
    check = RuntimePodsCheck("node-1", RUNNING)
    assert check(_base()) is None


def test_a_pod_the_runtime_does_not_run_is_refused_and_the_previous_view_kept() -> None:
    """xDS: "ACK/NACK takes place by returning the new API config version as applied or the
    previous API config version respectively": the push is refused whole, with the reason, and
    the agent keeps the view it had."""
    check = RuntimePodsCheck("node-1", RUNNING)
    base = _base()
    with pytest.raises(ViewRejectedError, match="pod shop/late is not running on node-1"):
        base.apply("2", [_workload("shop/late", "10.244.1.9")], (), [check])
    assert base.version_info == "1" and list(base.resources) == ["workload/shop/orders-0"]


def test_another_address_or_another_node_is_refused() -> None:
    check = RuntimePodsCheck("node-1", RUNNING)
    moved = LocalView().apply("2", [_workload("shop/orders-0", "10.244.1.7")], ())
    assert "has address 10.244.1.2 on node-1, not 10.244.1.7" in (check(moved) or "")
    elsewhere = LocalView().apply("2", [_workload("shop/orders-0", "10.244.1.2", node="node-0")], ())
    assert "is placed on node-0, not on node-1" in (check(elsewhere) or "")


def test_a_pod_leaving_the_view_is_accepted() -> None:
    """A pod deleted from the control plane leaves the view: the node can always stop knowing it."""
    check = RuntimePodsCheck("node-1", RUNNING)
    emptier = _base().apply("2", [], ["workload/shop/orders-0"], [check])
    assert emptier.workloads() == []
