"""Helpers shared by the benchmark scripts (bench/*.py): process CPU and memory from /proc, ratios.

The scripts run as `python bench/<name>.py`, so this module is importable as `benchlib`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Row", "TlsRoute", "cpu_seconds", "haproxy_mtls_pair", "ratio", "rss_mib"]


@dataclass
class Row:
    """One measured path of a data-path benchmark: wrk at 1 and 32 connections, proxy CPU, bulk,
    new-connection cost; `extra` for script-specific figures."""

    path: str
    rps1: float = 0.0
    p50_1: float = 0.0
    p99_1: float = 0.0
    rps32: float = 0.0
    p50_32: float = 0.0
    p99_32: float = 0.0
    cpu_us1: float = 0.0
    cpu_us32: float = 0.0
    bulk_gbit: float = 0.0
    new_p50_ms: float = 0.0
    new_cpu_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of `pids` so far (/proc/<pid>/stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ratio(a: float, b: float) -> str:
    """`a / b` as `1.23x`, or `-` when there is no baseline."""
    return f"{a / b:.2f}x" if b else "-"


@dataclass(frozen=True)
class TlsRoute:
    """One port of the haproxy mTLS reference pair: the application connects in plain to
    `client_bind`; the client-side haproxy opens TLS 1.3 with its certificate to `tls_connect`,
    where the server-side haproxy listens (`tls_bind`, verify required) and forwards in plain to
    `upstream`. Addresses are haproxy's `host:port` (`:port` = every address)."""

    name: str
    client_bind: str
    tls_connect: str
    tls_bind: str
    upstream: str


_HAPROXY_HEAD = """global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout client 60s
    timeout server 60s
    timeout connect 5s
"""


def haproxy_mtls_pair(d: Path, routes: Sequence[TlsRoute]) -> tuple[str, str]:
    """The client-side and server-side haproxy configs of the reference pair: one event loop each
    (`nbthread 1`, as a node proxy is one), TLS 1.3 only, client certificates verified against
    `d/bundle.pem`, and no session reuse (a full handshake per connection, as the node proxy's
    unpooled path). Certificates: `d/client.crt`, `d/server.crt` (PEM chain + key)."""
    client_tls = (
        f"ssl crt {d}/client.crt ca-file {d}/bundle.pem verify required ssl-min-ver TLSv1.3 no-ssl-reuse"
    )
    server_tls = f"ssl crt {d}/server.crt ca-file {d}/bundle.pem verify required ssl-min-ver TLSv1.3"
    client, server = [_HAPROXY_HEAD], [_HAPROXY_HEAD]
    for r in routes:
        client.append(f"frontend {r.name}\n    bind {r.client_bind}\n    default_backend {r.name}\n")
        client.append(f"backend {r.name}\n    server s {r.tls_connect} {client_tls}\n")
        server.append(
            f"frontend {r.name}\n    bind {r.tls_bind} {server_tls}\n    default_backend {r.name}\n"
        )
        server.append(f"backend {r.name}\n    server o {r.upstream}\n")
    return "".join(client), "".join(server)
