"""HBONE's two ends: the client that opens CONNECT streams (outbound) and the server that
answers them (inbound on 15008). The shared machinery is `connection.HboneConnection`.

HBONE (reference §1.3): one `CONNECT` stream per application connection, `:authority =
<pod ip>:<port>`, no `:scheme`/`:path` (RFC 9113 §8.5); the server answers `:status 200` only once
the upstream connection is up, and 4xx/5xx with END_STREAM to refuse (400 bad authority, 401
RBAC deny, 503 upstream failure).
"""

from __future__ import annotations

from nodemesh.protocols.connection import Fields, HboneConnection
from nodemesh.protocols.errors import ErrorCode, LocalProtocolError, ProtocolError
from nodemesh.protocols.events import Event, Headers, RequestReceived, ResponseReceived, StreamEnded
from nodemesh.protocols.fields import REQUEST_PSEUDO, MalformedError, split_fields
from nodemesh.protocols.frames import MAX_WINDOW
from nodemesh.protocols.settings import HboneSettings
from nodemesh.protocols.streams import Stream, StreamInput, StreamState

__all__ = ["HboneClient", "HboneConnection", "HboneServer", "HboneSettings", "StreamState"]


class HboneClient(HboneConnection):
    """The connecting end: opens CONNECT streams (the outbound node proxy)."""

    client = True

    @property
    def available_streams(self) -> int:
        """How many more streams the peer allows now (SETTINGS_MAX_CONCURRENT_STREAMS)."""
        if not self.accepting_streams:
            return 0
        return max(self.peer_max_concurrent_streams - len(self._streams), 0)

    def open_stream(self, authority: str, headers: Headers = ()) -> int:
        """Send `CONNECT authority` with `headers`; returns the new stream's id."""
        if not self._initiated:
            raise LocalProtocolError("initiate() first")
        if not self.accepting_streams:
            raise LocalProtocolError("the connection does not accept new streams (GOAWAY or closed)")
        if len(self._streams) >= self.peer_max_concurrent_streams:
            raise LocalProtocolError(
                f"the peer allows {self.peer_max_concurrent_streams} concurrent streams; all are in use"
            )
        sid = self._next_stream_id
        if sid > MAX_WINDOW:
            raise LocalProtocolError("stream ids are exhausted on this connection")
        self._next_stream_id += 2
        self._new_stream(sid)
        self._encode_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers], False)
        return sid

    def _on_response(self, st: Stream, fields: list[tuple[str, str]], end: bool, events: list[Event]) -> None:
        try:
            pseudo, regular = split_fields(fields, frozenset({":status"}))
            status_text = pseudo.get(":status", "")
            if len(status_text) != 3 or not status_text.isdigit():
                raise MalformedError(f"invalid :status {status_text!r}")
            status = int(status_text)
            if status < 200 and (end or status == 101):
                raise MalformedError(f"informational status {status} cannot end or switch the stream")
        except MalformedError as exc:
            raise ProtocolError(str(exc), stream_id=st.id) from exc
        if status < 200:
            return  # informational (§8.1): the final response follows
        st.response_received = True
        events.append(ResponseReceived(st.id, status, regular))
        if end:
            self._transition(st, StreamInput.RECV_END)
            events.append(StreamEnded(st.id))


class HboneServer(HboneConnection):
    """The accepting end: receives CONNECT requests (the inbound node proxy on 15008)."""

    client = False

    def send_response(
        self, stream_id: int, status: int, headers: Headers = (), end_stream: bool = False
    ) -> None:
        """Answer a request: 200 to open the tunnel; 4xx/5xx with `end_stream=True` to refuse."""
        st = self._stream_for_send(stream_id)
        if st.response_received:
            raise LocalProtocolError(f"stream {stream_id} already has a response")
        st.response_received = True
        self._encode_headers(stream_id, [(":status", str(status)), *headers], end_stream)
        if end_stream:
            self._transition(st, StreamInput.SEND_END)

    def _on_request(self, sid: int, fields: Fields, end: bool, events: list[Event]) -> None:
        if self.goaway_sent:
            raise ProtocolError(f"stream {sid} opened after GOAWAY", ErrorCode.REFUSED_STREAM, sid)
        limit = self.settings.max_concurrent_streams
        if limit is not None and len(self._streams) >= limit:
            raise ProtocolError(f"more than {limit} concurrent streams", ErrorCode.REFUSED_STREAM, sid)
        try:
            pseudo, regular = split_fields(fields, REQUEST_PSEUDO)
            method = pseudo.get(":method")
            if not method:
                raise MalformedError("request without :method")
            authority = pseudo.get(":authority", "")
            if method == "CONNECT":
                # RFC 9113 §8.5: CONNECT carries :authority and omits :scheme and :path
                if not authority or ":scheme" in pseudo or ":path" in pseudo:
                    raise MalformedError("CONNECT needs :authority and no :scheme or :path")
            elif not pseudo.get(":scheme") or not pseudo.get(":path"):
                raise MalformedError(f"{method} request without :scheme or :path")
        except MalformedError as exc:
            raise ProtocolError(str(exc), stream_id=sid) from exc
        st = self._new_stream(sid)
        events.append(RequestReceived(sid, method, authority, regular))
        if end:
            self._transition(st, StreamInput.RECV_END)
            events.append(StreamEnded(sid))
