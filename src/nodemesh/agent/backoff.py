"""Reconnect delays: exponential backoff with jitter, as gRPC's connection backoff specifies.

gRPC doc/connection-backoff.md: "Exponentially back off the start time of connection attempts
up to a limit of MAX_BACKOFF, with jitter": `current_backoff = Min(current_backoff * MULTIPLIER,
MAX_BACKOFF)`, the next attempt at `current_backoff + UniformRandom(-JITTER * current_backoff,
JITTER * current_backoff)`, with INITIAL_BACKOFF = 1 s, MULTIPLIER = 1.6, JITTER = 0.2,
MAX_BACKOFF = 120 s. The backoff is reset once a connection is established, so that agents
restarting together after a control-plane outage do not reconnect in lockstep.

Pure: the attempt number and the randomness are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.ca.rotation import UniformSource

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    """Seconds before the first retry (INITIAL_BACKOFF)."""
    multiplier: float = 1.6
    jitter: float = 0.2
    """Relative half-width of the uniform jitter."""
    maximum: float = 120.0
    """Upper bound of the un-jittered backoff (MAX_BACKOFF)."""

    def base(self, attempt: int) -> float:
        """The un-jittered delay before retry number `attempt` (0-based)."""
        return min(self.initial * self.multiplier**attempt, self.maximum)

    def delay(self, attempt: int, rng: UniformSource) -> float:
        base = self.base(attempt)
        return max(0.0, base + rng.uniform(-self.jitter * base, self.jitter * base))
