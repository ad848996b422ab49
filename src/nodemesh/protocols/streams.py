"""Per-stream state of an HBONE connection: RFC 9113 §5.1 states as a transition table, and the
stream's flow-control windows and send queue.

Only the states a CONNECT tunnel reaches are materialised: a stream is created open (HEADERS sent
or received) and removed from its connection when it reaches `closed`; idle and reserved states
are implicit (ids never used; push is disabled).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["TRANSITIONS", "Stream", "StreamInput", "StreamState"]


class StreamState(Enum):
    """RFC 9113 §5.1 (idle and reserved states are never materialised here)."""

    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"


class StreamInput(Enum):
    SEND_END = "send END_STREAM"
    RECV_END = "receive END_STREAM"


TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (StreamState.OPEN, StreamInput.SEND_END): StreamState.HALF_CLOSED_LOCAL,
    (StreamState.OPEN, StreamInput.RECV_END): StreamState.HALF_CLOSED_REMOTE,
    (StreamState.HALF_CLOSED_LOCAL, StreamInput.RECV_END): StreamState.CLOSED,
    (StreamState.HALF_CLOSED_REMOTE, StreamInput.SEND_END): StreamState.CLOSED,
}


class Stream:
    """Mutable per-stream bookkeeping, private to the connection."""

    __slots__ = (
        "end_pending",
        "id",
        "pending",
        "pending_bytes",
        "recv_window",
        "response_received",
        "send_window",
        "state",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.state = StreamState.OPEN
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0
        self.end_pending = False
        self.response_received = False
