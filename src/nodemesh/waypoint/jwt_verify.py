"""One token, as google/jwt_verify_lib (Envoy's JWT library) parses and verifies it: the JWKS
key set, the token's parse, and its signature (PyJWT's algorithms do the cryptography).

- `parse_jwks`: a JWKS document's usable keys; a key PyJWT cannot load is skipped
  (`jwks.cc`), a set without any usable key fails every token ("Jwks doesn't have any valid
  public key").
- `parse_jwt` (`jwt.cc` `Jwt::parseFromString`): exactly `header.payload.signature`, each
  non-empty base64url; header and payload JSON objects; `alg` a string among the implemented
  ones (ES256/384/512, HS256/384/512, RS256/384/512, PS256/384/512, EdDSA: never `none`), `kid`
  a string; `iss`, `sub`, `jti` strings, `aud` a string or a list of strings, `iat`, `nbf`,
  `exp` numbers.
- `verify_signature` (`verify.cc` `verifyJwtWithoutTimeChecking`): a JWK is tried when its
  `kid` (if both have one) and its `alg` (if set) match the token's; it verifies only with the
  algorithms of its key type (RSA: RS*/PS*, EC: the ES* of its curve, OKP: EdDSA, oct: HS*), so
  an HMAC is never keyed with a public key. None verifies: "Jwt verification fails" when some
  key matched, else "Jwks doesn't have key to match kid or alg from Jwt".

Pure: no I/O, no clock (time constraints are `jwt_authn`'s, with its skew).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from jwt import PyJWK
from jwt.algorithms import Algorithm
from jwt.exceptions import PyJWTError

__all__ = ["ParsedJwt", "Status", "VerificationKey", "parse_jwks", "parse_jwt", "verify_signature"]

IMPLEMENTED_ALGS = frozenset(
    {"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}
    | {"PS256", "PS384", "PS512", "EdDSA"}
)
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})


class Status(Enum):
    """jwt_verify_lib `getStatusString` (the body Envoy answers a rejected request with)."""

    OK = "OK"
    MISSED = "Jwt is missing"
    NOT_YET_VALID = "Jwt not yet valid"
    EXPIRED = "Jwt is expired"
    BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature"
    HEADER_PARSE = "Jwt header is an invalid Base64url input or an invalid JSON"
    HEADER_BAD_ALG = "Jwt header [alg] field is not a string"
    HEADER_NOT_IMPLEMENTED_ALG = "Jwt header [alg] field value is invalid"
    HEADER_BAD_KID = "Jwt header [kid] field is not a string"
    PAYLOAD_PARSE = "Jwt payload is an invalid Base64 or an invalid JSON"
    SIGNATURE_PARSE = "Jwt signature is an invalid Base64"
    UNKNOWN_ISSUER = "Jwt issuer is not configured"
    AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
    VERIFICATION_FAIL = "Jwt verification fails"
    JWKS_PARSE = "Jwks is an invalid JSON"
    JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"
    KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
    JWKS_FETCH_FAIL = "Jwks remote fetch is failed"


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One usable JWK: its `kid` and `alg` ("" when absent), the token algorithms its key type
    allows, and the key (a `cryptography` public key, or bytes for `oct`)."""

    kid: str
    alg: str
    algorithms: frozenset[str]
    key: object = field(compare=False, repr=False)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _key_algorithms(jwk: Mapping[str, object], declared: str) -> frozenset[str]:
    kty = jwk.get("kty")
    if kty == "RSA":
        family = _RSA_ALGS
    elif kty == "EC":
        alg = _EC_ALGS.get(str(jwk.get("crv")))
        family = frozenset({alg}) if alg else frozenset()
    elif kty == "OKP":
        family = frozenset({"EdDSA"})
    elif kty == "oct":
        family = _HMAC_ALGS
    else:
        family = frozenset()
    return family & {declared} if declared else family


def parse_jwks(text: str) -> tuple[tuple[VerificationKey, ...], Status]:
    """The usable keys of a JWKS document; a key PyJWT cannot load (unknown `kty`, bad fields)
    is skipped, and a set without any usable key fails every token of its issuer."""
    try:
        doc = json.loads(text)
    except ValueError:
        return (), Status.JWKS_PARSE
    raw = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        return (), Status.JWKS_NO_VALID_KEYS
    keys: list[VerificationKey] = []
    for jwk in raw:
        if not isinstance(jwk, dict):
            continue
        kid, alg = jwk.get("kid", ""), jwk.get("alg", "")
        if not isinstance(kid, str) or not isinstance(alg, str):
            continue
        algorithms = _key_algorithms(jwk, alg)
        if not algorithms:
            continue
        try:
            loaded = PyJWK(jwk)
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue
        keys.append(VerificationKey(kid, alg, algorithms, loaded.key))
    return tuple(keys), (Status.OK if keys else Status.JWKS_NO_VALID_KEYS)


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    """A token that parsed (jwt_verify_lib `Jwt::parseFromString`); its signature is unchecked."""

    signing_input: bytes
    payload_b64: str
    signature: bytes
    alg: str
    kid: str
    claims: Mapping[str, object]
    issuer: str
    audiences: tuple[str, ...]
    nbf: int
    exp: int


def _int_claim(claims: Mapping[str, object], name: str) -> int | None:
    value = claims.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _json_object(segment: str) -> dict[str, object] | None:
    """A base64url JSON object segment, or None."""
    try:
        value = json.loads(_b64url(segment))
    except (ValueError, binascii.Error):
        return None
    return value if isinstance(value, dict) else None


def parse_jwt(token: str) -> ParsedJwt | Status:
    """jwt_verify_lib `Jwt::parseFromString`."""
    if token.count(".") != 2:
        return Status.BAD_FORMAT
    header_b64, payload_b64, signature_b64 = token.split(".")
    if not (header_b64 and payload_b64 and signature_b64):
        return Status.BAD_FORMAT
    header = _json_object(header_b64)
    if header is None:
        return Status.HEADER_PARSE
    alg, kid = header.get("alg"), header.get("kid", "")
    if not isinstance(alg, str):
        return Status.HEADER_BAD_ALG
    if alg not in IMPLEMENTED_ALGS:
        return Status.HEADER_NOT_IMPLEMENTED_ALG
    if not isinstance(kid, str):
        return Status.HEADER_BAD_KID
    claims = _json_object(payload_b64)
    if claims is None:
        return Status.PAYLOAD_PARSE
    iss, aud = claims.get("iss", ""), claims.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    nbf, exp = _int_claim(claims, "nbf"), _int_claim(claims, "exp")
    if (
        not isinstance(iss, str)
        or not all(isinstance(claims.get(k, ""), str) for k in ("sub", "jti"))
        or not isinstance(audiences, list)
        or not all(isinstance(a, str) for a in audiences)
        or nbf is None
        or exp is None
        or _int_claim(claims, "iat") is None
    ):
        return Status.PAYLOAD_PARSE
    try:
        signature = _b64url(signature_b64)
    except (ValueError, binascii.Error):
        return Status.SIGNATURE_PARSE
    signing_input = f"{header_b64}.{payload_b64}".encode()
    return ParsedJwt(signing_input, payload_b64, signature, alg, kid, claims, iss, tuple(audiences), nbf, exp)


def verify_signature(
    keys: Sequence[VerificationKey], jwt: ParsedJwt, algorithms: Mapping[str, Algorithm]
) -> Status:
    """jwt_verify_lib `verifyJwtWithoutTimeChecking`: OK when a matching key verifies."""
    matched = False
    for key in keys:
        if jwt.kid and key.kid and key.kid != jwt.kid:
            continue
        if key.alg and key.alg != jwt.alg:
            continue
        matched = True
        if jwt.alg not in key.algorithms:
            continue
        algorithm = algorithms[jwt.alg]
        try:
            if algorithm.verify(jwt.signing_input, algorithm.prepare_key(key.key), jwt.signature):
                return Status.OK
        except (PyJWTError, ValueError, TypeError):
            continue
    return Status.VERIFICATION_FAIL if matched else Status.KID_ALG_MISMATCH
