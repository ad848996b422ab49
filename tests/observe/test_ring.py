"""The per-node ring: bounded like Hubble's ring buffer, counting what readers lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.observe.flow import Flow
from nodemesh.observe.ring import DEFAULT_CAPACITY, FlowRing

from .strategies import flow


def numbered(n: int) -> list[Flow]:  # flows distinguishable by their byte count
    return [flow(at=timedelta(milliseconds=i), bytes_sent=i) for i in range(n)]


def test_default_capacity_is_hubbles() -> None:
    """cilium.md §2.3: "Ring buffer `hubble-event-buffer-capacity` = 4095 flows per node"."""
    assert DEFAULT_CAPACITY == 4095
    assert FlowRing().capacity == 4095
    with pytest.raises(ValueError):
        FlowRing(0)


@given(
    capacity=st.integers(min_value=1, max_value=20),
    pushed=st.integers(min_value=0, max_value=60),
    cursor=st.integers(min_value=0, max_value=70),
    n=st.integers(min_value=-1, max_value=30),
)
def test_ring_against_a_list(capacity: int, pushed: int, cursor: int, n: int) -> None:
    """The ring holds the newest `capacity` flows; a reader whose cursor (last sequence number
    seen) points at overwritten flows is told how many it lost, as Hubble reports `lost_events`
    from HUBBLE_RING_BUFFER ("requested data has been overwritten")."""
    ring = FlowRing(capacity)
    model = numbered(pushed)
    seqs = [ring.push(f) for f in model]
    assert seqs == list(range(1, pushed + 1))
    held = model[-capacity:] if pushed else []
    assert list(ring) == held and len(ring) == min(pushed, capacity)
    assert ring.written == pushed and ring.overwritten == max(0, pushed - capacity)
    assert ring.first_seq == pushed - len(held) + 1
    assert list(ring.last(n)) == (held[-n:] if n > 0 else [])
    read = ring.read(cursor)
    seen = min(cursor, pushed)
    assert list(read.flows) == [f for i, f in enumerate(model, start=1) if i > seen and f in held]
    assert read.lost == max(0, (pushed - len(held)) - seen)
    assert read.cursor == pushed
    assert read.lost + len(read.flows) == pushed - seen


def test_reader_catches_up_then_sees_only_new_flows() -> None:
    """A reader that keeps its cursor sees every flow once, and nothing lost while it keeps up."""
    ring = FlowRing(3)
    first = numbered(5)
    for f in first[:2]:
        ring.push(f)
    r1 = ring.read()
    assert r1.flows == tuple(first[:2]) and r1.lost == 0
    for f in first[2:]:
        ring.push(f)
    r2 = ring.read(r1.cursor)
    assert r2.flows == tuple(first[2:]) and r2.lost == 0
    assert ring.read(r2.cursor).flows == ()
    with pytest.raises(ValueError):
        ring.read(-1)
