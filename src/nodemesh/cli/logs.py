"""`nodemesh logs NS/POD`: what a pod's containers wrote to stdout and stderr.

For a workload with several pods every pod is shown, each line prefixed with its pod. A
container that exited ends with its exit code. `-f` follows until interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nodemesh.runtime.state import DEFAULT_RUN_DIR

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("logs", help="print the logs of a pod or workload", description=__doc__)
    p.add_argument("target", metavar="NS/POD", help="a pod or workload: ns/name")
    p.add_argument("-c", "--container", help="only this container")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines of each")
    p.add_argument("--name", help="cluster name (default: the only running cluster)")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nodemesh.runtime import control

    state, files = control.log_files(args.name, args.target, args.container, args.run_dir)
    many = len(files) > 1
    offsets: dict[Path, int] = {}
    for pod, container, path in files:
        prefix = f"[{pod.name}/{container}] " if many else ""
        text = path.read_text(errors="replace") if path.exists() else ""
        offsets[path] = len(text.encode())
        lines = text.splitlines()
        if args.tail is not None:
            lines = lines[-args.tail :] if args.tail else []
        for line in lines:
            print(prefix + line)
    status = state.read_status()
    if status is not None:
        for pod, container, _ in files:
            found = next((p for p in status.pods if p.key == pod.key), None)
            c = next((c for c in found.containers if c.name == container), None) if found else None
            if c is not None and c.exit_code is not None:
                print(f"--- {pod.key}/{container} exited with code {c.exit_code}")
    if not args.follow:
        return 0
    try:
        while state.alive_pid() is not None:
            for pod, container, path in files:
                prefix = f"[{pod.name}/{container}] " if many else ""
                with open(path, "rb") as f:
                    f.seek(offsets[path])
                    data = f.read()
                offsets[path] += len(data)
                for line in data.decode(errors="replace").splitlines():
                    print(prefix + line, flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    print("--- the cluster stopped", file=sys.stderr)
    return 0
