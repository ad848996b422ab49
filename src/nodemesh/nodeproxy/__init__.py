"""The node proxy's data path (Istio Ambient's ztunnel role): HBONE outbound, inbound on 15008,
plaintext inbound on 15006, the HBONE connection pool, and their relays.

A thin asyncio shell (Protocol/Transport API, uvloop when available) around the sans-IO HBONE
core in `nodemesh.protocols`. Decisions are pure functions returning frozen plans
(`outbound.build_request`, `inbound.decide_inbound`, `inbound.decide_plaintext`); the proxies
execute them. Sockets come through the `SocketFactory` seam, flow records go to a `FlowSink`.
"""

from nodemesh.capture.rules import INPOD_MARK
from nodemesh.capture.sockets import HostSocketFactory, SocketFactory
from nodemesh.nodeproxy.flow import (
    ConnectionRecord,
    Direction,
    FlowSink,
    FlowVerdict,
    ListSink,
    NullSink,
    SecurityPolicy,
)
from nodemesh.nodeproxy.inbound import (
    InboundPlan,
    InboundProxy,
    InboundRequest,
    decide_inbound,
    decide_plaintext,
)
from nodemesh.nodeproxy.outbound import OutboundKind, OutboundPlan, OutboundProxy, build_request
from nodemesh.nodeproxy.pool import HbonePool, PoolKey, PoolSettings
from nodemesh.nodeproxy.registry import ConnectionRegistry, Revocation, TrackedConnection
from nodemesh.nodeproxy.relay import StreamRelay, TcpRelay
from nodemesh.nodeproxy.runtime import TaskSet, new_event_loop, tune_allocator
from nodemesh.nodeproxy.socket_factory import LISTEN_BACKLOG, OriginalDestination
from nodemesh.nodeproxy.tls import CredentialStore, IdentityError, WorkloadCertificate
from nodemesh.nodeproxy.tunnel import HboneTunnel, StreamHandler, TunnelClosedError

__all__ = [
    "INPOD_MARK",
    "LISTEN_BACKLOG",
    "ConnectionRecord",
    "ConnectionRegistry",
    "CredentialStore",
    "Direction",
    "FlowSink",
    "FlowVerdict",
    "HbonePool",
    "HboneTunnel",
    "HostSocketFactory",
    "IdentityError",
    "InboundPlan",
    "InboundProxy",
    "InboundRequest",
    "ListSink",
    "NullSink",
    "OriginalDestination",
    "OutboundKind",
    "OutboundPlan",
    "OutboundProxy",
    "PoolKey",
    "PoolSettings",
    "Revocation",
    "SecurityPolicy",
    "SocketFactory",
    "StreamHandler",
    "StreamRelay",
    "TaskSet",
    "TcpRelay",
    "TrackedConnection",
    "TunnelClosedError",
    "WorkloadCertificate",
    "build_request",
    "decide_inbound",
    "decide_plaintext",
    "new_event_loop",
    "tune_allocator",
]
