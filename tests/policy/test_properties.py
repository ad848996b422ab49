"""Property tests (Hypothesis) over generated policies: the laws each API's combining algorithm
promises, checked through the whole engine (`PolicyEngine.trace`).

- Istio AuthorizationPolicy: "If there are any DENY policies that match the request, deny the
  request. ... If there are no ALLOW policies for the workload, allow the request. If any of the
  ALLOW policies match the request, allow the request." (istio.io, Authorization Policy
  reference). Hence: adding an ALLOW rule never turns an allowed flow into a denied one when no
  DENY exists (and an ALLOW policy already exists), and a matching DENY always wins.
- Kubernetes NetworkPolicy: "Network policies do not conflict; they are additive." (kubernetes.io,
  Network Policies). Adding a rule never denies a flow that was allowed.
- Cilium: "Deny policies take precedence over allow policies" (docs.cilium.io, Policy Language,
  Deny Policies).
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodemesh.model.loader import RawDocument, SourceLocation
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.policy.decision import Verdict
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import FlowContext

APPS = ("a", "b", "c")
PORTS = (80, 8080, 9090)
Body = dict[str, object]


def _base() -> list[Body]:
    docs: list[Body] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}]
    for i, app in enumerate(APPS):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": app, "namespace": "ns", "labels": {"app": app}},
                "spec": {
                    "serviceAccountName": app,
                    "containers": [{"name": "c", "ports": [{"containerPort": p} for p in PORTS]}],
                },
                "status": {"podIP": f"10.1.0.{i + 10}"},
            }
        )
    return docs


def _verdicts(policies: list[Body], mode: str = "ambient") -> dict[tuple[str, str, int], Verdict]:
    docs = parse_documents(
        RawDocument(copy.deepcopy(b), SourceLocation("<gen>", 0, {})) for b in _base() + policies
    )
    world = World.build(docs)
    engine = PolicyEngine(world, mode)
    out = {}
    for src in APPS:
        for dst in APPS:
            s, d = world.find_workloads("ns", src)[0], world.find_workloads("ns", dst)[0]
            for port in PORTS:
                ctx = FlowContext(world.endpoint(s), world.endpoint(d), port)
                out[(src, dst, port)] = engine.trace(ctx, Route(s, d)).verdict
    return out


# ---- Istio ---------------------------------------------------------------------------------


def _source() -> st.SearchStrategy[Body]:
    return st.one_of(
        st.builds(lambda a: {"principals": [f"cluster.local/ns/ns/sa/{a}"]}, st.sampled_from(APPS)),
        st.builds(lambda a: {"notPrincipals": [f"cluster.local/ns/ns/sa/{a}"]}, st.sampled_from(APPS)),
        st.just({"namespaces": ["ns"]}),
        st.builds(lambda i: {"ipBlocks": [f"10.1.0.{i + 10}/32"]}, st.integers(0, 2)),
    )


def _istio_rule() -> st.SearchStrategy[Body]:
    return st.fixed_dictionaries(
        {},
        optional={
            "from": st.lists(st.builds(lambda s: {"source": s}, _source()), min_size=1, max_size=2),
            "to": st.lists(
                st.builds(lambda p: {"operation": {"ports": [str(p)]}}, st.sampled_from(PORTS)),
                min_size=1,
                max_size=2,
            ),
        },
    )


def _authz(name: str, action: str, app: str | None, rules: list[Body]) -> Body:
    spec: Body = {"action": action, "rules": rules}
    if app is not None:
        spec["selector"] = {"matchLabels": {"app": app}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    target=st.sampled_from((None, *APPS)),
    rules=st.lists(_istio_rule(), min_size=1, max_size=3),
    extra=_istio_rule(),
)
def test_istio_adding_an_allow_rule_never_denies_an_allowed_flow(
    target: str | None, rules: list[Body], extra: Body
) -> None:
    before = _verdicts([_authz("p", "ALLOW", target, rules)])
    after = _verdicts([_authz("p", "ALLOW", target, [*rules, extra])])
    for flow, verdict in before.items():
        if verdict is Verdict.ALLOW:
            assert after[flow] is Verdict.ALLOW, flow


@SETTINGS
@given(
    allow_rules=st.lists(_istio_rule(), min_size=1, max_size=3),
    deny_rule=_istio_rule(),
    target=st.sampled_from((None, *APPS)),
)
def test_istio_a_matching_deny_always_wins(
    allow_rules: list[Body], deny_rule: Body, target: str | None
) -> None:
    with_deny = _verdicts(
        [_authz("allow", "ALLOW", target, allow_rules), _authz("deny", "DENY", target, [deny_rule])]
    )
    only_deny = _verdicts([_authz("deny", "DENY", target, [deny_rule])])
    for flow, verdict in only_deny.items():
        if verdict is Verdict.DENY:
            assert with_deny[flow] is Verdict.DENY, flow


# ---- Kubernetes ------------------------------------------------------------------------------


def _k8s_rule() -> st.SearchStrategy[Body]:
    peer = st.one_of(
        st.builds(lambda a: {"podSelector": {"matchLabels": {"app": a}}}, st.sampled_from(APPS)),
        st.builds(lambda i: {"ipBlock": {"cidr": f"10.1.0.{i + 10}/32"}}, st.integers(0, 2)),
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "from": st.lists(peer, min_size=1, max_size=2),
            "ports": st.lists(
                st.builds(lambda p: {"port": p}, st.sampled_from(PORTS)), min_size=1, max_size=2
            ),
        },
    )


def _netpol(target: str, rules: list[Body]) -> Body:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "ns"},
        "spec": {"podSelector": {"matchLabels": {"app": target}}, "ingress": rules},
    }


@SETTINGS
@given(target=st.sampled_from(APPS), rules=st.lists(_k8s_rule(), max_size=3), extra=_k8s_rule())
def test_kubernetes_rules_are_additive(target: str, rules: list[Body], extra: Body) -> None:
    before = _verdicts([_netpol(target, rules)], mode="kernel")
    after = _verdicts([_netpol(target, [*rules, extra])], mode="kernel")
    for flow, verdict in before.items():
        if verdict is Verdict.ALLOW:
            assert after[flow] is Verdict.ALLOW, flow


# ---- Cilium ----------------------------------------------------------------------------------


def _cnp(name: str, target: str, key: str, peers: list[str], port: int | None) -> Body:
    rule: Body = {"fromEndpoints": [{"matchLabels": {"app": p}} for p in peers]}
    if port is not None:
        rule["toPorts"] = [{"ports": [{"port": str(port), "protocol": "TCP"}]}]
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"endpointSelector": {"matchLabels": {"app": target}}, key: [rule]},
    }


@SETTINGS
@given(
    target=st.sampled_from(APPS),
    allow_peers=st.lists(st.sampled_from(APPS), min_size=1, max_size=3),
    deny_peers=st.lists(st.sampled_from(APPS), min_size=1, max_size=2),
    allow_port=st.sampled_from((None, *PORTS)),
    deny_port=st.sampled_from((None, *PORTS)),
)
def test_cilium_deny_takes_precedence(
    target: str, allow_peers: list[str], deny_peers: list[str], allow_port: int | None, deny_port: int | None
) -> None:
    allow = _cnp("allow", target, "ingress", allow_peers, allow_port)
    deny = _cnp("deny", target, "ingressDeny", deny_peers, deny_port)
    both = _verdicts([allow, deny], mode="kernel")
    for (src, dst, port), verdict in both.items():
        denied_by_rule = dst == target and src in deny_peers and deny_port in (None, port)
        if denied_by_rule:
            assert verdict is Verdict.DENY, (src, dst, port)
