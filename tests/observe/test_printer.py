"""Compact output, in the spirit of `hubble observe -o compact`."""

from __future__ import annotations

from datetime import UTC, datetime

from nodemesh.observe.flow import FlowEndpoint, FlowPolicy, HttpFlow, Reporter, TrafficDirection, Verdict
from nodemesh.observe.printer import compact, format_bytes, format_duration, json_line

from .strategies import flow

FRONTEND = "shop/frontend-0:41234 (spiffe://cluster.local/ns/shop/sa/frontend)"
ORDERS = "shop/orders-0:8080 (spiffe://cluster.local/ns/shop/sa/orders)"


def test_forwarded_line() -> None:
    """cilium.md §2.2: `TIMESTAMP [node]: SRC (identity) -> DST (identity) TYPE VERDICT (SUMMARY)`,
    the time in StampMilli (`Jan _2 15:04:05.000`), `to-endpoint` at the destination; nodemesh
    appends bytes each way and the duration (ztunnel's access log `bytes_sent`, `bytes_recv`,
    `duration`)."""
    f = flow(bytes_sent=1229, bytes_received=3482, duration_ns=12_300_000)
    assert compact(f) == (
        f"Nov 27 09:12:01.123: {FRONTEND} -> {ORDERS} to-endpoint FORWARDED (TCP) 1.2 KB/3.4 KB 12ms"
    )
    assert compact(f, node_name=True).startswith("Nov 27 09:12:01.123 [node-1]: ")
    early = flow(time=datetime(2026, 11, 5, 1, 2, 3, 4000, tzinfo=UTC))
    assert compact(early).startswith("Nov  5 01:02:03.004: ")  # `_2`: a space-padded day


def test_source_side_goes_into_the_tunnel() -> None:
    """Hubble's observation points: `to-overlay` is the tunnel (here HBONE), `to-stack` plain TCP."""
    out = flow(reporter=Reporter.SOURCE, direction=TrafficDirection.EGRESS, hbone_target="10.0.2.7:8080")
    assert " to-overlay FORWARDED (TCP) " in compact(out)
    plain = flow(
        reporter=Reporter.SOURCE,
        direction=TrafficDirection.EGRESS,
        mtls=False,
        destination=FlowEndpoint(address="93.184.216.34", port=443, labels=("reserved:world",)),
    )
    assert "-> 93.184.216.34:443 (world) to-stack FORWARDED" in compact(plain)


def test_drop_names_policy_and_rule_or_reason() -> None:
    """Issue 5: a drop names the policy and rule that decided, or "allow policies exist, but none
    allowed"; TYPE is the drop reason in Hubble's words (pkg/monitor/api/drop.go: 181 "Policy
    denied by denylist", 133 "Policy denied")."""
    explicit = flow(
        verdict=Verdict.DROPPED,
        drop_reason="POLICY_DENY",
        policy=FlowPolicy("AuthorizationPolicy", "shop", "x", 0),
        reason="explicitly denied by: shop/x (DENY rule 0)",
    )
    assert compact(explicit).endswith(
        f"-> {ORDERS} Policy denied by denylist DROPPED (POLICY_DENY: AuthorizationPolicy shop/x rule 0)"
    )
    default = flow(
        verdict=Verdict.DROPPED,
        policy=FlowPolicy("AuthorizationPolicy", "shop", "x"),
        reason="allow policies exist, but none allowed (ALLOW policies: shop/x)",
    )
    assert compact(default).endswith(
        "Policy denied DROPPED (POLICY_DENIED: allow policies exist, but none allowed (ALLOW policies: shop/x))"
    )
    failed = flow(verdict=Verdict.DROPPED, drop_reason="TLS_FAILURE", error="certificate expired")
    assert compact(failed).endswith(
        'TLS_FAILURE DROPPED (TLS_FAILURE: certificate expired) error="certificate expired"'
    )


def test_audit_and_l7() -> None:
    """Cilium audit mode forwards would-be drops as AUDIT; an L7 record prints Hubble's
    `http-response` summary `<proto> <code> <ms>ms (<METHOD> <url>)`."""
    audit = flow(verdict=Verdict.AUDIT, drop_reason="POLICY_DENIED", reason="no allow rule")
    assert "to-endpoint AUDIT (TCP; would drop, POLICY_DENIED: no allow rule) 0 B/0 B 0.0ms" in compact(audit)
    resp = flow(reporter=Reporter.WAYPOINT, http=HttpFlow("GET", "/api/v1/orders/7", 200, 4_200_000))
    assert compact(resp).endswith("http-response FORWARDED (HTTP/1.1 200 4.2ms (GET /api/v1/orders/7))")
    denied = flow(
        verdict=Verdict.DROPPED,
        http=HttpFlow("DELETE", "/api/v1/orders/7", 403, 1_000_000),
        policy=FlowPolicy("AuthorizationPolicy", "shop", "orders-from-frontend", 0),
    )
    assert "http-response DROPPED (HTTP/1.1 403 1.0ms (DELETE /api/v1/orders/7); POLICY_DENIED: " in compact(
        denied
    )
    assert json_line(resp) == resp.to_json()


def test_sizes_and_durations() -> None:
    """Bytes in powers of 1024; durations in milliseconds like ztunnel's `duration="13ms"`."""
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.0 KB",
        "1.5 KB",
        "5.0 MB",
        "3.0 TB",
    ]
    assert [format_duration(ns) for ns in (0, 400_000, 13_000_000, 12_345_000_000)] == [
        "0.0ms",
        "0.4ms",
        "13ms",
        "12.3s",
    ]
