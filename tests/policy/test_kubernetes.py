"""Kubernetes NetworkPolicy evaluation: one test per upstream rule.

Quotes come from kubernetes.io/docs/concepts/services-networking/network-policies/ ("the page")
and the API reference for networking.k8s.io/v1 (k8s.io/api networking/v1 types.go: NetworkPolicySpec,
NetworkPolicyPeer, NetworkPolicyPort, IPBlock).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.policy.conditions import CidrCondition, PortCondition, Side
from nodemesh.policy.decision import Decision, DropReason, Verdict
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, Protocol
from nodemesh.policy.ir import Action, Api, Direction
from nodemesh.policy.kubernetes import KubernetesEngine, PodPeerCondition

IN, OUT = Direction.INGRESS, Direction.EGRESS

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: alice, labels: {user: alice, env: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bob, labels: {user: bob}}
"""


def pod(
    name: str,
    namespace: str = "shop",
    labels: str = "",
    *,
    ip: str | None = None,
    ports: str = "[{name: http, containerPort: 8080}]",
    node: str | None = None,
    host_network: bool = False,
) -> str:
    """A Pod manifest (labels default to `app: <name>`)."""
    spec = f"containers: [{{name: c, ports: {ports}}}]"
    if node:
        spec += f", nodeName: {node}"
    if host_network:
        spec += ", hostNetwork: true"
    status = f"\nstatus: {{podIP: {ip}}}" if ip else ""
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, "
        f"labels: {{{labels or f'app: {name}'}}}}}\nspec: {{{spec}}}{status}\n"
    )


def policy(name: str, spec: str, namespace: str = "shop") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (
        f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n"
    )


def build(*docs: str, cluster: str = "") -> World:
    text = "\n---\n".join([NAMESPACES, *docs, *([cluster] if cluster else [])])
    return World.build(parse_documents(load_text(text, "np.yaml")))


def ep(world: World, name: str, namespace: str = "shop") -> Endpoint:
    return world.endpoint(world.find_workloads(namespace, name)[0])


def ext(ip: str) -> Endpoint:
    return Endpoint(ip=ipaddress.ip_address(ip))


def check(
    engine: KubernetesEngine,
    src: Endpoint,
    dst: Endpoint,
    port: int,
    direction: Direction = IN,
    *,
    protocol: Protocol = Protocol.TCP,
) -> Decision | None:
    return engine.evaluate(FlowContext(src, dst, port, protocol), direction)


def allowed(
    engine: KubernetesEngine,
    src: Endpoint,
    dst: Endpoint,
    port: int = 8080,
    direction: Direction = IN,
    *,
    protocol: Protocol = Protocol.TCP,
) -> bool:
    decision = check(engine, src, dst, port, direction, protocol=protocol)
    assert decision is not None, "expected the endpoint to be isolated"
    return decision.allowed


SHOP = [pod("frontend", ip="10.244.0.10"), pod("orders", ip="10.244.0.11"), pod("db", ip="10.244.0.12")]


# ---- isolation ---------------------------------------------------------------------------------
def test_pods_no_policy_selects_are_not_isolated() -> None:
    """The page: "By default, pods are non-isolated; they accept traffic from any source." and
    "Other pods in the namespace that are not selected by any NetworkPolicy will continue to
    accept all traffic." evaluate() answers None: Kubernetes has no say."""
    world = build(*SHOP, policy("db-only", "podSelector: {matchLabels: {app: db}}"))
    engine = KubernetesEngine(world)
    assert check(engine, ep(world, "frontend"), ep(world, "orders"), 8080) is None
    assert check(engine, ep(world, "orders"), ep(world, "db"), 8080) is not None
    assert check(engine, ep(world, "db"), ep(world, "orders"), 8080, OUT) is None


def test_empty_pod_selector_selects_every_pod_of_the_policy_namespace_only() -> None:
    """The page: "An empty podSelector selects all pods in the namespace." (API reference: "An
    empty selector matches all pods in the policy's namespace")."""
    world = build(*SHOP, pod("visitor", "alice"), policy("deny-all", "podSelector: {}"))
    engine = KubernetesEngine(world)
    for name in ("frontend", "orders", "db"):
        assert not allowed(engine, ep(world, "visitor", "alice"), ep(world, name))
    assert check(engine, ep(world, "orders"), ep(world, "visitor", "alice"), 8080) is None


def test_policy_types_default_to_ingress() -> None:
    """API reference policyTypes: "all policies (whether or not they contain an ingress section)
    are assumed to affect ingress"; a policy with no rules "does not allow any traffic"."""
    world = build(*SHOP, policy("isolate", "podSelector: {matchLabels: {app: db}}"))
    engine = KubernetesEngine(world)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"))
    assert check(engine, ep(world, "db"), ep(world, "orders"), 8080, OUT) is None


def test_policy_types_default_includes_egress_iff_there_are_egress_rules() -> None:
    """The page: "If no policyTypes are specified on a NetworkPolicy then by default Ingress will
    always be set and Egress will be set if the NetworkPolicy has any egress rules"."""
    world = build(
        *SHOP,
        policy("with-rules", "podSelector: {matchLabels: {app: db}}\negress: [{ports: [{port: 5432}]}]"),
        policy("empty-egress", "podSelector: {matchLabels: {app: orders}}\negress: []"),
    )
    engine = KubernetesEngine(world)
    assert not allowed(engine, ep(world, "db"), ep(world, "orders"), 8080, OUT)
    assert allowed(engine, ep(world, "db"), ep(world, "orders"), 5432, OUT)
    assert check(engine, ep(world, "orders"), ep(world, "db"), 8080, OUT) is None


def test_explicit_egress_policy_type_without_rules_denies_all_egress() -> None:
    """API reference: "if you want to write a policy that specifies that no egress is allowed, you
    must specify a policyTypes value that include "Egress"" (the page's default-deny-egress)."""
    world = build(*SHOP, policy("no-egress", "podSelector: {}\npolicyTypes: [Egress]"))
    engine = KubernetesEngine(world)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 8080, OUT)
    assert not allowed(engine, ep(world, "orders"), ext("1.1.1.1"), 443, OUT)
    assert check(engine, ep(world, "orders"), ep(world, "db"), 8080, IN) is None


def test_rules_of_a_direction_missing_from_explicit_policy_types_are_ignored() -> None:
    """API reference: policyTypes is "a list of rule types that the NetworkPolicy relates to";
    "If you want to write an egress-only policy, you must explicitly specify policyTypes [ "Egress" ]"
    -- its ingress rules then neither isolate nor allow."""
    world = build(
        *SHOP,
        policy("egress-only", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]\negress: [{}]"),
    )
    engine = KubernetesEngine(world)
    assert check(engine, ep(world, "orders"), ep(world, "db"), 8080, IN) is None
    assert [p.direction for p in engine.policies] == [OUT]


def test_an_isolated_pod_rejects_what_no_rule_allows() -> None:
    """The page: a selected pod "will reject any connections that are not allowed by any
    NetworkPolicy". The deny names every selecting policy and is a default deny."""
    world = build(
        *SHOP,
        policy(
            "a-db",
            "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: orders}}}]}]",
        ),
        policy("b-db", "podSelector: {}\ningress: [{ports: [{port: 9999}]}]"),
    )
    engine = KubernetesEngine(world)
    decision = check(engine, ep(world, "frontend"), ep(world, "db"), 5432)
    assert decision is not None and decision.verdict is Verdict.DENY
    assert decision.api is Api.KUBERNETES and decision.rule is None
    assert decision.drop_reason is DropReason.POLICY_DENIED
    assert (
        decision.policy is not None
        and decision.policy.name == "a-db"
        and decision.policy.kind == "NetworkPolicy"
    )
    assert "shop/a-db" in decision.reason and "b-db" in decision.reason and "none of their" in decision.reason


def test_allow_names_the_policy_and_the_rule_index() -> None:
    """Every verdict says which policy and rule decided it (DESIGN: explain every verdict)."""
    world = build(
        *SHOP,
        policy(
            "db-in",
            "podSelector: {matchLabels: {app: db}}\n"
            "ingress:\n- from: [{podSelector: {matchLabels: {app: frontend}}}]\n"
            "- from: [{podSelector: {matchLabels: {app: orders}}}]",
        ),
    )
    engine = KubernetesEngine(world)
    decision = check(engine, ep(world, "orders"), ep(world, "db"), 5432)
    assert decision is not None and decision.allowed and decision.rule == 1
    assert decision.policy is not None and str(decision.policy) == "NetworkPolicy shop/db-in"
    assert decision.reason == "allowed by NetworkPolicy shop/db-in ingress[1]"


def test_policies_are_additive_and_order_free() -> None:
    """The page: "Network policies do not conflict; they are additive. If any policy or policies
    select a pod, the pod is restricted to what is allowed by the union of those policies'
    ingress/egress rules. Thus, order of evaluation does not affect the policy result.\""""
    one = policy(
        "one",
        "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: orders}}}]}]",
    )
    two = policy("two", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {app: frontend}}}]}]")
    for docs in ((one, two), (two, one)):
        world = build(*SHOP, *docs)
        engine = KubernetesEngine(world)
        assert allowed(engine, ep(world, "orders"), ep(world, "db"))
        assert allowed(engine, ep(world, "frontend"), ep(world, "db"))
        assert not allowed(engine, ep(world, "db"), ep(world, "orders"))


# ---- rules -------------------------------------------------------------------------------------
def test_an_empty_rule_allows_everything() -> None:
    """The page's allow-all-ingress policy: `ingress: [{}]` "explicitly allows all traffic"
    (from and ports both absent: every source, every port)."""
    world = build(*SHOP, policy("allow-all", "podSelector: {}\ningress: [{}]"))
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "frontend"), ep(world, "db"), 1)
    assert allowed(engine, ext("203.0.113.9"), ep(world, "db"), 53, protocol=Protocol.UDP)
    assert allowed(engine, ext("203.0.113.9"), ep(world, "db"), 0, protocol=Protocol.ICMP)


def test_empty_or_absent_from_means_every_source() -> None:
    """API reference `from`: "If this field is empty or missing, this rule matches all sources
    (traffic not restricted by source)"."""
    for peers in ("from: []\n  ", ""):
        world = build(*SHOP, policy("p", f"podSelector: {{}}\ningress:\n- {peers}ports: [{{port: 8080}}]"))
        engine = KubernetesEngine(world)
        assert allowed(engine, ext("198.51.100.1"), ep(world, "db"), 8080)
        assert not allowed(engine, ext("198.51.100.1"), ep(world, "db"), 8081)


def test_empty_or_absent_ports_means_every_port() -> None:
    """API reference `ports`: "If this field is empty or missing, this rule matches all ports
    (traffic not restricted by port)"."""
    for ports in ("\n  ports: []", ""):
        world = build(
            *SHOP,
            policy(
                "p",
                f"podSelector: {{}}\ningress:\n- from: [{{podSelector: {{matchLabels: {{app: orders}}}}}}]{ports}",
            ),
        )
        engine = KubernetesEngine(world)
        assert allowed(engine, ep(world, "orders"), ep(world, "db"), 1)
        assert allowed(engine, ep(world, "orders"), ep(world, "db"), 5353, protocol=Protocol.UDP)
        assert not allowed(engine, ep(world, "frontend"), ep(world, "db"), 1)


def test_a_rule_needs_both_its_peers_and_its_ports() -> None:
    """The page: "Each rule allows traffic which matches both the from and ports sections"."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: orders}}}]\n  ports: [{port: 5432}]",
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"), 5432)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 5433)
    assert not allowed(engine, ep(world, "frontend"), ep(world, "db"), 5432)


# ---- peers -------------------------------------------------------------------------------------
def test_pod_selector_peer_selects_pods_of_the_policy_namespace() -> None:
    """The page: podSelector "selects particular Pods in the same namespace as the NetworkPolicy"."""
    world = build(
        *SHOP,
        pod("orders", "alice"),
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: orders}}}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"))
    assert not allowed(engine, ep(world, "orders", "alice"), ep(world, "db"))


def test_namespace_selector_peer_selects_every_pod_of_matching_namespaces() -> None:
    """The page: namespaceSelector "selects particular namespaces for which all Pods should be
    allowed as ingress sources or egress destinations"."""
    world = build(
        *SHOP,
        pod("visitor", "alice"),
        pod("other", "bob"),
        policy(
            "p", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {user: alice}}}]}]"
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "visitor", "alice"), ep(world, "db"))
    assert not allowed(engine, ep(world, "other", "bob"), ep(world, "db"))
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"))


def test_namespace_and_pod_selector_in_one_element_are_anded_in_two_elements_ored() -> None:
    """The page: one `from` element with both "allow[s] connections from Pods with the label
    role=client in namespaces with the label user=alice", while two elements allow "Pods in the
    local Namespace with the label role=client, *or* ... any Pod in any namespace with the label
    user=alice"."""
    clients = [
        pod("client", "alice", "role: client"),
        pod("other", "alice", "role: other"),
        pod("client", "shop", "role: client"),
    ]
    anded = policy(
        "and",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {user: alice}}\n"
        "    podSelector: {matchLabels: {role: client}}",
    )
    ored = anded.replace("name: and", "name: or").replace(
        "    podSelector: {matchLabels: {role: client}}", "  - podSelector: {matchLabels: {role: client}}"
    )
    world = build(*SHOP, *clients, anded)
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "client", "alice"), ep(world, "db"))
    assert not allowed(engine, ep(world, "other", "alice"), ep(world, "db"))
    assert not allowed(engine, ep(world, "client", "shop"), ep(world, "db"))
    world = build(*SHOP, *clients, ored)
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "client", "alice"), ep(world, "db"))
    assert allowed(engine, ep(world, "other", "alice"), ep(world, "db"))
    assert allowed(engine, ep(world, "client", "shop"), ep(world, "db"))


def test_empty_selectors_in_a_peer_select_everything_they_scope() -> None:
    """API reference NetworkPolicyPeer: podSelector "if present but empty, it selects all pods";
    namespaceSelector "if present but empty, it selects all namespaces"."""
    world = build(
        *SHOP,
        pod("visitor", "alice"),
        policy("local", "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {}}]}]"),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"))
    assert not allowed(engine, ep(world, "visitor", "alice"), ep(world, "db"))
    world = build(
        *SHOP,
        pod("visitor", "alice"),
        policy("all", "podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]"),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "visitor", "alice"), ep(world, "db"))
    assert not allowed(engine, ext("192.0.2.1"), ep(world, "db"))


def test_a_namespace_is_selected_by_name_with_its_metadata_name_label() -> None:
    """The page (Targeting a Namespace by its name): "The Kubernetes control plane sets an
    immutable label kubernetes.io/metadata.name on all namespaces"."""
    world = build(
        *SHOP,
        pod("visitor", "alice"),
        pod("other", "bob"),
        policy(
            "p",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: bob}}}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "other", "bob"), ep(world, "db"))
    assert not allowed(engine, ep(world, "visitor", "alice"), ep(world, "db"))


def test_match_expressions_follow_label_selector_semantics() -> None:
    """API reference LabelSelector: matchExpressions are ANDed with matchLabels; In, NotIn (the
    label absent also matches), Exists and DoesNotExist."""
    world = build(
        pod("a", labels="app: a, tier: web"),
        pod("b", labels="app: b, tier: api"),
        pod("c", labels="app: c"),
        pod("target", labels="app: target"),
        policy(
            "p",
            "podSelector: {matchExpressions: [{key: app, operator: In, values: [target]}]}\n"
            "ingress:\n- from: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}}]\n"
            "  ports: [{port: 1}]\n"
            "- from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]\n  ports: [{port: 2}]\n"
            "- from: [{podSelector: {matchLabels: {app: a}, matchExpressions: [{key: tier, operator: DoesNotExist}]}}]\n"
            "  ports: [{port: 3}]",
        ),
    )
    engine = KubernetesEngine(world)
    a, b, c, target = (ep(world, n) for n in ("a", "b", "c", "target"))
    assert [allowed(engine, x, target, 1) for x in (a, b, c)] == [False, True, True]
    assert [allowed(engine, x, target, 2) for x in (a, b, c)] == [True, True, False]
    assert [allowed(engine, x, target, 3) for x in (a, b, c)] == [False, False, False]


def test_ip_block_allows_the_cidr_minus_its_excepts() -> None:
    """The page's example allows "IP addresses in the ranges 172.17.0.0–172.17.0.255 and
    172.17.2.0–172.17.255.255 (ie, all of 172.17.0.0/16 except 172.17.1.0/24)"."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    db = ep(world, "db")
    assert allowed(engine, ext("172.17.0.255"), db)
    assert not allowed(engine, ext("172.17.1.7"), db)
    assert allowed(engine, ext("172.17.2.0"), db)
    assert not allowed(engine, ext("172.18.0.1"), db)
    assert not allowed(engine, ext("2001:db8::1"), db)


def test_ip_block_also_matches_pod_ips() -> None:
    """API reference IPBlock: "a particular CIDR ... that is allowed"; Kubernetes matches the peer
    IP whatever it is (the page only advises cluster-external IPs "since Pod IPs are ephemeral")."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{ipBlock: {cidr: 10.244.0.10/32}}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "frontend"), ep(world, "db"))
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"))


def test_endpoints_outside_the_cluster_match_only_ip_blocks() -> None:
    """API reference NetworkPolicyPeer: pod and namespace selectors select pods; an address with no
    pod behind it is matched only by ipBlock ("IP blocks" are the third kind of entity)."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {}\npolicyTypes: [Egress]\negress: [{to: [{namespaceSelector: {}}]}, {to: [{ipBlock: {cidr: 8.8.8.0/24}}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"), 8080, OUT)
    assert not allowed(engine, ep(world, "orders"), ext("1.1.1.1"), 443, OUT)
    decision = check(engine, ep(world, "orders"), ext("8.8.8.8"), 53, OUT)
    assert decision is not None and decision.allowed and decision.rule == 1


# ---- ports -------------------------------------------------------------------------------------
def test_port_protocol_defaults_to_tcp() -> None:
    """API reference NetworkPolicyPort.protocol: "If not specified, this field defaults to TCP.\""""
    world = build(*SHOP, policy("p", "podSelector: {}\ningress: [{ports: [{port: 53}]}]"))
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"), 53)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 53, protocol=Protocol.UDP)


def test_a_port_entry_without_port_matches_every_port_of_its_protocol() -> None:
    """API reference NetworkPolicyPort.port: "If this field is not provided, this matches all port
    names and numbers." -- on the given protocol only."""
    world = build(*SHOP, policy("p", "podSelector: {}\ningress: [{ports: [{protocol: UDP}]}]"))
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"), 5353, protocol=Protocol.UDP)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 5353)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 0, protocol=Protocol.ICMP)


def test_sctp_ports_match_sctp_only() -> None:
    """The page (SCTP support): "you can set the protocol field of a NetworkPolicy to SCTP"."""
    world = build(*SHOP, policy("p", "podSelector: {}\ningress: [{ports: [{protocol: SCTP, port: 9}]}]"))
    engine = KubernetesEngine(world)
    assert allowed(engine, ep(world, "orders"), ep(world, "db"), 9, protocol=Protocol.SCTP)
    assert not allowed(engine, ep(world, "orders"), ep(world, "db"), 9)


def test_end_port_allows_an_inclusive_range() -> None:
    """The page (Targeting a range of ports): the rule allows traffic "if the target port is
    between the range 32000 and 32768" (API reference: "from port to endPort ..., inclusive")."""
    world = build(
        *SHOP,
        policy(
            "multi-port-egress",
            "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/24}}]\n  ports: [{protocol: TCP, port: 32000, endPort: 32768}]",
        ),
    )
    engine = KubernetesEngine(world)
    src = ep(world, "orders")
    assert [allowed(engine, src, ext("10.0.0.5"), p, OUT) for p in (31999, 32000, 32400, 32768, 32769)] == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_named_ports_resolve_against_the_destination_pod() -> None:
    """API reference NetworkPolicyPort.port: "a numerical or named port on a pod" -- the
    destination's: for ingress the selected pod's, for egress the peer's container ports."""
    world = build(
        pod("api", ports="[{name: http, containerPort: 8080}]"),
        pod("web", ports="[{name: http, containerPort: 80}]"),
        pod("client", ports="[]"),
        policy(
            "in",
            "podSelector: {matchExpressions: [{key: app, operator: In, values: [api, web]}]}\ningress: [{ports: [{port: http}]}]",
        ),
        policy(
            "out",
            "podSelector: {matchLabels: {app: client}}\npolicyTypes: [Egress]\negress: [{ports: [{port: http}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    client, api, web = ep(world, "client"), ep(world, "api"), ep(world, "web")
    assert allowed(engine, client, api, 8080) and not allowed(engine, client, api, 80)
    assert allowed(engine, client, web, 80) and not allowed(engine, client, web, 8080)
    assert allowed(engine, client, api, 8080, OUT) and not allowed(engine, client, api, 80, OUT)
    assert allowed(engine, client, web, 80, OUT) and not allowed(engine, client, web, 8080, OUT)
    assert not allowed(engine, client, ext("192.0.2.80"), 80, OUT)


def test_named_ports_match_on_their_declared_protocol() -> None:
    """API reference: "only traffic on the specified protocol AND port will be matched"; a
    container port named `dns` declared as UDP does not resolve for TCP."""
    world = build(
        pod("dns", ports="[{name: dns, containerPort: 53, protocol: UDP}]"),
        pod("client", ports="[]"),
        policy(
            "p",
            "podSelector: {matchLabels: {app: dns}}\ningress: [{ports: [{port: dns, protocol: UDP}]}, {ports: [{port: dns}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    client, dns = ep(world, "client"), ep(world, "dns")
    assert allowed(engine, client, dns, 53, protocol=Protocol.UDP)
    assert not allowed(engine, client, dns, 53, protocol=Protocol.TCP)


# ---- exceptions --------------------------------------------------------------------------------
def test_a_pod_cannot_block_access_to_itself() -> None:
    """The page: "Other pods that are allowed (exception: a pod cannot block access to itself)"."""
    world = build(*SHOP, policy("deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]"))
    engine = KubernetesEngine(world)
    db = ep(world, "db")
    assert allowed(engine, db, db, 5432) and allowed(engine, db, db, 5432, OUT)
    assert not allowed(engine, ep(world, "orders"), db, 5432)


def test_traffic_with_the_pods_own_node_is_always_allowed() -> None:
    """The page: "traffic to and from the node where a Pod is running is always allowed,
    regardless of the IP address of the Pod or the node"."""
    world = build(
        pod("db", node="node-1"),
        pod("agent", node="node-1", host_network=True, ip="192.168.0.1"),
        pod("far-agent", node="node-2", host_network=True, ip="192.168.0.2"),
        policy("deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
    )
    engine = KubernetesEngine(world)
    db = ep(world, "db")
    assert allowed(engine, ep(world, "agent"), db) and allowed(engine, db, ep(world, "agent"), 10250, OUT)
    assert not allowed(engine, ep(world, "far-agent"), db)


def test_host_network_pods_are_not_selected_and_match_only_ip_blocks() -> None:
    """The page (NetworkPolicy and hostNetwork pods), "the most common implementation": the plugin
    "ignores hostNetwork pods when matching podSelector and namespaceSelector. Traffic to/from
    hostNetwork pods is treated the same as all other traffic to/from the node IP"."""
    world = build(
        *SHOP,
        pod("agent", node="node-2", host_network=True, ip="192.168.0.2"),
        policy(
            "p",
            "podSelector: {}\ningress: [{from: [{podSelector: {}}]}, {from: [{ipBlock: {cidr: 192.168.0.0/24}}], ports: [{port: 9100}]}]",
        ),
    )
    engine = KubernetesEngine(world)
    agent = ep(world, "agent")
    assert check(engine, ep(world, "db"), agent, 9100) is None
    assert not allowed(engine, agent, ep(world, "db"), 8080)
    assert allowed(engine, agent, ep(world, "db"), 9100)


# ---- the IR and the engine's caches ------------------------------------------------------------
def test_compiled_ir_has_one_match_per_peer_and_per_port() -> None:
    """IR contract (ir.py): a K8s rule is [Clause(from|to), Clause(ports)]; one Match per peer and
    per port, each with one condition; the policy is an ALLOW with default deny."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - podSelector: {matchLabels: {app: orders}}\n"
            "  - namespaceSelector: {matchLabels: {user: alice}}\n    podSelector: {}\n  - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n"
            "  ports: [{port: 5432}, {port: metrics, protocol: UDP}, {port: 9000, endPort: 9100}]\n"
            "egress: [{}]",
        ),
    )
    engine = KubernetesEngine(world)
    ingress, egress = engine.policies
    assert ingress.direction is IN and egress.direction is OUT
    assert ingress.action is Action.ALLOW and ingress.default_deny and ingress.ref.api is Api.KUBERNETES
    assert ingress.subject is not None and ingress.subject.selects(ep(world, "db"))
    assert not ingress.subject.selects(ep(world, "orders"))
    (rule,) = ingress.rules
    peers, ports = rule.clauses
    assert (peers.name, ports.name, rule.path) == ("from", "ports", "spec.ingress[0]")
    local, remote, block = (m.conditions[0] for m in peers.matches)
    assert isinstance(local, PodPeerCondition) and local.namespaces is None and local.side is Side.SOURCE
    assert isinstance(remote, PodPeerCondition) and remote.namespaces is not None
    assert isinstance(block, CidrCondition) and block.cluster_matches and len(block.excepts) == 1
    conditions = [m.conditions[0] for m in ports.matches]
    assert conditions == [
        PortCondition(port=5432, protocols=frozenset({Protocol.TCP})),
        PortCondition(name="metrics", protocols=frozenset({Protocol.UDP})),
        PortCondition(port=9000, end_port=9100, protocols=frozenset({Protocol.TCP})),
    ]
    assert [c.clauses for c in egress.rules] == [(peers.__class__("to"), ports.__class__("ports"))]


def test_a_changed_endpoint_is_reselected() -> None:
    """The per-pod selection cache is keyed by namespace and pod but checks the labels: the same
    pod name with other labels is evaluated against the policies that select those labels."""
    world = build(*SHOP, policy("p", "podSelector: {matchLabels: {app: db}}"))
    engine = KubernetesEngine(world)
    db = ep(world, "db")
    assert check(engine, ep(world, "orders"), db, 1) is not None
    relabelled = Endpoint(ip=db.ip, namespace="shop", workload="db", pod="db", labels={"app": "cache"})
    assert check(engine, ep(world, "orders"), relabelled, 1) is None
    assert check(engine, ep(world, "orders"), db, 1) is not None


def test_a_remembered_verdict_is_not_reused_for_a_changed_peer() -> None:
    """Verdicts are remembered per (port, peer namespace, peer pod) only with what they depended
    on: the same peer pod name with other labels, IP or namespace labels is decided afresh."""
    world = build(
        *SHOP,
        policy(
            "p",
            "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: orders}}}]\n"
            "- from: [{namespaceSelector: {matchLabels: {env: staging}}}]\n- from: [{ipBlock: {cidr: 10.9.0.0/16}}]",
        ),
    )
    engine = KubernetesEngine(world)
    orders, db = ep(world, "orders"), ep(world, "db")
    assert allowed(engine, orders, db)
    unlabelled = replace(orders, labels={"app": "intruder"})
    assert not allowed(engine, unlabelled, db)
    assert allowed(engine, replace(unlabelled, ip=ipaddress.ip_address("10.9.0.1")), db)
    assert allowed(engine, replace(unlabelled, namespace_labels={"env": "staging"}), db)
    assert not allowed(engine, unlabelled, db)
    assert allowed(engine, orders, db)


@functools.cache
def _diverse() -> tuple[KubernetesEngine, tuple[Endpoint, ...]]:
    world = build(
        pod(
            "web",
            labels="app: web, tier: front",
            ip="10.244.1.1",
            ports="[{name: http, containerPort: 8080}]",
        ),
        pod(
            "api",
            labels="app: api, tier: back",
            ip="10.244.1.2",
            ports="[{name: http, containerPort: 9000}, {name: dns, containerPort: 53, protocol: UDP}]",
        ),
        pod("db", labels="app: db", ip="10.244.1.3", ports="[{name: sql, containerPort: 5432}]"),
        pod("visitor", "alice", labels="app: visitor, tier: front", ip="10.244.2.1"),
        pod("other", "bob", labels="app: other", ip="10.244.3.1", node="n1"),
        pod("agent", "bob", labels="app: agent", ip="192.168.0.1", node="n1", host_network=True),
        policy(
            "api-in",
            "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {tier: front}}}, {namespaceSelector: {matchLabels: {user: alice}}, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]\n  ports: [{port: http}, {port: 53, protocol: UDP}]\n- from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}]\n  ports: [{port: 9000, endPort: 9100}]",
        ),
        policy(
            "db-in",
            "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Ingress, Egress]\ningress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: sql}]}]\negress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}, {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]",
        ),
        policy(
            "front-out",
            "podSelector: {matchExpressions: [{key: tier, operator: In, values: [front]}]}\npolicyTypes: [Egress]\negress: [{to: [{podSelector: {}}], ports: [{port: http}, {protocol: UDP}]}]",
        ),
        policy(
            "bob-in",
            "podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [agent]}]}\ningress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}}]}]",
            namespace="bob",
        ),
        policy("alice-all", "podSelector: {}\ningress: [{}]", namespace="alice"),
    )
    endpoints = [world.endpoint(w) for w in world.workloads]
    endpoints += [ext("10.244.9.9"), ext("8.8.8.8"), ext("10.1.1.1"), ext("2001:db8::1")]
    return KubernetesEngine(world), tuple(endpoints)


def _reference(engine: KubernetesEngine, ctx: FlowContext, direction: Direction) -> bool | None:
    """The verdict computed from the IR alone (Policy.subject, Rule.matches), without caches."""
    endpoint, peer = (ctx.dst, ctx.src) if direction is IN else (ctx.src, ctx.dst)
    selecting = [
        p
        for p in engine.policies
        if p.direction is direction and p.subject is not None and p.subject.selects(endpoint)
    ]
    if not selecting:
        return None
    if peer.pod is not None and (peer.namespace, peer.pod) == (endpoint.namespace, endpoint.pod):
        return True
    if "host" in peer.entities and peer.node is not None and peer.node == endpoint.node:
        return True
    return any(rule.matches(ctx) for p in selecting for rule in p.rules)


@settings(max_examples=400, deadline=None)
@given(
    st.data(),
    st.sampled_from([1, 53, 80, 5432, 8080, 9000, 9050, 9100, 9101, 15008]),
    st.sampled_from(list(Protocol)),
    st.sampled_from([IN, OUT]),
)
def test_the_cached_fast_path_agrees_with_the_ir(
    data: st.DataObject, port: int, protocol: Protocol, direction: Direction
) -> None:
    """Every verdict of `evaluate` (selection cache, per-port candidates, verdict memo) equals
    the one the IR gives by itself, on a world with every peer and port kind. Flows repeat across
    examples, so memoised verdicts are checked too."""
    engine, endpoints = _diverse()
    src = data.draw(st.sampled_from(endpoints))
    dst = data.draw(st.sampled_from(endpoints))
    ctx = FlowContext(src, dst, port, protocol)
    decision = engine.evaluate(ctx, direction)
    expected = _reference(engine, ctx, direction)
    assert (None if decision is None else decision.allowed) == expected


# ---- findings ----------------------------------------------------------------------------------
def _findings(*docs: str, cluster: str = "") -> list[Finding]:
    return KubernetesEngine(build(*docs, cluster=cluster)).analyze()


def _codes(findings: list[Finding]) -> list[str]:
    return sorted(f.code for f in findings)


KERNEL = "apiVersion: nodemesh.io/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec: {mode: kernel}"


def test_nm401_pod_selector_that_selects_no_pod() -> None:
    """A podSelector that selects nothing isolates nothing: the policy has no effect."""
    findings = _findings(*SHOP, policy("typo", "podSelector: {matchLabels: {app: dbb}}"), cluster=KERNEL)
    (finding,) = findings
    assert finding.code == "NM401" and finding.severity is Severity.WARNING
    assert finding.resource == "NetworkPolicy shop/typo" and finding.file == "np.yaml" and finding.line > 0
    assert _findings(*SHOP, policy("ok", "podSelector: {matchLabels: {app: db}}"), cluster=KERNEL) == []


def test_nm402_policy_blocking_hbone_for_ambient_pods() -> None:
    """istio-ambient.md §1.1: "Kubernetes NetworkPolicy must allow TCP 15008 in and out of every
    ambient pod"; ztunnel: "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008"."""
    only_app_port = policy(
        "db-in",
        "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: orders}}}], ports: [{port: 5432}]}]",
    )
    findings = _findings(*SHOP, only_app_port)
    (finding,) = [f for f in findings if f.code == "NM402"]
    assert finding.severity is Severity.WARNING and finding.resource == "NetworkPolicy shop/db-in"
    assert "shop/orders -> shop/db:5432" in finding.message and "15008" in finding.message
    with_hbone = only_app_port.replace("ports: [{port: 5432}]", "ports: [{port: 5432}, {port: 15008}]")
    assert "NM402" not in _codes(_findings(*SHOP, with_hbone))
    assert "NM402" not in _codes(_findings(*SHOP, only_app_port, cluster=KERNEL))
    deny_all = policy("deny", "podSelector: {matchLabels: {app: db}}")
    assert "NM402" not in _codes(_findings(*SHOP, deny_all))


def test_nm402_covers_egress_too() -> None:
    """The HBONE connection leaves the source pod for the peer's 15008: egress rules must allow it."""
    egress = policy(
        "out",
        "podSelector: {matchLabels: {app: frontend}}\npolicyTypes: [Egress]\negress: [{to: [{podSelector: {}}], ports: [{port: 8080}, {port: 53, protocol: UDP}]}]",
    )
    (finding,) = [f for f in _findings(*SHOP, egress) if f.code == "NM402"]
    assert "egress" in finding.message and "to those peers" in finding.message


def test_nm403_rule_shadowed_by_an_earlier_rule() -> None:
    """Rules are ORed ("Network policies do not conflict; they are additive"): a rule whose peers
    and ports an earlier rule already allows has no effect."""
    findings = _findings(
        *SHOP,
        policy(
            "p",
            "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {env: prod}}}]\n  ports: [{port: 8000, endPort: 9000}]\n"
            "- from: [{podSelector: {matchLabels: {app: orders}}}]\n  ports: [{port: 8080}]\n"
            "- from: [{podSelector: {matchLabels: {app: orders}}}]\n  ports: [{port: 9090}]",
        ),
        cluster=KERNEL,
    )
    (finding,) = [f for f in findings if f.code == "NM403"]
    assert finding.severity is Severity.INFO and "ingress[1] is shadowed by ingress[0]" in finding.message


def test_nm404_rules_ignored_by_policy_types() -> None:
    """API reference policyTypes: rules of a direction that policyTypes does not list do nothing."""
    findings = _findings(
        *SHOP,
        policy("p", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]\negress: [{}]"),
        cluster=KERNEL,
    )
    assert _codes(findings) == ["NM404"] and "spec.ingress" in findings[0].message


def test_nm405_egress_isolation_without_dns() -> None:
    """A pod isolated for egress resolves names only if some rule allows UDP 53 (the page's
    default-deny-egress "ensures that even pods that aren't selected ... will not be allowed egress")."""
    no_dns = policy(
        "out",
        "podSelector: {matchLabels: {app: orders}}\npolicyTypes: [Egress]\negress: [{ports: [{port: 5432}]}]",
    )
    assert "NM405" in _codes(_findings(*SHOP, no_dns, cluster=KERNEL))
    with_dns = no_dns.replace("[{port: 5432}]", "[{port: 5432}, {port: 53, protocol: UDP}]")
    assert "NM405" not in _codes(_findings(*SHOP, with_dns, cluster=KERNEL))
    lockdown = policy("lock", "podSelector: {}\npolicyTypes: [Egress]")
    assert "NM405" not in _codes(_findings(*SHOP, lockdown, cluster=KERNEL))


def test_nm406_peer_selector_matching_nothing_hints_the_metadata_name_label() -> None:
    """A namespaceSelector on a label no namespace carries allows nothing; the page: "you can use
    the standardized label to target a specific namespace" (kubernetes.io/metadata.name)."""
    findings = _findings(
        *SHOP,
        pod("visitor", "alice"),
        policy(
            "p",
            "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {name: alice}}}, {podSelector: {matchLabels: {app: nobody}}}]}]",
        ),
        cluster=KERNEL,
    )
    nm406 = [f for f in findings if f.code == "NM406"]
    assert len(nm406) == 2
    assert "kubernetes.io/metadata.name: alice" in nm406[0].message
    assert "matches no pod" in nm406[1].message


def test_nm407_ip_block_over_the_pod_cidr() -> None:
    """The page: ipBlock peers "should be cluster-external IPs, since Pod IPs are ephemeral and
    unpredictable"."""
    findings = _findings(
        *SHOP,
        policy("p", "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]"),
        cluster=KERNEL,
    )
    assert _codes(findings) == ["NM407"] and findings[0].severity is Severity.INFO


def test_nm408_pod_selector_matching_host_network_pods() -> None:
    """The page: hostNetwork pods are, in the most common implementation, ignored by podSelector."""
    findings = _findings(
        *SHOP, pod("agent", host_network=True, node="n1"), policy("p", "podSelector: {}"), cluster=KERNEL
    )
    assert _codes(findings) == ["NM408"] and "agent" in findings[0].message
    only_host = _findings(pod("agent", host_network=True), policy("p", "podSelector: {}"), cluster=KERNEL)
    assert _codes(only_host) == ["NM401"] and "hostNetwork" in only_host[0].message
