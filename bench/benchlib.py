"""Helpers shared by the benchmark scripts (bench/*.py): process CPU and memory from /proc, ratios.

The scripts run as `python bench/<name>.py`, so this module is importable as `benchlib`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["cpu_seconds", "ratio", "rss_mib"]


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
