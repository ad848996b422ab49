"""Flow export to JSON-lines files, with rotation by size, and a reader that follows them.

Like Hubble's flow exporter (`hubble-export-file-path`, rotated at
`hubble-export-file-max-size-mb`, default 10, keeping `hubble-export-file-max-backups`, default
5), each agent appends its flows to one file in a shared directory, one GetFlowsResponse JSON
object per line (`Flow.to_json`). Files are named after the writer (a node, or a waypoint):

    <dir>/<name>.jsonl        the file being written
    <dir>/<name>.jsonl.1      the previous one (numbered backups, 1 = newest, as logrotate)

Invariants: a line is written whole and flushed before `write` returns, so a reader never sees
a torn line except while the writer is mid-`write` (the reader keeps an incomplete last line
until its newline arrives); a file never grows past `max_bytes` unless one line alone is larger;
there are at most `backups` backups.

`FlowTail` follows a directory the way `tail -F` follows a file: it keeps each current file open,
so a rotation (rename) does not lose the lines written just before it, and it picks up files of
writers that appear later. A line that is not a flow record is skipped and counted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from nodemesh.observe.flow import Flow, FlowFormatError

__all__ = [
    "DEFAULT_BACKUPS",
    "DEFAULT_MAX_BYTES",
    "SUFFIX",
    "FlowTail",
    "FlowWriter",
    "flow_files",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # hubble-export-file-max-size-mb: 10
DEFAULT_BACKUPS = 5  # hubble-export-file-max-backups: 5
SUFFIX = ".jsonl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*?)\.jsonl(?:\.(?P<n>\d+))?$")


class FlowWriter:
    """Appends flows to `<directory>/<name>.jsonl`, rotating by size."""

    def __init__(
        self,
        directory: Path | str,
        name: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ) -> None:
        if not _NAME.match(name) or name.endswith(SUFFIX):
            raise ValueError(f"invalid flow file name {name!r}")
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.directory = Path(directory)
        self.name = name
        self.max_bytes = max_bytes
        self.backups = backups
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 (owned, closed in close())
        self._size = self._file.tell()

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}{SUFFIX}"

    def backup(self, n: int) -> Path:
        return self.directory / f"{self.name}{SUFFIX}.{n}"

    def write(self, flow: Flow) -> None:
        if self._file is None:
            raise ValueError("write to a closed FlowWriter")
        line = (flow.to_json() + "\n").encode()
        if self._size > 0 and self._size + len(line) > self.max_bytes:
            self.rotate()
            assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._size += len(line)

    def rotate(self) -> None:
        """Close the current file, shift the backups (dropping the oldest), start a new file."""
        if self._file is not None:
            self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            self.backup(self.backups).unlink(missing_ok=True)
            for n in range(self.backups - 1, 0, -1):
                if self.backup(n).exists():
                    os.replace(self.backup(n), self.backup(n + 1))
            if self.path.exists():
                os.replace(self.path, self.backup(1))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FlowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flow_files(directory: Path | str) -> list[Path]:
    """Every flow file in a directory, each writer's oldest backup first, its current file last."""
    base = Path(directory)
    if not base.is_dir():
        return []
    found: list[tuple[str, int, Path]] = []
    for p in base.iterdir():
        m = _FILE.match(p.name)
        if m and p.is_file():
            n = int(m.group("n")) if m.group("n") else 0
            found.append((m.group("name"), -n, p))
    return [p for _, _, p in sorted(found)]


@dataclass(slots=True)
class _Tracked:
    handle: IO[bytes]
    inode: int
    pending: bytes = b""


@dataclass(slots=True)
class FlowTail:
    """Reads a flow directory, then follows it (`tail -F` over every writer's current file).

    Call `read_existing()` once for the history (backups, then current files), then `poll()`
    for what was appended since; nothing is lost or repeated between the two (short of a
    writer rotating twice between two polls, or during `read_existing` itself).
    """

    directory: Path
    malformed: int = 0
    _tracked: dict[Path, _Tracked] = field(default_factory=dict)

    def read_existing(self) -> list[Flow]:
        """Every flow already written, and start following the current files from their end."""
        flows: list[Flow] = []
        for path in flow_files(self.directory):
            if path.name.endswith(SUFFIX):
                tracked = self._open(path)
                if tracked is not None:
                    flows.extend(self._drain(tracked))
            else:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                flows.extend(self._parse(data.split(b"\n")))
        flows.sort(key=lambda f: f.time)
        return flows

    def poll(self) -> list[Flow]:
        """Flows appended since the last call, oldest first."""
        flows: list[Flow] = []
        current = {p for p in flow_files(self.directory) if p.name.endswith(SUFFIX)}
        for path in sorted(current - self._tracked.keys()):
            tracked = self._open(path)
            if tracked is not None:
                flows.extend(self._drain(tracked))
        for path, tracked in list(self._tracked.items()):
            flows.extend(self._drain(tracked))
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is None or st.st_ino != tracked.inode:
                # rotated (or removed): finish the old file, then start the new one from its top
                flows.extend(self._drain(tracked))
                tracked.handle.close()
                del self._tracked[path]
                if st is not None:
                    fresh = self._open(path)
                    if fresh is not None:
                        flows.extend(self._drain(fresh))
            elif st.st_size < tracked.handle.tell():  # truncated in place: start over
                tracked.handle.seek(0)
                tracked.pending = b""
        flows.sort(key=lambda f: f.time)
        return flows

    def close(self) -> None:
        for tracked in self._tracked.values():
            tracked.handle.close()
        self._tracked.clear()

    def _open(self, path: Path) -> _Tracked | None:
        try:
            handle = open(path, "rb")  # noqa: SIM115 (kept open to survive rotation)
        except OSError:
            return None
        tracked = _Tracked(handle, os.fstat(handle.fileno()).st_ino)
        self._tracked[path] = tracked
        return tracked

    def _drain(self, tracked: _Tracked) -> list[Flow]:
        data = tracked.pending + tracked.handle.read()
        lines = data.split(b"\n")
        tracked.pending = lines.pop()  # an incomplete last line waits for its newline
        return self._parse(lines)

    def _parse(self, lines: list[bytes]) -> list[Flow]:
        flows: list[Flow] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                flows.append(Flow.from_json(raw.decode()))
            except (FlowFormatError, UnicodeDecodeError) as exc:
                self.malformed += 1
                log.debug("skipping a line that is not a flow record: %s", exc)
        return flows
