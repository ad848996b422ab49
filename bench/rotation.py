"""Certificate rotation storm: 10,000 workloads created in the same second, renewed over 3 days.

Every workload gets a 24 h certificate when it is created (all within one second), then renews
it at its refresh time (`RotationPolicy.refresh_at`): without jitter exactly at half the
lifetime, so all 10,000 renewals fall in the same second, every 12 hours, forever; with Istio's
jitter (`SECRET_GRACE_PERIOD_RATIO_JITTER` 0.01: +/- 1% of the lifetime, about +/- 14 minutes)
the first wave spreads over ~29 minutes and later waves spread further (the offsets add up).

The simulation is pure (time is a number, randomness a seeded generator). To turn rates into
consequences it also measures this machine's real signing rate (`CertificateAuthority.
sign_workload`, one core) and replays each wave through a single-server queue at that rate:
the worst wait is how late the last renewal of a wave is served.

Run: .venv/bin/python bench/rotation.py [--workloads 10000] [--hours 72] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from nodemesh.ca import (
    DEFAULT_ROTATION,
    NO_JITTER,
    CertificateAuthority,
    RootCA,
    RotationPolicy,
    SpiffeId,
    build_csr,
    generate_key,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
LIFETIME = timedelta(hours=24)


def signing_times(policy: RotationPolicy, workloads: int, hours: float, seed: int) -> list[float]:
    """Seconds (from T0) of every signature: creation, then each renewal until `hours`."""
    rng = random.Random(seed)
    end = T0 + timedelta(hours=hours)
    out: list[float] = []
    for _ in range(workloads):
        issued = T0 + timedelta(seconds=rng.random())  # all created within the same second
        while issued < end:
            out.append((issued - T0).total_seconds())
            issued = policy.refresh_at(issued, issued + LIFETIME, rng)
    return out


def measure_signing_rate(samples: int = 300) -> float:
    ca = CertificateAuthority.create(RootCA.generate("cluster.local", T0))
    identity = SpiffeId("cluster.local", "bench", "workload")
    csrs = [build_csr(generate_key(), identity) for _ in range(samples)]
    start = time.perf_counter()
    for csr in csrs:
        ca.sign_workload(csr, identity, T0)
    return samples / (time.perf_counter() - start)


def worst_wait(times: list[float], rate: float) -> float:
    """A single signer serving requests in arrival order at `rate` per second: the longest
    time any request waits."""
    free_at = 0.0
    worst = 0.0
    for t in sorted(times):
        start = max(t, free_at)
        free_at = start + 1.0 / rate
        worst = max(worst, free_at - t)
    return worst


def report(name: str, times: list[float], rate: float) -> None:
    renewals = [t for t in times if t >= 1.0]
    per_second = Counter(int(t) for t in renewals)
    first_wave = [t for t in renewals if t < 18 * 3600]
    wave_seconds = Counter(int(t) for t in first_wave)
    span = (max(first_wave) - min(first_wave)) / 60 if first_wave else 0.0
    print(
        f"{name:18} peak {max(per_second.values()):6d} signatures/s over the run; first renewal wave: "
        f"peak {max(wave_seconds.values()):5d}/s, spread over {span:5.1f} min "
        f"({len(wave_seconds)} distinct seconds); worst wait at {rate:.0f}/s: {worst_wait(renewals, rate):6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=72.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rate = measure_signing_rate()
    print(
        f"{args.workloads} workloads created within one second (24 h certificates), simulated for {args.hours:.0f} h"
    )
    print(f"this machine's CA signs {rate:.0f} certificates/s (one core)")
    print(f"creation: {args.workloads} signatures in the first second (same with or without jitter)")
    report("no jitter", signing_times(NO_JITTER, args.workloads, args.hours, args.seed), rate)
    report(
        "jitter +/-1% (Istio)", signing_times(DEFAULT_ROTATION, args.workloads, args.hours, args.seed), rate
    )


if __name__ == "__main__":
    main()
