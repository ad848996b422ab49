"""No mesh vs the ambient node proxies vs a haproxy mTLS 1.3 pair, on ONE live local cluster.

Issue 5's `bench/` comparison, on the runtime rather than bench/hbone.py's loopback testbed:
one two-node cluster (name `nmbenchamb<hex>`, mode `ambient`), with every client pod on node-0
and every server pod on node-1, so each request crosses the underlay (172.18.0.0/24):

- no mesh: `client-plain` -> `server-plain` by pod IP; both pods opt out of the mesh with
  `istio.io/dataplane-mode: none` (Istio: a pod labelled so is not captured), so this is the
  mode `none` path of bench/baseline.py;
- ambient: `client-amb` -> `server-amb` by pod IP, plain HTTP captured in the pods (istio-cni's
  in-pod rules) and carried by node-0's node proxy over HBONE (mTLS 1.3, HTTP/2 CONNECT) to
  node-1's node proxy, which hands it to the server;
- haproxy pair: `client-plain` -> haproxy in node-0's network namespace (plain in, on the pod
  gateway 10.244.0.1) -> TLS 1.3 with a client certificate, `verify required`, to haproxy in
  node-1's namespace (its underlay address) -> `server-plain`. The same shape as the node proxy
  path, in C; `nbthread 1` so each proxy is one event loop, as a node proxy is; one TLS
  connection per application connection (no pooling), as in bench/hbone.py.

The servers are haproxy answering 1 KiB from memory (bench/baseline.py's static server) and
`nodemesh echo --discard` for bulk. Measured per path: wrk `--latency` 1 KiB keep-alive at 1 and
32 connections (rps, p50, p99), bulk throughput (one connection pushing zeros, as
bench/baseline.py), proxy CPU us per request (utime+stime of both proxy processes from
/proc/<pid>/stat over the wrk run / requests), and the node proxies' RSS after the runs.

New connections (issue 5's "cost of a new connection with and without a pooled HBONE
connection"): a sequential client in the client pod opens `--new` (200) fresh TCP connections,
each sending one request for the 1 KiB response and closing once it is read; p50/p99 per
connection (connect to last body byte). Paths: no mesh; ambient with a warm pool (five untimed
connections first, so node-0's node proxy holds an HBONE connection to server-amb, kept 5 min
idle); ambient with a cold pool; the haproxy pair (a full mTLS 1.3 handshake per connection, no
session reuse). The node proxy has no knob to disable its pool (`NodeProxyConfig` has no pool
settings), so the cold pool is forced from outside: before each timed connection the client
destroys the pooled HBONE socket in its own pod (`ss -K`, SOCK_DESTROY; the node proxy makes its
pool sockets in the pod's namespace, bound to the pod IP, to `<server-amb>:15008`), waits 50 ms
for the node proxy to see it gone, and checks afterwards that a new HBONE connection (another
local port) carried the request. The warm pool is checked once, after the run (no HBONE
connection may have appeared): an `ss` run before each connection used to be timed with it (a
process spawn on the same 2 cores added ~1.3 ms to every warm-pool connection).
Node proxy memory is also measured with `--idle-pods` (48) more ambient pods on node-0 (50 in
all) while the client pod holds `--held` (1,000) keep-alive connections through the proxies.
Ratios are against the haproxy pair of the same run (PERFORMANCE.md: figures drift 1.3-1.5x
between runs, so only rows of one run compare).

    .venv/bin/python bench/ambient.py [--duration 5] [--new 200]

Run as root; needs haproxy and wrk. Tears the cluster down (and the node haproxies first) on any
exit, leaving `ip netns list` as it was. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib import Row, TlsRoute, cpu_seconds, haproxy_mtls_pair, ratio, rss_mib

CLI = [sys.executable, "-m", "nodemesh.cli.main"]
TESTBED = [sys.executable, "-m", "nodemesh.nodeproxy.testbed"]
RUN_DIR = Path("/run/nodemesh")
BODY = "x" * 1024
STATIC_PORT, DISCARD_PORT = 8081, 9000
HP_HTTP, HP_BULK, HP_TLS_HTTP, HP_TLS_BULK = 25001, 25002, 25008, 25009

ORIGIN_CFG = f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout client 60s
    timeout server 60s
    timeout connect 5s
frontend static
    bind :{STATIC_PORT}
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


NEW_CLIENT = """
import json, socket, subprocess, sys, time
host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode()
hbone = ["state", "established", "dst", f"{host}:15008"]

def hbone_ports():
    out = subprocess.run(["ss", "-Htn", *hbone], capture_output=True, text=True, check=True).stdout
    return {line.split()[2] for line in out.splitlines() if line.strip()}

def one():
    start = time.perf_counter()
    s = socket.create_connection((host, port))
    s.sendall(request)
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\\r\\n\\r\\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(h.split(b":")[1] for h in head.split(b"\\r\\n") if h.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, body
        body += chunk
    elapsed = time.perf_counter() - start
    s.close()
    return elapsed

for _ in range(5):
    one()
times, fresh = [], 0
start = hbone_ports() if mode == "warm" else set()
for _ in range(count):
    if mode == "cold":
        before = hbone_ports()
        subprocess.run(["ss", "-K", *hbone], capture_output=True, check=True)
        time.sleep(0.05)
    times.append(one())
    if mode == "cold":
        fresh += bool(hbone_ports() - before)
if mode == "warm":  # checked once: an `ss` before each connection would be timed with it
    fresh = len(hbone_ports() - start)
print(json.dumps({"times": times, "fresh_hbone": fresh}))
"""


HOLD_CLIENT = """
import socket, sys, time
host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
request = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n".encode()
held = []
for _ in range(count):
    s = socket.create_connection((host, port))
    s.sendall(request)
    data = b""
    while b"x" * 1024 not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    held.append(s)
print(f"held {len(held)}", flush=True)
time.sleep(hold)
"""


RESTORE_CLIENT = """
import json, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
request = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode()
deadline, tries = time.monotonic() + timeout, 0
while time.monotonic() < deadline:
    tries += 1
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(request)
            if s.recv(65536).startswith(b"HTTP/1.1 200"):
                print(json.dumps({"ok": time.time(), "tries": tries}))
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
print(json.dumps({"ok": None, "tries": tries}))
"""


@dataclass
class NewConn:
    path: str
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    fresh_hbone: int = -1
    """Ambient only: timed connections after which a new HBONE connection (local port) existed."""


def manifests(name: str, origin_cfg: Path, idle_pods: int) -> str:
    def pod(pod_name: str, node: str, mesh: bool, server: bool) -> str:
        labels = f"app: {pod_name}" + ("" if mesh else ", istio.io/dataplane-mode: none")
        if not server:
            containers = "    - {name: idle, command: [sleep, infinity]}"
        else:
            containers = f"""    - name: echo
      command: [nodemesh, echo, --discard, "{DISCARD_PORT}", --no-access-log]
      ports: [{{name: discard, containerPort: {DISCARD_PORT}}}]
    - name: haproxy
      command: [haproxy, -db, -f, "{origin_cfg}"]
      ports: [{{name: static, containerPort: {STATIC_PORT}}}]"""
        return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {pod_name}, namespace: bench, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  containers:
{containers}
"""

    return (
        f"""apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec: {{nodes: 2, mode: ambient}}
"""
        + pod("client-plain", "node-0", False, False)
        + pod("server-plain", "node-1", False, True)
        + pod("client-amb", "node-0", True, False)
        + pod("server-amb", "node-1", True, True)
        + "".join(pod(f"idle-{i}", "node-0", True, False) for i in range(idle_pods))
    )


# ---- the cluster -------------------------------------------------------------------------------
def run(*args: str, timeout: float = 120) -> str:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise SystemExit(
            f"nodemesh {' '.join(args[:3])} failed ({out.returncode}):\n{out.stdout}{out.stderr}"
        )
    return out.stdout


def host_pid(init_pid: int, sandbox_pid: int) -> int:
    """The host PID of the process that is `sandbox_pid` inside the sandbox of `init_pid`."""
    ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / "pid") != ns:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == sandbox_pid:
                    return int(entry.name)
    raise RuntimeError(f"no process {sandbox_pid} in the sandbox of {init_pid}")


@contextlib.contextmanager
def in_node(init_pid: int, name: str, node: str, argv: list[str]) -> Iterator[int]:
    """Run `argv` in the node's network namespace (a file of the sandbox's mount namespace)."""
    netns = f"/proc/{init_pid}/root{RUN_DIR}/{name}/netns/{node}"
    proc = subprocess.Popen(["nsenter", f"--net={netns}", *argv], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} in {node} exited with {proc.returncode}")
        yield proc.pid  # nsenter execs the command: same PID
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- measurements ------------------------------------------------------------------------------


def wrk(name: str, client: str, url: str, conns: int, seconds: int) -> tuple[float, float, float, int]:
    threads = 1 if conns == 1 else 2
    out = run(
        "exec", "--name", name, f"bench/{client}", "--",
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", url,
        timeout=seconds + 60,
    )  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: errors in wrk run against {url}:\n{out}", file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 1.0, "ms": 1000.0, "s": 1e6}[m.group(2)]

    return rps, pct("50"), pct("99"), total


def measure(
    row: Row, name: str, client: str, *, url: str, bulk_to: tuple[str, int], pids: Sequence[int], seconds: int
) -> None:
    print(f"measuring {row.path} ...", file=sys.stderr, flush=True)
    for conns in (1, 32):
        before = cpu_seconds(pids)
        rps, p50, p99, total = wrk(name, client, url, conns, seconds)
        cpu = (cpu_seconds(pids) - before) / max(total, 1) * 1e6 if pids else 0.0
        if conns == 1:
            row.rps1, row.p50_1, row.p99_1, row.cpu_us1 = rps, p50, p99, cpu
        else:
            row.rps32, row.p50_32, row.p99_32, row.cpu_us32 = rps, p50, p99, cpu
    host, port = bulk_to
    out = run(
        "exec", "--name", name, f"bench/{client}", "--",
        sys.executable, "-c", BULK_CLIENT, host, str(port), str(seconds),
        timeout=seconds + 60,
    )  # fmt: skip
    bulk = json.loads(out)
    row.bulk_gbit = bulk["received"] * 8 / bulk["seconds"] / 1e9


def measure_new(conn: NewConn, name: str, client: str, *, to: tuple[str, int], count: int, mode: str) -> None:
    print(f"measuring new connections, {conn.path} ...", file=sys.stderr, flush=True)
    out = run(
        "exec", "--name", name, f"bench/{client}", "--",
        sys.executable, "-c", NEW_CLIENT, to[0], str(to[1]), str(count), mode,
        timeout=count * 2 + 60,
    )  # fmt: skip
    result = json.loads(out)
    times = sorted(result["times"])
    conn.p50_ms = statistics.median(times) * 1e3
    conn.p99_ms = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] * 1e3
    if mode != "plain":
        conn.fresh_hbone = int(result["fresh_hbone"])


def held_rss(name: str, server: str, proxies: dict[str, int], *, count: int, pods: int) -> dict[str, float]:
    """Node proxy RSS while the client pod holds `count` open keep-alive connections through
    them (issue 5's memory target: "with 50 pods and 1,000 open connections")."""
    print(f"measuring RSS with {count} open connections ...", file=sys.stderr, flush=True)
    argv = [*CLI, "exec", "--name", name, "bench/client-amb", "--"]
    argv += [sys.executable, "-u", "-c", HOLD_CLIENT, server, str(STATIC_PORT), str(count), "15"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != f"held {count}":
            raise RuntimeError(f"the holding client said {line!r}")
        time.sleep(1.0)
        return {
            f"node-0 ({pods} ambient pods, {count:,} open connections)": rss_mib(proxies["node-0"]),
            f"node-1 ({count:,} open connections)": rss_mib(proxies["node-1"]),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def restore_seconds(name: str, server: str, init_pid: int, node: str) -> float | None:
    """Issue 5's "restarting the node proxy restores service within 2 seconds for new
    connections": SIGKILL `node`'s node proxy (the supervisor restarts it; the in-pod capture
    stays, so the pods fail closed meanwhile), then time until a NEW connection from client-amb to
    server-amb gets its response (a fresh connection every 10 ms). None: not within 30 s."""
    print(f"measuring service restoration after killing {node}'s node proxy ...", file=sys.stderr, flush=True)
    status = json.loads(run("status", "--name", name, "-o", "json"))
    sandbox_pid = next(int(p["pid"]) for p in status["node_proxies"] if p["node"] == node)
    killed = time.time()
    os.kill(host_pid(init_pid, sandbox_pid), signal.SIGKILL)
    argv = ["exec", "--name", name, "bench/client-amb", "--", sys.executable, "-c", RESTORE_CLIENT]
    out = json.loads(run(*argv, server, str(STATIC_PORT), "30", timeout=60).strip().splitlines()[-1])
    return None if out["ok"] is None else float(out["ok"]) - killed


def bench(
    seconds: int, new_count: int, idle_pods: int = 48, held: int = 1000
) -> tuple[list[Row], dict[str, float], list[NewConn]]:
    name = f"nmbenchamb{secrets.token_hex(3)}"
    rows = [Row("no mesh"), Row("ambient node proxies"), Row("haproxy mTLS pair")]
    news = [
        NewConn("no mesh"),
        NewConn("ambient, warm pool"),
        NewConn("ambient, cold pool (HBONE socket destroyed first)"),
        NewConn("haproxy mTLS pair (handshake per connection)"),
    ]
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nmbench-amb-") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o755)
        origin = d / "origin.cfg"
        origin.write_text(ORIGIN_CFG)
        (d / "manifests").mkdir()
        (d / "manifests" / "bench.yaml").write_text(manifests(name, origin, idle_pods))
        subprocess.run([*TESTBED, "certs", str(d)], check=True, capture_output=True)
        for sa in ("client", "server"):
            (d / f"{sa}.crt").write_text((d / f"{sa}.pem").read_text() + (d / f"{sa}.key").read_text())
        try:
            print(f"up {name} ...", file=sys.stderr, flush=True)
            run("up", "-f", str(d / "manifests"), "--name", name)
            status = json.loads(run("status", "--name", name, "-o", "json"))
            init_pid = int((RUN_DIR / name / "supervisor.pid").read_text().split()[0])
            ip = {p["name"]: p["ip"] for p in status["pods"]}
            underlay = {n[0]: n[1].split("/")[0] for n in status["nodes"]}
            pod_cidr0 = status["nodes"][0][2]
            gateway0 = pod_cidr0.split("/")[0].rsplit(".", 1)[0] + ".1"
            proxies = {p["node"]: host_pid(init_pid, int(p["pid"])) for p in status["node_proxies"]}
            nm_pids = [proxies["node-0"], proxies["node-1"]]
            node1, plain_ip = underlay["node-1"], ip["server-plain"]
            client_cfg, server_cfg = haproxy_mtls_pair(
                d,
                [
                    TlsRoute(
                        "http",
                        f":{HP_HTTP}",
                        f"{node1}:{HP_TLS_HTTP}",
                        f":{HP_TLS_HTTP}",
                        f"{plain_ip}:{STATIC_PORT}",
                    ),
                    TlsRoute(
                        "bulk",
                        f":{HP_BULK}",
                        f"{node1}:{HP_TLS_BULK}",
                        f":{HP_TLS_BULK}",
                        f"{plain_ip}:{DISCARD_PORT}",
                    ),
                ],
            )
            (d / "c.cfg").write_text(client_cfg)
            (d / "s.cfg").write_text(server_cfg)
            for cfg in ("c.cfg", "s.cfg"):
                subprocess.run(["haproxy", "-c", "-q", "-f", str(d / cfg)], check=True)
            with contextlib.ExitStack() as stack:
                hp_client = stack.enter_context(
                    in_node(init_pid, name, "node-0", ["haproxy", "-db", "-f", str(d / "c.cfg")])
                )
                hp_server = stack.enter_context(
                    in_node(init_pid, name, "node-1", ["haproxy", "-db", "-f", str(d / "s.cfg")])
                )
                plain, amb = ip["server-plain"], ip["server-amb"]
                paths: tuple[tuple[str, str, tuple[str, int], list[int]], ...] = (
                    ("client-plain", f"http://{plain}:{STATIC_PORT}/", (plain, DISCARD_PORT), nm_pids),
                    ("client-amb", f"http://{amb}:{STATIC_PORT}/", (amb, DISCARD_PORT), nm_pids),
                    (
                        "client-plain",
                        f"http://{gateway0}:{HP_HTTP}/",
                        (gateway0, HP_BULK),
                        [hp_client, hp_server],
                    ),
                )
                for row, (client, url, bulk_to, pids) in zip(rows, paths, strict=True):
                    measure(row, name, client, url=url, bulk_to=bulk_to, pids=pids, seconds=seconds)
                new_paths = (
                    ("client-plain", plain, STATIC_PORT, "plain"),
                    ("client-amb", amb, STATIC_PORT, "warm"),
                    ("client-amb", amb, STATIC_PORT, "cold"),
                    ("client-plain", gateway0, HP_HTTP, "plain"),
                )
                for conn, (client, host, port, mode) in zip(news, new_paths, strict=True):
                    measure_new(conn, name, client, to=(host, port), count=new_count, mode=mode)
                rss = {node: rss_mib(pid) for node, pid in proxies.items()}
                rss["haproxy node-0"] = rss_mib(hp_client)
                rss["haproxy node-1"] = rss_mib(hp_server)
                if held:
                    rss |= held_rss(name, amb, proxies, count=held, pods=idle_pods + 1)
                for node in ("node-1", "node-0"):
                    restored = restore_seconds(name, amb, init_pid, node)
                    rss[f"restore {node}"] = restored if restored is not None else float("nan")
        finally:
            subprocess.run([*CLI, "down", "--name", name], capture_output=True, check=False, timeout=60)
    return rows, rss, news


def new_table(news: list[NewConn], count: int) -> str:
    hp = news[-1]
    lines = [
        f"New connections: {count} sequential, each a fresh TCP connection from the client pod, one request "
        "(1 KiB response), closed; time = connect to last body byte",
        "",
        "| path | p50 ms | p99 ms | p50 vs haproxy | target |",
        "|---|---|---|---|---|",
    ]
    for c in news:
        path = c.path + (f"; {c.fresh_hbone}/{count} on a new HBONE connection" if c.fresh_hbone >= 0 else "")
        target = "<= 0.25x" if c.path.startswith("ambient, warm") else "-"
        lines.append(
            f"| {path} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {ratio(c.p50_ms, hp.p50_ms)} | {target} |"
        )
    return "\n".join(lines)


def table(rows: list[Row], rss: dict[str, float], seconds: int) -> str:
    direct, nm, hp = rows
    lines = [
        f"{os.cpu_count()} cores, wrk {seconds}s per row, 1 KiB keep-alive, client pods on node-0, servers on node-1",
        "",
        "| path | rps @1 (p50 / p99 us) | rps @32 (p50 / p99 us) | proxy CPU us/req @1 / @32 | bulk Gbit/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r.cpu_us1:.0f} / {r.cpu_us32:.0f}"
        if r is direct:  # the node proxies' CPU: ~0 shows the opted-out pods are not captured
            cpu += " (idle node proxies)"
        lines.append(
            f"| {r.path} | {r.rps1:,.0f} ({r.p50_1:.0f} / {r.p99_1:.0f}) | {r.rps32:,.0f} "
            f"({r.p50_32:.0f} / {r.p99_32:.0f}) | {cpu} | {r.bulk_gbit:.2f} |"
        )

    def added(label: str, a: float, b: float, base: float) -> str:
        if a - base > 0 and b - base > 0:
            return f"| {label} added over no mesh (us) | {a - base:.0f} | {b - base:.0f} | {ratio(a - base, b - base)} | <= 1.2x |"
        return f"| {label} (raw us; no mesh was noisier) | {a:.0f} | {b:.0f} | {ratio(a, b)} | <= 1.2x |"

    lines += [
        "",
        "| node proxies vs haproxy pair (same run) | node proxies | haproxy | ratio | target |",
        "|---|---|---|---|---|",
        f"| rps @32 | {nm.rps32:,.0f} | {hp.rps32:,.0f} | {ratio(nm.rps32, hp.rps32)} | >= 1.0x |",
        f"| rps @1 | {nm.rps1:,.0f} | {hp.rps1:,.0f} | {ratio(nm.rps1, hp.rps1)} | - |",
        f"| proxy CPU us/req @32 | {nm.cpu_us32:.0f} | {hp.cpu_us32:.0f} | {ratio(nm.cpu_us32, hp.cpu_us32)} | <= 1.0x |",
        f"| proxy CPU us/req @1 | {nm.cpu_us1:.0f} | {hp.cpu_us1:.0f} | {ratio(nm.cpu_us1, hp.cpu_us1)} | - |",
        added("p50 @1", nm.p50_1, hp.p50_1, direct.p50_1),
        added("p99 @1", nm.p99_1, hp.p99_1, direct.p99_1),
        f"| bulk Gbit/s | {nm.bulk_gbit:.2f} | {hp.bulk_gbit:.2f} | {ratio(nm.bulk_gbit, hp.bulk_gbit)} | >= 0.9x |",
        "",
        "RSS after the runs (MiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rss.items() if not k.startswith("restore"))
        + " (node proxy target <= 40 MB with 50 pods and 1,000 connections)",
        "",
        "Node proxy killed (SIGKILL) -> a new connection served again (s): "
        + ", ".join(
            f"{k.removeprefix('restore ')} {v:.2f}" for k, v in rss.items() if k.startswith("restore")
        )
        + " (target <= 2 s; includes the supervisor's 0.25 s restart delay and `nodemesh exec`)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per wrk run and bulk run (default 5)"
    )
    parser.add_argument(
        "--new", type=int, default=200, help="sequential new connections per path (default 200)"
    )
    parser.add_argument(
        "--idle-pods", type=int, default=48, help="extra idle ambient pods on node-0 (default 48: 50 in all)"
    )
    parser.add_argument(
        "--held",
        type=int,
        default=1000,
        help="open connections while RSS is measured (default 1000; 0: skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/ambient.py builds a cluster from namespaces: run it as root")
    rows, rss, news = bench(args.duration, args.new, args.idle_pods, args.held)
    print(table(rows, rss, args.duration))
    print()
    print(new_table(news, args.new))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [r.__dict__ for r in rows],
                    "rss_mib": rss,
                    "new_connections": [c.__dict__ for c in news],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
