"""The `nodemesh` command: one module per verb, each exposing `register(subparsers)`.

A verb module adds its parser and sets `func` (a callable taking the parsed namespace and
returning an exit code). Errors nodemesh raises on purpose (`NodemeshError`) are printed without
a traceback and exit with their code; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nodemesh import __version__
from nodemesh.errors import NodemeshError

__all__ = ["VERBS", "build_parser", "main"]

# Verb modules, in the order `nodemesh --help` lists them.
VERBS: tuple[str, ...] = (
    "nodemesh.cli.trace",
    "nodemesh.cli.analyze",
    "nodemesh.cli.up",
    "nodemesh.cli.status",
    "nodemesh.cli.exec",
    "nodemesh.cli.logs",
    "nodemesh.cli.down",
    "nodemesh.cli.echo",
    "nodemesh.cli.controlplane",
    "nodemesh.cli.apply",
    "nodemesh.cli.get",
    "nodemesh.cli.delete",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodemesh",
        description="A sidecarless service mesh: kernel L4 and HBONE data paths, one policy engine.",
    )
    parser.add_argument("--version", action="version", version=f"nodemesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name in VERBS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except NodemeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
