"""`KubernetesEngine.analyze`: findings about NetworkPolicies that do not do what they seem to.

Codes (each message quotes or paraphrases the upstream rule it rests on):

- NM401 (Warning) podSelector selects no pod: the policy isolates nothing and allows nothing.
- NM402 (Warning) isolates ambient-mesh pods and blocks HBONE: in ambient mode a connection
  between mesh pods travels as HBONE to the peer pod's TCP 15008 (istio-ambient.md §1.1:
  "Kubernetes NetworkPolicy must allow TCP 15008 in and out of every ambient pod").
- NM403 (Info) a rule shadowed by an earlier rule of the same policy (rules are ORed).
- NM404 (Warning) rules ignored because explicit `policyTypes` omits their direction.
- NM405 (Warning) egress isolation that allows some egress but no UDP 53: pods cannot resolve names.
- NM406 (Warning) a peer selector that matches no namespace or no pod.
- NM407 (Info) an ipBlock overlapping the pod CIDR: Kubernetes says ipBlock peers "should be
  cluster-external IPs, since Pod IPs are ephemeral and unpredictable".
- NM408 (Info) podSelector matches hostNetwork pods, which NetworkPolicy does not isolate
  ("the most common implementation", see `conditions.py`).

Invariants: analysis changes no world or policy state (only the engine's caches fill up);
whenever a finding depends on a verdict it asks the engine (`evaluate`, its selections) rather
than re-deriving one, and what a peer condition matches is tested with that condition's own
`matches`. Why: a finding that
disagreed with the verdicts would mislead more than none.

Cost: the world's endpoints are indexed by namespace, and the pods each (interned, hence shared)
peer condition matches are computed once, so the cost grows with policies plus pods, not with
their product. The engine is imported for types only: `engine.py` imports this module.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from nodemesh.model.schema.networking import NetworkPolicy
from nodemesh.model.world import Workload, World
from nodemesh.policy.conditions import CidrCondition, PortCondition
from nodemesh.policy.decision import Decision
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, Protocol
from nodemesh.policy.ir import Clause, Condition, Direction, Policy, PolicyRef
from nodemesh.policy.kubernetes.compile import _DIRECTION_FIELD, _PEER_FIELD, KIND, _names
from nodemesh.policy.kubernetes.conditions import FastSelector, PodPeerCondition, PodSelectorSubject
from nodemesh.policy.selector import LabelSelector

if TYPE_CHECKING:
    from nodemesh.policy.kubernetes.engine import KubernetesEngine, _Selection

__all__ = ["HBONE_PORT"]

HBONE_PORT = 15008


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
