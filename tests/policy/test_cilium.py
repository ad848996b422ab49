"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy: schema, validation and evaluation.

Every test states one upstream rule and cites where it comes from: the Cilium docs
(docs.cilium.io "Policy Language" = Documentation/security/policy/language.rst, "Intro" =
intro.rst), the Cilium source (`pkg/policy/api/*.go`, `pkg/k8s/apis/cilium.io/utils/utils.go`,
`pkg/policy/{repository,rule}.go`), or the summary in /work/shared/reference/cilium.md.
Worlds are built from YAML text, as a user writes them.
"""

from __future__ import annotations

import ipaddress

import pytest

from nodemesh.errors import ManifestError
from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.policy.cilium import CiliumEngine
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Protocol
from nodemesh.policy.ir import Api, Direction, Layer, PolicyRef

IN, OUT = Direction.INGRESS, Direction.EGRESS

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend, tier: web}}
spec: {serviceAccountName: frontend, containers: [{name: c}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: orders, namespace: shop, labels: {app: orders, tier: api}}
spec:
  serviceAccountName: orders
  nodeName: node-1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: metrics, containerPort: 9100}
    - {name: dns, containerPort: 5353, protocol: UDP}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: reporting, namespace: shop, labels: {app: reporting}}
spec: {containers: [{name: c}]}
status: {podIP: 10.244.1.12}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {podIP: 10.244.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: shop, labels: {app: agent}}
spec: {hostNetwork: true, nodeName: node-1, containers: [{name: c}]}
status: {podIP: 192.168.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: far-agent, namespace: shop, labels: {app: agent}}
spec: {hostNetwork: true, nodeName: node-2, containers: [{name: c}]}
status: {podIP: 192.168.0.12}
"""

WORLD_IP = ipaddress.ip_address("198.51.100.7")


def _engine(policies: str, base: str = BASE) -> tuple[World, CiliumEngine]:
    world = World.build(parse_documents(load_text(base + "---\n" + policies, "policies.yaml")))
    return world, CiliumEngine(world)


def _ep(world: World, ref: str) -> Endpoint:
    if ref == "world":
        return world.external_endpoint(WORLD_IP)
    if ref.startswith("ip:"):
        return world.external_endpoint(ipaddress.ip_address(ref[3:]))
    ns, name = ref.split("/")
    return world.endpoint(world.find_workloads(ns, name)[0])


def _ctx(
    world: World,
    src: str,
    dst: str,
    *,
    port: int = 8080,
    protocol: Protocol = Protocol.TCP,
    request: HttpRequest | None = None,
) -> FlowContext:
    return FlowContext(_ep(world, src), _ep(world, dst), port, protocol, request)


def _l4(
    engine: CiliumEngine, world: World, src: str, dst: str, direction: Direction, **kw: object
) -> Decision:
    decision = engine.evaluate_l4(_ctx(world, src, dst, **kw), direction)  # type: ignore[arg-type]
    assert decision is not None, "expected a Cilium policy to select the endpoint"
    return decision


def _both(engine: CiliumEngine, world: World, src: str, dst: str, **kw: object) -> bool:
    """Source egress and destination ingress must both allow (cilium.md 1.9 "Two sides")."""
    ctx = _ctx(world, src, dst, **kw)  # type: ignore[arg-type]
    for direction in (OUT, IN):
        d = engine.evaluate_l7(ctx, direction) if ctx.request else engine.evaluate_l4(ctx, direction)
        if d is not None and not d.allowed:
            return False
    return True


def _get(path: str, **headers: str) -> HttpRequest:
    return HttpRequest(
        "GET", path, "orders:8080", {k.lower().replace("_", "-"): v for k, v in headers.items()}
    )


def _cnp(name: str, spec: str, ns: str = "shop", kind: str = "CiliumNetworkPolicy") -> str:
    meta = f"{{name: {name}, namespace: {ns}}}" if kind == "CiliumNetworkPolicy" else f"{{name: {name}}}"
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n{body}\n---\n"


def _errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        parse_documents(load_text(text, "bad.yaml"))
    return [str(p) for p in exc.value.problems]


ORDERS_FROM_FRONTEND = _cnp(
    "orders-from-frontend",
    """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
""",
)


# ---- schema and validation -----------------------------------------------------------------


def test_upstream_field_names_load_including_non_camel_case_ones() -> None:
    """Manifests keep upstream names (`pkg/policy/api`): `fromCIDR`, `fromCIDRSet.except`,
    `toCIDRSet`, `toFQDNs`, `terminatingTLS`, `headerMatches`, `enableDefaultDeny`, `specs`."""
    text = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all-fields, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: orders}}
  description: every field
  labels: [{key: owner, value: team-red, source: k8s}]
  log: {value: orders}
  enableDefaultDeny: {ingress: true, egress: false}
  ingress:
  - fromCIDR: [10.0.0.0/8]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  - fromEntities: [world]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    authentication: {mode: required}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      terminatingTLS: {secret: {name: tls}}
      serverNames: [orders.example.com]
      rules:
        http:
        - method: GET
          path: /api/.*
          host: orders.example.com
          headers: ["X-Token: 1"]
          headerMatches: [{name: X-Id, value: "7", mismatch: LOG}]
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "22"}]}]
- endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toCIDRSet: [{cidr: 0.0.0.0/0}]
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.example.com"}]
  - toServices: [{k8sService: {serviceName: db, namespace: shop}}]
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: reporting}}]
"""
    (doc,) = parse_documents(load_text(text, "all.yaml"))
    rules = doc.rules()  # type: ignore[attr-defined]
    assert [at for at, _ in rules] == [("specs", 0), ("specs", 1)]
    ingress = rules[0][1].ingress
    assert ingress[1].from_cidr_set[0].except_ == ["10.96.0.0/12"]
    assert ingress[3].to_ports[0].terminating_tls.secret.name == "tls"
    assert rules[1][1].egress[1].to_fqdns[1].match_pattern == "*.example.com"


def test_unknown_field_names_file_line_path_and_the_closest_name() -> None:
    """A misspelt field is an error, not a silent no-op (the CRD's structural schema with
    strict field validation rejects unknown fields); the error names the closest valid name."""
    text = _cnp("p", "endpointSelector: {}\ningress:\n- fromCidr: [10.0.0.0/8]\n")
    (problem,) = _errors(text)
    assert problem.startswith("bad.yaml:7: spec.ingress[0].fromCidr: unknown field")
    assert "did you mean 'fromCIDR'?" in problem


def test_a_policy_needs_spec_or_specs() -> None:
    """cnp_types.go Parse: a CiliumNetworkPolicy with neither `spec` nor `specs` is invalid
    ("empty policy")."""
    (problem,) = _errors("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n")
    assert "spec" in problem and "`spec` or `specs`" in problem


def test_a_rule_needs_at_least_one_direction() -> None:
    """rule_validation.go: "rule must have at least one of Ingress, IngressDeny, Egress,
    EgressDeny"."""
    (problem,) = _errors(_cnp("p", "endpointSelector: {}\ningress: []\n"))
    assert "at least one of Ingress, IngressDeny, Egress, EgressDeny" in problem


def test_exactly_one_of_endpoint_selector_and_node_selector() -> None:
    """rule_validation.go: "rule must have one of EndpointSelector or NodeSelector" / "rule
    cannot have both EndpointSelector and NodeSelector"."""
    neither = _errors(_cnp("p", "ingress: [{}]\n"))
    assert any("one of EndpointSelector or NodeSelector" in p for p in neither)
    both = _errors(
        _cnp(
            "p",
            "endpointSelector: {}\nnodeSelector: {}\ningress: [{}]\n",
            kind="CiliumClusterwideNetworkPolicy",
        )
    )
    assert any("spec.nodeSelector: rule cannot have both" in p for p in both)


def test_node_selector_is_only_for_clusterwide_policies() -> None:
    """cilium.md 1.1: `nodeSelector` (host policies) exists only in a
    CiliumClusterwideNetworkPolicy."""
    (problem,) = _errors(_cnp("p", "nodeSelector: {}\ningress: [{}]\n"))
    assert "spec.nodeSelector" in problem and "CiliumClusterwideNetworkPolicy" in problem


def test_two_l3_peer_kinds_in_one_rule_are_rejected() -> None:
    """rule_validation.go: "Combining FromEndpoints and FromCIDR is not supported yet"."""
    (problem,) = _errors(
        _cnp("p", "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  fromCIDR: [10.0.0.0/8]\n")
    )
    assert "spec.ingress[0]: combining fromEndpoints and fromCIDR is not supported yet" in problem


def test_icmps_together_with_to_ports_are_rejected() -> None:
    """rule_validation.go: "The ICMPs block may only be present without ToPorts."."""
    spec = """
endpointSelector: {}
egress:
- toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  icmps: [{fields: [{type: 8}]}]
"""
    (problem,) = _errors(_cnp("p", spec))
    assert "spec.egress[0].icmps" in problem and "only be present without ToPorts" in problem


@pytest.mark.parametrize("protocol", ["UDP", "ANY", None])
def test_http_rules_need_a_port_whose_protocol_is_exactly_tcp(protocol: str | None) -> None:
    """rule_validation.go PortRule.sanitize: "L7 rules can only apply to TCP (not %s) except for
    DNS rules" -- an empty protocol is ANY and is rejected too."""
    proto = f", protocol: {protocol}" if protocol else ""
    spec = f"""
endpointSelector: {{}}
ingress:
- toPorts: [{{ports: [{{port: "80"{proto}}}], rules: {{http: [{{method: GET}}]}}}}]
"""
    (problem,) = _errors(_cnp("p", spec))
    assert "spec.ingress[0].toPorts[0].ports[0].protocol" in problem
    assert f"L7 rules can only apply to TCP (not {protocol or 'ANY'})" in problem


def test_l7_rules_on_port_zero_are_rejected() -> None:
    """rule_validation.go: "L7 rules can not be used when a port is 0"."""
    spec = 'endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: "0", protocol: TCP}], rules: {http: [{}]}}]\n'
    (problem,) = _errors(_cnp("p", spec))
    assert "L7 rules can not be used when a port is 0" in problem


def test_deny_rules_cannot_carry_l7_rules() -> None:
    """language.rst, Deny Policies: "Deny policies do not support: policy enforcement at L7"
    (`PortDenyRule` has only `ports`)."""
    spec = """
endpointSelector: {}
ingressDeny:
- toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
"""
    (problem,) = _errors(_cnp("p", spec))
    assert "spec.ingressDeny[0].toPorts[0].rules: deny rules do not support L7 rules" in problem


def test_dns_rules_are_not_allowed_on_ingress() -> None:
    """rule_validation.go: "DNS rules are not allowed on ingress"."""
    spec = """
endpointSelector: {}
ingress:
- toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]
"""
    (problem,) = _errors(_cnp("p", spec))
    assert "DNS rules are not allowed on ingress" in problem


def test_http_and_dns_on_one_port_rule_are_rejected() -> None:
    """rule_validation.go L7Rules.sanitize: "multiple L7 protocol rule types specified in single
    rule"."""
    spec = """
endpointSelector: {}
egress:
- toPorts: [{ports: [{port: "53", protocol: TCP}], rules: {http: [{}], dns: [{matchName: a.b}]}}]
"""
    assert any("multiple L7 protocol rule types" in p for p in _errors(_cnp("p", spec)))


def test_more_than_40_ports_are_rejected() -> None:
    """rule_validation.go maxPorts = 40: "too many ports, the max is 40"."""
    ports = ", ".join(f'{{port: "{1000 + i}"}}' for i in range(41))
    spec = f"endpointSelector: {{}}\ningress:\n- toPorts: [{{ports: [{ports}]}}]\n"
    (problem,) = _errors(_cnp("p", spec))
    assert "spec.ingress[0].toPorts[0].ports: too many ports, the max is 40" in problem


def test_invalid_regexes_in_http_rules_are_rejected() -> None:
    """http.go PortRuleHTTP.Sanitize compiles `path` and `method` as regexes; Envoy enforces
    them with RE2, which has no look-around."""
    spec = """
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: [{path: "/api/(v1"}, {method: "(?!DELETE).*"}]}
"""
    problems = _errors(_cnp("p", spec))
    assert any("http[0].path: invalid regex" in p for p in problems)
    assert any("http[1].method" in p and "not RE2" in p for p in problems)


def test_invalid_cidrs_and_excepts_outside_their_cidr_are_rejected() -> None:
    """rule_validation.go: "unable to parse CIDR"; CIDRRule.sanitize: "allow CIDR prefix %s does
    not contain exclude CIDR prefix %s"."""
    spec = """
endpointSelector: {}
ingress:
- fromCIDR: [10.0.0.300/8]
- fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]
"""
    problems = _errors(_cnp("p", spec))
    assert any("spec.ingress[0].fromCIDR[0]: unable to parse CIDR" in p for p in problems)
    assert any("except[0]: allow CIDR prefix 10.0.0.0/8 does not contain" in p for p in problems)


def test_unknown_entities_and_icmp_type_names_are_rejected() -> None:
    """rule_validation.go: "unsupported entity"; icmp.go: "ICMP type %s not found in %s"."""
    entities = _errors(_cnp("p", "endpointSelector: {}\ningress:\n- fromEntities: [everything]\n"))
    assert any("fromEntities[0]" in p and "'world'" in p for p in entities)
    icmp = "endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: PacketTooBig, family: IPv4}]}]\n"
    problems = _errors(_cnp("p", icmp))
    assert any("icmps[0].fields[0].type: ICMP type PacketTooBig not found in IPv4" in p for p in problems)


def test_a_port_is_a_string_as_in_the_crd() -> None:
    """l4.go PortProtocol.Port is a string ("80" or a name); the apiserver rejects an integer."""
    spec = "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80}]}]\n"
    (problem,) = _errors(_cnp("p", spec))
    assert "spec.ingress[0].toPorts[0].ports[0].port" in problem


def test_host_policies_reject_http_rules() -> None:
    """rule_validation.go Rule.Sanitize: "host policies do not support L7 rules yet"."""
    spec = """
nodeSelector: {}
ingress:
- toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]
"""
    problems = _errors(_cnp("h", spec, kind="CiliumClusterwideNetworkPolicy"))
    assert any("host policies do not support L7 rules yet" in p for p in problems)


# ---- subjects --------------------------------------------------------------------------------


def test_a_cnp_selects_only_pods_of_its_own_namespace() -> None:
    """utils.go ParseToCiliumRule: a CNP's endpointSelector always gets
    `k8s:io.kubernetes.pod.namespace=<policy namespace>`."""
    world, engine = _engine(_cnp("deny-all", "endpointSelector: {}\ningress: [{}]\n"))
    assert engine.evaluate_l4(_ctx(world, "shop/frontend", "other/client"), IN) is None
    assert not _l4(engine, world, "other/client", "shop/orders", IN).allowed


def test_a_cnp_cannot_select_another_namespace() -> None:
    """utils.go: "EndpointSelector always applies in namespace of the policy resource" -- a user
    match on `k8s:io.kubernetes.pod.namespace` is overridden (and analyze says so, NM304)."""
    spec = "endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: other}}\ningress: [{}]\n"
    world, engine = _engine(_cnp("p", spec))
    assert engine.evaluate_l4(_ctx(world, "shop/frontend", "other/client"), IN) is None
    assert engine.evaluate_l4(_ctx(world, "other/client", "shop/orders"), IN) is not None
    assert [f.code for f in engine.analyze()] == ["NM304"]


def test_a_clusterwide_policy_selects_pods_in_every_namespace() -> None:
    """cilium.md 1.3: a CCNP adds no namespace, so `endpointSelector: {}` selects every
    endpoint in every namespace."""
    world, engine = _engine(
        _cnp("all", "endpointSelector: {}\ningress: [{}]\n", kind="CiliumClusterwideNetworkPolicy")
    )
    assert not _l4(engine, world, "shop/orders", "other/client", IN).allowed
    assert not _l4(engine, world, "other/client", "shop/frontend", IN).allowed


@pytest.mark.parametrize(
    ("key", "selected"),
    [("app", True), ("any:app", True), ("k8s:app", True), ("container:app", False), ("reserved:app", False)],
)
def test_selector_keys_match_by_source(key: str, selected: bool) -> None:
    """pkg/labels/array.go: a key without a source is `any:` and matches a label of any source
    (`["k8s:foo=bar"].Has("any:foo")` is true); `k8s:app` matches only a k8s label."""
    world, engine = _engine(
        _cnp("p", f"endpointSelector: {{matchLabels: {{'{key}': orders}}}}\ningress: [{{}}]\n")
    )
    assert (engine.evaluate_l4(_ctx(world, "shop/frontend", "shop/orders"), IN) is not None) is selected


@pytest.mark.parametrize(
    ("expression", "selected"),
    [
        ("{key: tier, operator: In, values: [api, db]}", {"orders"}),
        ("{key: tier, operator: NotIn, values: [api]}", {"frontend", "reporting"}),
        ("{key: tier, operator: Exists}", {"frontend", "orders"}),
        ("{key: tier, operator: DoesNotExist}", {"reporting"}),
    ],
)
def test_match_expressions_use_kubernetes_operators(expression: str, selected: set[str]) -> None:
    """cilium.md 1.2: "`matchExpressions` use standard k8s LabelSelector operators: In, NotIn,
    Exists, DoesNotExist" (NotIn also selects pods without the label)."""
    world, engine = _engine(
        _cnp("p", f"endpointSelector: {{matchExpressions: [{expression}]}}\ningress: [{{}}]\n")
    )
    got = {
        name
        for name in ("frontend", "orders", "reporting")
        if engine.evaluate_l4(_ctx(world, "other/client", f"shop/{name}"), IN) is not None
    }
    assert got == selected


def test_no_policy_in_a_direction_means_no_say() -> None:
    """repository.go computePolicyEnforcementAndRules: a direction is enforced only if a rule
    with entries in that direction selects the endpoint."""
    world, engine = _engine(ORDERS_FROM_FRONTEND)
    assert engine.evaluate_l4(_ctx(world, "shop/orders", "shop/frontend"), OUT) is None
    assert engine.evaluate_l4(_ctx(world, "shop/frontend", "shop/reporting"), IN) is None


# ---- peers -----------------------------------------------------------------------------------


def test_cnp_from_endpoints_is_scoped_to_the_policy_namespace() -> None:
    """utils.go getEndpointSelector: without a namespace key, a CNP peer selector gets
    `k8s:io.kubernetes.pod.namespace=<policy namespace>`."""
    spec = "endpointSelector: {matchLabels: {app: orders}}\ningress:\n- fromEndpoints: [{}]\n"
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed
    assert not _l4(engine, world, "other/client", "shop/orders", IN).allowed


def test_naming_a_namespace_in_from_endpoints_crosses_namespaces() -> None:
    """language.rst / kubernetes.rst: a CNP reaches another namespace by naming
    `io.kubernetes.pod.namespace` in the peer selector."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: other, app: client}}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "other/client", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed


def test_namespace_label_keys_skip_the_namespace_scoping() -> None:
    """utils.go getEndpointSelector: a selector with an `io.cilium.k8s.namespace.labels.*` key
    gets no namespace match added."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: blue}}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "other/client", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed


def test_ccnp_from_endpoints_matches_pods_of_any_namespace_but_not_world() -> None:
    """utils.go getEndpointSelector: a clusterwide peer selector gets `namespace Exists`, "to
    make sure that we are only allowing traffic for cilium managed k8s endpoints"."""
    spec = "endpointSelector: {matchLabels: {app: orders}}\ningress:\n- fromEndpoints: [{}]\n"
    world, engine = _engine(_cnp("p", spec, kind="CiliumClusterwideNetworkPolicy"))
    assert _l4(engine, world, "other/client", "shop/orders", IN).allowed
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed
    assert not _l4(engine, world, "world", "shop/orders", IN).allowed


def test_a_reserved_key_leaves_the_peer_selector_unscoped() -> None:
    """utils.go: "The k8s prefix must not be added to reserved labels" -- a selector with a
    `reserved:` key is used as written (here it selects the outside world)."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {"reserved:world": ""}}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "world", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed


def test_absent_peer_field_with_ports_is_an_l3_wildcard() -> None:
    """cilium.md 1.4: peer field absent and `toPorts` present = any peer, world and host
    included, on those ports (l4.go "empty slice ... allows all at L3")."""
    spec = (
        'endpointSelector: {matchLabels: {app: orders}}\ningress:\n- toPorts: [{ports: [{port: "8080"}]}]\n'
    )
    world, engine = _engine(_cnp("p", spec))
    for src in ("world", "other/client", "shop/frontend"):
        assert _l4(engine, world, src, "shop/orders", IN).allowed
    assert not _l4(engine, world, "world", "shop/orders", IN, port=9100).allowed


def test_an_empty_peer_list_selects_nothing() -> None:
    """utils.go mergeEndpointSelectors: "Explicitly check for empty non-nil slices, it should not
    result in any identity being selected"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: []
  toPorts: [{ports: [{port: "8080"}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    d = _l4(engine, world, "shop/frontend", "shop/orders", IN)
    assert not d.allowed and d.drop_reason is DropReason.POLICY_DENIED


def test_an_empty_rule_denies_everything_in_its_direction() -> None:
    """cilium.md 1.4: rule `{}` "Allows nothing, but still marks the direction as
    policy-enforced", as the connectivity test's deny-all manifests use it."""
    world, engine = _engine(
        _cnp("deny-egress", "endpointSelector: {matchLabels: {app: frontend}}\negress: [{}]\n")
    )
    d = _l4(engine, world, "shop/frontend", "shop/orders", OUT)
    assert not d.allowed and d.drop_reason is DropReason.POLICY_DENIED
    assert engine.evaluate_l4(_ctx(world, "shop/orders", "shop/frontend"), IN) is None


def test_cidr_peers_match_outside_addresses_but_never_pods() -> None:
    """language.rst: "CIDR rules do not apply to traffic where both sides of the connection are
    either managed by Cilium ..." -- a pod inside the CIDR is not matched."""
    spec = "endpointSelector: {matchLabels: {app: orders}}\ningress:\n- fromCIDR: [0.0.0.0/0]\n"
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "world", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed


def test_cidr_set_except_carves_out_subnets() -> None:
    """language.rst fromCIDRSet: "an optional list of prefixes/CIDRs per source prefix/CIDR that
    are subnets of the source prefix/CIDR from which communication is not allowed"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.0/28]}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "ip:198.51.100.77", "shop/orders", IN).allowed
    assert not _l4(engine, world, "ip:198.51.100.7", "shop/orders", IN).allowed


def test_to_cidr_allows_egress_to_outside_addresses() -> None:
    """language.rst toCIDR: "List of destination prefixes/CIDRs that endpoints selected by
    endpointSelector are allowed to talk to"."""
    spec = "endpointSelector: {matchLabels: {app: frontend}}\negress:\n- toCIDR: [198.51.100.0/24]\n"
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "shop/frontend", "world", OUT).allowed
    assert not _l4(engine, world, "shop/frontend", "ip:203.0.113.1", OUT).allowed


@pytest.mark.parametrize(
    ("entity", "allowed"),
    [
        ("world", {"world"}),
        ("cluster", {"shop/frontend", "other/client", "shop/agent", "shop/far-agent"}),
        ("all", {"world", "shop/frontend", "other/client", "shop/agent", "shop/far-agent"}),
        ("host", {"shop/agent"}),
        ("remote-node", {"shop/far-agent"}),
    ],
)
def test_entities(entity: str, allowed: set[str]) -> None:
    """language.rst, Entities Based: `world` is everything outside the cluster; `cluster` all
    endpoints inside it (host included); `all` everything; `host` "the local host ... all
    containers running in host networking mode on the local host"; `remote-node` "Any node ...
    other than the local host" and its host-networking pods. Egress is checked, so the local-host
    ingress exception does not apply."""
    spec = f"endpointSelector: {{matchLabels: {{app: orders}}}}\negress:\n- toEntities: [{entity}]\n"
    world, engine = _engine(_cnp("p", spec))
    got = {
        dst
        for dst in ("world", "shop/frontend", "other/client", "shop/agent", "shop/far-agent")
        if _l4(engine, world, "shop/orders", dst, OUT).allowed
    }
    assert got == allowed


# ---- ports -----------------------------------------------------------------------------------


def test_ports_and_protocols() -> None:
    """l4.go: a port applies to its protocol only; `ANY` or an empty protocol expands to TCP,
    UDP and SCTP (rule.go mergeIngress "if p.Protocol.IsAny()")."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "5353", protocol: ANY}, {port: "9100"}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    cases = [(8080, Protocol.TCP, True), (8080, Protocol.UDP, False)]
    cases += [(5353, p, True) for p in (Protocol.TCP, Protocol.UDP, Protocol.SCTP)]
    cases += [(9100, Protocol.SCTP, True), (9100, Protocol.ICMP, False)]
    for port, protocol, allowed in cases:
        assert (
            _l4(engine, world, "shop/frontend", "shop/orders", IN, port=port, protocol=protocol).allowed
            is allowed
        )


def test_end_port_makes_a_range() -> None:
    """language.rst "Example Port Ranges": `port: "4096", endPort: 8191` covers the range."""
    spec = 'endpointSelector: {matchLabels: {app: orders}}\ningress:\n- toPorts: [{ports: [{port: "8000", endPort: 8100}]}]\n'
    world, engine = _engine(_cnp("p", spec))
    assert [
        _l4(engine, world, "shop/frontend", "shop/orders", IN, port=p).allowed
        for p in (7999, 8000, 8080, 8100, 8101)
    ] == [False, True, True, True, False]


def test_named_ports_resolve_against_the_destination_pod() -> None:
    """l4.go / language.rst: a port "can also be a port name"; it resolves against the
    destination pod's container ports -- on egress too."""
    spec = """
endpointSelector: {matchLabels: {app: frontend}}
egress:
- toEndpoints: [{matchLabels: {app: orders}}]
  toPorts: [{ports: [{port: HTTP, protocol: TCP}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "shop/frontend", "shop/orders", OUT, port=8080).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", OUT, port=9100).allowed


def test_l3_only_rules_allow_every_port_and_icmp_but_port_rules_block_icmp() -> None:
    """language.rst Layer 4: "If no layer 4 policy is specified for an endpoint, the endpoint is
    allowed to send and receive on all layer 4 ports and protocols including ICMP. If any layer 4
    policy is specified, then ICMP will be blocked"."""
    l3 = "endpointSelector: {matchLabels: {app: orders}}\ningress:\n- fromEndpoints: [{matchLabels: {app: frontend}}]\n"
    world, engine = _engine(_cnp("p", l3))
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN, port=12345).allowed
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN, port=8, protocol=Protocol.ICMP).allowed
    world, engine = _engine(ORDERS_FROM_FRONTEND)
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN, port=8, protocol=Protocol.ICMP).allowed


def test_icmp_rules_allow_the_listed_types_only() -> None:
    """icmp.go: an ICMP field becomes a port (the type) with protocol ICMP; names map to codes
    (`EchoRequest` = 8 for IPv4)."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  icmps: [{fields: [{type: EchoRequest}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    icmp = Protocol.ICMP
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN, port=8, protocol=icmp).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN, port=13, protocol=icmp).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN, port=8).allowed


# ---- deny, default deny, union -----------------------------------------------------------------


def test_deny_rules_take_precedence_over_allows() -> None:
    """language.rst: "Deny policies take precedence over allow policies, regardless of whether
    they are a Cilium Network Policy, a Clusterwide Cilium Network Policy ..."; the drop reason is
    POLICY_DENY (181, "Policy denied by denylist")."""
    deny = _cnp(
        "no-frontend",
        "endpointSelector: {}\ningressDeny:\n- fromEndpoints: [{matchLabels: {app: frontend}}]\n",
        kind="CiliumClusterwideNetworkPolicy",
    )
    world, engine = _engine(ORDERS_FROM_FRONTEND + deny)
    d = _l4(engine, world, "shop/frontend", "shop/orders", IN)
    assert not d.allowed and d.drop_reason is DropReason.POLICY_DENY
    assert d.policy == PolicyRef(Api.CILIUM, "CiliumClusterwideNetworkPolicy", "", "no-frontend")
    assert d.rule == 0 and d.reason == "denied by CiliumClusterwideNetworkPolicy no-frontend ingressDeny[0]"


def test_a_port_deny_blocks_exactly_that_port() -> None:
    """language.rst Deny Policies truth table: with an L3 allow and "L4 deny 80/TCP", curl to 81
    is allowed, curl to 80 denied, ping allowed."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
ingressDeny:
- toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN, port=81).allowed
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN, port=80).allowed
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN, port=8, protocol=Protocol.ICMP).allowed


def test_deny_only_policies_make_the_endpoint_default_deny() -> None:
    """language.rst: "Pods will enter default-deny mode as soon a single policy selects it";
    truth table: "deny 80 only (no allows)" denies 81 too (POLICY_DENIED, 133)."""
    spec = (
        'endpointSelector: {matchLabels: {app: orders}}\ningressDeny:\n- toPorts: [{ports: [{port: "80"}]}]\n'
    )
    world, engine = _engine(_cnp("p", spec))
    d = _l4(engine, world, "shop/frontend", "shop/orders", IN, port=81)
    assert not d.allowed and d.drop_reason is DropReason.POLICY_DENIED
    assert "default deny" in d.reason and "CiliumNetworkPolicy shop/p" in d.reason


def test_enable_default_deny_false_allows_unmatched_traffic_but_denies_still_apply() -> None:
    """repository.go: "If no rules enable default-deny, then all traffic is allowed except that
    explicitly denied by a Deny rule"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
enableDefaultDeny: {ingress: false}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: reporting}}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "other/client", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/reporting", "shop/orders", IN).allowed


def test_enable_default_deny_false_does_not_cover_l7() -> None:
    """intro.rst: "EnableDefaultDeny does not apply to layer-7 policy. Adding a layer-7 rule
    that does not include a layer-7 allow-all will cause drops, even when default-deny is
    explicitly disabled" (analyze warns: NM307)."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
enableDefaultDeny: {ingress: false}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
"""
    world, engine = _engine(_cnp("p", spec))
    post = HttpRequest("POST", "/", "orders")
    assert not _both(engine, world, "shop/frontend", "shop/orders", request=post)
    assert _both(engine, world, "shop/reporting", "shop/orders", request=post)
    assert "NM307" in [f.code for f in engine.analyze()]


def test_one_default_deny_policy_is_enough() -> None:
    """repository.go: "At least one default-deny rule is present. Then, policy is enabled"."""
    open_ = (
        "endpointSelector: {matchLabels: {app: orders}}\nenableDefaultDeny: {ingress: false}\ningress: [{}]\n"
    )
    world, engine = _engine(_cnp("open", open_) + ORDERS_FROM_FRONTEND)
    assert not _l4(engine, world, "other/client", "shop/orders", IN).allowed


def test_policies_combine_as_an_order_free_union() -> None:
    """cilium.md 1.4: "Every allow rule from every policy that selects the endpoint is ORed
    together"; the order of the manifests does not matter."""
    from_client = _cnp(
        "from-client",
        "endpointSelector: {matchLabels: {app: orders}}\n"
        "ingress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n",
        kind="CiliumClusterwideNetworkPolicy",
    )
    results = []
    for text in (ORDERS_FROM_FRONTEND + from_client, from_client + ORDERS_FROM_FRONTEND):
        world, engine = _engine(text)
        results.append(
            [
                _l4(engine, world, src, "shop/orders", IN).allowed
                for src in ("shop/frontend", "other/client", "world")
            ]
        )
    assert results == [[True, True, False], [True, True, False]]


def test_ingress_from_the_local_host_is_always_allowed() -> None:
    """cilium.md 1.9 (`--allow-localhost=auto`): "ingress from reserved:host is always allowed for
    non-host endpoints even under default deny, so kubelet probes work" -- the local host only,
    not another node."""
    world, engine = _engine(ORDERS_FROM_FRONTEND)
    assert _l4(engine, world, "shop/agent", "shop/orders", IN, port=9100).allowed
    assert not _l4(engine, world, "shop/far-agent", "shop/orders", IN, port=9100).allowed


def test_host_networking_pods_are_selected_by_their_node_identity_not_their_labels() -> None:
    """language.rst Entities: host "includes all containers running in host networking mode on
    the local host" -- such a pod has the host's identity, so a label selector does not select it
    as a peer; `reserved:host` or the `host` entity does."""
    by_labels = _cnp(
        "p",
        "endpointSelector: {matchLabels: {app: frontend}}\negress:\n- toEndpoints: [{matchLabels: {app: agent}}]\n",
    )
    world, engine = _engine(by_labels)
    assert not _l4(engine, world, "shop/frontend", "shop/agent", OUT).allowed
    by_reserved = _cnp(
        "p",
        "endpointSelector: {matchLabels: {app: frontend}}\n"
        "egress:\n- toEndpoints: [{matchLabels: {'reserved:host': ''}}]\n",
    )
    world, engine = _engine(by_reserved)
    assert _l4(engine, world, "shop/frontend", "shop/agent", OUT).allowed


def test_from_requires_narrows_every_allowed_peer() -> None:
    """language.rst: "fromRequires is a list of additional constraints which must be met in order
    for the selected endpoints to be reachable. These additional constraints do not grant access
    privileges by themselves"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromRequires: [{matchLabels: {tier: web}}]
- fromEndpoints: [{matchLabels: {app: frontend}}, {matchLabels: {app: reporting}}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed
    assert not _l4(engine, world, "shop/reporting", "shop/orders", IN).allowed


# ---- L7 ----------------------------------------------------------------------------------------

HTTP_POLICY = _cnp(
    "orders-http",
    """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http:
      - {method: GET, path: "/public"}
      - {method: "GET|HEAD", path: "/private", headers: ["X-Very-Secret-Token: 42"]}
      - {method: PUT, path: "/items/[0-9]+", host: "orders\\\\.shop"}
      - {method: POST, path: /hook, headerMatches: [{name: X-Sig}]}
      - {method: DELETE, headerMatches: [{name: X-Env, value: prod, mismatch: REPLACE}]}
      - {method: PATCH, headers: [X-Flag]}
""",
)


@pytest.mark.parametrize(
    ("request_", "allowed"),
    [
        (HttpRequest("GET", "/public"), True),
        (HttpRequest("GETX", "/public"), False),
        (HttpRequest("GET", "/public/x"), False),
        (HttpRequest("GET", "/public?x=1"), False),
        (HttpRequest("GET", "/private"), False),
        (HttpRequest("HEAD", "/private", headers={"x-very-secret-token": "42"}), True),
        (HttpRequest("GET", "/private", headers={"x-very-secret-token": "420"}), False),
        (HttpRequest("PUT", "/items/7", "orders.shop"), True),
        (HttpRequest("PUT", "/items/7", "orders.shop.evil"), False),
        (HttpRequest("PUT", "/items/x", "orders.shop"), False),
        (HttpRequest("POST", "/hook", headers={"x-sig": ""}), True),
        (HttpRequest("POST", "/hook"), False),
        (HttpRequest("DELETE", "/anything", headers={"x-env": "dev"}), True),
        (HttpRequest("PATCH", "/", headers={"x-flag": "1"}), True),
        (HttpRequest("PATCH", "/"), False),
    ],
)
def test_http_rules(request_: HttpRequest, allowed: bool) -> None:
    """cilium.md 1.6: method/path/host are regexes "matched against the full string, not as a
    partial match" (Envoy RegexMatcher; `:path` includes the query); `headers` "Name: value" is an
    exact value, "Name" presence; `headerMatches` without value is presence, and with `mismatch`
    "the rule still matches"; fields of one rule AND, rules OR ("A layer 7 request is permitted if
    at least one of the rules matches")."""
    world, engine = _engine(HTTP_POLICY)
    d = engine.evaluate_l7(_ctx(world, "shop/frontend", "shop/orders", request=request_), IN)
    assert d is not None and d.allowed is allowed


def test_an_l7_deny_is_a_403_access_denied_naming_the_policy() -> None:
    """cilium/proxy l7policy.cc: a request matching no rule gets `sendLocalReply(Forbidden)` with
    body "Access denied"."""
    world, engine = _engine(HTTP_POLICY)
    d = engine.evaluate_l7(_ctx(world, "shop/frontend", "shop/orders", request=_get("/admin")), IN)
    assert d is not None and not d.allowed and d.status == 403
    assert d.reason.startswith(
        "Access denied: GET /admin matches no http rule of CiliumNetworkPolicy shop/orders-http"
    )
    assert d.policy == PolicyRef(Api.CILIUM, "CiliumNetworkPolicy", "shop", "orders-http") and d.rule == 0


def test_l4_evaluation_of_an_l7_port_is_a_redirect() -> None:
    """cilium.md 1.11: "if any allow for key carries L7 and no L4-only allow for same selector/port
    -> REDIRECT to proxy" (Hubble verdict REDIRECTED)."""
    world, engine = _engine(HTTP_POLICY)
    d = _l4(engine, world, "shop/frontend", "shop/orders", IN)
    assert d.allowed and d.redirect
    assert d.reason.startswith("allowed at L4 by CiliumNetworkPolicy shop/orders-http ingress[0]")
    assert not _l4(engine, world, "shop/reporting", "shop/orders", IN).allowed


def test_empty_http_rule_allows_every_request() -> None:
    """cilium.md 1.6: "An empty `http: [{}]` means allow all"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{}]}}]
"""
    world, engine = _engine(_cnp("p", spec))
    d = engine.evaluate_l7(
        _ctx(world, "shop/frontend", "shop/orders", request=HttpRequest("DELETE", "/x")), IN
    )
    assert d is not None and d.allowed


@pytest.mark.parametrize("plain_ports", ['toPorts: [{ports: [{port: "8080", protocol: TCP}]}]', ""])
def test_an_l4_only_allow_of_the_same_peer_and_port_makes_l7_rules_ineffective(plain_ports: str) -> None:
    """language.rst: "If a layer 4 rule is specified in the policy, and a similar layer 4 rule
    with layer 7 rules is also specified, then the layer 7 portions of the latter rule will have
    no effect" (rule.go merges the L4-only rule as an L7 wildcard); analyze says so (NM302)."""
    plain = _cnp(
        "plain",
        f"endpointSelector: {{matchLabels: {{app: orders}}}}\n"
        f"ingress:\n- fromEndpoints: [{{matchLabels: {{app: frontend}}}}]\n  {plain_ports}\n",
    )
    world, engine = _engine(HTTP_POLICY + plain)
    ctx = _ctx(world, "shop/frontend", "shop/orders", request=_get("/admin"))
    l4 = engine.evaluate_l4(ctx, IN)
    l7 = engine.evaluate_l7(ctx, IN)
    assert l4 is not None and l4.allowed and not l4.redirect
    assert l7 is not None and l7.allowed and l7.policy is not None and l7.policy.name == "plain"
    assert [f.code for f in engine.analyze()] == ["NM302"]


def test_http_rules_of_several_policies_are_unioned() -> None:
    """language.rst: "If multiple toPorts rules with identical PortProtocol select an overlapping
    list of endpoints, then the layer 7 rules are combined together if they are of the same
    type"."""
    second = _cnp(
        "more-http",
        """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: /admin}]}}]
""",
    )
    world, engine = _engine(HTTP_POLICY + second)
    d = engine.evaluate_l7(_ctx(world, "shop/frontend", "shop/orders", request=_get("/admin")), IN)
    assert d is not None and d.allowed and d.policy is not None and d.policy.name == "more-http"


def test_l7_rules_apply_to_their_own_port_rule_only() -> None:
    """rule.go mergeIngress merges each PortRule's L7 rules with its own ports: another port of
    the same rule without `rules` stays L4-only."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules: {http: [{method: GET}]}
  - ports: [{port: "9100", protocol: TCP}]
"""
    world, engine = _engine(_cnp("p", spec))
    post = HttpRequest("POST", "/")
    assert not _both(engine, world, "shop/frontend", "shop/orders", port=8080, request=post)
    assert _both(engine, world, "shop/frontend", "shop/orders", port=9100, request=post)
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN, port=9100).redirect


# ---- decisions and the IR --------------------------------------------------------------------


def test_allow_decisions_name_api_policy_and_rule() -> None:
    """Decisions carry the policy and rule that decided (DESIGN.md: "the verdict WITH its
    reason"); the rule index is the position in the manifest's ingress/egress list."""
    text = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: multi, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: frontend}}
  egress: [{}]
- endpointSelector: {matchLabels: {app: orders}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: reporting}}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"""
    world, engine = _engine(text)
    d = _l4(engine, world, "shop/frontend", "shop/orders", IN)
    assert d.allowed and d.api is Api.CILIUM and d.rule == 1
    assert d.policy == PolicyRef(Api.CILIUM, "CiliumNetworkPolicy", "shop", "multi")
    assert d.reason == "allowed by CiliumNetworkPolicy shop/multi specs[1].ingress[1]"


def test_rules_compile_into_the_shared_ir() -> None:
    """ir.py: a Cilium rule is [peers clause, ports clause] plus an L7 `http` clause: one Match
    per peer, per port and per http rule."""
    _, engine = _engine(HTTP_POLICY)
    (policy,) = engine.policies
    assert policy.direction is IN and policy.default_deny and policy.ref.name == "orders-http"
    (rule,) = policy.rules
    assert [c.name for c in rule.clauses] == ["fromEndpoints", "toPorts", "http"]
    assert [len(c.matches) for c in rule.clauses] == [1, 1, 6]
    assert [c.layer for c in rule.clauses] == [Layer.L4, Layer.L4, Layer.L7]
    assert rule.path == "spec.ingress[0].toPorts[0]"


def test_subject_is_usable_through_the_ir() -> None:
    """ir.py Subject: `selects(endpoint)` answers for any endpoint, as the policy selects it."""
    world, engine = _engine(ORDERS_FROM_FRONTEND)
    (policy,) = engine.policies
    assert policy.subject is not None
    assert policy.subject.selects(_ep(world, "shop/orders"))
    assert not policy.subject.selects(_ep(world, "shop/frontend"))
    assert not policy.subject.selects(_ep(world, "world"))


def test_repeated_evaluation_returns_the_same_decision() -> None:
    """The per-flow outcome cache (Cilium's per-endpoint policy map) changes no verdict."""
    world, engine = _engine(ORDERS_FROM_FRONTEND + HTTP_POLICY)
    ctx = _ctx(world, "shop/frontend", "shop/orders")
    assert engine.evaluate_l4(ctx, IN) == engine.evaluate_l4(ctx, IN)
    other = _ctx(world, "shop/reporting", "shop/orders")
    assert engine.evaluate_l4(other, IN) == engine.evaluate_l4(other, IN)
    assert engine.evaluate_l4(ctx, IN) != engine.evaluate_l4(other, IN)


# ---- analyze -----------------------------------------------------------------------------------


def test_analyze_flags_selectors_that_select_nothing() -> None:
    """NM301: an endpointSelector that selects no workload enforces nothing (DESIGN.md:
    `nodemesh analyze` flags "selectors that match nothing")."""
    spec = "endpointSelector: {matchLabels: {app: payments}}\ningress: [{}]\n"
    _, engine = _engine(_cnp("typo", spec) + ORDERS_FROM_FRONTEND)
    (finding,) = engine.analyze()
    assert finding.code == "NM301" and finding.resource == "CiliumNetworkPolicy shop/typo"
    assert finding.file == "policies.yaml" and finding.line > 0


def test_analyze_flags_cidr_peers_that_can_only_be_pods() -> None:
    """NM303: language.rst "CIDR rules do not apply to traffic where both sides of the connection
    are either managed by Cilium ...": a fromCIDR inside the pod CIDR matches nothing."""
    spec = "endpointSelector: {matchLabels: {app: orders}}\ningress:\n- fromCIDR: [10.244.1.0/24]\n"
    world, engine = _engine(_cnp("p", spec))
    assert [f.code for f in engine.analyze()] == ["NM303"]
    assert not _l4(engine, world, "shop/frontend", "shop/orders", IN).allowed


def test_analyze_flags_peers_nodemesh_cannot_resolve() -> None:
    """NM305: toFQDNs needs the IPs Cilium's DNS proxy learnt ("toFQDNs only learns IPs from DNS
    answers that pass through this DNS proxy", cilium.md 1.7); nodemesh has none, so the rule
    matches no peer, and analyze says so instead of staying silent."""
    spec = """
endpointSelector: {matchLabels: {app: frontend}}
egress:
- toFQDNs: [{matchName: api.example.com}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
    world, engine = _engine(_cnp("p", spec))
    assert [f.code for f in engine.analyze()] == ["NM305"]
    assert not _l4(engine, world, "shop/frontend", "world", OUT, port=443).allowed


def test_analyze_notes_deprecated_requires() -> None:
    """NM306: cilium.md 1.1 "`fromRequires` is deprecated (`MaxItems=0` in 1.20-pre)"."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- fromRequires: [{matchLabels: {tier: web}}]
"""
    _, engine = _engine(_cnp("p", spec))
    assert [f.code for f in engine.analyze()] == ["NM306"]


def test_a_header_match_on_an_unreadable_secret_never_matches() -> None:
    """http.go HeaderMatch.Secret: "If the referred secret does not exist, and there is no
    "Value" specified, the match will fail" -- nodemesh reads no secrets."""
    spec = """
endpointSelector: {matchLabels: {app: orders}}
ingress:
- toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules: {http: [{headerMatches: [{name: X-Token, secret: {name: token}}]}]}
"""
    world, engine = _engine(_cnp("p", spec))
    request = HttpRequest("GET", "/", headers={"x-token": "anything"})
    d = engine.evaluate_l7(_ctx(world, "shop/frontend", "shop/orders", request=request), IN)
    assert d is not None and not d.allowed and d.status == 403


def test_dns_rules_allow_the_port_and_are_left_to_the_dns_proxy() -> None:
    """cilium.md 1.7: `rules.dns` is enforced by Cilium's DNS proxy (a denied query gets
    REFUSED); at L3/L4 the port is allowed and nodemesh says it does not filter queries."""
    spec = """
endpointSelector: {matchLabels: {app: frontend}}
egress:
- toEndpoints: [{matchLabels: {app: orders}}]
  toPorts: [{ports: [{port: "5353", protocol: UDP}], rules: {dns: [{matchName: shop.example}]}}]
"""
    world, engine = _engine(_cnp("p", spec))
    d = _l4(engine, world, "shop/frontend", "shop/orders", OUT, port=5353, protocol=Protocol.UDP)
    assert d.allowed and not d.redirect and any("DNS proxy" in n for n in d.notes)
    assert not _l4(
        engine, world, "shop/frontend", "shop/orders", OUT, port=5353, protocol=Protocol.TCP
    ).allowed
