"""`nodemesh down`: stop a local cluster and remove everything it made.

Workloads get SIGTERM, then SIGKILL after a grace period; the sandbox's namespaces, links, rules
and processes end with its supervisor, and its state directory is removed.
"""

from __future__ import annotations

import argparse

from nodemesh.runtime.state import DEFAULT_RUN_DIR

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("down", help="stop a local cluster and remove everything it made", description=__doc__)
    p.add_argument("--name", help="cluster name (default: the only running cluster)")
    p.add_argument("--all", action="store_true", help="stop every local cluster")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.runtime import control
    from nodemesh.runtime.state import list_clusters

    if args.all:
        for state in list_clusters(args.run_dir):
            print(control.down(state.name, args.run_dir))
        return 0
    print(control.down(args.name, args.run_dir))
    return 0
