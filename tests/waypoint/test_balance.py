"""Envoy's LEAST_REQUEST balancer (equal weights), the waypoint's per-request endpoint choice,
with a scripted random source and fixed active-request counts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from nodemesh.waypoint.balance import least_request


def _draws(*indexes: int) -> tuple[list[int], Callable[[int], int]]:
    """A random source returning `indexes` in order, and the list of the ranges it was asked."""
    asked: list[int] = []
    it = iter(indexes)

    def index(n: int) -> int:
        asked.append(n)
        return next(it)

    return asked, index


def test_two_random_choices_the_one_with_fewer_active_requests_wins() -> None:
    """Envoy `least_request.proto` `choice_count`: "The number of random healthy hosts from which
    the host with the fewest active requests will be chosen. Defaults to 2 so that we perform
    two-choice selection": exactly two draws over all endpoints, and the drawn host with fewer
    active requests is chosen, whichever order it was drawn in."""
    active = {"a": 3, "b": 0, "c": 5}
    for first, second in ((0, 1), (1, 0)):
        asked, index = _draws(first, second)
        assert least_request(["a", "b", "c"], active.__getitem__, index) == "b"
        assert asked == [3, 3]
    _, index = _draws(2, 0)
    assert least_request(["a", "b", "c"], active.__getitem__, index) == "a"


def test_a_tie_keeps_the_first_random_draw() -> None:
    """Envoy `unweightedHostPick` replaces its candidate only when the sampled host has FEWER
    active requests (`least_request_lb.cc`), so equal counts keep the first draw, itself random:
    ties are broken at random."""
    active = {"a": 1, "b": 1}
    for first, second, expected in ((0, 1, "a"), (1, 0, "b")):
        _, index = _draws(first, second)
        assert least_request(["a", "b"], active.__getitem__, index) == expected


def test_a_single_endpoint_is_always_chosen_without_drawing() -> None:
    """With one healthy host, P2C has nothing to compare: that host serves every request, however
    busy it is (Envoy picks among healthy hosts only; there is no other)."""
    asked, index = _draws()
    assert least_request(["only"], lambda _: 1000, index) == "only"
    assert asked == []
    with pytest.raises(ValueError, match="no endpoint"):
        least_request([], lambda _: 0, random.Random(1).randrange)


def test_idle_endpoints_share_requests_and_a_busy_one_is_avoided() -> None:
    """ "randomly picks up N healthy hosts ... and compares number of active requests ... known as
    P2C (power of two choices)" (Envoy `least_request_lb.h`): with equal load the choice is
    uniform, so sequential requests reach every endpoint; a host with more requests in flight is
    chosen only when both draws land on it (probability 1/n^2), never over an idle one drawn."""
    rng = random.Random(7)
    idle = Counter(least_request(["a", "b"], lambda _: 0, rng.randrange) for _ in range(400))
    assert set(idle) == {"a", "b"} and min(idle.values()) > 150
    busy = {"a": 4, "b": 0, "c": 0}
    picks = Counter(least_request(list(busy), busy.__getitem__, rng.randrange) for _ in range(900))
    assert picks["a"] < 900 // 9 * 2 and picks["b"] > 300 and picks["c"] > 300
