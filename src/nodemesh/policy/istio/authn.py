"""RequestAuthentication: which ones apply where, and the JWT check before authorization.

Only a proxy that sees the request validates tokens (reference §4.8): in ambient mode the
waypoint, for RequestAuthentications attached with `targetRefs` (Gateway, GatewayClass
istio-waypoint from the root namespace, Service); selector policies are ignored there
(`API:security/v1beta1/request_authentication.proto`). In kernel mode the node L7 proxy applies
the selector / namespace / mesh ones, as a sidecar would.

The check is Envoy's `jwt_authn` filter, which runs before RBAC: a present but invalid token or an
unknown issuer is rejected with 401, an unaccepted audience with 403 (Envoy `jwt_authn/filter.cc`
`onComplete`: `status == Status::JwtAudienceNotAllowed ? Forbidden : Unauthorized`), the body
being jwt_verify's status string; no token is accepted with no request principal. Without any
applicable RequestAuthentication the token is never verified, so it yields no request principal
either (the request is passed on with the token removed).

Invariants: pure functions of their arguments; the result of `authn_for` is cached by the engine
with the rest of what applies to a destination.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodemesh.model.schema.istio import RequestAuthentication
from nodemesh.model.world import ServiceInfo, Waypoint
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest
from nodemesh.policy.ir import Api, PolicyRef
from nodemesh.policy.istio.compile import WAYPOINT_CLASS, policy_ref, target_key
from nodemesh.policy.istio.conditions import claim_values, jwt_str
from nodemesh.policy.istio.projection import IstioView
from nodemesh.policy.selector import LabelSelector

__all__ = ["AUDIENCES_NOT_ALLOWED", "JWT_VERIFICATION_FAILS", "Authn", "authenticate", "authn_for"]

JWT_VERIFICATION_FAILS = "Jwt verification fails"
AUDIENCES_NOT_ALLOWED = "Audiences in Jwt are not allowed"
"""jwt_verify_lib status strings (`getStatusString`): Envoy's body for these rejections."""


@dataclass(frozen=True, slots=True)
class Authn:
    """A RequestAuthentication: its issuers and their audiences (empty = any)."""

    ref: PolicyRef
    rules: tuple[tuple[str, frozenset[str]], ...]


def authn_for(
    docs: Sequence[RequestAuthentication],
    root: str,
    view: IstioView,
    *,
    dst: Endpoint | None,
    waypoint: Waypoint | None,
    service: ServiceInfo | None,
) -> tuple[Authn, ...]:
    """The RequestAuthentications of `docs` that apply at `view` (reference §4.8): at a waypoint,
    those whose targetRefs name it, the destination Service, or (from the root namespace)
    GatewayClass istio-waypoint; at the SIDECAR view, the selector / namespace / mesh ones that
    select the destination; none at the node proxy, which sees no request."""
    out: list[Authn] = []
    for doc in docs:
        refs = {target_key(r, doc.namespace) for r in doc.spec.all_target_refs}
        if view is IstioView.WAYPOINT:
            hit = (
                (waypoint is not None and ("Gateway", waypoint.namespace, waypoint.name) in refs)
                or (service is not None and ("Service", service.namespace, service.name) in refs)
                or (
                    waypoint is not None
                    and doc.namespace == root
                    and ("GatewayClass", root, WAYPOINT_CLASS) in refs
                )
            )
        elif view is IstioView.SIDECAR and dst is not None and dst.namespace is not None and not refs:
            in_scope = doc.namespace in (dst.namespace, root)
            sel = doc.spec.selector
            hit = in_scope and (
                sel is None or LabelSelector.from_labels(sel.match_labels).matches(dst.labels)
            )
        else:
            hit = False
        if hit:
            rules = tuple((r.issuer, frozenset(r.audiences)) for r in doc.spec.jwt_rules)
            out.append(Authn(policy_ref(doc), rules))
    return tuple(out)


def authenticate(authn: tuple[Authn, ...], ctx: FlowContext) -> tuple[Decision | None, FlowContext]:
    """RequestAuthentication (Envoy jwt_authn before RBAC): a present token must verify and come
    from a configured issuer, else 401, and carry an accepted audience, else 403; no token passes with no
    request principal. Without a RequestAuthentication the token is never verified, so it
    gives no request principal either."""
    request = ctx.request
    assert request is not None
    jwt = request.jwt
    if jwt is None:
        return None, ctx
    if not authn:
        stripped = HttpRequest(request.method, request.path, request.host, request.headers, None)
        return None, FlowContext(ctx.src, ctx.dst, ctx.port, ctx.protocol, stripped)
    ref = authn[0].ref
    if not jwt.valid:
        reason = jwt.error or JWT_VERIFICATION_FAILS
        return _jwt_reject(reason, ref, 403 if reason == AUDIENCES_NOT_ALLOWED else 401), ctx
    iss = jwt_str(jwt, "iss")
    aud = claim_values(jwt, ("aud",))
    issuers = [(a.ref, auds) for a in authn for issuer, auds in a.rules if issuer == iss]
    if not issuers:
        return _jwt_reject(f"Jwt issuer is not configured ({iss})", ref), ctx
    if not any(not auds or auds.intersection(aud) for _, auds in issuers):
        return _jwt_reject(AUDIENCES_NOT_ALLOWED, issuers[0][0], 403), ctx
    return None, ctx


def _jwt_reject(reason: str, ref: PolicyRef, status: int = 401) -> Decision:
    return Decision.deny(
        f"{reason}: rejected with {status} by RequestAuthentication {ref.namespace}/{ref.name}",
        api=Api.ISTIO,
        policy=ref,
        drop_reason=DropReason.POLICY_DENY,
        status=status,
    )
