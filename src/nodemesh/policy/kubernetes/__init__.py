"""Kubernetes NetworkPolicy (networking.k8s.io/v1): compile to the IR, evaluate, analyze.

Upstream: kubernetes.io/docs/concepts/services-networking/network-policies/ and the API reference,
k8s.io/api `networking/v1/types.go`. In short: a pod is isolated for a direction once a policy
selecting it has that direction in its (defaulted) `policyTypes`; it then accepts only what some
rule of some selecting policy allows ("Network policies do not conflict; they are additive"); a
pod no policy isolates is not restricted (`evaluate` returns None: no say). Each module states the
part of the semantics it implements:

- `conditions.py`  the subject (`spec.podSelector`), pod/namespace peer conditions, `FastSelector`
                   and the `Interner` that shares equal selectors and conditions;
- `compile.py`     NetworkPolicy -> IR (`compile_network_policy`): one `Policy` per direction;
- `engine.py`      `KubernetesEngine`: selection of the policies isolating an endpoint, the exact
                   caches behind the 250k decisions/s target, evaluation, the self/node exceptions;
- `analyze.py`     `KubernetesEngine.analyze`: findings NM401 to NM408.

Import from this package, not from its modules: the names below are its API.
"""

from nodemesh.policy.kubernetes.analyze import HBONE_PORT
from nodemesh.policy.kubernetes.compile import KIND, compile_network_policy
from nodemesh.policy.kubernetes.conditions import (
    FastSelector,
    Interner,
    PodPeerCondition,
    PodSelectorSubject,
)
from nodemesh.policy.kubernetes.engine import KubernetesEngine

__all__ = [
    "HBONE_PORT",
    "KIND",
    "FastSelector",
    "Interner",
    "KubernetesEngine",
    "PodPeerCondition",
    "PodSelectorSubject",
    "compile_network_policy",
]
