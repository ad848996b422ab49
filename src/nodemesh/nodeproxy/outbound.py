"""Outbound: where a captured connection goes (a pure decision), and taking it there.

The decision follows ztunnel's `build_request` (reference §1.6, ZT:src/proxy/outbound.rs):
1. A Service VIP whose Service uses a waypoint -> HBONE to the waypoint, `:authority` = the
   ORIGINAL `VIP:port`, expected server identity = the waypoint's.
2. A Service VIP otherwise -> pick one of its endpoints (the node proxy load-balances); none ->
   refused (`no healthy upstream`). The service port is translated to the target port here.
3. An address no workload has -> plain TCP passthrough to the original destination.
4. A pod addressed directly that has a workload waypoint -> HBONE to the waypoint.
5. A pod in the mesh -> HBONE to `podIP:15008`, `:authority = podIP:targetPort`, expected server
   identity = the pod's SPIFFE id. A pod outside the mesh -> plain TCP.
A destination port in {15001, 15006, 15008} on loopback is refused (ztunnel's `SelfCall`). The
source's egress policies (Kubernetes/Cilium egress rules, the engine's "source" point) are
evaluated here, at the source's node proxy; waypoint-bound traffic is left to the waypoint.

`build_request` is pure (the endpoint choice is an argument); `OutboundProxy` executes plans:
accept, read SO_ORIGINAL_DST through the seam, decide, then pool + CONNECT + relay, or dial +
relay. The CONNECT carries `baggage`, `forwarded` and `traceparent` as ztunnel's does, and the
application socket is only read once the server answered 200 (the request waits in the kernel).
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
from dataclasses import dataclass
from enum import Enum

from nodemesh.capture.sockets import SocketFactory
from nodemesh.model.world import ServiceInfo, Waypoint, Workload, World
from nodemesh.nodeproxy.flow import ConnectionRecord, Direction, FlowSink, FlowVerdict, SecurityPolicy
from nodemesh.nodeproxy.pool import HbonePool, PoolKey
from nodemesh.nodeproxy.relay import StreamRelay, TcpRelay
from nodemesh.nodeproxy.runtime import TaskSet, connect_socket, ip_of
from nodemesh.nodeproxy.socket_factory import OriginalDestination
from nodemesh.nodeproxy.tls import IdentityError, identity_uri
from nodemesh.nodeproxy.tunnel import TunnelClosedError
from nodemesh.policy.decision import Decision
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import FlowContext, Protocol
from nodemesh.protocols import BaggageFields, connect_headers, format_authority

__all__ = [
    "HBONE_PORT",
    "ILLEGAL_PORTS",
    "OutboundKind",
    "OutboundPlan",
    "OutboundProxy",
    "baggage_for",
    "build_request",
]

log = logging.getLogger(__name__)

HBONE_PORT = 15008
ILLEGAL_PORTS = frozenset({15001, 15006, 15008})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EndpointPicker = Callable[[Sequence[Workload]], Workload]
WaypointAddress = Callable[[Waypoint], IPAddress | None]


class OutboundKind(Enum):
    HBONE = "hbone"
    PASSTHROUGH = "passthrough"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class OutboundPlan:
    """Where one outbound connection goes and how; `reason` says why, in ztunnel's words."""

    kind: OutboundKind
    original_dst: tuple[IPAddress, int]
    src_identity: str
    next_hop: tuple[IPAddress, int] | None = None
    authority: str | None = None
    dst_identity: str | None = None
    service: ServiceInfo | None = None
    dst_workload: Workload | None = None
    waypoint: Waypoint | None = None
    decision: Decision | None = None
    reason: str = ""
    response_flag: str = "-"

    @property
    def pool_key(self) -> PoolKey | None:
        if self.kind is not OutboundKind.HBONE or self.next_hop is None or self.dst_identity is None:
            return None
        return PoolKey(self.src_identity, self.dst_identity, (str(self.next_hop[0]), self.next_hop[1]))


def _target_port(service: ServiceInfo, port: int, workload: Workload) -> int | None:
    for sp in service.ports:
        if sp.port == port and sp.protocol is Protocol.TCP:
            if isinstance(sp.target_port, int):
                return sp.target_port
            named = next((p.port for p in workload.ports if p.name == sp.target_port), None)
            return named
    return None


def _waypoint_identity(world: World, waypoint: Waypoint) -> str:
    return identity_uri(f"{world.trust_domain}/ns/{waypoint.namespace}/sa/{waypoint.service_account}")


def build_request(
    source: Workload,
    original_dst: tuple[IPAddress, int],
    engine: PolicyEngine,
    pick_endpoint: EndpointPicker,
    waypoint_address: WaypointAddress | None = None,
) -> OutboundPlan:
    """Decide where a connection from `source` to `original_dst` goes (no I/O)."""
    world = engine.world
    ip, port = original_dst
    src_id = identity_uri(world.principal(source))

    def reject(reason: str, flag: str = "CONNECT", decision: Decision | None = None) -> OutboundPlan:
        return OutboundPlan(
            OutboundKind.REJECT, original_dst, src_id, reason=reason, response_flag=flag, decision=decision
        )

    if port in ILLEGAL_PORTS and ip.is_loopback:
        return reject("attempted recursive call to ourselves")
    source_in_mesh = world.in_mesh(source)
    service = world.service_by_ip(ip)
    target: Workload | None
    if service is not None:
        waypoint = world.service_waypoint(service) if source_in_mesh else None
        if waypoint is not None:
            return _via_waypoint(
                world,
                waypoint,
                original_dst,
                src_id,
                service=service,
                target=None,
                waypoint_address=waypoint_address,
            )
        endpoints = [w for w in world.endpoints_of(service) if w.ip is not None]
        if not endpoints:
            return reject(f"no healthy upstream for {service.hostname}:{port}")
        target = pick_endpoint(endpoints)
        dst_port = _target_port(service, port, target)
        if dst_port is None:
            return reject(f"service {service.hostname} has no TCP port {port}")
    else:
        target = world.workload_by_ip(ip)
        if target is None:
            plan = OutboundPlan(
                OutboundKind.PASSTHROUGH,
                original_dst,
                src_id,
                next_hop=original_dst,
                reason="not in the mesh",
            )
            return _with_egress(engine, source, None, plan, port)
        dst_port = port
        if source_in_mesh and world.in_mesh(target):
            waypoint = world.workload_waypoint(target)
            if waypoint is not None and not _is_waypoint(source, waypoint):
                return _via_waypoint(
                    world,
                    waypoint,
                    original_dst,
                    src_id,
                    service=None,
                    target=target,
                    waypoint_address=waypoint_address,
                )
    assert target.ip is not None
    if not world.in_mesh(target):
        plan = OutboundPlan(
            OutboundKind.PASSTHROUGH,
            original_dst,
            src_id,
            next_hop=(target.ip, dst_port),
            service=service,
            dst_workload=target,
            reason="destination is not in the mesh",
        )
        return _with_egress(engine, source, target, plan, dst_port)
    plan = OutboundPlan(
        OutboundKind.HBONE,
        original_dst,
        src_id,
        next_hop=(target.ip, HBONE_PORT),
        authority=format_authority(target.ip, dst_port),
        dst_identity=identity_uri(world.principal(target)),
        service=service,
        dst_workload=target,
    )
    return _with_egress(engine, source, target, plan, dst_port)


def _is_waypoint(source: Workload, waypoint: Waypoint) -> bool:
    return source.namespace == waypoint.namespace and source.service_account == waypoint.service_account


def _via_waypoint(
    world: World,
    waypoint: Waypoint,
    original_dst: tuple[IPAddress, int],
    src_id: str,
    *,
    service: ServiceInfo | None,
    target: Workload | None,
    waypoint_address: WaypointAddress | None,
) -> OutboundPlan:
    address = waypoint_address(waypoint) if waypoint_address is not None else None
    if address is None:
        return OutboundPlan(
            OutboundKind.REJECT,
            original_dst,
            src_id,
            waypoint=waypoint,
            reason=f"waypoint {waypoint.key} has no address: no waypoint proxy is running for it",
            response_flag="CONNECT",
        )
    return OutboundPlan(
        OutboundKind.HBONE,
        original_dst,
        src_id,
        next_hop=(address, HBONE_PORT),
        authority=format_authority(*original_dst),
        dst_identity=_waypoint_identity(world, waypoint),
        service=service,
        dst_workload=target,
        waypoint=waypoint,
    )


def _with_egress(
    engine: PolicyEngine, source: Workload, target: Workload | None, plan: OutboundPlan, port: int
) -> OutboundPlan:
    """Apply the source's egress policies (the engine's source point) to a direct plan."""
    world = engine.world
    dst = world.endpoint(target) if target is not None else world.external_endpoint(plan.original_dst[0])
    ctx = FlowContext(world.endpoint(source), dst, port)
    route = Route(src_workload=source, dst_workload=target, service=plan.service)
    decision = engine.source_egress(ctx, route).decision
    if decision.allowed:
        return OutboundPlan(
            plan.kind,
            plan.original_dst,
            plan.src_identity,
            plan.next_hop,
            plan.authority,
            plan.dst_identity,
            plan.service,
            plan.dst_workload,
            plan.waypoint,
            decision,
            plan.reason,
        )
    return OutboundPlan(
        OutboundKind.REJECT,
        plan.original_dst,
        plan.src_identity,
        service=plan.service,
        dst_workload=target,
        decision=decision,
        reason=decision.reason,
        response_flag="DENY",
    )


def baggage_for(world: World, workload: Workload) -> BaggageFields:
    """The source's baggage: canonical service/revision as Istio derives them from labels."""
    labels = workload.labels
    service = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload.name
    )
    version = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return BaggageFields(
        cluster=world.cluster_name,
        namespace=workload.namespace,
        workload_type=workload.kind if workload.kind in ("deployment", "cronjob", "pod", "job") else "pod",
        workload_name=workload.name,
        service_name=service,
        service_version=version,
    )


def _status(relay: StreamRelay) -> int:
    """The CONNECT's response status, 0 if there was none."""
    r = relay.response
    if not r.done() or r.cancelled() or r.exception() is not None:
        return 0
    return r.result()


def refuse(sock: socket.socket) -> None:
    """Close a client connection with a reset (SO_LINGER 0), as a refused connection looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class OutboundProxy:
    """The 15001 listener of one pod: captured connections out, over HBONE or passthrough."""

    def __init__(
        self,
        *,
        source: Workload,
        engine: PolicyEngine,
        pool: HbonePool,
        sockets: SocketFactory,
        original_destination: OriginalDestination,
        sink: FlowSink,
        tasks: TaskSet,
        rng: random.Random | None = None,
        waypoint_address: WaypointAddress | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.source = source
        self.engine = engine
        self.pool = pool
        self.sockets = sockets
        self.original_destination = original_destination
        self.sink = sink
        self.tasks = tasks
        self.rng = rng or random.Random()
        self.waypoint_address = waypoint_address
        self.connect_timeout = connect_timeout
        self._baggage = baggage_for(engine.world, source)
        self.connections = 0

    def update_policy(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self._baggage = baggage_for(engine.world, self.source)

    def _pick(self, endpoints: Sequence[Workload]) -> Workload:
        return endpoints[self.rng.randrange(len(endpoints))]

    def plan(self, original_dst: tuple[IPAddress, int]) -> OutboundPlan:
        return build_request(self.source, original_dst, self.engine, self._pick, self.waypoint_address)

    async def serve(self, listener: socket.socket) -> None:
        """Accept loop: one owned task per connection. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        while True:
            sock, peer = await loop.sock_accept(listener)
            if self.tasks.closed:  # shutting down: stop accepting
                sock.close()
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            self.tasks.spawn(self.handle(sock, peer), name=f"outbound-{self.connections}")

    async def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        start = time.time()
        peer_ip = ip_of(peer[0])
        try:
            dst_text, dst_port = self.original_destination(sock)
            original = (ip_of(dst_text), dst_port)
        except (OSError, ValueError) as exc:
            refuse(sock)
            log.warning("outbound: no original destination for %s: %s", peer, exc)
            return
        plan = self.plan(original)
        if plan.kind is OutboundKind.REJECT:
            refuse(sock)
            self._record(plan, peer, start, FlowVerdict.DROPPED, error=plan.reason)
            return
        if plan.kind is OutboundKind.PASSTHROUGH:
            await self._passthrough(sock, peer, plan, start)
            return
        await self._hbone(sock, (peer_ip, peer[1]), plan, start)

    async def _hbone(
        self, sock: socket.socket, peer: tuple[IPAddress, int], plan: OutboundPlan, start: float
    ) -> None:
        key = plan.pool_key
        assert key is not None and plan.authority is not None
        peer_text = (str(peer[0]), peer[1])
        try:
            tunnel = await self.pool.checkout(key)
        except IdentityError as exc:
            refuse(sock)
            self._record(plan, peer_text, start, FlowVerdict.DROPPED, error=str(exc), flag=exc.response_flag)
            return
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            refuse(sock)
            flag = "TLS_FAILURE" if isinstance(exc, ssl.SSLError) else "CONNECT"
            self._record(plan, peer_text, start, FlowVerdict.DROPPED, error=str(exc) or repr(exc), flag=flag)
            return
        bits = self.rng.getrandbits
        headers = connect_headers(
            self._baggage,
            client_ip=peer[0],
            client_port=peer[1],
            service_host=plan.service.hostname if plan.service is not None else None,
            trace_id=bits(128) | 1,
            parent_id=bits(64) | 1,
        )

        def done(relay: StreamRelay) -> None:
            status = _status(relay)
            ok = status == 200 and relay.reset_code is None
            if status == 200:
                error = relay.error
            elif status:
                error = relay.error or f"http status: {status}"
            else:
                error = relay.error or f"no response to CONNECT (stream reset {relay.reset_code})"
            self._record(
                plan,
                peer_text,
                start,
                FlowVerdict.FORWARDED if status == 200 else FlowVerdict.DROPPED,
                relay=relay,
                peer_identity=tunnel.peer_identity,
                error=None if ok else error,
                flag="-" if status == 200 else ("DENY" if status == 401 else "CONNECT"),
            )

        relay = StreamRelay(tunnel, on_done=done)
        try:
            relay.stream_id = self.pool.open_stream(tunnel, plan.authority, headers, relay)
        except (TunnelClosedError, ConnectionError) as exc:
            refuse(sock)
            self._record(plan, peer_text, start, FlowVerdict.DROPPED, error=str(exc), flag="CONNECT")
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                status = await relay.response
        except (TunnelClosedError, TimeoutError, asyncio.CancelledError) as exc:
            refuse(sock)
            relay.abandon(str(exc) or "no response to CONNECT")
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if status != 200:
            refuse(sock)
            relay.abandon(f"http status: {status}")
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: relay, sock)
        except OSError as exc:
            sock.close()
            relay.abandon(str(exc))

    async def _passthrough(
        self, sock: socket.socket, peer: tuple[str, int], plan: OutboundPlan, start: float
    ) -> None:
        assert plan.next_hop is not None
        loop = asyncio.get_running_loop()
        ip, port = plan.next_hop
        upstream = self.sockets.new_tcp(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)

        def done(relay: TcpRelay) -> None:
            self._record(plan, peer, start, FlowVerdict.FORWARDED, tcp=relay, error=relay.error)

        relay = TcpRelay(on_done=done)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await connect_socket(upstream, (str(ip), port))
                await loop.create_connection(lambda: relay.server, sock=upstream)
            await loop.connect_accepted_socket(lambda: relay.client, sock)
        except (OSError, TimeoutError) as exc:
            upstream.close()
            refuse(sock)
            relay.abort()
            self._record(plan, peer, start, FlowVerdict.DROPPED, error=str(exc) or repr(exc), flag="CONNECT")

    def _record(
        self,
        plan: OutboundPlan,
        peer: tuple[str, int],
        start: float,
        verdict: FlowVerdict,
        *,
        relay: StreamRelay | None = None,
        tcp: TcpRelay | None = None,
        peer_identity: str | None = None,
        error: str | None = None,
        flag: str | None = None,
    ) -> None:
        target = plan.dst_workload
        decision = plan.decision
        sent = relay.bytes_from_tcp if relay else (tcp.bytes_from_client if tcp else 0)
        received = relay.bytes_from_tunnel if relay else (tcp.bytes_from_server if tcp else 0)
        hop = plan.next_hop or plan.original_dst
        hbone = plan.kind is OutboundKind.HBONE
        self.sink.record(
            ConnectionRecord(
                start_time=start,
                duration=max(time.time() - start, 0.0),
                direction=Direction.OUTBOUND,
                src_addr=format_authority(ip_of(peer[0]), peer[1]),
                dst_addr=format_authority(*hop),
                verdict=verdict,
                src_workload=self.source.name,
                src_namespace=self.source.namespace,
                src_identity=plan.src_identity if hbone else None,
                dst_hbone_addr=plan.authority,
                dst_service=plan.service.hostname if plan.service is not None else None,
                dst_workload=target.name if target is not None else None,
                dst_namespace=target.namespace if target is not None else None,
                dst_identity=peer_identity if hbone else None,
                bytes_sent=sent,
                bytes_received=received,
                policy=str(decision.policy) if decision is not None and decision.policy is not None else None,
                rule=decision.rule if decision is not None else None,
                reason=plan.reason or (decision.reason if decision is not None else ""),
                security_policy=SecurityPolicy.MUTUAL_TLS if hbone else SecurityPolicy.UNKNOWN,
                response_flags=flag or plan.response_flag,
                error=error,
                decision=decision,
            )
        )
