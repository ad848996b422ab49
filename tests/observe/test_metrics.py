"""Istio's TCP metrics from flow records, and a real scrape of the /metrics endpoint."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodemesh.observe.flow import FlowService, HttpFlow, Reporter, TrafficDirection, Verdict
from nodemesh.observe.metrics import (
    DEFAULT_METRICS_PORT,
    LABELS,
    MetricsServer,
    MetricsThread,
    TcpMetrics,
    canonical_service,
    response_flags,
    tcp_labels,
)

from .strategies import flow, pod

TCP_METRICS = {
    "istio_tcp_connections_opened",
    "istio_tcp_connections_closed",
    "istio_tcp_sent_bytes",
    "istio_tcp_received_bytes",
}


def test_label_set_is_ztunnels_common_traffic_labels() -> None:
    """istio-ambient.md §5.1: labels on the TCP metrics (`CommonTrafficLabels`, in this order),
    locality labels only when known (never here)."""
    assert LABELS == (
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    )
    assert DEFAULT_METRICS_PORT == 15020


def test_labels_of_an_mtls_flow() -> None:
    """ztunnel metrics.rs: missing values are `unknown`; `source_app`/`source_version` are the
    canonical name/revision; `destination_service` is the Service hostname; `request_protocol` is
    `tcp`; `connection_security_policy` is `mutual_tls` for HBONE, `unknown` for plain TCP."""
    f = flow(
        source=pod("shop", "frontend-0", workload="frontend", sa="frontend", labels=("k8s:app=frontend",)),
        destination_service=FlowService("shop", "orders"),
    )
    labels = dict(zip(LABELS, tcp_labels(f), strict=True))
    assert labels == {
        "reporter": "destination",
        "source_workload": "frontend",
        "source_canonical_service": "frontend",
        "source_canonical_revision": "latest",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/frontend",
        "source_app": "frontend",
        "source_version": "latest",
        "source_cluster": "unknown",
        "destination_service": "orders.shop.svc.cluster.local",
        "destination_service_namespace": "shop",
        "destination_service_name": "orders",
        "destination_workload": "orders",
        "destination_canonical_service": "orders",
        "destination_canonical_revision": "latest",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/orders",
        "destination_app": "orders",
        "destination_version": "latest",
        "destination_cluster": "unknown",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    plain = dict(zip(LABELS, tcp_labels(flow(mtls=False, source=pod("x", "y", workload="y"))), strict=True))
    assert plain["connection_security_policy"] == "unknown" and plain["source_principal"] == "unknown"
    assert plain["destination_service"] == "unknown"


def test_canonical_service_fallbacks() -> None:
    """Istio `labels.CanonicalService`: "For canonical name, `app.kubernetes.io/name` is checked,
    then `app`, eventually falling back to the supplied `workloadName`. For canonical revision,
    `app.kubernetes.io/version` is checked, followed by `version` and finally defaulting to the
    literal value of "latest"" (after the `service.istio.io/canonical-*` labels)."""

    def cs(*labels: str) -> tuple[str, str]:
        return canonical_service(pod("shop", "w-0", workload="w", labels=labels))

    assert cs() == ("w", "latest")
    assert cs("k8s:app=a", "k8s:version=v1") == ("a", "v1")
    assert cs("k8s:app=a", "k8s:app.kubernetes.io/name=n", "k8s:app.kubernetes.io/version=2") == ("n", "2")
    assert cs(
        "k8s:app=a",
        "k8s:service.istio.io/canonical-name=c",
        "k8s:service.istio.io/canonical-revision=r",
        "k8s:version=v1",
    ) == ("c", "r")


def test_response_flags() -> None:
    """ztunnel `ResponseFlags`: `-` none, `DENY` "connection denied due to policy", `CONNECT`
    "connection denied because we could not establish an upstream connection"."""
    assert response_flags(flow()) == "-"
    assert response_flags(flow(verdict=Verdict.DROPPED)) == "DENY"
    assert response_flags(flow(verdict=Verdict.DROPPED, drop_reason="POLICY_DENY")) == "DENY"
    assert response_flags(flow(verdict=Verdict.DROPPED, drop_reason="TLS_FAILURE")) == "CONNECT"
    assert response_flags(flow(error="connection refused")) == "CONNECT"
    assert response_flags(flow(verdict=Verdict.AUDIT, drop_reason="POLICY_DENIED")) == "-"


def test_bytes_directions_and_counts() -> None:
    """ztunnel: `tcp_received_bytes` is "The size of total bytes received during request",
    `tcp_sent_bytes` "... sent during response": request bytes (source -> destination) count as
    received, response bytes as sent. A completed connection counts as opened and closed; an L7
    record is not a TCP connection."""
    m = TcpMetrics()
    f = flow(bytes_sent=100, bytes_received=2500)
    key = tcp_labels(f)
    assert m.record(f) and m.record(f)
    assert m.value("istio_tcp_received_bytes_total", key) == 200
    assert m.value("istio_tcp_sent_bytes", key) == 5000
    assert m.value("istio_tcp_connections_opened_total", key) == 2
    assert m.value("istio_tcp_connections_closed_total", key) == 2
    assert not m.record(flow(http=HttpFlow("GET", "/")))
    m.record_open(f)
    assert m.value("istio_tcp_connections_opened", key) == 3
    assert m.value("istio_tcp_connections_closed", key) == 2
    m.record_close(f)
    assert m.value("istio_tcp_connections_closed", key) == 3
    assert not m.record_open(flow(http=HttpFlow("GET", "/"))) and not m.record_close(
        flow(http=HttpFlow("GET", "/"))
    )


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", *args, url],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_metrics_endpoint_scraped_with_curl() -> None:
    """istio-ambient.md §5.1: metrics are served on port 15020 with the `istio_` prefix; counters
    get `_total`. A real HTTP server scraped by curl, parsed by prometheus_client's text parser;
    `/stats/prometheus` (Istio's merged path) serves the same; other paths are 404."""
    m = TcpMetrics()
    allowed = flow(bytes_sent=10, bytes_received=20)
    denied = flow(
        verdict=Verdict.DROPPED,
        reporter=Reporter.SOURCE,
        direction=TrafficDirection.EGRESS,
        source=pod("shop", "reporting-0", sa="reporting", workload="reporting"),
    )
    m.record(allowed)
    m.record(denied)
    with MetricsThread(m, host="127.0.0.1", port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        r = curl(base + "/metrics")
        assert r.returncode == 0, r.stderr
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200"
        samples = scrape(body)
        assert set(samples) == {f"{n}_total" for n in TCP_METRICS}  # and no `_created` series
        opened = {s[0]["reporter"]: s for s in samples["istio_tcp_connections_opened_total"]}
        assert set(opened["destination"][0]) == set(LABELS)
        assert opened["destination"][1] == 1
        assert opened["source"][0]["response_flags"] == "DENY"
        assert opened["source"][0]["source_workload"] == "reporting"
        received = samples["istio_tcp_received_bytes_total"]
        assert {(s[0]["reporter"], s[1]) for s in received} == {("destination", 10.0), ("source", 0.0)}
        stats = curl(base + "/stats/prometheus?x=1")
        assert stats.stdout.rpartition("\n")[2] == "200"
        assert scrape(stats.stdout.rpartition("\n")[0]) == samples
        assert curl(base + "/nope").stdout.endswith("404")
        assert curl(base + "/metrics", "-X", "POST").stdout.endswith("405")
        head = curl(base + "/metrics", "-I")
        assert head.stdout.endswith("200") and "text/plain" in head.stdout
        om = curl(base + "/metrics", "-H", "Accept: application/openmetrics-text; version=1.0.0")
        assert "# EOF" in om.stdout
    assert curl(base + "/metrics").returncode != 0  # stopped: nothing listens any more


def test_metrics_server_on_a_running_loop() -> None:
    """The same endpoint served from the agent's own asyncio loop (no thread)."""

    async def main() -> str:
        m = TcpMetrics()
        m.record(flow())
        server = MetricsServer(m, host="127.0.0.1", port=0)
        await server.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                "curl",
                "-sS",
                "--max-time",
                "5",
                f"http://127.0.0.1:{server.port}/metrics",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            return out.decode()
        finally:
            await server.close()

    samples = scrape(asyncio.run(main()))
    assert samples["istio_tcp_connections_closed_total"][0][1] == 1


def test_port_in_use_is_reported() -> None:
    """Binding errors surface from start(), not silently in the thread."""
    m = TcpMetrics()
    with MetricsThread(m, host="127.0.0.1", port=0) as first, pytest.raises(OSError):
        MetricsThread(m, host="127.0.0.1", port=first.port).start()
    with pytest.raises(RuntimeError):
        _ = MetricsServer(m).port
