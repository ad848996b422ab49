"""Envoy's `jwt_authn` filter as Istio configures it at a waypoint: where a request's tokens are
read, how each is verified, and what the forwarded request then carries. Pure: no I/O, and the
time is an argument.

Upstream, each point below:
- One `Provider` per RequestAuthentication `jwtRules[]` entry (API: JWTRule,
  istio.io/latest/docs/reference/config/security/jwt/).
- Locations (Envoy `jwt_authn/extractor.cc`): `fromHeaders` (name, prefix), `fromParams`,
  `fromCookies`; only when a rule sets none of them the defaults apply: "If no explicit location
  is specified the following default locations are tried in order: 1) The Authorization header
  using the Bearer schema ... 2) `access_token` query parameter" (JWTRule doc). A prefix is
  searched anywhere in the value and the token starts at the next base64url character. A
  provider only ever sees the tokens at ITS locations.
- One token (Envoy `authenticator.cc` `startVerify`): parse (`jwt_verify.parse_jwt`), the
  issuer must be the rule's ("A JWT with different iss claim will be rejected"), `nbf`/`exp`
  with jwt_verify_lib's 60 s clock skew (`now + skew < nbf`: not yet valid, `now > exp + skew`:
  expired), `aud` must contain one of `audiences` when set, then the signature against the
  rule's JWKS (`jwt_verify.verify_signature`). Each failure is jwt_verify_lib's status string.
- The request (Istio `pilot/pkg/security/authn`: requirement = OR{P1..Pn, AND{OR{Pi,
  allow_missing}}}): it passes when some provider verifies every token at its locations, or
  when no provider found any token (no request principal); otherwise it carries an invalid
  token, which RequestAuthentication answers with 401. CORS preflights bypass the filter
  (Istio sets `bypass_cors_preflight`).
- The forwarded request (`authenticator.cc` `handleGoodJwt`): headers named by
  `outputPayloadToHeader` / `outputClaimToHeaders` are first removed from what the client sent
  (`sanitizeHeaders`), then set from the verified token (the payload is its base64url segment
  as received); the token itself is removed from its header or query parameter unless
  `forwardOriginalToken` (a cookie is left in place, as Envoy does).

Invariants: key sets are parsed once, when a `Provider` is built (per policy load or JWKS
fetch), never per request; `verify_request_token` reads nothing but its arguments (the optional
cache only remembers tokens whose signature verified; time, issuer and audience are re-checked
on every hit, as Envoy's jwt cache does).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from enum import Enum

from jwt.algorithms import Algorithm, get_default_algorithms

from nodemesh.model.schema.istio import JwtRule, RequestAuthentication
from nodemesh.model.world import ServiceInfo, Waypoint, World
from nodemesh.policy.flow import Jwt
from nodemesh.policy.istio.authn import authn_for
from nodemesh.policy.istio.projection import IstioView
from nodemesh.waypoint.jwt_verify import (
    ParsedJwt,
    Status,
    VerificationKey,
    parse_jwks,
    parse_jwt,
    verify_signature,
)

__all__ = [
    "ACCESS_TOKEN_PARAM",
    "BEARER_PREFIX",
    "CLOCK_SKEW_SECONDS",
    "JwtPolicies",
    "LocationKind",
    "ParsedJwt",
    "Provider",
    "RequestEdits",
    "Status",
    "TokenCheck",
    "TokenLocation",
    "VerificationKey",
    "parse_jwks",
    "provider_from_rule",
    "verify_request_token",
]

CLOCK_SKEW_SECONDS = 60
"""jwt_verify_lib `kClockSkewInSecond`; Istio sets no `clock_skew_seconds`."""
BEARER_PREFIX = "Bearer "
ACCESS_TOKEN_PARAM = "access_token"
CACHE_LIMIT = 1024

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class LocationKind(Enum):
    HEADER = "header"
    PARAM = "param"
    COOKIE = "cookie"


@dataclass(frozen=True, slots=True)
class TokenLocation:
    """Where a provider reads tokens: a header (lower-case name, value prefix), a query
    parameter or a cookie."""

    kind: LocationKind
    name: str
    prefix: str = ""


DEFAULT_LOCATIONS = (
    TokenLocation(LocationKind.HEADER, "authorization", BEARER_PREFIX),
    TokenLocation(LocationKind.PARAM, ACCESS_TOKEN_PARAM),
)


@dataclass(frozen=True, slots=True)
class Provider:
    """A JWTRule as Envoy's JwtProvider, with its key set already parsed."""

    name: str
    """`<ns>/<RequestAuthentication>[<rule index>]`."""
    issuer: str
    audiences: frozenset[str] = frozenset()
    locations: tuple[TokenLocation, ...] = DEFAULT_LOCATIONS
    keys: tuple[VerificationKey, ...] = ()
    jwks_status: Status = Status.OK
    """OK when `keys` is the usable key set; else why every token of this issuer fails."""
    forward: bool = False
    payload_header: str = ""
    claim_headers: tuple[tuple[str, str], ...] = ()
    """(lower-case header, claim) pairs of `outputClaimToHeaders`."""


def provider_from_rule(rule: JwtRule, name: str, fetched: Mapping[str, str | None]) -> Provider:
    """Envoy's provider for one JWTRule. The key set is the inline `jwks`, else what was fetched
    from `jwksUri` (`fetched[uri]`; None or absent: the fetch failed or has not completed)."""
    locations = [
        *(TokenLocation(LocationKind.HEADER, h.name.lower(), h.prefix) for h in rule.from_headers),
        *(TokenLocation(LocationKind.PARAM, p) for p in rule.from_params),
        *(TokenLocation(LocationKind.COOKIE, c) for c in rule.from_cookies),
    ]
    text = rule.jwks or (fetched.get(rule.jwks_uri) if rule.jwks_uri else None)
    if text is None:
        keys: tuple[VerificationKey, ...] = ()
        status = Status.JWKS_FETCH_FAIL
    else:
        keys, status = parse_jwks(text)
    return Provider(
        name=name,
        issuer=rule.issuer,
        audiences=frozenset(rule.audiences),
        locations=tuple(locations) or DEFAULT_LOCATIONS,
        keys=keys,
        jwks_status=status,
        forward=rule.forward_original_token,
        payload_header=rule.output_payload_to_header.lower(),
        claim_headers=tuple((c.header.lower(), c.claim) for c in rule.output_claim_to_headers),
    )


def _check(
    provider: Provider,
    token: str,
    now: int,
    algorithms: Mapping[str, Algorithm],
    cache: MutableMapping[tuple[str, str], ParsedJwt] | None,
) -> tuple[Status, ParsedJwt | None]:
    """Envoy's order: parse, issuer, time, audience, signature (`authenticator.cc`)."""
    hit = cache.get((provider.name, token)) if cache is not None else None
    parsed = hit or parse_jwt(token)
    if isinstance(parsed, Status):
        return parsed, None
    if parsed.issuer != provider.issuer:
        return Status.UNKNOWN_ISSUER, None
    if now + CLOCK_SKEW_SECONDS < parsed.nbf:
        return Status.NOT_YET_VALID, None
    if parsed.exp and now > parsed.exp + CLOCK_SKEW_SECONDS:
        return Status.EXPIRED, None
    if provider.audiences and not provider.audiences.intersection(parsed.audiences):
        return Status.AUDIENCE_NOT_ALLOWED, None
    if hit is None:
        status = provider.jwks_status
        if status is Status.OK:
            status = verify_signature(provider.keys, parsed, algorithms)
        if status is not Status.OK:
            return status, None
        if cache is not None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[(provider.name, token)] = parsed
    return Status.OK, parsed


# ---- the request -------------------------------------------------------------------------------
def _from_header(value: str, prefix: str) -> str | None:
    """Envoy `extractJWT`: after the prefix (found anywhere), from the first base64url char."""
    if not prefix:
        return value
    pos = value.find(prefix)
    if pos < 0:
        return None
    start = pos + len(prefix)
    while start < len(value) and value[start] not in _TOKEN_CHARS:
        start += 1
    return value[start:] if start < len(value) else value


def _query_params(query: str) -> list[tuple[str, str]]:
    out = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            out.append((urllib.parse.unquote(key), urllib.parse.unquote(value)))
    return out


def _cookies(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == "cookie":
            for part in value.split(";"):
                key, sep, val = part.strip().partition("=")
                if sep and key not in out:
                    val = val.strip()
                    out[key] = val[1:-1] if len(val) >= 2 and val[0] == val[-1] == '"' else val
    return out


def _tokens(
    provider: Provider, headers: Sequence[tuple[str, str]], params: list[tuple[str, str]]
) -> list[tuple[str, TokenLocation]]:
    found: list[tuple[str, TokenLocation]] = []
    cookies: dict[str, str] | None = None
    for loc in provider.locations:
        if loc.kind is LocationKind.HEADER:
            for name, value in headers:
                if name.lower() == loc.name:
                    token = _from_header(value, loc.prefix)
                    if token is not None:
                        found.append((token, loc))
        elif loc.kind is LocationKind.PARAM:
            param = next((v for k, v in params if k == loc.name), None)
            if param is not None:
                found.append((param, loc))
        else:
            cookies = _cookies(headers) if cookies is None else cookies
            if loc.name in cookies:
                found.append((cookies[loc.name], loc))
    return found


@dataclass(frozen=True, slots=True)
class RequestEdits:
    """What the waypoint changes in a request it forwards after jwt_authn."""

    remove_headers: frozenset[str] = frozenset()
    """Lower-case names removed (the token's header, and client-sent output headers)."""
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_params: frozenset[str] = frozenset()
    """Query parameters removed from the request target (a token read from one)."""

    def target(self, target: str) -> str:
        """The request target without the removed query parameters."""
        path, sep, query = target.partition("?")
        if not sep or not self.remove_params:
            return target
        kept = [
            p for p in query.split("&") if urllib.parse.unquote(p.partition("=")[0]) not in self.remove_params
        ]
        return f"{path}?{'&'.join(kept)}" if kept else path

    def headers(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The forwarded header fields: the removed ones dropped, then the added ones."""
        kept = [(k, v) for k, v in headers if k.lower() not in self.remove_headers]
        return [*kept, *self.add_headers]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """jwt_authn's outcome for one request: the JWT the policy engine evaluates (None: no token,
    so no request principal), Envoy's status, and the edits for the forwarded request."""

    jwt: Jwt | None
    status: Status
    edits: RequestEdits = RequestEdits()
    provider: str | None = None
    """The provider whose token became `jwt` (or that rejected one)."""


def _claim_value(claims: Mapping[str, object], path: str) -> str:
    """`outputClaimToHeaders`: a string, number or boolean claim (dotted path), else nothing."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and value >= 0 else f"{value:f}"
    return value if isinstance(value, str) else ""


def _is_cors_preflight(method: str, headers: Sequence[tuple[str, str]]) -> bool:
    names = {n.lower() for n, v in headers if v}
    return method.upper() == "OPTIONS" and {"origin", "access-control-request-method"} <= names


def verify_request_token(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    providers: Sequence[Provider],
    *,
    now: float,
    cache: MutableMapping[tuple[str, str], ParsedJwt] | None = None,
) -> TokenCheck | None:
    """jwt_authn for one request with the providers of the RequestAuthentications that apply
    (none: Envoy has no jwt_authn filter, None is returned and the request is left as it is).
    `headers` are as received (repeated fields separate); `now` is Unix seconds."""
    if not providers:
        return None
    sanitize = {h for p in providers for h in (p.payload_header, *(n for n, _ in p.claim_headers)) if h}
    if _is_cors_preflight(method, headers):
        return TokenCheck(None, Status.OK, RequestEdits(frozenset(sanitize)))
    algorithms = get_default_algorithms()
    params = _query_params(target.partition("?")[2])
    second = int(now)
    failure: tuple[Status, Provider] | None = None
    verified: list[tuple[Provider, list[tuple[ParsedJwt, TokenLocation]]]] = []
    for provider in providers:
        tokens = _tokens(provider, headers, params)
        if not tokens:
            continue
        good: list[tuple[ParsedJwt, TokenLocation]] = []
        for token, loc in tokens:
            status, parsed = _check(provider, token, second, algorithms, cache)
            if parsed is None:
                failure = failure or (status, provider)
                break
            good.append((parsed, loc))
        else:
            verified.append((provider, good))
    if not verified:
        if failure is None:
            return TokenCheck(None, Status.OK, RequestEdits(frozenset(sanitize)))
        status, provider = failure
        return TokenCheck(Jwt(claims={}, valid=False, error=status.value), status, provider=provider.name)
    remove, params_out, add = set(sanitize), set(), []
    for provider, good in verified:
        for parsed, loc in good:
            if provider.payload_header:
                add.append((provider.payload_header, parsed.payload_b64))
            for header, claim in provider.claim_headers:
                value = _claim_value(parsed.claims, claim)
                if value:
                    add.append((header, value))
            if not provider.forward:
                if loc.kind is LocationKind.HEADER:
                    remove.add(loc.name)
                elif loc.kind is LocationKind.PARAM:
                    params_out.add(loc.name)
    provider, good = verified[0]
    edits = RequestEdits(frozenset(remove), tuple(add), frozenset(params_out))
    return TokenCheck(Jwt(claims=dict(good[0][0].claims), valid=True), Status.OK, edits, provider.name)


class JwtPolicies:
    """The jwt_authn providers of every RequestAuthentication of a world, key sets parsed once
    (one instance per policy load, and per completed JWKS fetch). Which ones apply to a request
    is the policy engine's own selection (`policy.istio.authn.authn_for`, the waypoint view:
    targetRefs to the waypoint's Gateway, the destination Service, or GatewayClass
    istio-waypoint from the root namespace), so the waypoint and `nodemesh trace` agree."""

    def __init__(self, world: World, fetched: Mapping[str, str | None] | None = None) -> None:
        self._docs = [d for d in world.policies if isinstance(d, RequestAuthentication)]
        self._root = world.root_namespace
        fetched = fetched or {}
        self._providers = {
            (doc.namespace, doc.name): tuple(
                provider_from_rule(rule, f"{doc.namespace}/{doc.name}[{i}]", fetched)
                for i, rule in enumerate(doc.spec.jwt_rules)
            )
            for doc in self._docs
        }
        self._applicable: dict[tuple[str, str | None], tuple[Provider, ...]] = {}
        self._cache: dict[tuple[str, str], ParsedJwt] = {}

    @property
    def jwks_uris(self) -> frozenset[str]:
        """The `jwksUri`s of rules without an inline `jwks` (the process fetches these)."""
        rules = (r for d in self._docs for r in d.spec.jwt_rules)
        return frozenset(r.jwks_uri for r in rules if r.jwks_uri and not r.jwks)

    def providers_for(self, waypoint: Waypoint, service: ServiceInfo | None) -> tuple[Provider, ...]:
        key = (waypoint.key, f"{service.namespace}/{service.name}" if service is not None else None)
        found = self._applicable.get(key)
        if found is None:
            authn = authn_for(
                self._docs, self._root, IstioView.WAYPOINT, dst=None, waypoint=waypoint, service=service
            )
            found = tuple(p for a in authn for p in self._providers[(a.ref.namespace, a.ref.name)])
            self._applicable[key] = found
        return found

    def check(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        waypoint: Waypoint,
        service: ServiceInfo | None,
        now: float,
    ) -> TokenCheck | None:
        """`verify_request_token` with the providers that apply at `waypoint` for `service`."""
        providers = self.providers_for(waypoint, service)
        return verify_request_token(method, target, headers, providers, now=now, cache=self._cache)
