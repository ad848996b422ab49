"""The waypoint's HTTP/1.1 exchange, driven in memory: a client's bytes in, an h11 server as the
endpoint, the actions out (h11's own style of testing: a client and a server paired in memory)."""

from __future__ import annotations

import h11

from nodemesh.policy.decision import Decision
from nodemesh.waypoint.decide import RBAC_DENIED, RequestVerdict
from nodemesh.waypoint.http import (
    Action,
    CloseDownstream,
    CloseUpstream,
    HttpExchange,
    ReleaseUpstream,
    RequestDone,
    SendDownstream,
    SendUpstream,
)


def _decide(method: str, target: str, headers: list[tuple[str, str]]) -> RequestVerdict:
    if method == "DELETE":
        return RequestVerdict(Decision.deny("RBAC: access denied"), 403, RBAC_DENIED)
    return RequestVerdict(Decision.allow("ok"))


class Endpoint:
    """An h11 server answering every request with 200 and `body`, optionally `connection: close`."""

    def __init__(self, body: bytes = b"hello", close: bool = False) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.body = body
        self.close = close
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        out = b""
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return out
            if isinstance(ev, h11.Request):
                self.method, self.target = ev.method, ev.target
                self.received = b""
            elif isinstance(ev, h11.Data):
                self.received += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self.seen.append((self.method, self.target, self.received))
                headers = [("content-length", str(len(self.body)))]
                if self.close:
                    headers.append(("connection", "close"))
                out += self.conn.send(h11.Response(status_code=200, headers=headers)) or b""
                out += self.conn.send(h11.Data(data=self.body)) or b""
                out += self.conn.send(h11.EndOfMessage()) or b""
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                else:
                    return out


def _run(ex: HttpExchange, endpoint: Endpoint, client_bytes: bytes) -> tuple[bytes, list[Action]]:
    """Feed the client's bytes; serve every upstream byte with `endpoint`, until quiet.
    Returns what the client received and every action."""
    actions = ex.downstream_data(client_bytes, 1.0)
    seen: list[Action] = []
    downstream = b""
    while actions:
        action = actions.pop(0)
        seen.append(action)
        if isinstance(action, SendDownstream):
            downstream += action.data
        elif isinstance(action, SendUpstream):
            reply = endpoint.feed(action.data)
            if reply:
                actions += ex.upstream_data(reply, 2.0)
        elif isinstance(action, CloseUpstream):
            endpoint.conn = h11.Connection(h11.SERVER)
    return downstream, seen


def _responses(data: bytes) -> list[tuple[int, bytes]]:
    client = h11.Connection(h11.CLIENT)
    out: list[tuple[int, bytes]] = []
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    status, body = 0, b""
    while True:
        ev = client.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            return out
        if isinstance(ev, h11.Response):
            status, body = ev.status_code, b""
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            out.append((status, body))
            if client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
                client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                client.send(h11.EndOfMessage())


def test_denied_request_gets_rbac_403_and_the_connection_keeps_serving() -> None:
    """Envoy's RBAC filter answers a denied request with 403 `RBAC: access denied` itself; the
    request never reaches the upstream (its body is read and dropped), and on a keep-alive
    connection the next request is handled normally, in order (HTTP/1.1 pipelining, RFC 9112
    §9.3.2: responses in the order of the requests)."""
    ex = HttpExchange(_decide)
    endpoint = Endpoint()
    pipelined = (
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
        b"DELETE /b HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nbody"
        b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
    )
    downstream, actions = _run(ex, endpoint, pipelined)
    assert _responses(downstream) == [(200, b"hello"), (403, RBAC_DENIED), (200, b"hello")]
    assert endpoint.seen == [(b"GET", b"/a", b""), (b"POST", b"/c", b"hi")]
    done = [a.exchange for a in actions if isinstance(a, RequestDone)]
    assert [(e.method, e.target, e.status, e.request_bytes) for e in done] == [
        ("GET", "/a", 200, 0),
        ("DELETE", "/b", 403, 4),
        ("POST", "/c", 200, 2),
    ]
    assert not any(isinstance(a, CloseDownstream | CloseUpstream) for a in actions)


def test_upstream_connection_close_opens_a_new_one_for_the_next_request() -> None:
    """HTTP/1.1 `Connection: close` (RFC 9112 §9.6): the upstream connection is not reused; the
    next forwarded request goes on a new one, and the client's connection is unaffected."""
    ex = HttpExchange(_decide)
    endpoint = Endpoint(close=True)
    downstream, actions = _run(
        ex, endpoint, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    assert _responses(downstream) == [(200, b"hello"), (200, b"hello")]
    assert sum(isinstance(a, CloseUpstream) for a in actions) == 2
    assert not any(isinstance(a, CloseDownstream) for a in actions)


def test_upstream_failure_before_the_response_is_envoys_503() -> None:
    """Envoy answers a request whose upstream failed before any response byte with 503 `upstream
    connect error or disconnect/reset before headers. reset reason: ...`."""
    ex = HttpExchange(_decide)
    actions = ex.downstream_data(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", 1.0)
    assert isinstance(actions[0], SendUpstream)
    out = ex.upstream_failed("remote refused the tunnel (HBONE 401)", 2.0)
    downstream = b"".join(a.data for a in out if isinstance(a, SendDownstream))
    assert _responses(downstream) == [
        (
            503,
            b"upstream connect error or disconnect/reset before headers. reset reason: remote refused the tunnel (HBONE 401)",
        )
    ]
    (done,) = [a.exchange for a in out if isinstance(a, RequestDone)]
    assert done.status == 503 and done.error == "remote refused the tunnel (HBONE 401)"


def test_malformed_request_is_400_and_closes() -> None:
    """h11 refuses what is not HTTP/1.1 with a status hint (400); the proxy answers it and closes
    the client's connection (a broken framing cannot be resynchronised)."""
    ex = HttpExchange(_decide)
    actions = ex.downstream_data(b"NOT HTTP\r\n\r\n", 1.0)
    downstream = b"".join(a.data for a in actions if isinstance(a, SendDownstream))
    assert downstream.startswith(b"HTTP/1.1 400 ")
    assert isinstance(actions[-1], CloseDownstream) and ex.closed


def test_client_close_between_requests_closes_both_sides() -> None:
    """A client that ends its side when idle ends the exchange: the upstream is released."""
    ex = HttpExchange(_decide)
    _run(ex, Endpoint(), b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
    actions = ex.downstream_data(b"", 3.0)
    assert any(isinstance(a, CloseUpstream) for a in actions) and isinstance(actions[-1], CloseDownstream)


def test_a_keep_alive_upstream_is_released_for_reuse_after_each_exchange() -> None:
    """Envoy pools upstream HTTP/1.1 connections and reuses one once its response is complete
    while HTTP/1.1 persistence allows it (RFC 9112 §9.3: "HTTP/1.1 defaults to the use of
    persistent connections"): each forwarded request ends with `ReleaseUpstream` after its
    record, so the next request may take any endpoint's idle connection; a denied one none."""
    ex = HttpExchange(_decide)
    _, actions = _run(
        ex,
        Endpoint(),
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nDELETE /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    kinds = [
        type(a).__name__ for a in actions if isinstance(a, RequestDone | ReleaseUpstream | CloseUpstream)
    ]
    assert kinds == ["RequestDone", "ReleaseUpstream", "RequestDone", "RequestDone", "ReleaseUpstream"]


def test_http10_response_without_keep_alive_closes_the_upstream() -> None:
    """RFC 9112 §9.3: a recipient of an HTTP/1.0 response without `keep-alive` closes the
    connection after it: the upstream is closed, never released, and the client's own keep-alive
    connection goes on."""
    ex = HttpExchange(_decide)
    actions = ex.downstream_data(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", 1.0)
    assert any(isinstance(a, SendUpstream) for a in actions)
    out = ex.upstream_data(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 2.0)
    assert any(isinstance(a, CloseUpstream) for a in out)
    assert not any(isinstance(a, ReleaseUpstream | CloseDownstream) for a in out)
    downstream = b"".join(a.data for a in out if isinstance(a, SendDownstream))
    assert _responses(downstream) == [(200, b"ok")]
