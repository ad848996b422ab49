"""The desired state: every resource, durable, in SQLite (WAL) in the control plane's state dir.

Invariants
- A write is all or nothing. `apply` validates the whole batch first (schema and per-kind rules
  with `parse_documents`, then duplicates, then cross-document references on the state the
  write would produce) and only then writes, in one `BEGIN IMMEDIATE` transaction. On any
  problem it raises one `ManifestError` naming file, line and field path, and the database is
  untouched.
- `revision` only grows (kept in the database, so across restarts too). Each write that changes
  something takes the next revision; every resource it creates or changes gets that revision as
  its `resourceVersion` (etcd's model: one revision per transaction).
- Applying a resource identical to the stored one (after dropping server-managed metadata such
  as `resourceVersion`, as `kubectl apply` of a `get -o yaml` output carries) changes nothing
  and takes no revision.
- Deleting a Namespace deletes everything in it (Kubernetes' namespace deletion), in the same
  transaction.

Derived state that must not move once decided (which node a pod runs on, its address) is kept
next to the resources as "bindings" and written in the same transaction, like a pod's
`spec.nodeName` binding in Kubernetes.

SQLite in WAL mode with `synchronous=NORMAL` survives a killed process: a committed transaction
is in the WAL before `COMMIT` returns. One process owns the database (the control plane); the
CLI goes through its gRPC API.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from nodemesh.controlplane.references import DocKey, check_references, doc_key
from nodemesh.controlplane.results import Action, ResourceResult, WriteOutcome
from nodemesh.errors import ManifestError, ManifestProblem
from nodemesh.model.loader import RawDocument, SourceLocation
from nodemesh.model.schema.base import Document
from nodemesh.model.validate import parse_documents

__all__ = ["Action", "Binder", "ResourceResult", "Store", "StoredResource", "WriteOutcome"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
  kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
  api_version TEXT NOT NULL, body TEXT NOT NULL, resource_version INTEGER NOT NULL,
  source_file TEXT NOT NULL DEFAULT '', source_line INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS bindings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# metadata fields the server owns (kubectl get -o yaml prints them; apply must ignore them)
SERVER_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")

Binder = Callable[[Sequence[Document], Mapping[str, str]], Mapping[str, str]]
"""Given the state a write produces and the current bindings, the bindings to store with it."""


@dataclass(frozen=True, slots=True)
class StoredResource:
    kind: str
    namespace: str
    name: str
    api_version: str
    body: Mapping[str, object]
    resource_version: int
    source_file: str = ""
    source_line: int = 0

    @property
    def key(self) -> DocKey:
        return (self.kind, self.namespace, self.name)

    def manifest(self) -> dict[str, object]:
        """The document as `get` shows it: the stored body with metadata.resourceVersion."""
        out = copy.deepcopy(dict(self.body))
        meta = out.setdefault("metadata", {})
        if isinstance(meta, dict):
            meta["resourceVersion"] = str(self.resource_version)
        return out

    def raw(self) -> RawDocument:
        where = SourceLocation(self.source_file or f"<store {self.kind}/{self.name}>", self.source_line, {})
        return RawDocument(copy.deepcopy(dict(self.body)), where)


def canonical(body: Mapping[str, object]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalize(raw: RawDocument, doc: Document) -> dict[str, object]:
    """The body to store: the user's document minus server-owned metadata, with its namespace
    made explicit (or dropped, for cluster-wide kinds)."""
    body = copy.deepcopy(raw.body)
    meta = body.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_METADATA:
            meta.pop(key, None)
        if doc.namespaced:
            meta["namespace"] = doc.namespace
        else:
            meta.pop("namespace", None)
    return body


class Store:
    """The resource database. Not thread-safe: one owner (the control plane's event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._parsed: dict[DocKey, tuple[int, Document]] = {}
        # An in-memory mirror of the committed state (this process is the only writer); it is
        # updated only after a COMMIT succeeded.
        row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        self._revision = int(row[0]) if row else 0
        self._rows: dict[DocKey, StoredResource] = {}
        for r in self._db.execute(
            "SELECT kind, namespace, name, api_version, body, resource_version, source_file, source_line "
            "FROM resources"
        ):
            res = StoredResource(r[0], r[1], r[2], r[3], json.loads(r[4]), int(r[5]), r[6], int(r[7]))
            self._rows[res.key] = res
        self._bindings: dict[str, str] = dict(self._db.execute("SELECT key, value FROM bindings").fetchall())

    def close(self) -> None:
        self._db.close()

    # ---- reads ----------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._revision

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def resources(
        self, kind: str | None = None, namespace: str | None = None, name: str | None = None
    ) -> list[StoredResource]:
        """Stored resources in write order (resourceVersion, then kind/namespace/name)."""
        found = [
            r
            for r in self._rows.values()
            if (kind is None or r.kind == kind)
            and (namespace is None or r.namespace == namespace)
            and (name is None or r.name == name)
        ]
        found.sort(key=lambda r: (r.resource_version, r.key))
        return found

    def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        found = self.resources(kind, namespace, name)
        return found[0] if found else None

    def bindings(self) -> Mapping[str, str]:
        return MappingProxyType(self._bindings)

    def documents(self) -> list[Document]:
        """Every stored resource as a typed Document (parsed once per resourceVersion)."""
        stored = self.resources()
        todo = [s for s in stored if self._parsed.get(s.key, (-1,))[0] != s.resource_version]
        if todo:
            for s, doc in zip(todo, parse_documents([s.raw() for s in todo]), strict=True):
                self._parsed[s.key] = (s.resource_version, doc)
        live = {s.key for s in stored}
        for key in set(self._parsed) - live:
            del self._parsed[key]
        return [self._parsed[s.key][1] for s in stored]

    # ---- writes ---------------------------------------------------------------------------
    def apply(self, raws: Sequence[RawDocument], *, binder: Binder | None = None) -> WriteOutcome:
        """Validate the whole batch, then create or update every document in one transaction."""
        docs = parse_documents(raws)  # raises ManifestError: schema and per-kind rules
        problems: list[ManifestProblem] = []
        seen: dict[DocKey, Document] = {}
        for doc in docs:
            first = seen.setdefault(doc_key(doc), doc)
            if first is not doc:
                where = f"{first.location.file}:{first.location.line}"
                problems.append(
                    doc.location.problem(
                        ("metadata", "name"), f"{doc.ref} appears twice in the batch (first at {where})"
                    )
                )
        if problems:
            raise ManifestError(problems)

        current = {doc_key(d): d for d in self.documents()}
        bodies = {doc_key(d): normalize(raw, d) for raw, d in zip(raws, docs, strict=True)}
        stored = dict(self._rows)
        changes: dict[DocKey, tuple[Document, dict[str, object], Action]] = {}
        results: list[tuple[DocKey, Action]] = []
        for doc in docs:
            key = doc_key(doc)
            old = stored.get(key)
            body = bodies[key]
            if old is None:
                action = Action.CREATED
            elif canonical(old.body) == canonical(body):
                action = Action.UNCHANGED
            else:
                action = Action.CONFIGURED
            results.append((key, action))
            if action is not Action.UNCHANGED:
                changes[key] = (doc, body, action)
        if not changes:
            return WriteOutcome(
                self.revision, tuple(ResourceResult(k, a, stored[k].resource_version) for k, a in results)
            )

        state = [d for k, d in current.items() if k not in changes] + [doc for doc, _, _ in changes.values()]
        problems = check_references(state, changes)
        if problems:
            raise ManifestError(problems)
        bindings = dict(binder(state, self.bindings())) if binder else None

        revision = self.revision + 1
        rows = {
            key: StoredResource(*key, doc.api_version, body, revision, doc.location.file, doc.location.line)
            for key, (doc, body, _) in changes.items()
        }
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (*r.key, r.api_version, canonical(r.body), revision, r.source_file, r.source_line)
                    for r in rows.values()
                ],
            )
            self._finish(revision, bindings)
        self._rows.update(rows)
        self._committed(revision, bindings)
        out = tuple(
            ResourceResult(k, a, revision if a is not Action.UNCHANGED else stored[k].resource_version)
            for k, a in results
        )
        return WriteOutcome(revision, out)

    def delete(
        self, targets: Sequence[tuple[DocKey, SourceLocation]], *, binder: Binder | None = None
    ) -> WriteOutcome:
        """Delete every target (and the contents of deleted Namespaces) in one transaction; a
        missing target or a broken reference rejects the whole request."""
        stored = dict(self._rows)
        problems = [
            where.problem(
                ("metadata", "name"), f'{kind} "{name}" not found' + (f' in namespace "{ns}"' if ns else "")
            )
            for (kind, ns, name), where in targets
            if (kind, ns, name) not in stored
        ]
        if problems:
            raise ManifestError(problems)
        doomed: list[DocKey] = []
        for key, _ in targets:
            if key not in doomed:
                doomed.append(key)
            if key[0] == "Namespace":
                doomed += [k for k in stored if k[1] == key[2] and k not in doomed]
        gone = set(doomed)
        state = [d for d in self.documents() if doc_key(d) not in gone]
        problems = check_references(state, (), [(k, w) for k, w in targets])
        if problems:
            raise ManifestError(problems)
        bindings = dict(binder(state, self.bindings())) if binder else None
        revision = self.revision + 1
        with self._transaction():
            self._db.executemany(
                "DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?", doomed
            )
            self._finish(revision, bindings)
        for key in doomed:
            self._rows.pop(key, None)
        self._committed(revision, bindings)
        return WriteOutcome(revision, tuple(ResourceResult(k, Action.DELETED, revision) for k in doomed))

    def save_bindings(self, bindings: Mapping[str, str]) -> None:
        """Replace the bindings without a resource change (first start, node list changed)."""
        with self._transaction():
            self._write_bindings(bindings)
        self._bindings = dict(bindings)

    # ---- internals ------------------------------------------------------------------------
    def _finish(self, revision: int, bindings: Mapping[str, str] | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (revision,))
        if bindings is not None:
            self._write_bindings(bindings)

    def _write_bindings(self, bindings: Mapping[str, str]) -> None:
        """Write only what differs from the committed bindings."""
        gone = [(k,) for k in self._bindings if k not in bindings]
        changed = [(k, v) for k, v in bindings.items() if self._bindings.get(k) != v]
        self._db.executemany("DELETE FROM bindings WHERE key = ?", gone)
        self._db.executemany("INSERT OR REPLACE INTO bindings VALUES (?, ?)", changed)

    def _committed(self, revision: int, bindings: Mapping[str, str] | None) -> None:
        self._revision = revision
        if bindings is not None:
            self._bindings = dict(bindings)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
