"""Static stability: the control plane (a real process) is SIGKILLed and restarted while the
agent keeps serving its last good view and certificates from disk, then resyncs without
tearing anything down."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodemesh.agent import Backoff, NodeAgent
from nodemesh.controlplane import ControlPlaneClient, NodeCredential
from tests.controlplane.conftest import SHOP
from tests.controlplane.harness import ControlPlaneProcess

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: orders-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: orders}}
"""


def test_agent_serves_from_disk_while_the_control_plane_is_killed_and_restarted(tmp_path: Path) -> None:
    """The issue: the agent "writes its last good view and certificates to disk and keeps serving
    from them when the control plane is down or restarting (static stability); it reconnects
    with exponential backoff and jitter; on reconnect it resyncs without tearing down live
    connections"."""
    cp = ControlPlaneProcess(tmp_path / "cp", f"unix:{tmp_path / 'nodes.sock'}", (str(SHOP),)).start()

    async def main() -> None:
        cred = NodeCredential.load(tmp_path / "cp" / "nodes" / "node-0", "node-0")
        agent = NodeAgent(
            "node-0", cp.nodes_address, cred, tmp_path / "agent", backoff=Backoff(initial=0.05, maximum=0.4)
        )
        agent.start()
        try:
            await agent.wait_for_ack(1)
            await agent.wait_for_certificates()
            view, certs = agent.view, dict(agent.certificates)

            cp.kill()
            await agent.wait_for(lambda: not agent.connected)
            # still serving: same view and certificates, in memory and on disk
            assert agent.view is view and agent.certificates == certs
            restarted = NodeAgent("node-0", cp.nodes_address, cred, tmp_path / "agent")
            assert restarted.view.versions() == view.versions()
            assert restarted.certificates == certs
            restarted.disk.close()
            # reconnect attempts back off (gRPC connection backoff, with jitter)
            await agent.wait_for(lambda: len(agent.reconnect_delays) >= 3, timeout=10)

            pushes = agent.pushes_received
            await asyncio.to_thread(cp.start)
            await agent.wait_connected(since=1, timeout=20)
            # resync: the agent announced what it holds; nothing had changed, so nothing is pushed
            with ControlPlaneClient(cp.admin) as client:
                status = await asyncio.to_thread(client.status)
                row = next(n for n in status.nodes if n.node == "node-0")
                assert row.connected and row.synced and row.resources == len(view.resources)
                assert agent.pushes_received == pushes and agent.view is view
                # and changes flow again after the restart
                result = await asyncio.to_thread(client.apply, [("policy.yaml", POLICY)])
            await agent.wait_for_ack(result.revision)
            assert "policy/NetworkPolicy/shop/orders-ingress" in agent.view.resources
            assert set(view.resources) < set(agent.view.resources)
        finally:
            await agent.stop()

    try:
        asyncio.run(main())
    finally:
        cp.stop()
