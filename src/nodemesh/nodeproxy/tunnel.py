"""The asyncio shell around one HBONE connection: a Protocol over the TLS transport that feeds
the sans-IO `HboneConnection` and turns its events into calls on per-stream handlers.

Why it is built this way (PERFORMANCE.md, measured on this machine):
- Protocol/Transport API, not Streams: Streams cost 1.5-2.5x the CPU, with a much worse p99.
- Write coalescing: every frame produced in one event-loop iteration (DATA of many streams,
  WINDOW_UPDATEs, SETTINGS ACKs) leaves in ONE `transport.write`, so one TLS record batch and one
  send. After reading, the queued frames are flushed at the end of `data_received`; frames queued
  from other callbacks (an application socket's data) are flushed once by a `call_soon`
  scheduled on the first of them. Per-frame writes on an SSL transport were the measured killer.
- Keepalive uses one timer armed at the connection's `get_timer()`; receiving data does not
  re-arm it (the core only moves its deadline), so there is no timer churn on the data path.

Invariants
- A stream has at most one handler; the handler is told exactly once that the stream is over
  (`stream_reset`, or its own `release` after both directions ended).
- When the TLS transport's write buffer passes its high-water mark every handler is paused
  (`tunnel_paused(True)`): backpressure reaches the application sockets instead of memory.
- The peer's identity (`peer_identity`) is set from the verified certificate before the HTTP/2
  preface is sent; a connection whose identity check fails is aborted with nothing sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from nodemesh.protocols import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    HboneClient,
    HboneConnection,
    HboneServer,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
)
from nodemesh.protocols.events import Headers
from nodemesh.protocols.streams import StreamState

__all__ = ["HboneTunnel", "RequestHandler", "StreamHandler", "TunnelClosedError", "Verifier"]

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024

Verifier = Callable[[ssl.SSLObject | None], str]
"""Checks the handshake's peer certificate; returns the peer identity or raises IdentityError."""


class TunnelClosedError(ConnectionError):
    """The HBONE connection closed before a stream could be opened or answered."""


class StreamHandler(Protocol):
    """What owns one CONNECT stream (the relay): the tunnel calls these."""

    def stream_response(self, status: int, headers: Headers) -> None: ...

    def stream_data(self, data: bytes) -> None: ...

    def stream_end(self) -> None: ...

    def stream_reset(self, code: int) -> None: ...

    def stream_writable(self) -> None: ...

    def tunnel_paused(self, paused: bool) -> None: ...


RequestHandler = Callable[["HboneTunnel", RequestReceived], None]


class HboneTunnel(asyncio.Protocol):
    """One HBONE (mTLS + HTTP/2) connection, client or server end."""

    def __init__(
        self,
        conn: HboneConnection,
        *,
        verify: Verifier,
        on_request: RequestHandler | None = None,
        on_closed: Callable[[HboneTunnel], None] | None = None,
        on_idle: Callable[[HboneTunnel], None] | None = None,
        name: str = "hbone",
    ) -> None:
        self.conn = conn
        self.name = name
        self._verify = verify
        self._on_request = on_request
        self._on_closed = on_closed
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_identity: str | None = None
        self.local_address: tuple[str, int] | None = None
        self.peer_address: tuple[str, int] | None = None
        self.handlers: dict[int, StreamHandler] = {}
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed = False
        self.write_paused = False
        self.terminated: ConnectionTerminated | None = None
        self.streams_opened = 0
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.local_address = transport.get_extra_info("sockname")
        self.peer_address = transport.get_extra_info("peername")
        try:
            self.peer_identity = self._verify(transport.get_extra_info("ssl_object"))
        except Exception as exc:
            log.warning("%s: %s peer refused: %s", self.name, self.peer_address, exc)
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()  # a server tunnel has no waiter: not a lost exception
            self.closed = True
            self.transport.abort()
            return
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.conn.initiate(self._loop.time())
        self._flush()
        self._arm_timer()
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        events = self.conn.receive_data(data, self._loop.time())
        if events:
            self._dispatch(events)
        self._flush()
        if self.conn.closed:
            self._close_transport()

    def eof_received(self) -> bool:
        return False  # the peer is done: close (HTTP/2 has no half-closed connection)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.done():
            self.ready.set_exception(TunnelClosedError(f"{self.name}: connection closed: {exc}"))
            self.ready.exception()
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            handler.stream_reset(ErrorCode.CANCEL)
        if self._on_closed is not None:
            self._on_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        for handler in list(self.handlers.values()):
            handler.tunnel_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        for handler in list(self.handlers.values()):
            handler.tunnel_paused(False)

    # ---- events ----------------------------------------------------------------------------
    def _dispatch(self, events: list[Event]) -> None:
        handlers = self.handlers
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                ev = cast(DataReceived, ev)
                h = handlers.get(ev.stream_id)
                if h is not None:
                    h.stream_data(ev.data)
                else:
                    self.conn.acknowledge_received_data(ev.stream_id, len(ev.data))
            elif t is StreamEnded:
                h = handlers.get(cast(StreamEnded, ev).stream_id)
                if h is not None:
                    h.stream_end()
            elif t is ResponseReceived:
                ev = cast(ResponseReceived, ev)
                h = handlers.get(ev.stream_id)
                if h is not None:
                    h.stream_response(ev.status, ev.headers)
            elif t is RequestReceived:
                ev = cast(RequestReceived, ev)
                if self._on_request is None:
                    self.conn.reset_stream(ev.stream_id, ErrorCode.REFUSED_STREAM)
                else:
                    self._on_request(self, ev)
            elif t is StreamReset:
                ev = cast(StreamReset, ev)
                h = handlers.pop(ev.stream_id, None)
                if h is not None:
                    h.stream_reset(int(ev.error_code))
                    self._maybe_idle()
            elif t is StreamWritable:
                h = handlers.get(cast(StreamWritable, ev).stream_id)
                if h is not None:
                    h.stream_writable()
            elif t is ConnectionTerminated:
                self.terminated = cast(ConnectionTerminated, ev)
                if self.terminated.remote:
                    log.debug("%s: peer sent GOAWAY (%s)", self.name, self.terminated.error_code)
                    if not self.handlers:
                        self.close()
                else:
                    log.warning("%s: closing: %s", self.name, self.terminated.reason)

    # ---- streams ---------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Can this connection take a new stream (open, verified, no GOAWAY)?"""
        return not self.closed and self.ready.done() and self.conn.accepting_streams

    def available_streams(self, limit: int) -> int:
        """Free stream slots under `limit` and the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""
        if not self.usable:
            return 0
        cap = min(limit, self.conn.peer_max_concurrent_streams)
        return cap - max(len(self.handlers), self.conn.open_streams)

    def open_stream(self, authority: str, headers: Headers, handler: StreamHandler) -> int:
        """Client: send `CONNECT authority`; `handler` gets the response and the stream's data."""
        if not self.usable:
            raise TunnelClosedError(f"{self.name}: the connection does not take new streams")
        sid = cast(HboneClient, self.conn).open_stream(authority, headers)
        self.handlers[sid] = handler
        self.streams_opened += 1
        self._want_flush()
        return sid

    def attach(self, stream_id: int, handler: StreamHandler) -> None:
        """Server: `handler` owns the requested stream from now on."""
        self.handlers[stream_id] = handler
        self.streams_opened += 1

    def respond(self, stream_id: int, status: int, headers: Headers = (), end_stream: bool = False) -> None:
        """Server: answer the CONNECT (200 opens the tunnel; refusals end the stream)."""
        if self.closed or self.conn.stream_state(stream_id) is StreamState.CLOSED:
            return
        cast(HboneServer, self.conn).send_response(stream_id, status, headers, end_stream)
        if end_stream:
            # a refusal is a complete response: ask the client to stop sending, without error
            # (RFC 9113 §8.1), so the stream does not linger half-closed
            self.conn.reset_stream(stream_id, ErrorCode.NO_ERROR)
            self.release(stream_id)
        self._want_flush()

    def send_data(self, stream_id: int, data: bytes) -> int:
        """Queue `data`; returns the bytes still waiting for flow control on the stream."""
        conn = self.conn
        conn.send_data(stream_id, data)
        self._want_flush()
        return conn.stream_pending(stream_id)

    def end_stream(self, stream_id: int) -> None:
        if self.conn.stream_state(stream_id) in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE):
            self.conn.end_stream(stream_id)
            self._want_flush()

    def acknowledge(self, stream_id: int, n: int) -> None:
        self.conn.acknowledge_received_data(stream_id, n)
        if self.conn.wants_write:
            self._want_flush()

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort the stream (RST_STREAM) and forget its handler."""
        self.conn.reset_stream(stream_id, code)
        self.release(stream_id)
        self._want_flush()

    def release(self, stream_id: int) -> None:
        """The handler is done with the stream (it ended both ways, or was reset)."""
        if self.handlers.pop(stream_id, None) is not None:
            if self.conn.stream_state(stream_id) is not StreamState.CLOSED:
                self.conn.reset_stream(stream_id, ErrorCode.CANCEL)
                self._want_flush()
            self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.handlers:
            return
        if self.terminated is not None and self.terminated.remote:
            self.close()
        elif self._on_idle is not None:
            self._on_idle(self)

    # ---- writing and lifecycle -------------------------------------------------------------
    def _want_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _arm_timer(self) -> None:
        when = self.conn.get_timer()
        if when is not None and not self.closed:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        events = self.conn.handle_timer(self._loop.time())
        if events:
            self._dispatch(events)
        self._flush()
        if self.conn.closed:
            self._close_transport()
        else:
            self._arm_timer()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        """GOAWAY, then close once it is written; open streams are reset."""
        if self.closed:
            return
        self.conn.close()
        self._flush()
        self.closed = True
        self._close_transport()

    def abort(self) -> None:
        """Drop the connection at once (no GOAWAY)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
