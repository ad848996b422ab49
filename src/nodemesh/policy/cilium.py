"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2): compile to the IR, evaluate.

Upstream semantics implemented here (docs.cilium.io "Policy Language", "Deny Policies";
`pkg/k8s/apis/cilium.io/utils/utils.go`, `pkg/policy/{repository,rule,l4}.go`,
`pkg/envoy/xds_server.go`; summarised in /work/shared/reference/cilium.md section 1):

- Subject. `endpointSelector` is matched against the endpoint's identity labels (`k8s:app=x`,
  `k8s:io.kubernetes.pod.namespace=shop`, ...). A CiliumNetworkPolicy always adds
  `k8s:io.kubernetes.pod.namespace=<its namespace>` (overriding a user match on that exact key);
  a clusterwide policy adds nothing. A key without a source (`app`) or with `any:` matches a label
  of any source; `k8s:app` only a `k8s` label. `nodeSelector` (host policies) selects only host
  endpoints, and `endpointSelector` never does (`rule.matchesSubject`).
- Peers (`getEndpointSelector`): a from/toEndpoints selector with a `reserved:` key is used as
  written; otherwise, without a namespace key, a CNP adds its own namespace (unless a
  `io.cilium.k8s.namespace.labels.*` key is used) and a CCNP adds `namespace Exists`; a selector
  without a cluster key gets the local cluster (`policy-default-local-cluster`, default since
  1.19). A peer field that is absent is an L3 wildcard when ports are given; present but empty it
  selects nothing (`mergeEndpointSelectors`). A rule with neither peers nor ports allows nothing.
  CIDR peers never match in-cluster pods. Entities follow `pkg/policy/api/entity.go`.
- Ports (`rule.go mergeIngress`): no `toPorts` and no `icmps` = every port and protocol (ICMP
  included); a PortRule with no ports contributes nothing; protocol ANY/empty = TCP+UDP+SCTP;
  named ports resolve against the destination pod. ICMP flows carry the ICMP type in
  `FlowContext.port`, as Cilium turns an ICMP type into a port (`icmp.go PortProtocol`).
- Verdict per direction (`computePolicyEnforcementAndRules`, reference 1.11): no selecting rule
  with entries in that direction = no say (None); a matching deny rule = POLICY_DENY; else
  local-host ingress is allowed (`--allow-localhost`); else a matching allow; else default deny
  (POLICY_DENIED) unless every selecting rule sets `enableDefaultDeny.<dir>: false`.
- L7: if every allow that matches the flow carries HTTP rules, the flow is redirected to the proxy
  and a request must fully match (`re.fullmatch`, Envoy's RE2 "matched against the full string")
  one http rule of one of them, else HTTP 403 "Access denied"; an L4-only (or L3-only) allow that
  covers the same flow makes every request allowed ("the layer 7 portions of the latter rule will
  have no effect"). L7 rules still apply with `enableDefaultDeny: false` (intro.rst).
- Host-networking pods carry the node's identity (`reserved:host` on their own node, the
  `remote-node` entity elsewhere), not their pod labels. `fromRequires`/`toRequires`
  (deprecated) narrow every allowed peer of every rule selecting the endpoint (language.rst).

Not modelled, and said so in the IR and by `analyze` (NM305): peers that need state nodemesh does
not have -- toFQDNs (IPs learnt by the DNS proxy), toServices (Endpoints of selector-less
Services), fromGroups/toGroups, CiliumCIDRGroups -- match no peer; DNS L7 rules allow their port
without filtering queries; `authentication.mode: required` is reported in the decision's notes.

Invariants: compiling is pure and done once per world; evaluation never mutates a policy. The
engine keeps three caches keyed by endpoint identity (namespace/pod, or the address and labels
of an outside endpoint): the policies selecting an endpoint (Cilium's per-identity
`selectorPolicy`), the rules whose peer matches a (subject, peer) pair (its selector cache), and
the L4 outcome per (subject, peer, port, protocol) (its per-endpoint policy map). The hot path for
a known flow is one dictionary lookup.
"""

from __future__ import annotations

import gc
import ipaddress
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nodemesh.model.loader import FieldPath, format_path
from nodemesh.model.schema.base import LabelSelectorModel
from nodemesh.model.schema.cilium import (
    EGRESS_PEERS,
    INGRESS_PEERS,
    CIDRRule,
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    CiliumRule,
    EgressDenyRule,
    EgressRule,
    ICMPRule,
    IngressDenyRule,
    IngressRule,
    PortDenyRule,
    PortProtocol,
    PortRule,
    PortRuleHTTP,
    icmp_type_code,
    parse_port,
)
from nodemesh.model.world import World
from nodemesh.policy.conditions import CidrCondition, Network, PortCondition, Side
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, Protocol
from nodemesh.policy.ir import Action, Api, Clause, Direction, Layer, Match, Policy, PolicyRef, Rule
from nodemesh.policy.selector import Operator

__all__ = [
    "CiliumEngine",
    "CiliumSelector",
    "CiliumSubject",
    "EntityCondition",
    "HttpHeaderCondition",
    "HttpRegexCondition",
    "IcmpCondition",
    "IdentityCondition",
    "LabelRequirement",
    "UnresolvedPeer",
]

NS_KEY: Final = "io.kubernetes.pod.namespace"
CLUSTER_KEY: Final = "io.cilium.k8s.policy.cluster"
NS_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels"
ANY_L4: Final = frozenset({Protocol.TCP, Protocol.UDP, Protocol.SCTP})
_PROTOCOLS: Final = {
    "TCP": frozenset({Protocol.TCP}),
    "UDP": frozenset({Protocol.UDP}),
    "SCTP": frozenset({Protocol.SCTP}),
}
# Entities that are reserved identities: an endpoint in one carries the label `reserved:<name>`.
_RESERVED: Final = frozenset(
    {"host", "remote-node", "world", "kube-apiserver", "ingress", "health", "init", "unmanaged"}
)
# entity.go: `cluster` = host, remote-node, init, ingress, health, unmanaged, kube-apiserver and
# every pod of the local cluster.
_CLUSTER: Final = frozenset(
    {"cluster", "host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"}
)
_CACHE_LIMIT: Final = 200_000
DNS_NOTE: Final = "rules.dns: enforced by Cilium's DNS proxy (nodemesh does not filter DNS queries)"
Labels = Mapping[str, str]
EndpointKey = tuple[object, ...]
PeerRule = IngressRule | IngressDenyRule | EgressRule | EgressDenyRule
# An `_Entry` before its policy exists: rule, label, path, peer, ports, http, dns, auth.
_Proto = tuple[Rule, str, FieldPath, "Clause | None", "Clause | None", "Clause | None", bool, "str | None"]


# ---- identity labels and selectors ---------------------------------------------------------


def label_view(ep: Endpoint, *, node: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(labels by `source:key`, labels by bare key) of an endpoint's identity, with the
    `reserved:<entity>` labels of its entities. `node=True` adds what nodemesh knows of a node's
    labels (`kubernetes.io/hostname`)."""
    if ep.is_pod and "host" in ep.entities:
        # A host-networking pod has the node's identity, not its own labels (Cilium manages no
        # endpoint for it): only the reserved labels, and what nodemesh knows of the node.
        full: dict[str, str] = {}
        node = True
    else:
        full = dict(ep.identity_labels)
    for entity in ep.entities:
        if entity in _RESERVED:
            full.setdefault("reserved:" + entity, "")
    if node and ep.node:
        full.setdefault("k8s:kubernetes.io/hostname", ep.node)
    bare: dict[str, str] = {}
    for key, value in full.items():
        head, sep, tail = key.partition(":")
        bare.setdefault(tail if sep else head, value)
    return full, bare


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One selector requirement. `key` is `source:key` (exact source) or a bare key (any source:
    `["k8s:foo=bar"].Has("any:foo")` is true, pkg/labels/array.go)."""

    key: str
    any_source: bool
    operator: Operator
    values: frozenset[str] = frozenset()
    source: str | None = None  # None: any source
    bare_key: str = ""

    @classmethod
    def parse(cls, raw: str, operator: Operator, values: Iterable[str] = ()) -> LabelRequirement:
        source, sep, rest = raw.partition(":")
        if not sep:
            return cls(raw, True, operator, frozenset(values), None, raw)
        if source == "any":
            return cls(rest, True, operator, frozenset(values), None, rest)
        return cls(raw, False, operator, frozenset(values), source, rest)

    def matches(self, full: Labels, bare: Labels) -> bool:
        value = (bare if self.any_source else full).get(self.key)
        op = self.operator
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        return value is None

    def __str__(self) -> str:
        key = self.key if not self.any_source else f"any:{self.key}"
        if self.operator is Operator.IN and len(self.values) == 1:
            return f"{key}={next(iter(self.values))}"
        if self.operator in (Operator.IN, Operator.NOT_IN):
            return f"{key} {self.operator.value} ({','.join(sorted(self.values))})"
        return key if self.operator is Operator.EXISTS else f"!{key}"


@dataclass(frozen=True, slots=True)
class CiliumSelector:
    """An EndpointSelector after Cilium's widening: every requirement must hold."""

    requirements: tuple[LabelRequirement, ...] = ()

    @classmethod
    def from_model(cls, model: LabelSelectorModel, *, drop_label: str | None = None) -> CiliumSelector:
        reqs = [
            LabelRequirement.parse(k, Operator.IN, (v,))
            for k, v in sorted(model.match_labels.items())
            if k != drop_label
        ]
        reqs += [
            LabelRequirement.parse(e.key, Operator(e.operator), e.values) for e in model.match_expressions
        ]
        return cls(tuple(reqs))

    def has_key(self, bare_key: str, sources: tuple[str | None, ...] = ("k8s", None)) -> bool:
        """`EndpointSelector.HasKey` for `k8s:<key>` / `any:<key>` (source None = any)."""
        return any(r.bare_key == bare_key and r.source in sources for r in self.requirements)

    def has_key_prefix(self, prefix: str, sources: tuple[str | None, ...]) -> bool:
        return any(r.bare_key.startswith(prefix) and r.source in sources for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def plus(self, *extra: LabelRequirement) -> CiliumSelector:
        return CiliumSelector((*self.requirements, *extra))

    def matches(self, full: Labels, bare: Labels) -> bool:
        return all(r.matches(full, bare) for r in self.requirements)

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}" if self.requirements else "{<all>}"


@dataclass(frozen=True, slots=True)
class CiliumSubject:
    """`endpointSelector` (pod endpoints, never the host) or `nodeSelector` (host endpoints)."""

    selector: CiliumSelector
    node: bool = False

    def selects(self, endpoint: object) -> bool:
        if not isinstance(endpoint, Endpoint):
            return False
        return self.selects_labels(endpoint, *label_view(endpoint, node=self.node))

    def selects_labels(self, endpoint: Endpoint, full: Labels, bare: Labels) -> bool:
        """`selects`, given the endpoint's `label_view` (with `node=self.node`)."""
        is_host = "host" in endpoint.entities
        if self.node:
            return is_host and self.selector.matches(full, bare)
        if is_host or not endpoint.is_pod:
            return False
        return self.selector.matches(full, bare)

    def describe(self) -> str:
        return f"{'nodeSelector' if self.node else 'endpointSelector'} {self.selector}"


# ---- conditions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityCondition:
    """fromEndpoints / toEndpoints / fromNodes / toNodes / from-toRequires: the peer's identity
    labels match a (widened) selector."""

    selector: CiliumSelector
    side: Side
    label: str = "fromEndpoints"
    node: bool = False

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        return self.selector.matches(*label_view(self.side.of(ctx), node=self.node))

    def describe(self) -> str:
        return f"{self.label} {self.selector}"


@dataclass(frozen=True, slots=True)
class EntityCondition:
    """fromEntities / toEntities: the peer belongs to a reserved entity (entity.go)."""

    entity: str
    side: Side
    label: str = "fromEntities"

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        ep = self.side.of(ctx)
        entity = self.entity
        if entity == "all":
            return True
        if entity in ("host", "remote-node") and "host" in ep.entities:
            # nodemesh marks host-networking endpoints `host`; on another node they are that
            # node's, i.e. `remote-node` from where the policy is enforced.
            return (entity == "host") == _same_node(ctx.src, ctx.dst)
        if entity in ("cluster", "cluster-mesh"):
            return not _CLUSTER.isdisjoint(ep.entities)
        if entity in ("world-ipv4", "world-ipv6"):
            version = 4 if entity == "world-ipv4" else 6
            return "world" in ep.entities and (ep.ip is None or ep.ip.version == version)
        return entity in ep.entities

    def describe(self) -> str:
        return f"{self.label} {self.entity}"


@dataclass(frozen=True, slots=True)
class UnresolvedPeer:
    """A peer kind nodemesh cannot resolve (toFQDNs names seen by the DNS proxy, toServices
    backends, fromGroups, CiliumCIDRGroups): it matches no peer, and says so."""

    what: str

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        return False

    def describe(self) -> str:
        return f"{self.what} (not resolvable by nodemesh: matches no peer)"


@dataclass(frozen=True, slots=True)
class IcmpCondition:
    """`icmps.fields[]`: an ICMP flow of that family whose type (carried in `port`) matches."""

    family: str
    type_code: int

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        if ctx.protocol is not Protocol.ICMP or ctx.port != self.type_code:
            return False
        ip = ctx.dst.ip or ctx.src.ip
        return (ip is not None and ip.version == 6) == (self.family == "IPv6")

    def describe(self) -> str:
        return f"icmp {self.family} type {self.type_code}"


@dataclass(frozen=True, slots=True)
class HttpRegexCondition:
    """`method`, `path` or `host` of an http rule: a regex matched against the full value
    (Envoy RegexMatcher: "matched against the full string, not as a partial match")."""

    name: str
    pattern: str
    regex: re.Pattern[str] = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, name: str, pattern: str) -> HttpRegexCondition:
        return cls(name, pattern, re.compile(pattern))

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        req = ctx.request
        if req is None:
            return False
        value = req.method if self.name == "method" else req.path if self.name == "path" else req.host
        return self.regex.fullmatch(value) is not None

    def describe(self) -> str:
        return f"{self.name} ~ {self.pattern}"


@dataclass(frozen=True, slots=True)
class HttpHeaderCondition:
    """`headers: ["Name: value"]` (exact value) / `["Name"]` (presence), or one `headerMatches`
    entry: exact `value` or presence; with a `mismatch` action the rule still matches
    (http.go); a `secret` nodemesh cannot read, with no `value`, never matches."""

    name: str
    value: str | None = None
    mismatch: str | None = None
    never: bool = False

    @classmethod
    def from_header(cls, text: str) -> HttpHeaderCondition:
        parts = text.split(" ", 1)
        if len(parts) == 2:
            return cls(parts[0].rstrip(":"), parts[1])
        return cls(parts[0])

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        req = ctx.request
        if req is None or self.never:
            return False
        if self.mismatch is not None:
            return True
        got = req.header(self.name)
        return got is not None and (self.value is None or got == self.value)

    def describe(self) -> str:
        if self.never:
            return f"header {self.name} = <secret nodemesh cannot read>"
        what = f"header {self.name}" + (" present" if self.value is None else f" = {self.value!r}")
        return what + (f" (on mismatch: {self.mismatch})" if self.mismatch else "")


@dataclass(frozen=True, slots=True)
class HttpAnyRequest:
    """`http: [{}]`: any request (keeps the clause at layer L7)."""

    @property
    def layer(self) -> Layer:
        return Layer.L7

    def matches(self, ctx: FlowContext) -> bool:
        return ctx.request is not None

    def describe(self) -> str:
        return "any request"


# ---- compiled rules --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One IR rule of one direction of one policy rule, ready for the hot path."""

    policy: Policy
    rule: Rule
    label: str  # "ingress[0]", "specs[1].egressDeny[2]"
    at: FieldPath
    peer: Clause | None  # None: any peer
    ports: Clause | None  # None: every port and protocol
    http: Clause | None  # L7 http rules (allow only)
    dns: bool = False
    auth: str | None = None
    line: int = 0  # of the rule in its manifest

    @property
    def ref(self) -> PolicyRef:
        return self.policy.ref

    def ports_match(self, ctx: FlowContext) -> bool:
        return self.ports is None or self.ports.holds(ctx)


@dataclass(frozen=True, slots=True)
class _Direction:
    """A policy rule's entries in one direction."""

    allows: tuple[_Entry, ...]
    denies: tuple[_Entry, ...]
    default_deny: bool
    requires: tuple[CiliumSelector, ...]
    ref: PolicyRef


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One `spec` / `specs[i]` of a policy."""

    ref: PolicyRef
    namespace: str
    subject: CiliumSubject
    at: FieldPath
    rule: CiliumRule
    doc: CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy
    ingress: _Direction | None
    egress: _Direction | None
    seq: int = 0  # position in the world's policy order

    def index_key(self) -> tuple[bool, str, str] | None:
        """A label every endpoint this rule selects must carry (any-source?, key, value), to
        index it by; None when the subject has no single-valued `In` requirement to use."""
        for req in self.subject.selector.requirements:
            if req.operator is Operator.IN and len(req.values) == 1 and req.bare_key != NS_KEY:
                return (req.any_source, req.key, next(iter(req.values)))
        return None


@dataclass
class _NamespaceIndex:
    """The namespaced rules of one namespace, indexed by one label their subject requires."""

    by_label: dict[tuple[bool, str, str], list[_Compiled]] = field(default_factory=dict)
    unindexed: list[_Compiled] = field(default_factory=list)

    def add(self, compiled: _Compiled) -> None:
        key = compiled.index_key()
        if key is None:
            self.unindexed.append(compiled)
        else:
            self.by_label.setdefault(key, []).append(compiled)


@dataclass(frozen=True, slots=True)
class _View:
    """Everything that applies to one endpoint in one direction (union over policies)."""

    allows: tuple[_Entry, ...]
    denies: tuple[_Entry, ...]
    default_deny: PolicyRef | None  # the first policy that puts the endpoint in default deny
    refs: tuple[PolicyRef, ...]
    requires: tuple[CiliumSelector, ...]


@dataclass(frozen=True, slots=True)
class _PeerMatch:
    allows: tuple[_Entry, ...]
    denies: tuple[_Entry, ...]
    localhost: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: Decision
    l7: tuple[_Entry, ...] = ()  # the allows whose http rules a request must satisfy


class _Compiler:
    """Turns one policy document into `_Compiled` rules (and their IR `Policy` objects).

    Compiled pieces are immutable, so identical ones (the same subject selector in the same
    namespace, the same peer list, the same port list) are built once and shared: thousands of
    policies written from a few templates compile in a fraction of the time.
    """

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._subjects: dict[Hashable, CiliumSubject] = {}
        self._peers: dict[Hashable, Clause | None] = {}
        self._ports: dict[Hashable, Clause] = {}
        self._requirements: dict[tuple[str, str, tuple[str, ...]], LabelRequirement] = {}

    def requirement(self, raw: str, operator: Operator, values: tuple[str, ...] = ()) -> LabelRequirement:
        key = (raw, operator.value, values)
        hit = self._requirements.get(key)
        if hit is None:
            hit = self._requirements[key] = LabelRequirement.parse(raw, operator, values)
        return hit

    def selector(self, model: LabelSelectorModel, drop_label: str | None = None) -> CiliumSelector:
        req = self.requirement
        reqs = [req(k, Operator.IN, (v,)) for k, v in sorted(model.match_labels.items()) if k != drop_label]
        reqs += [req(e.key, Operator(e.operator), tuple(e.values)) for e in model.match_expressions]
        return CiliumSelector(tuple(reqs))

    def compile(
        self, doc: CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy, seq: int = 0
    ) -> list[_Compiled]:
        ns = doc.namespace
        ref = PolicyRef(Api.CILIUM, doc.kind, ns, doc.name)
        location = doc.location
        out: list[_Compiled] = []
        for at, rule in doc.rules():
            subject = self._subject(rule, ns)
            init = subject.selector.has_key("init", ("reserved",))
            directions: list[_Direction | None] = []
            for ingress, allows, denies in (
                (True, rule.ingress, rule.ingress_deny),
                (False, rule.egress, rule.egress_deny),
            ):
                if not allows and not denies:
                    directions.append(None)
                    continue
                name = "ingress" if ingress else "egress"
                side = Side.SOURCE if ingress else Side.DESTINATION
                built: dict[Action, tuple[_Entry, ...]] = {}
                lists: tuple[tuple[Action, Sequence[PeerRule] | None, str], ...] = (
                    (Action.ALLOW, allows, name),
                    (Action.DENY, denies, f"{name}Deny"),
                )
                for action, items, field_name in lists:
                    if not items:
                        built[action] = ()
                        continue
                    protos = [
                        entry
                        for i, item in enumerate(items or ())
                        for entry in self._entries(
                            item, index=i, at=(*at, field_name, i), ns=ns, side=side, init=init
                        )
                    ]
                    policy = Policy(
                        ref=ref,
                        direction=Direction.INGRESS if ingress else Direction.EGRESS,
                        action=action,
                        rules=tuple(p[0] for p in protos),
                        subject=subject,
                        default_deny=rule.default_deny(ingress),
                        file=location.file,
                        line=location.line_of(at),
                    )
                    built[action] = tuple(_Entry(policy, *p, line=location.line_of(p[2])) for p in protos)
                requires = tuple(
                    self._peer_selector(sel, ns, init)
                    for item in allows or ()
                    for sel in (item.from_requires if isinstance(item, IngressRule) else item.to_requires)
                    or ()
                )
                directions.append(
                    _Direction(
                        built[Action.ALLOW], built[Action.DENY], rule.default_deny(ingress), requires, ref
                    )
                )
            out.append(
                _Compiled(ref, ns, subject, at, rule, doc, directions[0], directions[1], seq + len(out))
            )
        return out

    def _subject(self, rule: CiliumRule, ns: str) -> CiliumSubject:
        model = rule.node_selector or rule.endpoint_selector
        key = (rule.node_selector is not None, ns, None if model is None else _selector_key(model))
        hit = self._subjects.get(key)
        if hit is None:
            hit = self._subjects[key] = self._build_subject(rule, ns)
        return hit

    def _build_subject(self, rule: CiliumRule, ns: str) -> CiliumSubject:
        if rule.node_selector is not None:
            return CiliumSubject(self.selector(rule.node_selector), node=True)
        model = rule.endpoint_selector or LabelSelectorModel()
        if not ns:
            return CiliumSubject(self.selector(model))
        ns_key = f"k8s:{NS_KEY}"
        selector = self.selector(model, drop_label=ns_key)
        return CiliumSubject(selector.plus(self.requirement(ns_key, Operator.IN, (ns,))))

    def _peer_selector(self, model: LabelSelectorModel, ns: str, subject_init: bool) -> CiliumSelector:
        """utils.go getEndpointSelector."""
        sel = self.selector(model)
        if sel.has_source("reserved"):
            return sel
        if not sel.has_key(NS_KEY):
            if not ns:
                if not subject_init:
                    sel = sel.plus(self.requirement(f"k8s:{NS_KEY}", Operator.EXISTS))
            elif not sel.has_key_prefix(NS_LABELS_PREFIX, ("k8s", None)):
                sel = sel.plus(self.requirement(f"k8s:{NS_KEY}", Operator.IN, (ns,)))
        return self._cluster_scoped(sel)

    def _cluster_scoped(self, sel: CiliumSelector) -> CiliumSelector:
        if sel.has_key(CLUSTER_KEY):
            return sel
        return sel.plus(self.requirement(f"k8s:{CLUSTER_KEY}", Operator.IN, (self.cluster,)))

    def _node_selector(self, model: LabelSelectorModel) -> CiliumSelector:
        """utils.go getNodeSelector: node labels plus `reserved:remote-node Exists` (nodemesh
        models one cluster, so the cluster filter it also adds is left out)."""
        return self.selector(model).plus(self.requirement("reserved:remote-node", Operator.EXISTS))

    def _peer_clause(self, item: PeerRule, ns: str, side: Side, init: bool) -> Clause | None:
        kinds = INGRESS_PEERS if side is Side.SOURCE else EGRESS_PEERS
        present: list[tuple[str, Any]] = []
        parts: list[Hashable] = [side is Side.SOURCE, ns, init]
        for name, attr in kinds:
            values = getattr(item, attr, None)
            if values is not None:
                present.append((name, values))
                parts.append(name)
                parts.extend([_value_key(v) for v in values])
                parts.append(len(values))
        if not present:
            return None
        key = tuple(parts)
        if key in self._peers:
            return self._peers[key]
        clause = self._peers[key] = self._build_peer_clause(present, ns, side, init)
        return clause

    def _build_peer_clause(self, present: list[tuple[str, Any]], ns: str, side: Side, init: bool) -> Clause:
        name = present[0][0] if len(present) == 1 else "peers"
        if any(not values for _, values in present):
            return Clause(name, (Match(void=True),))
        matches = tuple(
            Match((self._peer_condition(kind, value, ns, side, init),))
            for kind, values in present
            for value in values
        )
        return Clause(name, matches)

    def _peer_condition(
        self, kind: str, value: object, ns: str, side: Side, init: bool
    ) -> IdentityCondition | EntityCondition | CidrCondition | UnresolvedPeer:
        if kind in ("fromEndpoints", "toEndpoints") and isinstance(value, LabelSelectorModel):
            return IdentityCondition(self._peer_selector(value, ns, init), side, kind)
        if kind in ("fromNodes", "toNodes") and isinstance(value, LabelSelectorModel):
            return IdentityCondition(self._node_selector(value), side, kind, node=True)
        if kind in ("fromEntities", "toEntities") and isinstance(value, str):
            return EntityCondition(value, side, kind)
        if kind in ("fromCIDR", "toCIDR") and isinstance(value, str):
            return CidrCondition((_network(value),), (), side, cluster_matches=False, label=kind)
        if kind in ("fromCIDRSet", "toCIDRSet") and isinstance(value, CIDRRule):
            if value.cidr is None:
                return UnresolvedPeer(f"{kind} cidrGroupRef {value.cidr_group_ref or '<selector>'}")
            excepts = tuple(_network(e) for e in value.except_)
            return CidrCondition((_network(value.cidr),), excepts, side, cluster_matches=False, label=kind)
        return UnresolvedPeer(f"{kind} {_describe_model(value)}")

    def _entries(
        self, item: PeerRule, *, index: int, at: FieldPath, ns: str, side: Side, init: bool
    ) -> list[_Proto]:
        """The IR rules of one ingress/egress item, with what the hot path needs (`_Entry`
        without its policy, which is built from these rules)."""
        peer = self._peer_clause(item, ns, side, init)
        path = format_path(at)
        label = path.removeprefix("spec.")
        auth = (
            item.authentication.mode
            if isinstance(item, IngressRule | EgressRule) and item.authentication
            else None
        )
        to_ports: Sequence[PortRule | PortDenyRule] = item.to_ports or ()
        icmps: Sequence[ICMPRule] = item.icmps or ()
        if not to_ports and not icmps:
            notes = ("L3-only: every port and protocol",)
            if peer is None:  # `{}`: allows nothing, yet puts the direction under policy
                peer, notes = (
                    Clause("peers", (Match(void=True),)),
                    ("no peers and no ports: matches nothing",),
                )
            rule = Rule(index, path, (peer,), notes=notes)
            return [(rule, label, at, peer, None, None, False, auth)]
        head = (peer,) if peer is not None else ()
        out: list[_Proto] = []
        if icmps:
            matches = tuple(
                Match((IcmpCondition(f.family, code),))
                for r in icmps
                for f in r.fields
                if (code := icmp_type_code(f.family, f.type)) is not None
            )
            ports = Clause("icmps", matches or (Match(void=True),))
            out.append((Rule(index, path, (*head, ports)), label, at, peer, ports, None, False, auth))
        plain = [pr for pr in to_ports if not isinstance(pr, PortRule) or _l7_empty(pr)]
        if plain:
            ports = self._ports_clause([pp for pr in plain for pp in pr.ports or ()])
            out.append((Rule(index, path, (*head, ports)), label, at, peer, ports, None, False, auth))
        for j, pr in enumerate(to_ports):
            if not isinstance(pr, PortRule) or pr.rules is None or _l7_empty(pr):
                continue
            ports = self._ports_clause(pr.ports or [])
            where = f"{path}.toPorts[{j}]"
            if pr.rules.http is not None:
                http = Clause(
                    "http", tuple(_http_match(h) for h in pr.rules.http) or (Match((HttpAnyRequest(),)),)
                )
                rule = Rule(index, where, (*head, ports, http))
                out.append((rule, label, at, peer, ports, http, False, auth))
            else:
                rule = Rule(index, where, (*head, ports), notes=(DNS_NOTE,))
                out.append((rule, label, at, peer, ports, None, True, auth))
        return out

    def _ports_clause(self, ports: list[PortProtocol]) -> Clause:
        key = tuple((pp.port, pp.end_port, pp.protocol) for pp in ports)
        hit = self._ports.get(key)
        if hit is None:
            hit = self._ports[key] = Clause("toPorts", tuple(_port_matches(ports)) or (Match(void=True),))
        return hit


def _selector_key(model: LabelSelectorModel) -> Hashable:
    return (
        tuple(sorted(model.match_labels.items())),
        tuple((e.key, e.operator, tuple(e.values)) for e in model.match_expressions),
    )


def _value_key(value: object) -> Hashable:
    """A hashable identity of one peer list item (equal keys compile to equal conditions)."""
    if isinstance(value, LabelSelectorModel):
        return _selector_key(value)
    if isinstance(value, str):
        return value
    if isinstance(value, CIDRRule):
        return (value.cidr, tuple(value.except_), value.cidr_group_ref, id(value.cidr_group_selector))
    return id(value)


def _l7_empty(pr: PortRule) -> bool:
    return pr.rules is None or (pr.rules.http is None and pr.rules.dns is None)


def _network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _describe_model(value: object) -> str:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        data = dump(exclude_none=True, by_alias=True)
        return str(data)
    return str(value)


def _port_matches(ports: list[PortProtocol] | None) -> list[Match]:
    """One Match per port; ANY/empty = TCP, UDP and SCTP; port 0 = every port."""
    out: list[Match] = []
    for pp in ports or ():
        protocols = _PROTOCOLS.get(pp.protocol or "ANY", ANY_L4)
        parsed = parse_port(pp.port)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            cond = PortCondition(name=parsed, protocols=protocols, label="toPorts")
        elif parsed == 0:
            cond = PortCondition(protocols=protocols, label="toPorts")
        else:
            end = pp.end_port if pp.end_port is not None and pp.end_port > parsed else None
            cond = PortCondition(port=parsed, end_port=end, protocols=protocols, label="toPorts")
        out.append(Match((cond,)))
    return out


def _http_match(rule: PortRuleHTTP) -> Match:
    conds: list[HttpRegexCondition | HttpHeaderCondition | HttpAnyRequest] = []
    for name in ("method", "path", "host"):
        pattern = getattr(rule, name)
        if pattern:
            conds.append(HttpRegexCondition.of(name, pattern))
    conds.extend(HttpHeaderCondition.from_header(h) for h in rule.headers)
    for hm in rule.header_matches:
        never = hm.secret is not None and hm.value is None and hm.mismatch is None
        conds.append(HttpHeaderCondition(hm.name, hm.value, hm.mismatch, never))
    return Match(tuple(conds) or (HttpAnyRequest(),))


def _endpoint_key(ep: Endpoint) -> EndpointKey:
    if ep.namespace is not None and (ep.pod or ep.workload):
        return (ep.namespace, ep.pod or ep.workload)
    return ("", ep.ip, ep.entities, tuple(sorted(ep.identity_labels.items())))


_MISSING: Final = object()


class CiliumEngine:
    """Every CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy of a world, compiled."""

    def __init__(self, world: World) -> None:
        self.world = world
        compiler = _Compiler(world.cluster_name)
        self._compiled: list[_Compiled] = []
        self._by_namespace: dict[str, _NamespaceIndex] = {}
        self._clusterwide: list[_Compiled] = []
        # Compiling allocates many small immutable objects and no cycles; the cyclic collector
        # would rescan the whole (large) heap over and over meanwhile, so it waits until the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for doc in world.policies:
                if isinstance(doc, CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy):
                    for compiled in compiler.compile(doc, seq=len(self._compiled)):
                        self._compiled.append(compiled)
                        if compiled.namespace and not compiled.subject.node:
                            index = self._by_namespace.get(compiled.namespace)
                            if index is None:
                                index = self._by_namespace[compiled.namespace] = _NamespaceIndex()
                            index.add(compiled)
                        else:
                            self._clusterwide.append(compiled)
        finally:
            if collecting:
                gc.enable()
        self.policies: list[Policy] = _ir_policies(self._compiled)
        self._views: dict[tuple[Direction, EndpointKey], _View | None] = {}
        self._peers: dict[tuple[Direction, EndpointKey, EndpointKey], _PeerMatch] = {}
        self._outcomes: dict[tuple[Direction, EndpointKey, EndpointKey, int, Protocol], _Outcome | None] = {}

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate_l4(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """L3/L4 verdict (ctx.request ignored). An allow whose matching rules all carry HTTP
        rules has `redirect=True`. None when no policy selects the endpoint in that direction."""
        outcome = self._outcome(ctx, direction)
        return None if outcome is None else outcome.decision

    def evaluate_l7(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """Full verdict for the request in ctx.request (L4 first, then the http rules): a request
        on an L7-ruled port that matches no http rule is denied with status 403."""
        outcome = self._outcome(ctx, direction)
        if outcome is None:
            return None
        if not outcome.l7 or ctx.request is None:
            return outcome.decision
        req = ctx.request
        for entry in outcome.l7:
            assert entry.http is not None
            for j, match in enumerate(entry.http.matches):
                if match.matches(ctx):
                    return Decision.allow(
                        f"allowed by {entry.ref} {entry.label} (http[{j}]: {match.describe()})",
                        api=Api.CILIUM,
                        policy=entry.ref,
                        rule=entry.rule.index,
                        notes=outcome.decision.notes,
                    )
        first = outcome.l7[0]
        rules = ", ".join(f"{e.ref} {e.label}" for e in outcome.l7)
        return Decision.deny(
            f"Access denied: {req.method} {req.path} matches no http rule of {rules} (HTTP 403)",
            api=Api.CILIUM,
            policy=first.ref,
            rule=first.rule.index,
            status=403,
        )

    def _outcome(self, ctx: FlowContext, direction: Direction) -> _Outcome | None:
        ingress = direction is Direction.INGRESS
        subject, peer = (ctx.dst, ctx.src) if ingress else (ctx.src, ctx.dst)
        skey, pkey = _endpoint_key(subject), _endpoint_key(peer)
        key = (direction, skey, pkey, ctx.port, ctx.protocol)
        hit = self._outcomes.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        view = self._view(subject, skey, direction)
        outcome = (
            None
            if view is None
            else self._decide(ctx, direction, view, self._peer(ctx, direction, view, skey, pkey))
        )
        if len(self._outcomes) >= _CACHE_LIMIT:
            self._outcomes.clear()
        self._outcomes[key] = outcome
        return outcome

    def _view(self, subject: Endpoint, skey: EndpointKey, direction: Direction) -> _View | None:
        key = (direction, skey)
        hit = self._views.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        view = self._build_view(subject, direction)
        if len(self._views) >= _CACHE_LIMIT:
            self._views.clear()
        self._views[key] = view
        return view

    def _candidates(self, subject: Endpoint, full: Labels, bare: Labels) -> list[_Compiled]:
        """The policies that may select `subject`, in policy order: the clusterwide ones, and
        those of its namespace that are indexed under one of its labels or not indexable."""
        found: list[_Compiled] = list(self._clusterwide)
        if subject.namespace is not None:
            index = self._by_namespace.get(subject.namespace)
            if index is not None:
                found.extend(index.unindexed)
                by_label = index.by_label
                for k, v in full.items():
                    found.extend(by_label.get((False, k, v), ()))
                for k, v in bare.items():
                    found.extend(by_label.get((True, k, v), ()))
        found.sort(key=lambda c: c.seq)
        return found

    def _build_view(self, subject: Endpoint, direction: Direction) -> _View | None:
        ingress = direction is Direction.INGRESS
        allows: list[_Entry] = []
        denies: list[_Entry] = []
        refs: dict[PolicyRef, None] = {}
        requires: list[CiliumSelector] = []
        default_deny: PolicyRef | None = None
        views = (label_view(subject), label_view(subject, node=True))
        for compiled in self._candidates(subject, *views[0]):
            rules = compiled.ingress if ingress else compiled.egress
            if rules is None or not compiled.subject.selects_labels(subject, *views[compiled.subject.node]):
                continue
            allows.extend(rules.allows)
            denies.extend(rules.denies)
            requires.extend(rules.requires)
            refs[rules.ref] = None
            if rules.default_deny and default_deny is None:
                default_deny = rules.ref
        if not refs:
            return None
        return _View(tuple(allows), tuple(denies), default_deny, tuple(refs), tuple(requires))

    def _peer(
        self, ctx: FlowContext, direction: Direction, view: _View, skey: EndpointKey, pkey: EndpointKey
    ) -> _PeerMatch:
        key = (direction, skey, pkey)
        hit = self._peers.get(key)
        if hit is not None:
            return hit
        ingress = direction is Direction.INGRESS
        peer = ctx.src if ingress else ctx.dst
        labels = label_view(peer)
        # Entries of many policies share one compiled peer clause: decide each clause once.
        memo: dict[int, bool] = {}

        def holds(clause: Clause | None) -> bool:
            if clause is None:
                return True
            got = memo.get(id(clause))
            if got is None:
                got = memo[id(clause)] = _peer_holds(clause, ctx, labels)
            return got

        denies = tuple(e for e in view.denies if holds(e.peer))
        allows: tuple[_Entry, ...] = ()
        if not view.requires or all(sel.matches(*labels) for sel in view.requires):
            allows = tuple(e for e in view.allows if holds(e.peer))
        localhost = ingress and "host" in peer.entities and _same_node(ctx.src, ctx.dst)
        match = _PeerMatch(allows, denies, localhost)
        if len(self._peers) >= _CACHE_LIMIT:
            self._peers.clear()
        self._peers[key] = match
        return match

    def _decide(self, ctx: FlowContext, direction: Direction, view: _View, peer: _PeerMatch) -> _Outcome:
        for entry in peer.denies:
            if entry.ports_match(ctx):
                return _Outcome(
                    Decision.deny(
                        f"denied by {entry.ref} {entry.label}",
                        api=Api.CILIUM,
                        policy=entry.ref,
                        rule=entry.rule.index,
                        drop_reason=DropReason.POLICY_DENY,
                    )
                )
        if peer.localhost:
            return _Outcome(
                Decision.allow(
                    "ingress from the local host is always allowed (Cilium --allow-localhost)",
                    api=Api.CILIUM,
                    policy=view.refs[0],
                )
            )
        matching = [e for e in peer.allows if e.ports_match(ctx)]
        if matching:
            notes = tuple(
                f"{e.ref} {e.label}: authentication.mode {e.auth} (Cilium mutual auth; nodemesh does not "
                "model the handshake)"
                for e in matching
                if e.auth in ("required", "test-always-fail")
            )
            plain = next((e for e in matching if e.http is None), None)
            if plain is not None:
                extra = (DNS_NOTE,) if plain.dns else ()
                return _Outcome(
                    Decision.allow(
                        f"allowed by {plain.ref} {plain.label}",
                        api=Api.CILIUM,
                        policy=plain.ref,
                        rule=plain.rule.index,
                        notes=notes + extra,
                    )
                )
            first = matching[0]
            return _Outcome(
                Decision.allow(
                    f"allowed at L4 by {first.ref} {first.label}; its http rules apply "
                    "(redirected to the L7 proxy)",
                    api=Api.CILIUM,
                    policy=first.ref,
                    rule=first.rule.index,
                    redirect=True,
                    notes=notes,
                ),
                tuple(matching),
            )
        where = "from" if direction is Direction.INGRESS else "to"
        peer_ep = ctx.src if direction is Direction.INGRESS else ctx.dst
        subject = ctx.dst if direction is Direction.INGRESS else ctx.src
        what = f"{ctx.protocol.value}/{ctx.port}" if ctx.protocol is not Protocol.ICMP else "ICMP"
        if view.default_deny is not None:
            names = ", ".join(str(r) for r in view.refs[:3])
            if len(view.refs) > 3:
                names += f" and {len(view.refs) - 3} more"
            return _Outcome(
                Decision.deny(
                    f"no {direction.value} rule of {names} allows {what} {where} {peer_ep} "
                    f"(default deny of {subject} set by {view.default_deny})",
                    api=Api.CILIUM,
                    policy=view.default_deny,
                    drop_reason=DropReason.POLICY_DENIED,
                )
            )
        return _Outcome(
            Decision.allow(
                f"no rule matches and every policy selecting {subject} sets "
                f"enableDefaultDeny.{direction.value}: false (synthesized allow-all)",
                api=Api.CILIUM,
                policy=view.refs[0],
            )
        )

    # ---- analysis ------------------------------------------------------------------------
    def analyze(self) -> list[Finding]:
        """Policies that cannot work as written (NM3xx):

        - NM301 (Warning) an endpointSelector that selects no workload;
        - NM302 (Warning) http rules made ineffective by an L4-only allow of the same peers and
          port ("the layer 7 portions of the latter rule will have no effect", language.rst);
        - NM303 (Info) a CIDR peer inside the pod CIDR: CIDR rules never match pods;
        - NM304 (Warning) a CNP endpointSelector naming another namespace (Cilium overrides it);
        - NM305 (Info) a peer nodemesh cannot resolve (toFQDNs, toServices, groups, CIDR groups);
        - NM306 (Info) fromRequires/toRequires, deprecated (MaxItems=0 in Cilium 1.20);
        - NM307 (Warning) http rules with enableDefaultDeny false: unmatched requests still get
          403 ("EnableDefaultDeny does not apply to layer-7 policy", intro.rst).
        """
        out: list[Finding] = []
        endpoints = [self.world.endpoint(w) for w in self.world.workloads]
        pod_cidr = _network(self.world.settings.pod_cidr)
        for c in self._compiled:
            out.extend(_rule_findings(c, endpoints, pod_cidr))
        seen: set[tuple[int, int]] = set()
        for ep in endpoints:
            for direction in Direction:
                view = self._build_view(ep, direction)
                if view is None:
                    continue
                for shadowed, by in _ineffective_l7(view.allows):
                    if (id(shadowed.rule), id(by.rule)) in seen:
                        continue
                    seen.add((id(shadowed.rule), id(by.rule)))
                    out.append(
                        _finding(
                            "NM302",
                            Severity.WARNING,
                            shadowed,
                            f"the http rules of {shadowed.label} have no effect for {ep}: "
                            f"{by.ref} {by.label} "
                            'allows the same peers on the same port at L4 (Cilium: "the layer 7 portions of '
                            'the latter rule will have no effect")',
                        )
                    )
        return out


def _finding(code: str, severity: Severity, entry: _Entry, message: str) -> Finding:
    return Finding(
        code, severity, str(entry.ref), message, entry.policy.file, entry.line or entry.policy.line
    )


def _ineffective_l7(allows: Sequence[_Entry]) -> list[tuple[_Entry, _Entry]]:
    out: list[tuple[_Entry, _Entry]] = []
    for l7 in allows:
        if l7.http is None:
            continue
        for plain in allows:
            if plain.http is not None or plain.dns:
                continue
            same_peers = plain.peer is None or plain.peer == l7.peer
            same_port = plain.ports is None or (
                l7.ports is not None and not set(plain.ports.matches).isdisjoint(l7.ports.matches)
            )
            void = plain.peer is not None and any(m.void for m in plain.peer.matches)
            if same_peers and same_port and not void:
                out.append((l7, plain))
                break
    return out


def _rule_findings(c: _Compiled, endpoints: Sequence[Endpoint], pod_cidr: Network) -> list[Finding]:
    out: list[Finding] = []
    resource = str(c.ref)
    file = c.doc.location.file
    where = "" if c.at == ("spec",) else f"{format_path(c.at)}: "
    if not c.subject.node and not any(c.subject.selects(ep) for ep in endpoints):
        line = c.doc.location.line_of((*c.at, "endpointSelector"))
        out.append(
            Finding(
                "NM301",
                Severity.WARNING,
                resource,
                f"{where}{c.subject.describe()} selects no workload",
                file,
                line,
            )
        )
    sel = c.rule.endpoint_selector
    if c.namespace and sel is not None:
        named = sel.match_labels.get(f"k8s:{NS_KEY}") or sel.match_labels.get(NS_KEY)
        if named is not None and named != c.namespace:
            line = c.doc.location.line_of((*c.at, "endpointSelector"))
            out.append(
                Finding(
                    "NM304",
                    Severity.WARNING,
                    resource,
                    f"{where}endpointSelector names namespace {named!r}, but a CiliumNetworkPolicy always "
                    f'applies in its own namespace {c.namespace!r} ("EndpointSelector always applies in '
                    'namespace of the policy resource")',
                    file,
                    line,
                )
            )
    for d in (c.ingress, c.egress):
        if d is None:
            continue
        entries = (*d.allows, *d.denies)
        for entry in entries:
            for cond in _conditions(entry.peer):
                if isinstance(cond, CidrCondition) and all(
                    n.version == pod_cidr.version and n.subnet_of(pod_cidr)  # type: ignore[arg-type]
                    for n in cond.networks
                ):
                    out.append(
                        _finding(
                            "NM303",
                            Severity.INFO,
                            entry,
                            f"{entry.label}: {cond.describe()} lies inside the pod CIDR {pod_cidr}; "
                            'CIDR rules never match pods ("CIDR rules do not apply to traffic where both '
                            'sides of the connection are ... managed by Cilium"); use '
                            "fromEndpoints/toEndpoints",
                        )
                    )
                elif isinstance(cond, UnresolvedPeer):
                    out.append(_finding("NM305", Severity.INFO, entry, f"{entry.label}: {cond.describe()}"))
        if d.requires:
            first = (d.allows or d.denies)[0]
            out.append(
                _finding(
                    "NM306",
                    Severity.INFO,
                    first,
                    "fromRequires/toRequires is deprecated (MaxItems=0 in Cilium 1.20); nodemesh applies it "
                    "as an extra requirement on every allowed peer",
                )
            )
        if not d.default_deny:
            for entry in d.allows:
                if entry.http is not None:
                    out.append(
                        _finding(
                            "NM307",
                            Severity.WARNING,
                            entry,
                            f"{entry.label} has http rules although enableDefaultDeny is false: requests "
                            'matching none of them are still denied with 403 ("EnableDefaultDeny does not '
                            'apply to layer-7 policy")',
                        )
                    )
    return out


def _conditions(clause: Clause | None) -> list[object]:
    if clause is None:
        return []
    return [c for m in clause.matches for c in m.conditions]


def _peer_holds(clause: Clause, ctx: FlowContext, labels: tuple[Labels, Labels]) -> bool:
    """`clause.holds(ctx)`, with the peer's label view computed once for identity selectors."""
    for match in clause.matches:
        if match.void:
            continue
        for cond in match.conditions:
            if isinstance(cond, IdentityCondition) and not cond.node:
                ok = cond.selector.matches(*labels)
            else:
                ok = cond.matches(ctx)
            if not ok:
                break
        else:
            return True
    return False


def _same_node(a: Endpoint, b: Endpoint) -> bool:
    return a.node is None or b.node is None or a.node == b.node


def _ir_policies(compiled: Sequence[_Compiled]) -> list[Policy]:
    out: list[Policy] = []
    seen: set[int] = set()
    for c in compiled:
        for d in (c.ingress, c.egress):
            if d is None:
                continue
            for entries in (d.allows, d.denies):
                for e in entries:
                    if id(e.policy) not in seen:
                        seen.add(id(e.policy))
                        out.append(e.policy)
    return out
