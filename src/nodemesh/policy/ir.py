"""The one intermediate representation every policy API compiles into.

Shape (the same as ztunnel's `rbac.rs`, which is general enough for all three APIs):

    Policy  -- one manifest (or one direction of it): action, subject, scope, rules
      Rule   -- OR across a policy's rules; a rule matches when ALL its clauses match
        Clause -- OR of matches; an EMPTY clause is true
          Match  -- AND of conditions; a `void` match (one whose every field was stripped, as
                    ztunnel receives an emptied Match{}) never matches
            Condition -- one field test (peer selector, CIDR, port, principal, method, ...)

Kubernetes NetworkPolicy: rule = [peers clause (from/to), ports clause].
CiliumNetworkPolicy: rule = [peers clause, ports clause] plus an optional L7 `http` clause.
Istio AuthorizationPolicy: rule = [from clause, to clause, one clause per `when`].

Every condition knows its layer. The L3/L4 part of a rule (`Rule.l4_clauses`) is what a kernel
program or the node proxy can enforce; the L7 part runs only where a proxy sees the request.
Conditions are small frozen classes with `matches(ctx)` and `describe()`, so that a decision can
say which rule matched and a trace can say why one did not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

from nodemesh.policy.flow import FlowContext

__all__ = [
    "Action",
    "Api",
    "Clause",
    "Condition",
    "Direction",
    "Layer",
    "Match",
    "Policy",
    "PolicyRef",
    "Rule",
    "Scope",
    "Subject",
]


class Api(Enum):
    """The policy API a manifest belongs to."""

    KUBERNETES = "kubernetes"
    CILIUM = "cilium"
    ISTIO = "istio"


class Direction(Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Action(Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class Layer(Enum):
    L4 = "L3/L4"
    L7 = "L7"


class Scope(Enum):
    """Where a policy attaches (Istio's terms; K8s and Cilium policies are all WORKLOAD_SELECTOR)."""

    WORKLOAD_SELECTOR = "selector"
    NAMESPACE = "namespace"
    GLOBAL = "mesh"
    TARGET_REFS = "targetRefs"


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """Which manifest: `CiliumNetworkPolicy shop/orders-http`."""

    api: Api
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


class Condition(Protocol):
    """One field test. `negated` marks Istio's `notX` forms (for rendering only: `matches`
    already accounts for it)."""

    @property
    def layer(self) -> Layer: ...

    def matches(self, ctx: FlowContext) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Match:
    """AND of conditions. With no conditions it matches everything, unless `void`."""

    conditions: tuple[Condition, ...] = ()
    void: bool = False

    def matches(self, ctx: FlowContext) -> bool:
        if self.void:
            return False
        return all(c.matches(ctx) for c in self.conditions)

    @property
    def layers(self) -> frozenset[Layer]:
        return frozenset(c.layer for c in self.conditions)

    def describe(self) -> str:
        if self.void:
            return "<nothing: every field was stripped>"
        return " and ".join(c.describe() for c in self.conditions) or "<anything>"


@dataclass(frozen=True, slots=True)
class Clause:
    """OR of matches; an empty clause is true. `name` is the manifest field it came from."""

    name: str
    matches: tuple[Match, ...] = ()

    def holds(self, ctx: FlowContext) -> bool:
        if not self.matches:
            return True
        return any(m.matches(ctx) for m in self.matches)

    @property
    def layer(self) -> Layer:
        return Layer.L7 if any(Layer.L7 in m.layers for m in self.matches) else Layer.L4

    def describe(self) -> str:
        if not self.matches:
            return f"{self.name}: <anything>"
        return f"{self.name}: " + " | ".join(m.describe() for m in self.matches)


@dataclass(frozen=True, slots=True)
class Rule:
    """AND of clauses. `index` is the rule's position in the manifest; `path` its field path."""

    index: int
    path: str
    clauses: tuple[Clause, ...] = ()
    notes: tuple[str, ...] = ()

    def matches(self, ctx: FlowContext) -> bool:
        return all(c.holds(ctx) for c in self.clauses)

    def first_failing(self, ctx: FlowContext) -> Clause | None:
        """The first clause that does not hold (for explanations), or None."""
        for clause in self.clauses:
            if not clause.holds(ctx):
                return clause
        return None

    @property
    def l4_clauses(self) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if c.layer is Layer.L4)

    @property
    def l7_clauses(self) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if c.layer is Layer.L7)

    @property
    def has_l7(self) -> bool:
        return any(c.layer is Layer.L7 for c in self.clauses)

    def matches_l4(self, ctx: FlowContext) -> bool:
        return all(c.holds(ctx) for c in self.clauses if c.layer is Layer.L4)


class Subject(Protocol):
    """Which workloads a policy applies to (its endpointSelector / podSelector / selector)."""

    def selects(self, endpoint: object) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """One compiled policy, for one direction.

    `default_deny`: once this policy selects a workload, flows in `direction` that no allow rule
    matches are denied (Kubernetes: always; Cilium: `enableDefaultDeny`, default true; Istio:
    not used, its ALLOW semantics are evaluated per action). `target_refs` holds Istio's
    `kind/namespace/name` attachments when `scope` is TARGET_REFS.
    """

    ref: PolicyRef
    direction: Direction
    action: Action
    rules: tuple[Rule, ...]
    subject: Subject | None = None
    scope: Scope = Scope.WORKLOAD_SELECTOR
    default_deny: bool = True
    dry_run: bool = False
    target_refs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    file: str = ""
    line: int = 0
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def first_match(self, ctx: FlowContext, only: Callable[[Rule], bool] | None = None) -> Rule | None:
        for rule in self.rules:
            if (only is None or only(rule)) and rule.matches(ctx):
                return rule
        return None

    def with_rules(self, rules: tuple[Rule, ...], note: str | None = None) -> Policy:
        notes = (*self.notes, note) if note else self.notes
        return replace(self, rules=rules, notes=notes)
