"""Renewal schedule (half lifetime, jittered) and reconnect backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.agent.backoff import Backoff
from nodemesh.ca import DEFAULT_ROTATION, NO_JITTER, RotationPolicy

NB = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(hours=24)


def test_without_jitter_renewal_is_at_half_the_lifetime() -> None:
    """ZT:src/tls/certificate.rs `refresh_at`: a certificate is refreshed at half its lifetime."""
    assert NO_JITTER.refresh_at(NB, NB + DAY, random.Random(1)) == NB + timedelta(hours=12)
    assert DEFAULT_ROTATION.refresh_at(NB, NB + DAY, None) == NB + timedelta(hours=12)


def test_jitter_spreads_renewals_around_half_the_lifetime() -> None:
    """Istio `SECRET_GRACE_PERIOD_RATIO_JITTER` (default 0.01): "introduce a randomized offset in
    SECRET_GRACE_PERIOD_RATIO. Without this configuration, proxies deployed at the same time
    will all request renewed certificates simultaneously"; for 24 h certificates renewal is
    "every 12 hours [...] +/- approximately 15 minutes"."""
    rng = random.Random(7)
    times = [DEFAULT_ROTATION.refresh_at(NB, NB + DAY, rng) for _ in range(10_000)]
    offsets = [(t - (NB + timedelta(hours=12))).total_seconds() for t in times]
    assert max(abs(o) for o in offsets) <= 0.01 * DAY.total_seconds()
    assert min(offsets) < -800 and max(offsets) > 800  # spread over the whole +/-14.4 min window
    per_second: dict[int, int] = {}
    for o in offsets:
        per_second[int(o)] = per_second.get(int(o), 0) + 1
    assert max(per_second.values()) < 30  # vs 10,000 in one second without jitter


@given(
    lifetime_s=st.integers(min_value=60, max_value=90 * 86400),
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.floats(min_value=0.0, max_value=0.4),
)
def test_renewal_always_happens_before_expiry(lifetime_s: int, seed: int, jitter: float) -> None:
    """Whatever the lifetime and the jitter, the refresh time is inside the validity period,
    so a certificate is renewed before it expires."""
    policy = RotationPolicy(grace_ratio=0.5, jitter_ratio=jitter)
    na = NB + timedelta(seconds=lifetime_s)
    at = policy.refresh_at(NB, na, random.Random(seed))
    assert NB < at < na


def test_policy_rejects_jitter_that_could_pass_expiry() -> None:
    with pytest.raises(ValueError):
        RotationPolicy(grace_ratio=0.5, jitter_ratio=0.6)


def test_backoff_follows_grpc_connection_backoff() -> None:
    """gRPC doc/connection-backoff.md: INITIAL_BACKOFF 1 s, MULTIPLIER 1.6, MAX_BACKOFF 120 s,
    next = current_backoff + UniformRandom(-JITTER * current_backoff, JITTER * current_backoff),
    JITTER 0.2."""
    b = Backoff()
    assert [round(b.base(i), 3) for i in range(4)] == [1.0, 1.6, 2.56, 4.096]
    assert b.base(50) == 120.0
    rng = random.Random(3)
    delays = [b.delay(5, rng) for _ in range(1000)]
    base = b.base(5)
    assert all(0.8 * base <= d <= 1.2 * base for d in delays)
    assert max(delays) - min(delays) > 0.3 * base  # agents do not reconnect in lockstep
