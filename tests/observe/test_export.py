"""JSON-lines export with rotation, and the follower that `nodemesh observe --follow` uses."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodemesh.observe.export import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, FlowTail, FlowWriter, flow_files
from nodemesh.observe.flow import Flow

from .strategies import flow


def numbered(n: int, start: int = 0) -> list[Flow]:
    return [flow(at=timedelta(milliseconds=i), bytes_sent=i) for i in range(start, start + n)]


def test_defaults_are_hubbles_exporter() -> None:
    """Cilium's flow exporter rotates at `hubble-export-file-max-size-mb` (10) and keeps
    `hubble-export-file-max-backups` (5)."""
    assert DEFAULT_MAX_BYTES == 10 * 1024 * 1024 and DEFAULT_BACKUPS == 5


def test_write_then_read_back(tmp_path: Path) -> None:
    """One GetFlowsResponse JSON object per line, read back as the same records."""
    flows = numbered(5)
    with FlowWriter(tmp_path / "flows", "node-1") as w:
        for f in flows:
            w.write(f)
    path = tmp_path / "flows" / "node-1.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(line.startswith('{"flow":{') for line in lines)
    tail = FlowTail(tmp_path / "flows")
    assert tail.read_existing() == flows
    tail.close()


@settings(max_examples=25, deadline=None)
@given(
    max_lines=st.integers(min_value=1, max_value=6),
    backups=st.integers(min_value=0, max_value=3),
    count=st.integers(min_value=0, max_value=30),
)
def test_rotation_bounds_size_and_keeps_the_newest(max_lines: int, backups: int, count: int) -> None:
    """Rotation by size (as Hubble's exporter, numbered like logrotate): no file grows past
    max_bytes, at most `backups` backups are kept, and what remains is the newest flows, in order,
    with nothing missing in between."""
    flows = numbered(count)
    line = len((flows[0].to_json() + "\n").encode()) if flows else 1
    with tempfile.TemporaryDirectory() as d:
        with FlowWriter(d, "node-1", max_bytes=max_lines * line + line // 2, backups=backups) as w:
            for f in flows:
                w.write(f)
        files = flow_files(d)
        assert len(files) <= backups + 1
        assert files[-1].name == "node-1.jsonl" or not flows
        assert all(p.stat().st_size <= w.max_bytes for p in files)
        tail = FlowTail(Path(d))
        kept = tail.read_existing()
        tail.close()
        assert kept == flows[len(flows) - len(kept) :]
        assert len(kept) >= min(count, max_lines * (backups + 1) - (max_lines - 1))


def test_follow_survives_rotation_and_new_writers(tmp_path: Path) -> None:
    """`tail -F` semantics: lines written just before a rotation are not lost, a writer that
    appears later is picked up, and nothing is repeated between the history and the updates."""
    w1 = FlowWriter(tmp_path, "node-1", max_bytes=3 * len(numbered(1)[0].to_json()) + 10)
    first = numbered(2)
    for f in first:
        w1.write(f)
    tail = FlowTail(tmp_path)
    assert tail.read_existing() == first
    assert tail.poll() == []
    more = numbered(7, start=2)  # crosses two rotations between polls
    for f in more[:4]:
        w1.write(f)
    assert tail.poll() == more[:4]
    for f in more[4:]:
        w1.write(f)
    w2 = FlowWriter(tmp_path, "node-2")
    other = flow(at=timedelta(milliseconds=3), bytes_sent=999)
    w2.write(other)
    got = tail.poll()
    assert sorted(got, key=lambda f: f.time) == got
    assert set(got) == {*more[4:], other}
    assert tail.poll() == []
    w1.close()
    w2.close()
    tail.close()


def test_partial_and_malformed_lines(tmp_path: Path) -> None:
    """A line without its newline yet waits for it; a line that is not a flow record is skipped
    and counted, never fatal."""
    path = tmp_path / "node-1.jsonl"
    whole = numbered(1)[0].to_json()
    path.write_text("garbage\n" + whole[:20])
    tail = FlowTail(tmp_path)
    assert tail.read_existing() == []
    assert tail.malformed == 1
    with path.open("a") as fh:
        fh.write(whole[20:] + "\n")
    assert tail.poll() == numbered(1)
    tail.close()


def test_invalid_names(tmp_path: Path) -> None:
    for bad in ("", "../x", "a/b", ".hidden", "x.jsonl"):
        with pytest.raises(ValueError):
            FlowWriter(tmp_path, bad)
    assert flow_files(tmp_path / "missing") == []
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "n.jsonl.2").write_text("")
    (tmp_path / "n.jsonl.10").write_text("")
    (tmp_path / "n.jsonl").write_text("")
    assert [p.name for p in flow_files(tmp_path)] == ["n.jsonl.10", "n.jsonl.2", "n.jsonl"]
    w = FlowWriter(tmp_path, "n")
    w.close()
    with pytest.raises(ValueError):
        w.write(numbered(1)[0])
