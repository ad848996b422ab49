"""`nodemesh status`: a local cluster's nodes, pods (node, IP, phase) and services (ClusterIP,
endpoints). A pod whose process exited shows its exit code. Per node, its agent's sync state:
connected to the control plane or not, the version of the view it ACKed (the one it serves),
whether that is the control plane's current view, and the reason of a NACK, if the last push was
refused (the node then keeps its previous view). The control plane's line shows its revision.
In mode ambient, each node's proxy: its phase and the ambient pods it serves (`served/expected`),
and the pods it is still waiting for (e.g. no SVID yet)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from nodemesh.runtime.state import DEFAULT_RUN_DIR, ClusterStatus

__all__ = ["register", "render"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="nodes, pods and services of a local cluster", description=__doc__)
    p.add_argument("--name", help="cluster name (default: every running cluster)")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def render(status: ClusterStatus) -> str:
    lines = [
        f"cluster {status.name}  mode {status.mode}  {status.phase}",
        "",
        "NODE      ADDRESS         POD CIDR",
    ]
    lines += [f"{n[0]:9} {n[1]:15} {n[2]}" for n in status.nodes]
    cp = status.controlplane
    if cp is not None:
        revision = f"revision {cp.revision}" if cp.revision is not None else "revision ?"
        restarts = f", {cp.restarts} restarts" if cp.restarts else ""
        lines += [
            "",
            f"control plane  {cp.phase}  {revision}  nodes {cp.address}  admin {cp.admin}{restarts}",
        ]
    if status.agents:
        lines += [
            "",
            f"{'AGENT':9} {'PHASE':10} {'CONNECTED':9} {'ACKED':6} {'SYNCED':6} {'RESOURCES':9} NACK",
        ]
    for a in status.agents:
        synced = "-" if a.synced is None else "yes" if a.synced else "no"
        nack = f"version {a.nack_version}: {a.nack_reason}" if a.nack_reason else "-"
        lines.append(
            f"{a.node:9} {a.phase:10} {'yes' if a.connected else 'no':9} {a.acked_version or '-':6} "
            f"{synced:6} {a.resources:<9} {nack}"
        )
    if status.node_proxies:
        lines += ["", f"{'NODE PROXY':10} {'PHASE':10} {'PODS':5} {'RESTARTS':8} SERVING"]
    for n in status.node_proxies:
        served = f"{len(set(n.pods) & set(n.expected))}/{len(n.expected)}"
        waiting = "".join(f"; waiting for {w}" for w in n.waiting)
        lines.append(
            f"{n.node:10} {n.phase:10} {served:5} {n.restarts:<8} {','.join(n.pods) or '-'}{waiting}"
        )
    if status.waypoints:
        lines += ["", f"{'WAYPOINT':20} {'POD':22} {'NODE':9} {'IP':15} {'PHASE':10} {'RESTARTS':8} POLICIES"]
    for w in status.waypoints:
        lines.append(
            f"{w.waypoint:20} {w.pod:22} {w.node:9} {w.ip:15} {w.phase:10} {w.restarts:<8} "
            f"{w.policy_version or '-'}"
        )
    lines += ["", f"{'POD':34} {'NODE':9} {'IP':15} {'PHASE':10} READY  EXIT"]
    for pod in status.pods:
        codes = ",".join(str(c.exit_code) for c in pod.containers if c.exit_code is not None)
        ready = "yes" if pod.ready else "no"
        lines.append(f"{pod.key:34} {pod.node:9} {pod.ip:15} {pod.phase:10} {ready:6} {codes or '-'}")
    lines += ["", f"{'SERVICE':34} {'CLUSTER-IP':15} {'PORTS':24} ENDPOINTS"]
    for svc in status.services:
        lines.append(
            f"{svc.namespace + '/' + svc.name:34} {svc.cluster_ip:15} {','.join(svc.ports):24} "
            f"{','.join(svc.endpoints) or '<none>'}"
        )
    lines += [f"warning: {w}" for w in status.warnings]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nodemesh.runtime import control
    from nodemesh.runtime.state import list_clusters

    if args.name is None:
        names = [c.name for c in list_clusters(args.run_dir) if c.alive_pid() is not None]
        if not names:
            names = [control.find_cluster(None, args.run_dir).name]  # raises "no cluster is running"
    else:
        names = [args.name]
    found = [control.status(name, args.run_dir) for name in names]
    if args.output == "json":
        out = [asdict(s) for s in found]
        print(json.dumps(out[0] if args.name else out, indent=2))
    else:
        print("\n\n".join(render(s) for s in found))
    return 0
