"""Istio attributes and their conditions: what each AuthorizationPolicy field tests, and how.

One `IstioCondition` per manifest field (`principals`, `notPaths`, a `when` key): within a field
the values are OR'd, and a `notX` field is the negated condition (none may match), as in the API's
`Rule` doc and ztunnel's `ZT:src/rbac.rs` (reference §4.4, §4.5). Each condition knows whether the
node proxy can enforce it (`node_proxy`, reference §4.6) and whether it needs the request
(`Attribute.http_only`, Envoy's `"%q is HTTP only"` in `IS:pilot/pkg/security/authz/model`).

String values use the shared `StringMatch` (exact, `prefix*`, `*suffix`, `*` presence, a leading
`*` checked first, as `IS:pilot/pkg/security/authz/matcher/string.go` does); paths add Envoy's
`{*}` / `{**}` URI templates; `requestPrincipals` split `<iss>/<sub>` at the last `/`
(`requestPrincipalGenerator`); `hosts` are case-insensitive (reference §4.4).

Invariants: a condition is immutable and its test is compiled once, by `make_condition` (the
semantics of every attribute live in that one function), so evaluating a condition is one call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from nodemesh.policy.conditions import StringMatch, parse_network
from nodemesh.policy.flow import FlowContext, Jwt
from nodemesh.policy.ir import Layer

__all__ = ["Attribute", "IstioCondition", "claim_values", "jwt_str", "make_condition"]


class Attribute(Enum):
    """What an Istio field tests. `http_only`: needs the request (Envoy `"%q is HTTP only"`)."""

    PRINCIPAL = "source.principal"
    NAMESPACE = "source.namespace"
    SERVICE_ACCOUNT = "source.serviceAccount"
    TRUST_DOMAIN = "source.trustDomain"
    REMOTE_IP = "remote.ip"
    PORT = "destination.port"
    SNI = "connection.sni"
    ENVOY_FILTER = "experimental.envoy.filters"
    HOST = "request.host"
    METHOD = "request.method"
    PATH = "request.path"
    REQUEST_PRINCIPAL = "request.auth.principal"
    HEADER = "request.headers"
    CLAIM = "request.auth.claims"

    @property
    def http_only(self) -> bool:
        return self in _HTTP_ONLY


_HTTP_ONLY = frozenset(
    {
        Attribute.HOST,
        Attribute.METHOD,
        Attribute.PATH,
        Attribute.REQUEST_PRINCIPAL,
        Attribute.HEADER,
        Attribute.CLAIM,
    }
)


@dataclass(frozen=True, slots=True)
class IstioCondition:
    """One Istio field (`principals`, `notPaths`, a `when` key): any value matches (OR), or for
    a negated field none does. `node_proxy`: ztunnel can enforce it (reference §4.6).
    `test` is the compiled positive test (any value matches), built by `make_condition`."""

    attribute: Attribute
    values: tuple[str, ...]
    negated: bool
    label: str
    node_proxy: bool
    arg: tuple[str, ...] = ()
    test: Callable[[FlowContext], bool] = field(default=lambda ctx: False, compare=False, repr=False)

    @property
    def layer(self) -> Layer:
        return Layer.L7 if self.attribute.http_only else Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        return self.test(ctx) != self.negated

    def describe(self) -> str:
        return f"{self.label} [{', '.join(self.values)}]"


def _principal_parts(principal: str | None) -> tuple[str, str, str] | None:
    """`td/ns/<ns>/sa/<sa>` -> (td, ns, sa), as ztunnel's `Identity::from_str` parses it."""
    if principal is None:
        return None
    parts = principal.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        return None
    return parts[0], parts[2], parts[4]


def _strings(values: Iterable[str], ignore_case: bool = False) -> tuple[Callable[[str], bool], ...]:
    """The shared StringMatch per value, in Istio's order (`*` presence, then a LEADING `*`, then a
    trailing one, else exact: `matcher.StringMatcherWithPrefix`, ambient `stringToMatch`)."""
    return tuple(StringMatch(v, ignore_case).compile() for v in values)


def _is_pattern(value: str) -> bool:
    """Only a leading or trailing `*` is special (API `Rule` doc)."""
    return value.startswith("*") or value.endswith("*")


def _any(fns: tuple[Callable[[str], bool], ...], value: str | None) -> bool:
    if value is None:
        return False
    for f in fns:  # noqa: SIM110 (a loop is faster than any() over a generator here)
        if f(value):
            return True
    return False


def _path_matcher(pattern: str) -> Callable[[str], bool]:
    """Envoy path matching: StringMatch, or a `{*}` / `{**}` URI template (one segment / the rest)."""
    if "{" not in pattern:
        return StringMatch(pattern).compile()
    parts = []
    for seg in pattern.split("/"):
        parts.append("[^/]+" if seg == "{*}" else ".*" if seg == "{**}" else re.escape(seg))
    regex = re.compile("/".join(parts))
    return lambda path: regex.fullmatch(path) is not None


def _request_principal_matcher(value: str) -> Callable[[str | None, str | None], bool]:
    """`requestPrincipalGenerator`: `<iss>/<sub>` split at the LAST `/`, each side matched
    (`*` = any non-empty, `*x` suffix, `x*` prefix)."""
    idx = value.rfind("/")
    found = idx >= 0
    iss, sub = (value[:idx], value[idx + 1 :]) if found else (value, "")
    present: Callable[[str], bool] = bool
    mi: Callable[[str], bool]
    ms: Callable[[str], bool]
    if value == "*":
        mi, ms = present, present
    elif value.startswith("*"):
        if found:
            mi = present if iss == "*" else _suffix(iss[1:])
            ms = _exact(sub)
        else:
            mi, ms = present, _suffix(value[1:])
    elif value.endswith("*"):
        if found:
            mi = _exact(iss)
            ms = present if sub == "*" else _prefix(sub[:-1])
        else:
            mi, ms = _prefix(value[:-1]), present
    else:
        mi, ms = _exact(iss), _exact(sub)
    return lambda i, s: i is not None and s is not None and mi(i) and ms(s)


def _exact(x: str) -> Callable[[str], bool]:
    return lambda s: s == x


def _prefix(x: str) -> Callable[[str], bool]:
    return lambda s: s.startswith(x)


def _suffix(x: str) -> Callable[[str], bool]:
    return lambda s: s.endswith(x)


def claim_values(jwt: Jwt | None, path: Sequence[str]) -> list[str]:
    """A (nested) claim as strings: a string claim, or the string items of a list claim."""
    if jwt is None:
        return []
    current: object = jwt.claims
    for name in path:
        if not isinstance(current, Mapping):
            return []
        current = current.get(name)
    if isinstance(current, str):
        return [current]
    if isinstance(current, list):
        return [v for v in current if isinstance(v, str)]
    return []


def jwt_str(jwt: Jwt, claim: str) -> str | None:
    value = jwt.claims.get(claim)
    return value if isinstance(value, str) else None


def make_condition(
    attribute: Attribute,
    values: Sequence[str],
    *,
    negated: bool,
    label: str,
    node_proxy: bool,
    policy_namespace: str = "",
    arg: tuple[str, ...] = (),
) -> IstioCondition:
    """Build a condition with its compiled test (the semantics of each attribute live here)."""
    vals = tuple(values)
    test: Callable[[FlowContext], bool]
    if attribute is Attribute.PRINCIPAL:
        exact = frozenset(v for v in vals if not _is_pattern(v))
        fns = _strings(v for v in vals if _is_pattern(v))
        if not fns:
            test = lambda ctx: ctx.src.principal in exact  # noqa: E731
        else:
            test = lambda ctx: ctx.src.principal in exact or _any(fns, ctx.src.principal)  # noqa: E731
    elif attribute is Attribute.NAMESPACE:
        fns = _strings(vals)

        def test(ctx: FlowContext) -> bool:
            parts = _principal_parts(ctx.src.principal)
            return _any(fns, parts[1] if parts else "")

    elif attribute is Attribute.SERVICE_ACCOUNT:
        pairs = frozenset(
            (v.split("/", 1)[0], v.split("/", 1)[1]) if "/" in v else (policy_namespace, v) for v in vals
        )

        def test(ctx: FlowContext) -> bool:
            parts = _principal_parts(ctx.src.principal)
            return parts is not None and (parts[1], parts[2]) in pairs

    elif attribute is Attribute.TRUST_DOMAIN:
        fns = _strings(vals)

        def test(ctx: FlowContext) -> bool:
            parts = _principal_parts(ctx.src.principal)
            return parts is not None and _any(fns, parts[0])

    elif attribute is Attribute.REMOTE_IP:
        nets = tuple(parse_network(v) for v in vals)

        def test(ctx: FlowContext) -> bool:
            # remote.ip = the original client: X-Forwarded-For / PROXY protocol only with
            # numTrustedProxies configured; nodemesh trusts none, so it is the peer address.
            ip = ctx.src.ip
            return ip is not None and any(ip in n for n in nets if n.version == ip.version)

    elif attribute is Attribute.PORT:
        ports = frozenset(int(v) for v in vals)
        test = lambda ctx: ctx.port in ports  # noqa: E731
    elif attribute in (Attribute.SNI, Attribute.ENVOY_FILTER):
        # nodemesh sees no TLS SNI and no Envoy dynamic metadata: the attribute is absent.
        test = lambda ctx: False  # noqa: E731
    elif attribute is Attribute.HOST:
        fns = _strings(vals, ignore_case=True)
        test = lambda ctx: ctx.request is not None and _any(fns, ctx.request.host)  # noqa: E731
    elif attribute is Attribute.METHOD:
        fns = _strings(vals)
        test = lambda ctx: ctx.request is not None and _any(fns, ctx.request.method)  # noqa: E731
    elif attribute is Attribute.PATH:
        pfns = tuple(_path_matcher(v) for v in vals)

        def test(ctx: FlowContext) -> bool:
            if ctx.request is None:
                return False
            path = ctx.request.path.split("?", 1)[0].split("#", 1)[0]
            return any(f(path) for f in pfns)

    elif attribute is Attribute.REQUEST_PRINCIPAL:
        rfns = tuple(_request_principal_matcher(v) for v in vals)

        def test(ctx: FlowContext) -> bool:
            jwt = ctx.request.jwt if ctx.request is not None else None
            if jwt is None or not jwt.valid:
                return False
            iss, sub = jwt_str(jwt, "iss"), jwt_str(jwt, "sub")
            return any(f(iss, sub) for f in rfns)

    elif attribute is Attribute.HEADER:
        name = arg[0].lower()
        fns = _strings(v for v in vals if v != "*")
        presence = "*" in vals

        def test(ctx: FlowContext) -> bool:
            if ctx.request is None:
                return False
            value = ctx.request.header(name)
            if value is None:
                return False
            return presence or _any(fns, value)

    else:  # CLAIM (request.auth.claims[...], audiences = aud, presenter = azp)
        fns = _strings(vals)

        def test(ctx: FlowContext) -> bool:
            jwt = ctx.request.jwt if ctx.request is not None else None
            if jwt is None or not jwt.valid:
                return False
            return any(_any(fns, v) for v in claim_values(jwt, arg))

    return IstioCondition(attribute, vals, negated, label, node_proxy, arg, test)
