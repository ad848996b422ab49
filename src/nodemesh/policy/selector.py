"""Kubernetes label selectors (`metav1.LabelSelector`), exactly as Kubernetes evaluates them.

Rules (k8s.io/apimachinery `labels.Selector`, LabelSelectorAsSelector):
- matchLabels and matchExpressions are ANDed; an empty selector matches everything.
- `In`: the label is present and its value is listed. `NotIn`: absent, or present with an
  unlisted value. `Exists` / `DoesNotExist`: presence only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["LabelSelector", "Operator", "Requirement", "SelectorModel"]


class Operator(Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op is Operator.IN:
            return labels.get(self.key) in self.values
        if op is Operator.NOT_IN:
            value = labels.get(self.key)
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.operator in (Operator.IN, Operator.NOT_IN):
            word = "in" if self.operator is Operator.IN else "notin"
            return f"{self.key} {word} ({','.join(sorted(self.values))})"
        return self.key if self.operator is Operator.EXISTS else f"!{self.key}"


class _RequirementModel(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def operator(self) -> str: ...
    @property
    def values(self) -> Sequence[str]: ...


class SelectorModel(Protocol):
    """What a parsed manifest selector looks like (schema.base.LabelSelectorModel)."""

    @property
    def match_labels(self) -> Mapping[str, str]: ...
    @property
    def match_expressions(self) -> Sequence[_RequirementModel]: ...


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A compiled selector: every requirement must hold. No requirements = matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        return cls(tuple(Requirement(k, Operator.IN, frozenset({v})) for k, v in sorted(labels.items())))

    @classmethod
    def from_model(cls, model: SelectorModel) -> LabelSelector:
        reqs = [Requirement(k, Operator.IN, frozenset({v})) for k, v in sorted(model.match_labels.items())]
        reqs += [
            Requirement(e.key, Operator(e.operator), frozenset(e.values)) for e in model.match_expressions
        ]
        return cls(tuple(reqs))

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements) if self.requirements else "<all>"
