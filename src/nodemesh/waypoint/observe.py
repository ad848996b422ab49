"""The waypoint's flow records and Istio's L7 metric.

One flow record per HTTP request (reference §5.2; Hubble's L7 record, `observe.flow.HttpFlow`)
with reporter `waypoint`, the verified client identity, the endpoint the connection was sent to,
the Service it addressed, method, path, status and latency; a deny carries the deciding policy
and rule (`with_decision`: `AuthorizationPolicy shop/orders-from-frontend`), so `nodemesh
observe` shows who denied it. A refused CONNECT (400, 401, 503) is one L3/L4 record.

`istio_requests_total` ("Incremented for every request handled by an Istio proxy") with Istio's
labels: `reporter="waypoint"` (as `IS:tests/integration/ambient/baseline_test.go` queries it),
the source and destination workload/principal labels of ztunnel's `CommonTrafficLabels`
(`observe.metrics.tcp_labels`), `request_protocol="http"`, `response_code`,
`grpc_response_status` (empty: no gRPC), `response_flags`, `connection_security_policy`
(`mutual_tls`); and the three standard histograms with the same labels,
`istio_request_duration_milliseconds` ("the duration of requests"), `istio_request_bytes` and
`istio_response_bytes` ("HTTP request/response body sizes"), bucketed as Envoy buckets every
histogram by default (`HistogramStatisticsImpl::supportedBuckets`: 0.5, 1, 5, ... 3600000).

Pure, except `HttpMetrics`, a prometheus-client collector with its own lock (like `TcpMetrics`).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from nodemesh.model.world import World
from nodemesh.nodeproxy.observe_adapter import UNKNOWN_DROP, flow_endpoint, workloads_by_ip
from nodemesh.observe.flow import (
    Flow,
    FlowEndpoint,
    FlowService,
    HttpFlow,
    Reporter,
    TrafficDirection,
    Verdict,
    with_decision,
)
from nodemesh.observe.metrics import LABELS, tcp_labels
from nodemesh.protocols import format_authority
from nodemesh.waypoint.decide import ConnectPlan, WaypointConnect
from nodemesh.waypoint.http import Exchange

__all__ = ["HTTP_LABELS", "HttpMetrics", "SessionInfo", "connect_flow", "http_labels", "request_flow"]

_REQUESTS = "istio_requests"
_HELP = "Incremented for every request handled by an Istio proxy"
_HISTOGRAMS = {
    "istio_request_duration_milliseconds": "This is a histogram of the duration of requests",
    "istio_request_bytes": "This is a histogram of HTTP request body sizes",
    "istio_response_bytes": "This is a histogram of HTTP response body sizes",
}
BUCKETS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
"""Envoy's default histogram buckets (`HistogramStatisticsImpl::supportedBuckets`), which Istio's
request histograms use unless a proxy is told otherwise."""
HTTP_LABELS = (*LABELS[:-2], "response_code", "grpc_response_status", *LABELS[-2:])
"""`LABELS` with `response_code` and `grpc_response_status` before `response_flags`."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a request's record needs from its connection."""

    connect: WaypointConnect
    plan: ConnectPlan
    upstream_identity: str | None = None
    """The endpoint's verified SPIFFE id, once its node proxy answered."""


def _source(world: World, connect: WaypointConnect) -> FlowEndpoint:
    address = format_authority(*connect.peer)
    return flow_endpoint(world, workloads_by_ip(world), address, connect.peer_identity)


def _destination(world: World, plan: ConnectPlan, identity: str | None) -> FlowEndpoint:
    if plan.target is None or plan.target.ip is None:
        return FlowEndpoint()
    address = format_authority(plan.target.ip, plan.target_port or 0)
    return flow_endpoint(world, workloads_by_ip(world), address, identity)


def _service(plan: ConnectPlan) -> FlowService | None:
    return FlowService(plan.service.namespace, plan.service.name) if plan.service is not None else None


def request_flow(exchange: Exchange, session: SessionInfo, world: World, node: str) -> Flow:
    """The L7 flow record of one request (see the module doc)."""
    forwarded = exchange.verdict.forward and exchange.error is None
    latency = max(int((exchange.end - exchange.start) * 1e9), 0)
    flow = Flow(
        time=datetime.fromtimestamp(exchange.end, UTC),
        node=node,
        reporter=Reporter.WAYPOINT,
        direction=TrafficDirection.INGRESS,
        source=_source(world, session.connect),
        destination=_destination(world, session.plan, session.upstream_identity if forwarded else None),
        mtls=True,
        hbone_target=session.connect.authority,
        destination_service=_service(session.plan),
        bytes_sent=exchange.request_bytes,
        bytes_received=exchange.response_bytes,
        duration_ns=latency,
        error=exchange.error,
        http=HttpFlow(exchange.method, exchange.target, exchange.status, latency),
    )
    decision = exchange.verdict.decision
    if not decision.allowed:
        return with_decision(flow, decision)
    if exchange.error is not None:
        refused = "401" in exchange.error
        return replace(
            flow,
            verdict=Verdict.DROPPED,
            drop_reason="POLICY_DENIED" if refused else UNKNOWN_DROP,
            reason=(
                f"refused by the destination ({exchange.error}); see the destination's record"
                if refused
                else exchange.error
            ),
        )
    return with_decision(flow, decision)


def connect_flow(
    connect: WaypointConnect, plan: ConnectPlan, world: World, node: str, *, start: float, end: float
) -> Flow:
    """The L3/L4 record of a CONNECT the waypoint refused."""
    flow = Flow(
        time=datetime.fromtimestamp(end, UTC),
        node=node,
        reporter=Reporter.WAYPOINT,
        direction=TrafficDirection.INGRESS,
        source=_source(world, connect),
        destination=_destination(world, plan, None),
        mtls=True,
        hbone_target=connect.authority,
        destination_service=_service(plan),
        duration_ns=max(int((end - start) * 1e9), 0),
        error=f"http status: {plan.status}",
        verdict=Verdict.DROPPED,
        drop_reason=UNKNOWN_DROP,
        reason=plan.reason,
    )
    if plan.decision is not None and not plan.decision.allowed:
        return with_decision(flow, plan.decision)
    return flow


def http_labels(flow: Flow, cluster_domain: str = "cluster.local") -> tuple[str, ...]:
    """The label values of `istio_requests_total` for an L7 flow, in `HTTP_LABELS` order."""
    base = list(tcp_labels(flow, cluster_domain))
    base[LABELS.index("request_protocol")] = "http"
    code = str(flow.http.status) if flow.http is not None and flow.http.status is not None else "0"
    return (*base[:-2], code, "", *base[-2:])


class _Histogram:
    """One label set's observations: a count per bucket (the last one is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, as the exposition format wants them."""
        out, running = [], 0
        for bound, count in zip((*(str(b) for b in BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class HttpMetrics(Collector):
    """`istio_requests_total` and the request duration and size histograms of one waypoint, fed
    with its L7 flow records. Thread-safe."""

    def __init__(self, registry: CollectorRegistry, *, cluster_domain: str = "cluster.local") -> None:
        self.cluster_domain = cluster_domain
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {}
        self._histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {name: {} for name in _HISTOGRAMS}
        registry.register(self)

    def record(self, flow: Flow) -> bool:
        """Count an L7 flow (False, nothing counted, for an L3/L4 one)."""
        if flow.http is None:
            return False
        key = http_labels(flow, self.cluster_domain)
        observed = (
            ("istio_request_duration_milliseconds", flow.http.latency_ns / 1e6),
            ("istio_request_bytes", float(flow.bytes_sent)),
            ("istio_response_bytes", float(flow.bytes_received)),
        )
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + 1
            for name, value in observed:
                self._histograms[name].setdefault(key, _Histogram()).observe(value)
        return True

    def value(self, labels: tuple[str, ...]) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def describe(self) -> Iterable[Metric]:
        return [
            CounterMetricFamily(_REQUESTS, _HELP, labels=HTTP_LABELS),
            *(HistogramMetricFamily(name, text, labels=HTTP_LABELS) for name, text in _HISTOGRAMS.items()),
        ]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = dict(self._values)
            histograms = {
                name: {key: (h.buckets(), h.total) for key, h in series.items()}
                for name, series in self._histograms.items()
            }
        family = CounterMetricFamily(_REQUESTS, _HELP, labels=HTTP_LABELS)
        for key, value in sorted(snapshot.items()):
            family.add_metric(list(key), value)
        yield family
        for name, series in histograms.items():
            hist = HistogramMetricFamily(name, _HISTOGRAMS[name], labels=HTTP_LABELS)
            for key, (buckets, total) in sorted(series.items()):
                hist.add_metric(list(key), buckets, total)
            yield hist
