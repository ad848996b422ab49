"""The echo app: HTTP/1.1 parsing in memory, and HTTP/1.1, h2c, TCP echo and discard on loopback."""

from __future__ import annotations

import asyncio
import json
import socket

import h2.config
import h2.connection
import h2.events
import pytest

from nodemesh.apps.echo import (
    H2_PREFACE,
    EchoConfig,
    EchoIdentity,
    Http1Parser,
    ProtocolError,
    answer,
    serve,
)

ID = EchoIdentity("orders-0", "shop", "node-1")


def test_parser_handles_pipelining_content_length_and_chunked() -> None:
    """RFC 9112 §6: a body is framed by Content-Length or by the chunked transfer coding."""
    p = Http1Parser()
    first = p.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
    assert [r.target for r in first] == ["/a"]
    second = p.feed(b"c")
    assert second[0].body == b"abc" and second[0].method == "POST"
    chunked = Http1Parser().feed(
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"
    )
    assert chunked[0].body == b"abcde"


def test_parser_rejects_garbage_with_a_status() -> None:
    with pytest.raises(ProtocolError) as err:
        Http1Parser().feed(b"HELLO\r\n\r\n")
    assert err.value.status == 400
    with pytest.raises(ProtocolError):
        Http1Parser().feed(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n")


def test_keep_alive_defaults_per_version() -> None:
    """RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`."""
    [r11] = Http1Parser().feed(b"GET / HTTP/1.1\r\n\r\n")
    [r10] = Http1Parser().feed(b"GET / HTTP/1.0\r\n\r\n")
    [close] = Http1Parser().feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert r11.keep_alive and not r10.keep_alive and not close.keep_alive


def test_answer_describes_what_it_saw() -> None:
    [req] = Http1Parser().feed(b"GET /x?y=1 HTTP/1.1\r\nX-Trace: abc\r\n\r\n")
    status, ctype, body = answer(ID, req, ("10.244.0.3", 40000), ("10.244.1.2", 8080), "HTTP/1.1")
    seen = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert seen["pod"] == "orders-0" and seen["namespace"] == "shop" and seen["peer_ip"] == "10.244.0.3"
    assert seen["request_line"] == "GET /x?y=1 HTTP/1.1" and seen["headers"]["x-trace"] == "abc"
    assert answer(ID, req.__class__("GET", "/status/503", "HTTP/1.1", ()), ("a", 1), ("b", 2), "x")[0] == 503
    assert (
        len(answer(ID, req.__class__("GET", "/bytes/10", "HTTP/1.1", ()), ("a", 1), ("b", 2), "x")[2]) == 10
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _with_server(config: EchoConfig, client: object) -> object:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, ID, stop), name="echo")
    await asyncio.sleep(0.05)
    try:
        return await client()  # type: ignore[operator]
    finally:
        stop.set()
        await task


def test_http1_h2_prior_knowledge_tcp_and_discard_on_loopback() -> None:
    """RFC 9113 §3.3: a client with prior knowledge starts with the connection preface."""
    http, tcp, discard = _free_port(), _free_port(), _free_port()
    config = EchoConfig(http=(http,), tcp=(tcp,), discard=(discard,), bind="127.0.0.1", access_log=False)

    async def client() -> dict[str, object]:
        out: dict[str, object] = {}
        r, w = await asyncio.open_connection("127.0.0.1", http)
        w.write(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
        )
        out["h1"] = json.loads(await r.readexactly(length))
        w.close()

        r, w = await asyncio.open_connection("127.0.0.1", http)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", "GET"), (":path", "/two"), (":scheme", "http"), (":authority", "t")],
            end_stream=True,
        )
        w.write(conn.data_to_send())
        body = b""
        done = False
        while not done:
            for ev in conn.receive_data(await r.read(65536)):
                if isinstance(ev, h2.events.DataReceived):
                    body += ev.data or b""
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                if isinstance(ev, h2.events.StreamEnded):
                    done = True
            w.write(conn.data_to_send())
        out["h2"] = json.loads(body)
        w.close()

        r, w = await asyncio.open_connection("127.0.0.1", tcp)
        out["tcp"] = json.loads(await r.readline())
        w.write(b"ping")
        out["echo"] = await r.readexactly(4)
        w.close()

        r, w = await asyncio.open_connection("127.0.0.1", discard)
        w.write(b"z" * 300000)
        w.write_eof()
        out["discard"] = json.loads(await r.readline())
        w.close()
        return out

    out = asyncio.run(_with_server(config, client))
    assert isinstance(out, dict)
    assert out["h1"]["protocol"] == "HTTP/1.1" and out["h1"]["path"] == "/one"
    assert out["h2"]["protocol"] == "HTTP/2" and out["h2"]["request_line"] == "GET /two HTTP/2"
    assert out["tcp"]["protocol"] == "tcp" and out["tcp"]["pod"] == "orders-0"
    assert out["echo"] == b"ping"
    assert out["discard"] == {"bytes": 300000}
    assert H2_PREFACE.startswith(b"PRI")
