"""Helpers shared by the benchmark scripts (bench/*.py): process CPU and memory from /proc, ratios.

The scripts run as `python bench/<name>.py`, so this module is importable as `benchlib`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Row", "cpu_seconds", "ratio", "rss_mib"]


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
