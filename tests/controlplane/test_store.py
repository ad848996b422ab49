"""The store: atomic batches, references, no-op applies, resourceVersion, deletes (real SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.controlplane.store import Action, Store
from nodemesh.errors import ManifestError
from nodemesh.model.loader import RawDocument, SourceLocation, load_text

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
"""

BAD_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  selector: {app: orders}
  portz:
    - {port: 80}
"""


def raws(manifests: list[tuple[str, str]]) -> list[RawDocument]:
    return [doc for file, text in manifests for doc in load_text(text, file)]


def snapshot(store: Store) -> list[tuple[object, ...]]:
    return [(s.key, s.resource_version, dict(s.body)) for s in store.resources()] + [("rev", store.revision)]


def test_store_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    """The issue: "a real embedded database (SQLite, WAL)"."""
    store = Store(tmp_path / "store.db")
    assert store.journal_mode == "wal"


def test_a_bad_document_rejects_the_whole_batch_and_the_store_is_unchanged(
    tmp_path: Path, shop: list[tuple[str, str]]
) -> None:
    """All or nothing: one invalid document (a misspelt field) rejects the batch with file,
    line and field path; nothing of it is written, not even the valid documents before it."""
    store = Store(tmp_path / "store.db")
    store.apply(raws(shop))
    before = snapshot(store)
    changed = [(f, t.replace("replicas: 2", "replicas: 3")) for f, t in shop]
    with pytest.raises(ManifestError) as err:
        store.apply(raws([*changed, ("extra/policy.yaml", POLICY), ("extra/bad.yaml", BAD_SERVICE)]))
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.path) == ("extra/bad.yaml", 6, "spec.portz")
    assert problem.message == "unknown field" and "ports" in problem.hint
    assert snapshot(store) == before


def test_a_dangling_service_account_rejects_the_batch(tmp_path: Path, shop: list[tuple[str, str]]) -> None:
    """Kubernetes' ServiceAccount admission plugin "ensures the ServiceAccount referenced by the
    pod exists"; the error points at the field in the user's file, and nothing is written."""
    store = Store(tmp_path / "store.db")
    workloads = [(f, t) for f, t in shop if "workloads" in f]
    ((file, text),) = workloads
    without_accounts = "---".join(part for part in text.split("---") if "kind: ServiceAccount" not in part)
    with pytest.raises(ManifestError) as err:
        store.apply(raws([(file, without_accounts)]))
    problems = err.value.problems
    assert {p.path for p in problems} == {"spec.template.spec.serviceAccountName"}
    assert all(p.file == file and p.line > 0 for p in problems)
    assert 'serviceaccount "orders" not found in namespace "shop"' in {p.message for p in problems}
    assert store.resources() == [] and store.revision == 0


def test_duplicate_in_batch_and_second_cluster_are_rejected(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    with pytest.raises(ManifestError, match="appears twice in the batch"):
        store.apply(raws([("a.yaml", POLICY), ("b.yaml", POLICY)]))
    cluster = "apiVersion: nodemesh.io/v1alpha1\nkind: Cluster\nmetadata: {name: %s}\n"
    store.apply(raws([("c1.yaml", cluster % "one")]))
    with pytest.raises(ManifestError, match="only one Cluster"):
        store.apply(raws([("c2.yaml", cluster % "two")]))


def test_unchanged_apply_is_a_noop_and_versions_only_grow(
    tmp_path: Path, shop: list[tuple[str, str]]
) -> None:
    """`apply` of an unchanged resource is a no-op (no new resourceVersion); each write takes the
    next revision; `get -o yaml` output (with resourceVersion) re-applies as unchanged; the
    revision survives a reopen of the database."""
    path = tmp_path / "store.db"
    store = Store(path)
    first = store.apply(raws(shop))
    assert first.revision == 1 and {r.action for r in first.results} == {Action.CREATED}
    again = store.apply(raws(shop))
    assert again.revision == 1 and {r.action for r in again.results} == {Action.UNCHANGED}
    stored = store.get("Deployment", "shop", "orders")
    assert stored is not None
    echoed = store.apply([RawDocument(stored.manifest(), SourceLocation("<get>", 1, {}))])
    assert echoed.results[0].action is Action.UNCHANGED and echoed.revision == 1
    changed = store.apply(raws([(f, t.replace("replicas: 2", "replicas: 3")) for f, t in shop]))
    orders = next(r for r in changed.results if r.key == ("Deployment", "shop", "orders"))
    assert (orders.action, orders.resource_version, changed.revision) == (Action.CONFIGURED, 2, 2)
    assert next(r for r in changed.results if r.key == ("Namespace", "", "shop")).resource_version == 1
    store.close()
    reopened = Store(path)
    assert reopened.revision == 2
    assert reopened.apply(raws([("p.yaml", POLICY)])).revision == 3


def test_delete_is_atomic_and_cascades_namespaces(tmp_path: Path, shop: list[tuple[str, str]]) -> None:
    """Deleting a missing resource, or a ServiceAccount a workload still uses, rejects the whole
    request; deleting a Namespace deletes everything in it (Kubernetes namespace deletion)."""
    store = Store(tmp_path / "store.db")
    store.apply(raws(shop))
    before = snapshot(store)
    here = SourceLocation("<cli>", 0, {})
    with pytest.raises(ManifestError, match='NetworkPolicy "nope" not found'):
        store.delete(
            [
                (("CiliumNetworkPolicy", "shop", "orders-http"), here),
                (("NetworkPolicy", "shop", "nope"), here),
            ]
        )
    with pytest.raises(ManifestError, match="still used by Deployment orders"):
        store.delete([(("ServiceAccount", "shop", "orders"), here)])
    assert snapshot(store) == before
    out = store.delete([(("Namespace", "", "shop"), here)])
    assert store.resources() == []
    assert len(out.results) == len(before) - 1 and out.revision == 2
