"""What a write to the store did: plain values shared by the store, the server and the client
(kept free of heavy imports so that the CLI's client stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Action", "DocKey", "ResourceResult", "WriteOutcome"]

DocKey = tuple[str, str, str]
"""(kind, namespace, name); the namespace is "" for cluster-wide kinds."""


class Action(Enum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class ResourceResult:
    key: DocKey
    action: Action
    resource_version: int


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a write did. `revision` is the store's revision after it (unchanged if nothing was)."""

    revision: int
    results: tuple[ResourceResult, ...]

    @property
    def changed(self) -> bool:
        return any(r.action is not Action.UNCHANGED for r in self.results)
