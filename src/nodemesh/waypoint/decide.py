"""What the waypoint decides, with no I/O: where a CONNECT goes, and each request's verdict.

The waypoint's 15008 listener is Envoy's `connect_terminate` (reference §1.3, §1.7;
IS:pilot/pkg/networking/core/waypoint.go): HBONE CONNECTs whose `:authority` is the ORIGINAL
destination a client's node proxy resolved (reference §1.6 step 1 and 4):

- `decide_connect`: 400 when the method is not CONNECT, the authority is not `IP:port`, or it is
  neither a Service VIP:port whose Service uses THIS waypoint nor a pod IP whose workload uses it
  as workload waypoint (ztunnel/Envoy answer 400 to a target the server does not serve). The
  plan lists the endpoints the connection's requests are balanced over (Envoy picks one PER
  REQUEST, `balance.least_request`; `ConnectPlan.to_endpoint` is one request's plan), each with
  the Service port translated to its target port (503 "no healthy upstream" without one), and
  one of them (the `pick` argument: randomness stays out) for the CONNECT's own record.
  The source is the VERIFIED client certificate's SPIFFE id and the pod owning the peer address
  (`nodeproxy.inbound.source_endpoint`), never a header. The source's egress rules are evaluated
  here for waypoint-bound traffic (the client's node proxy leaves them to the waypoint, which is
  the first hop that knows the destination pod; `nodemesh trace` evaluates them at the source
  point), for every endpoint: only the allowed ones are balanced over, and when none is, the
  CONNECT is refused with 401.
- `decide_request`: `PolicyEngine.waypoint(ctx, route)` per request, ctx = the connection's
  flow plus the request (method, path without the query string, `Host`, lower-case headers).
  DENY answers with the decision's status: 403 `RBAC: access denied` for Istio (Envoy's RBAC
  filter); for a token RequestAuthentication rejects, 401 (403 for `Audiences in Jwt are not
  allowed`) with jwt_verify's status string as the body (`Jwt verification fails`, `Jwt is
  expired`, ...), as Envoy's `jwt_authn/filter.cc` answers; 403 `Access denied` for Cilium
  `rules.http` (Cilium's proxy). ALLOW forwards the request.
- `decide_http`: Envoy's HTTP filter chain for one request, jwt_authn then RBAC (reference
  §4.8): the RequestAuthentications that apply to the route verify its token (`jwt_authn`), the
  verified claims (or an invalid token, or none) go to `decide_request`. A jwt_authn rejection carries Envoy's
  `www-authenticate: Bearer realm="http://<host><path>", error="invalid_token"` (Envoy
  `jwt_authn/filter.cc`; the realm is the original URI, its path cut at 256 characters); a
  forwarded request carries jwt_authn's edits (token removed unless `forwardOriginalToken`,
  `outputPayloadToHeader`). Where no RequestAuthentication applies Envoy has no jwt_authn
  filter: a token is neither verified nor removed, and gives no request principal.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nodemesh.model.world import ServiceInfo, Waypoint, Workload, World
from nodemesh.nodeproxy.inbound import source_endpoint
from nodemesh.nodeproxy.outbound import HBONE_PORT
from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.policy.decision import Decision
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Jwt, Protocol
from nodemesh.policy.ir import Api
from nodemesh.policy.istio.authn import AUDIENCES_NOT_ALLOWED, JWT_VERIFICATION_FAILS
from nodemesh.protocols import connect_target, format_authority
from nodemesh.waypoint.jwt_authn import JwtPolicies, RequestEdits

__all__ = [
    "ConnectPlan",
    "RequestVerdict",
    "WaypointConnect",
    "decide_connect",
    "decide_http",
    "decide_request",
    "http_request",
    "upstream_identity",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EndpointPicker = Callable[[Sequence[Workload]], Workload]

RBAC_DENIED = b"RBAC: access denied"
JWT_FAILED = b"Jwt verification fails"
CILIUM_DENIED = b"Access denied\r\n"
MAX_REALM_PATH = 256
"""Envoy `jwt_authn/filter.cc` `MaximumUriLength`: the realm's path is cut there."""


@dataclass(frozen=True, slots=True)
class WaypointConnect:
    """A CONNECT as the waypoint's 15008 server received it, with what the connection proved."""

    method: str
    authority: str
    peer: tuple[IPAddress, int]
    peer_identity: str
    """The client certificate's verified SPIFFE id (the TLS layer refuses a client without one)."""


@dataclass(frozen=True, slots=True)
class ConnectPlan:
    """200 and where the connection's requests go, or a refusal with its reason."""

    status: int
    reason: str
    service: ServiceInfo | None = None
    target: Workload | None = None
    """The endpoint of this plan: for the CONNECT, the one `pick` chose (its record and egress
    verdict); for a request (`to_endpoint`), the one serving it."""
    target_port: int | None = None
    src: Endpoint | None = None
    src_workload: Workload | None = None
    route: Route | None = None
    decision: Decision | None = None
    """The source egress verdict (refusal or allow)."""
    endpoints: tuple[Workload, ...] = ()
    """The endpoints requests may go to (each has a target port; egress allows it)."""

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def to_endpoint(self, workload: Workload) -> ConnectPlan:
        """The plan of one request served by `workload` (one of `endpoints`): target, target
        port and the route's destination pod are that endpoint's."""
        if self.target is not None and workload.key == self.target.key:
            return self
        assert self.route is not None
        port = self.target_port
        if self.service is not None and self.route.service_port is not None:
            port = _target_port(self.service, self.route.service_port, workload)
        route = dataclasses.replace(self.route, dst_workload=workload)
        return dataclasses.replace(self, target=workload, target_port=port, route=route)

    @property
    def upstream(self) -> tuple[IPAddress, int]:
        """The next hop: the endpoint's node proxy listener `podIP:15008`."""
        assert self.target is not None and self.target.ip is not None
        return self.target.ip, HBONE_PORT

    @property
    def upstream_authority(self) -> str:
        """`:authority` of the CONNECT to the endpoint: `podIP:targetPort` (reference §1.3)."""
        assert self.target is not None and self.target.ip is not None and self.target_port is not None
        return format_authority(self.target.ip, self.target_port)


def _target_port(service: ServiceInfo, port: int, workload: Workload) -> int | None:
    for sp in service.ports:
        if sp.port == port and sp.protocol is Protocol.TCP:
            if isinstance(sp.target_port, int):
                return sp.target_port
            return next((p.port for p in workload.ports if p.name == sp.target_port), None)
    return None


def _destination(
    world: World, waypoint: Waypoint, ip: IPAddress, port: int
) -> tuple[ServiceInfo | None, list[tuple[Workload, int]]] | ConnectPlan:
    """The Service (if any) and its endpoints with their target ports, or a refusal."""
    service = world.service_by_ip(ip)
    if service is not None:
        if world.service_waypoint(service) != waypoint:
            return ConnectPlan(
                400, f"service {service.namespace}/{service.name} does not use waypoint {waypoint.key}"
            )
        if not any(sp.port == port and sp.protocol is Protocol.TCP for sp in service.ports):
            return ConnectPlan(400, f"service {service.namespace}/{service.name} has no TCP port {port}")
        endpoints = [w for w in world.endpoints_of(service) if w.ip is not None]
        if not endpoints:
            return ConnectPlan(503, f"no healthy upstream for {service.hostname}:{port}")
        ported = [(w, p) for w in endpoints if (p := _target_port(service, port, w)) is not None]
        if not ported:
            return ConnectPlan(503, f"no endpoint has a port for {service.hostname}:{port}")
        return service, ported
    workload = world.workload_by_ip(ip)
    if workload is None or not world.in_mesh(workload) or world.workload_waypoint(workload) != waypoint:
        return ConnectPlan(400, f"{ip} is not a destination of waypoint {waypoint.key}")
    return None, [(workload, port)]


def decide_connect(
    req: WaypointConnect, waypoint: Waypoint, engine: PolicyEngine, pick: EndpointPicker
) -> ConnectPlan:
    """What the waypoint answers a CONNECT, and where its requests may go (module doc)."""
    try:
        ip, port = connect_target(req.method, req.authority)
    except ValueError as exc:
        return ConnectPlan(400, str(exc))
    world = engine.world
    found = _destination(world, waypoint, ip, port)
    if isinstance(found, ConnectPlan):
        return found
    service, candidates = found
    src, src_workload = source_endpoint(world, req.peer[0], req.peer_identity)
    service_port = port if service is not None else None
    verdicts: list[tuple[Workload, int, Decision | None]] = []
    for workload, target_port in candidates:
        egress = None
        if src.is_pod:
            route = Route(src_workload, workload, service, service_port, waypoint)
            ctx = FlowContext(src, world.endpoint(workload), target_port)
            egress = engine.source_egress(ctx, route).decision
        verdicts.append((workload, target_port, egress))
    allowed = [v for v in verdicts if v[2] is None or v[2].allowed]
    chosen_from = allowed or verdicts
    workload = pick([w for w, _, _ in chosen_from])
    _, target_port, egress = next(v for v in chosen_from if v[0].key == workload.key)
    route = Route(src_workload, workload, service, service_port, waypoint)
    status, reason = (200, "accepted") if allowed else (401, egress.reason if egress else "denied")
    endpoints = tuple(w for w, _, _ in allowed)
    return ConnectPlan(
        status, reason, service, workload, target_port, src, src_workload, route, egress, endpoints
    )


def upstream_identity(world: World, workload: Workload) -> str:
    """The SPIFFE id the endpoint's node proxy must present (its pod's identity)."""
    return identity_uri(world.principal(workload))


def http_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], jwt: Jwt | None = None
) -> HttpRequest:
    """The engine's view of a request: path without the query, lower-case headers (repeated
    ones joined with `,`), `host` = the Host header, and the JWT jwt_authn made of its token
    (None: no token, or no RequestAuthentication applies)."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    path = target.split("?", 1)[0] or "/"
    return HttpRequest(method=method.upper(), path=path, host=merged.get("host", ""), headers=merged, jwt=jwt)


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    """Forward the request, or answer it here with `status` and `body`."""

    decision: Decision
    status: int | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra header fields of a local answer (`www-authenticate` for a 401)."""
    edits: RequestEdits | None = None
    """jwt_authn's changes to a forwarded request."""

    @property
    def forward(self) -> bool:
        return self.status is None


def _jwt_status(reason: str) -> str:
    """The jwt_verify status string a RequestAuthentication rejection's reason starts with."""
    known = (AUDIENCES_NOT_ALLOWED, "Jwt issuer is not configured", JWT_VERIFICATION_FAILS)
    return next((s for s in known if reason.startswith(s)), JWT_VERIFICATION_FAILS)


def decide_request(plan: ConnectPlan, request: HttpRequest, engine: PolicyEngine) -> RequestVerdict:
    """The waypoint point of the engine for one request on an accepted connection."""
    assert plan.src is not None and plan.target is not None and plan.route is not None
    assert plan.target_port is not None
    ctx = FlowContext(plan.src, engine.world.endpoint(plan.target), plan.target_port, request=request)
    decision = engine.waypoint(ctx, plan.route).decision
    if decision.allowed:
        return RequestVerdict(decision)
    status = decision.status or 403
    if decision.policy is not None and decision.policy.kind == "RequestAuthentication":
        # jwt_authn answers with jwt_verify's status string (Envoy `jwt_authn/filter.cc`)
        jwt = request.jwt
        body = (jwt.error if jwt is not None and jwt.error else _jwt_status(decision.reason)).encode()
    elif decision.api is Api.CILIUM:
        body = CILIUM_DENIED
    else:
        body = RBAC_DENIED
    return RequestVerdict(decision, status, body)


def decide_http(
    plan: ConnectPlan,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    *,
    engine: PolicyEngine,
    jwt: JwtPolicies,
    now: float,
) -> RequestVerdict:
    """jwt_authn with the RequestAuthentications of the route, then `decide_request` (module
    doc). `headers` as received; `now` in Unix seconds (token times)."""
    assert plan.route is not None and plan.route.waypoint is not None
    check = jwt.check(method, target, headers, waypoint=plan.route.waypoint, service=plan.service, now=now)
    request = http_request(method, target, headers, check.jwt if check is not None else None)
    verdict = decide_request(plan, request, engine)
    if verdict.forward:
        return dataclasses.replace(verdict, edits=check.edits if check is not None else None)
    policy = verdict.decision.policy
    if policy is None or policy.kind != "RequestAuthentication" or check is None:
        return verdict
    note = f"jwt_authn: {check.status.value}" + (f" (provider {check.provider})" if check.provider else "")
    decision = dataclasses.replace(verdict.decision, notes=(*verdict.decision.notes, note))
    realm = f"http://{request.host}{target[:MAX_REALM_PATH]}"
    challenge = ("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"')
    return dataclasses.replace(verdict, decision=decision, headers=(challenge,))
