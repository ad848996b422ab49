"""Cilium identity labels and endpoint selectors.

An endpoint's identity is a set of labels with a source (`k8s:app=x`,
`k8s:io.kubernetes.pod.namespace=shop`, `reserved:host`, ...). A selector key without a source
(`app`) or with `any:` matches a label of any source (`["k8s:foo=bar"].Has("any:foo")` is true,
`pkg/labels/array.go`); `k8s:app` matches only a `k8s` label. Every requirement of a selector
must hold. `endpointSelector` never selects a host endpoint and `nodeSelector` selects only host
endpoints (`pkg/policy/rule.go` `matchesSubject`).

Host-networking pods carry the node's identity (`reserved:host` on their own node; the
`remote-node` entity elsewhere), not their pod labels: Cilium manages no endpoint for them.

The widening Cilium applies to selectors written in a policy (its namespace, its cluster) is done
by the compiler (`compile.py`, `pkg/k8s/apis/cilium.io/utils/utils.go`); the values here are the
selectors after it. Summarised in /work/shared/reference/cilium.md section 1.

Invariants: selectors and requirements are immutable values, equal when written alike, so the
compiler can share them; `label_view` is the one place an endpoint becomes labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from nodemesh.model.schema.base import LabelSelectorModel
from nodemesh.policy.flow import Endpoint
from nodemesh.policy.selector import Operator

__all__ = [
    "CLUSTER_KEY",
    "NS_KEY",
    "NS_LABELS_PREFIX",
    "CiliumSelector",
    "CiliumSubject",
    "LabelRequirement",
    "Labels",
    "label_view",
]

NS_KEY: Final = "io.kubernetes.pod.namespace"
CLUSTER_KEY: Final = "io.cilium.k8s.policy.cluster"
NS_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels"
# Entities that are reserved identities: an endpoint in one carries the label `reserved:<name>`.
_RESERVED: Final = frozenset(
    {"host", "remote-node", "world", "kube-apiserver", "ingress", "health", "init", "unmanaged"}
)
# entity.go: `cluster` = host, remote-node, init, ingress, health, unmanaged, kube-apiserver and
Labels = Mapping[str, str]


def label_view(ep: Endpoint, *, node: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(labels by `source:key`, labels by bare key) of an endpoint's identity, with the
    `reserved:<entity>` labels of its entities. `node=True` adds what nodemesh knows of a node's
    labels (`kubernetes.io/hostname`)."""
    if ep.is_pod and "host" in ep.entities:
        # A host-networking pod has the node's identity, not its own labels (Cilium manages no
        # endpoint for it): only the reserved labels, and what nodemesh knows of the node.
        full: dict[str, str] = {}
        node = True
    else:
        full = dict(ep.identity_labels)
    for entity in ep.entities:
        if entity in _RESERVED:
            full.setdefault("reserved:" + entity, "")
    if node and ep.node:
        full.setdefault("k8s:kubernetes.io/hostname", ep.node)
    bare: dict[str, str] = {}
    for key, value in full.items():
        head, sep, tail = key.partition(":")
        bare.setdefault(tail if sep else head, value)
    return full, bare


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One selector requirement. `key` is `source:key` (exact source) or a bare key (any source:
    `["k8s:foo=bar"].Has("any:foo")` is true, pkg/labels/array.go)."""

    key: str
    any_source: bool
    operator: Operator
    values: frozenset[str] = frozenset()
    source: str | None = None  # None: any source
    bare_key: str = ""

    @classmethod
    def parse(cls, raw: str, operator: Operator, values: Iterable[str] = ()) -> LabelRequirement:
        source, sep, rest = raw.partition(":")
        if not sep:
            return cls(raw, True, operator, frozenset(values), None, raw)
        if source == "any":
            return cls(rest, True, operator, frozenset(values), None, rest)
        return cls(raw, False, operator, frozenset(values), source, rest)

    def matches(self, full: Labels, bare: Labels) -> bool:
        value = (bare if self.any_source else full).get(self.key)
        op = self.operator
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        return value is None

    def __str__(self) -> str:
        key = self.key if not self.any_source else f"any:{self.key}"
        if self.operator is Operator.IN and len(self.values) == 1:
            return f"{key}={next(iter(self.values))}"
        if self.operator in (Operator.IN, Operator.NOT_IN):
            return f"{key} {self.operator.value} ({','.join(sorted(self.values))})"
        return key if self.operator is Operator.EXISTS else f"!{key}"


@dataclass(frozen=True, slots=True)
class CiliumSelector:
    """An EndpointSelector after Cilium's widening: every requirement must hold."""

    requirements: tuple[LabelRequirement, ...] = ()

    @classmethod
    def from_model(cls, model: LabelSelectorModel, *, drop_label: str | None = None) -> CiliumSelector:
        reqs = [
            LabelRequirement.parse(k, Operator.IN, (v,))
            for k, v in sorted(model.match_labels.items())
            if k != drop_label
        ]
        reqs += [
            LabelRequirement.parse(e.key, Operator(e.operator), e.values) for e in model.match_expressions
        ]
        return cls(tuple(reqs))

    def has_key(self, bare_key: str, sources: tuple[str | None, ...] = ("k8s", None)) -> bool:
        """`EndpointSelector.HasKey` for `k8s:<key>` / `any:<key>` (source None = any)."""
        return any(r.bare_key == bare_key and r.source in sources for r in self.requirements)

    def has_key_prefix(self, prefix: str, sources: tuple[str | None, ...]) -> bool:
        return any(r.bare_key.startswith(prefix) and r.source in sources for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def plus(self, *extra: LabelRequirement) -> CiliumSelector:
        return CiliumSelector((*self.requirements, *extra))

    def matches(self, full: Labels, bare: Labels) -> bool:
        return all(r.matches(full, bare) for r in self.requirements)

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}" if self.requirements else "{<all>}"


@dataclass(frozen=True, slots=True)
class CiliumSubject:
    """`endpointSelector` (pod endpoints, never the host) or `nodeSelector` (host endpoints)."""

    selector: CiliumSelector
    node: bool = False

    def selects(self, endpoint: object) -> bool:
        if not isinstance(endpoint, Endpoint):
            return False
        return self.selects_labels(endpoint, *label_view(endpoint, node=self.node))

    def selects_labels(self, endpoint: Endpoint, full: Labels, bare: Labels) -> bool:
        """`selects`, given the endpoint's `label_view` (with `node=self.node`)."""
        is_host = "host" in endpoint.entities
        if self.node:
            return is_host and self.selector.matches(full, bare)
        if is_host or not endpoint.is_pod:
            return False
        return self.selector.matches(full, bare)

    def describe(self) -> str:
        return f"{'nodeSelector' if self.node else 'endpointSelector'} {self.selector}"
