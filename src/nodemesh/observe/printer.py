"""Text renderings of a flow: Hubble's compact line, and JSON lines.

The compact line follows `hubble observe -o compact` (cilium/cilium `hubble/pkg/printer`):

    TIMESTAMP [node]: SOURCE (identity) -> DESTINATION (identity) TYPE VERDICT (SUMMARY)

with the timestamp in Go's StampMilli layout (`Jan _2 15:04:05.000`, UTC), an endpoint printed
as `namespace/pod:port` (or `address:port` outside the cluster; port omitted when 0), and TYPE
the observation point (`to-endpoint` at the destination, `to-overlay` into an HBONE tunnel,
`to-stack` for plain TCP) or, for a drop, the drop reason in words ("Policy denied"), or
`http-request`/`http-response` for an L7 record. nodemesh adds what Hubble has no field for:
the policy and rule that decided (`POLICY_DENY: AuthorizationPolicy shop/x rule 0`, or the
engine's reason when no single rule decided), bytes each way and the duration:

    Nov 27 09:12:01.123: shop/frontend-0:41234 (spiffe://cluster.local/ns/shop/sa/frontend) ->
      shop/orders-0:8080 (spiffe://cluster.local/ns/shop/sa/orders) to-endpoint FORWARDED (TCP)
      1.2 KB/3.4 KB 12ms

Pure functions of the flow; no clock, no I/O.
"""

from __future__ import annotations

from nodemesh.observe.flow import Flow, FlowEndpoint, HttpFlow, Reporter, Verdict

__all__ = ["compact", "format_bytes", "format_duration", "json_line"]

# Hubble's drop reason words (cilium pkg/monitor/api/drop.go) for the reasons nodemesh emits.
_DROP_WORDS = {
    "POLICY_DENIED": "Policy denied",
    "POLICY_DENY": "Policy denied by denylist",
    "AUTH_REQUIRED": "Authentication required",
    "UNENCRYPTED_TRAFFIC": "Unencrypted traffic",
}


def json_line(flow: Flow) -> str:
    """`hubble observe -o json`: one GetFlowsResponse object per line."""
    return flow.to_json()


def compact(flow: Flow, *, node_name: bool = False) -> str:
    """One line in the spirit of `hubble observe -o compact` (see the module docstring)."""
    t = flow.time
    stamp = f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{t.microsecond // 1000:03d}"
    node = f" [{flow.node}]" if node_name else ""
    head = f"{stamp}{node}: {_endpoint(flow.source)} -> {_endpoint(flow.destination)}"
    if flow.http is not None:
        return f"{head} {_l7_type(flow.http)} {flow.verdict.value} ({_l7_summary(flow)})"
    if flow.verdict is Verdict.DROPPED:
        reason = flow.drop_reason or "UNKNOWN"
        words = _DROP_WORDS.get(reason, reason)
        return f"{head} {words} DROPPED ({reason}: {_decider(flow)}){_error(flow)}"
    point = _point(flow)
    if flow.verdict is Verdict.AUDIT:
        would = flow.drop_reason or "POLICY_DENIED"
        summary = f"{flow.protocol.value}; would drop, {would}: {_decider(flow)}"
    else:
        summary = flow.protocol.value
    sizes = f"{format_bytes(flow.bytes_sent)}/{format_bytes(flow.bytes_received)}"
    took = format_duration(flow.duration_ns)
    return f"{head} {point} {flow.verdict.value} ({summary}) {sizes} {took}{_error(flow)}"


def _endpoint(ep: FlowEndpoint) -> str:
    if ep.pod is not None:
        name = f"{ep.namespace}/{ep.pod}" if ep.namespace else ep.pod
    elif ep.address is not None:
        name = f"[{ep.address}]" if ":" in ep.address and ep.port else ep.address
    else:
        name = "<unknown>"
    if ep.port:
        name = f"{name}:{ep.port}"
    if ep.identity is not None:
        return f"{name} ({ep.identity})"
    reserved = [x.removeprefix("reserved:").split("=", 1)[0] for x in ep.labels if x.startswith("reserved:")]
    return f"{name} ({reserved[0]})" if reserved else name


def _point(flow: Flow) -> str:
    if flow.reporter is Reporter.DESTINATION:
        return "to-endpoint"
    return "to-overlay" if flow.mtls or flow.hbone_target else "to-stack"


def _decider(flow: Flow) -> str:
    if flow.policy is not None and flow.policy.rule is not None:
        return str(flow.policy)
    if flow.reason:
        return flow.reason
    if flow.policy is not None:
        return str(flow.policy)
    return flow.error or "no policy named"


def _error(flow: Flow) -> str:
    return f' error="{flow.error}"' if flow.error else ""


def _l7_type(http: HttpFlow) -> str:
    return "http-response" if http.status is not None else "http-request"


def _l7_summary(flow: Flow) -> str:
    http = flow.http
    assert http is not None
    if http.status is not None:
        text = f"{http.protocol} {http.status} {format_duration(http.latency_ns)} ({http.method} {http.path})"
    else:
        text = f"{http.protocol} {http.method} {http.path}"
    if flow.verdict is not Verdict.FORWARDED:
        text += f"; {flow.drop_reason or 'POLICY_DENIED'}: {_decider(flow)}"
    return text


def format_bytes(n: int) -> str:
    """`512 B`, `1.2 KB`, `3.4 MB` (powers of 1024)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(ns: int) -> str:
    """`12ms`, `0.4ms`, `1.5s`: milliseconds as ztunnel's access log prints them, finer below 10."""
    ms = ns / 1e6
    if ms >= 10_000:
        return f"{ms / 1000:.1f}s"
    if ms >= 10:
        return f"{ms:.0f}ms"
    return f"{ms:.1f}ms"
