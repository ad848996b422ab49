"""The waypoint's asyncio shell: HBONE in on `podIP:15008`, HTTP per request, HBONE out.

Execution only; every decision is in `decide.py` (CONNECT, request verdicts, with
`jwt_authn.py` for tokens) and `http.py` (the HTTP/1.1 exchange). The pieces are the node
proxy's, reused rather than copied:
- in: an `HboneTunnel` around `HboneServer` per TLS connection, presenting the waypoint's SVID
  (`CredentialStore.server_context`) and requiring a client certificate in the trust domain
  (`verify_client_identity`); each CONNECT stream that `decide_connect` accepts gets a
  `_Session` (answered 200 at once, as Envoy's `connect_terminate` listener does; the policy
  answer is per request, in HTTP);
- per request, Envoy's LEAST_REQUEST balancing (`balance.least_request`, two random choices by
  requests in flight per endpoint) picks the endpoint among the CONNECT's allowed ones; the
  request's policy decision and flow record are that endpoint's;
- out: the waypoint's own `HbonePool` (client certificate = the waypoint's SVID; the server must
  prove the endpoint's identity, `verify_server_identity`), one CONNECT stream per upstream
  HTTP/1.1 connection, `:authority = podIP:targetPort`, `forwarded: for="<client>";host=<service>`
  so that the destination's node proxy can evaluate the original client's network policies (see
  `nodeproxy.inbound`). Upstream connections are pooled per endpoint (`UpstreamKey`): a request
  takes an idle one or opens one, and gives it back when its exchange left it keep-alive
  (`ReleaseUpstream`); an idle one is closed after `upstream_idle_timeout` (60 s), on a
  policy/world change and when the waypoint stops.

Invariants: every task is owned (`TaskSet`); a session ends when the client's stream ends both
ways or is reset, and then closes the upstream its request was using; an upstream connection
serves one request at a time and is counted active for its endpoint exactly while it does; a
request's flow record is written exactly once (`RequestDone`). Bytes read from a stream are
acknowledged at once (HTTP/2 flow control still bounds what the peer may send); a slow reader is
not pushed back on beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence

from nodemesh.model.world import Waypoint, Workload, World
from nodemesh.nodeproxy.inbound import server_tunnel
from nodemesh.nodeproxy.outbound import baggage_for
from nodemesh.nodeproxy.pool import HbonePool, PoolKey
from nodemesh.nodeproxy.runtime import TaskSet
from nodemesh.nodeproxy.tls import CredentialStore, IdentityError, trust_domain_of
from nodemesh.nodeproxy.tunnel import HboneTunnel, TunnelClosedError
from nodemesh.observe.flow import Flow
from nodemesh.policy.engine import PolicyEngine
from nodemesh.protocols import (
    ErrorCode,
    HboneSettings,
    LocalProtocolError,
    RequestReceived,
    connect_headers,
)
from nodemesh.protocols.events import Headers
from nodemesh.waypoint.balance import least_request
from nodemesh.waypoint.decide import (
    ConnectPlan,
    RequestVerdict,
    WaypointConnect,
    decide_connect,
    decide_http,
    upstream_identity,
)
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
from nodemesh.waypoint.jwt_authn import JwtPolicies
from nodemesh.waypoint.observe import SessionInfo, connect_flow, request_flow

__all__ = ["WaypointProxy"]

log = logging.getLogger(__name__)

FlowSink = Callable[[Flow], None]

UPSTREAM_IDLE_TIMEOUT = 60.0
"""Seconds an idle upstream HTTP/1.1 connection is kept for reuse."""


UpstreamKey = tuple[PoolKey, str, str, int, str | None]
"""An upstream connection's identity: the pool key (waypoint SVID, endpoint identity, endpoint
`podIP:15008`), `:authority` (`podIP:targetPort`), and what its CONNECT's `forwarded` header
names (client address and port, Service host): only requests that would send the same CONNECT
share a connection, so the destination's node proxy always sees the right original client."""


class _Upstream:
    """One upstream HTTP/1.1 connection to an endpoint: a CONNECT stream to its node proxy.

    Serves one request at a time (`session` set), or waits in its endpoint's idle list
    (`session` None); bytes or an end from the endpoint while idle retire it."""

    def __init__(self, proxy: WaypointProxy, key: UpstreamKey, endpoint: str) -> None:
        self.proxy = proxy
        self.key = key
        self.endpoint = endpoint
        self.generation = proxy.generation
        self.session: _Session | None = None
        self.tunnel: HboneTunnel | None = None
        self.stream_id = 0
        self.identity: str | None = None
        """The endpoint's verified SPIFFE id, once its node proxy answered."""
        self.ready = False
        self.done = False
        self.counted = False
        """It holds one of its endpoint's active requests."""
        self.idle_timer: asyncio.TimerHandle | None = None
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        if not (self.ready and self.tunnel is not None):
            self.pending.append(data)
            return
        try:
            self.tunnel.send_data(self.stream_id, data)
        except LocalProtocolError as exc:  # the stream went away meanwhile
            self.fail(str(exc))

    def close(self) -> None:
        """We are done with the stream (its exchange is over, or it failed)."""
        self.done = True
        self.pending.clear()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.tunnel is not None and self.stream_id and not self.tunnel.closed:
            with contextlib.suppress(LocalProtocolError):
                self.tunnel.reset(self.stream_id, ErrorCode.CANCEL)

    def fail(self, reason: str) -> None:
        if self.session is not None:
            self.session.upstream_failed(self, reason)
        else:
            self.proxy.discard_upstream(self)

    # ---- StreamHandler ---------------------------------------------------------------------
    def stream_response(self, status: int, headers: Headers) -> None:
        if self.done:
            return
        if status != 200:
            self.fail(f"remote refused the tunnel (HBONE {status})")
            return
        assert self.tunnel is not None
        self.ready = True
        self.identity = self.tunnel.peer_identity
        pending, self.pending = self.pending, []
        for data in pending:
            self.send(data)

    def stream_data(self, data: bytes) -> None:
        assert self.tunnel is not None
        self.tunnel.acknowledge(self.stream_id, len(data))
        if self.done:
            return
        if self.session is None:  # bytes with no request outstanding: not reusable
            self.proxy.discard_upstream(self)
            return
        self.session.apply(self.session.core.upstream_data(data, time.time()))

    def stream_end(self) -> None:
        if self.done:
            return
        if self.session is None:
            self.proxy.discard_upstream(self)
            return
        self.session.apply(self.session.core.upstream_data(b"", time.time()))

    def stream_reset(self, code: int) -> None:
        if not self.done:
            self.done = True
            self.fail(f"stream reset ({ErrorCode.of(code)!s})")

    def stream_writable(self) -> None:
        return None

    def tunnel_paused(self, paused: bool) -> None:
        return None


class _Session:
    """One client CONNECT stream: its HTTP exchange, and the upstream its current request uses."""

    def __init__(
        self,
        proxy: WaypointProxy,
        tunnel: HboneTunnel,
        stream_id: int,
        connect: WaypointConnect,
        plan: ConnectPlan,
    ) -> None:
        self.proxy = proxy
        self.tunnel = tunnel
        self.stream_id = stream_id
        self.connect = connect
        self.plan = plan
        self.request_plan = plan
        """The current request's plan: `plan` sent to the endpoint balancing chose for it."""
        self.core = HttpExchange(self._decide)
        self.upstream: _Upstream | None = None
        self.sent_end = False
        self.got_end = False
        self.finished = False

    def _decide(self, method: str, target: str, headers: list[tuple[str, str]]) -> RequestVerdict:
        proxy = self.proxy
        self.request_plan = proxy.balance(self.plan)
        return decide_http(
            self.request_plan, method, target, headers, engine=proxy.engine, jwt=proxy.jwt, now=time.time()
        )

    # ---- the client's stream (StreamHandler) -----------------------------------------------
    def stream_response(self, status: int, headers: Headers) -> None:
        return None

    def stream_data(self, data: bytes) -> None:
        self.tunnel.acknowledge(self.stream_id, len(data))
        self.apply(self.core.downstream_data(data, time.time()))

    def stream_end(self) -> None:
        self.got_end = True
        self.apply(self.core.downstream_data(b"", time.time()))
        self._maybe_release()

    def stream_reset(self, code: int) -> None:
        self.got_end = self.sent_end = True
        self.apply(self.core.abort(f"client stream reset ({ErrorCode.of(code)!s})", time.time()))
        self._finish()

    def stream_writable(self) -> None:
        return None

    def tunnel_paused(self, paused: bool) -> None:
        return None

    # ---- actions ---------------------------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendDownstream):
                if not self.sent_end and not self.tunnel.closed:
                    with contextlib.suppress(LocalProtocolError):  # the client's stream is gone
                        self.tunnel.send_data(self.stream_id, action.data)
            elif isinstance(action, SendUpstream):
                if self.upstream is None:
                    self.upstream = self.proxy.checkout_upstream(self, self.request_plan)
                self.upstream.send(action.data)
            elif isinstance(action, ReleaseUpstream):
                if self.upstream is not None:
                    self.proxy.release_upstream(self.upstream)
                    self.upstream = None
            elif isinstance(action, CloseUpstream):
                if self.upstream is not None:
                    self.proxy.discard_upstream(self.upstream)
                    self.upstream = None
            elif isinstance(action, CloseDownstream):
                if not self.sent_end:
                    self.sent_end = True
                    self.tunnel.end_stream(self.stream_id)
                self._maybe_release()
            elif isinstance(action, RequestDone):
                identity = self.upstream.identity if self.upstream is not None else None
                info = SessionInfo(self.connect, self.request_plan, identity)
                self.proxy.record(request_flow(action.exchange, info, self.proxy.world, self.proxy.node))

    def upstream_failed(self, upstream: _Upstream, reason: str) -> None:
        if upstream is self.upstream:
            self.upstream = None
            self.proxy.discard_upstream(upstream)
            self.apply(self.core.upstream_failed(reason, time.time()))

    # ---- end -------------------------------------------------------------------------------
    def _maybe_release(self) -> None:
        if self.sent_end and self.got_end:
            self.tunnel.release(self.stream_id)
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.upstream is not None:
            self.proxy.discard_upstream(self.upstream)
            self.upstream = None
        self.proxy.sessions.discard(self)


class WaypointProxy:
    """One waypoint's 15008 listener and its sessions (see the module doc)."""

    def __init__(
        self,
        *,
        waypoint: Waypoint,
        pod: Workload,
        identity: str,
        engine: PolicyEngine,
        credentials: CredentialStore,
        pool: HbonePool,
        record: FlowSink,
        node: str,
        tasks: TaskSet,
        rng: random.Random | None = None,
        settings: HboneSettings | None = None,
        handshake_timeout: float = 10.0,
        jwt: JwtPolicies | None = None,
        upstream_idle_timeout: float = UPSTREAM_IDLE_TIMEOUT,
    ) -> None:
        self.waypoint = waypoint
        self.pod = pod
        self.identity = identity
        self.trust_domain = trust_domain_of(identity)
        self.engine = engine
        self.jwt = jwt if jwt is not None else JwtPolicies(engine.world)
        self.credentials = credentials
        self.pool = pool
        self.record = record
        self.node = node
        self.tasks = tasks
        self.rng = rng or random.Random()
        self.settings = settings or HboneSettings.server()
        self.handshake_timeout = handshake_timeout
        self.baggage = baggage_for(engine.world, pod)
        self.tunnels: set[HboneTunnel] = set()
        self.sessions: set[_Session] = set()
        self.connects = 0
        self.upstream_idle_timeout = upstream_idle_timeout
        self.generation = 0
        """Bumped on every policy/world change: older upstream connections are not reused."""
        self.active: dict[str, int] = {}
        """Requests in flight per endpoint (pod key), for least-request balancing."""
        self.idle: dict[UpstreamKey, list[_Upstream]] = {}
        self._server: asyncio.Server | None = None

    @property
    def world(self) -> World:
        return self.engine.world

    def update_policy(self, engine: PolicyEngine, jwt: JwtPolicies | None = None) -> None:
        """New policies for the next request of every connection (requests are decided one by
        one, so nothing live needs closing: a request in flight finishes under its verdict).
        Idle upstream connections are closed, and busy ones are not reused after their request:
        endpoints and identities may have changed."""
        self.engine = engine
        self.jwt = jwt if jwt is not None else JwtPolicies(engine.world)
        self.generation += 1
        self._close_idle()

    def update_jwks(self, jwt: JwtPolicies) -> None:
        """Key sets fetched from `jwksUri`s, for the current policies."""
        self.jwt = jwt

    def _pick(self, endpoints: Sequence[Workload]) -> Workload:
        return endpoints[self.rng.randrange(len(endpoints))]

    # ---- upstream connections ----------------------------------------------------------------
    def balance(self, plan: ConnectPlan) -> ConnectPlan:
        """One request's plan: Envoy's LEAST_REQUEST (P2C) over the connection's endpoints."""
        if len(plan.endpoints) < 2:
            return plan
        chosen = least_request(plan.endpoints, lambda w: self.active.get(w.key, 0), self.rng.randrange)
        return plan.to_endpoint(chosen)

    def _upstream_key(self, connect: WaypointConnect, plan: ConnectPlan) -> UpstreamKey:
        assert plan.target is not None
        ip, port = plan.upstream
        pool_key = PoolKey(self.identity, upstream_identity(self.world, plan.target), (str(ip), port))
        host = plan.service.hostname if plan.service is not None else None
        return pool_key, plan.upstream_authority, str(connect.peer[0]), connect.peer[1], host

    def checkout_upstream(self, session: _Session, plan: ConnectPlan) -> _Upstream:
        """An idle connection to the request's endpoint, or a new one (opening in the background);
        it counts as one active request of the endpoint until released or discarded."""
        assert plan.target is not None
        key = self._upstream_key(session.connect, plan)
        idle = self.idle.get(key, [])
        upstream = None
        while idle and upstream is None:
            candidate = idle.pop()
            if candidate.idle_timer is not None:
                candidate.idle_timer.cancel()
                candidate.idle_timer = None
            if candidate.done or candidate.tunnel is None or candidate.tunnel.closed:
                candidate.close()
            else:
                upstream = candidate
        if not idle:
            self.idle.pop(key, None)
        if upstream is None:
            upstream = _Upstream(self, key, plan.target.key)
            self.tasks.spawn(self._open(upstream, session.connect, plan), name=f"upstream-{plan.target.key}")
        upstream.session = session
        upstream.counted = True
        self.active[upstream.endpoint] = self.active.get(upstream.endpoint, 0) + 1
        return upstream

    def _uncount(self, upstream: _Upstream) -> None:
        if upstream.counted:
            upstream.counted = False
            left = self.active.get(upstream.endpoint, 0) - 1
            if left > 0:
                self.active[upstream.endpoint] = left
            else:
                self.active.pop(upstream.endpoint, None)

    def release_upstream(self, upstream: _Upstream) -> None:
        """Its request is complete and HTTP/1.1 lets it go on: keep it idle for the endpoint's
        next request, for `upstream_idle_timeout` seconds (unless the world changed meanwhile)."""
        self._uncount(upstream)
        upstream.session = None
        stale = upstream.generation != self.generation or self._server is None
        if upstream.done or stale or upstream.tunnel is None or upstream.tunnel.closed:
            upstream.close()
            return
        self.idle.setdefault(upstream.key, []).append(upstream)
        loop = asyncio.get_running_loop()
        upstream.idle_timer = loop.call_later(self.upstream_idle_timeout, self.discard_upstream, upstream)

    def discard_upstream(self, upstream: _Upstream) -> None:
        """Close it (its response said close, it failed, it idled out, or it is stale)."""
        self._uncount(upstream)
        upstream.session = None
        idle = self.idle.get(upstream.key)
        if idle is not None and upstream in idle:
            idle.remove(upstream)
            if not idle:
                del self.idle[upstream.key]
        upstream.close()

    def _close_idle(self) -> None:
        for idle in list(self.idle.values()):
            for upstream in list(idle):
                self.discard_upstream(upstream)
        self.idle.clear()

    async def _open(self, upstream: _Upstream, connect: WaypointConnect, plan: ConnectPlan) -> None:
        pool_key, authority, _, _, host = upstream.key
        headers = connect_headers(
            self.baggage,
            client_ip=connect.peer[0],
            client_port=connect.peer[1],
            service_host=host,
            trace_id=self.rng.getrandbits(128) | 1,
            parent_id=self.rng.getrandbits(64) | 1,
        )
        try:
            tunnel = await self.pool.checkout(pool_key)
            if upstream.done:
                return
            upstream.tunnel = tunnel
            upstream.stream_id = self.pool.open_stream(tunnel, authority, headers, upstream)
        except (IdentityError, OSError, ssl.SSLError, TimeoutError, TunnelClosedError) as exc:
            upstream.fail(f"connection failure: {exc or repr(exc)}")

    async def start(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ctx = self.credentials.server_context(self.identity)
        self._server = await loop.create_server(
            self._new_tunnel, sock=listener, ssl=ctx, ssl_handshake_timeout=self.handshake_timeout
        )

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting; let sessions finish for `grace` seconds; then close every connection."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._close_idle()
        for tunnel in list(self.tunnels):
            tunnel.close()
        self.pool.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            self._server = None

    def _new_tunnel(self) -> HboneTunnel:
        name = f"waypoint {self.waypoint.key}"
        return server_tunnel(self.settings, self.trust_domain, self._on_request, self.tunnels, name)

    def _on_request(self, tunnel: HboneTunnel, ev: RequestReceived) -> None:
        start = time.time()
        assert tunnel.peer_address is not None and tunnel.peer_identity is not None
        self.connects += 1
        peer = (ipaddress.ip_address(tunnel.peer_address[0]), int(tunnel.peer_address[1]))
        connect = WaypointConnect(ev.method, ev.authority, peer, tunnel.peer_identity)
        plan = decide_connect(connect, self.waypoint, self.engine, self._pick)
        if not plan.allowed:
            tunnel.respond(ev.stream_id, plan.status, end_stream=True)
            log.info(
                "waypoint %s: refused CONNECT %s from %s: %s",
                self.waypoint.key,
                ev.authority,
                peer,
                plan.reason,
            )
            self.record(connect_flow(connect, plan, self.world, self.node, start=start, end=time.time()))
            return
        session = _Session(self, tunnel, ev.stream_id, connect, plan)
        self.sessions.add(session)
        tunnel.attach(ev.stream_id, session)
        tunnel.respond(ev.stream_id, 200)
