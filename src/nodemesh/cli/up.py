"""`nodemesh up -f DIR`: build a local cluster from network namespaces and start its workloads.

Validates and plans everything first (nothing is built on bad input), then starts the sandbox
supervisor in the background and shows its progress until every pod is ready. The cluster runs
its own control plane (a root CA generated here, or `--ca-cert/--ca-key`; a credential per node;
the manifests applied to it) and a node agent per node; `up` returns when every agent has
ACKed its first view too. In mode ambient (the default for manifests with an ambient namespace
and no `Cluster` resource) it also runs a node proxy per node, and starts the workloads once
every node proxy serves its node's ambient pods. The cluster keeps running after the command
returns; `nodemesh apply` changes its desired state, `nodemesh down` removes it.
"""

from __future__ import annotations

import argparse
import sys

from nodemesh.runtime.state import DEFAULT_RUN_DIR, PodStatus

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="build a local cluster from network namespaces and start its workloads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="manifests: file or directory",
    )
    p.add_argument("--name", help="cluster name (default: the Cluster resource's, else 'default')")
    p.add_argument("--nodes", type=int, help="number of nodes (default: the Cluster resource's, else 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (nodes, pods, addresses) and stop")
    p.add_argument(
        "--ca-cert", metavar="PEM", help="a root CA certificate to sign with (default: generate one)"
    )
    p.add_argument("--ca-key", metavar="PEM", help="the private key of --ca-cert")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.runtime import control

    if args.dry_run:
        plan = control.plan_from(args.filename, name=args.name, nodes=args.nodes)
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for node in plan.nodes:
            print(f"node {node.name}  {node.ip}  pods {node.pod_cidr}")
        for pod in plan.pods:
            print(f"pod  {pod.key:32} {pod.node:8} {pod.ip}")
        for svc in plan.services:
            print(f"svc  {svc.key:32} {svc.cluster_ip}")
        return 0

    def show(event: control.UpEvent) -> None:
        f = event.fields
        if event.event == "planned":
            print(f"building: {f['nodes']} nodes, {f['pods']} pods, {f['services']} services", flush=True)
        elif event.event == "network":
            print(f"  network: {f['message']}", flush=True)
        elif event.event == "pod":
            state = "ready" if f["ready"] else str(f["phase"])
            codes = f.get("exit_codes")
            extra = (
                f" (exit code {', '.join(str(c) for c in codes)})"
                if isinstance(codes, list) and codes
                else ""
            )
            print(f"  pod {f['pod']!s:32} {f['node']!s:8} {f['ip']!s:15} {state}{extra}", flush=True)
        elif event.event == "controlplane" and f["phase"] == "Running":
            print(f"  control plane serving nodes on {f['address']}", flush=True)
        elif event.event == "agent" and (f["acked_version"] or f["nack_reason"]):
            answer = (
                f"NACK: {f['nack_reason']}" if f["nack_reason"] else f"ACKed version {f['acked_version']}"
            )
            print(f"  agent {f['node']!s:8} {answer}", flush=True)
        elif event.event == "nodeproxy" and f["phase"] == "Running":
            pods, expected = f.get("pods"), f.get("expected")
            if isinstance(pods, list) and isinstance(expected, list) and set(expected) <= set(pods):
                print(f"  node proxy {f['node']!s:8} serving {len(pods)} ambient pods", flush=True)
        elif event.event == "waypoint" and f["phase"] == "Running":
            print(f"  waypoint {f['waypoint']!s} serving HBONE in pod {f['pod']} ({f['node']})", flush=True)

    plan = control.plan_from(args.filename, name=args.name, nodes=args.nodes)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    control.up(
        args.filename,
        name=args.name,
        nodes=args.nodes,
        run_dir=args.run_dir,
        timeout=args.timeout,
        on_event=show,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
    )
    status = control.status(plan.name, args.run_dir, live=False)
    failed = [p for p in status.pods if p.phase == "Failed" or (not p.ready and p.phase != "Succeeded")]
    if failed:
        print(
            f"cluster {plan.name!r} is up, but not every pod is ready: "
            + ", ".join(f"{p.key} ({_why(p)})" for p in failed)
            + f"; see `nodemesh logs --name {plan.name} NS/POD`",
            file=sys.stderr,
        )
        return 1
    unsynced = [a for a in status.agents if not a.acked_version or a.nack_reason]
    if unsynced:
        print(
            f"cluster {plan.name!r} is up, but not every node agent took its view: "
            + ", ".join(f"{a.node} ({a.nack_reason or a.phase})" for a in unsynced)
            + f"; see /run/nodemesh/{plan.name}/agents/NODE/agent.log",
            file=sys.stderr,
        )
        return 1
    print(f"cluster {plan.name!r} is ready (mode {plan.mode}); `nodemesh down` removes it")
    return 0


def _why(pod: PodStatus) -> str:
    exited = [f"{c.name} exited with code {c.exit_code}" for c in pod.containers if c.exit_code is not None]
    return f"{pod.phase}: " + ", ".join(exited) if exited else pod.phase
