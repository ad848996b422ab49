"""Compile an AuthorizationPolicy into the shared IR, every field included.

rule = [from clause, to clause, one clause per `when`]; a clause holds one Match per source /
operation / condition; a Match is the AND of one Condition per field the manifest sets, in a
fixed field order (`notX` fields are negated conditions). That is ztunnel's own shape
(`ZT:src/rbac.rs`, reference §4.5): rules OR'd, clauses AND'd, matches OR'd, fields AND'd;
within a field values OR'd; `notX` = none may match. `ipBlocks` and `source.ip` /
`destination.ip` are the shared `CidrCondition`; every other field an `IstioCondition`.

The attachment is read here too: `targetRefs` (kind, namespace defaulting to the policy's, name),
else a workload `selector`, else the namespace, or the whole mesh from the root namespace
(reference §4.2).

Invariants: compiling is pure; the IR is the whole manifest (the waypoint / sidecar HTTP view),
and what a given evaluator can see is a projection of it (`projection.py`), never a second
compiler. Equal conditions are interned in a per-engine cache (conditions are immutable and
policies written from templates repeat their values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodemesh.model.schema.base import Document
from nodemesh.model.schema.istio import (
    AuthorizationPolicy,
    Operation,
    PolicyTargetReference,
    Source,
    split_when_key,
)
from nodemesh.policy.conditions import CidrCondition, Network, Side, parse_network
from nodemesh.policy.flow import Endpoint
from nodemesh.policy.ir import (
    Action,
    Api,
    Clause,
    Condition,
    Direction,
    Match,
    Policy,
    PolicyRef,
    Rule,
    Scope,
)
from nodemesh.policy.istio.conditions import Attribute, make_condition
from nodemesh.policy.selector import LabelSelector

__all__ = [
    "WAYPOINT_CLASS",
    "ConditionCache",
    "compile_authorization_policy",
    "policy_ref",
    "target_key",
]

WAYPOINT_CLASS = "istio-waypoint"


# Source/Operation fields: (manifest name, attribute, node proxy can enforce); ipBlocks are
# the shared CidrCondition.
_SOURCE_FIELDS: tuple[tuple[str, Attribute | None, bool], ...] = (
    ("principals", Attribute.PRINCIPAL, True),
    ("requestPrincipals", Attribute.REQUEST_PRINCIPAL, False),
    ("namespaces", Attribute.NAMESPACE, True),
    ("serviceAccounts", Attribute.SERVICE_ACCOUNT, True),
    ("trustDomains", Attribute.TRUST_DOMAIN, False),
    ("ipBlocks", None, True),
    ("remoteIpBlocks", Attribute.REMOTE_IP, False),
)
_OPERATION_FIELDS: tuple[tuple[str, Attribute, bool], ...] = (
    ("hosts", Attribute.HOST, False),
    ("ports", Attribute.PORT, True),
    ("methods", Attribute.METHOD, False),
    ("paths", Attribute.PATH, False),
)
# `when` keys the node proxy enforces (handleRule `l4WhenAttributes`).
_L4_WHEN = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_WHEN_ATTRIBUTES = {
    "source.principal": Attribute.PRINCIPAL,
    "source.namespace": Attribute.NAMESPACE,
    "source.serviceAccount": Attribute.SERVICE_ACCOUNT,
    "source.trustDomain": Attribute.TRUST_DOMAIN,
    "remote.ip": Attribute.REMOTE_IP,
    "destination.port": Attribute.PORT,
    "connection.sni": Attribute.SNI,
    "request.auth.principal": Attribute.REQUEST_PRINCIPAL,
}


def _not(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


# Python attribute -> (position, manifest name, attribute, node proxy, negated), both polarities.
_FieldSpec = tuple[int, str, Attribute | None, bool, bool]


def _field_table(fields: Sequence[tuple[str, Attribute | None, bool]]) -> dict[str, _FieldSpec]:
    table: dict[str, _FieldSpec] = {}
    for pos, (name, attribute, node) in enumerate(fields):
        table[_snake(name)] = (2 * pos, name, attribute, node, False)
        table[_snake(_not(name))] = (2 * pos + 1, _not(name), attribute, node, True)
    return table


_SOURCE_TABLE = _field_table(_SOURCE_FIELDS)
_OPERATION_TABLE = _field_table(_OPERATION_FIELDS)


def _cidr(values: Sequence[str], *, negated: bool, side: Side, label: str) -> CidrCondition:
    nets: tuple[Network, ...] = tuple(parse_network(v) for v in values)
    return CidrCondition(nets, side=side, negated=negated, label=label)


ConditionCache = dict[tuple[object, ...], Condition]


def _condition(
    cache: ConditionCache | None,
    attribute: Attribute | Side,
    values: Sequence[str],
    *,
    negated: bool,
    label: str,
    node_proxy: bool,
    namespace: str,
    arg: tuple[str, ...] = (),
) -> Condition:
    """A condition (interned in `cache`: conditions are immutable, and policies repeat values).
    `attribute` is a Side for an address block (the shared CidrCondition)."""
    key = (attribute, tuple(values), negated, label, node_proxy, namespace, arg)
    if cache is not None and (found := cache.get(key)) is not None:
        return found
    cond: Condition
    if isinstance(attribute, Side):
        cond = _cidr(values, negated=negated, side=attribute, label=label)
    else:
        cond = make_condition(
            attribute,
            values,
            negated=negated,
            label=label,
            node_proxy=node_proxy,
            policy_namespace=namespace,
            arg=arg,
        )
    if cache is not None:
        cache[key] = cond
    return cond


def _fields_match(
    model: Source | Operation, table: dict[str, _FieldSpec], namespace: str, cache: ConditionCache | None
) -> Match:
    """One Match: a condition per field the manifest sets (in a fixed field order)."""
    conds: list[tuple[int, Condition]] = []
    for attr in model.model_fields_set:
        values: list[str] | None = getattr(model, attr)
        spec = table.get(attr)
        if not values or spec is None:
            continue
        pos, key, attribute, node, negated = spec
        ns = namespace if attribute is Attribute.SERVICE_ACCOUNT else ""
        label = "ipBlocks" if attribute is None else key
        what = Side.SOURCE if attribute is None else attribute
        conds.append(
            (
                pos,
                _condition(cache, what, values, negated=negated, label=label, node_proxy=node, namespace=ns),
            )
        )
    conds.sort(key=lambda pc: pc[0])
    return Match(tuple(c for _, c in conds))


def _when_match(
    key: str, values: Sequence[str], not_values: Sequence[str], namespace: str, cache: ConditionCache | None
) -> Match:
    conds: list[Condition] = []
    node = key in _L4_WHEN
    for negated, vals in ((False, values), (True, not_values)):
        if not vals:
            continue
        label = f"when {key}" + (" notValues" if negated else "")
        if key in ("source.ip", "destination.ip"):
            side = Side.SOURCE if key == "source.ip" else Side.DESTINATION
            conds.append(
                _condition(cache, side, vals, negated=negated, label=label, node_proxy=node, namespace="")
            )
            continue
        split = split_when_key(key)
        base, arg = split if split is not None else (key, ())
        if key in _WHEN_ATTRIBUTES:
            attribute = _WHEN_ATTRIBUTES[key]
        elif base == "request.headers":
            attribute = Attribute.HEADER
        elif base == "request.auth.claims":
            attribute = Attribute.CLAIM
        elif key == "request.auth.audiences":
            attribute, arg = Attribute.CLAIM, ("aud",)
        elif key == "request.auth.presenter":
            attribute, arg = Attribute.CLAIM, ("azp",)
        else:
            attribute = Attribute.ENVOY_FILTER
        ns = namespace if attribute is Attribute.SERVICE_ACCOUNT else ""
        conds.append(
            _condition(
                cache, attribute, vals, negated=negated, label=label, node_proxy=node, namespace=ns, arg=arg
            )
        )
    return Match(tuple(conds))


def policy_ref(doc: Document) -> PolicyRef:
    return PolicyRef(Api.ISTIO, doc.kind, doc.namespace, doc.name)


def compile_authorization_policy(
    doc: AuthorizationPolicy, root_namespace: str, cache: ConditionCache | None = None
) -> Policy:
    """The whole manifest in the IR, every field included (the waypoint / sidecar HTTP view).
    `cache` interns equal conditions across policies (pass one dict per engine)."""
    spec = doc.spec
    ns = doc.namespace
    location = doc.location
    rules: list[Rule] = []
    for i, r in enumerate(spec.rules or []):
        clauses: list[Clause] = []
        if r.from_:
            clauses.append(
                Clause(
                    "from",
                    tuple(
                        _fields_match(f.source, _SOURCE_TABLE, ns, cache)
                        for f in r.from_
                        if f.source is not None
                    ),
                )
            )
        if r.to:
            clauses.append(
                Clause(
                    "to",
                    tuple(
                        _fields_match(t.operation, _OPERATION_TABLE, ns, cache) for t in r.to if t.operation
                    ),
                )
            )
        for j, cond in enumerate(r.when or []):
            match = _when_match(cond.key, cond.values or [], cond.not_values or [], ns, cache)
            clauses.append(Clause(f"when[{j}] {cond.key}", (match,)))
        rules.append(Rule(i, f"spec.rules[{i}]", tuple(clauses)))
    refs = tuple(target_key(ref, ns) for ref in spec.all_target_refs)
    if refs:
        scope = Scope.TARGET_REFS
    elif spec.selector is not None:
        scope = Scope.WORKLOAD_SELECTOR
    else:
        scope = Scope.GLOBAL if ns == root_namespace else Scope.NAMESPACE
    subject = _Subject(LabelSelector.from_labels(spec.selector.match_labels)) if spec.selector else None
    return Policy(
        ref=policy_ref(doc),
        direction=Direction.INGRESS,
        action=Action(spec.action),
        rules=tuple(rules),
        subject=subject,
        scope=scope,
        default_deny=False,
        dry_run=doc.dry_run,
        target_refs=tuple(f"{k}/{n}/{name}" for k, n, name in refs),
        file=location.file,
        line=location.line,
    )


def target_key(ref: PolicyTargetReference, policy_namespace: str) -> tuple[str, str, str]:
    return (ref.kind, ref.namespace or policy_namespace, ref.name)


@dataclass(frozen=True, slots=True)
class _Subject:
    """An Istio workload selector (matchLabels), as the IR's Subject."""

    selector: LabelSelector

    def selects(self, endpoint: object) -> bool:
        return isinstance(endpoint, Endpoint) and self.selector.matches(endpoint.labels)

    def describe(self) -> str:
        return str(self.selector)
