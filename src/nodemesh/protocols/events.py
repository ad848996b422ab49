"""Events an HBONE connection emits: what the peer did, in the order it did it.

`HboneConnection.receive_data` returns a list of these. They are values: frozen, slotted,
documented, carrying only what the shell needs to act (h2's and h11's event style).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.protocols.errors import ErrorCode

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "PingAcknowledged",
    "RequestReceived",
    "ResponseReceived",
    "SettingsReceived",
    "StreamEnded",
    "StreamReset",
    "StreamWritable",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side: a request opened stream `stream_id`. For HBONE `method` is `CONNECT` and
    `authority` the target `<ip>:<port>`; any other method is passed up for the shell to answer
    (ztunnel answers 400). `headers` are the regular (non-pseudo) headers, lower-case names."""

    stream_id: int
    method: str
    authority: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client side: the final response (`:status` >= 200) on `stream_id`."""

    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Tunnelled bytes on `stream_id`. Once the shell has handed them on, it calls
    `acknowledge_received_data(stream_id, len(data))` so the windows reopen (padding, if any,
    is acknowledged by the connection itself)."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed `stream_id` (END_STREAM): the tunnel's EOF in that direction."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """`stream_id` was reset: by the peer (`remote`), or by us because the peer broke the stream
    (a stream error, RFC 9113 §5.4.2), in which case RST_STREAM is already queued."""

    stream_id: int
    error_code: ErrorCode | int
    remote: bool


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """Flow control reopened: every byte queued on `stream_id` has been framed for sending."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """The peer's SETTINGS (already acknowledged): the parameters it changed."""

    changed: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer answered our PING; `rtt` is in the unit of the `now` arguments (seconds)."""

    opaque: bytes
    rtt: float


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over for new streams. `remote`: the peer sent GOAWAY (streams up to
    `last_stream_id` may still finish). Not remote: we ended it because the peer broke the
    protocol or stopped answering PINGs; GOAWAY is queued and the shell should close once it is
    written. `reason` says why, for logs."""

    error_code: ErrorCode | int
    last_stream_id: int
    remote: bool
    reason: str = ""


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamWritable
    | SettingsReceived
    | PingAcknowledged
    | ConnectionTerminated
)
