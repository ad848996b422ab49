"""When to renew a certificate: at half its lifetime, moved by a random jitter.

ztunnel refreshes a workload certificate at half of its lifetime (ZT:src/tls/certificate.rs
`refresh_at`). Istio's agent adds a jitter to that ratio: "`SECRET_GRACE_PERIOD_RATIO_JITTER`
with a default value of 0.01 to introduce a randomized offset in `SECRET_GRACE_PERIOD_RATIO`.
Without this configuration, proxies deployed at the same time will all request renewed
certificates simultaneously which can cause excessive CA server load" (Istio 1.24 release notes,
issue #52102); the grace period is `(ratio + U(-jitter, +jitter)) * lifetime` before expiry
(security/pkg/nodeagent/cache/secretcache.go `rotateTime`). This module does exactly that.

Pure: time (`not_before`, `not_after`) and randomness (`rng`) are arguments. Invariant: the
refresh time is always strictly inside the certificate's validity, so a renewal always happens
before expiry, whatever the jitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["DEFAULT_ROTATION", "NO_JITTER", "RotationPolicy", "UniformSource"]


class UniformSource(Protocol):
    """What `random.Random` offers and the rotation needs."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Renew when `grace_ratio` (+/- `jitter_ratio`) of the lifetime remains."""

    grace_ratio: float = 0.5
    """Fraction of the lifetime left at renewal (Istio `SECRET_GRACE_PERIOD_RATIO`, 0.5)."""
    jitter_ratio: float = 0.01
    """Half-width of the uniform jitter on the ratio (Istio `SECRET_GRACE_PERIOD_RATIO_JITTER`)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter_ratio < self.grace_ratio < 1.0 or self.grace_ratio + self.jitter_ratio >= 1:
            raise ValueError("need 0 <= jitter_ratio < grace_ratio and grace_ratio + jitter_ratio < 1")

    def refresh_at(self, not_before: datetime, not_after: datetime, rng: UniformSource | None) -> datetime:
        """The time to renew a certificate valid from `not_before` to `not_after`.

        `rng` None (or `jitter_ratio` 0) means no jitter: exactly at `1 - grace_ratio` of the
        lifetime (half, by default).
        """
        lifetime = not_after - not_before
        jitter = rng.uniform(-self.jitter_ratio, self.jitter_ratio) if rng and self.jitter_ratio else 0.0
        grace = lifetime * (self.grace_ratio + jitter)
        return not_after - grace


DEFAULT_ROTATION = RotationPolicy()
NO_JITTER = RotationPolicy(jitter_ratio=0.0)
