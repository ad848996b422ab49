"""Inbound: the pod's 15008 HBONE server and its 15006 plaintext listener.

Decisions (pure, `decide_inbound` / `decide_plaintext`), after ztunnel's `build_inbound_request`,
`validate_destination` and `assert_rbac` (reference §1.3, §1.7; ZT:src/proxy/inbound.rs):
- 400 when the method is not CONNECT, the `:authority` is not `ip:port`, or its IP is not the
  address the 15008 connection arrived on (this pod) — "ip mismatch"; or it targets one of the
  proxy's own ports.
- RBAC with the destination's policies (the engine's destination point: Istio
  AuthorizationPolicy and PeerAuthentication projected to L4, Kubernetes NetworkPolicy and
  Cilium L3/L4 ingress). The source principal is the verified peer certificate's SAN and
  nothing else; the source pod (labels, namespace) is the one owning the connection's source
  address. The destination port is the target port from `:authority`, not 15008.
- From a waypoint (the peer's address is a waypoint's pod AND its certificate is that waypoint's
  SPIFFE id, ztunnel's `check_from_waypoint`): Istio policies see the waypoint's identity
  (reference §4.2: "the source identity it sees is the waypoint's SA"), and the flow's route
  names the waypoint; Kubernetes and Cilium rules see the original client, taken from the
  CONNECT's `forwarded: for=` (only trusted from a verified waypoint), with the Service from its
  `host=`: the engine's destination point as `nodemesh trace` evaluates it for such a flow.
- 401 on deny (the stream ends; the connection goes on serving other streams).
- On allow: connect to the app with the original client address as source (IP_TRANSPARENT),
  then 200; 503 if that connect fails. Never 200 before the upstream is up.
- 15006 (plaintext, captured with SO_ORIGINAL_DST) is the same RBAC with NO identity: a
  PeerAuthentication STRICT (a DENY for connections without a principal) refuses it.

Admitted connections are registered in the `ConnectionRegistry`; `update_policy(engine)`
re-evaluates them and closes those no longer allowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from nodemesh.capture.sockets import SocketFactory
from nodemesh.model.world import ServiceInfo, Workload, World
from nodemesh.nodeproxy.flow import ConnectionRecord, Direction, FlowSink, FlowVerdict, SecurityPolicy
from nodemesh.nodeproxy.outbound import HBONE_PORT, ILLEGAL_PORTS, refuse
from nodemesh.nodeproxy.registry import ConnectionRegistry, TrackedConnection
from nodemesh.nodeproxy.relay import StreamRelay, TcpRelay
from nodemesh.nodeproxy.runtime import TaskSet, connect_socket, ip_of
from nodemesh.nodeproxy.socket_factory import OriginalDestination
from nodemesh.nodeproxy.tls import (
    CredentialStore,
    identity_uri,
    principal_of,
    trust_domain_of,
    verify_client_identity,
)
from nodemesh.nodeproxy.tunnel import HboneTunnel, RequestHandler
from nodemesh.policy.decision import Decision
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import Endpoint, FlowContext
from nodemesh.protocols import (
    ErrorCode,
    HboneServer,
    HboneSettings,
    RequestReceived,
    connect_target,
    format_authority,
)
from nodemesh.protocols.connect import parse_forwarded
from nodemesh.waypoint.deployment import waypoint_of

__all__ = [
    "InboundPlan",
    "InboundProxy",
    "InboundRequest",
    "decide_inbound",
    "decide_plaintext",
    "server_tunnel",
    "source_endpoint",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NO_POLICY_ALLOWED = "allow policies exist, but none allowed"


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A CONNECT as the 15008 server received it, with what the connection proved."""

    method: str
    authority: str
    local_ip: IPAddress
    """The address the HBONE connection arrived on (this pod's IP)."""
    peer: tuple[IPAddress, int]
    """The HBONE connection's source: the client pod (or its waypoint)."""
    peer_identity: str | None
    """The verified certificate's SPIFFE id; None for plaintext."""
    forwarded: str | None = None
    """The CONNECT's `forwarded` header (trusted only when the peer is a waypoint)."""


@dataclass(frozen=True, slots=True)
class InboundPlan:
    """200 and an upstream to dial, or a refusal status with its reason."""

    status: int
    reason: str
    upstream: tuple[IPAddress, int] | None = None
    source_ip: IPAddress | None = None
    ctx: FlowContext | None = None
    route: Route | None = None
    decision: Decision | None = None
    src_workload: Workload | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def response_flag(self) -> str:
        return {200: "-", 401: "DENY", 503: "CONNECT"}.get(self.status, "CONNECT")


def source_endpoint(
    world: World, peer_ip: IPAddress, identity: str | None
) -> tuple[Endpoint, Workload | None]:
    """The source endpoint: the pod owning `peer_ip` (for its labels), with the principal of the
    verified certificate only (None for plaintext)."""
    workload = world.workload_by_ip(peer_ip)
    base = world.endpoint(workload, mtls=False) if workload is not None else world.external_endpoint(peer_ip)
    principal = principal_of(identity) if identity else None
    # key="" makes the endpoint recompute its cache key from the new principal
    return dataclasses.replace(base, principal=principal, ip=peer_ip, key=""), workload


def _behind_waypoint(
    world: World, forwarded: str | None
) -> tuple[Endpoint, Workload, ServiceInfo | None] | None:
    """The original client (and Service) a waypoint names in `forwarded`, if it names a pod."""
    client, host = parse_forwarded(forwarded) if forwarded else (None, None)
    workload = world.workload_by_ip(client) if client is not None else None
    if client is None or workload is None:
        return None
    name, _, rest = (host or "").partition(".")
    service = world.services.get((rest.split(".", 1)[0], name)) if rest else None
    return dataclasses.replace(world.endpoint(workload, mtls=False), ip=client, key=""), workload, service


def _authorize(
    engine: PolicyEngine,
    pod: Workload,
    peer_ip: IPAddress,
    identity: str | None,
    port: int,
    *,
    forwarded: str | None = None,
) -> InboundPlan:
    world = engine.world
    src, src_workload = source_endpoint(world, peer_ip, identity)
    route = Route(src_workload=src_workload, dst_workload=pod)
    waypoint = waypoint_of(world, src_workload) if src_workload is not None else None
    if waypoint is not None and identity == identity_uri(engine.waypoint_endpoint(waypoint).principal or ""):
        original = _behind_waypoint(world, forwarded)
        if original is not None:
            src, src_workload, service = original
            route = Route(src_workload=src_workload, dst_workload=pod, service=service, waypoint=waypoint)
        else:
            route = Route(src_workload=src_workload, dst_workload=pod, waypoint=waypoint)
    ctx = FlowContext(src, world.endpoint(pod), port)
    decision = engine.destination(ctx, route).decision
    assert pod.ip is not None
    common = {"ctx": ctx, "route": route, "decision": decision, "src_workload": src_workload}
    if not decision.allowed:
        return InboundPlan(401, decision.reason, **common)  # type: ignore[arg-type]
    return InboundPlan(
        200,
        decision.reason,
        upstream=(pod.ip, port),
        source_ip=peer_ip,
        **common,  # type: ignore[arg-type]
    )


def decide_inbound(req: InboundRequest, pod: Workload, engine: PolicyEngine) -> InboundPlan:
    """What the 15008 server answers a CONNECT, and where it then connects."""
    try:
        ip, port = connect_target(req.method, req.authority)
    except ValueError as exc:
        return InboundPlan(400, str(exc))
    if ip != req.local_ip or ip != pod.ip:
        return InboundPlan(400, f"ip mismatch: {ip} != {req.local_ip}")
    if port in ILLEGAL_PORTS:
        return InboundPlan(400, "attempted recursive call to ourselves")
    return _authorize(engine, pod, req.peer[0], req.peer_identity, port, forwarded=req.forwarded)


def decide_plaintext(
    original_dst: tuple[IPAddress, int], peer: tuple[IPAddress, int], pod: Workload, engine: PolicyEngine
) -> InboundPlan:
    """A captured plaintext connection (15006): RBAC with no identity."""
    ip, port = original_dst
    if ip != pod.ip:
        return InboundPlan(400, f"ip mismatch: {ip} != {pod.ip}")
    if port in ILLEGAL_PORTS:
        return InboundPlan(400, "attempted recursive call to ourselves")
    return _authorize(engine, pod, peer[0], None, port)


def server_tunnel(
    settings: HboneSettings,
    trust_domain: str,
    on_request: RequestHandler,
    tunnels: set[HboneTunnel],
    name: str,
) -> HboneTunnel:
    """The server end of one HBONE connection (an asyncio protocol factory's product): the
    client must prove a SPIFFE id in `trust_domain` (reference §1.2); kept in `tunnels` while
    it lives. The node proxy's 15008 listeners and the waypoint's use it."""

    def verify(ssl_object: object) -> str:
        return verify_client_identity(ssl_object, trust_domain)  # type: ignore[arg-type]

    tunnel = HboneTunnel(
        HboneServer(settings), verify=verify, on_request=on_request, on_closed=tunnels.discard, name=name
    )
    tunnels.add(tunnel)
    return tunnel


class _InboundRelay(StreamRelay):
    """The inbound relay answers the CONNECT with 200 the moment the application connection
    exists, in `connection_made`, before any byte the application sends can be relayed: a
    server-first application (SMTP, a database greeting) writes at once, and DATA must not
    precede the response HEADERS on the stream. ztunnel likewise sends 200 after the upstream
    connect and before it starts copying (reference §1.7)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.reset_code is None:
            self.tunnel.respond(self.stream_id, 200)
        super().connection_made(transport)


@dataclass(slots=True)
class _Outcome:
    """The plan a live connection is recorded under: the admission, or what later closed it."""

    plan: InboundPlan

    def revoke(self, decision: Decision) -> None:
        self.plan = dataclasses.replace(self.plan, status=401, decision=decision, reason=decision.reason)

    def fail(self, reason: str) -> None:
        self.plan = dataclasses.replace(self.plan, status=503, reason=reason)


class InboundProxy:
    """The inbound listeners of one pod, served from the node proxy's event loop."""

    def __init__(
        self,
        *,
        pod: Workload,
        identity: str,
        engine: PolicyEngine,
        credentials: CredentialStore,
        sockets: SocketFactory,
        sink: FlowSink,
        tasks: TaskSet,
        registry: ConnectionRegistry | None = None,
        original_destination: OriginalDestination | None = None,
        transparent: bool = True,
        connect_timeout: float = 10.0,
        settings: HboneSettings | None = None,
    ) -> None:
        if pod.ip is None:
            raise ValueError(f"pod {pod.namespace}/{pod.pod} has no IP")
        self.pod = pod
        self.identity = identity
        self.trust_domain = trust_domain_of(identity)
        self.engine = engine
        self.credentials = credentials
        self.sockets = sockets
        self.sink = sink
        self.tasks = tasks
        self.registry = registry or ConnectionRegistry()
        self.original_destination = original_destination
        self.transparent = transparent
        self.connect_timeout = connect_timeout
        self.settings = settings or HboneSettings.server()
        self.tunnels: set[HboneTunnel] = set()
        self._servers: list[asyncio.Server] = []

    # ---- lifecycle -------------------------------------------------------------------------
    async def start_hbone(self, listener: socket.socket | None = None) -> asyncio.Server:
        """Serve HBONE on `listener` (default: a new socket on podIP:15008)."""
        loop = asyncio.get_running_loop()
        sock = listener or self.sockets.tcp_bind(HBONE_PORT, str(self.pod.ip))
        ctx = self.credentials.server_context(self.identity)
        server = await loop.create_server(
            self._new_tunnel, sock=sock, ssl=ctx, ssl_handshake_timeout=self.connect_timeout
        )
        self._servers.append(server)
        return server

    async def serve_plaintext(self, listener: socket.socket) -> None:
        """Accept loop for 15006 (captured plaintext). Runs until cancelled."""
        if self.original_destination is None:
            raise ValueError("plaintext inbound needs an original-destination seam")
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        n = 0
        while True:
            sock, peer = await loop.sock_accept(listener)
            if self.tasks.closed:  # shutting down: stop accepting
                sock.close()
                return
            sock.setblocking(False)
            n += 1
            self.tasks.spawn(self._plaintext(sock, peer), name=f"inbound-plain-{n}")

    def update_policy(self, engine: PolicyEngine) -> int:
        """Adopt a new engine; close live connections it denies. Returns how many were closed."""
        self.engine = engine
        return len(self.registry.reevaluate(engine))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for tunnel in list(self.tunnels):
            tunnel.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # ---- HBONE -----------------------------------------------------------------------------
    def _new_tunnel(self) -> HboneTunnel:
        name = f"hbone-in {self.pod.namespace}/{self.pod.pod}"
        return server_tunnel(self.settings, self.trust_domain, self._on_request, self.tunnels, name)

    def _on_request(self, tunnel: HboneTunnel, ev: RequestReceived) -> None:
        start = time.time()
        assert tunnel.local_address is not None and tunnel.peer_address is not None
        peer = (ip_of(tunnel.peer_address[0]), int(tunnel.peer_address[1]))
        req = InboundRequest(
            ev.method,
            ev.authority,
            ip_of(tunnel.local_address[0]),
            peer,
            tunnel.peer_identity,
            next((v for k, v in ev.headers if k == "forwarded"), None),
        )
        plan = decide_inbound(req, self.pod, self.engine)
        if not plan.allowed:
            tunnel.respond(ev.stream_id, plan.status, end_stream=True)
            self._record(
                plan, peer, start, FlowVerdict.DROPPED, hbone=ev.authority, identity=req.peer_identity
            )
            return
        assert plan.ctx is not None and plan.route is not None
        outcome = _Outcome(plan)
        tracked: TrackedConnection | None = None

        def done(relay: StreamRelay) -> None:
            if tracked is not None:
                self.registry.unregister(tracked)
            final = outcome.plan
            connected = final.allowed and relay.transport is not None
            self._record(
                final,
                peer,
                start,
                FlowVerdict.FORWARDED if connected else FlowVerdict.DROPPED,
                hbone=ev.authority,
                identity=req.peer_identity,
                sent=relay.bytes_from_tunnel,
                received=relay.bytes_from_tcp,
                error=relay.error,
            )

        relay = _InboundRelay(tunnel, on_done=done)
        relay.stream_id = ev.stream_id
        tunnel.attach(ev.stream_id, relay)

        def revoke(decision: Decision) -> None:
            outcome.revoke(decision)
            relay.error = f"connection closed due to policy rejection: {decision.reason}"
            tunnel.reset(ev.stream_id, ErrorCode.CANCEL)
            if relay.transport is not None:
                relay.transport.abort()
            else:
                relay.stream_reset(ErrorCode.CANCEL)

        tracked = self.registry.register(plan.ctx, plan.route, revoke, f"{peer} -> {ev.authority}")
        self.tasks.spawn(
            self._connect_upstream(tunnel, relay, outcome), name=f"inbound-upstream-{ev.stream_id}"
        )

    async def _dial(self, plan: InboundPlan, protocol: asyncio.Protocol) -> None:
        assert plan.upstream is not None and plan.source_ip is not None
        loop = asyncio.get_running_loop()
        ip, port = plan.upstream
        if self.transparent:
            sock = self.sockets.transparent_tcp(str(plan.source_ip))
        else:
            sock = self.sockets.new_tcp(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.connect_timeout):
                await connect_socket(sock, (str(ip), port))
                await loop.create_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _connect_upstream(self, tunnel: HboneTunnel, relay: StreamRelay, outcome: _Outcome) -> None:
        try:
            await self._dial(outcome.plan, relay)
        except (OSError, TimeoutError) as exc:
            outcome.fail(f"upstream connect failed: {exc or 'timeout'}")
            tunnel.respond(relay.stream_id, 503, end_stream=True)
            relay.abandon(outcome.plan.reason)
            return
        # the 200 went out in `_InboundRelay.connection_made`, before any application byte

    # ---- plaintext -------------------------------------------------------------------------
    async def _plaintext(self, sock: socket.socket, peer_addr: tuple[str, int]) -> None:
        start = time.time()
        peer = (ipaddress.ip_address(peer_addr[0]), int(peer_addr[1]))
        assert self.original_destination is not None
        try:
            dst_text, dst_port = self.original_destination(sock)
            original = (ipaddress.ip_address(dst_text), dst_port)
        except (OSError, ValueError) as exc:
            refuse(sock)
            log.warning("inbound plaintext: no original destination for %s: %s", peer_addr, exc)
            return
        plan = decide_plaintext(original, peer, self.pod, self.engine)
        if not plan.allowed:
            refuse(sock)
            self._record(plan, peer, start, FlowVerdict.DROPPED, identity=None)
            return
        assert plan.ctx is not None and plan.route is not None
        outcome = _Outcome(plan)

        def done(relay: TcpRelay) -> None:
            self.registry.unregister(tracked)
            self._record(
                outcome.plan,
                peer,
                start,
                FlowVerdict.FORWARDED if outcome.plan.allowed else FlowVerdict.DROPPED,
                identity=None,
                sent=relay.bytes_from_client,
                received=relay.bytes_from_server,
                error=relay.error,
            )

        relay = TcpRelay(on_done=done)

        def revoke(decision: Decision) -> None:
            outcome.revoke(decision)
            relay.error = f"connection closed due to policy rejection: {decision.reason}"
            relay.abort()

        tracked = self.registry.register(plan.ctx, plan.route, revoke, f"{peer} -> {original} (plaintext)")
        loop = asyncio.get_running_loop()
        try:
            await self._dial(plan, relay.server)
            await loop.connect_accepted_socket(lambda: relay.client, sock)
        except (OSError, TimeoutError) as exc:
            refuse(sock)
            self.registry.unregister(tracked)
            outcome.fail(f"upstream connect failed: {exc or 'timeout'}")
            relay.on_done = None
            relay.abort()
            self._record(outcome.plan, peer, start, FlowVerdict.DROPPED, identity=None)

    # ---- flow records ----------------------------------------------------------------------
    def _record(
        self,
        plan: InboundPlan,
        peer: tuple[IPAddress, int],
        start: float,
        verdict: FlowVerdict,
        *,
        identity: str | None,
        hbone: str | None = None,
        sent: int = 0,
        received: int = 0,
        error: str | None = None,
    ) -> None:
        decision = plan.decision
        src = plan.src_workload
        reason = plan.reason
        if decision is not None and not decision.allowed and decision.policy is None:
            reason = f"{NO_POLICY_ALLOWED}: {decision.reason}"
        assert self.pod.ip is not None
        dst_port = plan.upstream[1] if plan.upstream else (plan.ctx.port if plan.ctx else HBONE_PORT)
        self.sink.record(
            ConnectionRecord(
                start_time=start,
                duration=max(time.time() - start, 0.0),
                direction=Direction.INBOUND,
                src_addr=format_authority(*peer),
                dst_addr=format_authority(self.pod.ip, dst_port),
                verdict=verdict,
                src_workload=src.name if src is not None else None,
                src_namespace=src.namespace if src is not None else None,
                src_identity=identity,
                dst_hbone_addr=hbone,
                dst_workload=self.pod.name,
                dst_namespace=self.pod.namespace,
                dst_identity=self.identity if hbone is not None else None,
                bytes_sent=sent,
                bytes_received=received,
                policy=str(decision.policy) if decision is not None and decision.policy is not None else None,
                rule=decision.rule if decision is not None else None,
                reason=reason,
                security_policy=SecurityPolicy.MUTUAL_TLS if hbone is not None else SecurityPolicy.UNKNOWN,
                response_flags=plan.response_flag,
                error=error or (None if plan.allowed else reason),
                decision=decision,
            )
        )
