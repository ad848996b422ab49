"""Flow observability: one record per connection (and per L7 request), kept in a ring per node,
counted into Istio's TCP metrics, exported as JSON lines and read back by `nodemesh observe`.

Modules: `flow` (the record and its Hubble-shaped JSON), `ring` (Hubble's bounded ring),
`export` (JSON-lines files with rotation, and a follower), `filters` (`hubble observe` filter
semantics), `printer` (compact and JSON output), `metrics` (Istio TCP metrics and `/metrics`),
`sink` (the per-agent pipeline a data path calls).
"""

from nodemesh.observe.export import FlowTail, FlowWriter, flow_files
from nodemesh.observe.filters import FilterError, FlowFilter, FlowQuery, PodName, build_query
from nodemesh.observe.flow import (
    Flow,
    FlowEndpoint,
    FlowFormatError,
    FlowPolicy,
    FlowService,
    FlowType,
    HttpFlow,
    Reporter,
    TrafficDirection,
    Verdict,
    with_decision,
)
from nodemesh.observe.metrics import MetricsServer, MetricsThread, TcpMetrics, tcp_labels
from nodemesh.observe.printer import compact
from nodemesh.observe.ring import FlowRing, RingRead
from nodemesh.observe.sink import FlowPipeline, FlowSink

__all__ = [
    "FilterError",
    "Flow",
    "FlowEndpoint",
    "FlowFilter",
    "FlowFormatError",
    "FlowPipeline",
    "FlowPolicy",
    "FlowQuery",
    "FlowRing",
    "FlowService",
    "FlowSink",
    "FlowTail",
    "FlowType",
    "FlowWriter",
    "HttpFlow",
    "MetricsServer",
    "MetricsThread",
    "PodName",
    "Reporter",
    "RingRead",
    "TcpMetrics",
    "TrafficDirection",
    "Verdict",
    "build_query",
    "compact",
    "flow_files",
    "tcp_labels",
    "with_decision",
]
