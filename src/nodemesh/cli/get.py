"""`nodemesh get KIND [NAME] [-n NS | -A] [-o yaml|json]`: read resources from the control plane.

KIND is a kind, its plural or short name (`pods`, `po`, `deploy`, `svc`, `cnp`, ...).
`-o yaml` and `-o json` print the stored documents with their `metadata.resourceVersion`; more
than one is wrapped in a `v1` `List`, which `nodemesh apply -f -` accepts back unchanged.
`get nodes` shows each node agent's sync state (ACKed version, last NACK).
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _options(p: argparse.ArgumentParser) -> None:
    from nodemesh.cli.apply import add_cluster_arguments
    from nodemesh.controlplane.client import add_connection_arguments

    p.add_argument("-n", "--namespace", default="", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    add_connection_arguments(p)
    add_cluster_arguments(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get", help="show resources stored in the control plane", description=__doc__)
    p.add_argument("kind", metavar="KIND")
    # NAME and options may come in any order after KIND (`get cnp -n shop orders-http`): argparse
    # does not intermix positionals of a sub-command, so the rest is parsed again below.
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="NAME", help="a name (optional)")
    _options(p)
    p.set_defaults(func=run)


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    extra = argparse.ArgumentParser(prog="nodemesh get KIND", add_help=False)
    extra.add_argument("name", nargs="?", default="")
    _options(extra)
    defaults = {k: v for k, v in vars(args).items() if k not in ("rest", "name")}
    extra.set_defaults(**defaults)
    return extra.parse_intermixed_args(args.rest, namespace=argparse.Namespace(**defaults))


def run(args: argparse.Namespace) -> int:
    import yaml

    from nodemesh.cli.apply import connect

    args = _reparse(args)
    if args.kind.lower() in ("node", "nodes", "no"):
        return _nodes(args)
    with connect(args) as client:
        found = client.get(args.kind, args.namespace, args.name, all_namespaces=args.all_namespaces)
    manifests = [r.manifest for r in found]
    if args.output in ("yaml", "json"):
        doc: object = (
            manifests[0]
            if args.name and manifests
            else {
                "apiVersion": "v1",
                "kind": "List",
                "items": manifests,
            }
        )
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    if not found:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace or 'default'}"
        print(f"No resources found in {where}.")
        return 0
    wide = args.all_namespaces
    print(("NAMESPACE            " if wide else "") + f"{'NAME':32} {'KIND':30} RESOURCEVERSION")
    for r in found:
        print((f"{r.namespace:20} " if wide else "") + f"{r.name:32} {r.kind:30} {r.resource_version}")
    return 0


def _nodes(args: argparse.Namespace) -> int:
    from nodemesh.cli.apply import connect

    with connect(args) as client:
        report = client.status()
    if args.output == "json":
        from dataclasses import asdict

        print(json.dumps([asdict(n) for n in report.nodes], indent=2))
        return 0
    print(f"{'NAME':12} {'CONNECTED':9} {'ACKED':6} {'SYNCED':6} LAST NACK")
    for n in report.nodes:
        nack = f"version {n.nack_version}: {n.nack_reason}" if n.nack_reason else "-"
        print(
            f"{n.node:12} {'yes' if n.connected else 'no':9} {n.acked_version or '-':6} "
            f"{'yes' if n.synced else 'no':6} {nack}"
        )
    return 0
