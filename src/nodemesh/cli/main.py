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
    "nodemesh.cli.observe",
)


def _chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser. Only the chosen verb's module is imported (each verb's imports cost up to a
    second of start-up: schemas, gRPC); `--help` and a missing verb import them all."""
    parser = argparse.ArgumentParser(
        prog="nodemesh",
        description="A sidecarless service mesh: kernel L4 and HBONE data paths, one policy engine.",
    )
    parser.add_argument("--version", action="version", version=f"nodemesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    chosen = _chosen_verb(sys.argv[1:] if argv is None else argv)
    names = [module.rsplit(".", 1)[1] for module in VERBS]
    load_all = chosen not in names
    for module, verb in zip(VERBS, names, strict=True):
        if load_all or verb == chosen:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(verb)  # a placeholder: argparse only needs to know the verb exists
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
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
