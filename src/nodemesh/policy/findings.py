"""Findings of `nodemesh analyze`: a code, a severity, the resource and a message.

Codes are stable (scripts grep for them) and grouped by API:
NM1xx cross-API and mesh wiring, NM2xx Istio, NM3xx Cilium, NM4xx Kubernetes NetworkPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Finding", "Severity"]


class Severity(Enum):
    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    resource: str  # "AuthorizationPolicy shop/orders-from-frontend"
    message: str
    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f" ({self.file}:{self.line})" if self.file else ""
        return f"{self.severity.value} [{self.code}] {self.resource}{where}: {self.message}"
