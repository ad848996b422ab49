"""HBONE protocol errors, split by blame as h11 and h2 split theirs.

- `ProtocolError`: the PEER broke HTTP/2 (RFC 9113 §5.4). It carries the h2 error code to put on
  the wire and whether it is a connection error (GOAWAY, then close that connection only) or a
  stream error (RST_STREAM on that stream only; the connection goes on).
- `LocalProtocolError`: WE misused the state machine (sent on a closed stream, opened more
  streams than the peer allows). Never sent to the peer: it is a bug or a caller's decision to
  revisit, so it is raised to the caller.

Both carry an `ErrorCode` (RFC 9113 §7), the "wire code" STYLE.md asks every error to carry.
"""

from __future__ import annotations

from enum import IntEnum

from nodemesh.errors import NodemeshError

__all__ = ["ErrorCode", "HboneError", "LocalProtocolError", "ProtocolError"]


class ErrorCode(IntEnum):
    """HTTP/2 error codes (RFC 9113 §7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD

    @classmethod
    def of(cls, value: int) -> ErrorCode | int:
        """The code as an enum member, or the raw int for codes this version does not know
        (RFC 9113 §7: "Unknown or unsupported error codes MUST NOT trigger any special behavior")."""
        try:
            return cls(value)
        except ValueError:
            return value


class HboneError(NodemeshError):
    """Base of the HBONE protocol errors; `code` is the h2 error code."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(HboneError):
    """The peer violated HTTP/2. `stream_id` is None for a connection error (RFC 9113 §5.4.1),
    else the stream to reset (§5.4.2)."""

    def __init__(
        self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR, stream_id: int | None = None
    ) -> None:
        super().__init__(message, code)
        self.stream_id = stream_id

    @property
    def is_connection_error(self) -> bool:
        return self.stream_id is None


class LocalProtocolError(HboneError):
    """We asked the state machine for something HTTP/2 does not allow in its current state."""
