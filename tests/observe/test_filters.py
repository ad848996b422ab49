"""`nodemesh observe` filters: the semantics of `hubble observe` flags, checked against a
straightforward reading of them on generated flows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.observe.filters import (
    DEFAULT_LAST,
    FilterError,
    FlowQuery,
    PodName,
    build_query,
    parse_duration,
    parse_since,
)
from nodemesh.observe.flow import Flow, FlowEndpoint, Verdict

from .strategies import T0, flow, pod

NOW = T0 + timedelta(hours=1)
NAMESPACES = ["shop", "default", "other"]
PODS = ["frontend-0", "frontend-1", "orders-0", "orders-1", "reporting-0"]

endpoint = st.one_of(
    st.builds(pod, st.sampled_from(NAMESPACES), st.sampled_from(PODS)),
    st.just(FlowEndpoint(address="93.184.216.34", labels=("reserved:world",))),
)
verdict = st.sampled_from(list(Verdict))


@st.composite
def some_flows(draw: st.DrawFn) -> Flow:
    v = draw(verdict)
    return replace(
        flow(verdict=v),
        source=draw(endpoint),
        destination=draw(endpoint),
        drop_reason="POLICY_DENIED" if v is not Verdict.FORWARDED else None,
    )


pod_arg = st.one_of(
    st.sampled_from(["frontend", "orders-1", "reporting", "x"]),
    st.builds(
        lambda ns, p: f"{ns}/{p}",
        st.sampled_from(NAMESPACES),
        st.sampled_from(["", "frontend", "orders", "orders-0"]),
    ),
)


def reference_pod(arg: str, ep: FlowEndpoint) -> bool:
    """Hubble: `[namespace/]<pod-name>` prefix; "If namespace is not provided, 'default' is used"."""
    ns, _, name = arg.rpartition("/")
    ns = ns if "/" in arg else "default"
    return ep.pod is not None and ep.namespace == ns and ep.pod.startswith(name)


def test_pod_name_parsing() -> None:
    """hubble `k8s.ParseNamespaceName`: "If namespace is not specified, the namespace "default"
    is returned"; `ns/` is every pod of ns; an empty filter is invalid ("must be
    [namespace/][<name>]")."""
    assert PodName.parse("shop/frontend") == PodName("shop", "frontend")
    assert PodName.parse("frontend") == PodName("default", "frontend")
    assert PodName.parse("shop/") == PodName("shop", "")
    for bad in ("", "/"):
        with pytest.raises(FilterError, match=r"\[namespace/\]"):
            PodName.parse(bad)
    assert PodName("shop", "front").matches(pod("shop", "frontend-0"))
    assert not PodName("shop", "front").matches(pod("other", "frontend-0"))
    assert PodName("shop", "").matches(pod("shop", "anything"))
    assert not PodName("", "").matches(FlowEndpoint(address="1.2.3.4"))


@given(st.lists(some_flows(), max_size=12), st.lists(pod_arg, min_size=1, max_size=2))
def test_pod_is_either_end(flows: list[Flow], args: list[str]) -> None:
    """hubble observe: `--pod` shows "all flows related to the given pod name prefix": it builds
    a source filter and a destination filter, and either may match; repeating it is OR."""
    q = build_query(now=NOW, pods=args, show_all=True)
    for f in flows:
        expected = any(reference_pod(a, f.source) or reference_pod(a, f.destination) for a in args)
        assert q.matches(f) is expected


@given(st.lists(some_flows(), max_size=12), pod_arg, pod_arg, st.lists(verdict, max_size=2))
def test_from_and_to_pod_and_verdict_are_anded(flows: list[Flow], a: str, b: str, vs: list[Verdict]) -> None:
    """hubble flows_filter.go: `--from-pod` and `--to-pod` are applied to both filters, so they
    AND ("Different flags are AND"); `--verdict` repeated is OR ("The same flag given twice is
    OR")."""
    q = build_query(now=NOW, from_pods=[a], to_pods=[b], verdicts=[v.value for v in vs], show_all=True)
    assert len(q.whitelist) == 1
    for f in flows:
        expected = (
            reference_pod(a, f.source) and reference_pod(b, f.destination) and (not vs or f.verdict in vs)
        )
        assert q.matches(f) is expected


@given(
    st.lists(some_flows(), max_size=12),
    st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=2),
    st.lists(st.sampled_from(["frontend", "orders"]), max_size=1),
)
def test_namespace_either_end(flows: list[Flow], namespaces: list[str], pods: list[str]) -> None:
    """hubble: `--namespace` shows "all flows related to the given Kubernetes namespace": the
    source side in NS OR the destination side in NS; a `--pod` name without a namespace is looked
    up in each `--namespace` given (addNamespacesToFilter)."""
    q = build_query(now=NOW, namespaces=namespaces, pods=pods, show_all=True)
    for f in flows:

        def side(ep: FlowEndpoint) -> bool:
            return ep.namespace in namespaces and (not pods or (ep.pod or "").startswith(pods[0]))

        assert q.matches(f) is (side(f.source) or side(f.destination))


def test_conflicts_are_refused() -> None:
    """hubble flows_filter.go conflict groups: "filters --pod and --from-pod cannot be combined",
    --namespace with --from-pod/--to-pod, a pod in another namespace ("namespace conflict"),
    and "cannot set both --last and --all"."""
    cases = [
        ({"pods": ["a"], "from_pods": ["b"]}, "--from-pod and --pod"),
        ({"pods": ["a"], "to_pods": ["b"]}, "--to-pod and --pod"),
        ({"namespaces": ["shop"], "from_pods": ["b"]}, "--from-pod and --namespace"),
        ({"namespaces": ["shop"], "to_pods": ["b"]}, "--to-pod and --namespace"),
        ({"namespaces": ["shop"], "pods": ["other/x"]}, "namespace conflict"),
        ({"last": 3, "show_all": True}, "--last and --all"),
        ({"verdicts": ["ALLOWED"]}, "invalid --verdict"),
        ({"last": -1}, "--last"),
    ]
    for kw, message in cases:
        with pytest.raises(FilterError, match=message):
            build_query(now=NOW, **kw)  # type: ignore[arg-type]
    q = build_query(now=NOW, namespaces=["shop"], pods=["shop/orders"], show_all=True)
    assert q.matches(flow())


def test_verdict_is_case_insensitive_and_or() -> None:
    """`--verdict DROPPED --verdict AUDIT` shows either (Verdict_value lookup; we also accept
    lower case)."""
    q = build_query(now=NOW, verdicts=["dropped", "AUDIT"], show_all=True)
    assert q.matches(flow(verdict=Verdict.DROPPED))
    assert q.matches(flow(verdict=Verdict.AUDIT, drop_reason="POLICY_DENIED"))
    assert not q.matches(flow())


def test_last_and_follow_defaults() -> None:
    """hubble flows.go: with no --since/--until/--first, "no specific parameters were provided,
    just a vanilla `hubble observe` in non-follow mode" gets `--last 20`; --follow alone starts
    from now; --since shows everything since; --all is every flow."""
    assert build_query(now=NOW).last == DEFAULT_LAST == 20
    assert build_query(now=NOW, follow=True).last == 0
    assert build_query(now=NOW, follow=True, last=5).last == 5
    assert build_query(now=NOW, since="5m").last is None
    assert build_query(now=NOW, show_all=True).last is None
    flows = [flow(at=timedelta(seconds=i)) for i in range(30)]
    picked = build_query(now=NOW).select(reversed(flows))
    assert picked == flows[-20:]
    assert build_query(now=NOW, last=0).select(flows) == []
    assert FlowQuery().select(flows) == flows


def test_go_durations() -> None:
    """`--since` tries Go's time.ParseDuration first: "A duration string is a possibly signed
    sequence of decimal numbers, each with optional fraction and a unit suffix, such as "300ms",
    "-1.5h" or "2h45m". Valid time units are "ns", "us" (or "µs"), "ms", "s", "m", "h"."""
    assert parse_duration("300ms") == timedelta(milliseconds=300)
    assert parse_duration("-1.5h") == -timedelta(minutes=90)
    assert parse_duration("2h45m") == timedelta(hours=2, minutes=45)
    assert parse_duration("1h15m30.5s") == timedelta(hours=1, minutes=15, seconds=30.5)
    assert parse_duration("10µs") == parse_duration("10us") == timedelta(microseconds=10)
    assert parse_duration("0") == timedelta(0)
    for bad in ("", "5", "h", "1x", "1h 2m", ".s", "+"):
        with pytest.raises(FilterError):
            parse_duration(bad)


def test_since_absolute_and_relative() -> None:
    """hubtime.FromString: a duration means that long before now; else the layouts YearMonthDay,
    YearMonthDayHour, YearMonthDayHourMinute, RFC 3339 (any precision) and RFC 1123Z."""
    assert parse_since("5m", NOW) == NOW - timedelta(minutes=5)
    assert parse_since("2026-11-27", NOW) == datetime(2026, 11, 27, tzinfo=UTC)
    assert parse_since("2026-11-27T09Z", NOW) == datetime(2026, 11, 27, 9, tzinfo=UTC)
    assert parse_since("2026-11-27T10:30+01:00", NOW) == datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    assert parse_since("2026-11-27T09:12:01.5Z", NOW) == datetime(2026, 11, 27, 9, 12, 1, 500000, tzinfo=UTC)
    assert parse_since("Fri, 27 Nov 2026 09:00:00 +0000", NOW) == datetime(2026, 11, 27, 9, tzinfo=UTC)
    for bad in ("yesterday", "2026-11-27T09:12:01"):  # RFC 3339 needs an offset
        with pytest.raises(FilterError, match="--since"):
            parse_since(bad, NOW)
    q = build_query(now=NOW, since="1h")
    assert q.since == T0
    assert q.matches(flow()) and not q.matches(flow(at=-timedelta(microseconds=1)))
