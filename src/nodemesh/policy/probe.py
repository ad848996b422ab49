"""Probes: a flow described the way a user types it, resolved against a world.

`--from shop/frontend --to shop/orders --port 8080 --method GET --path /x` and one JSON line of
`nodemesh trace --probes FILE` are the same `Probe`. Resolution rules:

- `NS/NAME` as a source is a workload (Deployment or Pod name) or a pod; as a destination it is
  the Service of that name if one exists (the port is then a Service port, translated to the
  target port of the first endpoint), else a workload (the port is a container port). Prefix
  `service:` or `workload:` to choose explicitly.
- An IP is a pod with that IP (Pods may carry `status.podIP`), a Service ClusterIP, or an
  address outside the cluster (Cilium's `world`; no identity).
- Any of method/path/host/headers/JWT makes the flow an HTTP request (L7); otherwise it is a
  plain connection (L3/L4).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodemesh.errors import UsageError
from nodemesh.model.world import ServiceInfo, Workload, World
from nodemesh.policy.engine import Route
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Jwt, Protocol

__all__ = ["Probe", "resolve"]

_FIELDS = {"from", "to", "port", "protocol", "method", "path", "host", "headers", "jwt_claims", "jwt_invalid"}


@dataclass(frozen=True, slots=True)
class Probe:
    src: str
    dst: str
    port: int
    protocol: str = "TCP"
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    jwt_claims: Mapping[str, object] | None = None
    jwt_invalid: bool = False

    @classmethod
    def from_json(cls, obj: object, where: str = "probe") -> Probe:
        """Validate one probe object (a JSON line); errors name the field."""
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: a probe must be a JSON object")
        unknown = set(obj) - _FIELDS
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, sorted(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}: unknown field {name!r}{hint}")
        for required in ("from", "to", "port"):
            if required not in obj:
                raise UsageError(f"{where}: missing field {required!r}")
        port = obj["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise UsageError(f"{where}: port must be an integer 1-65535, got {port!r}")
        headers = obj.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise UsageError(f"{where}: headers must be an object of strings")
        claims = obj.get("jwt_claims")
        if claims is not None and not isinstance(claims, dict):
            raise UsageError(f"{where}: jwt_claims must be an object")
        for key in ("from", "to", "protocol", "method", "path", "host"):
            if key in obj and obj[key] is not None and not isinstance(obj[key], str):
                raise UsageError(f"{where}: {key} must be a string")
        return cls(
            src=obj["from"],
            dst=obj["to"],
            port=port,
            protocol=str(obj.get("protocol") or "TCP").upper(),
            method=obj.get("method"),
            path=obj.get("path"),
            host=obj.get("host"),
            headers={str(k): v for k, v in headers.items()},
            jwt_claims=claims,
            jwt_invalid=bool(obj.get("jwt_invalid", False)),
        )

    @property
    def is_http(self) -> bool:
        return bool(
            self.method
            or self.path
            or self.host
            or self.headers
            or self.jwt_claims is not None
            or self.jwt_invalid
        )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split(text: str, flag: str) -> tuple[str | None, str, str]:
    kind: str | None = None
    for prefix in ("service:", "svc:", "workload:"):
        if text.startswith(prefix):
            kind, text = prefix.rstrip(":").replace("svc", "service"), text[len(prefix) :]
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name:
        raise UsageError(f"{flag} {text!r}: expected NAMESPACE/NAME or an IP address")
    return kind, ns, name


def _workload(world: World, ns: str, name: str, flag: str) -> Workload:
    pods = world.find_workloads(ns, name)
    if not pods:
        known = sorted({f"{w.namespace}/{w.name}" for w in world.workloads})
        close = difflib.get_close_matches(f"{ns}/{name}", known, n=1)
        hint = f"; did you mean {close[0]}?" if close else (f"; known: {', '.join(known)}" if known else "")
        raise UsageError(f"{flag} {ns}/{name}: no such workload{hint}")
    return pods[0]


def _source(world: World, text: str) -> tuple[Endpoint, Workload | None]:
    ip = _ip(text)
    if ip is not None:
        wl = world.workload_by_ip(ip)
        return (world.endpoint(wl), wl) if wl else (world.external_endpoint(ip), None)
    kind, ns, name = _split(text, "--from")
    if kind == "service":
        raise UsageError(f"--from {text!r}: a source is a workload or an IP, not a Service")
    wl = _workload(world, ns, name, "--from")
    return world.endpoint(wl), wl


def _target_port(service: ServiceInfo, port: int, endpoint: Workload) -> int:
    for sp in service.ports:
        if sp.port == port:
            if isinstance(sp.target_port, int):
                return sp.target_port
            for named in endpoint.ports:
                if named.name == sp.target_port:
                    return named.port
            raise UsageError(
                f"--port {port}: Service {service.namespace}/{service.name} targets port "
                f"{sp.target_port!r}, which pod {endpoint.pod} does not declare"
            )
    ports = ", ".join(str(sp.port) for sp in service.ports) or "none"
    raise UsageError(
        f"--port {port}: Service {service.namespace}/{service.name} has no such port (ports: {ports})"
    )


def _service_route(world: World, service: ServiceInfo, port: int, src: Workload | None) -> tuple[Route, int]:
    endpoints = world.endpoints_of(service)
    if not endpoints:
        raise UsageError(f"--to: Service {service.namespace}/{service.name} selects no pods")
    target = endpoints[0]
    return Route(src, target, service, port), _target_port(service, port, target)


def resolve(world: World, probe: Probe) -> tuple[FlowContext, Route]:
    """Turn a probe into the flow to evaluate and the route it takes (before waypoints)."""
    src, src_wl = _source(world, probe.src)
    try:
        protocol = Protocol(probe.protocol)
    except ValueError:
        raise UsageError(f"--protocol {probe.protocol!r}: expected TCP, UDP or SCTP") from None
    ip = _ip(probe.dst)
    route: Route
    port = probe.port
    if ip is not None:
        svc = world.service_by_ip(ip)
        wl = world.workload_by_ip(ip)
        if svc is not None:
            route, port = _service_route(world, svc, probe.port, src_wl)
        elif wl is not None:
            route = Route(src_wl, wl)
        else:
            route = Route(src_wl, None)
        dst = world.endpoint(route.dst_workload) if route.dst_workload else world.external_endpoint(ip)
    else:
        kind, ns, name = _split(probe.dst, "--to")
        svc = world.services.get((ns, name)) if kind != "workload" else None
        if svc is not None:
            route, port = _service_route(world, svc, probe.port, src_wl)
        elif kind == "service":
            raise UsageError(f"--to {probe.dst!r}: no such Service")
        else:
            route = Route(src_wl, _workload(world, ns, name, "--to"))
        assert route.dst_workload is not None
        dst = world.endpoint(route.dst_workload)
    request = None
    if probe.is_http:
        host = probe.host or (f"{route.service.hostname}:{probe.port}" if route.service else f"{dst}:{port}")
        jwt = None
        if probe.jwt_claims is not None or probe.jwt_invalid:
            jwt = Jwt(claims=dict(probe.jwt_claims or {}), valid=not probe.jwt_invalid)
        request = HttpRequest(
            method=probe.method or "GET",
            path=probe.path or "/",
            host=host,
            headers={k.lower(): v for k, v in probe.headers.items()},
            jwt=jwt,
        )
    return FlowContext(src, dst, port, protocol, request), route
