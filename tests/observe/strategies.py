"""Hypothesis strategies and a small builder for flow records, shared by the observe tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from nodemesh.observe.flow import (
    Flow,
    FlowEndpoint,
    FlowPolicy,
    FlowService,
    HttpFlow,
    L4Protocol,
    Reporter,
    TrafficDirection,
    Verdict,
)

T0 = datetime(2026, 11, 27, 9, 12, 1, 123000, tzinfo=UTC)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
any_text = st.text(max_size=30)
ports = st.integers(min_value=0, max_value=65535)
addresses = st.one_of(
    st.none(),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    any_text,
)
offsets = st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23)).map(timezone)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC) | offsets
)

workloads = st.tuples(st.none(), st.none()) | st.tuples(
    names, st.none() | st.sampled_from(["Deployment", "Pod", "deployment"])
)
endpoints = st.builds(
    lambda wl, **kw: FlowEndpoint(workload=wl[0], workload_kind=wl[1], **kw),
    workloads,
    namespace=st.none() | names,
    pod=st.none() | names,
    identity=st.none() | names.map(lambda n: f"spiffe://cluster.local/ns/{n}/sa/{n}"),
    address=addresses,
    port=ports,
    labels=st.lists(any_text.filter(lambda s: s != ""), max_size=4).map(tuple),
    cluster=st.none() | names,
)
policies = st.builds(
    FlowPolicy,
    kind=st.sampled_from(["AuthorizationPolicy", "CiliumNetworkPolicy", "NetworkPolicy"]),
    namespace=st.just("") | names,
    name=names,
    rule=st.none() | st.integers(min_value=0, max_value=50),
)
http_flows = st.builds(
    HttpFlow,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=any_text,
    status=st.none() | st.integers(min_value=100, max_value=599),
    latency_ns=st.integers(min_value=0, max_value=10**12),
    protocol=st.sampled_from(["HTTP/1.1", "HTTP/2"]),
)
counts = st.integers(min_value=0, max_value=2**53)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    verdict = draw(st.sampled_from(list(Verdict)))
    drop = None
    if verdict is Verdict.DROPPED:
        drop = draw(st.sampled_from(["POLICY_DENIED", "POLICY_DENY", "UNENCRYPTED_TRAFFIC", "X_Y"]))
    elif verdict is Verdict.AUDIT:
        drop = draw(st.none() | st.just("POLICY_DENIED"))
    return Flow(
        time=draw(times),
        node=draw(names),
        reporter=draw(st.sampled_from(list(Reporter))),
        direction=draw(st.sampled_from(list(TrafficDirection))),
        source=draw(endpoints),
        destination=draw(endpoints),
        verdict=verdict,
        drop_reason=drop,
        policy=draw(st.none() | policies),
        reason=draw(any_text),
        mtls=draw(st.booleans()),
        protocol=draw(st.sampled_from([L4Protocol.TCP, L4Protocol.UDP, L4Protocol.SCTP])),
        hbone_target=draw(st.none() | any_text),
        destination_service=draw(st.none() | st.builds(FlowService, names, names)),
        bytes_sent=draw(counts),
        bytes_received=draw(counts),
        duration_ns=draw(counts),
        error=draw(st.none() | any_text),
        http=draw(st.none() | http_flows),
    )


def pod(
    ns: str,
    name: str,
    *,
    workload: str | None = None,
    sa: str | None = None,
    ip: str = "10.0.1.5",
    port: int = 0,
    labels: tuple[str, ...] = (),
) -> FlowEndpoint:
    return FlowEndpoint(
        namespace=ns,
        pod=name,
        workload=workload or name.rsplit("-", 1)[0],
        workload_kind="Deployment",
        identity=f"spiffe://cluster.local/ns/{ns}/sa/{sa}" if sa else None,
        address=ip,
        port=port,
        labels=labels,
    )


def flow(
    src: FlowEndpoint | None = None,
    dst: FlowEndpoint | None = None,
    *,
    at: timedelta = timedelta(0),
    verdict: Verdict = Verdict.FORWARDED,
    **kw: object,
) -> Flow:
    """A destination-reported TCP flow from shop/frontend-0 to shop/orders-0:8080 (overridable)."""
    base = Flow(
        time=T0 + at,
        node="node-1",
        reporter=Reporter.DESTINATION,
        direction=TrafficDirection.INGRESS,
        source=src or pod("shop", "frontend-0", sa="frontend", ip="10.0.1.5", port=41234),
        destination=dst or pod("shop", "orders-0", sa="orders", ip="10.0.2.7", port=8080),
        verdict=verdict,
        drop_reason="POLICY_DENIED" if verdict is Verdict.DROPPED else None,
        mtls=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]
