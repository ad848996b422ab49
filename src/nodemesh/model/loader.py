"""Reading Kubernetes-shaped YAML: files, whole directories and stdin, with line numbers.

PyYAML's composer gives every node its start mark; we walk the node tree once and keep, for each
field path of each document, the line it starts on. Validation errors then name the exact line of
the offending field (or of its nearest present parent, for a missing field). No validation
happens here beyond "is this YAML and is each document a mapping".
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import yaml

from nodemesh.errors import ManifestError, ManifestProblem

__all__ = ["FieldPath", "RawDocument", "SourceLocation", "format_path", "load_paths", "load_text"]

FieldPath: TypeAlias = tuple[str | int, ...]
YamlValue: TypeAlias = object

_SUFFIXES = (".yaml", ".yml", ".json")


def format_path(path: Iterable[str | int]) -> str:
    """`("spec", "rules", 0, "from")` -> `spec.rules[0].from`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a document came from, and the line of every field path inside it."""

    file: str
    line: int
    lines: Mapping[FieldPath, int]

    def line_of(self, path: FieldPath) -> int:
        """The line of `path`, or of its longest present prefix."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line

    def problem(self, path: FieldPath, message: str, hint: str = "") -> ManifestProblem:
        return ManifestProblem(self.file, self.line_of(path), format_path(path), message, hint)


@dataclass(frozen=True, slots=True)
class RawDocument:
    """One YAML document, still untyped, with where it came from."""

    body: dict[str, YamlValue]
    location: SourceLocation


def _construct(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> YamlValue:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, YamlValue] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            out[str(key)] = _construct(value_node, (*path, str(key)), lines)
            lines[(*path, str(key))] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> YamlValue:
    # Let PyYAML's safe constructor resolve tags (ints, bools, nulls) for one scalar.
    constructor = yaml.SafeLoader("")
    return constructor.construct_object(node, deep=True)


def load_text(text: str, file: str) -> list[RawDocument]:
    """Parse a multi-document YAML text; raises ManifestError naming the file and line."""
    docs: list[RawDocument] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        raise ManifestError([ManifestProblem(file, line, "", f"not valid YAML: {exc.problem}")]) from exc
    problems: list[ManifestProblem] = []
    for node in nodes:
        if node is None:
            continue
        lines: dict[FieldPath, int] = {}
        body = _construct(node, (), lines)
        location = SourceLocation(file, node.start_mark.line + 1, lines)
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(location.problem((), "a document must be a mapping with apiVersion and kind"))
            continue
        if body.get("kind") == "List" and isinstance(body.get("items"), list):
            # `kubectl get -o yaml` output: a v1 List wrapping the real objects.
            for i, item in enumerate(body["items"]):
                sub = {p[2:]: ln for p, ln in lines.items() if p[:2] == ("items", i)}
                if isinstance(item, dict):
                    docs.append(RawDocument(item, SourceLocation(file, lines[("items", i)], sub)))
            continue
        docs.append(RawDocument(body, location))
    if problems:
        raise ManifestError(problems)
    return docs


def _expand(paths: Iterable[str]) -> Iterator[Path | None]:
    for raw in paths:
        if raw == "-":
            yield None
            continue
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise ManifestError([ManifestProblem(raw, 0, "", "no such file or directory")])


def load_paths(paths: Iterable[str]) -> list[RawDocument]:
    """Load files, directories (recursively, *.yaml/*.yml/*.json, sorted) and `-` for stdin.

    Every file is read before any error is raised, so one call reports every YAML problem.
    """
    docs: list[RawDocument] = []
    problems: list[ManifestProblem] = []
    for path in _expand(paths):
        name = "<stdin>" if path is None else str(path)
        text = sys.stdin.read() if path is None else path.read_text(encoding="utf-8")
        try:
            docs.extend(load_text(text, name))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return docs
