"""`nodemesh echo`: run the built-in test application (see `nodemesh.apps.echo`).

Kept tiny and free of heavy imports: every pod of the example cluster starts one of these.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nodemesh.errors import UsageError

__all__ = ["main", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "echo",
        help="the built-in test app: HTTP/1.1 + h2c, TCP echo, discard; answers with what it saw",
        description="Serve HTTP/1.1 and HTTP/2 cleartext (prior knowledge or Upgrade: h2c), TCP echo "
        "and discard on the given ports, answering with the pod, the peer address, the request line "
        "and the headers it saw.",
    )
    p.add_argument(
        "--http", action="append", metavar="PORT", help="HTTP/1.1 and h2c port (repeat or comma-separate)"
    )
    p.add_argument(
        "--tcp", action="append", metavar="PORT", help="TCP port: one JSON line, then echo (RFC 862)"
    )
    p.add_argument("--discard", action="append", metavar="PORT", help="TCP port that drops input (RFC 863)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nodemesh.apps import echo

    try:
        config = echo.EchoConfig(
            http=echo.ports(args.http),
            tcp=echo.ports(args.tcp),
            discard=echo.ports(args.discard),
            bind=args.bind,
            access_log=not args.no_access_log,
        )
    except ValueError as exc:
        raise UsageError(f"bad port: {exc}") from exc
    if not (config.http or config.tcp or config.discard):
        raise UsageError("give at least one of --http PORT, --tcp PORT, --discard PORT")
    logging.getLogger("nodemesh.echo").setLevel(logging.INFO)
    return echo.run(config)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nodemesh.cli.echo ARGS` = `nodemesh echo ARGS`, without loading the other verbs."""
    parser = argparse.ArgumentParser(prog="nodemesh")
    sub = parser.add_subparsers(dest="verb")
    register(sub)
    args = parser.parse_args(["echo", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
