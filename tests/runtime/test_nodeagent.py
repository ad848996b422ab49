"""What a local cluster's node agent reports to its supervisor (`nodeagent.snapshot`)."""

from __future__ import annotations

from pathlib import Path

from nodemesh.agent import NodeAgent
from nodemesh.controlplane.credentials import NodeCredential


def _agent(tmp_path: Path) -> NodeAgent:
    return NodeAgent("node-1", "127.0.0.1:1", NodeCredential("node-1", "", "", ""), tmp_path / "agent")


def test_a_nack_is_reported_until_a_later_push_is_acked(tmp_path: Path) -> None:
    """xDS: a NACK returns "the previous API config version"; the node serves that version, and
    the NACK stands until a later push is ACKed."""
    from nodemesh.runtime.nodeagent import snapshot

    agent = _agent(tmp_path)
    try:
        agent.last_acked_version = "4"
        agent.last_nack = ("5", "pod shop/late is not running on node-1")
        report = snapshot(agent)
        assert report["acked_version"] == "4"
        assert (report["nack_version"], report["nack_reason"]) == (
            "5",
            "pod shop/late is not running on node-1",
        )
        agent.last_acked_version = "6"
        report = snapshot(agent)
        assert (report["acked_version"], report["nack_version"], report["nack_reason"]) == ("6", "", "")
    finally:
        agent.disk.close()


def test_a_restarted_agent_reports_the_version_it_loaded_from_disk(tmp_path: Path) -> None:
    """Static stability: before any push, the agent serves (and reports) the view on its disk."""
    from nodemesh.agent.view import LocalView
    from nodemesh.runtime.nodeagent import snapshot

    agent = _agent(tmp_path)
    agent.disk.save_view(LocalView("7", {}))
    agent.disk.close()
    restarted = _agent(tmp_path)
    try:
        report = snapshot(restarted)
        assert report["acked_version"] == "7" and report["connected"] is False
    finally:
        restarted.disk.close()


def test_the_node_proxys_policies_are_the_policy_documents_of_the_acked_view(tmp_path: Path) -> None:
    """ztunnel's policies come from its xDS stream (`istio.security.Authorization`, reference
    "xds.rs"); the runtime's agent hands the data path the policy resources of the view it ACKed,
    under that view's version, and nothing else (workloads, services, bundle stay with it)."""
    from types import MappingProxyType

    from nodemesh.agent.view import LocalView
    from nodemesh.controlplane.views import ViewResource
    from nodemesh.nodeproxy.process import read_policies
    from nodemesh.runtime.nodeagent import policy_snapshot, write_policies

    deny = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "orders-deny-frontend", "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["a/b"]}}]}]},
    }
    policy = ViewResource.make("policy", "AuthorizationPolicy/shop/orders-deny-frontend", deny)
    settings = ViewResource.make("cluster", "settings", {"mode": "ambient"})
    view = LocalView("12", MappingProxyType({policy.key: policy, settings.key: settings}))
    assert policy_snapshot(view) == {"version": "12", "documents": [deny]}

    path = tmp_path / "policies.json"
    assert read_policies(path) is None  # no ACKed view yet: the manifests' policies apply
    write_policies(path, view)
    snapshot = read_policies(path)
    assert snapshot is not None and snapshot.version == "12"
    assert [d.body["metadata"] for d in snapshot.documents] == [deny["metadata"]]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically (rename)
