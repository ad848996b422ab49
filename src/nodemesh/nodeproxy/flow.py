"""One record per proxied connection, at each end: what the observability pipeline receives.

Fields follow issue 5's list and ztunnel's access log (reference §5.3: `src.addr src.workload
src.namespace src.identity dst.addr dst.hbone_addr dst.service dst.workload dst.namespace
dst.identity direction bytes_sent bytes_recv duration [error]`) plus what Istio's TCP metrics
label (§5.1: `reporter`, `connection_security_policy`, `response_flags`).

- `bytes_sent` is the request direction (client -> server), `bytes_received` the response
  direction, as ztunnel's access log counts them, whichever end reports.
- `verdict` is FORWARDED or DROPPED; a drop names the policy and rule that decided, or says
  "allow policies exist, but none allowed" (ztunnel's wording) when no rule matched.
- `identity` fields are SPIFFE ids and are set only from verified certificates (mTLS).

`FlowSink` is the seam the observe pipeline plugs into: anything with `record(ConnectionRecord)`.
The node proxy calls it once per connection, on the event loop, and must not be slowed by it: a
sink that does I/O should queue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Protocol

from nodemesh.policy.decision import Decision

__all__ = [
    "ConnectionRecord",
    "Direction",
    "FlowSink",
    "FlowVerdict",
    "ListSink",
    "NullSink",
    "SecurityPolicy",
]


class Direction(Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class FlowVerdict(Enum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"


class SecurityPolicy(Enum):
    """Istio's `connection_security_policy` label."""

    MUTUAL_TLS = "mutual_tls"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A finished (or refused) connection as one end of the node proxy saw it."""

    start_time: float
    """Wall-clock seconds (Unix epoch) when the connection arrived."""
    duration: float
    """Seconds from arrival to close."""
    direction: Direction
    src_addr: str
    dst_addr: str
    """Where the bytes went: `podIP:15008` for HBONE outbound, the app address inbound."""
    verdict: FlowVerdict
    src_workload: str | None = None
    src_namespace: str | None = None
    src_identity: str | None = None
    dst_hbone_addr: str | None = None
    """The CONNECT `:authority` (HBONE only)."""
    dst_service: str | None = None
    dst_workload: str | None = None
    dst_namespace: str | None = None
    dst_identity: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    policy: str | None = None
    """`kind/namespace/name` of the policy that decided a drop (or the allow, when one did)."""
    rule: int | None = None
    reason: str = ""
    security_policy: SecurityPolicy = SecurityPolicy.UNKNOWN
    response_flags: str = "-"
    """ztunnel's flags: `-`, `DENY`, `CONNECT`, `TLS_FAILURE`, `IDENTITY_ERROR`, ..."""
    error: str | None = None
    decision: Decision | None = field(default=None, compare=False)
    """The policy decision the record's verdict came from (admission, or the revocation that
    closed it), for observers that need more than `policy`/`rule` (the drop reason)."""

    @property
    def reporter(self) -> str:
        """Istio's `reporter` label: `source` for outbound, `destination` for inbound."""
        return "source" if self.direction is Direction.OUTBOUND else "destination"

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready values (enums as their strings)."""
        out = asdict(self)
        del out["decision"]
        out["direction"] = self.direction.value
        out["verdict"] = self.verdict.value
        out["security_policy"] = self.security_policy.value
        out["reporter"] = self.reporter
        return out


class FlowSink(Protocol):
    """Where connection records go (the observe pipeline implements this)."""

    def record(self, record: ConnectionRecord) -> None: ...


class NullSink:
    def record(self, record: ConnectionRecord) -> None:
        return None


class ListSink:
    """Keeps every record (tests, and a bench's short runs)."""

    def __init__(self) -> None:
        self.records: list[ConnectionRecord] = []

    def record(self, record: ConnectionRecord) -> None:
        self.records.append(record)
