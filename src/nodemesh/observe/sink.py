"""Where a data path hands its flow records: the per-agent pipeline (ring, metrics, export).

A data path sees a `FlowSink`: a callable taking one completed `Flow` (one per connection at each
end, one per request from a waypoint). The agent builds one `FlowPipeline` and passes it as the
sink; the pipeline keeps the flow in the node's ring (recent history, Hubble's ring buffer),
counts it into Istio's TCP metrics, and appends it to the node's export file.

ztunnel counts `istio_tcp_connections_opened_total` when a connection opens and the rest when it
closes. A producer that wants the same calls `opened(flow)` at open and builds the pipeline with
`open_events=True`; by default a completed flow counts as both opened and closed, so the
counters stay consistent for producers that report only at the end (drops included: ztunnel
counts a denied inbound connection as opened and closed, with response flag `DENY`).
"""

from __future__ import annotations

from typing import Protocol

from nodemesh.observe.export import FlowWriter
from nodemesh.observe.flow import Flow
from nodemesh.observe.metrics import TcpMetrics
from nodemesh.observe.ring import FlowRing

__all__ = ["FlowPipeline", "FlowSink"]


class FlowSink(Protocol):
    """What a data path calls once per completed connection (or request)."""

    def __call__(self, flow: Flow) -> None: ...


class FlowPipeline:
    """One agent's flow pipeline: ring, metrics and export, callable as a `FlowSink`."""

    __slots__ = ("metrics", "open_events", "ring", "writer")

    def __init__(
        self,
        ring: FlowRing | None = None,
        metrics: TcpMetrics | None = None,
        writer: FlowWriter | None = None,
        *,
        open_events: bool = False,
    ) -> None:
        self.ring = ring if ring is not None else FlowRing()
        self.metrics = metrics
        self.writer = writer
        self.open_events = open_events

    def opened(self, flow: Flow) -> None:
        """A connection opened (only with `open_events=True`): counts `..._opened_total`."""
        if self.metrics is not None and self.open_events:
            self.metrics.record_open(flow)

    def __call__(self, flow: Flow) -> None:
        self.ring.push(flow)
        if self.metrics is not None:
            if self.open_events:
                self.metrics.record_close(flow)
            else:
                self.metrics.record(flow)
        if self.writer is not None:
            self.writer.write(flow)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
