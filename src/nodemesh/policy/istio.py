"""Istio AuthorizationPolicy, PeerAuthentication, RequestAuthentication: compile, evaluate, analyze.

Every AuthorizationPolicy compiles once into the shared IR (`ir.py`), in full (every field, L7
included): rule = [from clause, to clause, one clause per `when`]; a clause holds one Match per
source / operation / condition; a Match is the AND of one Condition per field (`notX` fields are
negated conditions). That is ztunnel's own shape (`ZT:src/rbac.rs`, reference §4.5): rules OR'd,
clauses AND'd, matches OR'd, fields AND'd; within a field values OR'd; `notX` = none may match.

Who evaluates decides what a policy means (reference §4.2, §4.6), so each view has a projection:

- NODE_PROXY (ambient ztunnel): selector / namespace / mesh policies, projected exactly as istiod's
  `handleRule` (`IS:pilot/pkg/serviceregistry/ambient/authorization.go`) does: an ALLOW rule with
  any L7 attribute is dropped entirely (a policy left with no rule still exists, so it denies);
  in a DENY rule the L7 fields are stripped per Match and a Match left with nothing becomes
  `void` (ztunnel skips empty matches since ZT PR #495), so its clause can only hold through
  another Match, and a clause of void matches makes the rule a no-op. CUSTOM and AUDIT are not
  sent to ztunnel. L7 for ztunnel = hosts, methods, paths, requestPrincipals, remoteIpBlocks,
  trustDomains and every `when` key but source.ip/namespace/principal and destination.ip/port.
  trustDomains: reference §4.6 observed them silently dropped (neither converted nor flagged);
  the newest istiod source read flags them as L7 ("A Match has no trust domain field ... Report
  it instead"); nodemesh follows the latter (fail closed) and says so in the notes.
- WAYPOINT: only `targetRefs` policies (Gateway = this waypoint, Service = the destination
  service, GatewayClass istio-waypoint from the root namespace = every waypoint); "selector
  policies will be ignored" (API proto). Full L7 when the request is seen. For TCP traffic
  (no request) Envoy's TCP filter chain applies (`IS:pilot/pkg/security/authz/model/model.go`
  `checkError`): an ALLOW rule with HTTP-only fields is dropped, and in DENY/AUDIT rules the
  HTTP-only fields are ignored, because "For a DENY rule, missing attributes are treated as
  matches" (API `authorization_policy.proto`). Ports at a waypoint are the Service port
  (`model.go` `AmbientDestinationPortAdapations`: the port comes from the inbound-vip listener).
  RequestAuthentication targeted at the waypoint: a present but invalid JWT is rejected with 401;
  no token = no request principal (reference §4.8).
- SIDECAR (kernel mode's node L7 proxy, "sidecar semantics without sidecars"): selector /
  namespace / mesh policies in full when the request is seen, Envoy TCP semantics otherwise.

Order (API proto, reference §4.1): CUSTOM (never enforced by nodemesh: always noted), DENY,
"no ALLOW policies -> allow", any ALLOW match -> allow, else "allow policies exist, but none
allowed". AUDIT never changes the verdict; dry-run (`istio.io/dry-run: "true"`) policies are
evaluated and only noted.

Invariants: the world is read-only. A policy is compiled on first use (most destinations never
meet most policies) with equal conditions interned; its projections and their compiled predicates
are built once. The applicable, already projected policy list is cached per (view, destination
workload) or (view, waypoint, service); node-proxy decisions, a pure function of (destination,
source principal, port, and the addresses when a policy tests them), are memoized per destination
in a bounded table: the steady state of a node proxy is two dictionary lookups.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from nodemesh.model.schema.base import Document
from nodemesh.model.schema.istio import (
    AuthorizationPolicy,
    Operation,
    PeerAuthentication,
    PolicyTargetReference,
    RequestAuthentication,
    Source,
    split_when_key,
)
from nodemesh.model.world import (
    USE_WAYPOINT,
    USE_WAYPOINT_NAMESPACE,
    WAYPOINT_FOR,
    ServiceInfo,
    Waypoint,
    Workload,
    World,
)
from nodemesh.policy.conditions import CidrCondition, Network, Side, StringMatch, parse_network
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Jwt
from nodemesh.policy.ir import (
    Action,
    Api,
    Clause,
    Condition,
    Direction,
    Layer,
    Match,
    Policy,
    PolicyRef,
    Rule,
    Scope,
)
from nodemesh.policy.selector import LabelSelector

__all__ = [
    "Attribute",
    "IstioCondition",
    "IstioEngine",
    "IstioView",
    "compile_authorization_policy",
    "compile_rules",
    "first_match",
    "make_condition",
    "match_compiled",
    "policy_ref",
    "project_node_proxy",
    "project_tcp",
]

WAYPOINT_CLASS = "istio-waypoint"
STATIC_STRICT = "istio_converted_static_strict"
_MEMO_LIMIT = 4096  # memoized node-proxy decisions per destination workload
_SHADOW_FULL = 256  # earlier rules compared in full for NM205, per attachment


class IstioView(Enum):
    """Who evaluates, which decides which policies apply and what they can see."""

    NODE_PROXY = "node-proxy"  # ambient ztunnel role: selector/namespace/mesh policies, L4 projection
    WAYPOINT = "waypoint"  # ambient waypoint: targetRefs policies only, full L7
    SIDECAR = "sidecar"  # kernel mode node L7 proxy: selector/namespace/mesh policies, sidecar semantics


# ---- conditions -----------------------------------------------------------------------------


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
    return tuple(_string_fn(v, ignore_case) for v in values)


def _string_fn(value: str, ignore_case: bool) -> Callable[[str], bool]:
    """Istio's order (`matcher.StringMatcherWithPrefix`, ambient `stringToMatch`): `*` presence,
    then a LEADING `*` (suffix match), then a trailing `*` (prefix), else exact; so `*a*` is a
    suffix match on `a*`. The shared StringMatch serves every case but that one."""
    if value != "*" and value.startswith("*") and value.endswith("*"):
        tail = value[1:].lower() if ignore_case else value[1:]
        if ignore_case:
            return lambda s: s.lower().endswith(tail)
        return lambda s: s.endswith(tail)
    return StringMatch(value, ignore_case).compile()


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


def _claim_values(jwt: Jwt | None, path: Sequence[str]) -> list[str]:
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


def _jwt_str(jwt: Jwt, claim: str) -> str | None:
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
            iss, sub = _jwt_str(jwt, "iss"), _jwt_str(jwt, "sub")
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
            return any(_any(fns, v) for v in _claim_values(jwt, arg))

    return IstioCondition(attribute, vals, negated, label, node_proxy, arg, test)


# ---- compiling a manifest into the IR ---------------------------------------------------------

# Source/Operation fields: (manifest name, attribute, node proxy can enforce); ipBlocks are
# the shared CidrCondition.
_SOURCE_FIELDS: tuple[tuple[str, Attribute | None, bool], ...] = (
    ("principals", Attribute.PRINCIPAL, True),
    ("requestPrincipals", Attribute.REQUEST_PRINCIPAL, False),
    ("namespaces", Attribute.NAMESPACE, True),
    ("serviceAccounts", Attribute.SERVICE_ACCOUNT, True),
    ("trustDomains", Attribute.TRUST_DOMAIN, False),
    ("ipBlocks", None, True),
    ("remoteIpBlocks", Attribute.REMOTE_IP, False),
)
_OPERATION_FIELDS: tuple[tuple[str, Attribute, bool], ...] = (
    ("hosts", Attribute.HOST, False),
    ("ports", Attribute.PORT, True),
    ("methods", Attribute.METHOD, False),
    ("paths", Attribute.PATH, False),
)
# `when` keys the node proxy enforces (handleRule `l4WhenAttributes`).
_L4_WHEN = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_WHEN_ATTRIBUTES = {
    "source.principal": Attribute.PRINCIPAL,
    "source.namespace": Attribute.NAMESPACE,
    "source.serviceAccount": Attribute.SERVICE_ACCOUNT,
    "source.trustDomain": Attribute.TRUST_DOMAIN,
    "remote.ip": Attribute.REMOTE_IP,
    "destination.port": Attribute.PORT,
    "connection.sni": Attribute.SNI,
    "request.auth.principal": Attribute.REQUEST_PRINCIPAL,
}


def _not(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


# Python attribute -> (position, manifest name, attribute, node proxy, negated), both polarities.
_FieldSpec = tuple[int, str, Attribute | None, bool, bool]


def _field_table(fields: Sequence[tuple[str, Attribute | None, bool]]) -> dict[str, _FieldSpec]:
    table: dict[str, _FieldSpec] = {}
    for pos, (name, attribute, node) in enumerate(fields):
        table[_snake(name)] = (2 * pos, name, attribute, node, False)
        table[_snake(_not(name))] = (2 * pos + 1, _not(name), attribute, node, True)
    return table


_SOURCE_TABLE = _field_table(_SOURCE_FIELDS)
_OPERATION_TABLE = _field_table(_OPERATION_FIELDS)


def _cidr(values: Sequence[str], *, negated: bool, side: Side, label: str) -> CidrCondition:
    nets: tuple[Network, ...] = tuple(parse_network(v) for v in values)
    return CidrCondition(nets, side=side, negated=negated, label=label)


ConditionCache = dict[tuple[object, ...], Condition]


def _condition(
    cache: ConditionCache | None,
    attribute: Attribute | Side,
    values: Sequence[str],
    *,
    negated: bool,
    label: str,
    node_proxy: bool,
    namespace: str,
    arg: tuple[str, ...] = (),
) -> Condition:
    """A condition (interned in `cache`: conditions are immutable, and policies repeat values).
    `attribute` is a Side for an address block (the shared CidrCondition)."""
    key = (attribute, tuple(values), negated, label, node_proxy, namespace, arg)
    if cache is not None and (found := cache.get(key)) is not None:
        return found
    cond: Condition
    if isinstance(attribute, Side):
        cond = _cidr(values, negated=negated, side=attribute, label=label)
    else:
        cond = make_condition(
            attribute,
            values,
            negated=negated,
            label=label,
            node_proxy=node_proxy,
            policy_namespace=namespace,
            arg=arg,
        )
    if cache is not None:
        cache[key] = cond
    return cond


def _fields_match(
    model: Source | Operation, table: dict[str, _FieldSpec], namespace: str, cache: ConditionCache | None
) -> Match:
    """One Match: a condition per field the manifest sets (in a fixed field order)."""
    conds: list[tuple[int, Condition]] = []
    for attr in model.model_fields_set:
        values: list[str] | None = getattr(model, attr)
        spec = table.get(attr)
        if not values or spec is None:
            continue
        pos, key, attribute, node, negated = spec
        ns = namespace if attribute is Attribute.SERVICE_ACCOUNT else ""
        label = "ipBlocks" if attribute is None else key
        what = Side.SOURCE if attribute is None else attribute
        conds.append(
            (
                pos,
                _condition(cache, what, values, negated=negated, label=label, node_proxy=node, namespace=ns),
            )
        )
    conds.sort(key=lambda pc: pc[0])
    return Match(tuple(c for _, c in conds))


def _when_match(
    key: str, values: Sequence[str], not_values: Sequence[str], namespace: str, cache: ConditionCache | None
) -> Match:
    conds: list[Condition] = []
    node = key in _L4_WHEN
    for negated, vals in ((False, values), (True, not_values)):
        if not vals:
            continue
        label = f"when {key}" + (" notValues" if negated else "")
        if key in ("source.ip", "destination.ip"):
            side = Side.SOURCE if key == "source.ip" else Side.DESTINATION
            conds.append(
                _condition(cache, side, vals, negated=negated, label=label, node_proxy=node, namespace="")
            )
            continue
        split = split_when_key(key)
        base, arg = split if split is not None else (key, ())
        if key in _WHEN_ATTRIBUTES:
            attribute = _WHEN_ATTRIBUTES[key]
        elif base == "request.headers":
            attribute = Attribute.HEADER
        elif base == "request.auth.claims":
            attribute = Attribute.CLAIM
        elif key == "request.auth.audiences":
            attribute, arg = Attribute.CLAIM, ("aud",)
        elif key == "request.auth.presenter":
            attribute, arg = Attribute.CLAIM, ("azp",)
        else:
            attribute = Attribute.ENVOY_FILTER
        ns = namespace if attribute is Attribute.SERVICE_ACCOUNT else ""
        conds.append(
            _condition(
                cache, attribute, vals, negated=negated, label=label, node_proxy=node, namespace=ns, arg=arg
            )
        )
    return Match(tuple(conds))


def policy_ref(doc: Document) -> PolicyRef:
    return PolicyRef(Api.ISTIO, doc.kind, doc.namespace, doc.name)


def compile_authorization_policy(
    doc: AuthorizationPolicy, root_namespace: str, cache: ConditionCache | None = None
) -> Policy:
    """The whole manifest in the IR, every field included (the waypoint / sidecar HTTP view).
    `cache` interns equal conditions across policies (pass one dict per engine)."""
    spec = doc.spec
    ns = doc.namespace
    location = doc.location
    rules: list[Rule] = []
    for i, r in enumerate(spec.rules or []):
        clauses: list[Clause] = []
        if r.from_:
            clauses.append(
                Clause(
                    "from",
                    tuple(
                        _fields_match(f.source, _SOURCE_TABLE, ns, cache)
                        for f in r.from_
                        if f.source is not None
                    ),
                )
            )
        if r.to:
            clauses.append(
                Clause(
                    "to",
                    tuple(
                        _fields_match(t.operation, _OPERATION_TABLE, ns, cache) for t in r.to if t.operation
                    ),
                )
            )
        for j, cond in enumerate(r.when or []):
            match = _when_match(cond.key, cond.values or [], cond.not_values or [], ns, cache)
            clauses.append(Clause(f"when[{j}] {cond.key}", (match,)))
        rules.append(Rule(i, f"spec.rules[{i}]", tuple(clauses)))
    refs = tuple(_target_key(ref, ns) for ref in spec.all_target_refs)
    if refs:
        scope = Scope.TARGET_REFS
    elif spec.selector is not None:
        scope = Scope.WORKLOAD_SELECTOR
    else:
        scope = Scope.GLOBAL if ns == root_namespace else Scope.NAMESPACE
    subject = _Subject(LabelSelector.from_labels(spec.selector.match_labels)) if spec.selector else None
    return Policy(
        ref=policy_ref(doc),
        direction=Direction.INGRESS,
        action=Action(spec.action),
        rules=tuple(rules),
        subject=subject,
        scope=scope,
        default_deny=False,
        dry_run=doc.dry_run,
        target_refs=tuple(f"{k}/{n}/{name}" for k, n, name in refs),
        file=location.file,
        line=location.line,
    )


def _target_key(ref: PolicyTargetReference, policy_namespace: str) -> tuple[str, str, str]:
    return (ref.kind, ref.namespace or policy_namespace, ref.name)


@dataclass(frozen=True, slots=True)
class _Subject:
    """An Istio workload selector (matchLabels), as the IR's Subject."""

    selector: LabelSelector

    def selects(self, endpoint: object) -> bool:
        return isinstance(endpoint, Endpoint) and self.selector.matches(endpoint.labels)

    def describe(self) -> str:
        return str(self.selector)


# ---- projections ------------------------------------------------------------------------------


def _l7_fields(rule: Rule, keep: Callable[[Condition], bool]) -> list[str]:
    names: list[str] = []
    for clause in rule.clauses:
        for m in clause.matches:
            for c in m.conditions:
                if not keep(c):
                    label = c.label if isinstance(c, IstioCondition) else "?"
                    label = label.removesuffix(" notValues")
                    if label not in names:
                        names.append(label)
    return names


def _node_proxy_keeps(c: Condition) -> bool:
    return isinstance(c, CidrCondition) or (isinstance(c, IstioCondition) and c.node_proxy)


def _tcp_keeps(c: Condition) -> bool:
    return c.layer is Layer.L4


@dataclass(frozen=True, slots=True)
class _Stripped:
    rule: Rule
    noop: bool
    broader: bool
    narrower: bool


def _strip(rule: Rule, keep: Callable[[Condition], bool], *, void_when_empty: bool) -> _Stripped:
    """Drop the conditions `keep` refuses from every Match. An emptied Match is `void` (ztunnel
    skips it) or matches anything (Envoy: "missing attributes are treated as matches")."""
    clauses: list[Clause] = []
    noop = broader = narrower = False
    for clause in rule.clauses:
        matches: list[Match] = []
        for m in clause.matches:
            kept = tuple(c for c in m.conditions if keep(c))
            if len(kept) == len(m.conditions):
                matches.append(m)
            elif kept:
                broader = True
                matches.append(Match(kept))
            elif void_when_empty:
                narrower = True
                matches.append(Match((), void=True))
            else:
                broader = True
                matches.append(Match(()))
        if void_when_empty and matches and all(m.void for m in matches):
            noop = True
        if not void_when_empty and any(not m.conditions for m in matches):
            continue  # a clause with a match-anything Match holds: drop it
        clauses.append(Clause(clause.name, tuple(matches)))
    return _Stripped(Rule(rule.index, rule.path, tuple(clauses), rule.notes), noop, broader, narrower)


def _is_noop(rule: Rule) -> bool:
    """A rule with a clause made only of void matches can never match (reference §4.6)."""
    return any(c.matches and all(m.void for m in c.matches) for c in rule.clauses)


def project_node_proxy(policy: Policy) -> Policy:
    """The policy as ztunnel receives it from istiod (`handleRule`), with notes saying what changed."""
    what = f"{policy.action.value} {policy.ref.namespace}/{policy.ref.name}"
    rules: list[Rule] = []
    notes: list[str] = []
    for rule in policy.rules:
        l7 = _l7_fields(rule, _node_proxy_keeps)
        if not l7:
            rules.append(rule)
            continue
        fields = ", ".join(l7)
        td = (
            " (trustDomains: ztunnel's Match has no trust-domain field, so istiod cannot send it)"
            if any("rustDomain" in f for f in l7)
            else ""
        )
        if policy.action is Action.ALLOW:
            notes.append(
                f"rule {rule.index} of {what} dropped at the node proxy: it uses L7 fields ({fields}){td}; "
                "attach a waypoint and target it with targetRefs"
            )
            continue
        stripped = _strip(rule, _node_proxy_keeps, void_when_empty=True)
        if stripped.noop:
            effect = "the rule can never fire (a clause has nothing left to match): it is a no-op"
        else:
            parts = []
            if stripped.broader:
                parts.append("it matches more than written (L4 parts kept without their L7 fields)")
            if stripped.narrower:
                parts.append("sources, operations or conditions made only of L7 fields can no longer match")
            effect = "; ".join(parts)
        note = f"rule {rule.index} of {what}: L7 fields ({fields}) stripped at the node proxy{td}; {effect}"
        notes.append(note)
        rules.append(Rule(rule.index, rule.path, stripped.rule.clauses, (*rule.notes, note)))
    if policy.action is Action.ALLOW and policy.rules and not rules:
        notes.append(
            f"{what} has no rule left at the node proxy: as an ALLOW policy it still applies, "
            "so it allows nothing here (everything not allowed by another policy is denied)"
        )
    if policy.action is Action.DENY and notes and all(_is_noop(r) for r in rules):
        notes.append(f"{what} has no enforceable rule at the node proxy: it has no effect here")
    return replace(policy, rules=tuple(rules), notes=(*policy.notes, *notes))


def project_tcp(policy: Policy) -> Policy:
    """The policy in Envoy's TCP filter chain (`model.go` Generate(forTCP=true), `checkError`)."""
    what = f"{policy.action.value} {policy.ref.namespace}/{policy.ref.name}"
    rules: list[Rule] = []
    notes: list[str] = []
    for rule in policy.rules:
        l7 = _l7_fields(rule, _tcp_keeps)
        if not l7:
            rules.append(rule)
            continue
        fields = ", ".join(l7)
        if policy.action is Action.ALLOW:
            notes.append(
                f"rule {rule.index} of {what} does not apply to TCP traffic: "
                f"it uses HTTP-only fields ({fields})"
            )
            continue
        note = (
            f"rule {rule.index} of {what} applies to TCP traffic without its HTTP-only fields ({fields}): "
            "for a DENY rule, missing attributes are treated as matches"
        )
        notes.append(note)
        stripped = _strip(rule, _tcp_keeps, void_when_empty=False)
        rules.append(Rule(rule.index, rule.path, stripped.rule.clauses, (*rule.notes, note)))
    return replace(policy, rules=tuple(rules), notes=(*policy.notes, *notes))


Check = Callable[[FlowContext], bool]
Compiled = tuple[tuple[Rule, tuple[tuple[tuple[Check, ...], ...], ...]], ...]


def _check(c: Condition) -> Check:
    if isinstance(c, IstioCondition):
        test = c.test
        return test if not c.negated else (lambda ctx: not test(ctx))
    return c.matches


def compile_rules(policy: Policy) -> Compiled:
    """The rules as nested tuples of predicates, for `match_compiled`: empty clauses (always true)
    are left out, void matches are left out (a clause of void matches becomes `()`: never true)."""
    return tuple(
        (
            rule,
            tuple(
                tuple(tuple(_check(c) for c in m.conditions) for m in clause.matches if not m.void)
                for clause in rule.clauses
                if clause.matches
            ),
        )
        for rule in policy.rules
    )


def match_compiled(compiled: Compiled, ctx: FlowContext) -> Rule | None:
    """`first_match` over `compile_rules` output: same semantics, fewer attribute lookups."""
    for rule, clauses in compiled:
        for matches in clauses:
            for checks in matches:
                for check in checks:
                    if not check(ctx):
                        break
                else:
                    break
            else:
                break
        else:
            return rule
    return None


def first_match(policy: Policy, ctx: FlowContext) -> Rule | None:
    """ztunnel's `Authorization::matches` (reference §4.5), returning the rule that matched."""
    for rule in policy.rules:
        for clause in rule.clauses:
            matches = clause.matches
            if not matches:
                continue
            for m in matches:
                if m.void:
                    continue
                for c in m.conditions:
                    if not c.matches(ctx):
                        break
                else:
                    break  # this match holds: the clause holds
            else:
                break  # no match held: the clause fails, the rule fails
        else:
            return rule
    return None


# ---- the engine -------------------------------------------------------------------------------


_Ready = tuple[Policy, Compiled]
_PeerLevels = tuple[PeerAuthentication | None, PeerAuthentication | None, PeerAuthentication | None]


@dataclass(eq=False)
class _Entry:
    """One AuthorizationPolicy: its manifest and attachment, its IR (compiled on first use: most
    destinations never meet most policies) and its projections (also built on first use)."""

    order: int
    doc: AuthorizationPolicy
    root: str
    cache: ConditionCache
    selector: LabelSelector | None
    targets: tuple[tuple[str, str, str], ...]
    _policy: Policy | None = None
    _node: Policy | None = None
    _tcp: Policy | None = None
    _ready: dict[tuple[bool, bool], _Ready] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = compile_authorization_policy(self.doc, self.root, self.cache)
        return self._policy

    @property
    def action(self) -> Action:
        return Action(self.doc.spec.action)

    def ready(self, view: IstioView, tcp: bool) -> _Ready:
        """The projection for `view` with its compiled predicates (cached)."""
        key = (view is IstioView.NODE_PROXY, tcp and view is not IstioView.NODE_PROXY)
        found = self._ready.get(key)
        if found is None:
            policy = self.view(view, tcp)
            found = self._ready[key] = (policy, compile_rules(policy))
        return found

    def view(self, view: IstioView, tcp: bool) -> Policy:
        if view is IstioView.NODE_PROXY:
            if self._node is None:
                self._node = project_node_proxy(self.policy)
            return self._node
        if tcp:
            if self._tcp is None:
                self._tcp = project_tcp(self.policy)
            return self._tcp
        return self.policy


@dataclass(frozen=True, slots=True)
class _Authn:
    """A RequestAuthentication: its issuers and their audiences (empty = any)."""

    ref: PolicyRef
    rules: tuple[tuple[str, frozenset[str]], ...]


@dataclass(frozen=True, slots=True)
class _Applicable:
    """What applies at one view for one destination (or waypoint/service), already projected."""

    labels: Mapping[str, str] | None
    custom: tuple[Policy, ...] = ()
    deny: tuple[_Ready, ...] = ()
    deny_dry: tuple[_Ready, ...] = ()
    audit: tuple[_Ready, ...] = ()
    allow: tuple[_Ready, ...] = ()
    allow_dry: tuple[_Ready, ...] = ()
    authn: tuple[_Authn, ...] = ()
    notes: tuple[str, ...] = ()
    ip_sensitive: bool = False
    memo: dict[tuple[object, ...], Decision] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        """Nothing applies and there is nothing to say (an AUDIT policy skipped at the node proxy
        still leaves a note, so it is not empty)."""
        return not (
            self.custom
            or self.deny
            or self.deny_dry
            or self.audit
            or self.allow
            or self.allow_dry
            or self.notes
        )


class IstioEngine:
    """Every Istio security policy of a world, compiled once; evaluated per view."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.root = world.root_namespace
        self._entries: list[_Entry] = []
        self._conditions: ConditionCache = {}
        self._by_namespace: dict[str, list[_Entry]] = {}
        self._by_target: dict[tuple[str, str, str], list[_Entry]] = {}
        self._class_targeted: list[_Entry] = []
        self._peer: list[PeerAuthentication] = []
        self._authn: list[RequestAuthentication] = []
        self._cache: dict[tuple[object, ...], _Applicable] = {}
        self._node_cache: dict[tuple[object, ...], _Applicable] = {}
        self._by_ns: dict[str, list[Workload]] | None = None
        self._peer_cache: dict[tuple[object, ...], tuple[Mapping[str, str], *_PeerLevels]] = {}
        for doc in world.policies:
            if isinstance(doc, AuthorizationPolicy):
                self._add(doc)
            elif isinstance(doc, PeerAuthentication):
                self._peer.append(doc)
            elif isinstance(doc, RequestAuthentication):
                self._authn.append(doc)

    @property
    def policies(self) -> list[Policy]:
        """Every AuthorizationPolicy in the IR, in full (all fields), in manifest order."""
        return [e.policy for e in self._entries]

    def _add(self, doc: AuthorizationPolicy) -> None:
        spec = doc.spec
        targets = tuple(_target_key(r, doc.namespace) for r in spec.all_target_refs)
        selector = LabelSelector.from_labels(spec.selector.match_labels) if spec.selector else None
        entry = _Entry(len(self._entries), doc, self.root, self._conditions, selector, targets)
        self._entries.append(entry)
        if targets:
            for t in targets:
                if t[0] == "GatewayClass":
                    if (
                        t[2] == WAYPOINT_CLASS
                        and doc.namespace == self.root
                        and entry not in self._class_targeted
                    ):
                        self._class_targeted.append(entry)
                else:
                    self._by_target.setdefault(t, []).append(entry)
        else:
            self._by_namespace.setdefault(doc.namespace, []).append(entry)

    # ---- which policies apply ---------------------------------------------------------------
    def _workload_entries(self, namespace: str, labels: Mapping[str, str]) -> list[_Entry]:
        """Selector / namespace / mesh policies for a workload (reference §4.2)."""
        out: list[_Entry] = []
        spaces = (namespace,) if namespace == self.root else (namespace, self.root)
        for ns in spaces:
            for e in self._by_namespace.get(ns, ()):
                if e.selector is None or e.selector.matches(labels):
                    out.append(e)
        return out

    def _waypoint_entries(self, waypoint: Waypoint | None, service: ServiceInfo | None) -> list[_Entry]:
        """targetRefs policies: the waypoint's Gateway, the Service, GatewayClass istio-waypoint."""
        out: list[_Entry] = []
        keys: list[tuple[str, str, str]] = []
        if waypoint is not None:
            keys.append(("Gateway", waypoint.namespace, waypoint.name))
        if service is not None:
            keys.append(("Service", service.namespace, service.name))
        for key in keys:
            for e in self._by_target.get(key, ()):
                if e not in out:
                    out.append(e)
        if waypoint is not None:
            out += [e for e in self._class_targeted if e not in out]
        out.sort(key=lambda e: e.order)
        return out

    def _authn_for(
        self,
        view: IstioView,
        dst: Endpoint | None,
        waypoint: Waypoint | None,
        service: ServiceInfo | None,
    ) -> tuple[_Authn, ...]:
        out: list[_Authn] = []
        for doc in self._authn:
            refs = {_target_key(r, doc.namespace) for r in doc.spec.all_target_refs}
            if view is IstioView.WAYPOINT:
                hit = (
                    (waypoint is not None and ("Gateway", waypoint.namespace, waypoint.name) in refs)
                    or (service is not None and ("Service", service.namespace, service.name) in refs)
                    or (
                        waypoint is not None
                        and doc.namespace == self.root
                        and ("GatewayClass", self.root, WAYPOINT_CLASS) in refs
                    )
                )
            elif view is IstioView.SIDECAR and dst is not None and dst.namespace is not None and not refs:
                in_scope = doc.namespace in (dst.namespace, self.root)
                sel = doc.spec.selector
                hit = in_scope and (
                    sel is None or LabelSelector.from_labels(sel.match_labels).matches(dst.labels)
                )
            else:
                hit = False
            if hit:
                rules = tuple((r.issuer, frozenset(r.audiences)) for r in doc.spec.jwt_rules)
                out.append(_Authn(policy_ref(doc), rules))
        return tuple(out)

    def _applicable(
        self,
        view: IstioView,
        tcp: bool,
        dst: Endpoint,
        waypoint: Waypoint | None,
        service: ServiceInfo | None,
    ) -> _Applicable:
        if view is IstioView.WAYPOINT:
            key: tuple[object, ...] = (
                view,
                tcp,
                waypoint.key if waypoint else None,
                (service.namespace, service.name) if service else None,
            )
        elif view is IstioView.NODE_PROXY:
            key = (dst.namespace, dst.pod or dst.workload)
        else:
            key = (view, tcp, dst.namespace, dst.pod or dst.workload)
        cache = self._node_cache if view is IstioView.NODE_PROXY else self._cache
        cached = cache.get(key)
        if cached is not None and (
            view is IstioView.WAYPOINT or cached.labels is dst.labels or cached.labels == dst.labels
        ):
            return cached
        if view is IstioView.WAYPOINT:
            entries = self._waypoint_entries(waypoint, service)
        elif dst.namespace is None:
            entries = []
        else:
            entries = self._workload_entries(dst.namespace, dst.labels)
        found = self._build(view, tcp=tcp, entries=entries, dst=dst, waypoint=waypoint, service=service)
        cache[key] = found
        return found

    def _build(
        self,
        view: IstioView,
        *,
        tcp: bool,
        entries: list[_Entry],
        dst: Endpoint,
        waypoint: Waypoint | None,
        service: ServiceInfo | None,
    ) -> _Applicable:
        custom: list[Policy] = []
        buckets: dict[str, list[_Ready]] = {
            k: [] for k in ("deny", "deny_dry", "audit", "allow", "allow_dry")
        }
        notes: list[str] = []
        for e in entries:
            action = e.action
            name = f"{e.doc.namespace}/{e.doc.name}"
            if action is Action.CUSTOM:
                provider = e.doc.spec.provider.name if e.doc.spec.provider else "?"
                notes.append(
                    f"CUSTOM policy {name} is not enforced by nodemesh "
                    f"(external authorizer {provider!r} is never called)"
                )
                custom.append(e.policy)
                continue
            if action is Action.AUDIT and view is IstioView.NODE_PROXY:
                notes.append(
                    f"AUDIT {name} is not evaluated at the node proxy (ztunnel does not support AUDIT)"
                )
                continue
            ready = e.ready(view, tcp)
            notes.extend(ready[0].notes)
            dry = "_dry" if e.doc.dry_run else ""
            if action is Action.AUDIT:
                buckets["audit"].append(ready)
            elif action is Action.DENY:
                buckets["deny" + dry].append(ready)
            else:
                buckets["allow" + dry].append(ready)
        authn = self._authn_for(view, dst, waypoint, service) if not tcp else ()
        ip_sensitive = any(_reads_addresses(p) for bucket in buckets.values() for p, _ in bucket)
        return _Applicable(
            labels=None if view is IstioView.WAYPOINT else dst.labels,
            custom=tuple(custom),
            deny=tuple(buckets["deny"]),
            deny_dry=tuple(buckets["deny_dry"]),
            audit=tuple(buckets["audit"]),
            allow=tuple(buckets["allow"]),
            allow_dry=tuple(buckets["allow_dry"]),
            authn=authn,
            notes=tuple(dict.fromkeys(notes)),
            ip_sensitive=ip_sensitive,
        )

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        ctx: FlowContext,
        view: IstioView,
        *,
        waypoint: Waypoint | None = None,
        service: ServiceInfo | None = None,
    ) -> Decision | None:
        """The Istio verdict at `view` for ctx; None when no Istio policy applies there (no say).

        NODE_PROXY ignores ctx.request (ztunnel sees none). WAYPOINT and SIDECAR use the request
        when there is one, Envoy's TCP semantics when there is none.
        """
        if view is IstioView.NODE_PROXY:
            # The node proxy's verdict depends only on the destination, the source principal, the
            # port and (if a policy tests them) the addresses: memoized per destination.
            dst, src = ctx.dst, ctx.src
            found = self._node_cache.get((dst.namespace, dst.pod or dst.workload))
            if found is None or not (found.labels is dst.labels or found.labels == dst.labels):
                found = self._applicable(view, True, dst, None, None)
            if found.empty:
                return None
            if found.ip_sensitive:
                dkey: tuple[object, ...] = (src.principal, ctx.port, _ip_key(src.ip), _ip_key(dst.ip))
            else:
                dkey = (src.principal, ctx.port)
            memo = found.memo
            decision = memo.get(dkey)
            if decision is None:
                decision = self._decide(found, ctx, view)
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[dkey] = decision
            return decision
        tcp = ctx.request is None
        found = self._applicable(view, tcp, ctx.dst, waypoint, service)
        if view is IstioView.WAYPOINT and service is not None:
            ctx = self._at_service_port(ctx, service)
        if not tcp:
            rejected, ctx = self._authenticate(found, ctx)
            if rejected is not None:
                return rejected
        if found.empty:
            return None
        return self._decide(found, ctx, view)

    def applicable(
        self,
        ctx: FlowContext,
        view: IstioView,
        *,
        waypoint: Waypoint | None = None,
        service: ServiceInfo | None = None,
    ) -> list[Policy]:
        """The AuthorizationPolicies that apply to ctx at `view`, as that view sees them (projected,
        with their notes), in evaluation order: DENY, AUDIT, ALLOW (dry-run ones after each)."""
        tcp = view is IstioView.NODE_PROXY or ctx.request is None
        found = self._applicable(view, tcp, ctx.dst, waypoint, service)
        ready = (*found.deny, *found.deny_dry, *found.audit, *found.allow, *found.allow_dry)
        return [*found.custom, *(p for p, _ in ready)]

    @staticmethod
    def _at_service_port(ctx: FlowContext, service: ServiceInfo) -> FlowContext:
        """A waypoint sees the Service port (inbound-vip listener), not the target port."""
        for p in service.ports:
            target = p.target_port
            port = target if isinstance(target, int) else ctx.dst.named_port(target, p.protocol)
            if port == ctx.port and p.protocol is ctx.protocol:
                if p.port == ctx.port:
                    return ctx
                return FlowContext(ctx.src, ctx.dst, p.port, ctx.protocol, ctx.request)
        return ctx

    @staticmethod
    def _authenticate(found: _Applicable, ctx: FlowContext) -> tuple[Decision | None, FlowContext]:
        """RequestAuthentication (Envoy jwt_authn before RBAC): a present token must verify, come
        from a configured issuer and carry an accepted audience, else 401; no token passes with no
        request principal. Without a RequestAuthentication the token is never verified, so it
        gives no request principal either."""
        request = ctx.request
        assert request is not None
        jwt = request.jwt
        if jwt is None:
            return None, ctx
        if not found.authn:
            stripped = HttpRequest(request.method, request.path, request.host, request.headers, None)
            return None, FlowContext(ctx.src, ctx.dst, ctx.port, ctx.protocol, stripped)
        ref = found.authn[0].ref
        if not jwt.valid:
            return _jwt_reject("Jwt verification fails", ref), ctx
        iss = _jwt_str(jwt, "iss")
        aud = _claim_values(jwt, ("aud",))
        issuers = [(a.ref, auds) for a in found.authn for issuer, auds in a.rules if issuer == iss]
        if not issuers:
            return _jwt_reject(f"Jwt issuer is not configured ({iss})", ref), ctx
        if not any(not auds or auds.intersection(aud) for _, auds in issuers):
            return _jwt_reject("Audiences in Jwt are not allowed", issuers[0][0]), ctx
        return None, ctx

    def _decide(self, found: _Applicable, ctx: FlowContext, view: IstioView) -> Decision:
        notes = list(found.notes)
        l7 = view is not IstioView.NODE_PROXY and ctx.request is not None
        status = 403 if l7 else None
        head = "RBAC: access denied: " if l7 else ""
        for p, compiled in found.deny_dry:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                notes.append(f"dry-run DENY {p.ref.namespace}/{p.ref.name} would deny (rule {rule.index})")
        for p, compiled in found.deny:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                return Decision.deny(
                    f"{head}explicitly denied by: {p.ref.namespace}/{p.ref.name} (DENY rule {rule.index})",
                    api=Api.ISTIO,
                    policy=p.ref,
                    rule=rule.index,
                    drop_reason=DropReason.POLICY_DENY,
                    status=status,
                    notes=tuple(self._audit_notes(found, ctx, notes)),
                )
        notes = self._audit_notes(found, ctx, notes)
        for p, compiled in found.allow_dry:
            rule = match_compiled(compiled, ctx)
            verdict = f"would allow (rule {rule.index})" if rule is not None else "would not allow"
            notes.append(f"dry-run ALLOW {p.ref.namespace}/{p.ref.name} {verdict}")
        if not found.allow:
            return Decision.allow(
                "no DENY policy matched and no ALLOW policy applies", api=Api.ISTIO, notes=tuple(notes)
            )
        for p, compiled in found.allow:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                return Decision.allow(
                    f"allowed by {p.ref.namespace}/{p.ref.name} (ALLOW rule {rule.index})",
                    api=Api.ISTIO,
                    policy=p.ref,
                    rule=rule.index,
                    notes=tuple(notes),
                )
        names = ", ".join(f"{p.ref.namespace}/{p.ref.name}" for p, _ in found.allow)
        for p, _ in found.allow[:2]:
            notes.extend(_why_not(p, ctx))
        return Decision.deny(
            f"{head}allow policies exist, but none allowed (ALLOW policies: {names})",
            api=Api.ISTIO,
            policy=found.allow[0][0].ref,
            drop_reason=DropReason.POLICY_DENIED,
            status=status,
            notes=tuple(notes),
        )

    @staticmethod
    def _audit_notes(found: _Applicable, ctx: FlowContext, notes: list[str]) -> list[str]:
        for p, compiled in found.audit:
            rule = match_compiled(compiled, ctx)
            if rule is not None:
                notes.append(
                    f"AUDIT {p.ref.namespace}/{p.ref.name} matched (rule {rule.index}): "
                    "the request is marked for audit"
                )
        return notes

    def has_l7_rules(self, ctx: FlowContext) -> bool:
        """Kernel mode: does a policy applying to ctx.dst at the SIDECAR view have HTTP-only fields
        that could apply to ctx.port (so the flow must go through the node L7 proxy)? A
        RequestAuthentication selecting the workload counts: its token check needs the proxy."""
        found = self._applicable(IstioView.SIDECAR, False, ctx.dst, None, None)
        if found.authn:
            return True
        for p, _ in (*found.deny, *found.deny_dry, *found.audit, *found.allow, *found.allow_dry):
            for rule in p.rules:
                if rule.has_l7 and _port_possible(rule, ctx):
                    return True
        return False

    # ---- PeerAuthentication ---------------------------------------------------------------------
    def peer_authentication(self, ctx: FlowContext) -> Decision | None:
        """The effective mTLS mode for ctx.dst at ctx.port (reference §4.7): mesh (root namespace,
        no selector, oldest wins), then namespace, then workload selector, then portLevelMtls by
        target port; UNSET inherits; DISABLE acts as PERMISSIVE. STRICT and plaintext (no peer
        principal) is denied. None when no PeerAuthentication applies."""
        dst = ctx.dst
        if dst.namespace is None or not self._peer:
            return None
        key = (dst.namespace, dst.pod or dst.workload)
        cached = self._peer_cache.get(key)
        if cached is None or not (cached[0] is dst.labels or cached[0] == dst.labels):
            cached = (dst.labels, *self._peer_levels(dst.namespace, dst.labels))
            self._peer_cache[key] = cached
        _, mesh, ns, wl = cached
        if mesh is None and ns is None and wl is None:
            return None
        mode, source, level = "PERMISSIVE", None, "default"
        for pa, lvl in ((mesh, "mesh-wide"), (ns, "namespace-wide"), (wl, "workload")):
            if pa is not None and pa.spec.mode != "UNSET":
                mode, source, level = pa.spec.mode, pa, lvl
        if wl is not None and wl.spec.port_level_mtls:
            port_mode = wl.spec.port_level_mtls.get(ctx.port)
            if port_mode is not None and port_mode.mode != "UNSET":
                mode, source, level = port_mode.mode, wl, f"port {ctx.port}"
        decider = source or wl or ns or mesh
        assert decider is not None
        ref = policy_ref(decider)
        notes: list[str] = []
        if mode == "DISABLE":
            notes.append(
                f"PeerAuthentication {ref.namespace}/{ref.name} sets DISABLE, which ambient does not "
                "support: treated as PERMISSIVE (mTLS between mesh workloads still happens)"
            )
            mode = "PERMISSIVE"
        if mode == "STRICT":
            if ctx.src.principal is None:
                return Decision.deny(
                    f"PeerAuthentication {ref.namespace}/{ref.name} requires mTLS ({level} STRICT) and this "
                    f"connection is plaintext (ztunnel: explicitly denied by: {self.root}/{STATIC_STRICT})",
                    api=Api.ISTIO,
                    policy=ref,
                    drop_reason=DropReason.UNENCRYPTED,
                    notes=tuple(notes),
                )
            return Decision.allow(
                f"mTLS as PeerAuthentication {ref.namespace}/{ref.name} requires ({level} STRICT)",
                api=Api.ISTIO,
                policy=ref,
                notes=tuple(notes),
            )
        how = "mTLS" if ctx.src.principal is not None else "plaintext"
        return Decision.allow(
            f"{how} accepted: PeerAuthentication {ref.namespace}/{ref.name} leaves {level} mode PERMISSIVE",
            api=Api.ISTIO,
            policy=ref,
            notes=tuple(notes),
        )

    def _peer_levels(self, namespace: str, labels: Mapping[str, str]) -> _PeerLevels:
        """The mesh, namespace and workload PeerAuthentication for a workload (IS
        convertedSelectorPeerAuthentications: selector policies in the root namespace are ignored)."""
        mesh = self._oldest(p for p in self._peer if p.namespace == self.root and not p.spec.has_selector)
        if namespace == self.root:
            return mesh, None, None
        ns = self._oldest(p for p in self._peer if p.namespace == namespace and not p.spec.has_selector)
        wl = self._oldest(
            p
            for p in self._peer
            if p.namespace == namespace
            and p.spec.selector is not None
            and p.spec.has_selector
            and LabelSelector.from_labels(p.spec.selector.match_labels).matches(labels)
        )
        return mesh, ns, wl

    @staticmethod
    def _oldest(candidates: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
        """The oldest wins (creationTimestamp); manifests carry none, so the first in order."""
        return next(iter(candidates), None)

    # ---- analyze --------------------------------------------------------------------------------
    def analyze(self) -> list[Finding]:
        """NM201-NM208: Istio policies that cannot work as written in this world."""
        out: list[Finding] = []
        for e in self._entries:
            out += self._l7_at_node_proxy(e)
            out += self._targets(e.doc, e.targets)
            out += self._selector_matches(e.doc, e.doc.spec.selector)
            out += self._never_fires(e)
            out += self._unsupported(e)
        out += self._shadowed()
        for ra in self._authn:
            targets = tuple(_target_key(r, ra.namespace) for r in ra.spec.all_target_refs)
            out += self._targets(ra, targets)
            out += self._selector_matches(ra, ra.spec.selector)
            if self.world.mode == "ambient" and not targets:
                out.append(
                    self._finding(
                        "NM201",
                        Severity.WARNING,
                        ra,
                        "in ambient mode only waypoints validate JWTs and they ignore selector policies: "
                        "this RequestAuthentication has no effect; attach it with targetRefs to a waypoint "
                        "(Gateway) or a Service that uses one",
                    )
                )
        for pa in self._peer:
            out += self._selector_matches(pa, pa.spec.selector)
            disabled = [str(p) for p, m in (pa.spec.port_level_mtls or {}).items() if m.mode == "DISABLE"]
            if pa.spec.mode == "DISABLE" or disabled:
                where = "" if pa.spec.mode == "DISABLE" else f" on port(s) {', '.join(disabled)}"
                out.append(
                    self._finding(
                        "NM208",
                        Severity.WARNING,
                        pa,
                        f"mTLS mode DISABLE{where} is not supported by nodemesh (as in Istio ambient): it is "
                        "treated as PERMISSIVE; mesh workloads still use mTLS, plaintext is still accepted",
                    )
                )
        out += self._use_waypoint_labels()
        return out

    @staticmethod
    def _finding(code: str, severity: Severity, doc: Document, message: str) -> Finding:
        line = doc.location.line
        return Finding(
            code, severity, f"{doc.kind} {doc.namespace}/{doc.name}", message, doc.location.file, line
        )

    def _workloads_in(self, namespace: str) -> list[Workload]:
        """The workloads a policy in `namespace` can select (all of them from the root namespace)."""
        if self._by_ns is None:
            self._by_ns = {}
            for w in self.world.workloads:
                self._by_ns.setdefault(w.namespace, []).append(w)
        if namespace == self.root:
            return self.world.workloads
        return self._by_ns.get(namespace, [])

    def _selected(self, doc: Document, labels: Mapping[str, str]) -> list[str]:
        selector = LabelSelector.from_labels(labels)
        seen = {
            f"{w.namespace}/{w.name}": None
            for w in self._workloads_in(doc.namespace)
            if selector.matches(w.labels)
        }
        return list(seen)

    def _l7_at_node_proxy(self, e: _Entry) -> list[Finding]:
        if self.world.mode != "ambient" or e.targets or e.policy.action not in (Action.ALLOW, Action.DENY):
            return []
        node = e.view(IstioView.NODE_PROXY, True)
        if node.notes == e.policy.notes:
            return []
        if e.policy.action is Action.ALLOW:
            if not node.rules:
                effect = "so this ALLOW denies more than written: it allows nothing at the node proxy"
            else:
                effect = "so this ALLOW denies more than written (those rules allow nothing)"
        elif all(_is_noop(r) for r in node.rules):
            effect = "so this DENY silently does nothing"
        else:
            stripped = [
                _strip(r, _node_proxy_keeps, void_when_empty=True)
                for r in e.policy.rules
                if _l7_fields(r, _node_proxy_keeps)
            ]
            parts = []
            if any(x.broader for x in stripped):
                parts.append("denies more than written (L4 parts kept without their L7 conditions)")
            if any(x.noop or x.narrower for x in stripped):
                parts.append("denies less than written (L7-only parts can never match)")
            effect = "so this DENY " + " and ".join(parts)
        waypoints: set[str] = set()
        for w in self._workloads_of(e):
            found = [
                self.world.workload_waypoint(w),
                *map(self.world.service_waypoint, self.world.services_of(w)),
            ]
            waypoints.update(wp.key for wp in found if wp is not None)
        hint = (
            f"; waypoint(s) {', '.join(sorted(waypoints))} serve these workloads but ignore selector "
            "policies: target the waypoint or the Service with targetRefs"
            if waypoints
            else "; no waypoint serves these workloads: attach one (istio.io/use-waypoint) and use targetRefs"
        )
        details = "; ".join(n for n in node.notes if n not in e.policy.notes)
        return [
            self._finding(
                "NM201",
                Severity.WARNING,
                e.doc,
                "L7 fields in a selector/namespace-scoped policy are enforced by the node proxy, which "
                f"cannot see requests, {effect}{hint}. {details}",
            )
        ]

    def _workloads_of(self, e: _Entry) -> list[Workload]:
        return [
            w
            for w in self._workloads_in(e.doc.namespace)
            if e.selector is None or e.selector.matches(w.labels)
        ]

    def _targets(self, doc: Document, targets: tuple[tuple[str, str, str], ...]) -> list[Finding]:
        out: list[Finding] = []
        for kind, ns, name in targets:
            problem: str | None = None
            if self.world.mode != "ambient":
                problem = (
                    f"targetRefs {kind} {ns}/{name}: mode {self.world.mode} runs no waypoints, nothing "
                    "enforces this policy; use a selector (enforced by the node L7 proxy in kernel mode)"
                )
            elif kind == "Service":
                svc = self.world.services.get((ns, name))
                if svc is None:
                    problem = (
                        f"targets Service {ns}/{name}, which does not exist: nothing enforces this policy"
                    )
                elif self.world.service_waypoint(svc) is None:
                    problem = (
                        f"targets Service {ns}/{name}, which has no waypoint (label it "
                        "istio.io/use-waypoint, or its namespace): nothing enforces this policy"
                    )
            elif kind == "Gateway":
                if (ns, name) not in self.world.waypoints:
                    other = any(
                        d.kind == "Gateway" and d.namespace == ns and d.name == name
                        for d in self.world.documents
                    )
                    problem = (
                        f"targets Gateway {ns}/{name}, which is not a waypoint (gatewayClassName is not "
                        f"{WAYPOINT_CLASS}): nodemesh runs no other gateways, nothing enforces this policy"
                        if other
                        else f"targets Gateway {ns}/{name}, which does not exist: nothing enforces it"
                    )
            elif kind == "GatewayClass":
                if name != WAYPOINT_CLASS:
                    problem = f"targets GatewayClass {name}: only {WAYPOINT_CLASS} is a waypoint class"
                elif doc.namespace != self.root:
                    problem = (
                        f"targets GatewayClass {name} outside the root namespace {self.root}: "
                        "it applies to nothing"
                    )
                elif not self.world.waypoints:
                    problem = "targets every waypoint (GatewayClass istio-waypoint), but there is none"
            else:
                problem = (
                    f"targets {kind} {ns}/{name}: nodemesh does not support {kind}, nothing enforces this"
                )
            if problem:
                out.append(self._finding("NM202", Severity.ERROR, doc, problem))
        return out

    def _selector_matches(self, doc: Document, selector: object) -> list[Finding]:
        labels = getattr(selector, "match_labels", None)
        if not labels:
            return []
        if self._selected(doc, labels):
            return []
        where = "any namespace" if doc.namespace == self.root else f"namespace {doc.namespace}"
        sel = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return [
            self._finding("NM203", Severity.WARNING, doc, f"selector {sel} matches no workload in {where}")
        ]

    def _never_fires(self, e: _Entry) -> list[Finding]:
        if e.policy.action is not Action.DENY:
            return []
        out = []
        for rule in e.policy.rules:
            why = _never_matches(rule)
            if why:
                out.append(
                    self._finding(
                        "NM204", Severity.WARNING, e.doc, f"DENY rule {rule.index} can never fire: {why}"
                    )
                )
        return out

    def _unsupported(self, e: _Entry) -> list[Finding]:
        if e.policy.action is Action.CUSTOM:
            provider = e.doc.spec.provider.name if e.doc.spec.provider else "?"
            return [
                self._finding(
                    "NM206",
                    Severity.ERROR,
                    e.doc,
                    "CUSTOM policies are not enforced by nodemesh: the external authorizer "
                    f"{provider!r} is never called, so requests it would deny are let through "
                    "(decisions carry a note)",
                )
            ]
        if e.policy.action is Action.AUDIT:
            at = " and ztunnel ignores AUDIT (not evaluated at the node proxy)" if not e.targets else ""
            return [
                self._finding(
                    "NM206",
                    Severity.WARNING,
                    e.doc,
                    "AUDIT only marks requests: nodemesh notes matches in its decisions but has no "
                    f"audit sink{at}",
                )
            ]
        return []

    def _shadowed(self) -> list[Finding]:
        """A rule that an earlier rule of the same action and attachment already covers.

        Rules are compared in full (`_subsumes`) within a policy and, across policies of one
        attachment, while fewer than `_SHADOW_FULL` rules precede; past that (thousands of
        policies on one selector) only identical rules and match-everything rules are found,
        which keeps `analyze` linear."""
        out: list[Finding] = []
        groups: dict[tuple[object, ...], list[_Entry]] = {}
        for e in self._entries:
            sel = tuple(sorted(e.doc.spec.selector.match_labels.items())) if e.doc.spec.selector else None
            key = (e.action, e.doc.namespace, sel, tuple(sorted(e.targets)), e.doc.dry_run)
            groups.setdefault(key, []).append(e)
        for entries in groups.values():
            earlier: list[tuple[_Entry, Rule, _RuleIndex]] = []
            by_shape: dict[frozenset[object], tuple[_Entry, Rule]] = {}
            catch_all: tuple[_Entry, Rule] | None = None
            for e in entries:
                own: list[tuple[_Entry, Rule, _RuleIndex]] = []
                for rule in e.policy.rules:
                    shape, index = _shape(rule), _index_rule(rule)
                    pool = earlier if len(earlier) < _SHADOW_FULL else own
                    cover = catch_all or by_shape.get(shape)
                    if cover is None:
                        cover = next(((pe, r) for pe, r, ri in pool if _subsumes(ri, index)), None)
                    if cover is not None:
                        out.append(self._shadow_finding(e, rule, *cover))
                    earlier.append((e, rule, index))
                    own.append((e, rule, index))
                    by_shape.setdefault(shape, (e, rule))
                    if not index and catch_all is None:
                        catch_all = (e, rule)
        return out

    def _shadow_finding(self, e: _Entry, rule: Rule, pe: _Entry, r: Rule) -> Finding:
        by = f"rule {r.index}" if pe is e else f"rule {r.index} of {pe.doc.namespace}/{pe.doc.name}"
        return self._finding(
            "NM205",
            Severity.WARNING,
            e.doc,
            f"{e.action.value} rule {rule.index} is shadowed by {by}: everything it matches is already "
            "matched there",
        )

    def _use_waypoint_labels(self) -> list[Finding]:
        out: list[Finding] = []
        subjects: list[tuple[str, str, str, Mapping[str, str], tuple[str, ...]]] = []
        for ns, labels in self.world.namespaces.items():
            subjects.append(("Namespace", ns, ns, labels, ("service", "workload", "all")))
        for svc in self.world.services.values():
            subjects.append(
                ("Service", svc.namespace, f"{svc.namespace}/{svc.name}", svc.labels, ("service", "all"))
            )
        seen: set[tuple[str, str]] = set()
        for w in self.world.workloads:
            if (w.namespace, w.name) in seen:
                continue
            seen.add((w.namespace, w.name))
            kind = "Deployment" if w.kind == "deployment" else "Pod"
            subjects.append((kind, w.namespace, f"{w.namespace}/{w.name}", w.labels, ("workload", "all")))
        for kind, ns, name, labels, accepts in subjects:
            wanted = labels.get(USE_WAYPOINT)
            if wanted is None or wanted == "none":
                continue
            wp_ns = labels.get(USE_WAYPOINT_NAMESPACE, ns)
            doc = self._document(kind, name)
            file, line = (doc.location.file, doc.location.line) if doc is not None else ("", 0)
            wp = self.world.waypoints.get((wp_ns, wanted))
            if wp is None:
                gw = any(
                    d.kind == "Gateway" and d.namespace == wp_ns and d.name == wanted
                    for d in self.world.documents
                )
                what = (
                    f"Gateway {wp_ns}/{wanted} is not a waypoint (gatewayClassName is not {WAYPOINT_CLASS})"
                    if gw
                    else f"there is no Gateway {wp_ns}/{wanted}"
                )
                out.append(
                    Finding(
                        "NM207",
                        Severity.ERROR,
                        f"{kind} {name}",
                        f"{USE_WAYPOINT}={wanted}, but {what}: traffic goes direct and L7 policy "
                        "is not applied",
                        file,
                        line,
                    )
                )
            elif kind != "Namespace" and wp.waypoint_for not in accepts:
                out.append(
                    Finding(
                        "NM207",
                        Severity.WARNING,
                        f"{kind} {name}",
                        f"{USE_WAYPOINT}={wanted}, but waypoint {wp.key} has "
                        f"{WAYPOINT_FOR}={wp.waypoint_for}: it does not serve {kind.lower()} traffic, "
                        "which goes direct",
                        file,
                        line,
                    )
                )
        return out

    def _document(self, kind: str, name: str) -> Document | None:
        for d in self.world.documents:
            full = d.name if kind == "Namespace" else f"{d.namespace}/{d.name}"
            if d.kind == kind and full == name:
                return d
        return None


def _ip_key(ip: object) -> int | None:
    """An address as a cheap dictionary key (ipaddress objects hash slowly)."""
    return int(ip) if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else None


def _reads_addresses(policy: Policy) -> bool:
    """Does any condition of `policy` test a source or destination address?"""
    return any(
        isinstance(c, CidrCondition) or (isinstance(c, IstioCondition) and c.attribute is Attribute.REMOTE_IP)
        for rule in policy.rules
        for clause in rule.clauses
        for m in clause.matches
        for c in m.conditions
    )


def _jwt_reject(reason: str, ref: PolicyRef) -> Decision:
    return Decision.deny(
        f"{reason}: rejected with 401 by RequestAuthentication {ref.namespace}/{ref.name}",
        api=Api.ISTIO,
        policy=ref,
        drop_reason=DropReason.POLICY_DENY,
        status=401,
    )


def _why_not(policy: Policy, ctx: FlowContext) -> list[str]:
    """For a denied flow: per ALLOW rule, the first clause that did not hold."""
    out: list[str] = []
    name = f"{policy.ref.namespace}/{policy.ref.name}"
    if not policy.rules:
        return [] if policy.notes else [f"ALLOW {name} has no rule: it allows nothing"]
    for rule in policy.rules[:2]:
        clause = rule.first_failing(ctx)
        if clause is not None:
            out.append(f"ALLOW {name} rule {rule.index}: {clause.describe()} did not match")
    return out


def _port_possible(rule: Rule, ctx: FlowContext) -> bool:
    """Could `rule` match at ctx.port, assuming every non-port condition could?"""
    for clause in rule.clauses:
        if not clause.matches:
            continue
        ok = False
        for m in clause.matches:
            if m.void:
                continue
            if all(
                c.matches(ctx)
                for c in m.conditions
                if isinstance(c, IstioCondition) and c.attribute is Attribute.PORT
            ):
                ok = True
                break
        if not ok:
            return False
    return True


# ---- static analysis helpers --------------------------------------------------------------------


def _field_of(c: Condition) -> tuple[object, ...]:
    if isinstance(c, IstioCondition):
        return (c.attribute, c.arg)
    if isinstance(c, CidrCondition):
        return ("cidr", c.side)
    return ("?", id(c))


def _contradiction(m: Match) -> str | None:
    """A Match no flow can satisfy: a field whose values are all excluded by its `notX`."""
    if m.void:
        return "nothing is left to match"
    pos: dict[tuple[object, ...], Condition] = {}
    neg: dict[tuple[object, ...], Condition] = {}
    for c in m.conditions:
        negated = bool(getattr(c, "negated", False))
        (neg if negated else pos)[_field_of(c)] = c
    for key, p in pos.items():
        n = neg.get(key)
        if isinstance(p, IstioCondition) and p.attribute in (Attribute.SNI, Attribute.ENVOY_FILTER):
            return f"nodemesh never sees {p.attribute.value} ({p.label})"
        if n is None:
            continue
        if isinstance(p, IstioCondition) and isinstance(n, IstioCondition):
            if set(p.values) <= set(n.values):
                return f"every value of {p.label} is excluded by {n.label}"
            if "*" in n.values and p.attribute is not Attribute.PORT:
                return f"{n.label} [*] requires {p.label.removesuffix('s')} to be absent"
        if (
            isinstance(p, CidrCondition)
            and isinstance(n, CidrCondition)
            and all(any(_inside(a, b) for b in n.networks) for a in p.networks)
        ):
            return f"every block of {p.label} is inside the excluded blocks"
    return None


def _never_matches(rule: Rule) -> str | None:
    for clause in rule.clauses:
        if not clause.matches:
            continue
        reasons = [_contradiction(m) for m in clause.matches]
        if all(reasons):
            return f"{clause.name}: " + "; ".join(dict.fromkeys(r for r in reasons if r))
    return None


def _shape(rule: Rule) -> frozenset[object]:
    """A rule's meaning as a hashable value (clause names and match order ignored)."""
    return frozenset(frozenset(m for m in c.matches) for c in rule.clauses if c.matches)


def _cond_implies(narrow: Condition, broad: Condition) -> bool:
    """Whenever `narrow` holds, `broad` holds; both test the same field (same `_field_key`)."""
    if isinstance(narrow, IstioCondition) and isinstance(broad, IstioCondition):
        if narrow.negated:
            return set(broad.values) <= set(narrow.values)
        return set(narrow.values) <= set(broad.values) or (
            "*" in broad.values and narrow.attribute is not Attribute.PORT
        )
    if isinstance(narrow, CidrCondition) and isinstance(broad, CidrCondition):
        if narrow.excepts or broad.excepts:
            return narrow == broad
        inner, outer = (broad, narrow) if narrow.negated else (narrow, broad)
        return all(any(_inside(a, b) for b in outer.networks) for a in inner.networks)
    return narrow == broad


def _field_key(c: Condition) -> tuple[object, ...]:
    if isinstance(c, IstioCondition):
        return (c.attribute, c.arg, c.negated)
    if isinstance(c, CidrCondition):
        return ("cidr", c.side, c.negated)
    return ("?", id(c))


@dataclass(frozen=True, slots=True)
class _MatchIndex:
    """A Match's conditions by field, for the subsumption test."""

    void: bool
    fields: Mapping[tuple[object, ...], tuple[Condition, ...]]
    keys: frozenset[tuple[object, ...]]


_RuleIndex = tuple[tuple[_MatchIndex, ...], ...]  # the non-empty clauses


def _index_rule(rule: Rule) -> _RuleIndex:
    out = []
    for clause in rule.clauses:
        if not clause.matches:
            continue
        matches = []
        for m in clause.matches:
            fields: dict[tuple[object, ...], list[Condition]] = {}
            for c in m.conditions:
                fields.setdefault(_field_key(c), []).append(c)
            frozen = {k: tuple(v) for k, v in fields.items()}
            matches.append(_MatchIndex(m.void, frozen, frozenset(frozen)))
        out.append(tuple(matches))
    return tuple(out)


def _inside(a: Network, b: Network) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False


def _match_implies(narrow: _MatchIndex, broad: _MatchIndex) -> bool:
    if narrow.void:
        return True
    if broad.void or not broad.keys <= narrow.keys:
        return False
    for key, conds in broad.fields.items():
        candidates = narrow.fields[key]
        for b in conds:
            if not any(_cond_implies(n, b) for n in candidates):
                return False
    return True


def _subsumes(broad: _RuleIndex, narrow: _RuleIndex) -> bool:
    """Every flow `narrow` matches, `broad` matches: each clause of `broad` is implied by some
    clause of `narrow` (each of its matches implies one of the broad clause's matches)."""
    for bc in broad:
        if not any(all(any(_match_implies(nm, bm) for bm in bc) for nm in nc) for nc in narrow):
            return False
    return True
