"""A real `nodemesh controlplane` subprocess for tests: started, waited for (its ready line,
never a sleep), SIGKILLed and restarted on the same state directory and address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest


class ControlPlaneProcess:
    def __init__(self, state_dir: Path, listen: str, manifests: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.listen = listen
        self.manifests = manifests
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, object] = {}
        self.stderr: IO[str] | None = None

    @property
    def admin(self) -> str:
        return f"unix:{self.state_dir / 'admin.sock'}"

    @property
    def nodes_address(self) -> str:
        return str(self.ready["nodes"])

    def start(self, timeout: float = 30.0) -> ControlPlaneProcess:
        args = [sys.executable, "-m", "nodemesh.cli.main", "controlplane", "--state-dir", str(self.state_dir)]
        args += ["--listen", self.listen]
        for m in self.manifests:
            args += ["-f", m]
        self.stderr = (self.state_dir.parent / f"{self.state_dir.name}.stderr").open("a")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=dict(os.environ)
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the ready line (or EOF if it died)
        if not line:
            self.proc.wait(timeout)
            err = (self.state_dir.parent / f"{self.state_dir.name}.stderr").read_text()
            pytest.fail(f"the control plane exited with {self.proc.returncode}: {err}")
        self.ready = json.loads(line)
        assert self.ready["event"] == "ready"
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None
