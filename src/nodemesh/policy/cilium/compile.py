"""Compile CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2) into the IR.

Upstream semantics (docs.cilium.io "Policy Language", "Deny Policies";
`pkg/k8s/apis/cilium.io/utils/utils.go`, `pkg/policy/{repository,rule,l4}.go`; summarised in
/work/shared/reference/cilium.md section 1):

- Subject. `endpointSelector` is matched against the endpoint's identity labels. A
  CiliumNetworkPolicy always adds `k8s:io.kubernetes.pod.namespace=<its namespace>` (overriding a
  user match on that exact key); a clusterwide policy adds nothing. `nodeSelector` (host
  policies) selects only host endpoints.
- Peers (`getEndpointSelector`): a from/toEndpoints selector with a `reserved:` key is used as
  written; otherwise, without a namespace key, a CNP adds its own namespace (unless a
  `io.cilium.k8s.namespace.labels.*` key is used) and a CCNP adds `namespace Exists`; a selector
  without a cluster key gets the local cluster (`policy-default-local-cluster`, default since
  1.19). A peer field that is absent is an L3 wildcard when ports are given; present but empty it
  selects nothing (`mergeEndpointSelectors`). A rule with neither peers nor ports allows nothing.
  CIDR peers never match in-cluster pods. `fromRequires`/`toRequires` (deprecated) are kept per
  direction, to narrow every allowed peer of every rule selecting the endpoint (language.rst).
- Ports (`rule.go mergeIngress`): no `toPorts` and no `icmps` = every port and protocol (ICMP
  included); a PortRule with no ports contributes nothing; protocol ANY/empty = TCP+UDP+SCTP;
  port 0 = every port; named ports resolve against the destination pod.
- L7: a PortRule with `rules.http` becomes its own IR rule with an `http` clause (one Match per
  http rule; `http: [{}]` = any request); `rules.dns` allows its port and is noted (nodemesh does
  not filter DNS queries); `authentication.mode` is carried to the decision's notes.

Each ingress / egress (deny) item becomes one IR rule per port group, as an `Entry` that keeps
the pieces the hot path needs (peer clause, ports clause, http clause).

Invariants: compiling is pure and done once per world. Compiled pieces are immutable, so the
compiler builds identical ones (the same subject selector in the same namespace, the same peer
list, the same port list) once and shares them: thousands of policies written from a few
templates compile in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
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
from nodemesh.policy.cilium.conditions import (
    EntityCondition,
    HttpAnyRequest,
    HttpHeaderCondition,
    HttpRegexCondition,
    IcmpCondition,
    IdentityCondition,
    UnresolvedPeer,
)
from nodemesh.policy.cilium.selectors import (
    CLUSTER_KEY,
    NS_KEY,
    NS_LABELS_PREFIX,
    CiliumSelector,
    CiliumSubject,
    LabelRequirement,
)
from nodemesh.policy.conditions import CidrCondition, PortCondition, Side, parse_network
from nodemesh.policy.flow import FlowContext, Protocol
from nodemesh.policy.ir import Action, Api, Clause, Direction, Match, Policy, PolicyRef, Rule
from nodemesh.policy.selector import Operator

__all__ = ["ANY_L4", "DNS_NOTE", "Compiled", "Compiler", "Entry", "PeerRule"]

ANY_L4: Final = frozenset({Protocol.TCP, Protocol.UDP, Protocol.SCTP})
_PROTOCOLS: Final = {
    "TCP": frozenset({Protocol.TCP}),
    "UDP": frozenset({Protocol.UDP}),
    "SCTP": frozenset({Protocol.SCTP}),
}
DNS_NOTE: Final = "rules.dns: enforced by Cilium's DNS proxy (nodemesh does not filter DNS queries)"
PeerRule = IngressRule | IngressDenyRule | EgressRule | EgressDenyRule
# An `Entry` before its policy exists: rule, label, path, peer, ports, http, dns, auth.
_Proto = tuple[Rule, str, FieldPath, "Clause | None", "Clause | None", "Clause | None", bool, "str | None"]


@dataclass(frozen=True, slots=True)
class Entry:
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

    allows: tuple[Entry, ...]
    denies: tuple[Entry, ...]
    default_deny: bool
    requires: tuple[CiliumSelector, ...]
    ref: PolicyRef


@dataclass(frozen=True, slots=True)
class Compiled:
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


class Compiler:
    """Turns one policy document into `Compiled` rules (and their IR `Policy` objects).

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
    ) -> list[Compiled]:
        ns = doc.namespace
        ref = PolicyRef(Api.CILIUM, doc.kind, ns, doc.name)
        location = doc.location
        out: list[Compiled] = []
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
                built: dict[Action, tuple[Entry, ...]] = {}
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
                    built[action] = tuple(Entry(policy, *p, line=location.line_of(p[2])) for p in protos)
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
                Compiled(ref, ns, subject, at, rule, doc, directions[0], directions[1], seq + len(out))
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
            return CidrCondition((parse_network(value),), (), side, cluster_matches=False, label=kind)
        if kind in ("fromCIDRSet", "toCIDRSet") and isinstance(value, CIDRRule):
            if value.cidr is None:
                return UnresolvedPeer(f"{kind} cidrGroupRef {value.cidr_group_ref or '<selector>'}")
            excepts = tuple(parse_network(e) for e in value.except_)
            return CidrCondition(
                (parse_network(value.cidr),), excepts, side, cluster_matches=False, label=kind
            )
        return UnresolvedPeer(f"{kind} {_describe_model(value)}")

    def _entries(
        self, item: PeerRule, *, index: int, at: FieldPath, ns: str, side: Side, init: bool
    ) -> list[_Proto]:
        """The IR rules of one ingress/egress item, with what the hot path needs (`Entry`
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
