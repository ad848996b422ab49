"""`nodemesh analyze`: findings about policies that cannot work as written (L7 fields no proxy
will enforce, selectors matching nothing, shadowed rules, DENYs that never fire, missing
waypoints). Exit 1 when any finding is an Error, else 0."""

from __future__ import annotations

import argparse
import json

from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.policy.engine import Mode, PolicyEngine
from nodemesh.policy.findings import Severity
from nodemesh.policy.report import finding_to_dict, render_findings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analyze", help="find policies that cannot work as written", description=__doc__)
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH")
    p.add_argument(
        "--mode", choices=[m.value for m in Mode], help="data path (default: the Cluster's, else ambient)"
    )
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    world = World.build(load_documents(args.filename))
    engine = PolicyEngine(
        world, args.mode or (world.settings.mode if world.settings.mode != "none" else "ambient")
    )
    findings = engine.analyze()
    if args.output == "json":
        print(json.dumps([finding_to_dict(f) for f in findings], indent=2))
    else:
        print(render_findings(findings))
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0
