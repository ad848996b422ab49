"""Compile a Kubernetes NetworkPolicy (networking.k8s.io/v1) into the shared IR.

Semantics (kubernetes.io/docs/concepts/services-networking/network-policies/ and the API reference,
k8s.io/api `networking/v1/types.go`):

- A policy has a say in a direction only if that direction is in its (defaulted) `policyTypes`
  (`NetworkPolicySpec.effective_policy_types`, the apiserver's `SetDefaults_NetworkPolicy`).
- Policies only allow, and they isolate what they select: "Network policies do not conflict; they
  are additive ... order of evaluation does not affect the policy result." Each compiled `Policy`
  is therefore `Action.ALLOW` with `default_deny=True`.
- A rule allows traffic "which matches both the `from` and `ports` sections"; an absent or empty
  `from`/`to`/`ports` matches everything. Peers of one list are ORed.
- A port entry matches its protocol (default TCP) and its port: a number, a `port..endPort` range,
  a name (resolved against the DESTINATION pod's container ports, by the shared PortCondition),
  or every port of that protocol when `port` is absent.

IR shape (an invariant the engine's flattened rules and `analyze`'s shadowing test rely on): one
`Policy` per manifest and direction in its policyTypes, ingress first; a rule is
[Clause("from"|"to", one Match per peer), Clause("ports", one Match per port)], each Match holding
exactly one condition.

This module also holds how a NetworkPolicy and its sections are named in reasons and findings.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nodemesh.model.schema.networking import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort
from nodemesh.policy.conditions import Side
from nodemesh.policy.ir import Action, Api, Clause, Direction, Match, Policy, PolicyRef, Rule
from nodemesh.policy.kubernetes.conditions import Interner, PodSelectorSubject

__all__ = ["KIND", "compile_network_policy"]

KIND = "NetworkPolicy"
_DIRECTION_FIELD = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}
_PEER_FIELD = {Direction.INGRESS: "from", Direction.EGRESS: "to"}
_POLICY_TYPE = {Direction.INGRESS: "Ingress", Direction.EGRESS: "Egress"}
_MAX_NAMED = 5  # policies named in a deny reason before "and N more"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while compiling, then restore its state.

    Compiling creates many small objects that all survive; each allocation burst makes the
    collector rescan every live object of the process (the world's documents included), which
    made compiling 10,000 policies 3x slower. The objects made here hold no reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rules(doc: NetworkPolicy, direction: Direction, interner: Interner) -> tuple[Rule, ...]:
    side = Side.SOURCE if direction is Direction.INGRESS else Side.DESTINATION
    field = _DIRECTION_FIELD[direction]
    peer_field = _PEER_FIELD[direction]
    namespace = doc.namespace
    specs: Sequence[tuple[list[NetworkPolicyPeer], list[NetworkPolicyPort]]]
    if direction is Direction.INGRESS:
        specs = [(r.from_, r.ports) for r in doc.spec.ingress or ()]
    else:
        specs = [(r.to, r.ports) for r in doc.spec.egress or ()]
    out: list[Rule] = []
    for i, (peers, ports) in enumerate(specs):
        peer_clause = Clause(peer_field, tuple(Match((interner.peer(p, namespace, side),)) for p in peers))
        port_clause = Clause("ports", tuple(Match((interner.port(p),)) for p in ports))
        out.append(Rule(index=i, path=f"spec.{field}[{i}]", clauses=(peer_clause, port_clause)))
    return tuple(out)


def compile_network_policy(doc: NetworkPolicy, interner: Interner | None = None) -> tuple[Policy, ...]:
    """One IR `Policy` per direction in the manifest's (defaulted) policyTypes, ingress first."""
    interner = interner if interner is not None else Interner()
    ref = PolicyRef(Api.KUBERNETES, KIND, doc.namespace, doc.name)
    subject = PodSelectorSubject(doc.namespace, interner.selector(doc.spec.pod_selector))
    types = doc.spec.effective_policy_types
    location = doc.location
    out: list[Policy] = []
    for direction in (Direction.INGRESS, Direction.EGRESS):
        if _POLICY_TYPE[direction] not in types:
            continue
        out.append(
            Policy(
                ref=ref,
                direction=direction,
                action=Action.ALLOW,
                rules=_rules(doc, direction, interner),
                subject=subject,
                default_deny=True,
                file=location.file,
                line=location.line,
            )
        )
    return tuple(out)


def _names(refs: Sequence[PolicyRef]) -> str:
    shown = ", ".join(f"{r.namespace}/{r.name}" for r in refs[:_MAX_NAMED])
    more = f" and {len(refs) - _MAX_NAMED} more" if len(refs) > _MAX_NAMED else ""
    return f"{KIND} {shown}{more}"
