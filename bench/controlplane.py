"""Control plane: time to compile and push a change to 100 nodes; size of a per-node view.

A synthetic cluster: 100 namespaces x 10 Deployments x 10 replicas = 10,000 workloads (1,000
ServiceAccounts, 1,000 Services), 1,000 policies (10 per namespace, rotating over
NetworkPolicy, CiliumNetworkPolicy and AuthorizationPolicy, each selecting one Deployment),
scheduled on 100 nodes. 100 simulated nodes are real `NodeAgent`s in this process, each with
its own mutual-TLS gRPC stream to a real `ControlPlane` on 127.0.0.1 (certificate management
off: this measures the config push, see bench/rotation.py for the CA).

Measured:
- initial load: apply (parse + validate + references + one SQLite transaction) and compile
  (world, placement, 100 views), then the first full push until all 100 nodes ACKed;
- a namespaced change (one policy edited): compile time, then time until every node whose view
  changed has ACKed it, nodes pushed, bytes pushed;
- a mesh-wide change (a root-namespace PeerAuthentication, which applies to every pod): same;
- per-node view size: resources and bytes (mean, max), by resource type.

Run: .venv/bin/python bench/controlplane.py [--nodes 100] [--namespaces 100] [--policies 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from nodemesh.agent import Backoff, NodeAgent
from nodemesh.controlplane import ControlPlane, ControlPlaneSettings, NodeCredential
from nodemesh.controlplane.views import NodeView

DEPLOYMENTS = 10
REPLICAS = 10


def manifests(namespaces: int, policies: int) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    per_ns = max(1, policies // namespaces)
    for n in range(namespaces):
        ns = f"ns{n}"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for d in range(DEPLOYMENTS):
            app = f"app{d}"
            docs.append(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": app, "namespace": ns}}
            )
            docs.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": app, "namespace": ns},
                    "spec": {
                        "replicas": REPLICAS,
                        "selector": {"matchLabels": {"app": app}},
                        "template": {
                            "metadata": {"labels": {"app": app, "tier": f"t{d % 3}"}},
                            "spec": {
                                "serviceAccountName": app,
                                "containers": [
                                    {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
                                ],
                            },
                        },
                    },
                }
            )
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": app, "namespace": ns},
                    "spec": {
                        "selector": {"app": app},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                    },
                }
            )
        for p in range(per_ns):
            docs.append(policy(ns, p, f"app{p % DEPLOYMENTS}", f"app{(p + 1) % DEPLOYMENTS}"))
    return docs


def policy(ns: str, p: int, target: str, peer: str, port: int = 8080) -> dict[str, object]:
    kind = p % 3
    name = f"p{p}"
    if kind == 0:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": target}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": peer}}}], "ports": [{"port": port}]}
                ],
            },
        }
    if kind == 1:
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": target}},
                "ingress": [
                    {
                        "fromEndpoints": [{"matchLabels": {"app": peer}}],
                        "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
                    }
                ],
            },
        }
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": target}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/{peer}"]}}]}],
        },
    }


def to_yaml(docs: list[dict[str, object]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def sizes(views: list[NodeView]) -> str:
    lines = []
    count = [len(v.resources) for v in views]
    size = [v.size for v in views]
    lines.append(
        f"  per-node view: {statistics.mean(count):.0f} resources (max {max(count)}), "
        f"{statistics.mean(size) / 1024:.0f} KiB (max {max(size) / 1024:.0f} KiB)"
    )
    types = sorted({r.type for v in views for r in v.resources.values()})
    for t in types:
        n = [len(v.of_type(t)) for v in views]
        b = [sum(len(r.body) for r in v.of_type(t)) for v in views]
        lines.append(f"    {t:9} {statistics.mean(n):7.1f} resources  {statistics.mean(b) / 1024:8.1f} KiB")
    return "\n".join(lines)


async def change(cp: ControlPlane, agents: list[NodeAgent], label: str, text: str) -> None:
    before = {a.node: a.view.versions() for a in agents}
    acks = {a.node: a.ack_count for a in agents}
    t0 = time.perf_counter()
    outcome = cp.apply_manifests([(f"<{label}>", text)])
    t1 = time.perf_counter()
    affected = [a for a in agents if cp.views.for_node(a.node).versions() != before[a.node]]
    await asyncio.gather(*(a.wait_for_ack(outcome.revision, timeout=120) for a in affected))
    t2 = time.perf_counter()
    pushed = sum(
        len(r.body)
        for a in affected
        for k, r in a.view.resources.items()
        if before[a.node].get(k) != r.version
    )
    extra = sum(a.ack_count - acks[a.node] for a in agents) - len(affected)
    print(
        f"{label}: compile {1000 * (t1 - t0):.0f} ms, push+ACK {1000 * (t2 - t1):.0f} ms, "
        f"total {1000 * (t2 - t0):.0f} ms; {len(affected)}/{len(agents)} nodes pushed, "
        f"{pushed / 1024:.1f} KiB pushed in all" + (f" ({extra} extra pushes)" if extra else "")
    )


async def main(args: argparse.Namespace) -> None:
    docs = manifests(args.namespaces, args.policies)
    workloads = sum(1 for d in docs if d["kind"] == "Deployment") * REPLICAS
    policies = sum(
        1 for d in docs if d["kind"] not in ("Namespace", "ServiceAccount", "Deployment", "Service")
    )
    print(f"cluster: {args.nodes} nodes, {workloads} workloads, {policies} policies, {len(docs)} documents")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = ControlPlaneSettings(root / "cp", listen="127.0.0.1:0", node_count=args.nodes)
        cp = await ControlPlane.start(settings)
        try:
            t0 = time.perf_counter()
            outcome = cp.apply_manifests([("<bench>", to_yaml(docs))])
            t1 = time.perf_counter()
            views = [cp.views.for_node(n.name) for n in cp.placement.nodes]
            print(f"initial apply + compile: {t1 - t0:.2f} s (revision {outcome.revision})")
            print(sizes(views))
            agents = [
                NodeAgent(
                    n.name,
                    cp.node_address,
                    NodeCredential.load(settings.node_dir(n.name), n.name),
                    root / "agents" / n.name,
                    backoff=Backoff(initial=0.1),
                    manage_certificates=False,
                )
                for n in cp.placement.nodes
            ]
            t2 = time.perf_counter()
            for a in agents:
                a.start()
            await asyncio.gather(*(a.wait_for_ack(outcome.revision, timeout=300) for a in agents))
            t3 = time.perf_counter()
            print(f"initial full push to {len(agents)} nodes (connect, push, ACK): {t3 - t2:.2f} s")

            edited = policy("ns0", 0, "app5", "app6", port=9090)
            await change(cp, agents, "one policy edited", to_yaml([edited]))
            mesh_wide: dict[str, object] = {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            }
            await change(cp, agents, "mesh-wide policy added", to_yaml([mesh_wide]))
            for a in agents:
                await a.stop()
        finally:
            await cp.stop(grace=0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--policies", type=int, default=1000)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args()))
