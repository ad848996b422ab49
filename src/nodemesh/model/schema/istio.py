"""Istio security kinds (security.istio.io v1 and v1beta1): AuthorizationPolicy,
PeerAuthentication, RequestAuthentication, typed, and what Istio's validation rejects.

Field names and optionality follow the API protos (`istio/api security/v1beta1/*.proto`; v1 is
the same schema). Lists that Istio distinguishes as "absent" versus "empty" (`rules`, `from`,
`to`) are `list | None`, so that `from: []` can be rejected as Istio does.

`semantic_problems` mirrors Istio's validation (`pkg/config/validation/validation.go`
`ValidateAuthorizationPolicy`, `ValidateRequestAuthentication`, `ValidatePeerAuthentication`, the
CRD's CEL rules), with Istio's wording where it has one; see /work/shared/reference/
istio-ambient.md §4.2-§4.3:
- DENY or CUSTOM without `rules` ("add an empty rule `{}` if you want it be triggered for every
  request"); `provider` with a non-CUSTOM action; CUSTOM without `provider.name`; CUSTOM with
  identity fields;
- `from: []`, `to: []`, a `from` without `source`, a `to` without `operation`, an empty source or
  operation, an empty string in any value list;
- a `when` with neither `values` nor `notValues`, or with an unknown key (the list of
  `pilot/pkg/security/authz/model/model.go`); bad IPs and ports in `when` values;
- `serviceAccounts` combined with `principals` or `namespaces`;
- `selector` together with `targetRef(s)`; more than 16 `targetRefs`; more than 512 `rules`;
- ports not 1-65535; IP blocks that are neither an IP nor a CIDR.
Warnings Istio prints (the DENY "only HTTP attributes" one) are findings of `nodemesh analyze`,
not errors.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import ClassVar, Literal
from urllib.parse import urlparse

from pydantic import ConfigDict, Field

from nodemesh.model.loader import FieldPath
from nodemesh.model.schema.base import Document, Problem, Spec, register

__all__ = [
    "AUTHZ_WHEN_KEYS",
    "DRY_RUN_ANNOTATION",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "Condition",
    "ExtensionProvider",
    "JwtRule",
    "MutualTls",
    "Operation",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "PolicyTargetReference",
    "RequestAuthentication",
    "RequestAuthenticationSpec",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "WorkloadSelector",
    "parse_dry_run",
    "split_when_key",
]

GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
MAX_TARGET_REFS = 16
MAX_RULES = 512

# `when` keys (pilot/pkg/security/authz/model/model.go, and the newer source.serviceAccount /
# source.trustDomain): exact keys, and the bracketed families.
AUTHZ_WHEN_KEYS = (
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
)
_BRACKETED = ("request.headers", "request.auth.claims")
_ENVOY_FILTER = "experimental.envoy.filters."
_REMOVED = ("source.user", "destination.user", "destination.name", "destination.namespace")
_BRACKET = re.compile(r"\[([^\[\]]+)\]")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Aliases only: `from` is a Python keyword, so the field is `from_`; `from_` is not a manifest key.
_ALIASES_ONLY = ConfigDict(populate_by_name=False, validate_by_name=False)

Ignored = dict[str, object] | list[object] | str | int | bool | None


def split_when_key(key: str) -> tuple[str, tuple[str, ...]] | None:
    """`request.headers[x-a]` -> ("request.headers", ("x-a",)); `request.auth.claims[a][b]` ->
    (..., ("a", "b")); a plain key -> (key, ()); None when the brackets are malformed."""
    base, bracket, _ = key.partition("[")
    if not bracket:
        return key, ()
    rest = key[len(base) :]
    names = tuple(_BRACKET.findall(rest))
    if not names or "".join(f"[{n}]" for n in names) != rest:
        return None
    return base, names


def parse_dry_run(value: str | None) -> bool:
    """The `istio.io/dry-run` annotation, read as Go's strconv.ParseBool (invalid = false, as
    istiod logs the error and proceeds: `ambient/authorization.go` convertAuthorizationPolicy)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _ip_problems(values: list[str] | None, at: FieldPath) -> list[Problem]:
    """`security.ValidateIPs`: a single IP, or a CIDR when it contains '/'."""
    out: list[Problem] = []
    for i, text in enumerate(values or []):
        if text == "":
            continue  # reported by the empty-value check
        try:
            if "/" in text:
                ipaddress.ip_network(text, strict=False)
            else:
                ipaddress.ip_address(text)
        except ValueError:
            kind = "CIDR range" if "/" in text else "IP address"
            out.append(
                (
                    (*at, i),
                    f"bad {kind} ({text}): not an IP address or CIDR (for example 10.0.0.1 or 10.0.0.0/16)",
                )
            )
    return out


def _port_problems(values: list[str] | None, at: FieldPath) -> list[Problem]:
    out: list[Problem] = []
    for i, text in enumerate(values or []):
        if text == "":
            continue
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            out.append(((*at, i), f"bad port ({text}): must be a number between 1 and 65535"))
    return out


def _empty_value_problems(name: str, values: list[str] | None, at: FieldPath) -> list[Problem]:
    """`security.CheckEmptyValues`."""
    return [
        ((*at, i), f"empty value not allowed, found in {name}") for i, v in enumerate(values or []) if v == ""
    ]


def _service_account_problems(values: list[str] | None, at: FieldPath) -> list[Problem]:
    """`serviceAccounts`: `<namespace>/<name>`, or `<name>` meaning the policy's namespace."""
    out: list[Problem] = []
    for i, text in enumerate(values or []):
        if text == "":
            continue
        parts = text.split("/")
        if len(parts) > 2 or not all(_DNS_LABEL.match(p) for p in parts):
            out.append(((*at, i), f"{text!r} must be <namespace>/<serviceaccount> or <serviceaccount>"))
    return out


class WorkloadSelector(Spec):
    """`istio.type.v1beta1.WorkloadSelector`: matchLabels only."""

    match_labels: dict[str, str] = Field(default_factory=dict)

    def problems(self, at: FieldPath) -> list[Problem]:
        """`validateWorkloadSelector`: no empty keys, no wildcards."""
        out: list[Problem] = []
        for key, value in self.match_labels.items():
            if key == "":
                out.append(((*at, "matchLabels"), f"empty key is not supported in selector: {key}={value}"))
            if "*" in key or "*" in value:
                out.append(
                    ((*at, "matchLabels", key), f"wildcard is not supported in selector: {key}={value}")
                )
        return out


class PolicyTargetReference(Spec):
    """`istio.type.v1beta1.PolicyTargetReference`."""

    group: str = ""
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)
    namespace: str = ""

    # validation.go allowedTargetRefs (+ GatewayClass, accepted in the root namespace).
    ALLOWED: ClassVar[tuple[tuple[str, str], ...]] = (
        ("", "Service"),
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    )

    def problems(self, at: FieldPath, policy_namespace: str) -> list[Problem]:
        out: list[Problem] = []
        if (self.group, self.kind) not in self.ALLOWED:
            allowed = ", ".join(f"{g or 'core'}/{k}" for g, k in self.ALLOWED if g != "core")
            out.append(
                ((*at, "kind"), f"targetRef must be to one of {allowed} but was {self.group}/{self.kind}")
            )
        if self.namespace and self.namespace != policy_namespace:
            out.append(
                (
                    (*at, "namespace"),
                    "cross namespace referencing is not supported: must be the policy's namespace",
                )
            )
        return out

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


def _attachment_problems(
    selector: WorkloadSelector | None,
    target_ref: PolicyTargetReference | None,
    target_refs: list[PolicyTargetReference] | None,
    namespace: str,
) -> list[Problem]:
    """`validateOneOfSelectorType`, `validateWorkloadSelector`, `validatePolicyTargetReference(s)`."""
    out: list[Problem] = []
    if sum((selector is not None, target_ref is not None, bool(target_refs))) > 1:
        where = ("spec", "targetRefs") if target_refs else ("spec", "targetRef")
        out.append((where, "only one of targetRefs or workloadSelector can be set"))
    if selector is not None:
        out += selector.problems(("spec", "selector"))
    if target_ref is not None:
        out += target_ref.problems(("spec", "targetRef"), namespace)
    if target_refs is not None and len(target_refs) > MAX_TARGET_REFS:
        out.append((("spec", "targetRefs"), f"must have at most {MAX_TARGET_REFS} items"))
    for i, ref in enumerate(target_refs or []):
        out += ref.problems(("spec", "targetRefs", i), namespace)
    return out


# ---- AuthorizationPolicy --------------------------------------------------------------------


class Source(Spec):
    """`Source`: fields ANDed, values of one field ORed; `notX` = none may match."""

    principals: list[str] | None = None
    not_principals: list[str] | None = None
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    service_accounts: list[str] | None = None
    not_service_accounts: list[str] | None = None
    trust_domains: list[str] | None = None
    not_trust_domains: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None

    FIELDS: ClassVar[tuple[str, ...]] = (
        "principals",
        "notPrincipals",
        "requestPrincipals",
        "notRequestPrincipals",
        "namespaces",
        "notNamespaces",
        "serviceAccounts",
        "notServiceAccounts",
        "trustDomains",
        "notTrustDomains",
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    )

    def values(self, name: str) -> list[str]:
        """A field's values by manifest name (`notIpBlocks`); [] when absent."""
        found: list[str] | None = getattr(self, _SNAKE[name])
        return found or []

    def problems(self, at: FieldPath) -> list[Problem]:
        out: list[Problem] = []
        if not any(self.values(f) for f in self.FIELDS):
            out.append((at, "`from.source` must not be empty (set at least one field)"))
        for name in self.FIELDS:
            out += _empty_value_problems(name, getattr(self, _SNAKE[name]), (*at, name))
        for name in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
            out += _ip_problems(self.values(name), (*at, name))
        for name in ("serviceAccounts", "notServiceAccounts"):
            out += _service_account_problems(self.values(name), (*at, name))
        if (self.service_accounts or self.not_service_accounts) and (
            self.principals or self.not_principals or self.namespaces or self.not_namespaces
        ):
            field = "serviceAccounts" if self.service_accounts else "notServiceAccounts"
            out.append(((*at, field), "serviceAccounts cannot be set together with principals or namespaces"))
        return out


class Operation(Spec):
    """`Operation`: fields ANDed; `hosts`, `methods`, `paths` are HTTP only."""

    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    ports: list[str] | None = None
    not_ports: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None

    FIELDS: ClassVar[tuple[str, ...]] = (
        "hosts",
        "notHosts",
        "ports",
        "notPorts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
    )

    def values(self, name: str) -> list[str]:
        found: list[str] | None = getattr(self, _SNAKE[name])
        return found or []

    def problems(self, at: FieldPath) -> list[Problem]:
        out: list[Problem] = []
        if not any(self.values(f) for f in self.FIELDS):
            out.append((at, "`to.operation` must not be empty (set at least one field)"))
        for name in self.FIELDS:
            out += _empty_value_problems(name, getattr(self, _SNAKE[name]), (*at, name))
        out += _port_problems(self.ports, (*at, "ports"))
        out += _port_problems(self.not_ports, (*at, "notPorts"))
        for name in ("paths", "notPaths"):
            for i, path in enumerate(self.values(name)):
                problem = _path_template_problem(path)
                if problem:
                    out.append(((*at, name, i), problem))
        return out


def _path_template_problem(path: str) -> str | None:
    """`security.CheckValidPathTemplate`: `{*}` / `{**}` operators, `{**}` only last."""
    if "{" not in path and "}" not in path:
        return None
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if "{" in seg or "}" in seg:
            if seg not in ("{*}", "{**}"):
                return (
                    f"invalid or unsupported path template {path!r}: use {{*}} or {{**}} as a whole segment"
                )
            if seg == "{**}" and i != len(segments) - 1:
                return f"invalid path template {path!r}: {{**}} must be the last segment"
    return None


class RuleFrom(Spec):
    source: Source | None = None


class RuleTo(Spec):
    operation: Operation | None = None


class Condition(Spec):
    """`when`: an attribute `key` and allowed `values` / denied `notValues`."""

    key: str
    values: list[str] | None = None
    not_values: list[str] | None = None

    def problems(self, at: FieldPath) -> list[Problem]:
        out: list[Problem] = []
        if self.key == "":
            return [((*at, "key"), "`key` must not be empty")]
        if not self.values and not self.not_values:
            out.append((at, f"at least one of `values` or `notValues` must be set for key {self.key}"))
        problem = when_key_problem(self.key)
        if problem:
            out.append(((*at, "key"), problem))
            return out
        out += _empty_value_problems("values", self.values, (*at, "values"))
        out += _empty_value_problems("notValues", self.not_values, (*at, "notValues"))
        if self.key in ("source.ip", "remote.ip", "destination.ip"):
            out += _ip_problems(self.values, (*at, "values"))
            out += _ip_problems(self.not_values, (*at, "notValues"))
        elif self.key == "destination.port":
            out += _port_problems(self.values, (*at, "values"))
            out += _port_problems(self.not_values, (*at, "notValues"))
        return out


def when_key_problem(key: str) -> str | None:
    """`security.ValidateAttribute` on the key: None when Istio knows it."""
    if key in AUTHZ_WHEN_KEYS or key.startswith(_ENVOY_FILTER):
        return None
    if any(key == r or key.startswith(r + ".") for r in _REMOVED):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    split = split_when_key(key)
    if split is not None and split[0] in _BRACKETED:
        if not split[1]:
            return f"invalid key {key}: expected {split[0]}[<name>]"
        if split[0] == "request.headers" and len(split[1]) != 1:
            return f"invalid key {key}: expected request.headers[<name>]"
        return None
    if key.split("[", 1)[0] in _BRACKETED:
        return f"invalid key {key}: expected {key.split('[', 1)[0]}[<name>]"
    known = ", ".join((*AUTHZ_WHEN_KEYS, "request.headers[<name>]", "request.auth.claims[<name>]"))
    return f"unknown attribute {key} (known: {known})"


class Rule(Spec):
    """`Rule`: `from` AND `to` AND every `when`; an empty rule `{}` always matches."""

    model_config = _ALIASES_ONLY

    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class ExtensionProvider(Spec):
    name: str = ""


class AuthorizationPolicySpec(Spec):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None
    rules: list[Rule] | None = None

    @property
    def all_target_refs(self) -> list[PolicyTargetReference]:
        return [*(self.target_refs or []), *([self.target_ref] if self.target_ref else [])]


_CUSTOM_UNSUPPORTED = (
    "namespaces",
    "notNamespaces",
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
)


@register(GROUP, "AuthorizationPolicy", VERSIONS)
class AuthorizationPolicy(Document):
    """Istio AuthorizationPolicy: CUSTOM, then DENY, then ALLOW (AUDIT only marks)."""

    api_version: Literal["security.istio.io/v1", "security.istio.io/v1beta1"]
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)
    status: Ignored = None

    @property
    def dry_run(self) -> bool:
        return parse_dry_run(self.metadata.annotations.get(DRY_RUN_ANNOTATION))

    def semantic_problems(self) -> list[Problem]:
        spec = self.spec
        out = _attachment_problems(spec.selector, spec.target_ref, spec.target_refs, self.namespace)
        action = spec.action
        if action in ("DENY", "CUSTOM") and not spec.rules:
            out.append(
                (
                    ("spec", "rules"),
                    f"{action} action without `rules` is meaningless as it will never be triggered, "
                    "add an empty rule `{}` if you want it be triggered for every request",
                )
            )
        if action == "CUSTOM" and spec.rules and (spec.provider is None or not spec.provider.name):
            out.append((("spec", "provider", "name"), "`provider.name` must not be empty"))
        if spec.provider is not None and action != "CUSTOM":
            out.append(
                (("spec", "provider"), f"`provider` must not be with non CUSTOM action, found {action}")
            )
        if spec.rules is not None and len(spec.rules) > MAX_RULES:
            out.append((("spec", "rules"), f"must have at most {MAX_RULES} items"))
        for i, rule in enumerate(spec.rules or []):
            out += self._rule_problems(rule, ("spec", "rules", i), custom=action == "CUSTOM")
        return out

    def _rule_problems(self, rule: Rule, at: FieldPath, *, custom: bool) -> list[Problem]:
        out: list[Problem] = []
        i = at[-1]
        if rule.from_ is not None and not rule.from_:
            out.append(((*at, "from"), f"`from` must not be empty, found at rule {i}"))
        for j, item in enumerate(rule.from_ or []):
            where = (*at, "from", j)
            if item.source is None:
                out.append((where, f"`from.source` must not be nil, found at rule {i}"))
                continue
            out += item.source.problems((*where, "source"))
            if custom:
                for name in _CUSTOM_UNSUPPORTED:
                    if item.source.values(name):
                        out.append(
                            (
                                (*where, "source", name),
                                f"From.{name[0].upper()}{name[1:]} is currently not supported "
                                "with CUSTOM action",
                            )
                        )
        if rule.to is not None and not rule.to:
            out.append(((*at, "to"), f"`to` must not be empty, found at rule {i}"))
        for j, op in enumerate(rule.to or []):
            where = (*at, "to", j)
            if op.operation is None:
                out.append((where, f"`to.operation` must not be nil, found at rule {i}"))
                continue
            out += op.operation.problems((*where, "operation"))
        for j, cond in enumerate(rule.when or []):
            where = (*at, "when", j)
            out += cond.problems(where)
            if custom and (
                cond.key in ("source.namespace", "source.principal") or cond.key.startswith("request.auth.")
            ):
                out.append(((*where, "key"), f"{cond.key} is currently not supported with CUSTOM action"))
        return out


# ---- PeerAuthentication ---------------------------------------------------------------------


class MutualTls(Spec):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthenticationSpec(Spec):
    selector: WorkloadSelector | None = None
    mtls: MutualTls | None = None
    port_level_mtls: dict[int, MutualTls] | None = None

    @property
    def mode(self) -> str:
        return self.mtls.mode if self.mtls is not None else "UNSET"

    @property
    def has_selector(self) -> bool:
        return self.selector is not None and bool(self.selector.match_labels)


@register(GROUP, "PeerAuthentication", VERSIONS)
class PeerAuthentication(Document):
    """Istio PeerAuthentication: the mTLS mode a workload accepts (mesh, namespace, workload, port)."""

    api_version: Literal["security.istio.io/v1", "security.istio.io/v1beta1"]
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)
    status: Ignored = None

    def semantic_problems(self) -> list[Problem]:
        """`ValidatePeerAuthentication`."""
        spec = self.spec
        out: list[Problem] = []
        if spec.selector is not None:
            out += spec.selector.problems(("spec", "selector"))
        if spec.port_level_mtls is not None:
            if not spec.port_level_mtls:
                out.append(
                    (("spec", "portLevelMtls"), "port level mTLS, if defined, must have at least one element")
                )
            elif not spec.has_selector:
                out.append(
                    (
                        ("spec", "portLevelMtls"),
                        "mesh/namespace peer authentication cannot have port level mTLS",
                    )
                )
            for port in spec.port_level_mtls:
                if not 1 <= port <= 65535:
                    out.append((("spec", "portLevelMtls", str(port)), "port must be in range 1..65535"))
        return out


# ---- RequestAuthentication ------------------------------------------------------------------


class JwtHeader(Spec):
    name: str = ""
    prefix: str = ""


class ClaimToHeader(Spec):
    header: str = ""
    claim: str = ""


class JwtRule(Spec):
    """`JWTRule`: one accepted issuer and how to read and verify its tokens."""

    issuer: str = ""
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: list[JwtHeader] = Field(default_factory=list)
    from_params: list[str] = Field(default_factory=list)
    from_cookies: list[str] = Field(default_factory=list)
    output_payload_to_header: str = ""
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    timeout: str | None = None

    def problems(self, at: FieldPath) -> list[Problem]:
        """`validateJwtRule`."""
        out: list[Problem] = []
        if not self.issuer:
            out.append(((*at, "issuer"), "issuer must be set"))
        out += [
            ((*at, "audiences", i), "audience must be non-empty string")
            for i, a in enumerate(self.audiences)
            if not a
        ]
        if self.jwks_uri:
            url = urlparse(self.jwks_uri)
            if url.scheme not in ("http", "https") or not url.hostname:
                out.append(((*at, "jwksUri"), f"{self.jwks_uri!r} is not an http(s) URL"))
        if self.jwks:
            try:
                parsed = json.loads(self.jwks)
            except ValueError as exc:
                out.append(((*at, "jwks"), f"jwks parse error: {exc}"))
            else:
                if not isinstance(parsed, dict):
                    out.append(
                        ((*at, "jwks"), "jwks parse error: expected a JSON object (a JWK or a JWK Set)")
                    )
        out += [
            ((*at, "fromHeaders", i, "name"), "location header name must be non-empty string")
            for i, h in enumerate(self.from_headers)
            if not h.name
        ]
        out += [
            ((*at, "fromParams", i), "location query must be non-empty string")
            for i, p in enumerate(self.from_params)
            if not p
        ]
        out += [
            ((*at, "fromCookies", i), "cookie name must be non-empty string")
            for i, c in enumerate(self.from_cookies)
            if not c
        ]
        out += [
            (
                (*at, "outputClaimToHeaders", i),
                "outputClaimToHeaders header and claim value must be non-empty string",
            )
            for i, c in enumerate(self.output_claim_to_headers)
            if not c.header or not c.claim
        ]
        return out


class RequestAuthenticationSpec(Spec):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    jwt_rules: list[JwtRule] = Field(default_factory=list)

    @property
    def all_target_refs(self) -> list[PolicyTargetReference]:
        return [*(self.target_refs or []), *([self.target_ref] if self.target_ref else [])]


@register(GROUP, "RequestAuthentication", VERSIONS)
class RequestAuthentication(Document):
    """Istio RequestAuthentication: which JWTs a workload (or waypoint) accepts."""

    api_version: Literal["security.istio.io/v1", "security.istio.io/v1beta1"]
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
    status: Ignored = None

    def semantic_problems(self) -> list[Problem]:
        """`ValidateRequestAuthentication`."""
        spec = self.spec
        out = _attachment_problems(spec.selector, spec.target_ref, spec.target_refs, self.namespace)
        for i, rule in enumerate(spec.jwt_rules):
            out += rule.problems(("spec", "jwtRules", i))
        return out


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


# manifest field name -> Python attribute name, for Source and Operation
_SNAKE = {name: _snake(name) for name in (*Source.FIELDS, *Operation.FIELDS)}
