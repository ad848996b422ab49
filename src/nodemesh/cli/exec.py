"""`nodemesh exec NS/POD -- CMD...`: run a command inside a pod of a local cluster.

The command gets the pod's network namespace, resolv.conf (cluster DNS) and hostname, and the
terminal; its exit code is the command's. For a workload with several pods, the first is used.
"""

from __future__ import annotations

import argparse

from nodemesh.runtime.state import DEFAULT_RUN_DIR

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "exec",
        help="run a command inside a pod",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target", metavar="NS/POD", help="a pod or workload: ns/name (namespace default if omitted)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    p.add_argument("--name", help="cluster name (default: the only running cluster)")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.runtime import control

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return control.exec_in(args.name, args.target, command, args.run_dir)
