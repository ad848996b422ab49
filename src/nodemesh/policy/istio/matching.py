"""Rule matching: ztunnel's `Authorization::matches`, and the same as precompiled predicates.

The algorithm (`ZT:src/rbac.rs`, reference §4.5): a policy's rules are OR'd, the first rule that
matches is the one reported; a rule matches when every clause holds; an empty clause holds; a
clause holds when one of its matches holds, skipping `void` matches (ztunnel skips empty matches,
ZT PR #495), so a clause of void matches never holds; a match holds when all its conditions do.

`first_match` runs that on the IR. `compile_rules` turns a (projected) policy into nested tuples
of predicates once, and `match_compiled` runs the same algorithm over them with fewer attribute
lookups: it is the hot path. Invariant: both return the same rule for every flow (a Hypothesis
test compares them with `Rule.matches` in every view's projection).
"""

from __future__ import annotations

from collections.abc import Callable

from nodemesh.policy.flow import FlowContext
from nodemesh.policy.ir import Condition, Policy, Rule
from nodemesh.policy.istio.conditions import IstioCondition

__all__ = ["Check", "Compiled", "compile_rules", "first_match", "match_compiled"]

Check = Callable[[FlowContext], bool]
Compiled = tuple[tuple[Rule, tuple[tuple[tuple[Check, ...], ...], ...]], ...]


def _check(c: Condition) -> Check:
    if isinstance(c, IstioCondition):
        test = c.test
        return test if not c.negated else (lambda ctx: not test(ctx))
    return c.matches


def compile_rules(policy: Policy) -> Compiled:
    """The rules as nested tuples of predicates, for `match_compiled`: empty clauses (always true)
    are left out, void matches are left out (a clause of void matches becomes `()`: never true)."""
    return tuple(
        (
            rule,
            tuple(
                tuple(tuple(_check(c) for c in m.conditions) for m in clause.matches if not m.void)
                for clause in rule.clauses
                if clause.matches
            ),
        )
        for rule in policy.rules
    )


def match_compiled(compiled: Compiled, ctx: FlowContext) -> Rule | None:
    """`first_match` over `compile_rules` output: same semantics, fewer attribute lookups."""
    for rule, clauses in compiled:
        for matches in clauses:
            for checks in matches:
                for check in checks:
                    if not check(ctx):
                        break
                else:
                    break
            else:
                break
        else:
            return rule
    return None


def first_match(policy: Policy, ctx: FlowContext) -> Rule | None:
    """ztunnel's `Authorization::matches` (reference §4.5), returning the rule that matched."""
    for rule in policy.rules:
        for clause in rule.clauses:
            matches = clause.matches
            if not matches:
                continue
            for m in matches:
                if m.void:
                    continue
                for c in m.conditions:
                    if not c.matches(ctx):
                        break
                else:
                    break  # this match holds: the clause holds
            else:
                break  # no match held: the clause fails, the rule fails
        else:
            return rule
    return None
