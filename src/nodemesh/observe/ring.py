"""A bounded ring of recent flows per node, like Hubble's ring buffer.

Hubble keeps the last `hubble-event-buffer-capacity` flows per node (default 4095) in a ring and
serves `hubble observe` from it; a reader that falls behind the writer is told how many events it
missed (`lost_events` with source `HUBBLE_RING_BUFFER`, "requested data has been overwritten").
This ring does the same: every flow gets a sequence number, the oldest flow is overwritten when
the ring is full, and `read(cursor)` returns what a reader has not seen yet plus the number of
flows that were overwritten before it could read them.

Invariants: `len(ring) <= capacity`; sequence numbers start at 1 and increase by one per `push`;
the ring holds exactly the flows numbered `first_seq .. last_seq`; `overwritten` is the number of
flows ever dropped from the ring (`written - len(ring)`).

Hubble requires the capacity to be one less than a power of two (a property of its lock-free
ring); any positive capacity works here. Not thread-safe: one writer (the agent's event loop),
readers on the same thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from nodemesh.observe.flow import Flow

__all__ = ["DEFAULT_CAPACITY", "FlowRing", "RingRead"]

DEFAULT_CAPACITY = 4095  # Hubble's hubble-event-buffer-capacity default


@dataclass(frozen=True, slots=True)
class RingRead:
    """What a reader gets: the new flows, how many it lost, and the cursor to read from next."""

    flows: tuple[Flow, ...]
    lost: int
    cursor: int


class FlowRing:
    """A bounded ring of flows with sequence numbers and a count of overwritten flows."""

    __slots__ = ("_capacity", "_items", "_written")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items: deque[Flow] = deque(maxlen=capacity)
        self._written = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def written(self) -> int:
        """Flows ever pushed; also the sequence number of the newest flow (0 when empty)."""
        return self._written

    @property
    def overwritten(self) -> int:
        """Flows dropped from the ring because it was full (Hubble's lost events at the source)."""
        return self._written - len(self._items)

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest flow still held (written + 1 when empty)."""
        return self._written - len(self._items) + 1

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._items)

    def push(self, flow: Flow) -> int:
        """Append a flow, overwriting the oldest if full. Returns the flow's sequence number."""
        self._items.append(flow)
        self._written += 1
        return self._written

    def last(self, n: int) -> tuple[Flow, ...]:
        """The newest `n` flows, oldest first."""
        if n <= 0:
            return ()
        items = list(self._items)
        return tuple(items[-n:])

    def read(self, cursor: int = 0) -> RingRead:
        """Flows newer than `cursor` (the last sequence number the reader saw; 0 = from the start).

        If flows after the cursor were overwritten before this read, `lost` says how many, as
        Hubble reports `lost_events` to a reader that fell behind.
        """
        if cursor < 0:
            raise ValueError("cursor must be >= 0")
        cursor = min(cursor, self._written)
        first = self.first_seq
        lost = max(0, first - cursor - 1)
        start = max(cursor + 1, first)
        offset = start - first
        items = list(self._items)[offset:]
        return RingRead(tuple(items), lost, self._written)
