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
