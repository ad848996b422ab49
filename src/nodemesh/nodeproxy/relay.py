"""Bidirectional byte relays on the Protocol/Transport API: TCP <-> HBONE stream, TCP <-> TCP.

A relay copies bytes, propagates half-close (TCP FIN <-> END_STREAM) and aborts (RST <->
RST_STREAM), counts bytes each way for the flow record, and applies backpressure in both
directions:
- application -> tunnel: when the stream's flow-control window is exhausted (bytes queued in the
  HBONE connection), or when the TLS transport's write buffer is above its high-water mark, the
  application socket stops being read; it resumes on `stream_writable` / `tunnel_paused(False)`.
- tunnel -> application: received DATA is acknowledged to the peer (reopening its window) only
  once written to the application socket and that socket's buffer is below its high-water mark;
  otherwise the acknowledgement waits for `resume_writing`, so a slow reader stops the sender
  within one stream window (4 MiB) instead of growing our memory.
- TCP -> TCP: each end pauses the other's reading while its write buffer is high.

Invariants
- `on_done` is called exactly once per relay, after both sockets/streams are finished; byte
  counters are final by then.
- No relay ever blocks the loop or starts a task: everything is a callback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from nodemesh.nodeproxy.tunnel import HboneTunnel, TunnelClosedError
from nodemesh.protocols import ErrorCode, LocalProtocolError
from nodemesh.protocols.events import Headers

__all__ = ["StreamRelay", "TcpRelay"]

WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024


class StreamRelay(asyncio.Protocol):
    """An application TCP connection spliced to one HBONE CONNECT stream.

    It is the TCP connection's asyncio Protocol and the stream's handler at once. The stream
    side exists first (bytes arriving before the TCP side is attached are kept, unacknowledged,
    and written on `connection_made`)."""

    def __init__(self, tunnel: HboneTunnel, on_done: Callable[[StreamRelay], None] | None = None) -> None:
        self.tunnel = tunnel
        self.stream_id = 0
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.response: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.response_headers: Headers = ()
        self.started = time.time()
        self.ended: float | None = None
        self.bytes_from_tcp = 0
        self.bytes_from_tunnel = 0
        self.reset_code: int | None = None
        self.error: str | None = None
        self._early: list[bytes] = []
        self._tcp_eof = False
        self._tunnel_eof = False
        self._flow_paused = False
        self._tunnel_paused = tunnel.write_paused
        self._tcp_write_paused = False
        self._deferred_ack = 0
        self._done = False

    # ---- the TCP side ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        if self.reset_code is not None:
            t.abort()
            return
        if self._early:
            data = b"".join(self._early)
            self._early = []
            t.write(data)
            self.tunnel.acknowledge(self.stream_id, len(data))
        if self._tunnel_eof:
            self._write_eof(t)
        if self._flow_paused or self._tunnel_paused:
            t.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.bytes_from_tcp += len(data)
        try:
            pending = self.tunnel.send_data(self.stream_id, data)
        except LocalProtocolError as exc:  # the stream or the connection went away meanwhile
            self.error = str(exc)
            cast(asyncio.Transport, self.transport).abort()
            return
        if pending and not self._flow_paused:
            self._flow_paused = True
            cast(asyncio.Transport, self.transport).pause_reading()

    def eof_received(self) -> bool:
        self._tcp_eof = True
        self.tunnel.end_stream(self.stream_id)
        return not self._tunnel_eof  # both directions done: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = str(exc)
        if self.reset_code is None:
            if self._tcp_eof and self._tunnel_eof:
                self.tunnel.release(self.stream_id)
            else:
                self.tunnel.reset(self.stream_id, ErrorCode.CANCEL)
        self._finish()

    def pause_writing(self) -> None:
        self._tcp_write_paused = True

    def resume_writing(self) -> None:
        self._tcp_write_paused = False
        if self._deferred_ack:
            n, self._deferred_ack = self._deferred_ack, 0
            self.tunnel.acknowledge(self.stream_id, n)

    # ---- the stream side (StreamHandler) ---------------------------------------------------
    def stream_response(self, status: int, headers: Headers) -> None:
        self.response_headers = headers
        if not self.response.done():
            self.response.set_result(status)

    def stream_data(self, data: bytes) -> None:
        self.bytes_from_tunnel += len(data)
        t = self.transport
        if t is None:
            self._early.append(data)
            return
        t.write(data)
        if self._tcp_write_paused:
            self._deferred_ack += len(data)
        else:
            self.tunnel.acknowledge(self.stream_id, len(data))

    def stream_end(self) -> None:
        self._tunnel_eof = True
        if self.transport is not None:
            self._write_eof(self.transport)

    def _write_eof(self, t: asyncio.Transport) -> None:
        if self._tcp_eof or not t.can_write_eof():
            t.close()
        else:
            t.write_eof()

    def stream_reset(self, code: int) -> None:
        self.reset_code = code
        if not self.response.done():
            self.response.set_exception(TunnelClosedError(f"stream reset ({ErrorCode.of(code)!s})"))
            self.response.exception()  # an inbound relay has no waiter: do not log it as lost
        if self.transport is not None:
            self.transport.abort()
        else:
            self._finish()

    def stream_writable(self) -> None:
        if self._flow_paused:
            self._flow_paused = False
            if not self._tunnel_paused and self.transport is not None:
                self.transport.resume_reading()

    def tunnel_paused(self, paused: bool) -> None:
        self._tunnel_paused = paused
        t = self.transport
        if t is None:
            return
        if paused:
            t.pause_reading()
        elif not self._flow_paused:
            t.resume_reading()

    # ---- end -------------------------------------------------------------------------------
    def abandon(self, error: str) -> None:
        """The TCP side will never be attached (the CONNECT was refused or timed out)."""
        self.error = error
        self.tunnel.release(self.stream_id)
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.ended = time.time()
        if not self.response.done():
            self.response.cancel()
        if self.on_done is not None:
            self.on_done(self)

    @property
    def done(self) -> bool:
        return self._done


class _TcpEnd(asyncio.Protocol):
    """One socket of a TCP <-> TCP relay."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.peer: _TcpEnd | None = None
        self.transport: asyncio.Transport | None = None
        self.bytes_in = 0
        self.eof = False
        self.lost = False
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        if self._early:
            t.write(b"".join(self._early))
            self._early = []
        if self._early_eof:
            t.write_eof() if t.can_write_eof() else t.close()
        peer = self.peer
        if peer is not None and peer.lost:
            t.abort() if not peer.eof else t.close()

    def _deliver(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        assert self.peer is not None
        self.peer._deliver(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        assert peer is not None
        if peer.transport is None:
            peer._early_eof = True
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer.eof:
            if peer.transport is not None:
                peer.transport.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.relay.error is None:
            self.relay.error = str(exc)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            if self.eof and peer.eof:
                peer.transport.close()
            else:
                peer.transport.abort()
        self.relay._maybe_done()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class TcpRelay:
    """Two TCP connections spliced together (passthrough, plaintext inbound): `client` is the
    accepted side, `server` the side the proxy dialled."""

    def __init__(self, on_done: Callable[[TcpRelay], None] | None = None) -> None:
        self.client = _TcpEnd(self)
        self.server = _TcpEnd(self)
        self.client.peer = self.server
        self.server.peer = self.client
        self.on_done = on_done
        self.started = time.time()
        self.ended: float | None = None
        self.error: str | None = None
        self._done = False

    @property
    def bytes_from_client(self) -> int:
        return self.client.bytes_in

    @property
    def bytes_from_server(self) -> int:
        return self.server.bytes_in

    def abort(self) -> None:
        """Close both sockets at once (a policy change revoked the connection)."""
        for end in (self.client, self.server):
            if end.transport is not None:
                end.transport.abort()

    def _maybe_done(self) -> None:
        ends = (self.client, self.server)
        if self._done or not all(e.lost or e.transport is None for e in ends):
            return
        self._done = True
        self.ended = time.time()
        if self.on_done is not None:
            self.on_done(self)
