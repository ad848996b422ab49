"""Connection churn: a new application connection per request, 32 at a time, through a node proxy
pair running in its own process (uvloop). Issue 5: "uvloop 0.23's Protocol relay aborted once
with 'double free or corruption' under 32-connection churn ... Test churn explicitly". A crash
shows up here as a dead proxy process or an abort message, not as a dead test runner."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHURN_SECONDS = int(os.environ.get("NODEMESH_CHURN_SECONDS", "6"))
CLIENT_IP, SERVER_IP, APP_PORT, OUT_PORT = "127.0.77.5", "127.0.77.10", 18080, 15001


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodemesh.nodeproxy.testbed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"testbed did not start: {line!r} {err}")
    return proc


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    addrs = ["--client-ip", CLIENT_IP, "--server-ip", SERVER_IP, "--app-port", str(APP_PORT)]
    subprocess.run(
        [sys.executable, "-m", "nodemesh.nodeproxy.testbed", "certs", str(tmp_path), *addrs], check=True
    )
    app = _start(["app", *addrs])
    proxy = _start(["serve", str(tmp_path), "--role", "both", "--outbound-port", str(OUT_PORT), *addrs])
    try:
        yield proxy
    finally:
        for p in (proxy, app):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_churn_new_connection_per_request(pair: subprocess.Popen[str]) -> None:
    """32 clients, each request on a new connection (`Connection: close`), for several seconds:
    every request succeeds, the proxy survives, exits cleanly on SIGTERM and logs no error."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{CHURN_SECONDS}s",
            "-H",
            "Connection: close",
            f"http://{CLIENT_IP}:{OUT_PORT}/",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=CHURN_SECONDS + 30,
    ).stdout
    assert pair.poll() is None, "the node proxy died under churn"
    time.sleep(2)  # let connections wrk abandoned at its deadline drain before stopping the proxy
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 200 * CHURN_SECONDS, out
    assert "Non-2xx" not in out, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert errors is None or all(int(n) == 0 for n in errors.groups()), out
    pair.send_signal(signal.SIGTERM)
    stdout, stderr = pair.communicate(timeout=20)
    assert pair.returncode == 0, stderr
    assert "double free" not in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert '"errors": 0' in stdout, stdout
