"""`nodemesh observe`: the flow records of a cluster, filtered like `hubble observe`.

Reads the JSON-lines files every agent exports (by default the running local cluster's
`/run/nodemesh/<name>/flows/`, or `--flows-dir DIR`), prints the matching flows oldest first
(the last 20 unless `--since`, `--last N` or `--all` says otherwise), and with `--follow` keeps
printing new ones until interrupted. Filters: `--verdict`, `--namespace`, `--pod NS/NAME`
(either end), `--from-pod`, `--to-pod`; the same flag twice is OR, different flags are AND.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from nodemesh.errors import UsageError
from nodemesh.runtime.state import DEFAULT_RUN_DIR

__all__ = ["FLOWS_SUBDIR", "register"]

FLOWS_SUBDIR = "flows"  # <cluster state dir>/flows/: where the agents export flow records
POLL_SECONDS = 0.2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "observe",
        help="show flow records (like hubble observe)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f = p.add_argument_group("filters")
    f.add_argument(
        "--verdict",
        action="append",
        default=[],
        metavar="VERDICT",
        help="FORWARDED, DROPPED or AUDIT (repeat for OR)",
    )
    f.add_argument("-n", "--namespace", action="append", default=[], metavar="NS", help="either end in NS")
    f.add_argument(
        "--pod", action="append", default=[], metavar="[NS/]NAME", help="either end is this pod (name prefix)"
    )
    f.add_argument("--from-pod", action="append", default=[], metavar="[NS/]NAME", help="source pod prefix")
    f.add_argument(
        "--to-pod", action="append", default=[], metavar="[NS/]NAME", help="destination pod prefix"
    )
    s = p.add_argument_group("selection")
    s.add_argument("--since", metavar="TIME", help="5m, 1h30m, or a time (RFC 3339, 2006-01-02)")
    s.add_argument("--last", type=int, metavar="N", help="only the last N matching flows (default 20)")
    s.add_argument("--all", dest="show_all", action="store_true", help="every stored flow")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", choices=["compact", "json"], default="compact")
    o.add_argument("--print-node-name", action="store_true", help="print the reporting node")
    p.add_argument("--flows-dir", metavar="DIR", help="read this directory instead of the cluster's")
    p.add_argument("--name", help="cluster name (default: the only running cluster)")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def flows_dir(args: argparse.Namespace) -> Path:
    """`--flows-dir`, else the running cluster's `<state dir>/flows/`."""
    if args.flows_dir is not None:
        path = Path(args.flows_dir)
        if not path.is_dir():
            raise UsageError(f"no flow directory at {path}")
        return path
    from nodemesh.runtime import control

    return control.find_cluster(args.name, args.run_dir).root / FLOWS_SUBDIR


def run(args: argparse.Namespace) -> int:
    from nodemesh.observe.export import FlowTail
    from nodemesh.observe.filters import build_query
    from nodemesh.observe.flow import Flow
    from nodemesh.observe.printer import compact, json_line

    query = build_query(
        now=datetime.now(UTC),
        verdicts=args.verdict,
        namespaces=args.namespace,
        pods=args.pod,
        from_pods=args.from_pod,
        to_pods=args.to_pod,
        since=args.since,
        last=args.last,
        show_all=args.show_all,
        follow=args.follow,
    )
    directory = flows_dir(args)

    def show(flow: Flow) -> None:
        line = json_line(flow) if args.output == "json" else compact(flow, node_name=args.print_node_name)
        print(line, flush=args.follow)

    tail = FlowTail(directory)
    try:
        for flow in query.select(tail.read_existing()):
            show(flow)
        if args.follow:
            try:
                while True:
                    for flow in tail.poll():
                        if query.matches(flow):
                            show(flow)
                    time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                pass
    finally:
        tail.close()
    if tail.malformed:
        print(f"warning: skipped {tail.malformed} line(s) that are not flow records", file=sys.stderr)
    return 0
