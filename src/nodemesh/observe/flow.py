"""The flow record: one per connection at each end (and, from a waypoint, one per HTTP request).

Every data path (the ambient node proxy, the waypoint, the kernel path) reports what it saw as a
`Flow`, a frozen value with fixed field names. Its JSON shape follows Hubble's
`observer.GetFlowsResponse` / `flow.Flow` (cilium/cilium `api/v1/flow/flow.proto`, printed by
`hubble observe -o json` with proto field names) wherever a field means the same thing, so that
what a user knows from `hubble observe -o json | jq` holds here:

    {"flow": {"time": ..., "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED",
              "IP": {"source", "destination", "ipVersion", "encrypted"},
              "l4": {"TCP": {"source_port", "destination_port"}},
              "source": {"namespace", "pod_name", "labels", "workloads", "cluster_name"}, ...,
              "Type": "L3_L4", "node_name", "traffic_direction": "INGRESS",
              "destination_service": {"name", "namespace"},
              "ingress_denied_by": [{"kind", "namespace", "name", "rule"}], "l7": {...}},
     "node_name": ..., "time": ...}

The fields Hubble has no equivalent for come from ztunnel's access log (istio/ztunnel
`src/proxy/metrics.rs`): the reporter (`source`/`destination`/`waypoint`), the HBONE target
(`dst.hbone_addr`), bytes each way, the duration, the error, plus the endpoint's SPIFFE
`principal` (Hubble's `identity` is a numeric Cilium identity, so it is not reused). docs/observe.md
is the schema's reference.

Invariants (checked on construction): `time` is timezone-aware and kept in UTC; byte counts,
durations and ports are non-negative; a FORWARDED flow has no drop reason; a DROPPED one has one.
Bytes are counted from the source workload's point of view, whoever reports: `bytes_sent` went
from source to destination (the request direction), `bytes_received` came back. ztunnel's access
log flips these on the inbound side (istio/istio#32399); we do not.

Time is an argument: nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum

from nodemesh.policy.decision import Decision
from nodemesh.policy.flow import Endpoint
from nodemesh.policy.flow import Protocol as L4Protocol

__all__ = [
    "DROP_REASON_CODES",
    "Flow",
    "FlowEndpoint",
    "FlowFormatError",
    "FlowPolicy",
    "FlowService",
    "FlowType",
    "HttpFlow",
    "L4Protocol",
    "Reporter",
    "TrafficDirection",
    "Verdict",
    "format_time",
    "parse_time",
    "with_decision",
]


class FlowFormatError(ValueError):
    """A JSON document that is not a flow record of the documented shape."""


class Verdict(Enum):
    """Hubble's verdicts (flow.proto `Verdict`) that a nodemesh data path emits."""

    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"
    AUDIT = "AUDIT"  # a would-be drop, forwarded because enforcement is in audit mode


class TrafficDirection(Enum):
    """Hubble's `traffic_direction`: EGRESS at the source's end, INGRESS at the destination's."""

    INGRESS = "INGRESS"
    EGRESS = "EGRESS"


class Reporter(Enum):
    """Who reports the flow: Istio's `reporter` label (ztunnel `Reporter`, waypoints `waypoint`)."""

    SOURCE = "source"
    DESTINATION = "destination"
    WAYPOINT = "waypoint"


class FlowType(Enum):
    """Hubble's `Type`: L3_L4 for a connection, L7 for a request seen by a proxy."""

    L3_L4 = "L3_L4"
    L7 = "L7"


# Hubble's numeric drop codes (flow.proto DropReason), emitted beside `drop_reason_desc`.
DROP_REASON_CODES: Mapping[str, int] = {
    "POLICY_DENIED": 133,
    "POLICY_DENY": 181,
    "AUTH_REQUIRED": 189,
    "UNENCRYPTED_TRAFFIC": 195,
}


@dataclass(frozen=True, slots=True)
class FlowEndpoint:
    """One end of a flow, as Hubble's `Endpoint` plus the address and port of `IP`/`l4`.

    `identity` is the SPIFFE id with its scheme (`spiffe://cluster.local/ns/shop/sa/frontend`),
    set only when it was verified (the peer's mTLS certificate, or the reporter's own SVID), as
    ztunnel logs `src.identity` only for mTLS. `labels` are Hubble-style `source:key=value`
    strings (`k8s:app=orders`, `reserved:world`), kept sorted. `workload` is the owner's name
    (the Deployment), `pod` the pod's own name.
    """

    namespace: str | None = None
    pod: str | None = None
    workload: str | None = None
    workload_kind: str | None = None
    identity: str | None = None
    address: str | None = None
    port: int = 0
    labels: tuple[str, ...] = ()
    cluster: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.workload_kind is not None and self.workload is None:
            raise ValueError("workload_kind without a workload")
        if list(self.labels) != sorted(self.labels):
            object.__setattr__(self, "labels", tuple(sorted(self.labels)))

    @classmethod
    def from_policy(
        cls,
        ep: Endpoint,
        *,
        port: int = 0,
        workload_kind: str | None = None,
        cluster: str | None = None,
    ) -> FlowEndpoint:
        """The flow endpoint for a policy `Endpoint` (what `World.endpoint` builds).

        The identity is the endpoint's verified principal (None for plaintext); its labels are
        its Cilium identity labels, which is what Hubble prints as an endpoint's `labels`.
        """
        labels = tuple(f"{k}={v}" if v != "" else k for k, v in ep.identity_labels.items())
        return cls(
            namespace=ep.namespace,
            pod=ep.pod,
            workload=ep.workload,
            workload_kind=workload_kind,
            identity=f"spiffe://{ep.principal}" if ep.principal else None,
            address=str(ep.ip) if ep.ip is not None else None,
            port=port,
            labels=labels,
            cluster=cluster,
        )

    def label(self, key: str) -> str | None:
        """The value of a pod label (`app`), looked up among the `k8s:` labels."""
        for item in self.labels:
            name, _, value = item.partition("=")
            if name == f"k8s:{key}":
                return value
        return None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None and self.pod is not None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.pod is not None:
            out["pod_name"] = self.pod
        if self.labels:
            out["labels"] = list(self.labels)
        if self.workload is not None:
            wl: dict[str, object] = {"name": self.workload}
            if self.workload_kind is not None:
                wl["kind"] = self.workload_kind
            out["workloads"] = [wl]
        if self.cluster is not None:
            out["cluster_name"] = self.cluster
        if self.identity is not None:
            out["principal"] = self.identity
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, object], address: str | None, port: int) -> FlowEndpoint:
        workloads = _list(raw, "workloads")
        workload = kind = None
        if workloads:
            first = workloads[0]
            if not isinstance(first, Mapping):
                raise FlowFormatError("workloads[0] must be an object")
            workload = _opt_str(first, "name")
            kind = _opt_str(first, "kind")
        labels = _list(raw, "labels")
        if not all(isinstance(x, str) for x in labels):
            raise FlowFormatError("labels must be strings")
        return cls(
            namespace=_opt_str(raw, "namespace"),
            pod=_opt_str(raw, "pod_name"),
            workload=workload,
            workload_kind=kind,
            identity=_opt_str(raw, "principal"),
            address=address,
            port=port,
            labels=tuple(str(x) for x in labels),
            cluster=_opt_str(raw, "cluster_name"),
        )


@dataclass(frozen=True, slots=True)
class FlowService:
    """Hubble's `Service` {name, namespace}: the Service the source addressed."""

    namespace: str
    name: str

    def hostname(self, cluster_domain: str = "cluster.local") -> str:
        """The FQDN Istio reports as `destination_service`."""
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"


@dataclass(frozen=True, slots=True)
class FlowPolicy:
    """The policy that decided (Hubble's `Policy` {kind, namespace, name}) and its rule index.

    `rule` is None when no single rule decided: a default deny ("allow policies exist, but none
    allowed") names the first ALLOW policy that selected the workload, without a rule.
    """

    kind: str
    namespace: str
    name: str
    rule: int | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}" + (f" rule {self.rule}" if self.rule is not None else "")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "namespace": self.namespace, "name": self.name}
        if self.rule is not None:
            out["rule"] = self.rule
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> FlowPolicy:
        rule = raw.get("rule")
        if rule is not None and (not isinstance(rule, int) or isinstance(rule, bool)):
            raise FlowFormatError("policy rule must be an integer")
        return cls(_str(raw, "kind"), _opt_str(raw, "namespace") or "", _str(raw, "name"), rule)


@dataclass(frozen=True, slots=True)
class HttpFlow:
    """An HTTP request seen by a proxy (Hubble's `l7.http`), with its response if one came.

    `path` is the request target as sent (`/api/v1/orders/7?x=1`), `status` the response code
    (None when no response was seen, as Hubble leaves `code` unset on a REQUEST record),
    `latency_ns` the time from request to response.
    """

    method: str
    path: str
    status: int | None = None
    latency_ns: int = 0
    protocol: str = "HTTP/1.1"

    def __post_init__(self) -> None:
        if self.latency_ns < 0:
            raise ValueError("latency_ns must be >= 0")

    def to_dict(self) -> dict[str, object]:
        http: dict[str, object] = {"method": self.method, "url": self.path, "protocol": self.protocol}
        if self.status is not None:
            http["code"] = self.status
        return {
            "type": "RESPONSE" if self.status is not None else "REQUEST",
            "latency_ns": self.latency_ns,
            "http": http,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> HttpFlow:
        http = _obj(raw, "http")
        return cls(
            method=_str(http, "method"),
            path=_str(http, "url"),
            status=_opt_int(http, "code"),
            latency_ns=_int(raw, "latency_ns"),  # Hubble prints uint64 as a string: both accepted
            protocol=_opt_str(http, "protocol") or "HTTP/1.1",
        )


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow record. See the module docstring and docs/observe.md for the JSON shape."""

    time: datetime
    node: str
    reporter: Reporter
    direction: TrafficDirection
    source: FlowEndpoint
    destination: FlowEndpoint
    verdict: Verdict = Verdict.FORWARDED
    drop_reason: str | None = None
    policy: FlowPolicy | None = None
    reason: str = ""
    mtls: bool = False
    protocol: L4Protocol = L4Protocol.TCP
    hbone_target: str | None = None
    destination_service: FlowService | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_ns: int = 0
    error: str | None = None
    http: HttpFlow | None = field(default=None)

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("flow time must be timezone-aware")
        if self.time.tzinfo is not UTC:
            object.__setattr__(self, "time", self.time.astimezone(UTC))
        for name in ("bytes_sent", "bytes_received", "duration_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.verdict is Verdict.FORWARDED and self.drop_reason is not None:
            raise ValueError("a FORWARDED flow has no drop reason")
        if self.verdict is Verdict.DROPPED and not self.drop_reason:
            raise ValueError("a DROPPED flow needs a drop reason (Hubble's drop_reason_desc)")

    @property
    def type(self) -> FlowType:
        return FlowType.L7 if self.http is not None else FlowType.L3_L4

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """The `flow` object of a Hubble GetFlowsResponse; absent optional fields are omitted."""
        out: dict[str, object] = {"time": format_time(self.time), "verdict": self.verdict.value}
        if self.drop_reason is not None:
            code = DROP_REASON_CODES.get(self.drop_reason)
            if code is not None:
                out["drop_reason"] = code
            out["drop_reason_desc"] = self.drop_reason
        ip = _ip_dict(self.source.address, self.destination.address, self.mtls)
        if ip:
            out["IP"] = ip
        ports: dict[str, object] = {}
        if self.source.port:
            ports["source_port"] = self.source.port
        if self.destination.port:
            ports["destination_port"] = self.destination.port
        out["l4"] = {self.protocol.value: ports}
        out["source"] = self.source.to_dict()
        out["destination"] = self.destination.to_dict()
        out["Type"] = self.type.value
        out["node_name"] = self.node
        out["traffic_direction"] = self.direction.value
        if self.destination_service is not None:
            out["destination_service"] = {
                "name": self.destination_service.name,
                "namespace": self.destination_service.namespace,
            }
        if self.policy is not None:
            out[_policy_key(self.direction, self.verdict)] = [self.policy.to_dict()]
        if self.http is not None:
            out["l7"] = self.http.to_dict()
        out["reporter"] = self.reporter.value
        if self.hbone_target is not None:
            out["hbone_target"] = self.hbone_target
        out["bytes_sent"] = self.bytes_sent
        out["bytes_received"] = self.bytes_received
        out["duration_ns"] = self.duration_ns
        if self.reason:
            out["reason"] = self.reason
        if self.error is not None:
            out["error"] = self.error
        return out

    def to_json(self) -> str:
        """One JSON line: `{"flow": {...}, "node_name": ..., "time": ...}` (GetFlowsResponse)."""
        envelope = {"flow": self.to_dict(), "node_name": self.node, "time": format_time(self.time)}
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Flow:
        """Parse a `flow` object; raises FlowFormatError on anything not of the documented shape."""
        try:
            return cls._from_dict(raw)
        except FlowFormatError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise FlowFormatError(str(exc)) from exc

    @classmethod
    def _from_dict(cls, raw: Mapping[str, object]) -> Flow:
        ip = _obj(raw, "IP") if "IP" in raw else {}
        l4 = _obj(raw, "l4") if "l4" in raw else {}
        protocol = L4Protocol.TCP
        ports: Mapping[str, object] = {}
        if l4:
            if len(l4) != 1:
                raise FlowFormatError("l4 must name exactly one protocol")
            name, value = next(iter(l4.items()))
            protocol = L4Protocol(name)
            if not isinstance(value, Mapping):
                raise FlowFormatError("l4 protocol value must be an object")
            ports = value
        direction = TrafficDirection(_str(raw, "traffic_direction"))
        verdict = Verdict(_str(raw, "verdict"))
        # a Hubble flow has no reporter: EGRESS is observed at the source, INGRESS at the destination
        default = Reporter.SOURCE if direction is TrafficDirection.EGRESS else Reporter.DESTINATION
        reporter = Reporter(_opt_str(raw, "reporter") or default.value)
        policy = None
        for key in _POLICY_KEYS:
            entries = _list(raw, key)
            if entries:
                if not isinstance(entries[0], Mapping):
                    raise FlowFormatError(f"{key}[0] must be an object")
                policy = FlowPolicy.from_dict(entries[0])
                break
        svc = None
        if "destination_service" in raw:
            s = _obj(raw, "destination_service")
            svc = FlowService(_opt_str(s, "namespace") or "", _str(s, "name"))
        return cls(
            time=parse_time(_str(raw, "time")),
            node=_opt_str(raw, "node_name") or "",
            reporter=reporter,
            direction=direction,
            source=FlowEndpoint.from_dict(
                _obj(raw, "source") if "source" in raw else {},
                _opt_str(ip, "source"),
                _opt_int(ports, "source_port") or 0,
            ),
            destination=FlowEndpoint.from_dict(
                _obj(raw, "destination") if "destination" in raw else {},
                _opt_str(ip, "destination"),
                _opt_int(ports, "destination_port") or 0,
            ),
            verdict=verdict,
            drop_reason=_opt_str(raw, "drop_reason_desc"),
            policy=policy,
            reason=_opt_str(raw, "reason") or "",
            mtls=_bool(ip, "encrypted"),
            protocol=protocol,
            hbone_target=_opt_str(raw, "hbone_target"),
            destination_service=svc,
            bytes_sent=_int(raw, "bytes_sent"),
            bytes_received=_int(raw, "bytes_received"),
            duration_ns=_int(raw, "duration_ns"),
            error=_opt_str(raw, "error"),
            http=HttpFlow.from_dict(_obj(raw, "l7")) if "l7" in raw else None,
        )

    @classmethod
    def from_json(cls, text: str) -> Flow:
        """Parse one JSON line: a GetFlowsResponse envelope (`{"flow": ...}`) or a bare flow."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FlowFormatError(f"not JSON: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise FlowFormatError("a flow record is a JSON object")
        inner = raw.get("flow", raw)
        if not isinstance(inner, Mapping):
            raise FlowFormatError("`flow` must be an object")
        return cls.from_dict(inner)


def with_decision(flow: Flow, decision: Decision, *, audit: bool = False) -> Flow:
    """The flow with the verdict, drop reason, deciding policy and rule of a policy `Decision`.

    An allow is FORWARDED; a deny is DROPPED with the decision's drop reason (Cilium's
    POLICY_DENY for an explicit deny, POLICY_DENIED for a default deny), or AUDIT when `audit`
    is set (Cilium's policy audit mode: "would-be drops are forwarded and emitted with verdict
    AUDIT"). The policy is the decision's `PolicyRef` with its rule index.
    """
    policy = None
    if decision.policy is not None:
        ref = decision.policy
        policy = FlowPolicy(ref.kind, ref.namespace, ref.name, decision.rule)
    if decision.allowed:
        verdict, drop = Verdict.FORWARDED, None
    else:
        drop = decision.drop_reason.value if decision.drop_reason is not None else "POLICY_DENIED"
        verdict = Verdict.AUDIT if audit else Verdict.DROPPED
    return replace(flow, verdict=verdict, drop_reason=drop, policy=policy, reason=decision.reason)


# ---- time ------------------------------------------------------------------------------------
def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with microseconds and `Z`, as protojson prints a Timestamp."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """RFC 3339 with `Z` or an offset; a fraction finer than microseconds is truncated."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FlowFormatError(f"bad RFC 3339 time: {text!r}") from exc
    if t.tzinfo is None:
        raise FlowFormatError(f"RFC 3339 time needs `Z` or an offset: {text!r}")
    return t.astimezone(UTC)


# ---- helpers ---------------------------------------------------------------------------------
_POLICY_KEYS = ("ingress_denied_by", "egress_denied_by", "ingress_allowed_by", "egress_allowed_by")


def _policy_key(direction: TrafficDirection, verdict: Verdict) -> str:
    side = "denied" if verdict is not Verdict.FORWARDED else "allowed"
    return f"{direction.value.lower()}_{side}_by"


def _ip_dict(src: str | None, dst: str | None, encrypted: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    if src is not None:
        out["source"] = src
    if dst is not None:
        out["destination"] = dst
    version = None
    for addr in (src, dst):
        if addr is None:
            continue
        try:
            version = f"IPv{ipaddress.ip_address(addr).version}"
        except ValueError:
            continue
        break
    if version is not None:
        out["ipVersion"] = version
    if encrypted:
        out["encrypted"] = True
    return out


def _obj(raw: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise FlowFormatError(f"`{key}` must be an object")
    return value


def _list(raw: Mapping[str, object], key: str) -> list[object]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise FlowFormatError(f"`{key}` must be a list")
    return value


def _str(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise FlowFormatError(f"`{key}` must be a string")
    return value


def _opt_str(raw: Mapping[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise FlowFormatError(f"`{key}` must be a string")
    return value


def _opt_int(raw: Mapping[str, object], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():  # protojson prints uint64 as a string
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FlowFormatError(f"`{key}` must be an integer")
    return value


def _int(raw: Mapping[str, object], key: str) -> int:
    return _opt_int(raw, key) or 0


def _bool(raw: Mapping[str, object], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise FlowFormatError(f"`{key}` must be a boolean")
    return value
