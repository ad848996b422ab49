"""HBONE: HTTP/2 CONNECT tunnels over one mTLS connection, as a sans-IO state machine.

HBONE is Istio's tunnel (reference §1.3-1.4): an HTTP/2 connection carrying one `CONNECT` stream
per application connection, `:authority = <pod ip>:<port>`, the server answering `:status 200`
once the upstream connection is up; DATA frames then carry the bytes both ways and END_STREAM is
the TCP half-close. This module is bytes in, events out, bytes to send (h11/h2 style): no sockets,
no clock (time is the `now` argument, aioquic style), no threads.

Settings (ZT:src/config.rs, reference §1.4): stream window 4 MiB, connection window 16 MiB, max
frame 1 MiB on both ends; the server advertises 200 concurrent streams; header lists 16 KiB
(client) / 64 KiB (server); push disabled; a keepalive PING after 10 s of silence, and the
connection is dropped when it is not answered within 20 s.

Why hand-written and not `h2`: see `frames.py`. Header blocks: `headerblock.py` writes literals
without indexing and reads them on a fast path; anything else is decoded by the `hpack` library.

Invariants
- Every HEADERS/CONTINUATION block is decoded, even on a stream we ignore, so the HPACK dynamic
  table stays in step with the peer's (RFC 9113 §4.3).
- A peer's mistake is either a stream error (RST_STREAM, that stream only; §5.4.2) or a
  connection error (GOAWAY, then this connection is closed; §5.4.1): it never escapes as an
  exception from `receive_data`. Our own misuse raises `LocalProtocolError`.
- We never send more DATA than the peer's stream and connection windows allow (§6.9); bytes
  beyond the window wait in the stream's queue and leave as WINDOW_UPDATEs arrive, after which
  `StreamWritable` is emitted.
- Received DATA counts against our windows until the shell acknowledges it; WINDOW_UPDATE is sent
  in batches of a quarter of the window, so small exchanges send none at all.
- Stream states follow §5.1 as a transition table (`streams.TRANSITIONS`).
"""

from __future__ import annotations

import hpack

from nodemesh.protocols.errors import ErrorCode, LocalProtocolError, ProtocolError
from nodemesh.protocols.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAcknowledged,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
)
from nodemesh.protocols.fields import MalformedError, split_fields
from nodemesh.protocols.frames import (
    CONNECTION_PREFACE,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    MAX_FRAME_SIZE_LIMIT,
    MAX_WINDOW,
    Flag,
    Frame,
    FrameReader,
    FrameType,
    Setting,
    data_frame_header,
    encode_frame,
    encode_goaway,
    encode_ping,
    encode_rst_stream,
    encode_settings,
    encode_window_update,
    parse_goaway,
    parse_settings,
    parse_u32,
)
from nodemesh.protocols.headerblock import decode_simple, encode_block
from nodemesh.protocols.settings import HboneSettings
from nodemesh.protocols.streams import TRANSITIONS, Stream, StreamInput, StreamState

__all__ = ["Fields", "HboneConnection"]

Fields = list[tuple[str, str]]


class HboneConnection:
    """One end of an HBONE connection. Use `HboneClient` or `HboneServer`."""

    client: bool = False

    def __init__(self, settings: HboneSettings | None = None) -> None:
        self.settings = settings or (HboneSettings.client() if self.client else HboneSettings.server())
        s = self.settings
        self._reader = FrameReader(s.max_frame_size)
        self._out: list[bytes | memoryview] = []
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, None] = {}  # ordered set of streams with queued DATA
        self._table_size_update: int | None = None  # to announce in our next header block
        self._decoder = hpack.Decoder(max_header_list_size=s.max_header_list_size)
        self._header_block: tuple[int, int, list[bytes]] | None = None
        # what the peer allows us (its SETTINGS, RFC 9113 §6.5.2 defaults until they arrive)
        self.peer_max_concurrent_streams = MAX_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._send_window = DEFAULT_WINDOW
        # what we allow the peer
        self._recv_window = s.connection_window
        self._conn_unacked = 0
        self._conn_ack_at = max(s.connection_window // 4, 1)
        self._stream_ack_at = max(s.stream_window // 4, 1)
        # stream ids
        self._next_stream_id = 1
        self._highest_peer_stream = 0
        # lifecycle
        self._preface_pending = not self.client
        self._preface_buf = b""
        self._settings_pending = True  # the peer's first frame must be SETTINGS (§3.4)
        self._initiated = False
        self.closed = False
        self.goaway_sent = False
        self.goaway_received = False
        self._last_recv = 0.0
        self._ping_sent_at: float | None = None
        self._ping_opaque = b""
        self._ping_counter = 0

    # ---- lifecycle -------------------------------------------------------------------------
    def initiate(self, now: float) -> None:
        """Queue our preface: (client) the magic string, SETTINGS, then the connection window."""
        if self._initiated:
            raise LocalProtocolError("initiate() was already called")
        self._initiated = True
        self._last_recv = now
        if self.client:
            self._out.append(CONNECTION_PREFACE)
        self._out.append(encode_settings(self.settings.as_settings()))
        extra = self.settings.connection_window - DEFAULT_WINDOW
        if extra > 0:
            self._out.append(encode_window_update(0, extra))

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """Send GOAWAY: no new streams; streams already open may finish (RFC 9113 §6.8)."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self._out.append(encode_goaway(self._highest_peer_stream, code, debug))

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as ONE buffer: the shell writes it with one
        `transport.write`, so a loop iteration's frames become one TLS record batch."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    # ---- queries ---------------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def accepting_streams(self) -> bool:
        """May a new stream be opened on this connection (no GOAWAY either way, not closed)?"""
        return not (self.closed or self.goaway_sent or self.goaway_received)

    def stream_state(self, stream_id: int) -> StreamState:
        st = self._streams.get(stream_id)
        return st.state if st is not None else StreamState.CLOSED

    def stream_pending(self, stream_id: int) -> int:
        """Bytes queued on the stream that flow control has not let out yet."""
        st = self._streams.get(stream_id)
        return st.pending_bytes if st is not None else 0

    # ---- sending ---------------------------------------------------------------------------
    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue `data` on the stream; it leaves as the windows allow (see `stream_pending`)."""
        st = self._stream_for_send(stream_id)
        n = len(data)
        if (
            not st.pending
            and n <= st.send_window
            and n <= self._send_window
            and n <= self.peer_max_frame_size
        ):
            self._out.append(data_frame_header(n, stream_id, end_stream))
            if n:
                self._out.append(data)
                st.send_window -= n
                self._send_window -= n
            if end_stream:
                self._transition(st, StreamInput.SEND_END)
            return
        if n:
            st.pending.append(data)
            st.pending_bytes += n
        if end_stream:
            st.end_pending = True
        self._flush_stream(st)
        if st.pending or st.end_pending:
            self._blocked[stream_id] = None

    def end_stream(self, stream_id: int) -> None:
        """Half-close our direction (the tunnel's EOF)."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort the stream both ways (RST_STREAM). A stream already gone is a no-op."""
        if self.closed:
            return
        st = self._streams.pop(stream_id, None)
        if st is None:
            return
        self._blocked.pop(stream_id, None)
        self._out.append(encode_rst_stream(stream_id, code))

    def acknowledge_received_data(self, stream_id: int, n: int) -> None:
        """The shell has handed on `n` received bytes: let the peer send that much more."""
        if self.closed or n <= 0:
            return
        self._credit_connection(n)
        st = self._streams.get(stream_id)
        if st is None or st.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            return
        st.unacked += n
        if st.unacked >= self._stream_ack_at:
            self._out.append(encode_window_update(stream_id, st.unacked))
            st.recv_window += st.unacked
            st.unacked = 0

    def _credit_connection(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_ack_at:
            self._out.append(encode_window_update(0, self._conn_unacked))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0

    def ping(self, now: float) -> None:
        """Send a PING (keepalive or RTT probe); its answer becomes `PingAcknowledged`."""
        if self.closed or self._ping_sent_at is not None:
            return
        self._ping_counter += 1
        self._ping_opaque = self._ping_counter.to_bytes(8, "big")
        self._ping_sent_at = now
        self._out.append(encode_ping(self._ping_opaque))

    def _stream_for_send(self, stream_id: int) -> Stream:
        if self.closed:
            raise LocalProtocolError("the connection is closed")
        st = self._streams.get(stream_id)
        if st is None:
            raise LocalProtocolError(f"stream {stream_id} is closed")
        if st.state in (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED) or st.end_pending:
            raise LocalProtocolError(f"stream {stream_id} is {st.state.value}: cannot send on it")
        return st

    def _encode_headers(self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool) -> None:
        block = encode_block(headers, self._table_size_update)
        self._table_size_update = None
        limit = self.peer_max_frame_size
        first, rest = block[:limit], block[limit:]
        flags = (Flag.END_STREAM if end_stream else 0) | (0 if rest else Flag.END_HEADERS)
        self._out.append(encode_frame(FrameType.HEADERS, flags, stream_id, first))
        while rest:
            chunk, rest = rest[:limit], rest[limit:]
            flags = 0 if rest else Flag.END_HEADERS
            self._out.append(encode_frame(FrameType.CONTINUATION, flags, stream_id, chunk))

    def _new_stream(self, stream_id: int) -> Stream:
        st = Stream(stream_id, self.peer_initial_window, self.settings.stream_window)
        self._streams[stream_id] = st
        return st

    def _transition(self, st: Stream, what: StreamInput) -> None:
        nxt = TRANSITIONS.get((st.state, what))
        if nxt is None:
            if what is StreamInput.SEND_END:
                raise LocalProtocolError(f"stream {st.id} is {st.state.value}: cannot {what.value}")
            raise ProtocolError(
                f"END_STREAM on stream {st.id} in state {st.state.value}", ErrorCode.STREAM_CLOSED, st.id
            )
        st.state = nxt
        if nxt is StreamState.CLOSED:
            del self._streams[st.id]
            self._blocked.pop(st.id, None)

    def _flush_stream(self, st: Stream) -> bool:
        """Frame what the windows allow of the stream's queue; True if the queue emptied."""
        out = self._out
        pending = st.pending
        while pending and st.send_window > 0 and self._send_window > 0:
            chunk = pending[0]
            size = min(len(chunk), st.send_window, self._send_window, self.peer_max_frame_size)
            if size < len(chunk):
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                piece: bytes | memoryview = view[:size]
                pending[0] = view[size:]
            else:
                piece = chunk
                pending.pop(0)
            last = not pending and st.end_pending
            out.append(data_frame_header(size, st.id, last))
            out.append(piece)
            st.send_window -= size
            self._send_window -= size
            st.pending_bytes -= size
            if last:
                st.end_pending = False
                self._transition(st, StreamInput.SEND_END)
                return True
        if not pending and st.end_pending:
            st.end_pending = False
            out.append(data_frame_header(0, st.id, True))
            self._transition(st, StreamInput.SEND_END)
        return not pending

    def _flush_blocked(self, events: list[Event], only: int | None = None) -> None:
        for sid in [only] if only is not None else list(self._blocked):
            st = self._streams.get(sid)
            if st is None:
                self._blocked.pop(sid, None)
                continue
            if self._flush_stream(st):
                self._blocked.pop(sid, None)
                events.append(StreamWritable(sid))
            if self._send_window <= 0:
                break

    # ---- receiving -------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the connection; returns what the peer did, in order."""
        if self.closed:
            return []
        self._last_recv = now
        events: list[Event] = []
        try:
            if self._preface_pending:
                data = self._take_preface(data)
                if not data:
                    return events
            for frame in self._reader.feed(data):
                try:
                    self._handle(frame, events, now)
                except ProtocolError as exc:
                    if exc.stream_id is None:
                        raise
                    self._reset_for_error(exc.stream_id, exc.code, events)
                if self.closed:
                    break
        except ProtocolError as exc:
            self._terminate(exc.code, str(exc), events)
        return events

    def _take_preface(self, data: bytes) -> bytes:
        buf = self._preface_buf + data
        n = len(CONNECTION_PREFACE)
        if not CONNECTION_PREFACE.startswith(buf[:n]):
            raise ProtocolError("invalid HTTP/2 connection preface")
        if len(buf) < n:
            self._preface_buf = buf
            return b""
        self._preface_pending = False
        self._preface_buf = b""
        return buf[n:]

    def _terminate(self, code: ErrorCode, reason: str, events: list[Event]) -> None:
        if not self.closed:
            self._out.append(encode_goaway(self._highest_peer_stream, code, reason.encode()[:256]))
        self.closed = True
        self.goaway_sent = True
        events.append(ConnectionTerminated(code, self._highest_peer_stream, remote=False, reason=reason))

    def _reset_for_error(self, stream_id: int, code: ErrorCode, events: list[Event]) -> None:
        self._out.append(encode_rst_stream(stream_id, code))
        if self._streams.pop(stream_id, None) is not None:
            self._blocked.pop(stream_id, None)
            events.append(StreamReset(stream_id, code, remote=False))

    def _handle(self, f: Frame, events: list[Event], now: float) -> None:
        type_ = f.type
        if self._header_block is not None and type_ != FrameType.CONTINUATION:
            raise ProtocolError("a header block was interrupted by another frame")
        if self._settings_pending:
            if type_ != FrameType.SETTINGS or f.flags & Flag.ACK:
                raise ProtocolError("the peer's first frame was not SETTINGS")
            self._settings_pending = False
        if type_ == FrameType.DATA:
            self._on_data(f, events)
        elif type_ == FrameType.HEADERS:
            self._on_headers(f, events)
        elif type_ == FrameType.WINDOW_UPDATE:
            self._on_window_update(f, events)
        elif type_ == FrameType.CONTINUATION:
            self._on_continuation(f, events)
        elif type_ == FrameType.RST_STREAM:
            self._on_rst_stream(f, events)
        elif type_ == FrameType.SETTINGS:
            self._on_settings(f, events)
        elif type_ == FrameType.PING:
            self._on_ping(f, events, now)
        elif type_ == FrameType.GOAWAY:
            self._on_goaway(f, events)
        elif type_ == FrameType.PRIORITY:
            if f.stream_id == 0:
                raise ProtocolError("PRIORITY on stream 0")
            if len(f.payload) != 5:
                # a stream error (§6.3), but RST_STREAM may not name an idle stream (§6.4)
                known = f.stream_id if f.stream_id in self._streams else None
                raise ProtocolError("PRIORITY is not 5 octets", ErrorCode.FRAME_SIZE_ERROR, known)
        elif type_ == FrameType.PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE received, but push is disabled (SETTINGS_ENABLE_PUSH=0)")
        # other frame types are ignored (RFC 9113 §5.5)

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened by either side (RFC 9113 §5.1 "idle")."""
        own = (stream_id % 2 == 1) == self.client
        if own:
            return stream_id >= self._next_stream_id
        return stream_id > self._highest_peer_stream

    @staticmethod
    def _unpad(f: Frame, skip: int = 0) -> bytes:
        payload = f.payload
        if f.flags & Flag.PADDED:
            if not payload:
                raise ProtocolError("PADDED frame without a pad length", ErrorCode.FRAME_SIZE_ERROR)
            pad = payload[0]
            if pad + 1 + skip > len(payload):
                raise ProtocolError("padding exceeds the frame payload")
            return payload[1 + skip : len(payload) - pad]
        if skip > len(payload):
            raise ProtocolError("frame too short for its flags", ErrorCode.FRAME_SIZE_ERROR)
        return payload[skip:] if skip else payload

    def _on_data(self, f: Frame, events: list[Event]) -> None:
        sid = f.stream_id
        if sid == 0:
            raise ProtocolError("DATA on stream 0")
        fcl = len(f.payload)  # flow control counts the whole payload, padding included (§6.9.1)
        if fcl > self._recv_window:
            raise ProtocolError("DATA exceeds the connection window", ErrorCode.FLOW_CONTROL_ERROR)
        self._recv_window -= fcl
        data = self._unpad(f)
        st = self._streams.get(sid)
        if st is None:
            if self._is_idle(sid):
                raise ProtocolError(f"DATA on idle stream {sid}")
            self._credit_connection(fcl)  # a stream already closed: give the window back
            return
        if st.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            self._credit_connection(fcl)
            raise ProtocolError(f"DATA after END_STREAM on stream {sid}", ErrorCode.STREAM_CLOSED, sid)
        if self.client and not st.response_received:
            self._credit_connection(fcl)
            raise ProtocolError(f"DATA before the response on stream {sid}", stream_id=sid)
        if fcl > st.recv_window:
            self._credit_connection(fcl)
            raise ProtocolError(f"DATA exceeds stream {sid}'s window", ErrorCode.FLOW_CONTROL_ERROR, sid)
        st.recv_window -= fcl
        if fcl != len(data):
            self.acknowledge_received_data(sid, fcl - len(data))
        if data:
            events.append(DataReceived(sid, data))
        if f.flags & Flag.END_STREAM:
            self._transition(st, StreamInput.RECV_END)
            events.append(StreamEnded(sid))

    def _on_headers(self, f: Frame, events: list[Event]) -> None:
        if f.stream_id == 0:
            raise ProtocolError("HEADERS on stream 0")
        fragment = self._unpad(f, 5 if f.flags & Flag.PRIORITY else 0)
        if f.flags & Flag.END_HEADERS:
            self._on_header_block(f.stream_id, f.flags, fragment, events)
        else:
            self._header_block = (f.stream_id, f.flags, [fragment])

    def _on_continuation(self, f: Frame, events: list[Event]) -> None:
        block = self._header_block
        if block is None or block[0] != f.stream_id:
            raise ProtocolError("CONTINUATION without a header block in progress on its stream")
        block[2].append(f.payload)
        if sum(map(len, block[2])) > 4 * self.settings.max_header_list_size:
            raise ProtocolError("header block too large", ErrorCode.ENHANCE_YOUR_CALM)
        if f.flags & Flag.END_HEADERS:
            self._header_block = None
            self._on_header_block(block[0], block[1], b"".join(block[2]), events)

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        try:
            simple = decode_simple(block, self.settings.max_header_list_size)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"HPACK decoding failed: {exc}", ErrorCode.COMPRESSION_ERROR) from exc
        if simple is not None:
            return simple
        try:
            return [(str(k), str(v)) for k, v in self._decoder.decode(block, raw=False)]
        except hpack.OversizedHeaderListError as exc:
            raise ProtocolError(f"header list too large: {exc}", ErrorCode.ENHANCE_YOUR_CALM) from exc
        except (hpack.HPACKError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"HPACK decoding failed: {exc}", ErrorCode.COMPRESSION_ERROR) from exc

    def _on_header_block(self, sid: int, flags: int, block: bytes, events: list[Event]) -> None:
        fields = self._decode(block)  # always, to keep the HPACK state in step
        end = bool(flags & Flag.END_STREAM)
        st = self._streams.get(sid)
        if st is None:
            if self.client or sid % 2 == 0:
                if self._is_idle(sid):
                    raise ProtocolError(f"HEADERS on stream {sid}, which we never opened")
                return  # a stream we already closed: ignore (§5.1 "closed")
            if sid <= self._highest_peer_stream:
                return
            self._highest_peer_stream = sid
            self._on_request(sid, fields, end, events)
            return
        # a second header block on a stream: trailers, which must end the stream (§8.1)
        if self.client and not st.response_received:
            self._on_response(st, fields, end, events)
            return
        if not end:
            raise ProtocolError(f"trailers without END_STREAM on stream {sid}", stream_id=sid)
        try:
            split_fields(fields, frozenset())
        except MalformedError as exc:
            raise ProtocolError(str(exc), stream_id=sid) from exc
        self._transition(st, StreamInput.RECV_END)
        events.append(StreamEnded(sid))

    def _on_request(self, sid: int, fields: Fields, end: bool, events: list[Event]) -> None:
        raise ProtocolError("a client received a request")

    def _on_response(self, st: Stream, fields: list[tuple[str, str]], end: bool, events: list[Event]) -> None:
        raise ProtocolError("a server received a response")

    def _on_window_update(self, f: Frame, events: list[Event]) -> None:
        if len(f.payload) != 4:
            raise ProtocolError("WINDOW_UPDATE is not 4 octets", ErrorCode.FRAME_SIZE_ERROR)
        inc = parse_u32(f.payload) & MAX_WINDOW
        sid = f.stream_id
        if sid == 0:
            if inc == 0:
                raise ProtocolError("WINDOW_UPDATE of 0 on the connection")
            self._send_window += inc
            if self._send_window > MAX_WINDOW:
                raise ProtocolError("connection window above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
            if self._blocked:
                self._flush_blocked(events)
            return
        st = self._streams.get(sid)
        if st is None:
            if self._is_idle(sid):
                raise ProtocolError(f"WINDOW_UPDATE on idle stream {sid}")
            return
        if inc == 0:
            raise ProtocolError(f"WINDOW_UPDATE of 0 on stream {sid}", stream_id=sid)
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            raise ProtocolError(f"stream {sid} window above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR, sid)
        if sid in self._blocked:
            self._flush_blocked(events, only=sid)

    def _on_rst_stream(self, f: Frame, events: list[Event]) -> None:
        sid = f.stream_id
        if sid == 0:
            raise ProtocolError("RST_STREAM on stream 0")
        if len(f.payload) != 4:
            raise ProtocolError("RST_STREAM is not 4 octets", ErrorCode.FRAME_SIZE_ERROR)
        if self._is_idle(sid):
            raise ProtocolError(f"RST_STREAM on idle stream {sid}")
        if self._streams.pop(sid, None) is not None:
            self._blocked.pop(sid, None)
            events.append(StreamReset(sid, ErrorCode.of(parse_u32(f.payload)), remote=True))

    def _on_settings(self, f: Frame, events: list[Event]) -> None:
        if f.stream_id != 0:
            raise ProtocolError("SETTINGS on a stream")
        if f.flags & Flag.ACK:
            if f.payload:
                raise ProtocolError("SETTINGS ACK with a payload", ErrorCode.FRAME_SIZE_ERROR)
            return
        pairs = parse_settings(f.payload)
        for key, value in pairs:
            if key == Setting.HEADER_TABLE_SIZE:
                self._table_size_update = value  # we index nothing, but the change is announced
            elif key == Setting.ENABLE_PUSH:
                if value not in (0, 1):
                    raise ProtocolError("SETTINGS_ENABLE_PUSH must be 0 or 1")
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR
                    )
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ProtocolError("a stream window went above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame_size = value
        self._out.append(encode_settings(ack=True))
        events.append(SettingsReceived(tuple(pairs)))
        if self._blocked:
            self._flush_blocked(events)

    def _on_ping(self, f: Frame, events: list[Event], now: float) -> None:
        if f.stream_id != 0:
            raise ProtocolError("PING on a stream")
        if len(f.payload) != 8:
            raise ProtocolError("PING is not 8 octets", ErrorCode.FRAME_SIZE_ERROR)
        if not f.flags & Flag.ACK:
            self._out.append(encode_ping(f.payload, ack=True))
            return
        if self._ping_sent_at is not None and f.payload == self._ping_opaque:
            events.append(PingAcknowledged(f.payload, now - self._ping_sent_at))
            self._ping_sent_at = None

    def _on_goaway(self, f: Frame, events: list[Event]) -> None:
        if f.stream_id != 0:
            raise ProtocolError("GOAWAY on a stream")
        last, code, debug = parse_goaway(f.payload)
        self.goaway_received = True
        events.append(
            ConnectionTerminated(
                ErrorCode.of(code), last, remote=True, reason=debug.decode("utf-8", "replace")
            )
        )
        # Our streams above `last` were never processed: reset them so the caller may retry
        own_parity = 1 if self.client else 0
        for sid in [s for s in self._streams if s > last and s % 2 == own_parity]:
            del self._streams[sid]
            self._blocked.pop(sid, None)
            events.append(StreamReset(sid, ErrorCode.REFUSED_STREAM, remote=True))

    # ---- timers (aioquic style: the shell asks when, then calls back with `now`) ----------
    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called (None: never)."""
        if self.closed:
            return None
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.settings.keepalive_timeout
        return self._last_recv + self.settings.keepalive_interval

    def handle_timer(self, now: float) -> list[Event]:
        """Keepalive: PING after `keepalive_interval` of silence; drop the connection when a
        PING is unanswered for `keepalive_timeout` (hyper's keep_alive settings in ztunnel)."""
        events: list[Event] = []
        if self.closed:
            return events
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self.settings.keepalive_timeout:
                self._terminate(ErrorCode.NO_ERROR, "keepalive PING was not answered", events)
            return events
        if now >= self._last_recv + self.settings.keepalive_interval:
            self.ping(now)
        return events
