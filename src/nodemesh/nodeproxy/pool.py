"""The HBONE connection pool: many CONNECT streams over few mTLS connections.

Upstream (reference §1.5; ZT:src/proxy/pool.rs): a pool key is (source identity, destination
identity, destination address) — the next hop, `podIP:15008` or `waypointIP:15008`. ztunnel
also keys the source IP; here a pool belongs to one source pod (in-pod mode: "every workload has
its own pool"), so its source address is fixed: the pod's socket factory creates the socket in
the pod's namespace, and `source_ip` binds it to the pod's address (the peer address the
destination sees, and keys its NetworkPolicy and transparent source on).

Invariants
- A key has 0..N connections; a stream goes on the first usable connection with a free slot
  (fewer than `max_streams_per_connection`, default 100, and the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS); only when every connection is full is a new one opened.
- At most one connection per key is being opened at a time (a per-key lock, like pingora's):
  a burst of first requests shares the handshake instead of making one each.
- A connection with no streams is closed (GOAWAY) after `idle_timeout` (5 min,
  POOL_UNUSED_RELEASE_TIMEOUT); a new stream cancels that. `idle_timeout=0` closes it as soon as
  its last stream ends: no pooling, one handshake per application connection.
- A connection that received GOAWAY or closed is never handed out again, and leaves the pool.
- Only connections whose server proved the expected identity (certificate URI SAN equal to the
  key's destination identity) ever enter the pool.

New handshakes cost ~7 ms of CPU in Python's ssl (3x haproxy): `warm()` opens a connection before
the first request needs it, keeping the handshake off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

from nodemesh.capture.sockets import SocketFactory, bind_source
from nodemesh.nodeproxy.runtime import connect_socket
from nodemesh.nodeproxy.tls import CredentialStore, verify_server_identity
from nodemesh.nodeproxy.tunnel import HboneTunnel, StreamHandler
from nodemesh.protocols import HboneClient, HboneSettings
from nodemesh.protocols.events import Headers

__all__ = ["HbonePool", "PoolKey", "PoolSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Which connections a stream may share: same source identity (the client certificate),
    same expected server identity, same next hop."""

    src_identity: str
    dst_identity: str
    dst: tuple[str, int]

    def __str__(self) -> str:
        return f"{self.src_identity} -> {self.dst_identity}@{self.dst[0]}:{self.dst[1]}"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_streams_per_connection: int = 100
    """POOL_MAX_STREAMS_PER_CONNECTION."""
    idle_timeout: float = 300.0
    """POOL_UNUSED_RELEASE_TIMEOUT, seconds; 0 disables pooling."""
    connect_timeout: float = 10.0
    """TCP connect plus TLS handshake, seconds."""
    hbone: HboneSettings = field(default_factory=HboneSettings.client)


class HbonePool:
    """HBONE connections of one source pod, keyed by `PoolKey`."""

    def __init__(
        self,
        credentials: CredentialStore,
        sockets: SocketFactory,
        settings: PoolSettings | None = None,
        name: str = "pool",
        source_ip: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.source_ip = source_ip
        self.sockets = sockets
        self.settings = settings or PoolSettings()
        self.name = name
        self._conns: dict[PoolKey, list[HboneTunnel]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._idle: dict[HboneTunnel, asyncio.TimerHandle] = {}
        self._keys: dict[HboneTunnel, PoolKey] = {}
        self.connections_opened = 0
        self._closed = False

    # ---- queries ---------------------------------------------------------------------------
    def connections(self, key: PoolKey | None = None) -> list[HboneTunnel]:
        if key is not None:
            return list(self._conns.get(key, ()))
        return [t for conns in self._conns.values() for t in conns]

    def _pick(self, key: PoolKey) -> HboneTunnel | None:
        limit = self.settings.max_streams_per_connection
        for tunnel in self._conns.get(key, ()):
            if tunnel.available_streams(limit) > 0:
                return tunnel
        return None

    # ---- use -------------------------------------------------------------------------------
    async def checkout(self, key: PoolKey) -> HboneTunnel:
        """A verified connection for `key` with a free stream slot (opening one if needed)."""
        tunnel = self._pick(key)
        if tunnel is not None:
            return tunnel
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            tunnel = self._pick(key)
            if tunnel is None:
                tunnel = await self._connect(key)
            return tunnel

    def open_stream(
        self, tunnel: HboneTunnel, authority: str, headers: Headers, handler: StreamHandler
    ) -> int:
        """Open a CONNECT stream on a tunnel obtained from `checkout` (no await in between)."""
        idle = self._idle.pop(tunnel, None)
        if idle is not None:
            idle.cancel()
        return tunnel.open_stream(authority, headers, handler)

    async def warm(self, key: PoolKey) -> None:
        """Make sure `key` has a usable connection, without opening a stream."""
        tunnel = await self.checkout(key)
        if not tunnel.handlers:
            self._on_idle(tunnel)

    async def _connect(self, key: PoolKey) -> HboneTunnel:
        if self._closed:
            raise ConnectionError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        ctx = self.credentials.client_context(key.src_identity)
        family = socket.AF_INET6 if ":" in key.dst[0] else socket.AF_INET
        sock = self.sockets.new_tcp(family)
        expected = frozenset({key.dst_identity})

        def verify(ssl_object: object) -> str:
            return verify_server_identity(ssl_object, expected)  # type: ignore[arg-type]

        def factory() -> HboneTunnel:
            return HboneTunnel(
                HboneClient(self.settings.hbone),
                verify=verify,
                on_closed=self._on_closed,
                on_idle=self._on_idle,
                name=f"hbone-out {key}",
            )

        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.source_ip is not None:
                    bind_source(sock, self.source_ip)
                await connect_socket(sock, key.dst)
                _, tunnel = await loop.create_connection(
                    factory,
                    sock=sock,
                    ssl=ctx,
                    server_hostname="",
                    ssl_handshake_timeout=self.settings.connect_timeout,
                )
                await tunnel.ready
        except BaseException:
            sock.close()
            raise
        self.connections_opened += 1
        self._conns.setdefault(key, []).append(tunnel)
        self._keys[tunnel] = key
        return tunnel

    # ---- lifecycle -------------------------------------------------------------------------
    def _on_idle(self, tunnel: HboneTunnel) -> None:
        if tunnel.closed or tunnel not in self._keys:
            return
        timeout = self.settings.idle_timeout
        if timeout <= 0:
            self._evict(tunnel)
            return
        old = self._idle.pop(tunnel, None)
        if old is not None:
            old.cancel()
        self._idle[tunnel] = asyncio.get_running_loop().call_later(timeout, self._evict, tunnel)

    def _evict(self, tunnel: HboneTunnel) -> None:
        self._idle.pop(tunnel, None)
        if not tunnel.handlers:
            self._forget(tunnel)
            tunnel.close()

    def _on_closed(self, tunnel: HboneTunnel) -> None:
        self._forget(tunnel)

    def _forget(self, tunnel: HboneTunnel) -> None:
        timer = self._idle.pop(tunnel, None)
        if timer is not None:
            timer.cancel()
        key = self._keys.pop(tunnel, None)
        if key is None:
            return
        conns = self._conns.get(key)
        if conns is not None and tunnel in conns:
            conns.remove(tunnel)
            if not conns:
                del self._conns[key]
                self._locks.pop(key, None)

    def close(self) -> None:
        """GOAWAY on every connection; streams in flight are reset."""
        self._closed = True
        for tunnel in self.connections():
            self._forget(tunnel)
            tunnel.close()
