"""Which endpoint serves a request: Envoy's LEAST_REQUEST load balancer, equal weights.

Envoy (the Istio waypoint) load-balances each HTTP request, not each client connection; Istio's
default `DestinationRule` policy is LEAST_REQUEST (istio.io DestinationRule
`LoadBalancerSettings.SimpleLB`), which is Envoy's least-request balancer with its default
`choice_count` of 2: "The number of random healthy hosts from which the host with the fewest
active requests will be chosen. Defaults to 2 so that we perform two-choice selection"
(Envoy `least_request.proto`). With equal host weights (Kubernetes endpoints have none) Envoy
"randomly picks up N healthy hosts ... and compares number of active requests ... known as P2C
(power of two choices)" (Envoy `least_request_lb.h`).

Invariants (as Envoy's `unweightedHostPick`)
- The hosts are drawn uniformly at random, with replacement: a single endpoint is always chosen.
- A later draw replaces the candidate only with strictly FEWER active requests, so a tie keeps
  the first draw, itself random: ties are broken at random.
- Pure: the random source (`index(n)` in `[0, n)`) and the active-request counts are arguments;
  the shell (`proxy.py`) counts a request active from its upstream checkout to its release.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["CHOICE_COUNT", "RandomIndex", "least_request"]

T = TypeVar("T")

CHOICE_COUNT = 2
"""Envoy `LeastRequest.choice_count` default: two-choice selection."""

RandomIndex = Callable[[int], int]
"""`index(n)` -> a uniform integer in `[0, n)` (e.g. `random.Random().randrange`)."""


def least_request(
    endpoints: Sequence[T],
    active: Callable[[T], int],
    index: RandomIndex,
    choices: int = CHOICE_COUNT,
) -> T:
    """The endpoint with the fewest active requests among `choices` random draws (module doc).

    `endpoints` are the healthy ones (non-empty); `active(endpoint)` its requests in flight."""
    if not endpoints:
        raise ValueError("no endpoint to choose from")
    if len(endpoints) == 1:
        return endpoints[0]
    candidate = endpoints[index(len(endpoints))]
    for _ in range(choices - 1):
        sampled = endpoints[index(len(endpoints))]
        if active(sampled) < active(candidate):
            candidate = sampled
    return candidate
