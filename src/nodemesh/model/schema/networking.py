"""Kubernetes NetworkPolicy (networking.k8s.io/v1): the manifest, typed, and what the apiserver rejects.

Field names, optionality and defaults follow the API reference (k8s.io/api `networking/v1/types.go`):
`spec` and `spec.podSelector` are optional (absent = the empty selector, all pods of the namespace);
`protocol` defaults to TCP (`SetDefaults_NetworkPolicyPort`); `policyTypes` defaults to `["Ingress"]`
plus `"Egress"` when the policy has at least one egress rule (`SetDefaults_NetworkPolicy`, in
pkg/apis/networking/v1/defaults.go: `len(obj.Spec.Egress) != 0`).

`semantic_problems` reproduces the apiserver's `ValidateNetworkPolicySpec`
(pkg/apis/networking/validation/validation.go), with its messages:
- a port number must be between 1 and 65535; a named port must be an IANA_SVC_NAME;
- `endPort` "may not be specified when `port` is non-numeric" / "is not specified", and "must be
  greater than or equal to `port`";
- a peer "must specify a peer"; it "may not specify both ipBlock and another peer";
- `ipBlock.cidr` must be a CIDR; each `except` "must be a strict subset of `cidr`";
- `policyTypes`: at most two, each `Ingress` or `Egress`;
- label selectors: operators and values (`LabelSelectorModel`), label keys and values syntax.

CIDRs are parsed as the apiserver's legacy-field parser does by default: a value in "interface
address" form (`10.0.0.1/24`, host bits set) and IPv4 octets with leading zeros are accepted and
read as decimal (`ParseCIDRSloppy`); a bare IP without a prefix length is not a CIDR.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Literal

from pydantic import ConfigDict, Field, StrictInt, field_validator

from nodemesh.model.loader import FieldPath
from nodemesh.model.schema.base import Document, LabelSelectorModel, Problem, Spec, register

__all__ = [
    "IPBlockModel",
    "NetworkPolicy",
    "NetworkPolicyEgressRule",
    "NetworkPolicyIngressRule",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "NetworkPolicySpec",
    "parse_cidr",
]

POLICY_TYPES = ("Ingress", "Egress")

# k8s.io/apimachinery/pkg/util/validation: qualified names, label values, IANA service names.
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME_CHARS = re.compile(r"^[-a-z0-9]+$")
_PORT_NAME_LETTER = re.compile(r"[a-z]")

# Aliases only: `from` and `except` are Python keywords, so the fields are `from_` / `except_`,
# and the Python names must not be accepted as manifest keys.
_ALIASES_ONLY = ConfigDict(populate_by_name=False, validate_by_name=False)


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as the apiserver reads `ipBlock` values; raises ValueError when it is not one.

    Host bits may be set (the network is what counts); IPv4 octets with leading zeros are read
    as decimal, as `netutils.ParseCIDRSloppy` does; the prefix length is required.
    """
    addr, slash, prefix = text.partition("/")
    if not slash or not prefix.isdigit():
        raise ValueError(f"{text!r} is not a CIDR (an address, '/', and a prefix length)")
    if "." in addr and ":" not in addr:
        octets = addr.split(".")
        if len(octets) == 4 and all(o.isdigit() for o in octets):
            addr = ".".join(str(int(o)) for o in octets)
    return ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)


def _qualified_name_problems(key: str) -> list[str]:
    prefix, slash, name = key.rpartition("/")
    out: list[str] = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        out.append(f"label key {key!r}: the prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        out.append(
            f"label key {key!r}: the name must be 63 characters or less, alphanumeric, '-', '_' or '.', "
            "and start and end with an alphanumeric character"
        )
    return out


def _label_value_problems(value: str) -> list[str]:
    if value == "" or (len(value) <= 63 and _NAME.match(value)):
        return []
    return [
        f"label value {value!r} must be 63 characters or less, empty or alphanumeric, '-', '_' or '.', "
        "and start and end with an alphanumeric character"
    ]


def _selector_problems(selector: LabelSelectorModel, at: FieldPath) -> list[Problem]:
    """`ValidateLabelSelector`: operators and values, plus label key and value syntax."""
    out = selector.semantic_problems(at)
    for key, value in selector.match_labels.items():
        out += [((*at, "matchLabels", key), m) for m in _qualified_name_problems(key)]
        out += [((*at, "matchLabels", key), m) for m in _label_value_problems(value)]
    for i, req in enumerate(selector.match_expressions):
        out += [((*at, "matchExpressions", i, "key"), m) for m in _qualified_name_problems(req.key)]
        for j, value in enumerate(req.values):
            out += [((*at, "matchExpressions", i, "values", j), m) for m in _label_value_problems(value)]
    return out


def _port_name_problems(name: str) -> list[str]:
    """`IsValidPortName` (IANA_SVC_NAME, RFC 6335 section 5.1)."""
    out: list[str] = []
    if len(name) > 15:
        out.append("must be no more than 15 characters")
    if not _PORT_NAME_CHARS.match(name):
        out.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER.search(name):
        out.append("must contain at least one letter (a-z)")
    if "--" in name:
        out.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        out.append("must not begin or end with a hyphen")
    return out


def _port_number_problems(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else ["must be between 1 and 65535, inclusive"]


class IPBlockModel(Spec):
    """`ipBlock`: a CIDR, minus the `except` CIDRs inside it."""

    model_config = _ALIASES_ONLY

    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")

    def problems(self, at: FieldPath) -> list[Problem]:
        """`ValidateIPBlock`: a valid cidr, and every except a strict subset of it."""
        try:
            net = parse_cidr(self.cidr)
        except ValueError:
            return [
                (
                    (*at, "cidr"),
                    f"{self.cidr!r} is not a valid CIDR (for example 10.0.0.0/24 or 2001:db8::/64)",
                )
            ]
        out: list[Problem] = []
        for i, text in enumerate(self.except_):
            try:
                exc = parse_cidr(text)
            except ValueError:
                out.append(((*at, "except", i), f"{text!r} is not a valid CIDR"))
                continue
            # validation.go: !cidrIPNet.Contains(exceptCIDR.IP) || cidrMaskLen >= exceptMaskLen
            inside = exc.version == net.version and exc.network_address in net
            if not inside or net.prefixlen >= exc.prefixlen:
                out.append(((*at, "except", i), f"{text!r} must be a strict subset of `cidr` ({self.cidr})"))
        return out


class NetworkPolicyPeer(Spec):
    """One `from`/`to` element: podSelector and/or namespaceSelector, or ipBlock alone."""

    pod_selector: LabelSelectorModel | None = None
    namespace_selector: LabelSelectorModel | None = None
    ip_block: IPBlockModel | None = None

    def problems(self, at: FieldPath) -> list[Problem]:
        """`ValidateNetworkPolicyPeer`."""
        out: list[Problem] = []
        count = 0
        if self.pod_selector is not None:
            count += 1
            out += _selector_problems(self.pod_selector, (*at, "podSelector"))
        if self.namespace_selector is not None:
            count += 1
            out += _selector_problems(self.namespace_selector, (*at, "namespaceSelector"))
        if self.ip_block is not None:
            count += 1
            out += self.ip_block.problems((*at, "ipBlock"))
        if count == 0:
            out.append((at, "must specify a peer (podSelector, namespaceSelector or ipBlock)"))
        elif count > 1 and self.ip_block is not None:
            out.append((at, "may not specify both ipBlock and another peer"))
        return out


class NetworkPolicyPort(Spec):
    """`ports[]`: protocol (default TCP), a port number or name (absent = every port), endPort."""

    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    port: int | str | None = None
    end_port: StrictInt | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _int_or_string(cls, value: object) -> object:
        # IntOrString: a JSON number or a string, nothing else (YAML `true` or `1.5` is an error).
        if (
            value is None
            or isinstance(value, str)
            or (isinstance(value, int) and not isinstance(value, bool))
        ):
            return value
        raise ValueError("must be a port number or a port name")

    @property
    def effective_protocol(self) -> str:
        return self.protocol or "TCP"

    def problems(self, at: FieldPath) -> list[Problem]:
        """`ValidateNetworkPolicyPort`."""
        out: list[Problem] = []
        if isinstance(self.port, int):
            out += [((*at, "port"), m) for m in _port_number_problems(self.port)]
            if self.end_port is not None:
                if self.end_port < self.port:
                    out.append(((*at, "endPort"), f"{self.end_port} must be greater than or equal to `port`"))
                out += [((*at, "endPort"), m) for m in _port_number_problems(self.end_port)]
        elif isinstance(self.port, str):
            if self.end_port is not None:
                out.append(
                    ((*at, "endPort"), "may not be specified when `port` is non-numeric (a named port)")
                )
            out += [((*at, "port"), f"named port {self.port!r} {m}") for m in _port_name_problems(self.port)]
        elif self.end_port is not None:
            out.append(((*at, "endPort"), "may not be specified when `port` is not specified"))
        return out


class NetworkPolicyIngressRule(Spec):
    """Allows traffic that matches both `from` and `ports` (absent or empty = any)."""

    model_config = _ALIASES_ONLY

    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicyEgressRule(Spec):
    """Allows traffic that matches both `to` and `ports` (absent or empty = any)."""

    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicySpec(Spec):
    pod_selector: LabelSelectorModel = Field(default_factory=LabelSelectorModel)
    policy_types: list[str] | None = None
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None

    @property
    def effective_policy_types(self) -> frozenset[str]:
        """`policyTypes` after apiserver defaulting (`SetDefaults_NetworkPolicy`)."""
        if self.policy_types:
            return frozenset(self.policy_types)
        return frozenset({"Ingress", "Egress"} if self.egress else {"Ingress"})

    def problems(self, at: FieldPath) -> list[Problem]:
        out = _selector_problems(self.pod_selector, (*at, "podSelector"))
        for i, ingress in enumerate(self.ingress or []):
            rule_at = (*at, "ingress", i)
            for j, port in enumerate(ingress.ports):
                out += port.problems((*rule_at, "ports", j))
            for j, peer in enumerate(ingress.from_):
                out += peer.problems((*rule_at, "from", j))
        for i, egress in enumerate(self.egress or []):
            rule_at = (*at, "egress", i)
            for j, port in enumerate(egress.ports):
                out += port.problems((*rule_at, "ports", j))
            for j, peer in enumerate(egress.to):
                out += peer.problems((*rule_at, "to", j))
        types = self.policy_types or []
        if len(types) > len(POLICY_TYPES):
            out.append(((*at, "policyTypes"), "may not specify more than two policyTypes"))
            return out
        for i, kind in enumerate(types):
            if kind not in POLICY_TYPES:
                close = difflib.get_close_matches(kind, POLICY_TYPES, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                out.append(
                    (
                        (*at, "policyTypes", i),
                        f"unsupported value {kind!r}: supported values are Ingress, Egress{hint}",
                    )
                )
        return out


@register("networking.k8s.io", "NetworkPolicy", ("v1",))
class NetworkPolicy(Document):
    """A Kubernetes NetworkPolicy: which pods of its namespace it isolates, and what it allows."""

    api_version: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    def semantic_problems(self) -> list[Problem]:
        return self.spec.problems(("spec",))
