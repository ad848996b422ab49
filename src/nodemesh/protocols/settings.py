"""What one end of an HBONE connection advertises and enforces: Istio's HTTP/2 settings.

Values from ZT:src/config.rs and ZT:src/proxy/h2/{client,server}.rs (reference §1.4): stream window
4 MiB, connection window 16 MiB, max frame 1 MiB on both ends; the server advertises 200 concurrent
streams; header lists 16 KiB (client) / 64 KiB (server); push disabled; keepalive PING every 10 s
with a 20 s timeout. Large windows are what lets one stream carry bulk transfers at line rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.protocols.frames import Setting

__all__ = ["HboneSettings", "MiB"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HboneSettings:
    """What one end of an HBONE connection advertises and enforces (reference §1.4)."""

    stream_window: int = 4 * MiB
    """SETTINGS_INITIAL_WINDOW_SIZE: bytes the peer may send on a stream before we acknowledge."""
    connection_window: int = 16 * MiB
    """The connection-level receive window (raised from 65,535 by a WINDOW_UPDATE at start)."""
    max_frame_size: int = 1 * MiB
    """SETTINGS_MAX_FRAME_SIZE: the largest frame payload we accept."""
    max_concurrent_streams: int | None = None
    """SETTINGS_MAX_CONCURRENT_STREAMS we advertise (None: not advertised, i.e. unlimited)."""
    max_header_list_size: int = 16 * 1024
    """SETTINGS_MAX_HEADER_LIST_SIZE: the largest decoded header list we accept."""
    keepalive_interval: float = 10.0
    """Seconds of silence from the peer after which we send a PING."""
    keepalive_timeout: float = 20.0
    """Seconds a PING may go unanswered before the connection is dropped."""

    @classmethod
    def client(cls) -> HboneSettings:
        return cls()

    @classmethod
    def server(cls) -> HboneSettings:
        return cls(max_concurrent_streams=200, max_header_list_size=64 * 1024)

    def as_settings(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = [
            (Setting.ENABLE_PUSH, 0),
            (Setting.INITIAL_WINDOW_SIZE, self.stream_window),
            (Setting.MAX_FRAME_SIZE, self.max_frame_size),
            (Setting.MAX_HEADER_LIST_SIZE, self.max_header_list_size),
        ]
        if self.max_concurrent_streams is not None:
            out.insert(1, (Setting.MAX_CONCURRENT_STREAMS, self.max_concurrent_streams))
        return out
