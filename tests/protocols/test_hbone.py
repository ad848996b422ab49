"""The HBONE state machines, client and server paired in memory (h2/h11 style)."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodemesh.protocols import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    HboneClient,
    HboneServer,
    LocalProtocolError,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    StreamState,
    StreamWritable,
)
from nodemesh.protocols.frames import (
    CONNECTION_PREFACE,
    Flag,
    FrameReader,
    FrameType,
    Setting,
    encode_frame,
    encode_rst_stream,
    encode_settings,
    encode_window_update,
)

MiB = 1024 * 1024


class Pair:
    """A client and a server joined by an in-memory wire."""

    def __init__(self) -> None:
        self.client = HboneClient()
        self.server = HboneServer()
        self.client.initiate(0.0)
        self.server.initiate(0.0)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.wire_to_server: list[bytes] = []
        self.wire_to_client: list[bytes] = []
        self.pump()

    def pump(self, now: float = 0.0, ack: bool = True) -> None:
        """Move bytes both ways until both sides are quiet; acknowledge delivered DATA."""
        for _ in range(10_000):
            a = self.client.data_to_send()
            b = self.server.data_to_send()
            if not a and not b:
                return
            if a:
                self.wire_to_server.append(a)
                evs = self.server.receive_data(a, now)
                self.server_events += evs
                if ack:
                    for e in evs:
                        if isinstance(e, DataReceived):
                            self.server.acknowledge_received_data(e.stream_id, len(e.data))
            if b:
                self.wire_to_client.append(b)
                evs = self.client.receive_data(b, now)
                self.client_events += evs
                if ack:
                    for e in evs:
                        if isinstance(e, DataReceived):
                            self.client.acknowledge_received_data(e.stream_id, len(e.data))
        raise AssertionError("the pair never went quiet")

    def open(self, authority: str = "10.0.0.2:8080") -> int:
        sid = self.client.open_stream(authority, (("baggage", "k8s.namespace.name=shop"),))
        self.pump()
        self.server.send_response(sid, 200)
        self.pump()
        return sid


def of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def frames(chunks: list[bytes], preface: bool = False) -> list[tuple[int, int, int, bytes]]:
    data = b"".join(chunks)
    if preface:
        assert data.startswith(CONNECTION_PREFACE)
        data = data[len(CONNECTION_PREFACE) :]
    return [(f.type, f.flags, f.stream_id, f.payload) for f in FrameReader(1 << 24).feed(data)]


# ---- settings and the CONNECT exchange ------------------------------------------------------
def test_both_ends_advertise_istios_settings() -> None:
    """ZT:src/config.rs (reference §1.4): stream window 4 MiB, connection window 16 MiB, max frame
    1 MiB on both ends; the server advertises 200 max concurrent streams; push disabled."""
    p = Pair()
    client_settings = dict(of(p.server_events, SettingsReceived)[0].changed)
    server_settings = dict(of(p.client_events, SettingsReceived)[0].changed)
    for s in (client_settings, server_settings):
        assert s[Setting.INITIAL_WINDOW_SIZE] == 4 * MiB
        assert s[Setting.MAX_FRAME_SIZE] == 1 * MiB
        assert s[Setting.ENABLE_PUSH] == 0
    assert server_settings[Setting.MAX_CONCURRENT_STREAMS] == 200
    assert Setting.MAX_CONCURRENT_STREAMS not in client_settings
    assert client_settings[Setting.MAX_HEADER_LIST_SIZE] == 16 * 1024
    assert server_settings[Setting.MAX_HEADER_LIST_SIZE] == 64 * 1024
    # the connection window is raised to 16 MiB by a WINDOW_UPDATE on stream 0 (§6.9.2)
    updates = [f for f in frames(p.wire_to_server, preface=True) if f[0] == FrameType.WINDOW_UPDATE]
    assert updates[0][2] == 0 and int.from_bytes(updates[0][3], "big") == 16 * MiB - 65_535
    assert p.client.peer_max_concurrent_streams == 200


def test_connect_has_authority_and_no_scheme_or_path() -> None:
    """RFC 9113 §8.5 and reference §1.3: `:method = CONNECT`, `:authority = <pod ip>:<port>`, no
    :scheme or :path; the server answers 200 and the stream then carries the bytes."""
    p = Pair()
    sid = p.client.open_stream("10.0.0.2:8080", (("traceparent", "00-1-2-00"),))
    headers_frame = frames([p.client.data_to_send()])[0]
    p.server_events += p.server.receive_data(encode_frame(*headers_frame), 0.0)
    decoded = [(str(k), str(v)) for k, v in hpack.Decoder().decode(headers_frame[3])]
    assert decoded[:2] == [(":method", "CONNECT"), (":authority", "10.0.0.2:8080")]
    assert not any(k in (":scheme", ":path") for k, _ in decoded)
    req = of(p.server_events, RequestReceived)[0]
    assert (req.stream_id, req.method, req.authority) == (sid, "CONNECT", "10.0.0.2:8080")
    assert req.headers == (("traceparent", "00-1-2-00"),)
    p.server.send_response(sid, 200)
    p.pump()
    assert of(p.client_events, ResponseReceived)[0].status == 200
    p.client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
    p.server.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\n")
    p.pump()
    assert b"".join(e.data for e in of(p.server_events, DataReceived)) == b"GET / HTTP/1.1\r\n\r\n"
    assert b"".join(e.data for e in of(p.client_events, DataReceived)) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_end_stream_is_the_half_close_each_way() -> None:
    """RFC 9113 §5.1 and §8.5: END_STREAM half-closes one direction; the stream closes once both
    have ended, and sending after our END_STREAM is our own error."""
    p = Pair()
    sid = p.open()
    p.client.end_stream(sid)
    p.pump()
    assert of(p.server_events, StreamEnded) == [StreamEnded(sid)]
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    assert p.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    p.server.send_data(sid, b"bye", end_stream=True)
    p.pump()
    assert p.client.stream_state(sid) is StreamState.CLOSED
    assert p.server.stream_state(sid) is StreamState.CLOSED
    assert p.client.open_streams == 0 and p.server.open_streams == 0
    with pytest.raises(LocalProtocolError):
        p.client.send_data(sid, b"late")


def test_refusal_ends_the_stream_with_the_status() -> None:
    """Reference §1.3: 401 on RBAC deny (400 bad authority, 503 upstream failure), and the stream
    ends; other streams on the connection are unaffected."""
    p = Pair()
    ok = p.open()
    denied = p.client.open_stream("10.0.0.2:9090")
    p.pump()
    p.server.send_response(denied, 401, end_stream=True)
    p.pump()
    statuses = {e.stream_id: e.status for e in of(p.client_events, ResponseReceived)}
    assert statuses == {ok: 200, denied: 401}
    assert StreamEnded(denied) in p.client_events
    p.client.send_data(ok, b"still fine")
    p.pump()
    assert of(p.server_events, DataReceived)[-1].data == b"still fine"


# ---- flow control --------------------------------------------------------------------------
def test_sender_never_exceeds_the_windows_and_resumes_on_window_update() -> None:
    """RFC 9113 §6.9: "A sender MUST NOT send a flow-controlled frame with a length that exceeds
    the space available in either of the flow-control windows advertised by the receiver";
    queued bytes leave as WINDOW_UPDATEs arrive (`StreamWritable` once all are out)."""
    p = Pair()
    sid = p.open()
    payload = bytes(range(256)) * (24 * 1024)  # 6 MiB > the 4 MiB stream window
    p.server.send_data(sid, payload)
    assert p.server.stream_pending(sid) == len(payload) - 4 * MiB
    p.pump(ack=False)  # the client reads but does not acknowledge
    got = b"".join(e.data for e in of(p.client_events, DataReceived))
    assert len(got) == 4 * MiB
    assert not of(p.server_events, StreamWritable)
    p.client.acknowledge_received_data(sid, len(got))
    p.pump()
    got = b"".join(e.data for e in of(p.client_events, DataReceived))
    assert got == payload
    assert p.server.stream_pending(sid) == 0
    assert StreamWritable(sid) in p.server_events


def test_small_exchanges_send_no_window_update() -> None:
    """WINDOW_UPDATEs are batched (a quarter of the window): a request/response of a few KiB adds
    no frame beyond HEADERS and DATA, which is what keeps per-request CPU low."""
    p = Pair()
    sid = p.open()
    before = len(frames(p.wire_to_server, preface=True))
    for _ in range(20):
        p.client.send_data(sid, b"x" * 1024)
        p.server.send_data(sid, b"y" * 1024)
        p.pump()
    new = frames(p.wire_to_server, preface=True)[before:]
    assert {f[0] for f in new} == {FrameType.DATA}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=70_000), min_size=1, max_size=8),
    st.lists(st.integers(1, 50_000), max_size=20),
)
def test_bytes_arrive_intact_whatever_the_chunking(messages: list[bytes], cuts: list[int]) -> None:
    """A CONNECT stream is a byte pipe (RFC 9113 §8.5): whatever the application writes and however
    TCP splits the connection's bytes, the peer receives the same bytes in order."""
    client, server = HboneClient(), HboneServer()
    client.initiate(0.0)
    server.initiate(0.0)
    sid = client.open_stream("10.0.0.2:80")
    server_events = server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    for m in messages:
        client.send_data(sid, m)
    wire = client.data_to_send()
    pos = 0
    for cut in [*cuts, len(wire)]:
        server_events += server.receive_data(wire[pos : pos + cut], 0.0)
        pos += cut
    got = b"".join(e.data for e in server_events if isinstance(e, DataReceived))
    assert got == b"".join(messages)
    assert not of(server_events, ConnectionTerminated) and not of(server_events, StreamReset)


# ---- errors: blame and scope ---------------------------------------------------------------
def _server_after_preface() -> HboneServer:
    server = HboneServer()
    server.initiate(0.0)
    server.receive_data(CONNECTION_PREFACE + encode_settings(), 0.0)
    server.data_to_send()
    return server


def _goaway_code(data: bytes) -> int:
    goaways = [f for f in frames([data]) if f[0] == FrameType.GOAWAY]
    assert goaways, "no GOAWAY sent"
    return int.from_bytes(goaways[0][3][4:8], "big")


def test_a_bad_preface_is_a_connection_error() -> None:
    """RFC 9113 §3.4: an invalid connection preface is a connection error of type PROTOCOL_ERROR."""
    server = HboneServer()
    server.initiate(0.0)
    server.data_to_send()
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert of(events, ConnectionTerminated)[0].error_code is ErrorCode.PROTOCOL_ERROR
    assert _goaway_code(server.data_to_send()) == ErrorCode.PROTOCOL_ERROR
    assert server.closed and server.receive_data(b"more", 0.0) == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (encode_frame(FrameType.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),  # §6.1 stream 0
        (encode_frame(FrameType.DATA, 0, 7, b"x"), ErrorCode.PROTOCOL_ERROR),  # §5.1 idle stream
        (encode_frame(FrameType.SETTINGS, 0, 0, b"\x00" * 5), ErrorCode.FRAME_SIZE_ERROR),  # §6.5
        (encode_settings([(Setting.INITIAL_WINDOW_SIZE, 2**31)]), ErrorCode.FLOW_CONTROL_ERROR),
        (encode_settings([(Setting.MAX_FRAME_SIZE, 100)]), ErrorCode.PROTOCOL_ERROR),  # §6.5.2
        (encode_frame(FrameType.PING, 0, 0, b"\x00" * 7), ErrorCode.FRAME_SIZE_ERROR),  # §6.7
        (encode_frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x00" * 4), ErrorCode.PROTOCOL_ERROR),
        (encode_window_update(0, 2**31 - 1), ErrorCode.FLOW_CONTROL_ERROR),  # §6.9.1 overflow
        (encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\xff\xff\xff"), ErrorCode.COMPRESSION_ERROR),
        (encode_frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, b""), ErrorCode.PROTOCOL_ERROR),
        (encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 2, b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (encode_frame(FrameType.DATA, 0, 1, b"x" * (1024 * 1024 + 1)), ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_malformed_frames_are_connection_errors(frame: bytes, code: ErrorCode) -> None:
    """RFC 9113 §5.4.1: a connection error sends GOAWAY with the error code and closes THAT
    connection; the state machine reports it as an event, never as an exception."""
    server = _server_after_preface()
    events = server.receive_data(frame, 0.0)
    terminated = of(events, ConnectionTerminated)
    assert terminated and terminated[0].error_code == code and not terminated[0].remote
    assert _goaway_code(server.data_to_send()) == code


def test_a_malformed_request_resets_only_its_stream() -> None:
    """RFC 9113 §8.1.1: a malformed request (CONNECT with :path, §8.5; upper-case names, §8.2)
    is a stream error of type PROTOCOL_ERROR; the other streams carry on."""
    p = Pair()
    good = p.open()
    enc = hpack.Encoder()
    bad_blocks = [
        enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.2:80"), (":path", "/")]),
        enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.2:80"), ("X-Upper", "1")]),
        enc.encode([(":authority", "10.0.0.2:80")]),
    ]
    # the pair's own encoder is bypassed: send through a fresh HPACK context on a new connection
    server = _server_after_preface()
    for i, block in enumerate(bad_blocks):
        events = server.receive_data(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 1 + 2 * i, block), 0)
        assert not of(events, RequestReceived) and not of(events, ConnectionTerminated)
        rst = [f for f in frames([server.data_to_send()]) if f[0] == FrameType.RST_STREAM]
        assert rst[0][2] == 1 + 2 * i and int.from_bytes(rst[0][3], "big") == ErrorCode.PROTOCOL_ERROR
    assert not server.closed
    p.client.send_data(good, b"unaffected")
    p.pump()
    assert of(p.server_events, DataReceived)[-1].data == b"unaffected"


def test_the_201st_concurrent_stream_is_refused() -> None:
    """Reference §1.4: the server advertises 200 concurrent streams; RFC 9113 §5.1.2: a stream
    above the limit is refused with REFUSED_STREAM (a stream error)."""
    server = _server_after_preface()
    enc = hpack.Encoder()
    for i in range(201):
        block = enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
        events = server.receive_data(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 1 + 2 * i, block), 0)
    assert not of(events, RequestReceived)
    assert server.open_streams == 200
    rst = [f for f in frames([server.data_to_send()]) if f[0] == FrameType.RST_STREAM]
    assert [(f[2], int.from_bytes(f[3], "big")) for f in rst] == [(401, ErrorCode.REFUSED_STREAM)]


def test_client_cannot_open_more_streams_than_the_server_allows() -> None:
    """RFC 9113 §5.1.2: an endpoint MUST NOT exceed the limit set by its peer; doing so anyway is
    the caller's error (LocalProtocolError), never sent."""
    p = Pair()
    for _ in range(200):
        p.client.open_stream("10.0.0.2:80")
    assert p.client.available_streams == 0
    with pytest.raises(LocalProtocolError):
        p.client.open_stream("10.0.0.2:80")


def test_goaway_refuses_unprocessed_streams_and_stops_new_ones() -> None:
    """RFC 9113 §6.8: streams above GOAWAY's last stream id were not processed and may be retried;
    streams up to it may finish; no new stream may be opened on the connection."""
    p = Pair()
    first = p.open()
    later = p.client.open_stream("10.0.0.2:80")  # crosses the server's GOAWAY on the wire
    p.server.close()
    p.pump()
    assert p.client.goaway_received and not p.client.accepting_streams
    assert of(p.client_events, ConnectionTerminated)[0].remote
    assert StreamReset(later, ErrorCode.REFUSED_STREAM, remote=True) in p.client_events
    assert not of(p.server_events, RequestReceived)[1:]  # the server never processed `later`
    p.client.send_data(first, b"finishing")
    p.pump()
    assert of(p.server_events, DataReceived)[-1].data == b"finishing"
    with pytest.raises(LocalProtocolError):
        p.client.open_stream("10.0.0.2:80")


def test_rst_stream_from_the_peer_ends_only_that_stream() -> None:
    """RFC 9113 §6.4: RST_STREAM terminates one stream; the connection stays usable."""
    p = Pair()
    a, b = p.open(), p.open()
    p.client_events += p.client.receive_data(encode_rst_stream(a, ErrorCode.CANCEL), 0.0)
    assert StreamReset(a, ErrorCode.CANCEL, remote=True) in p.client_events
    assert p.client.stream_state(a) is StreamState.CLOSED
    assert p.client.stream_state(b) is StreamState.OPEN


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(junk: bytes) -> None:
    """A malformed frame closes that connection only: whatever the peer sends after the preface,
    `receive_data` returns events (at worst ConnectionTerminated), never an exception."""
    server = _server_after_preface()
    events = server.receive_data(junk, 0.0)
    terminated = of(events, ConnectionTerminated)
    assert len(terminated) <= 1
    if terminated:
        assert server.closed and FrameType.GOAWAY in {f[0] for f in frames([server.data_to_send()])}


def test_hpack_state_is_kept_for_streams_that_are_ignored() -> None:
    """RFC 9113 §4.3: header blocks change the HPACK state, so a block on a stream we no longer
    track must still be decoded, or later blocks that refer to its table entries are misread.
    The peer here is a stock HPACK encoder (incremental indexing, Huffman), as another HBONE
    implementation would send."""
    client = HboneClient()
    client.initiate(0.0)
    client.receive_data(encode_settings(), 0.0)
    gone, live = client.open_stream("10.0.0.2:80"), client.open_stream("10.0.0.2:80")
    client.reset_stream(gone)
    peer = hpack.Encoder()
    late = peer.encode([(":status", "200"), ("x-late", "1")])  # enters the peer's dynamic table
    again = peer.encode([(":status", "200"), ("x-late", "1")])  # now a reference to that entry
    assert len(again) < len(late)
    events = client.receive_data(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, gone, late), 0.0)
    events += client.receive_data(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, live, again), 0.0)
    assert of(events, ResponseReceived) == [ResponseReceived(live, 200, (("x-late", "1"),))]
    assert not of(events, ConnectionTerminated)


def test_header_blocks_we_send_use_no_hpack_state() -> None:
    """RFC 7541 §6.2.2: literals without indexing add nothing to the decoder's dynamic table, so a
    stock decoder reads them and stays empty; a peer's smaller SETTINGS_HEADER_TABLE_SIZE is
    announced by a size update at the start of the next block (§4.2, §6.3)."""
    p = Pair()
    decoder = hpack.Decoder()
    p.client.open_stream("10.0.0.2:8080", (("traceparent", "00-ab-cd-00"),))
    block = frames([p.client.data_to_send()])[0][3]
    assert [(str(k), str(v)) for k, v in decoder.decode(block)] == [
        (":method", "CONNECT"),
        (":authority", "10.0.0.2:8080"),
        ("traceparent", "00-ab-cd-00"),
    ]
    assert len(decoder.header_table.dynamic_entries) == 0
    p.client.receive_data(encode_settings([(Setting.HEADER_TABLE_SIZE, 0)]), 0.0)
    p.client.data_to_send()
    p.client.open_stream("10.0.0.2:8080")
    block = frames([p.client.data_to_send()])[0][3]
    assert block[0] == 0x20  # dynamic table size update to 0
    decoder.decode(block)


# ---- keepalive -----------------------------------------------------------------------------
def test_keepalive_pings_after_10s_and_drops_after_20s_unanswered() -> None:
    """Reference §1.4 (ZT:src/proxy/h2.rs): a keepalive PING every 10 s; no answer within 20 s
    drops the connection. Time is an argument: nothing here reads a clock."""
    p = Pair()
    assert p.client.get_timer() == 10.0
    p.client.handle_timer(10.0)
    ping = frames([p.client.data_to_send()])
    assert ping and ping[0][0] == FrameType.PING
    assert p.client.get_timer() == 30.0
    events = p.client.handle_timer(30.0)
    assert of(events, ConnectionTerminated) and p.client.closed


def test_a_ping_answered_reports_the_round_trip() -> None:
    """RFC 9113 §6.7: the receiver of a PING answers with ACK and the same payload."""
    p = Pair()
    p.client.ping(5.0)
    p.server_events += p.server.receive_data(p.client.data_to_send(), 5.0)
    p.client_events += p.client.receive_data(p.server.data_to_send(), 5.25)
    ack = of(p.client_events, PingAcknowledged)
    assert ack and ack[0].rtt == pytest.approx(0.25)
