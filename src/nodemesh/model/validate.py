"""Turning raw YAML documents into typed, validated `Document`s, all or nothing.

A batch is validated as a whole: every problem of every document is collected, then one
`ManifestError` is raised listing them all (file, line, field path, what was expected, and for an
unknown field the closest valid name). Nothing is returned unless everything is valid, so a caller
that applies the result can never half-apply a batch.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence

import pydantic
from pydantic import BaseModel

from nodemesh.errors import ManifestError, ManifestProblem
from nodemesh.model.loader import FieldPath, RawDocument, load_paths
from nodemesh.model.schema import KINDS, Document

__all__ = ["load_documents", "parse_documents"]


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _model_at(model: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `path` (aliases), or None if not a model."""
    current: object = model
    for part in path:
        current = _unwrap(current)
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next((f for name, f in current.model_fields.items() if part in (f.alias or name, name)), None)
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: object) -> object:
    """Strip Optional/Union/list/dict wrappers down to the one model inside, if any."""
    for _ in range(6):
        origin = typing.get_origin(annotation)
        if origin is None:
            return annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, types.UnionType):
            models = [a for a in args if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]  # type: ignore[arg-type]
            annotation = models[0] if models else args[0]
        elif origin in (list, tuple, set, frozenset, dict):
            annotation = args[-1] if args else object
        else:
            return annotation
    return annotation


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _clean_loc(loc: tuple[str | int, ...]) -> FieldPath:
    # pydantic inserts union-member tags ("int", "str", "function-after[...]") into locations
    # of union-typed fields; they are not part of the user's document.
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in {"int", "str", "bool", "float", "list", "dict"}):
            continue
        out.append(part)
    return tuple(out)


def _problems_from(
    exc: pydantic.ValidationError, raw: RawDocument, model: type[Document]
) -> list[ManifestProblem]:
    out: list[ManifestProblem] = []
    seen: set[tuple[FieldPath, str]] = set()
    for err in exc.errors():
        path = _clean_loc(tuple(err["loc"]))
        kind = err["type"]
        hint = ""
        if kind == "extra_forbidden":
            parent = _model_at(model, path[:-1])
            valid = _field_names(parent) if parent else []
            close = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.6)
            message = "unknown field"
            if close:
                hint = f"did you mean {close[0]!r}?"
            elif valid:
                hint = "valid fields: " + ", ".join(sorted(valid))
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error":
            message = f"expected {err['ctx']['expected']}, got {err.get('input')!r}"
        else:
            message = f"{err['msg']} (got {err.get('input')!r})" if "input" in err else err["msg"]
        key = (path, message)
        if key in seen:
            continue
        seen.add(key)
        out.append(raw.location.problem(path, message, hint))
    return out


def parse_documents(raws: Iterable[RawDocument]) -> list[Document]:
    """Validate every document; return them all, or raise one ManifestError listing every problem."""
    docs: list[Document] = []
    problems: list[ManifestProblem] = []
    for raw in raws:
        api_version, kind = raw.body.get("apiVersion"), raw.body.get("kind")
        if not isinstance(api_version, str) or not api_version:
            problems.append(raw.location.problem(("apiVersion",), "required field is missing"))
            continue
        if not isinstance(kind, str) or not kind:
            problems.append(raw.location.problem(("kind",), "required field is missing"))
            continue
        group, version = _split_api_version(api_version)
        entry = KINDS.get((group, kind))
        if entry is None:
            known = sorted({k for _, k in KINDS})
            close = difflib.get_close_matches(kind, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known kinds: " + ", ".join(known)
            problems.append(
                raw.location.problem(("kind",), f"unknown kind {kind!r} in {api_version!r}", hint)
            )
            continue
        versions, model = entry
        if version not in versions:
            accepted = ", ".join(f"{group + '/' if group else ''}{v}" for v in versions)
            problems.append(
                raw.location.problem(
                    ("apiVersion",), f"{kind} is not served as {api_version!r}", f"use {accepted}"
                )
            )
            continue
        try:
            doc = model.model_validate({**raw.body, "apiVersion": api_version})
        except pydantic.ValidationError as exc:
            problems.extend(_problems_from(exc, raw, model))
            continue
        doc._location = raw.location
        semantic = doc.semantic_problems()
        if semantic:
            problems.extend(raw.location.problem(path, message) for path, message in semantic)
            continue
        docs.append(doc)
    if problems:
        raise ManifestError(problems)
    return docs


def load_documents(paths: Iterable[str]) -> list[Document]:
    """Load and validate files, directories and stdin (`-`) as one batch."""
    return parse_documents(load_paths(paths))
