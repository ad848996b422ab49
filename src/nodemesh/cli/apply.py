"""`nodemesh apply -f PATH...`: send manifests to the control plane as one atomic batch.

The whole batch is validated first (schema, Istio's validation rules, references between
documents); one bad document rejects it with file, line and field path, and nothing is applied.
Applying an unchanged resource is a no-op (`unchanged`), as with `kubectl apply`.

Which control plane: `--controlplane ADDR`, else `--state-dir DIR`, else `--cluster NAME` (a local
cluster's, from `nodemesh up`), else `$NODEMESH_CONTROLPLANE` / `$NODEMESH_STATE_DIR`, else the
running local cluster's when exactly one runs (several: pass `--cluster`), else the standalone
control plane's default state directory. `get` and `delete` find it the same way.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.controlplane.client import ControlPlaneClient

__all__ = ["add_cluster_arguments", "connect", "register"]


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """`--cluster NAME`: talk to that local cluster's control plane (see the module doc)."""
    from nodemesh.runtime.state import DEFAULT_RUN_DIR

    parser.add_argument("--cluster", metavar="NAME", help="a local cluster (default: the only running one)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)


def connect(args: argparse.Namespace) -> ControlPlaneClient:
    """A client of the control plane the flags, the environment or the running cluster name."""
    from nodemesh.controlplane.client import ControlPlaneClient
    from nodemesh.controlplane.settings import ENV_ADDRESS, ENV_STATE_DIR, default_admin_address

    if args.controlplane or args.state_dir:
        from nodemesh.controlplane.client import client_from_args

        return client_from_args(args)
    if args.cluster is None and (os.environ.get(ENV_ADDRESS) or os.environ.get(ENV_STATE_DIR)):
        return ControlPlaneClient(default_admin_address())
    from nodemesh.errors import UsageError
    from nodemesh.runtime.errors import ClusterNotFoundError
    from nodemesh.runtime.state import ClusterDir, running_clusters

    if args.cluster is not None:
        state = ClusterDir.of(args.cluster, args.run_dir)
        if state.alive_pid() is None:
            raise ClusterNotFoundError(f"no cluster named {args.cluster!r} is running")
        return ControlPlaneClient(state.admin_address)
    running = running_clusters(args.run_dir)
    if len(running) > 1:
        names = ", ".join(c.name for c in running)
        raise UsageError(f"several clusters are running ({names}): pass --cluster")
    return ControlPlaneClient(running[0].admin_address if running else default_admin_address())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nodemesh.controlplane.client import add_connection_arguments

    p = sub.add_parser("apply", help="apply manifests to the control plane (atomically)", description=__doc__)
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="file, directory or - (stdin)",
    )
    add_connection_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def label(kind: str, name: str) -> str:
    """`deployment.apps/orders`, as kubectl prints a resource."""
    from nodemesh.controlplane.kinds import resolve_kind

    info = resolve_kind(kind)
    return f"{info.kind.lower()}{'.' + info.group if info.group else ''}/{name}"


def run(args: argparse.Namespace) -> int:
    from nodemesh.controlplane.client import read_manifests

    manifests = read_manifests(args.filename)
    with connect(args) as client:
        result = client.apply(manifests)
    for r in result.results:
        print(f"{label(r.key[0], r.key[2])} {r.action.value}")
    return 0
