"""HBONE node proxy pair vs a haproxy mTLS 1.3 pair vs no proxy, measured in ONE run.

PERFORMANCE.md: figures drift 1.3-1.5x between runs, so only rows of one run compare; every
ratio here is against the haproxy pair of the same run (issue 5's targets are ratios).

Topology, all on loopback addresses of this machine (two "nodes" = two processes each side):
- origin: haproxy answering 1 KiB from memory on the server pod's address (127.0.60.10:18080),
  plus a bulk source (zeros for as long as the client reads) on :18090;
- direct: the client talks to the origin;
- haproxy pair: client-side haproxy (TCP) -> TLS 1.3 with client certificate, `verify
  required`, no session reuse -> server-side haproxy -> origin; one TLS connection per
  application connection (what ztunnel would look like without pooling, in C);
- nodemesh pair: `nodemesh.nodeproxy.testbed` client role (outbound, pooled HBONE) and server
  role (inbound 15008 -> origin with the client's address as source), one process each.
  A second client process with `--pool-idle 0` gives the unpooled new-connection cost.
Both pairs use the same SVIDs (a fresh nodemesh CA) and `nbthread 1` for haproxy, so each proxy is
one event loop, as the Python one is.

Measured: wrk 1 KiB keep-alive at 1 and 32 connections (rps, p50, p99), proxy CPU us per request
(utime+stime of both proxy processes over the run / requests), bulk throughput (one connection,
a Python reader), new connection cost (sequential connect + request + close, p50, and CPU per
connection), node proxy RSS after the runs and with 1,000 open connections.

    .venv/bin/python bench/hbone.py [--duration 5] [--json out.json]

Needs haproxy and wrk; run as root (IP_TRANSPARENT). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchlib import Row, TlsRoute, cpu_seconds, haproxy_mtls_pair, ratio, rss_mib

CLIENT_IP, SERVER_IP = "127.0.60.5", "127.0.60.10"
APP_PORT, BULK_PORT = 18080, 18090
HAPROXY_PORT, HAPROXY_BULK_PORT, HAPROXY_TLS_PORT, HAPROXY_TLS_BULK_PORT = 25001, 25002, 25008, 25009
NM_PORT, NM_BULK_PORT, NM_NOPOOL_PORT = 15001, 15002, 15003
TESTBED = [sys.executable, "-m", "nodemesh.nodeproxy.testbed"]
HAPROXY_ROUTES = (
    TlsRoute(
        "http",
        f"{CLIENT_IP}:{HAPROXY_PORT}",
        f"{SERVER_IP}:{HAPROXY_TLS_PORT}",
        f"{SERVER_IP}:{HAPROXY_TLS_PORT}",
        f"{SERVER_IP}:{APP_PORT}",
    ),
    TlsRoute(
        "bulk",
        f"{CLIENT_IP}:{HAPROXY_BULK_PORT}",
        f"{SERVER_IP}:{HAPROXY_TLS_BULK_PORT}",
        f"{SERVER_IP}:{HAPROXY_TLS_BULK_PORT}",
        f"{SERVER_IP}:{BULK_PORT}",
    ),
)
BODY = "x" * 1024


# ---- processes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def started(args: list[str], ready: str | None = "ready", env: dict[str, str] | None = None) -> Iterator[int]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != ready:
                proc.kill()
                raise RuntimeError(f"{args[:3]} did not start: {line!r} {proc.communicate()[1][-2000:]}")
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def haproxy(cfg: str, path: Path) -> list[str]:
    path.write_text(cfg)
    subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], check=True)
    return ["haproxy", "-db", "-f", str(path)]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not come up")


# ---- load ------------------------------------------------------------------------------------
def wrk(url: str, conns: int, duration: int) -> tuple[float, float, float, int]:
    threads = 1 if conns == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: errors in wrk run against {url}:\n{out}", file=sys.stderr)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}[m.group(2)]
        return float(m.group(1)) * scale

    return rps, pct("50"), pct("99"), total


def bulk_source(stop: threading.Event) -> threading.Thread:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((SERVER_IP, BULK_PORT))
    srv.listen(16)
    srv.settimeout(0.2)
    chunk = bytes(1024 * 1024)

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while not stop.is_set():
                conn.sendall(chunk)

    def accept() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    return t


def bulk(host: str, port: int, seconds: float) -> float:
    """Gbit/s read over one connection for `seconds` (after a short warm-up)."""
    buf = bytearray(1024 * 1024)
    with socket.create_connection((host, port), source_address=(CLIENT_IP, 0)) as s:
        end_warm = time.monotonic() + 0.3
        while time.monotonic() < end_warm:
            s.recv_into(buf)
        n = 0
        start = time.monotonic()
        end = start + seconds
        while True:
            got = s.recv_into(buf)
            if not got:
                break
            n += got
            now = time.monotonic()
            if now >= end:
                break
        return n * 8 / (now - start) / 1e9


def new_connections(host: str, port: int, count: int) -> list[float]:
    """Seconds per fresh connection carrying one request (connect, GET, full response, close)."""
    req = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection((host, port), source_address=(CLIENT_IP, 0)) as s:
            s.sendall(req)
            got = 0
            while chunk := s.recv(65536):
                got += len(chunk)
        out.append(time.perf_counter() - t0)
        assert got > 1024, f"short response from {host}:{port}"
    return out


def hold_connections(host: str, port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, port), source_address=(CLIENT_IP, 0))
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(4096)
    return socks


# ---- configs ---------------------------------------------------------------------------------
def origin_cfg() -> str:
    return f"""global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout client 60s
    timeout server 60s
    timeout connect 5s
frontend origin
    bind {SERVER_IP}:{APP_PORT}
    http-request return status 200 content-type text/plain string "{BODY}"
"""


# ---- the run ---------------------------------------------------------------------------------
def measure_http(row: Row, url: str, pids: Sequence[int], duration: int) -> None:
    for conns in (1, 32):
        before = cpu_seconds(pids)
        rps, p50, p99, total = wrk(url, conns, duration)
        cpu = (cpu_seconds(pids) - before) / max(total, 1) * 1e6 if pids else 0.0
        if conns == 1:
            row.rps1, row.p50_1, row.p99_1, row.cpu_us1 = rps, p50, p99, cpu
        else:
            row.rps32, row.p50_32, row.p99_32, row.cpu_us32 = rps, p50, p99, cpu


def measure_new(row: Row, host: str, port: int, pids: Sequence[int], count: int) -> None:
    new_connections(host, port, 5)  # warm-up (and, for the pool, the first handshake)
    before = cpu_seconds(pids)
    times = new_connections(host, port, count)
    row.new_cpu_ms = (cpu_seconds(pids) - before) / count * 1e3 if pids else 0.0
    row.new_p50_ms = statistics.median(times) * 1e3


def run(duration: int, new_count: int, bulk_seconds: float) -> list[Row]:
    rows = {name: Row(name) for name in ("direct", "haproxy pair", "nodemesh pair")}
    with tempfile.TemporaryDirectory(prefix="nmbench-hbone-") as tmp:
        d = Path(tmp)
        addrs = ["--client-ip", CLIENT_IP, "--server-ip", SERVER_IP, "--app-port", str(APP_PORT)]
        subprocess.run([*TESTBED, "certs", str(d), *addrs], check=True)
        for sa in ("client", "server"):
            (d / f"{sa}.crt").write_text((d / f"{sa}.pem").read_text() + (d / f"{sa}.key").read_text())
        stop = threading.Event()
        bulk_source(stop)
        with contextlib.ExitStack() as stack:
            stack.enter_context(started(haproxy(origin_cfg(), d / "origin.cfg"), ready=None))
            wait_port(SERVER_IP, APP_PORT)
            client_cfg, server_cfg = haproxy_mtls_pair(d, HAPROXY_ROUTES)
            hp_client = stack.enter_context(started(haproxy(client_cfg, d / "c.cfg"), ready=None))
            hp_server = stack.enter_context(started(haproxy(server_cfg, d / "s.cfg"), ready=None))
            wait_port(CLIENT_IP, HAPROXY_PORT)
            serve = [*TESTBED, "serve", str(d)]
            nm_server = stack.enter_context(started([*serve, "--role", "server", *addrs]))
            nm_client = stack.enter_context(
                started([*serve, "--role", "client", "--outbound-port", str(NM_PORT), *addrs])
            )
            bulk_addrs = ["--client-ip", CLIENT_IP, "--server-ip", SERVER_IP, "--app-port", str(BULK_PORT)]
            nm_bulk = stack.enter_context(
                started([*serve, "--role", "client", "--outbound-port", str(NM_BULK_PORT), *bulk_addrs])
            )
            nm_nopool = stack.enter_context(
                started(
                    [
                        *serve,
                        "--role",
                        "client",
                        "--pool-idle",
                        "0",
                        "--outbound-port",
                        str(NM_NOPOOL_PORT),
                        *addrs,
                    ]
                )
            )
            hp, nm = [hp_client, hp_server], [nm_client, nm_server]
            paths = {
                "direct": (SERVER_IP, APP_PORT, [], (SERVER_IP, BULK_PORT), []),
                "haproxy pair": (CLIENT_IP, HAPROXY_PORT, hp, (CLIENT_IP, HAPROXY_BULK_PORT), hp),
                "nodemesh pair": (CLIENT_IP, NM_PORT, nm, (CLIENT_IP, NM_BULK_PORT), [nm_bulk, nm_server]),
            }
            for name, (host, port, pids, bulk_addr, bulk_pids) in paths.items():
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                row = rows[name]
                measure_http(row, f"http://{host}:{port}/", pids, duration)
                row.bulk_gbit = bulk(*bulk_addr, bulk_seconds)
                measure_new(row, host, port, pids, new_count)
                del bulk_pids
            # the same without a pool: every application connection pays a full mTLS handshake
            print("measuring nodemesh without pool ...", file=sys.stderr, flush=True)
            nopool = Row("nodemesh, no pool")
            measure_new(nopool, CLIENT_IP, NM_NOPOOL_PORT, [nm_nopool, nm_server], max(new_count // 2, 20))
            rows["nodemesh pair"].extra["new_nopool_p50_ms"] = nopool.new_p50_ms
            rows["nodemesh pair"].extra["new_nopool_cpu_ms"] = nopool.new_cpu_ms
            nmrow = rows["nodemesh pair"]
            nmrow.extra["rss_client_mib"] = rss_mib(nm_client)
            nmrow.extra["rss_server_mib"] = rss_mib(nm_server)
            held = hold_connections(CLIENT_IP, NM_PORT, 1000)
            nmrow.extra["rss_client_1000_mib"] = rss_mib(nm_client)
            nmrow.extra["rss_server_1000_mib"] = rss_mib(nm_server)
            for s in held:
                s.close()
            stop.set()
    return list(rows.values())


def table(rows: list[Row]) -> str:
    hp = next(r for r in rows if r.path == "haproxy pair")
    direct = next(r for r in rows if r.path == "direct")
    lines = [
        "| path | rps @1 (p50 / p99 us) | rps @32 (p50 / p99 us) | proxy CPU us/req @1 / @32 | bulk Gbit/s | "
        "new conn p50 ms (CPU ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.path} | {r.rps1:,.0f} ({r.p50_1:.0f} / {r.p99_1:.0f}) | {r.rps32:,.0f} "
            f"({r.p50_32:.0f} / {r.p99_32:.0f}) | {r.cpu_us1:.0f} / {r.cpu_us32:.0f} | {r.bulk_gbit:.2f} | "
            f"{r.new_p50_ms:.2f} ({r.new_cpu_ms:.2f}) |"
        )
    nm = next(r for r in rows if r.path == "nodemesh pair")
    lines.append(
        f"| nodemesh, no pool | | | | | {nm.extra['new_nopool_p50_ms']:.2f} ({nm.extra['new_nopool_cpu_ms']:.2f}) |"
    )

    # latency added over direct; where direct's own tail is noisier than a proxy's (a shared
    # machine), the raw percentile is compared instead and says so
    def added(name: str, a: float, b: float, d: float) -> tuple[str, float, float, str]:
        if a - d > 0 and b - d > 0:
            return (f"{name} added over direct", a - d, b - d, "<= 1.2x")
        return (f"{name} (raw; direct was noisier)", a, b, "<= 1.2x")

    added_rows = [
        added("p50 @1", nm.p50_1, hp.p50_1, direct.p50_1),
        added("p99 @1", nm.p99_1, hp.p99_1, direct.p99_1),
    ]
    lines += [
        "",
        "| nodemesh vs haproxy (same run) | nodemesh | haproxy | ratio | target |",
        "|---|---|---|---|---|",
        f"| rps @32 | {nm.rps32:,.0f} | {hp.rps32:,.0f} | {ratio(nm.rps32, hp.rps32)} | >= 1.0x |",
        f"| proxy CPU us/req @32 | {nm.cpu_us32:.0f} | {hp.cpu_us32:.0f} | {ratio(nm.cpu_us32, hp.cpu_us32)} | <= 1.0x |",
        *(f"| {n} (us) | {a:.0f} | {b:.0f} | {ratio(a, b)} | {t} |" for n, a, b, t in added_rows),
        f"| bulk Gbit/s | {nm.bulk_gbit:.2f} | {hp.bulk_gbit:.2f} | {ratio(nm.bulk_gbit, hp.bulk_gbit)} | >= 0.9x |",
        f"| new conn p50, warm pool (ms) | {nm.new_p50_ms:.2f} | {hp.new_p50_ms:.2f} | "
        f"{ratio(nm.new_p50_ms, hp.new_p50_ms)} | <= 0.25x |",
        f"| new conn p50, no pool (ms) | {nm.extra['new_nopool_p50_ms']:.2f} | {hp.new_p50_ms:.2f} | "
        f"{ratio(nm.extra['new_nopool_p50_ms'], hp.new_p50_ms)} | - |",
        "",
        f"node proxy RSS (MiB): client {nm.extra['rss_client_mib']:.1f}, server {nm.extra['rss_server_mib']:.1f}; "
        f"with 1,000 open connections: client {nm.extra['rss_client_1000_mib']:.1f}, "
        f"server {nm.extra['rss_server_1000_mib']:.1f} (target <= 40 MB per node proxy)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--new", type=int, default=200, help="sequential new connections per path")
    parser.add_argument("--bulk-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(args.duration, args.new, args.bulk_seconds)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
