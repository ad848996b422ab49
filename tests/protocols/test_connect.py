"""The CONNECT request's fields, as ztunnel writes them (reference §1.3)."""

from __future__ import annotations

import ipaddress

import pytest

from nodemesh.protocols import (
    BaggageFields,
    baggage_header,
    connect_headers,
    forwarded_header,
    parse_authority,
    parse_baggage,
    traceparent_header,
)


def test_authority_is_ip_port_or_hostname_port() -> None:
    """ZT:src/proxy.rs HboneAddress: the server parses `:authority` as IP:port or, failing that,
    host:port; IPv6 is bracketed."""
    v4 = parse_authority("10.0.1.5:8080")
    assert v4.ip == ipaddress.IPv4Address("10.0.1.5") and v4.port == 8080
    v6 = parse_authority("[fd00::5]:8080")
    assert v6.ip == ipaddress.IPv6Address("fd00::5") and str(v6) == "[fd00::5]:8080"
    host = parse_authority("orders.shop.svc.cluster.local:80")
    assert host.ip is None and host.host == "orders.shop.svc.cluster.local"
    for bad in ("10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", ":80", "[fd00::1]80", "a b:80", "fd00::1:80"):
        with pytest.raises(ValueError):
            parse_authority(bad)


def test_baggage_omits_empty_values() -> None:
    """ZT:src/baggage.rs: `k8s.cluster.name=..,k8s.namespace.name=..,k8s.<type>.name=..,
    service.name=..,service.version=..`; entries with empty values are omitted."""
    b = BaggageFields(
        cluster="Kubernetes",
        namespace="shop",
        workload_type="deployment",
        workload_name="frontend",
        service_name="frontend",
        service_version="v1",
    )
    text = baggage_header(b)
    assert text == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=frontend,"
        "service.name=frontend,service.version=v1"
    )
    assert parse_baggage(text)["k8s.deployment.name"] == "frontend"


def test_forwarded_names_the_client_and_the_service_host() -> None:
    """ZT:src/proxy/outbound.rs build_forwarded: `for="<remote_addr>"`, plus `;host=<hostname>`
    when the destination is a service."""
    ip = ipaddress.ip_address("10.0.0.7")
    assert forwarded_header(ip, 43512) == 'for="10.0.0.7:43512"'
    assert forwarded_header(ip, 1, "orders.shop.svc.cluster.local") == (
        'for="10.0.0.7:1";host=orders.shop.svc.cluster.local'
    )
    assert forwarded_header(ipaddress.ip_address("fd00::7"), 1) == 'for="[fd00::7]:1"'


def test_traceparent_is_w3c_version_00() -> None:
    """W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<flags>`, 55 characters."""
    value = traceparent_header(0xABC, 0x1)
    assert value == f"00-{0xABC:032x}-{1:016x}-00" and len(value) == 55
    with pytest.raises(ValueError):
        traceparent_header(0, 1)  # an all-zero trace id is invalid


def test_connect_headers_in_ztunnel_order() -> None:
    """ZT:create_hbone_request: baggage, forwarded, traceparent."""
    headers = connect_headers(
        BaggageFields(namespace="shop"),
        client_ip=ipaddress.ip_address("10.0.0.7"),
        client_port=5,
        service_host=None,
        trace_id=7,
        parent_id=9,
    )
    assert [k for k, _ in headers] == ["baggage", "forwarded", "traceparent"]
