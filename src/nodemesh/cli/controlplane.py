"""`nodemesh controlplane`: run the control plane (the istiod role) on its own, or talk to one.

  nodemesh controlplane [serve] --state-dir DIR [--listen 127.0.0.1:15012] [--nodes N]
                                [--ca-cert PEM --ca-key PEM] [-f PATH...]
  nodemesh controlplane status       nodes, their ACKed version, last NACK, trust bundle
  nodemesh controlplane rotate-ca    add a new root alongside the old one, then sign with it

`serve` keeps the store (SQLite), the CA and the node credentials (`nodes/<node>/`) in the
state directory, serves node agents on `--listen` (mutual TLS) and the CLI on
`<state-dir>/admin.sock`, prints one JSON line `{"event": "ready", ...}` when it serves, and
stops on SIGTERM or SIGINT.
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

from nodemesh.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"node endpoint, host:port or unix:PATH ({DEFAULT_LISTEN})"
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
        from nodemesh.controlplane.client import client_from_args

        with client_from_args(args) as client:
            for i, fp in enumerate(client.rotate_root()):
                print(f"{'signing' if i == 0 else 'trusted'}  {fp}")
        return 0
    if (args.ca_cert is None) != (args.ca_key is None):
        raise UsageError("--ca-cert and --ca-key go together")
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from nodemesh.controlplane.client import read_manifests
    from nodemesh.controlplane.server import ControlPlane
    from nodemesh.controlplane.settings import ControlPlaneSettings, default_state_dir

    settings = ControlPlaneSettings(
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        listen=args.listen,
        node_count=args.nodes,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        cert_lifetime=timedelta(hours=args.cert_lifetime),
    )
    manifests = read_manifests(args.filename) if args.filename else []
    cp = await ControlPlane.start(settings)
    try:
        if manifests:
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
            await cp.stop(grace=1.0)
    return 0


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nodemesh.controlplane.client import client_from_args

    with client_from_args(args) as client:
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
