"""The waypoint's HTTP/1.1 layer for one tunnelled connection: requests in from the client's
CONNECT stream, each one decided, then forwarded to the endpoint's stream or answered here.

Sans-IO, like h11 itself (both ends are `h11.Connection`s): bytes and the time go in, actions
come out (`SendDownstream`, `SendUpstream`, `ReleaseUpstream`, `CloseUpstream`, `CloseDownstream`,
`RequestDone`);
the asyncio shell (`proxy.py`) only moves bytes. This is the part of Envoy's HTTP connection
manager a waypoint needs for policy: one request at a time per connection (HTTP/1.1 has no
multiplexing; pipelined requests wait in h11's buffer until the previous response is out).

Invariants
- A request is decided exactly once, when its head arrives (the `decide` argument), and each
  request yields exactly one `RequestDone` with its status (the local answer's, or upstream's).
- A forwarded request carries the verdict's jwt_authn edits (`RequestEdits`: the token's header
  or query parameter removed, payload/claim headers set); nothing else of it is changed.
- A denied request never reaches the upstream: its answer goes out at once, its body (if any)
  is read and dropped, and the client's connection stays usable when HTTP/1.1 keep-alive allows
  it (Envoy's RBAC filter answers without closing).
- Each forwarded request has its own upstream connection for its duration (Envoy balances per
  request: the shell checks one out of its endpoint's idle list, or opens one, on the request's
  first `SendUpstream`). When the exchange is complete and h11 says both ends may continue
  (HTTP/1.1 keep-alive, no `connection: close`, not HTTP/1.0 without keep-alive, no stray bytes)
  it is `ReleaseUpstream`d for reuse; otherwise `CloseUpstream`. Every request starts with a fresh
  h11 client state, which is what a reusable connection's state is after its cycle. Hop-by-hop
  headers are not forwarded either way (RFC 9110 §7.6.1), so each side's keep-alive is its own.
- An upstream that fails before its response head gives the client a 503 with Envoy's
  `upstream connect error or disconnect/reset before headers. reset reason: ...`; one that
  fails mid-response cuts the client's connection (the response is incomplete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11

from nodemesh.waypoint.decide import RequestVerdict

__all__ = [
    "Action",
    "CloseDownstream",
    "CloseUpstream",
    "Decide",
    "Exchange",
    "HttpExchange",
    "ReleaseUpstream",
    "RequestDone",
    "SendDownstream",
    "SendUpstream",
]

Decide = Callable[[str, str, list[tuple[str, str]]], RequestVerdict]
"""(method, target, headers) -> verdict."""

UPSTREAM_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})


@dataclass(frozen=True, slots=True)
class SendDownstream:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Bytes for the upstream connection (open one first if there is none)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """The upstream connection is finished with; the next `SendUpstream` needs a new one."""


@dataclass(frozen=True, slots=True)
class ReleaseUpstream:
    """The request's upstream connection finished its exchange and may serve another request."""


@dataclass(frozen=True, slots=True)
class CloseDownstream:
    """End the client's connection after what was sent."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its outcome (a flow record and a metric sample)."""

    method: str
    target: str
    start: float
    end: float
    verdict: RequestVerdict
    status: int | None
    request_bytes: int
    response_bytes: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RequestDone:
    exchange: Exchange


Action = SendDownstream | SendUpstream | ReleaseUpstream | CloseUpstream | CloseDownstream | RequestDone


@dataclass(slots=True)
class _Current:
    method: str
    target: str
    start: float
    verdict: RequestVerdict
    upstream_ok: bool
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    request_done: bool = False
    response_started: bool = False
    response_done: bool = False
    error: str | None = None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers a proxy forwards: without `Connection` and the fields it names, nor the other
    hop-by-hop ones (RFC 9110 §7.6.1); each hop's own connection management stays its own."""
    named = {t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",")}
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


class HttpExchange:
    """The HTTP/1.1 state of one client connection through the waypoint (module doc)."""

    def __init__(self, decide: Decide) -> None:
        self._decide = decide
        self._server = h11.Connection(h11.SERVER)
        self._client = h11.Connection(h11.CLIENT)
        self._current: _Current | None = None
        self._downstream_eof = False
        self.closed = False
        self.requests = 0

    # ---- the client's side -------------------------------------------------------------------
    def downstream_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the client (b"" = it ended its side)."""
        if self.closed:
            return []
        if not data:
            self._downstream_eof = True
        try:
            self._server.receive_data(data)
        except RuntimeError:  # data after the client's EOF: nothing more to do
            return []
        actions: list[Action] = []
        self._pump_downstream(now, actions)
        return actions

    def _pump_downstream(self, now: float, actions: list[Action]) -> None:
        while not self.closed:
            try:
                ev = self._server.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc, now, actions)
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if ev is h11.NEED_DATA and self._downstream_eof and self._current is None:
                    self._close(now, actions)
                return
            cur = self._current
            if isinstance(ev, h11.Request):
                self._on_request(ev, now, actions)
            elif isinstance(ev, h11.Data) and cur is not None:
                cur.request_bytes += len(ev.data)
                if cur.verdict.forward and cur.upstream_ok:
                    self._to_upstream(ev, actions)
            elif isinstance(ev, h11.EndOfMessage) and cur is not None:
                cur.request_done = True
                if cur.verdict.forward and cur.upstream_ok:
                    self._to_upstream(ev, actions)
                self._maybe_cycle(now, actions)
            elif isinstance(ev, h11.ConnectionClosed):
                if self._current is None:
                    self._close(now, actions)
                return

    @staticmethod
    def _to_downstream(data: bytes | None, actions: list[Action]) -> None:
        if data:
            actions.append(SendDownstream(data))

    def _to_upstream(self, ev: h11.Data | h11.EndOfMessage, actions: list[Action]) -> None:
        data = self._client.send(ev)
        if data:
            actions.append(SendUpstream(data))

    def _on_request(self, ev: h11.Request, now: float, actions: list[Action]) -> None:
        self.requests += 1
        method, target = _text(ev.method), _text(ev.target)
        headers = [(_text(k), _text(v)) for k, v in ev.headers]
        verdict = self._decide(method, target, headers)
        cur = self._current = _Current(method, target, now, verdict, upstream_ok=verdict.forward)
        if not verdict.forward:
            assert verdict.status is not None
            self._respond(cur, verdict.status, verdict.body, actions, verdict.headers)
            return
        forward_target, forward_headers = ev.target, end_to_end(list(ev.headers))
        if verdict.edits is not None:  # jwt_authn: token removed, payload header set
            forward_target = verdict.edits.target(target).encode("latin-1")
            edited = verdict.edits.headers([(_text(k), _text(v)) for k, v in forward_headers])
            forward_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in edited]
        try:
            head = self._client.send(
                h11.Request(method=ev.method, target=forward_target, headers=forward_headers)
            )
        except h11.LocalProtocolError as exc:  # e.g. an HTTP/1.0 request without Host
            cur.upstream_ok = False
            cur.error = str(exc)
            self._respond(cur, 400, b"Bad Request", actions)
            self._reset_upstream(actions)
            return
        actions.append(SendUpstream(head or b""))

    def _respond(
        self,
        cur: _Current,
        status: int,
        body: bytes,
        actions: list[Action],
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Answer the current request here (a policy deny, or a failed upstream)."""
        headers = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
        reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ else b""
        out = self._server.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        out += self._server.send(h11.Data(data=body)) or b""
        out += self._server.send(h11.EndOfMessage()) or b""
        actions.append(SendDownstream(out))
        cur.status = status
        cur.response_started = cur.response_done = True
        cur.response_bytes = len(body)

    def _bad_request(self, exc: h11.RemoteProtocolError, now: float, actions: list[Action]) -> None:
        """The client broke HTTP/1.1: answer with h11's status hint if we still can, then close."""
        if self._server.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"bad request: {exc}".encode()
            headers = [
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            try:
                data = (
                    self._server.send(h11.Response(status_code=exc.error_status_hint, headers=headers)) or b""
                )
                data += self._server.send(h11.Data(data=body)) or b""
                data += self._server.send(h11.EndOfMessage()) or b""
                actions.append(SendDownstream(data))
            except h11.LocalProtocolError:
                pass
        cur = self._current
        if cur is not None:
            cur.error = str(exc)
            self._done(cur, now, actions)
        self._close(now, actions)

    # ---- the endpoint's side -----------------------------------------------------------------
    def upstream_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the endpoint (b"" = it ended its side)."""
        actions: list[Action] = []
        cur = self._current
        if self.closed or cur is None or not cur.verdict.forward or not cur.upstream_ok:
            return actions
        self._client.receive_data(data)
        while True:
            try:
                ev = self._client.next_event()
            except h11.RemoteProtocolError as exc:
                self._upstream_broken(f"protocol error: {exc}", now, actions, status=502)
                return actions
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if not data and not cur.response_done:
                    self._upstream_broken("connection termination", now, actions)
                return actions
            if isinstance(ev, h11.InformationalResponse):
                self._to_downstream(self._server.send(ev), actions)
            elif isinstance(ev, h11.Response):
                cur.status = ev.status_code
                cur.response_started = True
                response = h11.Response(
                    status_code=ev.status_code, headers=end_to_end(list(ev.headers)), reason=ev.reason
                )
                self._to_downstream(self._server.send(response), actions)
            elif isinstance(ev, h11.Data):
                cur.response_bytes += len(ev.data)
                self._to_downstream(self._server.send(ev), actions)
            elif isinstance(ev, h11.EndOfMessage):
                self._to_downstream(self._server.send(ev), actions)
                cur.response_done = True
                self._maybe_cycle(now, actions)
                return actions
            elif isinstance(ev, h11.ConnectionClosed):
                if not cur.response_done:
                    self._upstream_broken("connection termination", now, actions)
                return actions

    def upstream_failed(self, reason: str, now: float) -> list[Action]:
        """The upstream connection could not be opened, was refused, or was reset."""
        actions: list[Action] = []
        cur = self._current
        if self.closed or cur is None or not cur.verdict.forward or not cur.upstream_ok:
            self._reset_upstream(actions)
            return actions
        self._upstream_broken(reason, now, actions)
        return actions

    def _upstream_broken(self, reason: str, now: float, actions: list[Action], status: int = 503) -> None:
        cur = self._current
        assert cur is not None
        cur.upstream_ok = False
        cur.error = reason
        self._reset_upstream(actions)
        if cur.response_started:  # the client got part of a response: it cannot be completed
            self._done(cur, now, actions)
            self._close(now, actions)
            return
        self._respond(cur, status, (UPSTREAM_RESET + reason).encode(), actions)
        self._maybe_cycle(now, actions)

    # ---- cycles ----------------------------------------------------------------------------
    def _maybe_cycle(self, now: float, actions: list[Action]) -> None:
        """Both the request and its response are complete: record it, get both connections
        ready for the next request (or close what HTTP/1.1 says must close)."""
        cur = self._current
        if cur is None or not (cur.request_done and cur.response_done):
            return
        self._done(cur, now, actions)
        if cur.verdict.forward and cur.upstream_ok:
            client = self._client
            reusable = client.our_state is h11.DONE and client.their_state is h11.DONE
            if reusable and not client.trailing_data[0]:
                self._client = h11.Connection(h11.CLIENT)
                actions.append(ReleaseUpstream())
            else:
                self._reset_upstream(actions)
        if self._server.our_state is h11.DONE and self._server.their_state is h11.DONE:
            self._server.start_next_cycle()
            self._pump_downstream(now, actions)
        else:
            self._close(now, actions)

    def _done(self, cur: _Current, now: float, actions: list[Action]) -> None:
        if self._current is not cur:
            return
        self._current = None
        actions.append(
            RequestDone(
                Exchange(
                    cur.method,
                    cur.target,
                    cur.start,
                    max(now, cur.start),
                    cur.verdict,
                    cur.status,
                    cur.request_bytes,
                    cur.response_bytes,
                    cur.error,
                )
            )
        )

    def _reset_upstream(self, actions: list[Action]) -> None:
        if self._client.our_state is not h11.IDLE or self._client.their_state is not h11.IDLE:
            self._client = h11.Connection(h11.CLIENT)
            actions.append(CloseUpstream())

    def _close(self, now: float, actions: list[Action]) -> None:
        if self.closed:
            return
        cur = self._current
        if cur is not None:
            cur.error = cur.error or "client connection closed"
            self._done(cur, now, actions)
        self.closed = True
        actions.append(CloseUpstream())
        actions.append(CloseDownstream())

    def abort(self, reason: str, now: float) -> list[Action]:
        """The client's stream is gone (reset): finish the current request, drop the upstream."""
        actions: list[Action] = []
        cur = self._current
        if cur is not None:
            cur.error = cur.error or reason
            self._done(cur, now, actions)
        self.closed = True
        actions.append(CloseUpstream())
        return actions
