"""`nodemesh delete -f PATH...` or `nodemesh delete KIND NAME... [-n NS]`: delete resources.

The request is atomic: if one target does not exist, or deleting it would leave another
resource dangling (a ServiceAccount still used by a workload), nothing is deleted. Deleting a
Namespace deletes everything in it, as Kubernetes does.
"""

from __future__ import annotations

import argparse

from nodemesh.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nodemesh.cli.apply import add_cluster_arguments
    from nodemesh.controlplane.client import add_connection_arguments

    p = sub.add_parser(
        "delete", help="delete resources from the control plane (atomically)", description=__doc__
    )
    p.add_argument("target", nargs="*", metavar="KIND NAME", help="a kind, then one or more names")
    p.add_argument(
        "-f", "--filename", action="append", default=[], metavar="PATH", help="file, directory or -"
    )
    p.add_argument("-n", "--namespace", default="", help="namespace of KIND NAME (default: default)")
    add_connection_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.cli.apply import connect, label
    from nodemesh.controlplane.client import read_manifests

    if bool(args.filename) == bool(args.target):
        raise UsageError("give either -f PATH or KIND NAME...")
    refs: list[tuple[str, str, str]] = []
    if args.target:
        if len(args.target) < 2:
            raise UsageError("give a kind and at least one name")
        kind, *names = args.target
        refs = [(kind, args.namespace, name) for name in names]
    manifests = read_manifests(args.filename) if args.filename else []
    with connect(args) as client:
        result = client.delete(manifests, refs)
    for r in result.results:
        print(f"{label(r.key[0], r.key[2])} {r.action.value}")
    return 0
