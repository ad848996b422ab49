"""The node proxy's connection records as flow records: `ConnectionRecord` -> `observe.Flow`.

The node proxy reports one `ConnectionRecord` per connection at each end (ztunnel's access
log, reference §5.3); the observe pipeline (`nodemesh.observe.FlowPipeline`: ring, Istio TCP
metrics, JSON-lines export) takes Hubble-shaped `Flow`s. `flow_from_record` is the pure mapping,
`FlowRecorder` the `FlowSink` that applies it and feeds the pipeline.

What the mapping follows:
- reporter `source` on the outbound side, `destination` on the inbound side, and the Hubble
  direction EGRESS / INGRESS with them (ztunnel `Reporter`, §5.1);
- the endpoints are the world's pods (namespace, pod, owner workload and kind, Cilium identity
  labels, cluster) looked up by address; the destination address is the HBONE target
  (`podIP:targetPort`), not the next hop `:15008`, since that is the connection the application
  made; an address no pod has is Hubble's `reserved:world`;
- a principal appears only when verified: the peer certificate's SAN or the reporter's own SVID
  (ztunnel logs `src.identity`/`dst.identity` "only if mTLS");
- `connection_security_policy` is `mutual_tls` for HBONE and `unknown` for plain TCP (§5.1);
- a policy drop carries the deciding policy and rule (`with_decision`); a default deny says
  ztunnel's "allow policies exist, but none allowed"; a drop that no policy made (an upstream
  that refused, a TLS or identity failure, a missing waypoint proxy) is `DROP_REASON_UNKNOWN`
  with the error, and a 401 seen by the source is `POLICY_DENIED` (the destination's policy;
  the source cannot know which one): the metrics' `response_flags` become `DENY` / `CONNECT`
  as ztunnel's do;
- `destination_service` is the Service the client addressed (outbound); inbound it is guessed as
  ztunnel's `guess_inbound_service` does: the first Service of the pod whose target port is the
  connection's port.

Pure: the time is the record's (start + duration), nothing reads a clock.

`FlowRecorder` can batch (`batch_delay`): records are queued and mapped, counted and written
together a few milliseconds later, off the connection's path (the mapping, the JSON line and the
metrics labels were ~30% of a node proxy's Python CPU per new connection, measured with cProfile on
the live cluster); the pod endpoints of a world are built once per pod, not once per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime

from nodemesh.model.world import ServiceInfo, Workload, World
from nodemesh.nodeproxy.flow import ConnectionRecord, Direction, FlowVerdict, SecurityPolicy
from nodemesh.observe.flow import (
    Flow,
    FlowEndpoint,
    FlowService,
    Reporter,
    TrafficDirection,
    Verdict,
    with_decision,
)
from nodemesh.policy.decision import DropReason
from nodemesh.policy.flow import IPAddress
from nodemesh.protocols import parse_authority

__all__ = [
    "NO_POLICY_ALLOWED",
    "UNKNOWN_DROP",
    "FlowRecorder",
    "PipelineSink",
    "flow_endpoint",
    "flow_from_record",
    "workloads_by_ip",
]

log = logging.getLogger(__name__)

NO_POLICY_ALLOWED = "allow policies exist, but none allowed"
UNKNOWN_DROP = "DROP_REASON_UNKNOWN"  # Hubble's DropReason 0
_KINDS = {"deployment": "Deployment", "pod": "Pod", "cronjob": "CronJob", "job": "Job"}

PipelineSink = Callable[[Flow], None]
"""What the recorder feeds: `nodemesh.observe.FlowPipeline` (or any `observe.FlowSink`)."""


def workloads_by_ip(world: World) -> dict[IPAddress, Workload]:
    """The world's pods by address (the lookup every record needs)."""
    return {w.ip: w for w in world.workloads if w.ip is not None}


def _split(address: str) -> tuple[IPAddress | None, int]:
    try:
        target = parse_authority(address)
    except ValueError:
        return None, 0
    return target.ip, target.port


EndpointCache = MutableMapping[IPAddress, FlowEndpoint]
"""A pod's endpoint (port 0, no identity) by address, for one world."""


def flow_endpoint(
    world: World,
    by_ip: Mapping[IPAddress, Workload],
    address: str,
    identity: str | None,
    cache: EndpointCache | None = None,
) -> FlowEndpoint:
    """The flow endpoint at `address` (`ip:port`): the world's pod there (labels, workload,
    cluster) or an outside address, with `identity` only as verified by the caller."""
    ip, port = _split(address)
    workload = by_ip.get(ip) if ip is not None else None
    if workload is not None:
        assert ip is not None
        base = cache.get(ip) if cache is not None else None
        if base is None:
            base = FlowEndpoint.from_policy(
                world.endpoint(workload, mtls=False),
                port=0,
                workload_kind=_KINDS.get(workload.kind, workload.kind.capitalize()),
                cluster=world.cluster_name,
            )
            base = replace(base, address=str(ip))
            if cache is not None:
                cache[ip] = base
        return replace(base, port=port, identity=identity)
    if ip is not None:
        return replace(FlowEndpoint.from_policy(world.external_endpoint(ip), port=port), identity=identity)
    return FlowEndpoint(identity=identity)


def _service_from_hostname(hostname: str) -> FlowService | None:
    parts = hostname.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return FlowService(parts[1], parts[0])
    return None


def _guess_inbound_service(world: World, workload: Workload, port: int) -> ServiceInfo | None:
    """ztunnel `guess_inbound_service`: the first Service of the pod with this target port."""
    for service in world.services_of(workload):
        for sp in service.ports:
            target = sp.target_port
            if isinstance(target, str):
                target = next((p.port for p in workload.ports if p.name == target), -1)
            if target == port:
                return service
    return None


def flow_from_record(
    record: ConnectionRecord,
    world: World,
    node: str,
    by_ip: Mapping[IPAddress, Workload] | None = None,
    endpoints: EndpointCache | None = None,
) -> Flow:
    """The flow record for one end of one connection (see the module docstring). `endpoints`
    caches the pods' endpoints between calls for the same world."""
    index = by_ip if by_ip is not None else workloads_by_ip(world)
    outbound = record.direction is Direction.OUTBOUND
    dst_address = record.dst_hbone_addr if outbound and record.dst_hbone_addr else record.dst_addr
    source = flow_endpoint(world, index, record.src_addr, record.src_identity, endpoints)
    destination = flow_endpoint(world, index, dst_address, record.dst_identity, endpoints)
    if destination.workload is None and record.dst_workload is not None:
        destination = replace(destination, namespace=record.dst_namespace, workload=record.dst_workload)
    service: FlowService | None = None
    if record.dst_service is not None:
        service = _service_from_hostname(record.dst_service)
    elif not outbound:
        dst_ip, dst_port = _split(record.dst_addr)
        pod = index.get(dst_ip) if dst_ip is not None else None
        guessed = _guess_inbound_service(world, pod, dst_port) if pod is not None else None
        if guessed is not None:
            service = FlowService(guessed.namespace, guessed.name)
    flow = Flow(
        time=datetime.fromtimestamp(record.start_time + record.duration, UTC),
        node=node,
        reporter=Reporter.SOURCE if outbound else Reporter.DESTINATION,
        direction=TrafficDirection.EGRESS if outbound else TrafficDirection.INGRESS,
        source=source,
        destination=destination,
        reason=record.reason,
        mtls=record.security_policy is SecurityPolicy.MUTUAL_TLS,
        hbone_target=record.dst_hbone_addr,
        destination_service=service,
        bytes_sent=record.bytes_sent,
        bytes_received=record.bytes_received,
        duration_ns=max(int(record.duration * 1e9), 0),
        error=record.error,
    )
    decision = record.decision
    if decision is not None and not decision.allowed:
        flow = with_decision(flow, decision)
        default_deny = decision.rule is None and decision.drop_reason in (None, DropReason.POLICY_DENIED)
        if default_deny and NO_POLICY_ALLOWED not in flow.reason:
            flow = replace(flow, reason=f"{NO_POLICY_ALLOWED}: {flow.reason}")
        return flow
    if record.verdict is FlowVerdict.DROPPED:
        drop = DropReason.POLICY_DENIED.value if record.response_flags == "DENY" else UNKNOWN_DROP
        reason = record.reason or (record.error or "")
        if outbound and decision is not None and decision.allowed and record.error:
            # The source allowed it (its egress verdict is `decision`); the destination refused
            # the tunnel (HBONE 401/503): say that, not the source's allow reason. The policy that
            # refused is named in the destination's own record.
            reason = f"refused by the destination ({record.error}); see the destination's record"
        return replace(flow, verdict=Verdict.DROPPED, drop_reason=drop, reason=reason)
    if decision is not None:
        return with_decision(flow, decision)
    return flow


class FlowRecorder:
    """A node proxy `FlowSink` that turns each record into a `Flow` for the observe pipeline.

    `world` is the world the node proxy currently serves (set it on every policy change: pod
    lookups follow it). A record that cannot be mapped is logged and dropped: observability
    never breaks the data path.

    With `batch_delay` (seconds) and a running event loop, `record` only queues: the queue is
    mapped and fed to the pipeline `batch_delay` later (or at once when `max_batch` records
    wait), each record with the world it was made in. `flush()` drains the queue (call it
    before closing the pipeline)."""

    __slots__ = (
        "_by_ip",
        "_endpoints",
        "_flush_handle",
        "_pending",
        "_world",
        "batch_delay",
        "max_batch",
        "node",
        "pipeline",
        "recorded",
    )

    def __init__(
        self,
        pipeline: PipelineSink,
        node: str,
        world: World,
        *,
        batch_delay: float | None = None,
        max_batch: int = 512,
    ) -> None:
        self.pipeline = pipeline
        self.node = node
        self.batch_delay = batch_delay
        self.max_batch = max_batch
        self._world = world
        self._by_ip = workloads_by_ip(world)
        self._endpoints: dict[IPAddress, FlowEndpoint] = {}
        self._pending: list[tuple[ConnectionRecord, World, dict[IPAddress, Workload], EndpointCache]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.recorded = 0

    @property
    def world(self) -> World:
        return self._world

    @world.setter
    def world(self, world: World) -> None:
        self._world = world
        self._by_ip = workloads_by_ip(world)
        self._endpoints = {}

    def record(self, record: ConnectionRecord) -> None:
        if self.batch_delay is None:
            self._map(record, self._world, self._by_ip, self._endpoints)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a shutdown path): map it now
            self._map(record, self._world, self._by_ip, self._endpoints)
            return
        self._pending.append((record, self._world, self._by_ip, self._endpoints))
        if len(self._pending) >= self.max_batch:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self.batch_delay, self.flush)

    def flush(self) -> None:
        """Map and deliver every queued record, in order."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, []
        for record, world, by_ip, endpoints in pending:
            self._map(record, world, by_ip, endpoints)

    def _map(
        self,
        record: ConnectionRecord,
        world: World,
        by_ip: Mapping[IPAddress, Workload],
        endpoints: EndpointCache,
    ) -> None:
        try:
            flow = flow_from_record(record, world, self.node, by_ip, endpoints)
        except ValueError:
            log.exception("cannot turn a connection record into a flow: %s", record)
            return
        self.pipeline(flow)
        self.recorded += 1
