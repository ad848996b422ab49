"""The CONNECT request's fields as Istio writes and reads them (reference §1.3).

- `:authority` (the HBONE target): `<ip>:<port>` (`[v6]:port`) or `<hostname>:<port>`; the server
  parses an IP first, then a hostname (ZT:src/proxy.rs `HboneAddress`).
- `baggage`: `k8s.cluster.name=..,k8s.namespace.name=..,k8s.<workload type>.name=..,service.name=..,
  service.version=..,cloud.region=..,cloud.availability_zone=..`; entries with empty values are
  omitted (ZT:src/baggage.rs).
- `forwarded`: `for="<client ip:port>"`, plus `;host=<service hostname>` when the client addressed
  a Service (ZT:src/proxy/outbound.rs `build_forwarded`).
- `traceparent`: W3C trace context `00-<32 hex trace id>-<16 hex parent id>-00`, random per
  connection (the randomness is an argument here).

Pure: no I/O, no clock, no randomness of its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from nodemesh.protocols.events import Headers

__all__ = [
    "BaggageFields",
    "HboneAddress",
    "baggage_header",
    "connect_headers",
    "connect_target",
    "format_authority",
    "forwarded_header",
    "parse_authority",
    "parse_baggage",
    "parse_forwarded",
    "traceparent_header",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class HboneAddress:
    """A parsed `:authority`: `ip` is set when the host is an IP literal, else it is a hostname."""

    host: str
    port: int
    ip: IPAddress | None = None

    def __str__(self) -> str:
        return format_authority(self.ip if self.ip is not None else self.host, self.port)


def format_authority(host: IPAddress | str, port: int) -> str:
    """`10.0.0.1:8080`, `[fd00::1]:8080` or `orders.shop.svc.cluster.local:8080`."""
    if isinstance(host, ipaddress.IPv6Address):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_authority(text: str) -> HboneAddress:
    """Parse an HBONE target; ValueError if it is not `host:port` with a port in 1..65535."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"invalid authority {text!r}")
        host, port_text = text[1:close], text[close + 2 :]
        ip: IPAddress | None = ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"invalid authority {text!r}: expected host:port")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            ip = None
            if not all(part and part.replace("-", "").isalnum() for part in host.split(".")):
                raise ValueError(f"invalid authority host {host!r}") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid authority port in {text!r}")
    return HboneAddress(str(ip) if ip is not None else host, int(port_text), ip)


def connect_target(method: str, authority: str) -> tuple[IPAddress, int]:
    """The `IP:port` an HBONE request asks for; ValueError (the reason of the 400 a server
    answers) when it is not a CONNECT or its authority is not an IP literal and a port
    (ztunnel `validate_destination`, reference §1.3/§1.7)."""
    if method != "CONNECT":
        raise ValueError(f"method {method} is not CONNECT")
    target = parse_authority(authority)
    if target.ip is None:
        raise ValueError(f"authority {authority} is not an IP address")
    return target.ip, target.port


@dataclass(frozen=True, slots=True)
class BaggageFields:
    """What the source workload tells the destination about itself (ZT:src/baggage.rs)."""

    cluster: str = ""
    namespace: str = ""
    workload_type: str = "pod"  # deployment | cronjob | pod | job
    workload_name: str = ""
    service_name: str = ""
    service_version: str = ""
    region: str = ""
    zone: str = ""


def baggage_header(b: BaggageFields) -> str:
    entries = (
        ("k8s.cluster.name", b.cluster),
        ("k8s.namespace.name", b.namespace),
        (f"k8s.{b.workload_type}.name", b.workload_name),
        ("service.name", b.service_name),
        ("service.version", b.service_version),
        ("cloud.region", b.region),
        ("cloud.availability_zone", b.zone),
    )
    return ",".join(f"{k}={v}" for k, v in entries if v)


def parse_baggage(text: str) -> dict[str, str]:
    """The `key=value` entries of a baggage header (W3C baggage; properties after `;` dropped)."""
    out: dict[str, str] = {}
    for entry in text.split(","):
        key, sep, value = entry.split(";", 1)[0].partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def forwarded_header(client_ip: IPAddress, client_port: int, service_host: str | None = None) -> str:
    """RFC 7239 `for="<ip:port>"` (IPv6 bracketed), `;host=` the Service hostname if any."""
    value = f'for="{format_authority(client_ip, client_port)}"'
    return f"{value};host={service_host}" if service_host else value


def parse_forwarded(text: str) -> tuple[IPAddress | None, str | None]:
    """RFC 7239 §4-5: the first element's `for` address (`"ip:port"`, `"[v6]:port"` or a bare
    IP; None for an obfuscated or unknown node) and its `host` (None when absent)."""
    first = text.split(",", 1)[0]
    client: IPAddress | None = None
    host: str | None = None
    for pair in first.split(";"):
        key, sep, value = pair.strip().partition("=")
        if not sep:
            continue
        value = value.strip().strip('"')
        if key.strip().lower() == "for":
            try:
                client = ipaddress.ip_address(value)
            except ValueError:
                try:
                    client = parse_authority(value).ip
                except ValueError:
                    client = None
        elif key.strip().lower() == "host":
            host = value or None
    return client, host


def traceparent_header(trace_id: int, parent_id: int) -> str:
    """W3C `traceparent` version 00, not sampled; ids are the caller's random numbers."""
    if not 0 < trace_id < 2**128 or not 0 < parent_id < 2**64:
        raise ValueError("trace id must be 1..2^128-1 and parent id 1..2^64-1 (W3C trace context)")
    return f"00-{trace_id:032x}-{parent_id:016x}-00"


def connect_headers(
    baggage: BaggageFields,
    *,
    client_ip: IPAddress,
    client_port: int,
    service_host: str | None,
    trace_id: int,
    parent_id: int,
    extra: Mapping[str, str] | None = None,
) -> Headers:
    """The regular headers of an HBONE CONNECT, in ztunnel's order."""
    headers: list[tuple[str, str]] = []
    bag = baggage_header(baggage)
    if bag:
        headers.append(("baggage", bag))
    headers.append(("forwarded", forwarded_header(client_ip, client_port, service_host)))
    headers.append(("traceparent", traceparent_header(trace_id, parent_id)))
    headers.extend((extra or {}).items())
    return tuple(headers)
