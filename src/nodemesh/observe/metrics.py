"""Istio's TCP metrics, computed from flow records, and the `/metrics` endpoint that serves them.

Names, help texts and labels are ztunnel's (istio/ztunnel `src/proxy/metrics.rs`, served on
port 15020 with the `istio_` prefix), so Istio dashboards and queries work unchanged:

    istio_tcp_connections_opened_total   "The total number of TCP connections opened"
    istio_tcp_connections_closed_total   "The total number of TCP connections closed"
    istio_tcp_received_bytes_total       "... bytes received during request ..." (source -> destination)
    istio_tcp_sent_bytes_total           "... bytes sent during response ..."    (destination -> source)

Labels, in ztunnel's `CommonTrafficLabels` order: reporter, source_workload,
source_canonical_service, source_canonical_revision, source_workload_namespace,
source_principal, source_app, source_version, source_cluster, destination_service,
destination_service_namespace, destination_service_name, destination_workload,
destination_canonical_service, destination_canonical_revision, destination_workload_namespace,
destination_principal, destination_app, destination_version, destination_cluster,
request_protocol (`tcp`), response_flags (`-`, `DENY`, `CONNECT`), connection_security_policy
(`mutual_tls` / `unknown`). A missing value is `unknown`. Canonical service and revision follow
Istio's `labels.CanonicalService`: `service.istio.io/canonical-name`, then
`app.kubernetes.io/name`, then `app`, then the workload name; `service.istio.io/canonical-revision`,
then `app.kubernetes.io/version`, then `version`, then `latest`. ztunnel sets `source_app` and
`source_version` to the canonical name and revision. The locality labels (`source_region`, ...)
are left out: ztunnel emits them only when a workload's locality is known, and nodemesh has none.

Differences from ztunnel, on purpose: bytes are added when the flow record arrives (at the end of
the connection), not as they flow; L7 records (from a waypoint) do not count here (they are
Istio's `istio_requests_total`, not TCP metrics). Like ztunnel (istio/ztunnel#1719), series of
deleted workloads are never evicted.

The counters live in a custom collector (no `_created` series, none of prometheus_client's
global state); one `TcpMetrics` per agent, each with its own registry. The HTTP endpoint runs on
an asyncio loop (`MetricsServer`) or on its own thread (`MetricsThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from nodemesh.observe.flow import Flow, FlowEndpoint, FlowService, Verdict

__all__ = [
    "DEFAULT_METRICS_PORT",
    "LABELS",
    "METRIC_PATHS",
    "MetricsServer",
    "MetricsThread",
    "TcpMetrics",
    "canonical_service",
    "response_flags",
    "tcp_labels",
]

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT: Final = 15020  # Istio's merged metrics / ztunnel stats port
METRIC_PATHS: Final = frozenset({"/metrics", "/stats/prometheus"})
UNKNOWN: Final = "unknown"

LABELS: Final = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)

_OPENED = "istio_tcp_connections_opened"
_CLOSED = "istio_tcp_connections_closed"
_RECEIVED = "istio_tcp_received_bytes"
_SENT = "istio_tcp_sent_bytes"
_HELP = {
    _OPENED: "The total number of TCP connections opened",
    _CLOSED: "The total number of TCP connections closed",
    _RECEIVED: "The size of total bytes received during request in case of a TCP connection",
    _SENT: "The size of total bytes sent during response in case of a TCP connection",
}
# drop reasons that are a policy's doing: ztunnel's AuthorizationPolicyDenied flag, `DENY`
_POLICY_DROPS = frozenset(
    {"POLICY_DENIED", "POLICY_DENY", "AUTH_REQUIRED", "UNENCRYPTED_TRAFFIC", "L7_UNINSPECTABLE"}
)


# ---- pure label computation ------------------------------------------------------------------
def canonical_service(ep: FlowEndpoint) -> tuple[str, str]:
    """Istio's `labels.CanonicalService(labels, workloadName)`: (name, revision)."""
    name = (
        ep.label("service.istio.io/canonical-name")
        or ep.label("app.kubernetes.io/name")
        or ep.label("app")
        or ep.workload
        or UNKNOWN
    )
    revision = (
        ep.label("service.istio.io/canonical-revision")
        or ep.label("app.kubernetes.io/version")
        or ep.label("version")
        or "latest"
    )
    return name, revision


def response_flags(flow: Flow) -> str:
    """ztunnel's `ResponseFlags`: `DENY` for a policy drop, `CONNECT` for a failed upstream
    connection (any other drop, or an error), `-` otherwise."""
    if flow.verdict is Verdict.DROPPED:
        return "DENY" if flow.drop_reason in _POLICY_DROPS else "CONNECT"
    return "CONNECT" if flow.error else "-"


def _side(ep: FlowEndpoint) -> tuple[str, ...]:
    known = ep.workload is not None
    name, revision = canonical_service(ep) if known else (UNKNOWN, UNKNOWN)
    return (
        ep.workload or UNKNOWN,
        name,
        revision,
        ep.namespace or UNKNOWN,
        ep.identity or UNKNOWN,
        name,
        revision,
        ep.cluster or UNKNOWN,
    )


def _service(svc: FlowService | None, cluster_domain: str) -> tuple[str, str, str]:
    if svc is None:
        return (UNKNOWN, UNKNOWN, UNKNOWN)
    return (svc.hostname(cluster_domain), svc.namespace or UNKNOWN, svc.name or UNKNOWN)


def tcp_labels(flow: Flow, cluster_domain: str = "cluster.local") -> tuple[str, ...]:
    """The label values of a flow's TCP metrics, in `LABELS` order."""
    src = _side(flow.source)
    dst = _side(flow.destination)
    return (
        flow.reporter.value,
        *src,
        *_service(flow.destination_service, cluster_domain),
        dst[0],  # destination_workload
        dst[1],  # destination_canonical_service
        dst[2],  # destination_canonical_revision
        dst[3],  # destination_workload_namespace
        dst[4],  # destination_principal
        dst[5],  # destination_app
        dst[6],  # destination_version
        dst[7],  # destination_cluster
        "tcp",
        response_flags(flow),
        "mutual_tls" if flow.mtls else UNKNOWN,
    )


# ---- the collector ---------------------------------------------------------------------------
class TcpMetrics(Collector):
    """Istio's four TCP counters for one agent, fed with flow records. Thread-safe."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, cluster_domain: str = "cluster.local"
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cluster_domain = cluster_domain
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _HELP}
        self.registry.register(self)

    def record_open(self, flow: Flow) -> bool:
        """Count a connection as opened (for producers that report the open separately)."""
        if flow.http is not None:
            return False
        key = tcp_labels(flow, self.cluster_domain)
        with self._lock:
            self._add(_OPENED, key, 1)
        return True

    def record_close(self, flow: Flow) -> bool:
        """Count a completed connection: closed, and its bytes each way."""
        if flow.http is not None:
            return False
        key = tcp_labels(flow, self.cluster_domain)
        with self._lock:
            self._add(_CLOSED, key, 1)
            self._add(_RECEIVED, key, flow.bytes_sent)  # request direction
            self._add(_SENT, key, flow.bytes_received)  # response direction
        return True

    def record(self, flow: Flow) -> bool:
        """Count a completed connection that was not reported at open: opened and closed.

        Returns False (and counts nothing) for an L7 record."""
        if flow.http is not None:
            return False
        key = tcp_labels(flow, self.cluster_domain)
        with self._lock:
            self._add(_OPENED, key, 1)
            self._add(_CLOSED, key, 1)
            self._add(_RECEIVED, key, flow.bytes_sent)
            self._add(_SENT, key, flow.bytes_received)
        return True

    def value(self, name: str, labels: tuple[str, ...]) -> float:
        """A counter's current value (`name` without `_total`), 0 if the series does not exist."""
        with self._lock:
            return self._values[name.removesuffix("_total")].get(labels, 0.0)

    def _add(self, name: str, key: tuple[str, ...], amount: float) -> None:
        series = self._values[name]
        series[key] = series.get(key, 0.0) + amount

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(name, text, labels=LABELS) for name, text in _HELP.items()]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        for name, text in _HELP.items():
            family = CounterMetricFamily(name, text, labels=LABELS)
            for key, value in sorted(snapshot[name].items()):
                family.add_metric(list(key), value)
            yield family

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for an `Accept` header: Prometheus text by default,
        OpenMetrics when asked for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


# ---- HTTP ------------------------------------------------------------------------------------
_MAX_HEAD = 16 * 1024


class MetricsServer:
    """GET /metrics and /stats/prometheus on an asyncio loop (HTTP/1.1, one response per
    connection). Any other path is 404; any method but GET/HEAD is 405."""

    def __init__(self, metrics: TcpMetrics, host: str = "0.0.0.0", port: int = DEFAULT_METRICS_PORT) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("metrics server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            status, body, ctype, method = self._respond(head)
            lines = [
                f"HTTP/1.1 {status}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Connection: close",
                "",
                "",
            ]
            writer.write("\r\n".join(lines).encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[str, bytes, str, str]:
        text = "text/plain; charset=utf-8"
        if len(head) > _MAX_HEAD:
            return "431 Request Header Fields Too Large", b"", text, "GET"
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return "400 Bad Request", b"bad request\n", text, "GET"
        method, target, _version = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", text, method
        if path not in METRIC_PATHS:
            return "404 Not Found", b"not found\n", text, method
        accept = ""
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        body, ctype = self.metrics.render(accept)
        return "200 OK", body, ctype, method


class MetricsThread:
    """A `MetricsServer` on its own thread and event loop, for an agent without a loop.

    `start()` returns once the port is bound (or raises what binding raised); `stop()` closes
    the server and joins the thread."""

    def __init__(self, metrics: TcpMetrics, host: str = "0.0.0.0", port: int = DEFAULT_METRICS_PORT) -> None:
        self.server = MetricsServer(metrics, host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nodemesh-metrics", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()

    def __enter__(self) -> MetricsThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.close()
