"""The supervisor's handling of the mesh's processes: output lines, gates, restarts with backoff."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from nodemesh.runtime.mesh import RestartBackoff, Supervised

PRINT_AND_EXIT = "import json; print(json.dumps({'event': 'hello', 'n': 1})); print('not json'); print('[1]')"
WAIT_FOR_GO = "import json, sys; sys.stdin.readline(); print(json.dumps({'event': 'go'}), flush=True)"


def test_restart_backoff_doubles_up_to_a_cap() -> None:
    """kubelet: containers are restarted "with an exponential back-off delay (10s, 20s, 40s, …),
    that is capped at five minutes", and the backoff is reset after a run of 10 minutes; the
    local runtime keeps the shape with shorter times."""
    backoff = RestartBackoff(initial=0.25, maximum=2.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


async def _reap(process: Supervised) -> None:
    assert process.process is not None
    pid, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, process.process.pid, 0)
    assert process.reaped(pid, status)


def _supervised(tmp_path: Path, code: str, lines: list[dict[str, object]], **kw: object) -> Supervised:
    return Supervised(
        "test",
        [sys.executable, "-c", code],
        tmp_path / "log",
        lines.append,
        lambda: None,
        backoff=RestartBackoff(initial=0.01, maximum=0.02, reset_after=60.0),
        **kw,  # type: ignore[arg-type]
    )


def test_json_lines_are_delivered_and_an_exit_is_restarted(tmp_path: Path) -> None:
    """Only JSON objects reach the callback; an exit is recorded with its code and the process
    is started again after the backoff."""

    async def main() -> None:
        lines: list[dict[str, object]] = []
        process = _supervised(tmp_path, PRINT_AND_EXIT, lines)
        process.start()
        first = process.process
        await _reap(process)
        assert lines == [{"event": "hello", "n": 1}]
        assert process.exit_code == 0 and process.restarts == 1 and process.phase(True) == "Restarting"
        while process.process is first:
            await asyncio.sleep(0.01)
        assert process.running and process.phase(False) == "Starting"
        await _reap(process)
        assert len(lines) == 2 and process.restarts == 2
        process.signal(signal.SIGTERM)  # stopping: no more restarts
        assert process.phase(True) == "Stopped" and not process.restart_pending

    asyncio.run(main())


def test_a_gated_process_waits_for_its_release(tmp_path: Path) -> None:
    """A node agent is spawned while the cluster is built and told to go once the control plane
    serves; its restarts are released at once."""

    async def main() -> None:
        lines: list[dict[str, object]] = []
        process = _supervised(tmp_path, WAIT_FOR_GO, lines, gated=True)
        process.start()
        await asyncio.sleep(0.3)
        assert lines == [] and process.running
        process.release()
        await _reap(process)
        assert lines == [{"event": "go"}]
        while not process.running:
            await asyncio.sleep(0.01)
        await _reap(process)  # the restart did not wait for another release
        assert lines == [{"event": "go"}, {"event": "go"}]
        process.signal(signal.SIGTERM)

    asyncio.run(main())


def test_a_process_spawned_before_the_loop_is_attached_later(tmp_path: Path) -> None:
    """The supervisor spawns the control plane before its event loop runs; what it printed in
    the meantime is read once attached."""
    lines: list[dict[str, object]] = []
    process = _supervised(tmp_path, PRINT_AND_EXIT, lines)
    process.start()

    async def main() -> None:
        process.attach()
        await _reap(process)
        process.signal(signal.SIGTERM)

    asyncio.run(main())
    assert lines == [{"event": "hello", "n": 1}]


def test_a_control_plane_that_exits_before_serving_fails_the_build(tmp_path: Path) -> None:
    """A control plane that never served is a configuration error, not a crash to retry: the
    supervisor reports it (with the end of its log) and `up` fails; once it has served, an exit
    is only restarted."""
    from nodemesh.runtime.mesh import MeshProcesses
    from nodemesh.runtime.state import ClusterDir

    state = ClusterDir(tmp_path / "c")
    state.root.mkdir()

    async def main() -> None:
        mesh = MeshProcesses(state)
        mesh.controlplane.argv = [sys.executable, "-c", "import sys; sys.exit('boom: bad store')"]
        mesh.start_controlplane()
        mesh.attach()
        await _reap(mesh.controlplane)
        failure = mesh.failure()
        assert failure is not None and "exited with code 1 before serving" in failure and "boom" in failure
        assert not mesh.settled()
        mesh.signal_all(signal.SIGTERM)
        mesh.ready_once = True  # as if it had served once
        assert mesh.failure() is None

    asyncio.run(main())
