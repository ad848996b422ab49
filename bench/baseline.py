"""The no-mesh baseline: pod-to-pod HTTP and bulk throughput over a local cluster in mode `none`.

Every later data path (ambient, kernel) is compared with these figures, measured the same way
in the same run (PERFORMANCE.md: figures drift 1.3-1.5x between runs, so only rows of one run
compare). It builds its own two-node cluster (name `nmbench<hex>`), with the client pod on
node-0 and the servers on node-1, so every request crosses the underlay, and removes it after.

- HTTP: `wrk --latency` from the client pod at 1 and 32 connections, against two servers:
  haproxy answering 1 KiB from memory (a C server: the network path's cost, like the nginx
  reference in PERFORMANCE.md) and `nodemesh echo` (the Python test app: what the tests see),
  each by pod IP and by ClusterIP (one kube-proxy-style DNAT).
- Bulk: one TCP connection pushing zeros for a few seconds into `nodemesh echo --discard`.

Run as root: `.venv/bin/python bench/baseline.py [--duration 5]`. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "nodemesh.cli.main"]
BODY = "x" * 1024

HAPROXY_CFG = f"""global
    maxconn 4096
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend static
    bind :8081
    http-request return status 200 content-type text/plain string "{BODY}"
"""

BULK_CLIENT = """
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
buf = b"\\0" * (1 << 20)
s = socket.create_connection((host, port))
sent, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
reply = json.loads(s.makefile().readline())
elapsed = time.perf_counter() - start
print(json.dumps({"sent": sent, "received": reply["bytes"], "seconds": elapsed}))
"""


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    connections: int
    rps: float
    p50_us: float
    p99_us: float


def manifests(name: str, haproxy_cfg: Path) -> str:
    return f"""
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec: {{nodes: 2, mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: bench}}
spec:
  nodeName: node-0
  containers:
    - {{name: idle, command: [sleep, infinity]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
spec:
  nodeName: node-1
  containers:
    - name: echo
      command: [nodemesh, echo, --http, "8080", --discard, "9000", --no-access-log]
      ports: [{{name: http, containerPort: 8080}}, {{name: discard, containerPort: 9000}}]
    - name: haproxy
      command: [haproxy, -db, -f, "{haproxy_cfg}"]
      ports: [{{name: static, containerPort: 8081}}]
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: bench}}
spec:
  selector: {{app: server}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
    - {{name: static, port: 81, targetPort: static}}
"""


def run(*args: str, timeout: float = 120) -> str:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise SystemExit(
            f"nodemesh {' '.join(args[:3])} failed ({out.returncode}):\n{out.stdout}{out.stderr}"
        )
    return out.stdout


def _micros(value: str, unit: str) -> float:
    return float(value) * {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}[unit]


def wrk(name: str, url: str, connections: int, seconds: int) -> tuple[float, float, float]:
    threads = 1 if connections == 1 else 2
    out = run(
        "exec", "--name", name, "bench/client", "--",
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url,
    )  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p50 and p99, out
    return rps, _micros(*p50.groups()), _micros(*p99.groups())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/baseline.py builds a cluster from namespaces: run it as root")
    name = f"nmbench{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="nmbench") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG)
        (Path(tmp) / "bench.yaml").write_text(manifests(name, cfg))
        rows: list[Row] = []
        try:
            run("up", "-f", tmp, "--name", name)
            status = json.loads(run("status", "--name", name, "-o", "json"))
            server_ip = next(p["ip"] for p in status["pods"] if p["name"] == "server")
            vip = next(s["cluster_ip"] for s in status["services"] if s["name"] == "server")
            targets = [
                ("haproxy 1 KiB, pod IP, cross-node", f"http://{server_ip}:8081/"),
                ("haproxy 1 KiB, ClusterIP (DNAT)", f"http://{vip}:81/"),
                ("nodemesh echo, pod IP, cross-node", f"http://{server_ip}:8080/"),
                ("nodemesh echo, ClusterIP (DNAT)", f"http://{vip}:80/"),
            ]
            for label, url in targets:
                for conns in (1, 32):
                    rps, p50, p99 = wrk(name, url, conns, args.duration)
                    rows.append(Row(label, conns, rps, p50, p99))
            bulk = json.loads(
                run(
                    "exec",
                    "--name",
                    name,
                    "bench/client",
                    "--",
                    sys.executable,
                    "-c",
                    BULK_CLIENT,
                    server_ip,
                    "9000",
                    str(args.duration),
                )
            )
        finally:
            subprocess.run([*CLI, "down", "--name", name], capture_output=True, check=False)
    print(f"no-mesh baseline (mode none), {os.cpu_count()} cores, wrk {args.duration}s per row")
    print(f"| {'path':36} | conns | {'rps':>8} | {'p50 us':>8} | {'p99 us':>8} |")
    print(f"|{'-' * 38}|-------|----------|----------|----------|")
    for r in rows:
        print(f"| {r.path:36} | {r.connections:5} | {r.rps:8.0f} | {r.p50_us:8.0f} | {r.p99_us:8.0f} |")
    gbit = bulk["received"] * 8 / bulk["seconds"] / 1e9
    print(f"bulk TCP, one connection, cross-node, into `nodemesh echo --discard`: {gbit:.2f} Gbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
