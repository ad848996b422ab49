"""`nodemesh trace`: the verdict for a flow, and the exact policy and rule that decided it, at
every enforcement point the flow crosses. Exit 0 whatever the verdict; non-zero only for bad
input. `--probes FILE` evaluates many flows (JSON lines in, JSON lines out, same order)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from nodemesh.errors import UsageError
from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.policy.engine import Mode, PolicyEngine
from nodemesh.policy.probe import Probe, resolve
from nodemesh.policy.report import render_trace, trace_to_dict

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        help="explain the verdict for a flow or request",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="manifests: file, directory or - for stdin (repeatable)",
    )
    p.add_argument("--from", dest="src", metavar="NS/WORKLOAD|IP")
    p.add_argument("--to", dest="dst", metavar="NS/WORKLOAD|NS/SERVICE|IP")
    p.add_argument("--port", type=int)
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP", "SCTP", "tcp", "udp", "sctp"])
    p.add_argument("--method")
    p.add_argument("--path")
    p.add_argument("--host")
    p.add_argument("--header", action="append", default=[], metavar="K=V")
    p.add_argument("--jwt-claims", metavar="JSON", help="claims of a valid JWT on the request")
    p.add_argument(
        "--jwt-invalid", action="store_true", help="the request carries a JWT that fails verification"
    )
    p.add_argument("--probes", metavar="FILE", help="JSON lines of probes (- for stdin); prints JSON lines")
    p.add_argument(
        "--mode", choices=[m.value for m in Mode], help="data path (default: the Cluster's, else ambient)"
    )
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def _probe_from_args(args: argparse.Namespace) -> Probe:
    missing = [
        flag
        for flag, value in (("--from", args.src), ("--to", args.dst), ("--port", args.port))
        if value is None
    ]
    if missing:
        raise UsageError(f"trace needs {', '.join(missing)} (or --probes FILE)")
    obj: dict[str, object] = {"from": args.src, "to": args.dst, "port": args.port, "protocol": args.protocol}
    for key in ("method", "path", "host"):
        if getattr(args, key):
            obj[key] = getattr(args, key)
    headers: dict[str, str] = {}
    for h in args.header:
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise UsageError(f"--header {h!r}: expected NAME=VALUE")
        headers[k] = v
    if headers:
        obj["headers"] = headers
    if args.jwt_claims:
        try:
            obj["jwt_claims"] = json.loads(args.jwt_claims)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--jwt-claims: not valid JSON ({exc.msg})") from None
    if args.jwt_invalid:
        obj["jwt_invalid"] = True
    return Probe.from_json(obj, "flags")


def _probes(path: str) -> Iterator[Probe]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            yield Probe.from_json(obj, f"{path}:{n}")


def run(args: argparse.Namespace) -> int:
    world = World.build(load_documents(args.filename))
    engine = PolicyEngine(
        world, args.mode or (world.settings.mode if world.settings.mode != "none" else "ambient")
    )
    if args.probes:
        probes = list(_probes(args.probes))  # validate every line before printing any verdict
        out = sys.stdout
        for probe in probes:
            ctx, route = resolve(world, probe)
            out.write(json.dumps(trace_to_dict(engine.trace(ctx, route)), separators=(",", ":")) + "\n")
        return 0
    ctx, route = resolve(world, _probe_from_args(args))
    trace = engine.trace(ctx, route)
    if args.output == "json":
        print(json.dumps(trace_to_dict(trace), indent=2))
    else:
        print(render_trace(trace, color=sys.stdout.isatty()))
    return 0
