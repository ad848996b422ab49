"""`nodemesh controlplane`: run the control plane (the istiod role) on its own, or talk to one.

  nodemesh controlplane [serve] --state-dir DIR [--listen 127.0.0.1:15012] [--nodes N]
                                [--ca-cert PEM --ca-key PEM] [-f PATH...]
  nodemesh controlplane status       nodes, their ACKed version, last NACK, trust bundle
  nodemesh controlplane rotate-ca    add a new root alongside the old one, then sign with it

`serve` keeps the store (SQLite), the CA and the node credentials (`nodes/<node>/`) in the
state directory, serves node agents on `--listen` (mutual TLS) and the CLI on
`<state-dir>/admin.sock`, prints one JSON line `{"event": "ready", ...}` when it serves, and
stops on SIGTERM or SIGINT.

`serve --cluster-dir /run/nodemesh/<name>` is how `nodemesh up` runs a local cluster's control
plane (inside the cluster's sandbox): state in `<cluster>/controlplane/`, nodes served on the
underlay gateway `172.18.0.1:15012`, pods placed as the cluster's plan placed them, and, at the
first start only (an empty store), the cluster's manifests applied and its CA taken from
`up --ca-cert/--ca-key` if given.

`status` and `rotate-ca` find the control plane like `apply` does (the running local cluster's,
see `nodemesh apply --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from nodemesh.errors import UsageError

if TYPE_CHECKING:
    from nodemesh.controlplane.settings import ControlPlaneSettings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nodemesh.cli.apply import add_cluster_arguments
    from nodemesh.controlplane.client import add_connection_arguments
    from nodemesh.controlplane.settings import DEFAULT_LISTEN

    p = sub.add_parser(
        "controlplane",
        help="run the control plane (store, CA, config push), or show its status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=["serve", "status", "rotate-ca"], default="serve")
    add_connection_arguments(p)
    add_cluster_arguments(p)
    p.add_argument(
        "--listen",
        help=f"node endpoint, host:port or unix:PATH ({DEFAULT_LISTEN}; in a cluster: its gateway)",
    )
    p.add_argument(
        "--cluster-dir",
        metavar="DIR",
        help="serve the local cluster whose state directory is DIR (what `up` runs)",
    )
    p.add_argument("--nodes", type=int, help="number of nodes (default: the Cluster resource's spec.nodes)")
    p.add_argument(
        "--ca-cert", type=Path, help="a root CA certificate (PEM) to sign with, instead of a generated one"
    )
    p.add_argument("--ca-key", type=Path, help="the private key (PEM) of --ca-cert")
    p.add_argument(
        "--cert-lifetime",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="workload certificate lifetime (24)",
    )
    p.add_argument(
        "-f", "--filename", action="append", default=[], metavar="PATH", help="manifests to apply at start"
    )
    p.add_argument("-o", "--output", choices=["text", "json"], default="text", help="status output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    if args.action == "rotate-ca":
        from nodemesh.cli.apply import connect

        with connect(args) as client:
            for i, fp in enumerate(client.rotate_root()):
                print(f"{'signing' if i == 0 else 'trusted'}  {fp}")
        return 0
    if (args.ca_cert is None) != (args.ca_key is None):
        raise UsageError("--ca-cert and --ca-key go together")
    return asyncio.run(_serve(args))


def _settings(args: argparse.Namespace) -> tuple[ControlPlaneSettings, list[tuple[str, str]], bool]:
    """The settings, the manifests to apply, and whether to apply them only to an empty store."""
    from nodemesh.controlplane.client import read_manifests
    from nodemesh.controlplane.settings import DEFAULT_LISTEN, ControlPlaneSettings, default_state_dir

    lifetime = timedelta(hours=args.cert_lifetime)
    if args.cluster_dir is None:
        settings = ControlPlaneSettings(
            state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
            listen=args.listen or DEFAULT_LISTEN,
            node_count=args.nodes,
            ca_cert=args.ca_cert,
            ca_key=args.ca_key,
            cert_lifetime=lifetime,
        )
        return settings, read_manifests(args.filename) if args.filename else [], False

    from nodemesh.runtime.placement import PlanScheduler
    from nodemesh.runtime.state import ClusterDir, Options
    from nodemesh.runtime.supervisor import load_plan

    cluster = ClusterDir(Path(args.cluster_dir))
    plan = load_plan(cluster)[1]
    options = Options.from_json(cluster.options.read_text())
    state_dir = Path(args.state_dir) if args.state_dir else cluster.controlplane
    # The user's CA is taken at the first start; the control plane keeps it in its ca/ after.
    first = not (state_dir / "ca" / "signer.crt").exists()
    ca_cert = args.ca_cert or (Path(options.ca_cert) if first and options.ca_cert else None)
    ca_key = args.ca_key or (Path(options.ca_key) if first and options.ca_key else None)
    settings = ControlPlaneSettings(
        state_dir=state_dir,
        listen=args.listen or plan.controlplane_address,
        nodes=tuple(n.name for n in plan.nodes),
        node_count=len(plan.nodes),
        ca_cert=ca_cert,
        ca_key=ca_key,
        cert_lifetime=lifetime,
        scheduler=PlanScheduler(plan),
    )
    sources = args.filename or [str(cluster.manifests)]
    return settings, read_manifests(sources), True


async def _serve(args: argparse.Namespace) -> int:
    from nodemesh.controlplane.server import ControlPlane

    settings, manifests, only_if_empty = _settings(args)
    cp = await ControlPlane.start(settings)
    try:
        if manifests and not (only_if_empty and cp.revision > 0):
            cp.apply_manifests(manifests)
        ready = {
            "event": "ready",
            "nodes": cp.node_address,
            "admin": settings.admin_address,
            "revision": cp.revision,
        }
        print(json.dumps(ready), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            # In a cluster, `down` stops the agents at the same time: nothing to drain for.
            await cp.stop(grace=0.25 if args.cluster_dir else 1.0)
    return 0


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nodemesh.cli.apply import connect

    with connect(args) as client:
        report = client.status()
    if args.output == "json":
        print(json.dumps(asdict(report), indent=2))
        return 0
    print(f"revision {report.revision}")
    print(f"{'NODE':12} {'CONNECTED':9} {'ACKED':6} {'SYNCED':6} {'RESOURCES':9} LAST NACK")
    for n in report.nodes:
        nack = f"version {n.nack_version}: {n.nack_reason}" if n.nack_reason else "-"
        print(
            f"{n.node:12} {'yes' if n.connected else 'no':9} {n.acked_version or '-':6} "
            f"{'yes' if n.synced else 'no':6} {n.resources:<9} {nack}"
        )
    for i, fp in enumerate(report.bundle_fingerprints):
        print(f"root {'signing' if i == 0 else 'trusted'} {fp}")
    sys.stdout.flush()
    return 0
