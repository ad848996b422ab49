"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`), typed and validated.

Field names are Cilium's own (`pkg/policy/api/{rule,ingress,egress,l4,http,icmp,cidr,fqdn}.go`),
including the ones that are not plain camelCase (`fromCIDR`, `toCIDRSet`, `toFQDNs`,
`terminatingTLS`, `except`), so upstream manifests load unchanged. A peer field keeps `None`
apart from an empty list: Cilium gives them different meanings (an absent `fromEndpoints` is an
L3 wildcard when `toPorts` is set; `fromEndpoints: []` selects nothing,
`pkg/policy/utils/parserules.go mergeEndpointSelectors`).

`semantic_problems` mirrors `pkg/policy/api/rule_validation.go` (`Rule.Sanitize`,
`IngressRule.sanitize`, `EgressRule.sanitize`, `PortRule.sanitize`, `L7Rules.sanitize`,
`PortProtocol.sanitize`, `PortRuleHTTP.Sanitize`, `CIDRRule.sanitize`) and the CNP parser
(`pkg/k8s/apis/cilium.io/v2/cnp_types.go`: a policy needs `spec` or `specs`). Every message
names the field path, so an error keeps the line of the offending field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from nodemesh.model.loader import FieldPath
from nodemesh.model.schema.base import Document, LabelSelectorModel, Problem, Spec, register

__all__ = [
    "CIDRRule",
    "CiliumClusterwideNetworkPolicy",
    "CiliumNetworkPolicy",
    "CiliumRule",
    "EgressDenyRule",
    "EgressRule",
    "ICMPField",
    "IngressDenyRule",
    "IngressRule",
    "PortProtocol",
    "PortRule",
    "PortRuleHTTP",
    "icmp_type_code",
    "parse_port",
]

Ignored = dict[str, object] | list[object] | str | int | bool | None

MAX_PORTS = 40  # rule_validation.go maxPorts
MAX_ICMP_FIELDS = 40  # rule_validation.go maxICMPFields

Entity = Literal[
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "cluster-mesh",
    "host",
    "remote-node",
    "kube-apiserver",
    "ingress",
    "init",
    "health",
    "unmanaged",
    "none",
]

# pkg/policy/api/icmp.go icmpIpv4TypeNameToCode / icmpIpv6TypeNameToCode
ICMP_V4_TYPES: dict[str, int] = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
    "Photuris": 40,
    "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}
ICMP_V6_TYPES: dict[str, int] = {
    "DestinationUnreachable": 1,
    "PacketTooBig": 2,
    "TimeExceeded": 3,
    "ParameterProblem": 4,
    "EchoRequest": 128,
    "EchoReply": 129,
    "MulticastListenerQuery": 130,
    "MulticastListenerReport": 131,
    "MulticastListenerDone": 132,
    "RouterSolicitation": 133,
    "RouterAdvertisement": 134,
    "NeighborSolicitation": 135,
    "NeighborAdvertisement": 136,
    "RedirectMessage": 137,
    "RouterRenumbering": 138,
    "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140,
    "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142,
    "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145,
    "MobilePrefixSolicitation": 146,
    "MobilePrefixAdvertisement": 147,
    "DuplicateAddressRequestCodeSuffix": 157,
    "DuplicateAddressConfirmationCodeSuffix": 158,
    "ExtendedEchoRequest": 160,
    "ExtendedEchoReply": 161,
}

# IANA service name (pkg/iana IsSvcName): 1-15 chars of [a-z0-9-], at least one letter, no
# leading, trailing or doubled hyphen. Cilium lower-cases port names before comparing them.
_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
# RE2 (Envoy's regex engine) has no look-around and no backreferences.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


def parse_port(text: str) -> int | str | None:
    """A PortProtocol `port`: its number, its (lower-cased) name, or None when invalid."""
    if text.isdigit():
        value = int(text)
        return value if value <= 65535 else None
    name = text.lower()
    return name if _SVC_NAME.match(name) else None


def icmp_type_code(family: str, value: int | str) -> int | None:
    """An ICMPField `type` as a number (icmp.go `PortProtocol`), or None when unknown."""
    if isinstance(value, int):
        return value if 0 <= value <= 255 else None
    if value.isdigit():
        return icmp_type_code(family, int(value))
    table = ICMP_V6_TYPES if family == "IPv6" else ICMP_V4_TYPES
    return table.get(value)


# ---- L4 / L7 -----------------------------------------------------------------------------


class PortProtocol(Spec):
    """`ports[]`: a number or IANA name (as a string), an optional `endPort`, a protocol.
    An empty protocol is ANY (TCP, UDP and SCTP)."""

    port: str = ""
    end_port: int | None = Field(default=None, ge=0, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP", "ANY"] | None = None


class SecretRef(Spec):
    namespace: str | None = None
    name: str = ""


class HeaderMatch(Spec):
    """`headerMatches[]`: exact value (or presence); a `mismatch` action keeps the rule matching."""

    name: str = ""
    value: str | None = None
    secret: SecretRef | None = None
    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None


class PortRuleHTTP(Spec):
    """One `rules.http[]` entry: `path`, `method`, `host` are regexes matched on the full value."""

    path: str | None = None
    method: str | None = None
    host: str | None = None
    headers: list[str] = Field(default_factory=list)
    header_matches: list[HeaderMatch] = Field(default_factory=list)


class PortRuleDNS(Spec):
    match_name: str | None = None
    match_pattern: str | None = None


class L7Rules(Spec):
    """`rules`: HTTP or DNS, never both on one port (Kafka was removed in Cilium 1.20)."""

    http: list[PortRuleHTTP] | None = None
    dns: list[PortRuleDNS] | None = None


class TLSContext(Spec):
    secret: SecretRef
    trusted_ca: str | None = Field(default=None, alias="trustedCA")
    certificate: str | None = None
    private_key: str | None = None


class EnvoyConfigRef(Spec):
    kind: str | None = None
    name: str = ""


class Listener(Spec):
    envoy_config: EnvoyConfigRef
    name: str = ""
    priority: int | None = None


class PortRule(Spec):
    """`toPorts[]` of an allow rule."""

    ports: list[PortProtocol] | None = None
    rules: L7Rules | None = None
    server_names: list[str] = Field(default_factory=list)
    terminating_tls: TLSContext | None = Field(default=None, alias="terminatingTLS")
    originating_tls: TLSContext | None = Field(default=None, alias="originatingTLS")
    listener: Listener | None = None


class PortDenyRule(Spec):
    """`toPorts[]` of a deny rule (`PortDenyRule`: ports only). `rules` is accepted here only to
    report it as a semantic error with a reason instead of as an unknown field."""

    ports: list[PortProtocol] | None = None
    rules: L7Rules | None = None


class ICMPField(Spec):
    family: Literal["IPv4", "IPv6"] = "IPv4"
    type: int | str


class ICMPRule(Spec):
    fields: list[ICMPField] = Field(default_factory=list)


class Authentication(Spec):
    mode: Literal["disabled", "required", "test-always-fail"]


# ---- L3 peers ----------------------------------------------------------------------------


class CIDRRule(Spec):
    """`fromCIDRSet[]` / `toCIDRSet[]`: a CIDR minus `except` subnets (or a CiliumCIDRGroup)."""

    cidr: str | None = None
    cidr_group_ref: str | None = None
    cidr_group_selector: LabelSelectorModel | None = None
    except_: list[str] = Field(default_factory=list, alias="except")


class K8sServiceNamespace(Spec):
    service_name: str = ""
    namespace: str | None = None


class K8sServiceSelectorNamespace(Spec):
    selector: LabelSelectorModel
    namespace: str | None = None


class ServiceRef(Spec):
    k8s_service: K8sServiceNamespace | None = Field(default=None, alias="k8sService")
    k8s_service_selector: K8sServiceSelectorNamespace | None = Field(default=None, alias="k8sServiceSelector")


class FQDNSelector(Spec):
    match_name: str | None = None
    match_pattern: str | None = None


class _CommonIngress(Spec):
    from_endpoints: list[LabelSelectorModel] | None = None
    from_requires: list[LabelSelectorModel] | None = None
    from_cidr: list[str] | None = Field(default=None, alias="fromCIDR")
    from_cidr_set: list[CIDRRule] | None = Field(default=None, alias="fromCIDRSet")
    from_entities: list[Entity] | None = None
    from_groups: list[Ignored] | None = None
    from_nodes: list[LabelSelectorModel] | None = None
    icmps: list[ICMPRule] | None = None


class IngressRule(_CommonIngress):
    to_ports: list[PortRule] | None = None
    authentication: Authentication | None = None


class IngressDenyRule(_CommonIngress):
    to_ports: list[PortDenyRule] | None = None


class _CommonEgress(Spec):
    to_endpoints: list[LabelSelectorModel] | None = None
    to_requires: list[LabelSelectorModel] | None = None
    to_cidr: list[str] | None = Field(default=None, alias="toCIDR")
    to_cidr_set: list[CIDRRule] | None = Field(default=None, alias="toCIDRSet")
    to_entities: list[Entity] | None = None
    to_services: list[ServiceRef] | None = None
    to_groups: list[Ignored] | None = None
    to_nodes: list[LabelSelectorModel] | None = None
    icmps: list[ICMPRule] | None = None


class EgressRule(_CommonEgress):
    to_ports: list[PortRule] | None = None
    to_fqdns: list[FQDNSelector] | None = Field(default=None, alias="toFQDNs")
    authentication: Authentication | None = None


class EgressDenyRule(_CommonEgress):
    to_ports: list[PortDenyRule] | None = None


AnyPeerRule = IngressRule | IngressDenyRule | EgressRule | EgressDenyRule

# (field name as written, attribute) of the L3 peer kinds, per direction (rule_validation.go
# l3Members). At most one kind may be set in one rule.
INGRESS_PEERS: tuple[tuple[str, str], ...] = (
    ("fromEndpoints", "from_endpoints"),
    ("fromCIDR", "from_cidr"),
    ("fromCIDRSet", "from_cidr_set"),
    ("fromEntities", "from_entities"),
    ("fromNodes", "from_nodes"),
    ("fromGroups", "from_groups"),
)
EGRESS_PEERS: tuple[tuple[str, str], ...] = (
    ("toEndpoints", "to_endpoints"),
    ("toCIDR", "to_cidr"),
    ("toCIDRSet", "to_cidr_set"),
    ("toEntities", "to_entities"),
    ("toServices", "to_services"),
    ("toFQDNs", "to_fqdns"),
    ("toGroups", "to_groups"),
    ("toNodes", "to_nodes"),
)


# ---- the rule ----------------------------------------------------------------------------


class DefaultDenyConfig(Spec):
    ingress: bool | None = None
    egress: bool | None = None


class LogConfig(Spec):
    value: str = Field(default="", max_length=32)


class RuleLabel(Spec):
    key: str
    value: str = ""
    source: str | None = None


class CiliumRule(Spec):
    """`api.Rule`: a subject selector and the four rule lists."""

    endpoint_selector: LabelSelectorModel | None = None
    node_selector: LabelSelectorModel | None = None
    ingress: list[IngressRule] | None = None
    ingress_deny: list[IngressDenyRule] | None = None
    egress: list[EgressRule] | None = None
    egress_deny: list[EgressDenyRule] | None = None
    enable_default_deny: DefaultDenyConfig | None = None
    labels: list[RuleLabel] = Field(default_factory=list)
    description: str | None = None
    log: LogConfig | None = None

    def default_deny(self, ingress: bool) -> bool:
        """`EnableDefaultDeny.<dir>`, defaulting to "this rule has rules in that direction"
        (`Rule.Sanitize`)."""
        cfg = self.enable_default_deny
        value = None if cfg is None else (cfg.ingress if ingress else cfg.egress)
        if value is not None:
            return value
        if ingress:
            return bool(self.ingress) or bool(self.ingress_deny)
        return bool(self.egress) or bool(self.egress_deny)


class _CiliumPolicyBase(Document):
    spec: CiliumRule | None = None
    specs: list[CiliumRule] | None = None
    status: Ignored = None

    def rules(self) -> list[tuple[FieldPath, CiliumRule]]:
        """Every rule with its path: `spec` first, then `specs[i]`."""
        out: list[tuple[FieldPath, CiliumRule]] = []
        if self.spec is not None:
            out.append((("spec",), self.spec))
        for i, rule in enumerate(self.specs or ()):
            out.append((("specs", i), rule))
        return out

    def semantic_problems(self) -> list[Problem]:
        if self.spec is None and self.specs is None:
            return [(("spec",), 'a policy needs `spec` or `specs` (Cilium: "empty policy")')]
        out: list[Problem] = []
        for at, rule in self.rules():
            out.extend(_rule_problems(rule, at, clusterwide=not self.namespaced))
        return out


@register("cilium.io", "CiliumNetworkPolicy", ("v2",))
class CiliumNetworkPolicy(_CiliumPolicyBase):
    api_version: Literal["cilium.io/v2"]
    kind: Literal["CiliumNetworkPolicy"]


@register("cilium.io", "CiliumClusterwideNetworkPolicy", ("v2",))
class CiliumClusterwideNetworkPolicy(_CiliumPolicyBase):
    api_version: Literal["cilium.io/v2"]
    kind: Literal["CiliumClusterwideNetworkPolicy"]
    namespaced: ClassVar[bool] = False


# ---- validation (rule_validation.go) -----------------------------------------------------


def _rule_problems(rule: CiliumRule, at: FieldPath, *, clusterwide: bool) -> list[Problem]:
    out: list[Problem] = []
    if not (rule.ingress or rule.ingress_deny or rule.egress or rule.egress_deny):
        out.append((at, "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny"))
    if rule.endpoint_selector is None and rule.node_selector is None:
        out.append((at, "rule must have one of EndpointSelector or NodeSelector"))
    if rule.endpoint_selector is not None and rule.node_selector is not None:
        out.append(((*at, "nodeSelector"), "rule cannot have both EndpointSelector and NodeSelector"))
    if rule.node_selector is not None and not clusterwide:
        out.append(
            (
                (*at, "nodeSelector"),
                "nodeSelector (host policy) is only allowed in a CiliumClusterwideNetworkPolicy",
            )
        )
    for name, sel in (("endpointSelector", rule.endpoint_selector), ("nodeSelector", rule.node_selector)):
        if sel is not None:
            out.extend(sel.semantic_problems((*at, name)))
    host_policy = rule.node_selector is not None
    lists: Sequence[tuple[str, Sequence[AnyPeerRule] | None, bool, bool]] = (
        ("ingress", rule.ingress, True, False),
        ("ingressDeny", rule.ingress_deny, True, True),
        ("egress", rule.egress, False, False),
        ("egressDeny", rule.egress_deny, False, True),
    )
    for field, items, ingress, deny in lists:
        for i, item in enumerate(items or ()):
            out.extend(
                _peer_rule_problems(item, (*at, field, i), ingress=ingress, deny=deny, host=host_policy)
            )
    if rule.log is not None and not rule.log.value.isprintable():
        out.append(((*at, "log", "value"), "log value must be printable characters"))
    return out


def _peer_rule_problems(
    rule: AnyPeerRule, at: FieldPath, *, ingress: bool, deny: bool, host: bool
) -> list[Problem]:
    out: list[Problem] = []
    peers = INGRESS_PEERS if ingress else EGRESS_PEERS
    present = [name for name, attr in peers if getattr(rule, attr, None)]
    if len(present) > 1:
        out.append((at, f"combining {present[0]} and {present[1]} is not supported yet (use separate rules)"))
    to_ports: Sequence[PortRule | PortDenyRule] = rule.to_ports or ()
    if rule.icmps and to_ports:
        out.append(
            (
                (*at, "icmps"),
                "the ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts.",
            )
        )
    for i, icmp in enumerate(rule.icmps or ()):
        out.extend(_icmp_problems(icmp, (*at, "icmps", i)))
    for field in ("from_endpoints", "to_endpoints", "from_requires", "to_requires", "from_nodes", "to_nodes"):
        for i, sel in enumerate(getattr(rule, field, None) or ()):
            out.extend(sel.semantic_problems((*at, _camel(field), i)))
    for field, alias in (("from_cidr", "fromCIDR"), ("to_cidr", "toCIDR")):
        for i, text in enumerate(getattr(rule, field, None) or ()):
            if _cidr_or_ip(text) is None:
                out.append(((*at, alias, i), f"unable to parse CIDR {text!r}"))
    for field, alias in (("from_cidr_set", "fromCIDRSet"), ("to_cidr_set", "toCIDRSet")):
        for i, cidr_rule in enumerate(getattr(rule, field, None) or ()):
            out.extend(_cidr_rule_problems(cidr_rule, (*at, alias, i)))
    for i, port_rule in enumerate(to_ports):
        out.extend(_port_rule_problems(port_rule, (*at, "toPorts", i), ingress=ingress, deny=deny, host=host))
    return out


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


def _cidr_or_ip(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """`CIDR.sanitize`: a prefix, or a bare address."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _cidr_rule_problems(rule: CIDRRule, at: FieldPath) -> list[Problem]:
    if rule.cidr_group_ref is not None or rule.cidr_group_selector is not None:
        return []
    if rule.cidr is None:
        return [(at, "one of cidr, cidrGroupRef or cidrGroupSelector is required")]
    if "/" not in rule.cidr or _cidr_or_ip(rule.cidr) is None:
        return [((*at, "cidr"), f"unable to parse CIDRRule {rule.cidr!r} (expected <address>/<prefix>)")]
    net = ipaddress.ip_network(rule.cidr, strict=False)
    out: list[Problem] = []
    for i, text in enumerate(rule.except_):
        exc = _cidr_or_ip(text) if "/" in text else None
        if exc is None:
            out.append(((*at, "except", i), f"unable to parse CIDR {text!r}"))
        elif exc.version != net.version or exc.network_address not in net:
            out.append(
                (
                    (*at, "except", i),
                    f"allow CIDR prefix {rule.cidr} does not contain exclude CIDR prefix {text}",
                )
            )
    return out


def _icmp_problems(rule: ICMPRule, at: FieldPath) -> list[Problem]:
    out: list[Problem] = []
    if len(rule.fields) > MAX_ICMP_FIELDS:
        out.append(((*at, "fields"), f"too many types, the max is {MAX_ICMP_FIELDS}"))
    for i, f in enumerate(rule.fields):
        if icmp_type_code(f.family, f.type) is None:
            out.append(((*at, "fields", i, "type"), f"ICMP type {f.type} not found in {f.family}"))
    return out


def _port_rule_problems(
    rule: PortRule | PortDenyRule, at: FieldPath, *, ingress: bool, deny: bool, host: bool
) -> list[Problem]:
    out: list[Problem] = []
    l7 = rule.rules
    has_http = l7 is not None and l7.http is not None
    has_dns = l7 is not None and l7.dns is not None
    has_l7 = has_http or has_dns
    if deny and l7 is not None:
        return [
            (
                (*at, "rules"),
                'deny rules do not support L7 rules (Cilium: "Deny policies do not support ... L7")',
            )
        ]
    if ingress and has_dns:
        out.append(((*at, "rules", "dns"), "DNS rules are not allowed on ingress"))
    if host and has_http:
        out.append(((*at, "rules", "http"), "host policies do not support L7 rules yet"))
    if has_http and has_dns:
        out.append(((*at, "rules"), "multiple L7 protocol rule types specified in single rule"))
    ports = rule.ports or []
    if len(ports) > MAX_PORTS:
        out.append(((*at, "ports"), f"too many ports, the max is {MAX_PORTS}"))
    zero_port = False
    for i, pp in enumerate(ports):
        where = (*at, "ports", i)
        if pp.port == "":
            out.append(((*where, "port"), "port must be specified"))
            continue
        parsed = parse_port(pp.port)
        if parsed is None:
            out.append(
                ((*where, "port"), f"unable to parse port {pp.port!r} (a number 0-65535 or an IANA name)")
            )
            continue
        zero_port = zero_port or parsed == 0
        if has_dns and isinstance(parsed, int) and pp.end_port is not None and pp.end_port > parsed:
            out.append(((*where, "endPort"), "DNS rules do not support port ranges"))
        if has_http and pp.protocol != "TCP":
            out.append(
                (
                    (*where, "protocol"),
                    f"L7 rules can only apply to TCP (not {pp.protocol or 'ANY'}) except for DNS rules",
                )
            )
    if isinstance(rule, PortRule):
        if rule.server_names and has_l7 and rule.terminating_tls is None:
            out.append(
                ((*at, "serverNames"), "ServerNames are not allowed with L7 rules without TLS termination")
            )
        for i, name in enumerate(rule.server_names):
            if not name:
                out.append(((*at, "serverNames", i), "Empty server name is not allowed"))
        if rule.listener is not None:
            if ingress:
                out.append(((*at, "listener"), f"Listener is not allowed on ingress ({rule.listener.name})"))
            if has_l7:
                out.append(
                    ((*at, "listener"), f"Listener is not allowed with L7 rules ({rule.listener.name})")
                )
    if has_l7 and zero_port:
        out.append(((*at, "rules"), "L7 rules can not be used when a port is 0"))
    if has_dns and not ports:
        out.append(((*at, "ports"), "Port 53 must be specified for DNS rules"))
    for i, http in enumerate((l7.http if l7 is not None else None) or ()):
        out.extend(_http_problems(http, (*at, "rules", "http", i)))
    return out


def _http_problems(rule: PortRuleHTTP, at: FieldPath) -> list[Problem]:
    out: list[Problem] = []
    for field in ("path", "method", "host"):
        pattern = getattr(rule, field)
        if not pattern:
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            out.append(((*at, field), f"invalid regex {pattern!r}: {exc}"))
            continue
        if _NOT_RE2.search(pattern):
            out.append(((*at, field), f"{pattern!r}: look-around and backreferences are not RE2 syntax"))
    for i, hm in enumerate(rule.header_matches):
        if not hm.name:
            out.append(((*at, "headerMatches", i, "name"), "Header name missing"))
        if hm.secret is not None and not hm.secret.name:
            out.append(((*at, "headerMatches", i, "secret", "name"), "Secret name missing"))
    for i, header in enumerate(rule.headers):
        if not header.strip():
            out.append(((*at, "headers", i), "empty header"))
    return out
