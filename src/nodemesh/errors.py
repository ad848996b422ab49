"""The exception hierarchy shared by every nodemesh package.

Errors are split by blame, as h11 and h2 do: `ManifestError` is the user's input, the rest are
nodemesh's own. Every error carries enough to act on it: a manifest error names the file, the
line, the field path, what was expected and, for a misspelt field, the closest valid name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ManifestError", "ManifestProblem", "NodemeshError", "UsageError"]


class NodemeshError(Exception):
    """Base class of every error nodemesh raises on purpose."""

    exit_code: int = 1


class UsageError(NodemeshError):
    """A command line that cannot be acted on (unknown workload, bad flag value)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One thing wrong with one document: where it is and what was expected there."""

    file: str
    line: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {what}" + (f" ({self.hint})" if self.hint else "")


@dataclass
class ManifestError(NodemeshError):
    """A batch of manifests was rejected; nothing from it was applied."""

    problems: list[ManifestProblem] = field(default_factory=list)
    exit_code: int = 2

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        head = "the batch was rejected, nothing was applied:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])
