"""Helpers for tests on real namespaces: root check, unique `nm` names, CLI runs, host snapshots.

Every cluster a test makes has a name starting with `nm` and is removed in a `finally`, even when
the test fails; the runtime's own sandbox guarantees that nothing is left on the host either way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "nodemesh.cli.main"]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the runtime creates network, mount and PID namespaces")
    for tool in ("ip", "nft", "curl", "getent"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs the `{tool}` command")


def unique_name(tag: str = "") -> str:
    return f"nm{tag}{secrets.token_hex(3)}"


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Cluster:
    name: str
    up: subprocess.CompletedProcess[str]

    def exec(self, target: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return cli("exec", "--name", self.name, target, "--", *argv, timeout=timeout)

    def curl_json(self, target: str, url: str, *flags: str) -> dict[str, object]:
        out = self.exec(target, "curl", "-sS", "-m", "5", *flags, url)
        assert out.returncode == 0, out.stderr
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def status(self) -> dict[str, object]:
        out = cli("status", "--name", self.name, "-o", "json")
        assert out.returncode == 0, out.stderr
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def pod_ip(self, key: str) -> str:
        pods = self.status()["pods"]
        assert isinstance(pods, list)
        return str(next(p["ip"] for p in pods if f"{p['namespace']}/{p['name']}" == key))


@contextmanager
def running_cluster(manifests: Path, name: str, *extra: str) -> Iterator[Cluster]:
    """`nodemesh up`, yield, and `nodemesh down` whatever happens."""
    try:
        up = cli("up", "-f", str(manifests), "--name", name, *extra)
        yield Cluster(name, up)
    finally:
        cli("down", "--name", name)


def host_snapshot() -> tuple[str, str, str]:
    """What `down` must leave exactly as it found: namespaces, links and the nftables ruleset."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    links = run("ip", "-o", "link", "show")
    return run("ip", "netns", "list"), links, run("nft", "list", "ruleset")


def pid_namespace_members(ns_link: str) -> list[int]:
    """Host PIDs of processes in the PID namespace `pid:[inode]`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == ns_link:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def echo_pod(name: str, namespace: str, node: str | None = None, extra_args: str = "") -> str:
    node_line = f"\n  nodeName: {node}" if node else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:{node_line}
  containers:
    - name: echo
      command: [nodemesh, echo, --http, "8080"{extra_args}]
      ports: [{{name: http, containerPort: 8080}}]
---
"""
