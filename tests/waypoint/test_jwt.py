"""jwt_authn at the waypoint without sockets: tokens minted with PyJWT against RSA, EC and Ed25519
keys generated here, verified by `nodemesh.waypoint.jwt_authn` as Envoy's filter verifies them
for an Istio RequestAuthentication (API: JWTRule, istio.io/latest/docs/reference/config/security/
jwt/; Envoy `jwt_authn/extractor.cc`, `authenticator.cc`; google/jwt_verify_lib `jwt.cc`,
`verify.cc`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from nodemesh.model.schema.istio import ClaimToHeader, JwtHeader, JwtRule
from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.policy.engine import PolicyEngine
from nodemesh.waypoint.decide import JWT_FAILED, WaypointConnect, decide_connect, decide_http
from nodemesh.waypoint.jwt_authn import (
    JwtPolicies,
    ParsedJwt,
    Provider,
    Status,
    TokenCheck,
    parse_jwks,
    provider_from_rule,
    verify_request_token,
)
from nodemesh.waypoint.process import fetch_jwks
from tests.waypoint.shop import live_shop, require_jwt_manifest

ISSUER = "https://issuer.example"
NOW = 1_750_000_000


class Keys:
    """Keys and their JWKS, generated once for the module."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.jwks = json.dumps(
            {
                "keys": [
                    {**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True), "kid": "rsa-1"},
                    {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": "ec-1"},
                    {**OKPAlgorithm.to_jwk(self.ed.public_key(), as_dict=True), "kid": "ed-1"},
                ]
            }
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def _mint(key: object, claims: Mapping[str, object], alg: str = "RS256", kid: str = "rsa-1") -> str:
    body = {"iss": ISSUER, "sub": "alice", "exp": NOW + 3600, **claims}
    return pyjwt.encode(dict(body), key, algorithm=alg, headers={"kid": kid})  # type: ignore[arg-type]


def _rule(keys: Keys, **fields: object) -> JwtRule:
    return JwtRule.model_validate({"issuer": ISSUER, "jwks": keys.jwks, **fields})


def _check(
    provider: Provider | Sequence[Provider],
    token: str | None = None,
    *,
    target: str = "/api/v1/orders/7",
    headers: Sequence[tuple[str, str]] = (),
    now: float = NOW,
    method: str = "GET",
) -> TokenCheck:
    providers = [provider] if isinstance(provider, Provider) else list(provider)
    sent = [("Host", "orders.shop:8080"), *headers]
    if token is not None:
        sent.append(("Authorization", f"Bearer {token}"))
    check = verify_request_token(method, target, sent, providers, now=now)
    assert check is not None
    return check


def _provider(keys: Keys, **fields: object) -> Provider:
    return provider_from_rule(_rule(keys, **fields), "shop/orders-jwt[0]", {})


def test_a_valid_token_gives_its_verified_claims_and_is_removed_from_the_request(keys: Keys) -> None:
    """JWTRule: "If set to true, the original token will be kept for the upstream request.
    Default is false" (forwardOriginalToken): a verified token's claims become the request's
    (`requestPrincipals` = iss/sub) and the Authorization header is not forwarded."""
    check = _check(_provider(keys), _mint(keys.rsa, {"groups": ["admin"]}))
    assert check.status is Status.OK and check.jwt is not None and check.jwt.valid
    assert check.jwt.request_principal == f"{ISSUER}/alice"
    assert check.jwt.claims["groups"] == ["admin"]
    assert check.edits.headers([("Authorization", "Bearer x"), ("X-Id", "1")]) == [("X-Id", "1")]
    kept = _check(_provider(keys, forwardOriginalToken=True), _mint(keys.rsa, {}))
    assert "authorization" not in kept.edits.remove_headers


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"exp": NOW - 61}, Status.EXPIRED),
        ({"exp": NOW - 60}, Status.OK),
        ({"exp": NOW - 30}, Status.OK),
        ({"nbf": NOW + 61}, Status.NOT_YET_VALID),
        ({"nbf": NOW + 60}, Status.OK),
        ({"exp": "soon"}, Status.PAYLOAD_PARSE),
        ({"exp": float("inf")}, Status.PAYLOAD_PARSE),
    ],
)
def test_exp_and_nbf_with_envoys_60_second_clock_skew(
    keys: Keys, claims: Mapping[str, object], status: Status
) -> None:
    """jwt_verify_lib `Jwt::verifyTimeConstraint`: `now + clock_skew < nbf` is "Jwt not yet
    valid", `now > exp + clock_skew` is "Jwt is expired", `kClockSkewInSecond` = 60 (Envoy PR
    #13872 "jwt_authn: update to jwt_verify_lib with 1 minute clock skew"); an `exp` that is not
    a finite number does not parse (`JwtPayloadParseError`)."""
    check = _check(_provider(keys), _mint(keys.rsa, claims))
    assert check.status is status
    assert check.jwt is not None and check.jwt.valid is (status is Status.OK)


def test_a_token_signed_by_another_key_fails_verification(keys: Keys) -> None:
    """jwt_verify_lib `verifyJwtWithoutTimeChecking`: a JWK whose `kid` matches is tried and the
    signature does not verify: "Jwt verification fails"; with a `kid` no JWK has: "Jwks doesn't
    have key to match kid or alg from Jwt"."""
    assert _check(_provider(keys), _mint(keys.other_rsa, {})).status is Status.VERIFICATION_FAIL
    stranger = _check(_provider(keys), _mint(keys.other_rsa, {}, kid="rsa-9"))
    assert stranger.status is Status.KID_ALG_MISMATCH
    assert stranger.jwt is not None and not stranger.jwt.valid and stranger.jwt.claims == {}


def test_ec_and_ed25519_keys_verify_with_their_own_algorithms(keys: Keys) -> None:
    """Envoy's supported JWT algs include ES256 and EdDSA (Envoy `jwt_authn_filter.rst`); the
    algorithm is the key's: an EC P-256 key verifies ES256 and not ES384."""
    provider = _provider(keys)
    assert _check(provider, _mint(keys.ec, {}, "ES256", "ec-1")).status is Status.OK
    assert _check(provider, _mint(keys.ed, {}, "EdDSA", "ed-1")).status is Status.OK
    wrong_curve = _check(provider, _mint(ec.generate_private_key(ec.SECP384R1()), {}, "ES384", "ec-1"))
    assert wrong_curve.status is Status.VERIFICATION_FAIL


def test_wrong_issuer_is_unknown(keys: Keys) -> None:
    """JWTRule `issuer`: "A JWT with different iss claim will be rejected" (Envoy: "Jwt issuer is
    not configured")."""
    check = _check(_provider(keys), _mint(keys.rsa, {"iss": "https://evil.example"}))
    assert check.status is Status.UNKNOWN_ISSUER and check.jwt is not None and not check.jwt.valid


def test_audiences_must_intersect_when_set(keys: Keys) -> None:
    """JWTRule `audiences`: "A JWT containing any of these audiences will be accepted"; Envoy:
    "If not specified, the audiences in JWT will not be checked"."""
    provider = _provider(keys, audiences=["shop", "orders"])
    assert _check(provider, _mint(keys.rsa, {"aud": ["billing", "orders"]})).status is Status.OK
    assert _check(provider, _mint(keys.rsa, {"aud": "billing"})).status is Status.AUDIENCE_NOT_ALLOWED
    assert _check(provider, _mint(keys.rsa, {})).status is Status.AUDIENCE_NOT_ALLOWED
    assert _check(_provider(keys), _mint(keys.rsa, {"aud": "anything"})).status is Status.OK


def _unsigned(header: Mapping[str, object], claims: Mapping[str, object], signature: str) -> str:
    def seg(obj: Mapping[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg(header)}.{seg(claims)}.{signature}"


def test_alg_none_and_hmac_with_the_public_key_are_refused(keys: Keys) -> None:
    """jwt_verify_lib implements ES*, HS*, RS*, PS*, EdDSA only (`isImplemented`): `alg: none`
    is "Jwt header [alg] field value is invalid", and an empty signature is not
    Header.Payload.Signature. HS256 keyed with the RSA public key (algorithm confusion) never
    verifies: an RSA JWK only verifies RS*/PS* (`verify.cc` picks by the JWK's `kty`)."""
    claims = {"iss": ISSUER, "sub": "alice", "exp": NOW + 60}
    none_alg = _unsigned({"alg": "none", "kid": "rsa-1"}, claims, "c2ln")
    assert _check(_provider(keys), none_alg).status is Status.HEADER_NOT_IMPLEMENTED_ALG
    assert _check(_provider(keys), _unsigned({"alg": "none"}, claims, "")).status is Status.BAD_FORMAT
    pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    hs = _unsigned({"alg": "HS256", "kid": "rsa-1"}, claims, "")
    signing_input = hs.rsplit(".", 1)[0].encode()
    mac = hmac.new(pem, signing_input, hashlib.sha256).digest()
    forged = hs + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    check = _check(_provider(keys), forged)
    assert check.status is Status.VERIFICATION_FAIL and check.jwt is not None and not check.jwt.valid


def test_from_headers_reads_only_that_header_after_its_prefix(keys: Keys) -> None:
    """JWTRule `fromHeaders`: "List of header locations from which JWT is expected. For example,
    below is the location spec if JWT is expected to be found in `x-jwt-assertion` header, and
    have `Bearer ` prefix"; the defaults apply only "If no explicit location is specified"
    (Envoy `extractor.cc` `addProvider`). A token in Authorization is then not this rule's: no
    token, no request principal, and the header is left alone."""
    provider = _provider(keys, fromHeaders=[JwtHeader(name="X-Jwt-Assertion", prefix="Istio ")])
    token = _mint(keys.rsa, {})
    found = _check(provider, headers=[("x-jwt-assertion", f"Istio {token}")])
    assert found.status is Status.OK and found.jwt is not None and found.jwt.valid
    assert found.edits.remove_headers == {"x-jwt-assertion"}
    ignored = _check(provider, token)
    assert ignored.jwt is None and "authorization" not in ignored.edits.remove_headers
    assert _check(provider, headers=[("x-jwt-assertion", token)]).jwt is None  # prefix missing


def test_access_token_query_parameter_is_a_default_location(keys: Keys) -> None:
    """JWTRule: default locations "1) The Authorization header using the Bearer schema ... 2)
    `access_token` query parameter"; `fromParams` replaces them. Envoy removes a verified token
    from its query parameter (`JwtParamLocation::removeJwt`) unless forwarded."""
    token = _mint(keys.rsa, {})
    check = _check(_provider(keys), target=f"/api/v1/orders/7?x=1&access_token={token}")
    assert check.status is Status.OK and check.jwt is not None and check.jwt.valid
    assert check.edits.target(f"/api/v1/orders/7?x=1&access_token={token}") == "/api/v1/orders/7?x=1"
    custom = _provider(keys, fromParams=["my_token"])
    assert _check(custom, target=f"/o?access_token={token}").jwt is None
    assert _check(custom, target=f"/o?my_token={token}").status is Status.OK
    headers_only = _provider(keys, fromHeaders=[JwtHeader(name="x-jwt")])
    assert _check(headers_only, target=f"/o?access_token={token}").jwt is None


def test_output_payload_and_claims_to_headers_replace_what_the_client_sent(keys: Keys) -> None:
    """JWTRule `outputPayloadToHeader`: "the header name to output a successfully verified JWT
    payload to the backend" (Envoy `forward_payload_header`: the payload's base64url segment);
    `outputClaimToHeaders` copies string/number/bool claims. Envoy's `sanitizeHeaders` first
    removes those headers from the client's request, so a client cannot forge them."""
    provider = _provider(
        keys,
        outputPayloadToHeader="x-jwt-payload",
        outputClaimToHeaders=[ClaimToHeader(header="x-org", claim="org.name")],
    )
    token = _mint(keys.rsa, {"org": {"name": "acme"}})
    check = _check(provider, token, headers=[("x-jwt-payload", "forged"), ("x-org", "forged")])
    out = dict(check.edits.headers([("X-Jwt-Payload", "forged"), ("x-org", "forged"), ("a", "1")]))
    assert out == {"a": "1", "x-jwt-payload": token.split(".")[1], "x-org": "acme"}
    anonymous = _check(provider, headers=[("x-jwt-payload", "forged")])
    assert anonymous.jwt is None and anonymous.edits.headers([("x-jwt-payload", "forged")]) == []


def test_no_token_means_no_principal_and_no_rule_means_no_filter(keys: Keys) -> None:
    """Reference §4.8: "No token → accepted with no request principal"; without any applicable
    RequestAuthentication Envoy has no jwt_authn filter at all. A CORS preflight bypasses the
    filter (Istio sets `bypass_cors_preflight`)."""
    assert _check(_provider(keys)).jwt is None
    assert verify_request_token("GET", "/", [("Authorization", "Bearer x.y.z")], [], now=NOW) is None
    preflight = [("Origin", "https://shop"), ("Access-Control-Request-Method", "POST")]
    assert _check(_provider(keys), "bad", headers=preflight, method="OPTIONS").jwt is None


def test_several_rules_any_issuer_may_verify_but_an_unknown_one_fails(keys: Keys) -> None:
    """Istio's requirement for several jwtRules is OR{P1, P2, AND{OR{P1, allow_missing},
    OR{P2, allow_missing}}} (pilot `authn` policy applier): a token verified by one rule passes
    even though the other rule (same default location) rejects its issuer; a token no rule
    accepts is rejected."""
    other = provider_from_rule(
        JwtRule.model_validate({"issuer": "https://other.example", "jwks": keys.jwks}), "shop/b[0]", {}
    )
    both = [_provider(keys), other]
    second = _check(both, _mint(keys.rsa, {"iss": "https://other.example"}))
    assert second.status is Status.OK and second.provider == "shop/b[0]"
    assert _check(both, _mint(keys.rsa, {"iss": "https://third.example"})).status is Status.UNKNOWN_ISSUER


def test_jwks_uri_key_sets_come_from_the_fetch_and_fail_without_it(keys: Keys) -> None:
    """A `jwksUri` key set is what was fetched; a failed (or pending) fetch fails every token of
    that issuer with Envoy's "Jwks remote fetch is failed"; a JWKS without a usable key has
    "Jwks doesn't have any valid public key"."""
    rule = JwtRule.model_validate({"issuer": ISSUER, "jwksUri": "http://keys.shop:8080/jwks"})
    token = _mint(keys.rsa, {})
    fetched = provider_from_rule(rule, "p", {"http://keys.shop:8080/jwks": keys.jwks})
    assert _check(fetched, token).status is Status.OK
    assert _check(provider_from_rule(rule, "p", {}), token).status is Status.JWKS_FETCH_FAIL
    assert parse_jwks('{"keys": [{"kty": "RSA", "n": "!"}]}') == ((), Status.JWKS_NO_VALID_KEYS)
    assert parse_jwks("not json")[1] is Status.JWKS_PARSE


def test_the_cache_still_checks_time(keys: Keys) -> None:
    """Envoy's jwt cache keeps verified tokens, but a cache hit still goes through the time and
    audience checks (`authenticator.cc` `startVerify`)."""
    provider = _provider(keys)
    cache: dict[tuple[str, str], ParsedJwt] = {}
    token = _mint(keys.rsa, {"exp": NOW + 10})
    headers = [("Authorization", f"Bearer {token}")]
    first = verify_request_token("GET", "/", headers, [provider], now=NOW, cache=cache)
    later = verify_request_token("GET", "/", headers, [provider], now=NOW + 100, cache=cache)
    assert first is not None and first.status is Status.OK and len(cache) == 1
    assert later is not None and later.status is Status.EXPIRED


def test_waypoint_verdicts_follow_the_verified_claims(keys: Keys) -> None:
    """Reference §4.8: "To require a token, add an AuthorizationPolicy with ... DENY with
    `notRequestPrincipals: ["*"]`": no token is 403 `RBAC: access denied`, an invalid one 401,
    a verified one reaches orders with its payload header and without the token; the
    RequestAuthentication targets Service orders, so it applies to orders only (`authn_for`)."""
    world, _ = live_shop(require_jwt_manifest(ISSUER, keys.jwks))
    engine = PolicyEngine(world, "ambient")
    policies = JwtPolicies(world)
    waypoint = world.waypoints[("shop", "waypoint")]
    assert policies.providers_for(waypoint, world.services[("shop", "frontend")]) == ()
    src = next(w for w in world.workloads if w.key == "shop/frontend-0")
    assert src.ip is not None
    vip = f"{world.services[('shop', 'orders')].cluster_ip}:8080"
    connect = WaypointConnect("CONNECT", vip, (src.ip, 40000), identity_uri(world.principal(src)))
    plan = decide_connect(connect, waypoint, engine, lambda eps: eps[0])

    def answer(*headers: tuple[str, str]) -> tuple[int | None, bytes]:
        sent = [("Host", "orders.shop:8080"), *headers]
        verdict = decide_http(plan, "GET", "/api/v1/orders/7", sent, engine=engine, jwt=policies, now=NOW)
        return verdict.status, verdict.body

    token = _mint(keys.rsa, {})
    assert answer() == (403, b"RBAC: access denied")
    assert answer(("Authorization", f"Bearer {_mint(keys.other_rsa, {})}")) == (401, JWT_FAILED)
    assert answer(("Authorization", f"Bearer {token}")) == (None, b"")
    ok = decide_http(
        plan,
        "GET",
        "/api/v1/orders/7",
        [("Authorization", f"Bearer {token}")],
        engine=engine,
        jwt=policies,
        now=NOW,
    )
    assert ok.edits is not None and ok.edits.headers([("authorization", "t")]) == [
        ("x-jwt-payload", token.split(".")[1])
    ]


class _Jwks(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        code = 200 if self.path == "/jwks" else 404
        self.send_response(code)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[str]:
    handler = type("Handler", (_Jwks,), {"body": keys.jwks.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_jwks_returns_bodies_and_none_for_failures(jwks_server: str, keys: Keys) -> None:
    """The waypoint process GETs each `jwksUri` ("URL of the provider's public key set to
    validate signature of the JWT", JWTRule): the body on 200, None for any failure (a 404, a
    refused connection), which `provider_from_rule` turns into "Jwks remote fetch is failed"."""
    ok, missing, refused = f"{jwks_server}/jwks", f"{jwks_server}/nope", "http://127.0.0.1:1/jwks"
    got = asyncio.run(fetch_jwks([ok, missing, refused], timeout=2.0))
    assert got == {ok: keys.jwks, missing: None, refused: None}
