"""The agent's state on disk: its last good view and its workload certificates.

This is what makes the data plane statically stable: an agent (re)started while the control
plane is down loads both and keeps serving them; certificates stay usable until they expire.
Every file is written atomically (temporary file, fsync, rename) with mode 0600, so a crash
leaves either the old or the new content, never a torn file.

The view is kept in SQLite (WAL): a push is written as one transaction holding only what it
changed (upserts and removals), so persisting a small change to a large view costs a small
write, and a crash leaves the previous view or the new one, never a mix.

Layout under the agent's state directory:
  view.db                           the last view the agent ACKed (one row per resource)
  certs/<ns>_<sa>.json              one SVID: identity, chain (leaf first), key, validity, refresh time
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nodemesh.agent.view import LocalView, ViewRejectedError
from nodemesh.ca.spiffe import SpiffeId
from nodemesh.controlplane.credentials import write_private
from nodemesh.controlplane.views import ViewResource

__all__ = ["AgentDisk", "WorkloadCertificate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """An SVID the agent holds for one identity of its node, and when to renew it."""

    identity: SpiffeId
    chain_pem: tuple[str, ...]
    key_pem: str
    not_before: datetime
    not_after: datetime
    refresh_at: datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "identity": self.identity.uri,
                "chain": list(self.chain_pem),
                "key": self.key_pem,
                "notBefore": self.not_before.isoformat(),
                "notAfter": self.not_after.isoformat(),
                "refreshAt": self.refresh_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkloadCertificate:
        raw = json.loads(text)
        return cls(
            SpiffeId.parse(raw["identity"]),
            tuple(raw["chain"]),
            raw["key"],
            datetime.fromisoformat(raw["notBefore"]),
            datetime.fromisoformat(raw["notAfter"]),
            datetime.fromisoformat(raw["refreshAt"]),
        )


class AgentDisk:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "certs").mkdir(exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(self.view_path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS resources (key TEXT PRIMARY KEY, type TEXT NOT NULL,"
            " name TEXT NOT NULL, version TEXT NOT NULL, body BLOB NOT NULL);"
        )

    @property
    def view_path(self) -> Path:
        return self.directory / "view.db"

    def close(self) -> None:
        self._db.close()

    def load_view(self) -> LocalView:
        """The persisted view, or an empty one (none yet, or unreadable: logged)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'version_info'").fetchone()
        resources = [
            ViewResource(t, n, v, bytes(b))
            for t, n, v, b in self._db.execute("SELECT type, name, version, body FROM resources")
        ]
        try:
            return LocalView().apply(row[0] if row else "", resources, ())
        except ViewRejectedError as exc:
            log.error("ignoring the unreadable view %s: %s", self.view_path, exc)
            return LocalView()

    def save_push(self, version_info: str, resources: Iterable[ViewResource], removed: Iterable[str]) -> None:
        """Persist one applied push (only what it changed) in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM resources WHERE key = ?", [(k,) for k in removed])
            self._db.executemany(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?)",
                [(r.key, r.type, r.name, r.version, r.body) for r in resources],
            )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('version_info', ?)", (version_info,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def save_view(self, view: LocalView) -> None:
        """Replace the persisted view with `view`."""
        held = {k for (k,) in self._db.execute("SELECT key FROM resources")}
        self.save_push(view.version_info, view.resources.values(), held - set(view.resources))

    def _cert_path(self, identity: SpiffeId) -> Path:
        return self.directory / "certs" / f"{identity.namespace}_{identity.service_account}.json"

    def load_certificates(self) -> dict[SpiffeId, WorkloadCertificate]:
        out = {}
        for path in sorted((self.directory / "certs").glob("*.json")):
            try:
                cert = WorkloadCertificate.from_json(path.read_text())
            except (ValueError, KeyError) as exc:
                log.error("ignoring the unreadable certificate %s: %s", path, exc)
                continue
            out[cert.identity] = cert
        return out

    def save_certificate(self, cert: WorkloadCertificate) -> None:
        write_private(self._cert_path(cert.identity), cert.to_json())

    def remove_certificate(self, identity: SpiffeId) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._cert_path(identity).unlink()
