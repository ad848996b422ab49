"""Kubernetes NetworkPolicy (networking.k8s.io/v1): compile to the IR, evaluate, analyze.

Semantics (kubernetes.io/docs/concepts/services-networking/network-policies/ and the API reference,
k8s.io/api `networking/v1/types.go`):

- `spec.podSelector` selects pods of the policy's own namespace; the empty selector selects them all.
- A pod is isolated for a direction once any policy that selects it has that direction in its
  (defaulted) `policyTypes`. An isolated pod accepts, in that direction, only what at least one
  rule of at least one selecting policy allows: "Network policies do not conflict; they are
  additive ... order of evaluation does not affect the policy result." A pod no policy isolates
  is not restricted: `evaluate` returns None (no say).
- A rule allows traffic "which matches both the `from` and `ports` sections"; an absent or empty
  `from`/`to`/`ports` matches everything. Peers of one list are ORed; inside one peer a
  `namespaceSelector` and a `podSelector` are ANDed; a lone `podSelector` means pods of the
  policy's namespace; a lone `namespaceSelector` means every pod of the matching namespaces;
  `ipBlock` matches the peer's IP (cidr minus except), pods included.
- A port entry matches its protocol (default TCP) and its port: a number, a `port..endPort` range,
  a name (resolved against the DESTINATION pod's container ports, by the shared PortCondition),
  or every port of that protocol when `port` is absent.
- Exceptions the page states: "a pod cannot block access to itself" and "traffic to and from
  the node where a Pod is running is always allowed". hostNetwork pods are handled as the page
  calls "the most common implementation": podSelector and namespaceSelector ignore them (they are
  never selected nor matched as peers); their traffic is the node's, matched only by ipBlock.
  Endpoints without a namespace (addresses outside the cluster) match only ipBlock.

IR shape: one `Policy` per manifest and direction in its policyTypes; a rule is
[Clause("from"|"to", one Match per peer), Clause("ports", one Match per port)], each Match holding
exactly one condition.

Speed (target: 250k L4 decisions/s and a 2 s compile at 10,000 policies). Compiling interns
equal selectors and conditions and pauses the cyclic GC; allow `Decision`s are built when a policy
is first used. Policies are indexed by (namespace, direction) and, inside, by one `key=value`
their podSelector requires. The policies selecting an endpoint (a "selection") are computed once
per (direction, namespace, pod) and reused while the endpoint's labels and ports are the same
objects (else compared, then adopted). A selection holds its policies' rules flattened in name
order, the rules admitting each (protocol, port) (numbers and ranges decided once; named ports
resolved once for ingress, per flow for egress), and a bounded memo of verdicts per (port, peer
namespace, peer pod) that is used only while the peer's labels, namespace labels, IP, ports and
hostNetwork flag are the same objects. So `evaluate` for a known flow is two dictionary look-ups
and a few identity checks, and does no selector work. The caches are exact: a test checks every
verdict against the IR evaluated directly (`Rule.matches`).

Module size: compilation and evaluation (first half) and `analyze` (second half) share the
private structures above, so they stay in one module.
"""

from __future__ import annotations

import gc
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from nodemesh.model.schema.base import LabelSelectorModel
from nodemesh.model.schema.networking import (
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    parse_cidr,
)
from nodemesh.model.world import Workload, World
from nodemesh.policy.conditions import CidrCondition, PortCondition, Side
from nodemesh.policy.decision import Decision, DropReason, Verdict
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, NamedPort, Protocol
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
)
from nodemesh.policy.selector import LabelSelector, Operator, Requirement

__all__ = [
    "HBONE_PORT",
    "FastSelector",
    "Interner",
    "KubernetesEngine",
    "PodPeerCondition",
    "PodSelectorSubject",
    "compile_network_policy",
]

HBONE_PORT = 15008
KIND = "NetworkPolicy"
_HOST = "host"
_DIRECTION_FIELD = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}
_PEER_FIELD = {Direction.INGRESS: "from", Direction.EGRESS: "to"}
_POLICY_TYPE = {Direction.INGRESS: "Ingress", Direction.EGRESS: "Egress"}
_MAX_NAMED = 5  # policies named in a deny reason before "and N more"


# ---- conditions and subject ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FastSelector:
    """A compiled `LabelSelector`, split for speed: single-value `In` (matchLabels) tests first.

    Same verdicts as `LabelSelector.matches`: `labels.get(k) != v` is exactly "not In {v}".
    """

    selector: LabelSelector
    equal: tuple[tuple[str, str], ...]
    other: tuple[Requirement, ...]

    @classmethod
    def of(cls, selector: LabelSelector) -> FastSelector:
        equal: list[tuple[str, str]] = []
        other: list[Requirement] = []
        for req in selector.requirements:
            if req.operator is Operator.IN and len(req.values) == 1:
                equal.append((req.key, next(iter(req.values))))
            else:
                other.append(req)
        return cls(selector, tuple(equal), tuple(other))

    @property
    def is_empty(self) -> bool:
        return self.selector.is_empty

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.equal:
            if labels.get(key) != value:
                return False
        return not self.other or all(req.matches(labels) for req in self.other)

    def __str__(self) -> str:
        return str(self.selector)


@dataclass(frozen=True, slots=True)
class PodSelectorSubject:
    """`spec.podSelector`: pods of `namespace` whose labels match (hostNetwork pods never)."""

    namespace: str
    selector: FastSelector

    def selects(self, endpoint: object) -> bool:
        if not isinstance(endpoint, Endpoint) or endpoint.namespace != self.namespace:
            return False
        return _HOST not in endpoint.entities and self.selector.matches(endpoint.labels)

    def describe(self) -> str:
        what = "every pod" if self.selector.is_empty else f"pods {self.selector}"
        return f"{what} in namespace {self.namespace}"


@dataclass(frozen=True, slots=True)
class PodPeerCondition:
    """A `podSelector` / `namespaceSelector` peer, tested on the endpoint at `side`.

    `namespaces` None: only the policy's own namespace (`policy_namespace`); `pods` None: every
    pod of the selected namespaces. Endpoints outside the cluster (no namespace) and hostNetwork
    pods never match.
    """

    side: Side
    policy_namespace: str
    pods: FastSelector | None
    namespaces: FastSelector | None

    @property
    def layer(self) -> Layer:
        return Layer.L4

    def matches(self, ctx: FlowContext) -> bool:
        ep = ctx.src if self.side is Side.SOURCE else ctx.dst
        ns = ep.namespace
        if ns is None or _HOST in ep.entities:
            return False
        if self.namespaces is None:
            if ns != self.policy_namespace:
                return False
        elif not self.namespaces.matches(ep.namespace_labels):
            return False
        return self.pods is None or self.pods.matches(ep.labels)

    def describe(self) -> str:
        pods = "every pod" if self.pods is None or self.pods.is_empty else f"pods {self.pods}"
        if self.namespaces is None:
            where = f"namespace {self.policy_namespace}"
        elif self.namespaces.is_empty:
            where = "every namespace"
        else:
            where = f"namespaces {self.namespaces}"
        return f"{pods} in {where}"


# ---- compilation ---------------------------------------------------------------------------
@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while compiling, then restore its state.

    Compiling creates many small objects that all survive; each allocation burst makes the
    collector rescan every live object of the process (the world's documents included), which
    made compiling 10,000 policies 3x slower. The objects made here hold no reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


SelectorKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str, tuple[str, ...]], ...]]


class Interner:
    """Shares equal selectors and conditions between the policies of one compilation.

    Most of the cost of compiling thousands of policies is creating objects; real policy sets
    repeat the same selectors and ports, so sharing them makes compilation several times faster.
    Interned objects are immutable, so sharing cannot change a verdict.
    """

    def __init__(self) -> None:
        self._selectors: dict[SelectorKey, FastSelector] = {}
        self._peers: dict[tuple[object, ...], Condition] = {}
        self._ports: dict[tuple[str, int | str | None, int | None], PortCondition] = {}

    def selector(self, model: LabelSelectorModel) -> FastSelector:
        key = (
            tuple(sorted(model.match_labels.items())),
            tuple((e.key, e.operator, tuple(e.values)) for e in model.match_expressions),
        )
        found = self._selectors.get(key)
        if found is None:
            found = self._selectors[key] = FastSelector.of(LabelSelector.from_model(model))
        return found

    def peer(self, peer: NetworkPolicyPeer, namespace: str, side: Side) -> Condition:
        block = peer.ip_block
        if block is not None:
            key: tuple[object, ...] = (side, block.cidr, *block.except_)
            found = self._peers.get(key)
            if found is None:
                found = self._peers[key] = CidrCondition(
                    networks=(parse_cidr(block.cidr),),
                    excepts=tuple(parse_cidr(e) for e in block.except_),
                    side=side,
                    cluster_matches=True,
                    label="ipBlock",
                )
            return found
        pods = self.selector(peer.pod_selector) if peer.pod_selector is not None else None
        namespaces = self.selector(peer.namespace_selector) if peer.namespace_selector is not None else None
        key = (side, namespace, id(pods), id(namespaces))  # interned selectors: identity is equality
        found = self._peers.get(key)
        if found is None:
            found = self._peers[key] = PodPeerCondition(side, namespace, pods, namespaces)
        return found

    def port(self, port: NetworkPolicyPort) -> PortCondition:
        key = (port.effective_protocol, port.port, port.end_port)
        found = self._ports.get(key)
        if found is None:
            protocols = frozenset({Protocol(port.effective_protocol)})
            if isinstance(port.port, str):
                found = PortCondition(name=port.port, protocols=protocols)
            else:
                found = PortCondition(port=port.port, end_port=port.end_port, protocols=protocols)
            self._ports[key] = found
        return found


def _rules(doc: NetworkPolicy, direction: Direction, interner: Interner) -> tuple[Rule, ...]:
    side = Side.SOURCE if direction is Direction.INGRESS else Side.DESTINATION
    field = _DIRECTION_FIELD[direction]
    peer_field = _PEER_FIELD[direction]
    namespace = doc.namespace
    specs: Sequence[tuple[list[NetworkPolicyPeer], list[NetworkPolicyPort]]]
    if direction is Direction.INGRESS:
        specs = [(r.from_, r.ports) for r in doc.spec.ingress or ()]
    else:
        specs = [(r.to, r.ports) for r in doc.spec.egress or ()]
    out: list[Rule] = []
    for i, (peers, ports) in enumerate(specs):
        peer_clause = Clause(peer_field, tuple(Match((interner.peer(p, namespace, side),)) for p in peers))
        port_clause = Clause("ports", tuple(Match((interner.port(p),)) for p in ports))
        out.append(Rule(index=i, path=f"spec.{field}[{i}]", clauses=(peer_clause, port_clause)))
    return tuple(out)


def compile_network_policy(doc: NetworkPolicy, interner: Interner | None = None) -> tuple[Policy, ...]:
    """One IR `Policy` per direction in the manifest's (defaulted) policyTypes, ingress first."""
    interner = interner if interner is not None else Interner()
    ref = PolicyRef(Api.KUBERNETES, KIND, doc.namespace, doc.name)
    subject = PodSelectorSubject(doc.namespace, interner.selector(doc.spec.pod_selector))
    types = doc.spec.effective_policy_types
    location = doc.location
    out: list[Policy] = []
    for direction in (Direction.INGRESS, Direction.EGRESS):
        if _POLICY_TYPE[direction] not in types:
            continue
        out.append(
            Policy(
                ref=ref,
                direction=direction,
                action=Action.ALLOW,
                rules=_rules(doc, direction, interner),
                subject=subject,
                default_deny=True,
                file=location.file,
                line=location.line,
            )
        )
    return tuple(out)


# ---- evaluation ------------------------------------------------------------------------------
# A rule, flattened: its port conditions (empty = any port), its peer conditions (empty = any
# peer), and the allow decision it returns.
FastRule = tuple[tuple["PortTest", ...], tuple[Condition, ...], Decision]
# A PortCondition's fields as a plain tuple (protocols, name, port, end_port): a tuple membership
# test finds an enum member by identity, where a frozenset would call Enum.__hash__.
PortTest = tuple[tuple[Protocol, ...] | None, str | None, int | None, int | None]
# A rule that may admit one (protocol, port): its peers, its decision, and the port names that
# must still resolve to that port on the destination peer (egress only; None = already admitted).
Candidate = tuple[tuple[Condition, ...], Decision, tuple[str, ...] | None]

_PORT_CACHE_LIMIT = 4096  # distinct (protocol, port) keys remembered per selection


@dataclass(slots=True)
class _Compiled:
    policy: Policy
    subject: PodSelectorSubject
    fast: tuple[FastRule, ...] | None = None  # built on first use: most allow decisions are never needed


@dataclass(slots=True)
class _Selection:
    """The policies isolating one endpoint in one direction, their rules flattened in policy
    order, and per destination port the rules that admit it.

    `ports` are the selected endpoint's container ports when it is the flow's destination
    (ingress): named ports then resolve here, once per port. For egress the destination is the
    peer, so names are kept and resolved per flow.
    """

    ports: tuple[NamedPort, ...] | None
    policies: tuple[Policy, ...]
    rules: tuple[FastRule, ...]
    deny: Decision
    self_allow: Decision
    node_allow: Decision
    by_port: dict[object, tuple[Candidate, ...]] = field(default_factory=dict)
    memo: dict[tuple[object, ...], MemoEntry] = field(default_factory=dict)

    def decide(self, ctx: FlowContext, protocol: Protocol, port: int) -> Decision:
        """The first rule (in policy order) that admits the port and the peer, else deny."""
        candidates = self.by_port.get(port if protocol is Protocol.TCP else (protocol, port))
        if candidates is None:
            candidates = self.candidates(protocol, port)
        for peers, decision, names in candidates:
            if names is not None:
                for name in names:
                    if ctx.dst.named_port(name, protocol) == port:
                        break
                else:
                    continue
            if not peers:
                return decision
            for condition in peers:
                if condition.matches(ctx):
                    return decision
        return self.deny

    def candidates(self, protocol: Protocol, port: int) -> tuple[Candidate, ...]:
        """The rules whose `ports` admit `port/protocol`: the tests of `PortCondition._positive`
        (never negated here), with a named port resolved on the destination."""
        out: list[Candidate] = []
        for ports, peers, decision in self.rules:
            if not ports:
                out.append((peers, decision, None))
                continue
            names: list[str] = []
            admitted = False
            for protocols, name, first, last in ports:
                if protocols is not None and protocol not in protocols:
                    continue
                if name is not None:
                    if self.ports is None:
                        names.append(name)
                        continue
                    admitted = any(
                        p.name == name and p.protocol is protocol and p.port == port for p in self.ports
                    )
                elif first is None:
                    admitted = True
                elif last is not None:
                    admitted = first <= port <= last
                else:
                    admitted = first == port
                if admitted:
                    break
            if admitted:
                out.append((peers, decision, None))
            elif names:
                out.append((peers, decision, tuple(names)))
        result = tuple(out)
        if len(self.by_port) < _PORT_CACHE_LIMIT:
            self.by_port[port if protocol is Protocol.TCP else (protocol, port)] = result
        return result


@dataclass(slots=True)
class _NamespaceIndex:
    """The policies of one namespace and direction, in name order, indexed by one `key=value`
    their podSelector requires (policies whose podSelector requires no single value are
    scanned): finding the policies that select a pod tests only those that could."""

    compiled: list[_Compiled] = field(default_factory=list)
    by_label: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    scanned: list[int] = field(default_factory=list)

    def add(self, compiled: _Compiled) -> None:
        position = len(self.compiled)
        self.compiled.append(compiled)
        equal = compiled.subject.selector.equal
        if equal:
            self.by_label.setdefault(equal[0], []).append(position)
        else:
            self.scanned.append(position)

    def selecting(self, endpoint: Endpoint) -> list[_Compiled]:
        positions = set(self.scanned)
        for item in endpoint.labels.items():
            found = self.by_label.get(item)
            if found:
                positions.update(found)
        return [self.compiled[i] for i in sorted(positions) if self.compiled[i].subject.selects(endpoint)]


def _fast_rules(policy: Policy) -> tuple[FastRule, ...]:
    field = _DIRECTION_FIELD[policy.direction]
    out: list[FastRule] = []
    for rule in policy.rules:
        peers, ports = rule.clauses
        decision = Decision(
            Verdict.ALLOW,
            f"allowed by {policy.ref} {field}[{rule.index}]",
            Api.KUBERNETES,
            policy.ref,
            rule.index,
        )
        tests: list[PortTest] = []
        for match in ports.matches:
            c = match.conditions[0]
            assert isinstance(c, PortCondition) and not c.negated
            protocols = tuple(c.protocols) if c.protocols is not None else None
            tests.append((protocols, c.name, c.port, c.end_port))
        out.append((tuple(tests), tuple(m.conditions[0] for m in peers.matches), decision))
    return tuple(out)


def _names(refs: Sequence[PolicyRef]) -> str:
    shown = ", ".join(f"{r.namespace}/{r.name}" for r in refs[:_MAX_NAMED])
    more = f" and {len(refs) - _MAX_NAMED} more" if len(refs) > _MAX_NAMED else ""
    return f"{KIND} {shown}{more}"


# Cached per (namespace, pod): the labels and ports it was computed for, and the selection.
SelectionEntry = tuple[Mapping[str, str], tuple[NamedPort, ...], "_Selection | None"]
# Remembered per (port[, protocol], peer namespace, peer pod): what the verdict depended on
# (peer labels, namespace labels, IP, ports, hostNetwork) and the verdict.
MemoEntry = tuple[Mapping[str, str], Mapping[str, str], object, tuple[NamedPort, ...], bool, Decision]

_MEMO_LIMIT = 8192  # verdicts remembered per selection


class KubernetesEngine:
    """All NetworkPolicies of a world, compiled; evaluates one direction at one endpoint."""

    def __init__(self, world: World) -> None:
        self.world = world
        docs = sorted(
            (d for d in world.policies if isinstance(d, NetworkPolicy)), key=lambda d: (d.namespace, d.name)
        )
        self.documents: list[NetworkPolicy] = docs
        self.policies: list[Policy] = []
        self._index: dict[tuple[str, Direction], _NamespaceIndex] = defaultdict(_NamespaceIndex)
        interner = Interner()
        with _collector_paused():
            for doc in docs:
                for policy in compile_network_policy(doc, interner):
                    self.policies.append(policy)
                    subject = policy.subject
                    assert isinstance(subject, PodSelectorSubject)
                    self._index[(doc.namespace, policy.direction)].add(_Compiled(policy, subject))
        # One cache per direction, keyed by (namespace, pod): no enum hashing on the hot path.
        self._ingress: dict[tuple[str, str | None], SelectionEntry] = {}
        self._egress: dict[tuple[str, str | None], SelectionEntry] = {}

    # ---- selection ---------------------------------------------------------------------------
    def _selection(self, endpoint: Endpoint, direction: Direction) -> _Selection | None:
        """The policies isolating `endpoint` for `direction`, from the cache when the endpoint's
        labels and ports equal the cached ones (the cache then adopts these mapping objects, so
        the next lookup is an identity check), else computed and cached."""
        ns = endpoint.namespace
        if ns is None or _HOST in endpoint.entities:
            return None
        cache = self._ingress if direction is Direction.INGRESS else self._egress
        key = (ns, endpoint.pod or endpoint.workload)
        entry = cache.get(key)
        if entry is not None and entry[0] == endpoint.labels and entry[1] == endpoint.ports:
            selection = entry[2]
        else:
            selection = self._select(endpoint, direction)
        cache[key] = (endpoint.labels, endpoint.ports, selection)
        return selection

    def _select(self, endpoint: Endpoint, direction: Direction) -> _Selection | None:
        assert endpoint.namespace is not None
        index = self._index.get((endpoint.namespace, direction))
        chosen = index.selecting(endpoint) if index is not None else []
        if not chosen:
            return None
        rules: list[FastRule] = []
        for c in chosen:
            if c.fast is None:
                c.fast = _fast_rules(c.policy)
            rules += c.fast
        refs = [c.policy.ref for c in chosen]
        word = _DIRECTION_FIELD[direction]
        return _Selection(
            ports=endpoint.ports if direction is Direction.INGRESS else None,
            policies=tuple(c.policy for c in chosen),
            rules=tuple(rules),
            deny=Decision.deny(
                f"{endpoint} is isolated for {word} by {_names(refs)}, and none of "
                f"{'its' if len(refs) == 1 else 'their'} {word} rules allows this peer on this port",
                api=Api.KUBERNETES,
                policy=refs[0],
                rule=None,
                drop_reason=DropReason.POLICY_DENIED,
            ),
            self_allow=Decision.allow(
                f"{endpoint} talks to itself: a pod cannot block access to itself (Kubernetes)",
                api=Api.KUBERNETES,
            ),
            node_allow=Decision.allow(
                f"traffic between {endpoint} and its own node is always allowed (Kubernetes)",
                api=Api.KUBERNETES,
            ),
        )

    def policies_for(self, endpoint: Endpoint, direction: Direction) -> tuple[Policy, ...]:
        """The policies that isolate `endpoint` for `direction` (empty: not isolated)."""
        selection = self._selection(endpoint, direction)
        return selection.policies if selection is not None else ()

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, ctx: FlowContext, direction: Direction) -> Decision | None:
        """INGRESS: policies selecting ctx.dst; EGRESS: policies selecting ctx.src.
        None when no policy selects that endpoint in that direction (no say).

        Hot path: the selection and then the verdict come from identity-checked caches; only
        a miss runs `_selection` / `_Selection.decide`.
        """
        if direction is Direction.INGRESS:
            endpoint, peer, cache = ctx.dst, ctx.src, self._ingress
        else:
            endpoint, peer, cache = ctx.src, ctx.dst, self._egress
        ns = endpoint.namespace
        if ns is None:
            return None
        entry = cache.get((ns, endpoint.pod or endpoint.workload))
        if entry is not None and entry[0] is endpoint.labels and entry[1] is endpoint.ports:
            selection = entry[2] if _HOST not in endpoint.entities else None
        else:
            selection = self._selection(endpoint, direction)
        if selection is None:
            return None
        peer_host = _HOST in peer.entities
        if peer.pod is not None and peer.pod == endpoint.pod and peer.namespace == endpoint.namespace:
            return selection.self_allow
        if peer_host and peer.node is not None and peer.node == endpoint.node:
            return selection.node_allow
        protocol, port = ctx.protocol, ctx.port
        peer_ns = peer.namespace
        if peer_ns is None:
            key: tuple[object, ...] = (port, protocol.value, peer.ip)
        elif protocol is Protocol.TCP:
            key = (port, peer_ns, peer.pod or peer.workload)
        else:
            key = (port, protocol.value, peer_ns, peer.pod or peer.workload)
        memo = selection.memo.get(key)
        if (
            memo is not None
            and memo[0] is peer.labels
            and memo[1] is peer.namespace_labels
            and (memo[2] is peer.ip or memo[2] == peer.ip)
            and memo[3] is peer.ports
            and memo[4] is peer_host
        ):
            return memo[5]
        decision = selection.decide(ctx, protocol, port)
        if len(selection.memo) < _MEMO_LIMIT:
            selection.memo[key] = (
                peer.labels,
                peer.namespace_labels,
                peer.ip,
                peer.ports,
                peer_host,
                decision,
            )
        return decision

    # ---- analysis ------------------------------------------------------------------------------
    def analyze(self) -> list[Finding]:
        """Findings about NetworkPolicies that do not do what they seem to (codes NM4xx).

        NM401 podSelector selects no pod (Warning). NM402 isolates ambient-mesh pods and blocks
        HBONE (TCP 15008) for peers it allows on application ports (Warning). NM403 a rule
        shadowed by an earlier rule of the same policy (Info). NM404 rules ignored because
        policyTypes omits their direction (Warning). NM405 egress isolation that allows some
        egress but no UDP 53, so pods cannot resolve names (Warning). NM406 a peer selector that
        matches no namespace or no pod (Warning). NM407 an ipBlock covering the pod CIDR (Info).
        NM408 podSelector matches hostNetwork pods, which NetworkPolicy does not isolate (Info).
        """
        return _Analysis(self).findings()


class _Analysis:
    """One run of `KubernetesEngine.analyze`. The world's endpoints are indexed by namespace, and
    the pods each (interned, hence shared) peer condition matches are computed once, so the cost
    grows with policies plus pods, not with their product."""

    def __init__(self, engine: KubernetesEngine) -> None:
        self.engine = engine
        self.world = engine.world
        self.endpoints = {w.key: self.world.endpoint(w) for w in self.world.workloads}
        self.by_namespace: dict[str, list[tuple[Workload, Endpoint]]] = defaultdict(list)
        for w in self.world.workloads:
            self.by_namespace[w.namespace].append((w, self.endpoints[w.key]))
        self.docs = {(d.namespace, d.name): d for d in engine.documents}
        self.pod_cidr = _pod_cidr(self.world)
        self._matched: dict[int, list[Endpoint]] = {}
        self._namespaces: dict[int, list[str]] = {}

    def findings(self) -> list[Finding]:
        out: list[Finding] = []
        for doc in self.engine.documents:
            out += self.selection_findings(doc)
            out += _ignored_sections(doc)
        for policy in self.engine.policies:
            doc = self.docs[(policy.ref.namespace, policy.ref.name)]
            out += _shadowed_rules(policy, doc, self.world.namespace_labels(doc.namespace))
            out += self.peer_findings(policy, doc)
        out += self.hbone_findings()
        out += self.dns_findings()
        return out

    # ---- what selectors match ----------------------------------------------------------------
    def namespaces_matching(self, selector: FastSelector) -> list[str]:
        found = self._namespaces.get(id(selector))
        if found is None:
            found = [name for name, labels in self.world.namespaces.items() if selector.matches(labels)]
            self._namespaces[id(selector)] = found
        return found

    def matching(self, condition: Condition) -> list[Endpoint]:
        """The world's pods that `condition` matches as a peer (tested with `matches` itself)."""
        found = self._matched.get(id(condition))
        if found is None:
            if isinstance(condition, PodPeerCondition):
                namespaces = (
                    [condition.policy_namespace]
                    if condition.namespaces is None
                    else self.namespaces_matching(condition.namespaces)
                )
                candidates = [ep for ns in namespaces for _, ep in self.by_namespace.get(ns, ())]
            else:
                candidates = list(self.endpoints.values())
            found = [ep for ep in candidates if condition.matches(FlowContext(ep, ep, 0))]
            self._matched[id(condition)] = found
        return found

    # ---- NM401, NM408 ------------------------------------------------------------------------
    def selection_findings(self, doc: NetworkPolicy) -> list[Finding]:
        selector = FastSelector.of(LabelSelector.from_model(doc.spec.pod_selector))
        subject = PodSelectorSubject(doc.namespace, selector)
        pods = self.by_namespace.get(doc.namespace, [])
        selected = [w for w, ep in pods if subject.selects(ep)]
        host = [w.pod for w, _ in pods if w.host_network and selector.matches(w.labels)]
        line = doc.location.line_of(("spec", "podSelector"))
        ref = f"{KIND} {doc.namespace}/{doc.name}"
        what = "the empty podSelector" if selector.is_empty else f"podSelector {selector}"
        if not selected:
            message = f"{what} selects no pod in namespace {doc.namespace}"
            if host:
                message += (
                    f" (it matches only hostNetwork pods {', '.join(host)}, which NetworkPolicy ignores)"
                )
            message += ": the policy isolates nothing and allows nothing"
            return [Finding("NM401", Severity.WARNING, ref, message, doc.location.file, line)]
        if host:
            message = (
                f"{what} also matches hostNetwork pods {', '.join(host)}: NetworkPolicy does not "
                "isolate them (their traffic is the node's, which podSelector and namespaceSelector ignore)"
            )
            return [Finding("NM408", Severity.INFO, ref, message, doc.location.file, line)]
        return []

    # ---- NM406, NM407 ------------------------------------------------------------------------
    def peer_findings(self, policy: Policy, doc: NetworkPolicy) -> list[Finding]:
        out: list[Finding] = []
        field = _DIRECTION_FIELD[policy.direction]
        peer_field = _PEER_FIELD[policy.direction]
        for rule in policy.rules:
            for j, match in enumerate(rule.clauses[0].matches):
                peer = match.conditions[0]
                where = f"{field}[{rule.index}].{peer_field}[{j}]"
                message = ""
                if isinstance(peer, CidrCondition):
                    net, pods = peer.networks[0], self.pod_cidr
                    if pods is not None and net.version == pods.version and net.overlaps(pods):
                        message = (
                            f"{where}: ipBlock {net} overlaps the pod CIDR {pods}; Kubernetes says ipBlock "
                            'peers "should be cluster-external IPs, since Pod IPs are ephemeral and '
                            'unpredictable" (select pods by label), and Cilium CIDR rules do not match pods'
                        )
                        code, severity = "NM407", Severity.INFO
                elif isinstance(peer, PodPeerCondition):
                    message = self.unmatched_peer(peer)
                    message = f"{where}: {message}" if message else ""
                    code, severity = "NM406", Severity.WARNING
                if message:
                    line = doc.location.line_of(("spec", field, rule.index, peer_field, j))
                    out.append(Finding(code, severity, str(policy.ref), message, doc.location.file, line))
        return out

    def unmatched_peer(self, peer: PodPeerCondition) -> str:
        namespaces = peer.namespaces
        if namespaces is not None and not self.namespaces_matching(namespaces):
            hint = ""
            named = [v for _, v in namespaces.equal if v in self.world.namespaces]
            if named:
                hint = (
                    f"; to select namespace {named[0]} by name use the label Kubernetes sets on every "
                    f"namespace, kubernetes.io/metadata.name: {named[0]}"
                )
            return f"namespaceSelector {namespaces} matches no namespace, so this peer allows nothing{hint}"
        if not self.endpoints or self.matching(peer):
            return ""
        return f"{peer.describe()} matches no pod, so this peer allows nothing"

    # ---- NM402 -------------------------------------------------------------------------------
    def hbone_findings(self) -> list[Finding]:
        """NM402. In ambient mode a connection between mesh pods travels as HBONE to the peer
        pod's TCP 15008 (istio-ambient.md §1.1: "Kubernetes NetworkPolicy must allow TCP 15008 in
        and out of every ambient pod"): a peer a policy allows on an application port but not on
        15008 cannot connect.

        Pods with equal (namespace, labels, IP) stand for each other as peers; each distinct
        selection is examined once; only peers that some TCP-admitting rule could allow are probed.
        """
        engine, world = self.engine, self.world
        if world.mode != "ambient":
            return []
        mesh = [w for w in world.workloads if not w.host_network and world.in_mesh(w)]
        reps: dict[tuple[str, frozenset[tuple[str, str]], object], Endpoint] = {}
        rep_of: dict[int, Endpoint] = {}  # id(endpoint of a mesh pod) -> the pod standing for it
        for w in mesh:
            ep = self.endpoints[w.key]
            rep_of[id(ep)] = reps.setdefault((w.namespace, frozenset(w.labels.items()), w.ip), ep)
        peers = list(reps.values())
        blocked: dict[tuple[PolicyRef, Direction], list[str]] = defaultdict(list)
        seen: set[tuple[int, int]] = set()
        for w in mesh:
            ep = self.endpoints[w.key]
            for direction in (Direction.INGRESS, Direction.EGRESS):
                selection = engine._selection(ep, direction)
                if selection is None:
                    continue
                group = (id(selection), id(ep.ports) if direction is Direction.INGRESS else 0)
                if group in seen:
                    continue
                seen.add(group)
                hbone = selection.candidates(Protocol.TCP, HBONE_PORT)
                if any(not rule_peers and names is None for rule_peers, _, names in hbone):
                    continue  # some rule admits 15008 for every peer
                probed: dict[int, Endpoint] = {}
                for tests, rule_peers, _ in selection.rules:
                    if tests and not any(t[0] is None or Protocol.TCP in t[0] for t in tests):
                        continue  # a rule for UDP/SCTP only
                    for c in rule_peers:
                        for p in self.matching(c):
                            rep = rep_of.get(id(p))
                            if rep is not None:
                                probed[id(rep)] = rep
                    if not rule_peers:
                        probed.update((id(p), p) for p in peers)
                app_ports = _tcp_ports(ep, selection) if direction is Direction.INGRESS else None
                for p in probed.values():
                    if all(len(blocked.get((pol.ref, direction), ())) >= 4 for pol in selection.policies):
                        break  # enough examples for every policy of this selection
                    src, dst = (p, ep) if direction is Direction.INGRESS else (ep, p)
                    if _allowed(engine.evaluate(FlowContext(src, dst, HBONE_PORT), direction)):
                        continue
                    app = next(
                        (
                            port
                            for port in (app_ports if app_ports is not None else _tcp_ports(dst, selection))
                            if _allowed(engine.evaluate(FlowContext(src, dst, port), direction))
                        ),
                        None,
                    )
                    if app is None:
                        continue
                    example = f"{src} -> {dst}:{app}"
                    for policy in selection.policies:
                        examples = blocked[(policy.ref, direction)]
                        if len(examples) < 4 and example not in examples:
                            examples.append(example)
        out: list[Finding] = []
        for (ref, direction), examples in sorted(
            blocked.items(), key=lambda kv: (str(kv[0][0]), kv[0][1].value)
        ):
            doc = self.docs[(ref.namespace, ref.name)]
            word = _DIRECTION_FIELD[direction]
            shown = ", ".join(examples[:3]) + (", ..." if len(examples) > 3 else "")
            message = (
                f"isolates ambient-mesh pods for {word}, and no {word} rule selecting them allows TCP "
                f"{HBONE_PORT} (HBONE) for peers it allows on application ports ({shown}): in ambient mode "
                f"these connections travel over HBONE to port {HBONE_PORT} and time out (ztunnel: "
                f'"maybe a NetworkPolicy is blocking HBONE port {HBONE_PORT}"); allow TCP {HBONE_PORT} '
                f"{'from' if direction is Direction.INGRESS else 'to'} those peers"
            )
            line = doc.location.line_of(("spec", word))
            out.append(Finding("NM402", Severity.WARNING, str(ref), message, doc.location.file, line))
        return out

    # ---- NM405 -------------------------------------------------------------------------------
    def dns_findings(self) -> list[Finding]:
        """Egress isolation that allows something, but no UDP 53 to any destination."""
        groups: dict[tuple[Policy, ...], list[str]] = defaultdict(list)
        for w in self.world.workloads:
            selection = self.engine._selection(self.endpoints[w.key], Direction.EGRESS)
            if selection is None or not selection.rules:
                continue
            if any(names is None for _, _, names in selection.candidates(Protocol.UDP, 53)):
                continue
            groups[selection.policies].append(w.pod)
        out: list[Finding] = []
        for policies, pods in groups.items():
            first = policies[0].ref
            doc = self.docs[(first.namespace, first.name)]
            message = (
                f"pods {', '.join(pods[:5])}{' ...' if len(pods) > 5 else ''} are isolated for egress "
                f"by {_names([p.ref for p in policies])}, which allow some egress but no UDP port 53 to any "
                "destination: these pods cannot resolve DNS names (allow UDP and TCP 53 to kube-dns)"
            )
            line = doc.location.line_of(("spec", "egress"))
            out.append(Finding("NM405", Severity.WARNING, str(first), message, doc.location.file, line))
        return out


def _allowed(decision: Decision | None) -> bool:
    return decision is None or decision.allowed


def _tcp_ports(dst: Endpoint, selection: _Selection) -> list[int]:
    """Application ports worth probing: the destination's TCP container ports and every TCP port
    number the rules name (HBONE itself excluded)."""
    ports = {p.port for p in dst.ports if p.protocol is Protocol.TCP}
    for tests, _, _ in selection.rules:
        for protocols, _, first, _ in tests:
            if first is not None and (protocols is None or Protocol.TCP in protocols):
                ports.add(first)
    ports.discard(HBONE_PORT)
    return sorted(ports)


def _pod_cidr(world: World) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(world.settings.pod_cidr, strict=False)
    except ValueError:
        return None


def _ignored_sections(doc: NetworkPolicy) -> list[Finding]:
    """NM404: rules of a direction that explicit policyTypes leave out have no effect."""
    out: list[Finding] = []
    types = doc.spec.effective_policy_types
    for name, rules in (("Ingress", doc.spec.ingress), ("Egress", doc.spec.egress)):
        if rules and name not in types:
            message = (
                f"spec.{name.lower()} has {len(rules)} rule(s), but policyTypes {sorted(types)} does not "
                f"include {name}: they are ignored and the policy does not isolate pods for {name.lower()}"
            )
            line = doc.location.line_of(("spec", "policyTypes"))
            out.append(
                Finding(
                    "NM404",
                    Severity.WARNING,
                    f"{KIND} {doc.namespace}/{doc.name}",
                    message,
                    doc.location.file,
                    line,
                )
            )
    return out


# ---- shadowed rules (NM403) ------------------------------------------------------------------
def _selector_covers(a: FastSelector | None, b: FastSelector | None) -> bool:
    """Does `a` match every label set `b` matches? (None: matches everything.) Sufficient test:
    a's requirements are a subset of b's."""
    if a is None or a.is_empty:
        return True
    if b is None:
        return False
    return set(a.selector.requirements) <= set(b.selector.requirements)


def _within(inner: object, outer: object) -> bool:
    if not isinstance(inner, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return False
    if not isinstance(outer, ipaddress.IPv4Network | ipaddress.IPv6Network) or inner.version != outer.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]


def _peer_covers(a: Condition, b: Condition, namespace_labels: Mapping[str, str]) -> bool:
    if a == b:
        return True
    if isinstance(a, CidrCondition) and isinstance(b, CidrCondition):
        net = b.networks[0]
        if not _within(net, a.networks[0]):
            return False
        return all(
            e.version != net.version or not e.overlaps(net) or any(_within(e, x) for x in b.excepts)
            for e in a.excepts
        )
    if isinstance(a, PodPeerCondition) and isinstance(b, PodPeerCondition):
        if a.namespaces is None:
            if b.namespaces is not None:
                return False
        elif b.namespaces is None:
            if not a.namespaces.matches(namespace_labels):
                return False
        elif not _selector_covers(a.namespaces, b.namespaces):
            return False
        return _selector_covers(a.pods, b.pods)
    return False


def _port_covers(a: Condition, b: Condition) -> bool:
    if not (isinstance(a, PortCondition) and isinstance(b, PortCondition)):
        return a == b
    if a.protocols is not None and (b.protocols is None or not b.protocols <= a.protocols):
        return False
    if a.name is not None:
        return b.name == a.name
    if a.port is None:
        return True
    if b.name is not None or b.port is None:
        return False
    return a.port <= b.port and (b.end_port or b.port) <= (a.end_port or a.port)


def _clause_covers(a: Clause, b: Clause, covers: Callable[[Condition, Condition], bool]) -> bool:
    if not a.matches:
        return True
    if not b.matches:
        return False
    return all(any(covers(x.conditions[0], y.conditions[0]) for x in a.matches) for y in b.matches)


def _shadowed_rules(policy: Policy, doc: NetworkPolicy, namespace_labels: Mapping[str, str]) -> list[Finding]:
    out: list[Finding] = []
    field = _DIRECTION_FIELD[policy.direction]

    def peer_covers(a: Condition, b: Condition) -> bool:
        return _peer_covers(a, b, namespace_labels)

    for j, later in enumerate(policy.rules):
        for earlier in policy.rules[:j]:
            if _clause_covers(earlier.clauses[0], later.clauses[0], peer_covers) and _clause_covers(
                earlier.clauses[1], later.clauses[1], _port_covers
            ):
                message = (
                    f"{field}[{j}] is shadowed by {field}[{earlier.index}]: every peer and port it allows, "
                    f"{field}[{earlier.index}] already allows (rules are ORed), so it has no effect"
                )
                line = doc.location.line_of(("spec", field, j))
                out.append(Finding("NM403", Severity.INFO, str(policy.ref), message, doc.location.file, line))
                break
    return out
