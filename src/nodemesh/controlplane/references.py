"""Cross-document checks, run on the state a write WOULD produce, before anything is written.

Schema and per-kind rules (Istio's validation included) are `parse_documents`' job; what
remains are the rules that need the other documents:

- a pod's service account must exist: Kubernetes' ServiceAccount admission plugin "ensures the
  ServiceAccount referenced by the pod exists" (plugin/pkg/admission/serviceaccount), and the
  `default` account exists in every namespace. nodemesh applies the rule to Deployments' pod
  templates too, at apply time: a workload's SPIFFE identity is its service account, and the CA
  must know it before pods are scheduled. Deleting a ServiceAccount that a workload still uses
  is refused for the same reason (Kubernetes would let the pods run on with a dangling one);
- one Cluster resource at most (`World.build`);
- pod names are unique per namespace, including the `<deployment>-<i>` names that Deployments
  expand to (the local runtime's rule, runtime/topology);
- `spec.nodeName` names one of the cluster's nodes (`node-<i>`, i < Cluster `spec.nodes`),
  as the local runtime requires.

Pure: a function from documents to problems. Each problem is located at the document being
written (the user's file and line), never at an unrelated stored one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nodemesh.controlplane.results import DocKey
from nodemesh.errors import ManifestProblem
from nodemesh.model.loader import SourceLocation
from nodemesh.model.schema.base import Document
from nodemesh.model.schema.core import Cluster, ClusterSpec, Deployment, Pod, PodSpec, ServiceAccount

__all__ = ["DocKey", "check_references", "doc_key", "node_names"]

DEFAULT_SA = "default"


def doc_key(doc: Document) -> DocKey:
    return (doc.kind, doc.namespace, doc.name)


def node_names(docs: Iterable[Document]) -> tuple[str, ...]:
    """The cluster's node names: `node-0` .. `node-<n-1>` (runtime/topology's naming)."""
    cluster = next((d for d in docs if isinstance(d, Cluster)), None)
    spec = cluster.spec if cluster is not None else ClusterSpec()
    return tuple(f"node-{i}" for i in range(spec.nodes))


def _pod_spec(doc: Document) -> tuple[PodSpec, tuple[str, ...]] | None:
    if isinstance(doc, Pod):
        return doc.spec, ("spec",)
    if isinstance(doc, Deployment):
        return doc.spec.template.spec, ("spec", "template", "spec")
    return None


def _pod_names(doc: Document) -> list[str]:
    if isinstance(doc, Pod):
        return [doc.name]
    if isinstance(doc, Deployment):
        return [f"{doc.name}-{i}" for i in range(doc.spec.replicas)]
    return []


def check_references(
    state: Sequence[Document],
    written: Iterable[DocKey],
    deleted: Iterable[tuple[DocKey, SourceLocation]] = (),
) -> list[ManifestProblem]:
    """Problems of `state` (the whole store after the write) that concern the write.

    `written`: keys of documents this write creates or changes (problems are reported at them).
    `deleted`: (key, where the delete request names it) pairs: a deletion that breaks a remaining
    document is reported at the delete request's location.
    """
    written_keys = set(written)
    accounts = {(d.namespace, d.name) for d in state if isinstance(d, ServiceAccount)}
    nodes = node_names(state)
    problems: list[ManifestProblem] = []

    clusters = [d for d in state if isinstance(d, Cluster)]
    if len(clusters) > 1:
        for cluster in clusters:
            if doc_key(cluster) in written_keys:
                others = ", ".join(c.name for c in clusters if c is not cluster)
                problems.append(
                    cluster.location.problem(
                        ("metadata", "name"), f"only one Cluster resource may exist (the store has {others})"
                    )
                )

    owners: dict[tuple[str, str], Document] = {}
    for doc in state:
        for pod in _pod_names(doc):
            first = owners.setdefault((doc.namespace, pod), doc)
            if first is not doc and doc_key(doc) in written_keys:
                problems.append(
                    doc.location.problem(
                        ("metadata", "name"),
                        f"pod {doc.namespace}/{pod} is already defined by {first.kind} {first.name}",
                    )
                )

    for doc in state:
        found = _pod_spec(doc)
        if found is None or doc_key(doc) not in written_keys:
            continue
        spec, at = found
        sa = spec.sa_name
        if sa != DEFAULT_SA and (doc.namespace, sa) not in accounts:
            problems.append(
                doc.location.problem(
                    (*at, "serviceAccountName"),
                    f'serviceaccount "{sa}" not found in namespace "{doc.namespace}"',
                    "apply the ServiceAccount in the same batch or before",
                )
            )
        if spec.node_name is not None and spec.node_name not in nodes:
            problems.append(
                doc.location.problem(
                    (*at, "nodeName"), f"unknown node {spec.node_name!r}", "nodes are " + ", ".join(nodes)
                )
            )

    for key, where in deleted:
        kind, namespace, name = key
        if kind != "ServiceAccount":
            continue
        users = [
            d
            for d in state
            if (found := _pod_spec(d)) is not None
            and d.namespace == namespace
            and found[0].sa_name == name
            and name != DEFAULT_SA
        ]
        if users:
            names = ", ".join(f"{d.kind} {d.name}" for d in users)
            problems.append(
                where.problem(
                    ("metadata", "name"),
                    f"ServiceAccount {namespace}/{name} is still used by {names}",
                    "delete or change those workloads in the same batch",
                )
            )
    return problems
