"""Typed, validated resource documents: the edge where raw YAML becomes values, once.

Every kind is a pydantic model that keeps the upstream (camelCase) field names as aliases and
forbids unknown fields, so a misspelt field is an error, not a silent no-op. Kinds register
themselves in `KINDS` under (API group, kind) with the versions they accept. Checks that pydantic
cannot express (Istio's validation rules, mutually exclusive fields) live in each kind's
`semantic_problems`, which returns (field path, message) pairs so that errors keep their line.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel

from nodemesh.model.loader import FieldPath, SourceLocation

__all__ = [
    "KINDS",
    "Document",
    "LabelSelectorModel",
    "LabelSelectorRequirementModel",
    "ObjectMeta",
    "Problem",
    "Spec",
    "register",
]

Problem = tuple[FieldPath, str]


class Spec(BaseModel):
    """Base of every nested object: upstream camelCase names, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=False
    )


class ObjectMeta(BaseModel):
    """`metadata`: name, namespace, labels, annotations. Other keys (uid, resourceVersion,
    managedFields, ... as `kubectl get -o yaml` prints them) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LabelSelectorRequirementModel(Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelectorModel(Spec):
    """Kubernetes `metav1.LabelSelector`."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirementModel] = Field(default_factory=list)

    def semantic_problems(self, at: FieldPath) -> list[Problem]:
        out: list[Problem] = []
        for i, req in enumerate(self.match_expressions):
            if req.operator in ("In", "NotIn") and not req.values:
                out.append(((*at, "matchExpressions", i, "values"), f"operator {req.operator} needs values"))
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                out.append(
                    ((*at, "matchExpressions", i, "values"), f"operator {req.operator} takes no values")
                )
        return out


class Document(BaseModel):
    """A whole manifest: apiVersion, kind, metadata and the kind's own fields."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    api_version: str
    kind: str
    metadata: ObjectMeta

    namespaced: ClassVar[bool] = True
    _location: SourceLocation | None = PrivateAttr(default=None)

    @property
    def location(self) -> SourceLocation:
        if self._location is None:
            return SourceLocation("<memory>", 0, {})
        return self._location

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The namespace; "default" when a namespaced document does not say; "" when cluster-wide."""
        if not self.namespaced:
            return ""
        return self.metadata.namespace or "default"

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @property
    def ref(self) -> str:
        """`Kind/namespace/name` (or `Kind/name` when cluster-wide), as messages print it."""
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespaced else f"{self.kind}/{self.name}"

    def semantic_problems(self) -> list[Problem]:
        """Rules a schema cannot state. Overridden per kind; paths are from the document root."""
        return []


# (group, kind) -> (accepted versions, model)
KINDS: dict[tuple[str, str], tuple[tuple[str, ...], type[Document]]] = {}


def register(group: str, kind: str, versions: tuple[str, ...]) -> Any:
    """Class decorator: accept `kind` under `<group>/<version>` for every listed version."""

    def wrap(cls: type[Document]) -> type[Document]:
        KINDS[(group, kind)] = (versions, cls)
        return cls

    return wrap
