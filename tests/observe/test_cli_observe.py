"""`nodemesh observe` as a user runs it: a subprocess reading a directory of exported flows."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from nodemesh.observe.export import FlowWriter
from nodemesh.observe.flow import Flow, FlowPolicy, Reporter, TrafficDirection, Verdict

from .strategies import flow, pod

DENY_POLICY = FlowPolicy("AuthorizationPolicy", "shop", "orders-allow-frontend")


def nodemesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodemesh.cli.main", "observe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def scenario() -> list[Flow]:
    """frontend -> orders allowed (both ends), reporting -> orders denied at the destination."""
    reporting = pod("shop", "reporting-0", sa="reporting", ip="10.0.1.9", port=50000)
    return [
        flow(
            at=timedelta(seconds=0),
            reporter=Reporter.SOURCE,
            direction=TrafficDirection.EGRESS,
            node="node-1",
            bytes_sent=120,
            bytes_received=900,
            duration_ns=3_000_000,
        ),
        flow(
            at=timedelta(seconds=1), node="node-2", bytes_sent=120, bytes_received=900, duration_ns=2_000_000
        ),
        flow(
            at=timedelta(seconds=2),
            node="node-2",
            source=reporting,
            verdict=Verdict.DROPPED,
            policy=DENY_POLICY,
            reason="allow policies exist, but none allowed (ALLOW policies: shop/orders-allow-frontend)",
        ),
        flow(
            at=timedelta(seconds=3),
            node="node-1",
            source=pod("other", "x-0"),
            destination=pod("other", "y-0", port=80),
            mtls=False,
        ),
    ]


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    d = tmp_path / "flows"
    flows = scenario()
    for node in ("node-1", "node-2"):
        with FlowWriter(d, node) as w:
            for f in flows:
                if f.node == node:
                    w.write(f)
    return d


def test_json_output_is_every_flow_in_time_order(flows_dir: Path) -> None:
    """`-o json` prints one GetFlowsResponse per line, merged across nodes, oldest first."""
    r = nodemesh("--flows-dir", str(flows_dir), "-o", "json")
    assert r.returncode == 0, r.stderr
    got = [Flow.from_json(line) for line in r.stdout.splitlines()]
    assert got == scenario()
    assert all(set(json.loads(line)) == {"flow", "node_name", "time"} for line in r.stdout.splitlines())


def test_compact_drop_names_the_policy(flows_dir: Path) -> None:
    """Issue 5 done-means: `nodemesh observe` shows a denied flow with the deciding policy;
    `--verdict DROPPED` is Hubble's verdict filter."""
    r = nodemesh("--flows-dir", str(flows_dir), "--verdict", "DROPPED")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "Nov 27 09:12:03.123: shop/reporting-0:50000 (spiffe://cluster.local/ns/shop/sa/reporting) -> "
        "shop/orders-0:8080 (spiffe://cluster.local/ns/shop/sa/orders) Policy denied DROPPED "
        "(POLICY_DENIED: allow policies exist, but none allowed (ALLOW policies: shop/orders-allow-frontend))"
    ]
    ok = nodemesh(
        "--flows-dir",
        str(flows_dir),
        "--verdict",
        "FORWARDED",
        "--to-pod",
        "shop/orders",
        "--print-node-name",
    )
    lines = ok.stdout.splitlines()
    assert len(lines) == 2 and "[node-1]" in lines[0] and "[node-2]" in lines[1]
    assert "to-overlay FORWARDED (TCP) 120 B/900 B 3.0ms" in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--pod", "shop/reporting"], [2]),
        (["--pod", "shop/orders"], [0, 1, 2]),
        (["--from-pod", "shop/frontend", "--to-pod", "shop/orders"], [0, 1]),
        (["--namespace", "other"], [3]),
        (["-n", "shop", "--pod", "reporting"], [2]),
        (["--pod", "x-0"], []),  # no namespace: `default`
        (["--last", "2"], [2, 3]),
        (["--since", "2026-11-27T09:12:03.5Z"], [3]),
        (["--verdict", "dropped", "--verdict", "FORWARDED", "--last", "1"], [3]),
    ],
)
def test_filters(flows_dir: Path, args: list[str], expected: list[int]) -> None:
    """hubble observe's filter flags: either-end `--pod`/`--namespace`, `--from-pod` AND
    `--to-pod`, `--last N`, `--since`, repeated `--verdict` OR."""
    r = nodemesh("--flows-dir", str(flows_dir), "-o", "json", *args)
    assert r.returncode == 0, r.stderr
    flows = scenario()
    assert [Flow.from_json(line) for line in r.stdout.splitlines()] == [flows[i] for i in expected]


def test_usage_errors(tmp_path: Path) -> None:
    """Conflicting or bad flags exit 2 with Hubble's message; so does a missing directory."""
    r = nodemesh("--flows-dir", str(tmp_path), "--pod", "a", "--from-pod", "b")
    assert r.returncode == 2 and "filters --from-pod and --pod cannot be combined" in r.stderr
    r = nodemesh("--flows-dir", str(tmp_path), "--since", "soon")
    assert r.returncode == 2 and "--since" in r.stderr
    r = nodemesh("--flows-dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no flow directory" in r.stderr


def test_default_directory_is_the_clusters(tmp_path: Path, flows_dir: Path) -> None:
    """Without --flows-dir, the flows of the named cluster: `<run dir>/<name>/flows/`."""
    cluster = tmp_path / "run" / "demo"
    cluster.mkdir(parents=True)
    flows_dir.rename(cluster / "flows")
    r = nodemesh("--name", "demo", "--run-dir", str(tmp_path / "run"), "--verdict", "DROPPED", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [Flow.from_json(x) for x in r.stdout.splitlines()] == [scenario()[2]]
    r = nodemesh("--name", "absent", "--run-dir", str(tmp_path / "run"))
    assert r.returncode != 0 and "no cluster named 'absent'" in r.stderr


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from nodemesh observe --follow"
    return proc.stdout.readline().decode()


def test_follow_sees_a_record_appended_after_start(flows_dir: Path) -> None:
    """`--follow` keeps printing new flows: a record appended (by the node's writer, after a size
    rotation) once the command runs is printed; an interrupt ends it cleanly (exit 0)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodemesh.cli.main",
            "observe",
            "--flows-dir",
            str(flows_dir),
            "--follow",
            "--last",
            "1",
            "--verdict",
            "DROPPED",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        first = Flow.from_json(read_line(proc))
        assert first == scenario()[2]
        with FlowWriter(flows_dir, "node-2", max_bytes=1) as w:  # every write rotates first
            w.write(flow(at=timedelta(seconds=10)))  # FORWARDED: filtered out
            new = flow(at=timedelta(seconds=11), verdict=Verdict.DROPPED, reason="later")
            w.write(new)
        assert Flow.from_json(read_line(proc)) == new
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
