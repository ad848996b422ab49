"""Static reasoning over compiled rules: contradictions and subsumption (for `analyze`).

- A Match no flow can satisfy (`never_matches`): a field whose values are all excluded by its
  `notX` (API `Rule` doc: `X` and `notX` together must both hold), a `notX: ["*"]` that requires
  the field to be absent, a block inside its excluded blocks, or an attribute nodemesh never sees
  (`connection.sni`, `experimental.envoy.filters.*`). NM204 reports a DENY rule with a clause
  made only of such matches.
- Subsumption (`subsumes`): every flow one rule matches, another matches too; each clause of the
  broad rule is implied by some clause of the narrow one (each of its matches implies one of the
  broad clause's matches). Rules combine as ztunnel's matcher does (`ZT:src/rbac.rs`, reference
  §4.5), so implication is decided per field. NM205 reports shadowed rules with it.

Invariants: conservative: both answer yes only when the values show it (equal or contained
values, `*`, nested address blocks); conditions they cannot compare count as different, so some
redundancy goes unreported rather than reported wrongly. Pure functions of the IR.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from nodemesh.policy.conditions import CidrCondition, Network
from nodemesh.policy.ir import Condition, Match, Rule
from nodemesh.policy.istio.conditions import Attribute, IstioCondition

__all__ = ["RuleIndex", "index_rule", "never_matches", "rule_shape", "subsumes"]


def _field_of(c: Condition) -> tuple[object, ...]:
    if isinstance(c, IstioCondition):
        return (c.attribute, c.arg)
    if isinstance(c, CidrCondition):
        return ("cidr", c.side)
    return ("?", id(c))


def _contradiction(m: Match) -> str | None:
    """A Match no flow can satisfy: a field whose values are all excluded by its `notX`."""
    if m.void:
        return "nothing is left to match"
    pos: dict[tuple[object, ...], Condition] = {}
    neg: dict[tuple[object, ...], Condition] = {}
    for c in m.conditions:
        negated = bool(getattr(c, "negated", False))
        (neg if negated else pos)[_field_of(c)] = c
    for key, p in pos.items():
        n = neg.get(key)
        if isinstance(p, IstioCondition) and p.attribute in (Attribute.SNI, Attribute.ENVOY_FILTER):
            return f"nodemesh never sees {p.attribute.value} ({p.label})"
        if n is None:
            continue
        if isinstance(p, IstioCondition) and isinstance(n, IstioCondition):
            if set(p.values) <= set(n.values):
                return f"every value of {p.label} is excluded by {n.label}"
            if "*" in n.values and p.attribute is not Attribute.PORT:
                return f"{n.label} [*] requires {p.label.removesuffix('s')} to be absent"
        if (
            isinstance(p, CidrCondition)
            and isinstance(n, CidrCondition)
            and all(any(_inside(a, b) for b in n.networks) for a in p.networks)
        ):
            return f"every block of {p.label} is inside the excluded blocks"
    return None


def never_matches(rule: Rule) -> str | None:
    for clause in rule.clauses:
        if not clause.matches:
            continue
        reasons = [_contradiction(m) for m in clause.matches]
        if all(reasons):
            return f"{clause.name}: " + "; ".join(dict.fromkeys(r for r in reasons if r))
    return None


def rule_shape(rule: Rule) -> frozenset[object]:
    """A rule's meaning as a hashable value (clause names and match order ignored)."""
    return frozenset(frozenset(m for m in c.matches) for c in rule.clauses if c.matches)


def _cond_implies(narrow: Condition, broad: Condition) -> bool:
    """Whenever `narrow` holds, `broad` holds; both test the same field (same `_field_key`)."""
    if isinstance(narrow, IstioCondition) and isinstance(broad, IstioCondition):
        if narrow.negated:
            return set(broad.values) <= set(narrow.values)
        return set(narrow.values) <= set(broad.values) or (
            "*" in broad.values and narrow.attribute is not Attribute.PORT
        )
    if isinstance(narrow, CidrCondition) and isinstance(broad, CidrCondition):
        if narrow.excepts or broad.excepts:
            return narrow == broad
        inner, outer = (broad, narrow) if narrow.negated else (narrow, broad)
        return all(any(_inside(a, b) for b in outer.networks) for a in inner.networks)
    return narrow == broad


def _field_key(c: Condition) -> tuple[object, ...]:
    if isinstance(c, IstioCondition):
        return (c.attribute, c.arg, c.negated)
    if isinstance(c, CidrCondition):
        return ("cidr", c.side, c.negated)
    return ("?", id(c))


@dataclass(frozen=True, slots=True)
class _MatchIndex:
    """A Match's conditions by field, for the subsumption test."""

    void: bool
    fields: Mapping[tuple[object, ...], tuple[Condition, ...]]
    keys: frozenset[tuple[object, ...]]


RuleIndex = tuple[tuple[_MatchIndex, ...], ...]  # the non-empty clauses


def index_rule(rule: Rule) -> RuleIndex:
    out = []
    for clause in rule.clauses:
        if not clause.matches:
            continue
        matches = []
        for m in clause.matches:
            fields: dict[tuple[object, ...], list[Condition]] = {}
            for c in m.conditions:
                fields.setdefault(_field_key(c), []).append(c)
            frozen = {k: tuple(v) for k, v in fields.items()}
            matches.append(_MatchIndex(m.void, frozen, frozenset(frozen)))
        out.append(tuple(matches))
    return tuple(out)


def _inside(a: Network, b: Network) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False


def _match_implies(narrow: _MatchIndex, broad: _MatchIndex) -> bool:
    if narrow.void:
        return True
    if broad.void or not broad.keys <= narrow.keys:
        return False
    for key, conds in broad.fields.items():
        candidates = narrow.fields[key]
        for b in conds:
            if not any(_cond_implies(n, b) for n in candidates):
                return False
    return True


def subsumes(broad: RuleIndex, narrow: RuleIndex) -> bool:
    """Every flow `narrow` matches, `broad` matches: each clause of `broad` is implied by some
    clause of `narrow` (each of its matches implies one of the broad clause's matches)."""
    for bc in broad:
        if not any(all(any(_match_implies(nm, bm) for bm in bc) for nm in nc) for nc in narrow):
            return False
    return True
