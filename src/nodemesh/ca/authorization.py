"""Node authorization: a node may obtain certificates only for identities of pods scheduled on it.

This is Istio's `NodeAuthorizer` (security/pkg/server/ca/node_auth.go), "a subset of
Kubernetes Node Authorization (https://kubernetes.io/docs/reference/access-authn-authz/node/)
for Istio CA. Specifically, it validates that a node proxy which requests certificates for
workloads on its own node is request valid identities which run on that node (rather than
arbitrary ones)". It indexes pods by (node, service account) and refuses with
`no instances of "<ns>/<sa>" found on node "<node>"` when the index has no entry.

Pure: the decision is a function of the current placement (who runs where) and the request;
the server shell logs every refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nodemesh.ca.spiffe import SpiffeId

__all__ = ["AuthorizationDecision", "NodeAuthorizer"]


@dataclass(frozen=True, slots=True)
class AuthorizationDecision:
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class NodeAuthorizer:
    """(node, identity) pairs of every scheduled pod, plus the CA's trust domain."""

    trust_domain: str
    identities_by_node: Mapping[str, frozenset[SpiffeId]] = field(default_factory=dict)

    @classmethod
    def from_pods(cls, trust_domain: str, pods: Iterable[tuple[str, SpiffeId]]) -> NodeAuthorizer:
        """`pods`: (node, identity) of every pod that has a node."""
        index: dict[str, set[SpiffeId]] = {}
        for node, identity in pods:
            index.setdefault(node, set()).add(identity)
        return cls(trust_domain, MappingProxyType({n: frozenset(ids) for n, ids in index.items()}))

    def authorize(self, node: str, identity: SpiffeId) -> AuthorizationDecision:
        if identity.trust_domain != self.trust_domain:
            return AuthorizationDecision(
                False, f"identity {identity} is not in the trust domain {self.trust_domain!r}"
            )
        if identity in self.identities_by_node.get(node, frozenset()):
            return AuthorizationDecision(True, f"a pod with identity {identity} runs on node {node!r}")
        sa = f"{identity.namespace}/{identity.service_account}"
        return AuthorizationDecision(False, f'no instances of "{sa}" found on node "{node}"')
