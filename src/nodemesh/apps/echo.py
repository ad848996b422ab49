"""`nodemesh echo`: the built-in test application every local cluster runs without images.

It answers with what it saw, so a test or a person can check the data path from the receiving
end: its own pod (from `NODEMESH_POD_NAME` / `NODEMESH_POD_NAMESPACE`, set by the runtime), the
peer's address as the socket reports it (source-IP preservation is visible here), the request line
and the headers. Ports:

- `--http PORT`: HTTP/1.1 (RFC 9112) and HTTP/2 cleartext on the same port, by prior knowledge
  (RFC 9113 §3.3: the client's first bytes are the connection preface) or by `Upgrade: h2c`
  (RFC 7540 §3.2). Paths: `/bytes/N` answers N bytes, `/status/N` answers status N, anything else
  the JSON description.
- `--tcp PORT`: one JSON line describing the connection, then an echo of every byte (RFC 862).
- `--discard PORT`: reads and drops everything (RFC 863); at the client's end of stream it writes
  one JSON line with the byte count, so a bulk-throughput test can check what arrived.

The HTTP/1.1 parser is sans-IO (`Http1Parser.feed(bytes) -> requests`), tested in memory; the
asyncio protocols only move bytes. HTTP/2 uses the `h2` state machine. The Protocol API, not
streams, keeps the per-request cost low enough for the no-mesh baseline (PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

__all__ = [
    "H2_PREFACE",
    "EchoConfig",
    "EchoIdentity",
    "Http1Parser",
    "HttpRequest",
    "ProtocolError",
    "answer",
    "render_http1_response",
    "run",
]

log = logging.getLogger("nodemesh.echo")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
REASONS = {
    200: "OK",
    101: "Switching Protocols",
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
}


class ProtocolError(ValueError):
    """The peer sent something that is not HTTP/1.1; `status` is what to answer before closing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class EchoIdentity:
    pod: str
    namespace: str
    node: str

    @classmethod
    def from_env(cls) -> EchoIdentity:
        return cls(
            os.environ.get("NODEMESH_POD_NAME", socket.gethostname()),
            os.environ.get("NODEMESH_POD_NAMESPACE", ""),
            os.environ.get("NODEMESH_NODE_NAME", ""),
        )


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass
class Http1Parser:
    """Bytes in, complete requests out (RFC 9112): request line, headers, and a body framed by
    Content-Length or chunked transfer coding. Raises `ProtocolError` on malformed input."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[HttpRequest]:
        self.buffer += data
        out: list[HttpRequest] = []
        while True:
            request = self._next()
            if request is None:
                return out
            out.append(request)

    def _next(self) -> HttpRequest | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("request head too large", 431)
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ProtocolError(f"bad request line {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:80]!r}")
            headers.append((name, value.strip()))
        start = end + 4
        request = HttpRequest(parts[0], parts[1], parts[2], tuple(headers))
        te = (request.header("transfer-encoding") or "").lower()
        if te:
            if te != "chunked":
                raise ProtocolError(f"transfer-encoding {te!r} not supported", 501)
            decoded = self._chunked(start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            length_text = request.header("content-length") or "0"
            if not length_text.isdigit():
                raise ProtocolError(f"bad content-length {length_text!r}")
            length = int(length_text)
            if length > MAX_BYTES:
                raise ProtocolError("body too large", 413)
            if len(self.buffer) < start + length:
                return None
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        return HttpRequest(request.method, request.target, request.version, request.headers, body)

    def _chunked(self, pos: int) -> tuple[bytes, int] | None:
        body = bytearray()
        while True:
            eol = self.buffer.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = bytes(self.buffer[pos:eol]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ProtocolError("bad chunk size") from exc
            if size == 0:
                trailer_end = self.buffer.find(b"\r\n\r\n", eol)
                if self.buffer[eol : eol + 4] == b"\r\n\r\n":
                    return bytes(body), eol + 4
                if trailer_end < 0:
                    return None
                return bytes(body), trailer_end + 4
            if len(self.buffer) < eol + 2 + size + 2:
                return None
            body += self.buffer[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if len(body) > MAX_BYTES:
                raise ProtocolError("body too large", 413)


def answer(
    identity: EchoIdentity, request: HttpRequest, peer: tuple[str, int], local: tuple[str, int], protocol: str
) -> tuple[int, str, bytes]:
    """(status, content type, body) for a request: the decision, with no I/O."""
    path = request.target.split("?", 1)[0]
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
        size = min(int(parts[1]), MAX_BYTES)
        return 200, "application/octet-stream", b"x" * size
    status = 200
    if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit() and 200 <= int(parts[1]) <= 599:
        status = int(parts[1])
    seen = {
        "pod": identity.pod,
        "namespace": identity.namespace,
        "node": identity.node,
        "protocol": protocol,
        "peer": f"{peer[0]}:{peer[1]}",
        "peer_ip": peer[0],
        "local": f"{local[0]}:{local[1]}",
        "request_line": request.request_line,
        "method": request.method,
        "path": request.target,
        "headers": {k.lower(): v for k, v in request.headers},
        "body_bytes": len(request.body),
    }
    return status, "application/json", (json.dumps(seen) + "\n").encode()


def render_http1_response(status: int, content_type: str, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True, slots=True)
class EchoConfig:
    http: tuple[int, ...] = ()
    tcp: tuple[int, ...] = ()
    discard: tuple[int, ...] = ()
    bind: str = "0.0.0.0"
    access_log: bool = True


def _addr(transport: asyncio.BaseTransport, key: str) -> tuple[str, int]:
    value = transport.get_extra_info(key)
    return (str(value[0]), int(value[1])) if value else ("", 0)


class _Http(asyncio.Protocol):
    """One HTTP connection: HTTP/1.1 until the bytes say HTTP/2 (preface or h2c upgrade)."""

    def __init__(self, identity: EchoIdentity, access_log: bool) -> None:
        self.identity = identity
        self.access_log = access_log
        self.transport: asyncio.Transport | None = None
        self.parser = Http1Parser()
        self.first = b""
        self.decided = False
        self.h2: _H2 | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _addr(transport, "peername")
        self.local = _addr(transport, "sockname")

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        if not self.decided:
            self.first += data
            if H2_PREFACE.startswith(self.first[: len(H2_PREFACE)]) and len(self.first) < len(H2_PREFACE):
                return
            self.decided = True
            data, self.first = self.first, b""
            if data.startswith(H2_PREFACE):
                assert self.transport is not None
                self.h2 = _H2(self, None)
                self.h2.data_received(data)
                return
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            self._send(render_http1_response(exc.status, "text/plain", f"{exc}\n".encode(), False))
            self._close()
            return
        for request in requests:
            if request.header("upgrade") == "h2c" and request.header("http2-settings") is not None:
                self._send(b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n")
                self.h2 = _H2(self, request)
                rest = bytes(self.parser.buffer)
                if rest:
                    self.h2.data_received(rest)
                return
            status, ctype, body = answer(self.identity, request, self.peer, self.local, "HTTP/1.1")
            self._log(request, status, "HTTP/1.1")
            self._send(render_http1_response(status, ctype, body, request.keep_alive))
            if not request.keep_alive:
                self._close()
                return

    def _log(self, request: HttpRequest, status: int, protocol: str) -> None:
        if self.access_log:
            log.info("%s %s %s %s -> %d", self.peer[0], request.method, request.target, protocol, status)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _H2:
    """HTTP/2 on a connection `_Http` handed over; responses respect flow control."""

    def __init__(self, owner: _Http, upgraded: HttpRequest | None) -> None:
        self.owner = owner
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.requests: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.pending: dict[int, memoryview] = {}
        if upgraded is not None:
            self.conn.initiate_upgrade_connection((upgraded.header("http2-settings") or "").encode())
            headers = [
                (":method", upgraded.method),
                (":path", upgraded.target),
                (":authority", upgraded.header("host") or ""),
                *(
                    (k.lower(), v)
                    for k, v in upgraded.headers
                    if k.lower() not in ("upgrade", "http2-settings", "connection", "host")
                ),
            ]
            self.requests[1] = (headers, bytearray(upgraded.body))
            self._respond(1)
        else:
            self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.owner._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = [(str(k), str(v)) for k, v in event.headers or []]
                self.requests[event.stream_id or 0] = (headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                entry = self.requests.get(event.stream_id or 0)
                if entry is not None:
                    entry[1].extend(event.data or b"")
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond(event.stream_id or 0)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id or 0, None)
                self.pending.pop(event.stream_id or 0, None)
            elif isinstance(event, h2.events.WindowUpdated):
                self._drain()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self.owner._close()
                return
        self._flush()

    def _respond(self, stream_id: int) -> None:
        headers, body = self.requests.pop(stream_id, ([], bytearray()))
        pseudo = dict(h for h in headers if h[0].startswith(":"))
        request = HttpRequest(
            pseudo.get(":method", "GET"),
            pseudo.get(":path", "/"),
            "HTTP/2",
            tuple(headers),
            bytes(body),
        )
        status, ctype, payload = answer(
            self.owner.identity, request, self.owner.peer, self.owner.local, "HTTP/2"
        )
        self.owner._log(request, status, "HTTP/2")
        self.conn.send_headers(
            stream_id,
            [(":status", str(status)), ("content-type", ctype), ("content-length", str(len(payload)))],
        )
        self.pending[stream_id] = memoryview(payload)
        self._drain()

    def _drain(self) -> None:
        for stream_id, pending in list(self.pending.items()):
            data = pending
            while True:
                window = min(
                    self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
                )
                if len(data) <= window:
                    self.conn.send_data(stream_id, bytes(data), end_stream=True)
                    del self.pending[stream_id]
                    break
                if window <= 0:
                    self.pending[stream_id] = data
                    break
                self.conn.send_data(stream_id, bytes(data[:window]))
                data = data[window:]

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.owner._send(out)


class _TcpEcho(asyncio.Protocol):
    def __init__(self, identity: EchoIdentity) -> None:
        self.identity = identity
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer, local = _addr(transport, "peername"), _addr(transport, "sockname")
        hello = {
            "pod": self.identity.pod,
            "namespace": self.identity.namespace,
            "node": self.identity.node,
            "protocol": "tcp",
            "peer": f"{peer[0]}:{peer[1]}",
            "peer_ip": peer[0],
            "local": f"{local[0]}:{local[1]}",
        }
        transport.write((json.dumps(hello) + "\n").encode())

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        return False


class _Discard(asyncio.BufferedProtocol):
    """RFC 863 discard into a preallocated buffer (no allocation per read), count at EOF."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.count += nbytes

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            self.transport.write((json.dumps({"bytes": self.count}) + "\n").encode())
        return False


async def serve(config: EchoConfig, identity: EchoIdentity, stop: asyncio.Event) -> None:
    """Listen on every configured port until `stop` is set."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for port in config.http:
        servers.append(
            await loop.create_server(lambda: _Http(identity, config.access_log), config.bind, port)
        )
    for port in config.tcp:
        servers.append(await loop.create_server(lambda: _TcpEcho(identity), config.bind, port))
    for port in config.discard:
        servers.append(await loop.create_server(_Discard, config.bind, port))
    where = f"{identity.namespace}/{identity.pod}" if identity.namespace else identity.pod
    log.info(
        "echo in %s listening: http %s, tcp %s, discard %s",
        where,
        list(config.http),
        list(config.tcp),
        list(config.discard),
    )
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        log.info("echo in %s stopping", where)


def run(config: EchoConfig, identity: EchoIdentity | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit 0."""
    if not (config.http or config.tcp or config.discard):
        raise ValueError("give at least one of --http, --tcp, --discard")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, identity or EchoIdentity.from_env(), stop)

    asyncio.run(main())
    return 0


def ports(values: Sequence[str] | None) -> tuple[int, ...]:
    """`--http 8080 --http 8081,8082` -> (8080, 8081, 8082)."""
    out: list[int] = []
    for value in values or ():
        out.extend(int(v) for v in value.split(",") if v)
    return tuple(out)
