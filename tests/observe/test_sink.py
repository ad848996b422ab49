"""The per-agent pipeline a data path calls: ring, metrics and export in one callable."""

from __future__ import annotations

from pathlib import Path

from nodemesh.observe.export import FlowTail, FlowWriter
from nodemesh.observe.flow import Verdict
from nodemesh.observe.metrics import TcpMetrics, tcp_labels
from nodemesh.observe.ring import FlowRing
from nodemesh.observe.sink import FlowPipeline, FlowSink

from .strategies import flow


def test_pipeline_feeds_ring_metrics_and_file(tmp_path: Path) -> None:
    """One record per connection reaches the node's ring, Istio's TCP counters and the export
    file; a drop is counted as opened and closed, as ztunnel records a denied inbound connection
    (`record_with_flag(..., AuthorizationPolicyDenied)`)."""
    metrics = TcpMetrics()
    pipeline = FlowPipeline(FlowRing(2), metrics, FlowWriter(tmp_path, "node-1"))
    sink: FlowSink = pipeline
    ok, drop = flow(bytes_sent=5), flow(verdict=Verdict.DROPPED)
    sink(ok)
    sink(drop)
    pipeline.close()
    assert list(pipeline.ring) == [ok, drop]
    assert metrics.value("istio_tcp_connections_opened", tcp_labels(drop)) == 1
    assert metrics.value("istio_tcp_connections_closed", tcp_labels(drop)) == 1
    assert metrics.value("istio_tcp_received_bytes", tcp_labels(ok)) == 5
    tail = FlowTail(tmp_path)
    assert tail.read_existing() == [ok, drop]
    tail.close()


def test_open_events_count_opened_at_open() -> None:
    """ztunnel increments `tcp_connections_opened` when the connection opens and
    `tcp_connections_closed` when it is recorded: with `open_events` the pipeline does the same."""
    metrics = TcpMetrics()
    pipeline = FlowPipeline(metrics=metrics, open_events=True)
    f = flow()
    pipeline.opened(f)
    key = tcp_labels(f)
    assert metrics.value("istio_tcp_connections_opened", key) == 1
    assert metrics.value("istio_tcp_connections_closed", key) == 0
    pipeline(f)
    assert metrics.value("istio_tcp_connections_opened", key) == 1
    assert metrics.value("istio_tcp_connections_closed", key) == 1
    FlowPipeline().opened(f)  # no metrics: nothing to count, no error
