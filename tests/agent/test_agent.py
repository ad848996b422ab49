"""The node agent against a real control plane (in-process, real gRPC over mutual TLS on
127.0.0.1): exact per-node views, ACK/NACK, node authorization, certificates, rotation."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from nodemesh.agent import Backoff, LocalView, NodeAgent
from nodemesh.ca import SpiffeId, load_pem_chain
from nodemesh.controlplane import ControlPlane, ControlPlaneSettings, NodeCredential
from nodemesh.controlplane.client import read_manifests
from tests.controlplane.conftest import SHOP

ORDERS = SpiffeId("cluster.local", "shop", "orders")
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")
REPORTING = SpiffeId("cluster.local", "shop", "reporting")

BREAK_ME = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: break-me, namespace: shop}
spec:
  podSelector: {matchLabels: {app: frontend}}
"""


def reject_break_me(candidate: LocalView) -> str | None:
    """Stands for a data path that cannot compile one policy."""
    if "policy/NetworkPolicy/shop/break-me" in candidate.resources:
        return "policy shop/break-me: cannot be compiled by this data path"
    return None


def agent_for(cp: ControlPlane, tmp: Path, node: str, **kwargs: Any) -> NodeAgent:
    cred = NodeCredential.load(cp.settings.node_dir(node), node)
    return NodeAgent(
        node,
        cp.node_address,
        cred,
        tmp / f"agent-{node}",
        backoff=Backoff(initial=0.05, maximum=0.5),
        **kwargs,
    )


def scenario(tmp_path: Path, body: Callable[[ControlPlane], Awaitable[None]]) -> None:
    async def main() -> None:
        cp = await ControlPlane.start(ControlPlaneSettings(tmp_path / "cp", listen="127.0.0.1:0"))
        try:
            await body(cp)
        finally:
            await cp.stop(grace=0.1)

    asyncio.run(main())


def test_agent_receives_exactly_its_nodes_view_and_acks(tmp_path: Path) -> None:
    """Each agent holds exactly the view the control plane computed for its node (its own pods,
    the policies selecting them, ...), ACKed: the control plane shows it in sync."""

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        agents = [agent_for(cp, tmp_path, n) for n in ("node-0", "node-1")]
        for a in agents:
            a.start()
        try:
            for a in agents:
                assert await a.wait_for_ack(rev) == str(rev)
                assert a.view.versions() == cp.views.for_node(a.node).versions()
                status = await cp.wait_for_sync(a.node)
                assert status.connected and status.acked_version == str(rev) and not status.nack_reason
            assert {w["pod"] for w in agents[0].view.workloads()} == {"frontend-0", "orders-1"}
            assert {w["pod"] for w in agents[1].view.workloads()} == {"orders-0", "reporting-0"}
            # the view persisted before the ACK is the one served
            assert agents[0].disk.load_view().versions() == agents[0].view.versions()
        finally:
            for a in agents:
                await a.stop()

    scenario(tmp_path, body)


def test_a_nacked_push_changes_nothing_and_shows_in_status(tmp_path: Path) -> None:
    """xDS NACK: the agent answers with the previous version and the error; the node keeps its
    previous view; the NACK (version and reason) is visible in the control plane's status;
    another node the change does not concern is unaffected; removing the offending policy
    brings the node back in sync."""

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        a0 = agent_for(cp, tmp_path, "node-0", checks=[reject_break_me])
        a1 = agent_for(cp, tmp_path, "node-1", checks=[reject_break_me])
        a0.start()
        a1.start()
        try:
            await a0.wait_for_ack(rev)
            await a1.wait_for_ack(rev)
            good = a0.view
            bad_rev = cp.apply_manifests([("break.yaml", BREAK_ME)]).revision
            reason = await a0.wait_for_nack()
            assert "cannot be compiled" in reason
            assert a0.view is good and a0.disk.load_view().versions() == good.versions()
            status = await cp.wait_for_nack("node-0")
            assert status.nack_version == str(bad_rev) and "break-me" in status.nack_reason
            assert status.acked_version == str(rev) and not status.synced
            assert a1.nack_count == 0 and (await cp.wait_for_sync("node-1")).synced
            from nodemesh.model.loader import SourceLocation

            cp.delete_resources([(("NetworkPolicy", "shop", "break-me"), SourceLocation("<test>", 0, {}))])
            status = await cp.wait_for_sync("node-0")
            assert status.synced and not status.nack_reason
        finally:
            await a0.stop()
            await a1.stop()

    scenario(tmp_path, body)


def test_node_may_only_get_certificates_for_its_own_pods(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Istio node_auth.go: a node may request certificates only for identities running on it;
    any other request is refused (PERMISSION_DENIED) and logged."""

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        a0 = agent_for(cp, tmp_path, "node-0")
        a0.start()
        try:
            await a0.wait_for_ack(rev)
            await a0.wait_connected()
            caplog.set_level(logging.WARNING, logger="nodemesh.controlplane.server")
            for foreign in (REPORTING, SpiffeId("cluster.local", "kube-system", "admin")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await a0.request_certificate(foreign)
                assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert err.value.details() == 'no instances of "kube-system/admin" found on node "node-0"'
            assert [(r.node, r.identity) for r in cp.refusals] == [
                ("node-0", REPORTING.uri),
                ("node-0", "spiffe://cluster.local/ns/kube-system/sa/admin"),
            ]
            assert any(
                "refused a certificate" in r.getMessage() and "reporting" in r.getMessage()
                for r in caplog.records
            )
            own = await a0.request_certificate(ORDERS)
            assert own.identity == ORDERS
        finally:
            await a0.stop()

    scenario(tmp_path, body)


def test_certificates_verify_against_the_pushed_bundle_with_san_and_lifetime(tmp_path: Path) -> None:
    """Every in-mesh identity on the node gets an X.509 SVID with exactly one URI SAN, 24 h
    lifetime, chaining to the trust bundle distributed with the view (reference §1.2)."""

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        a0 = agent_for(cp, tmp_path, "node-0")
        a0.start()
        try:
            await a0.wait_for_ack(rev)
            await a0.wait_for_certificates()
            assert set(a0.certificates) == {FRONTEND, ORDERS}
            bundle = a0.view.bundle()
            assert bundle is not None
            for identity, cert in a0.certificates.items():
                chain = load_pem_chain("".join(cert.chain_pem))
                assert bundle.verify(chain, datetime.now(UTC)) == identity
                assert cert.not_after - cert.not_before == timedelta(hours=24, minutes=2)  # 2 min skew grace
                assert cert.not_before < cert.refresh_at < cert.not_after
        finally:
            await a0.stop()

    scenario(tmp_path, body)


def test_certificates_rotate_before_expiry_with_jitter(tmp_path: Path) -> None:
    """Renewal at half the lifetime +/- Istio's 1% jitter: before the refresh time nothing is
    renewed; after it (still before expiry) the agent obtains a new certificate.

    The agent's clock starts 30 s ahead of the control plane's: X.509 times are whole seconds,
    so a clock read just before the CA signs could fall before the certificate's `notBefore`
    when a second boundary passes in between (a flake seen under CI load)."""
    now = [datetime.now(UTC) + timedelta(seconds=30)]

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        a0 = agent_for(cp, tmp_path, "node-0", clock=lambda: now[0], rng=random.Random(42))
        a0.start()
        try:
            await a0.wait_for_ack(rev)
            await a0.wait_for_certificates()
            first = dict(a0.certificates)
            for cert in first.values():
                half = cert.not_before + (cert.not_after - cert.not_before) / 2
                assert abs((cert.refresh_at - half).total_seconds()) <= 0.01 * 86400
            assert len({c.refresh_at for c in first.values()}) == 2  # jittered independently
            now[0] = min(c.refresh_at for c in first.values()) - timedelta(seconds=1)
            await a0.reconcile_certificates()
            assert a0.renewals == 0
            now[0] = max(c.refresh_at for c in first.values()) + timedelta(seconds=1)
            assert all(now[0] < c.not_after for c in first.values())  # still valid: before expiry
            await a0.reconcile_certificates()
            assert a0.renewals == 2
            for identity, cert in a0.certificates.items():
                assert cert.chain_pem[0] != first[identity].chain_pem[0]
        finally:
            await a0.stop()

    scenario(tmp_path, body)


def test_root_rotation_reaches_agents_without_reconnecting(tmp_path: Path) -> None:
    """A CA rotation pushes a bundle with the new root alongside the old (phase 1, ACKed) before
    the CA signs with the new root; the agent's stream is not re-established, its current
    certificates keep verifying, and new ones chain to the new root."""

    async def body(cp: ControlPlane) -> None:
        rev = cp.apply_manifests(read_manifests([str(SHOP)])).revision
        a0 = agent_for(cp, tmp_path, "node-0")
        a0.start()
        try:
            await a0.wait_for_ack(rev)
            await a0.wait_for_certificates()
            connects, old = a0.connects, dict(a0.certificates)
            bundle = await cp.rotate_root()
            await cp.wait_for_sync("node-0")
            held = a0.view.bundle()
            assert held is not None and held.fingerprints == bundle.fingerprints and len(held.roots) == 2
            assert a0.connects == connects and a0.connected
            for identity, cert in old.items():
                assert held.verify(load_pem_chain("".join(cert.chain_pem)), datetime.now(UTC)) == identity
            fresh = await a0.request_certificate(ORDERS)
            assert fresh.chain_pem[-1] == held.pems[0] != old[ORDERS].chain_pem[-1]
        finally:
            await a0.stop()

    scenario(tmp_path, body)


def test_a_workload_certificate_is_not_a_node_credential(tmp_path: Path) -> None:
    """Node authentication uses the node's own credential (Kubernetes' `system:node:<name>` in
    group `system:nodes`); a valid workload SVID from the same CA does not open a view stream."""

    async def body(cp: ControlPlane) -> None:
        from nodemesh.ca import build_csr, generate_key, key_pem

        assert cp.ca is not None
        key = generate_key()
        svid = cp.ca.sign_workload(build_csr(key, ORDERS), ORDERS, datetime.now(UTC))
        impostor = NodeCredential("node-0", svid.cert_pem, key_pem(key), cp.ca.bundle.to_pem())
        agent = NodeAgent("node-0", cp.node_address, impostor, tmp_path / "impostor")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent._session()
        agent.disk.close()
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED

    scenario(tmp_path, body)
