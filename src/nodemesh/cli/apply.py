"""`nodemesh apply -f PATH...`: send manifests to the control plane as one atomic batch.

The whole batch is validated first (schema, Istio's validation rules, references between
documents); one bad document rejects it with file, line and field path, and nothing is applied.
Applying an unchanged resource is a no-op (`unchanged`), as with `kubectl apply`.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


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
    p.set_defaults(func=run)


def label(kind: str, name: str) -> str:
    """`deployment.apps/orders`, as kubectl prints a resource."""
    from nodemesh.controlplane.kinds import resolve_kind

    info = resolve_kind(kind)
    return f"{info.kind.lower()}{'.' + info.group if info.group else ''}/{name}"


def run(args: argparse.Namespace) -> int:
    from nodemesh.controlplane.client import client_from_args, read_manifests

    manifests = read_manifests(args.filename)
    with client_from_args(args) as client:
        result = client.apply(manifests)
    for r in result.results:
        print(f"{label(r.key[0], r.key[2])} {r.action.value}")
    return 0
