"""Istio AuthorizationPolicy / PeerAuthentication / RequestAuthentication semantics, per view.

Every test states one upstream rule; sources are cited as in /work/shared/reference/
istio-ambient.md: API = istio/api `security/v1beta1/*.proto`, ZT = istio/ztunnel `src/rbac.rs`,
IS = istio/istio (`pilot/pkg/serviceregistry/ambient/authorization.go` `handleRule`,
`pilot/pkg/security/authz/model/model.go`).
"""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.policy.conditions import CidrCondition, Side, parse_network
from nodemesh.policy.decision import Decision, DropReason, Verdict
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Jwt
from nodemesh.policy.ir import Action, Api, Clause, Condition, Direction, Match, Policy, PolicyRef, Rule
from nodemesh.policy.istio import (
    Attribute,
    IstioEngine,
    IstioView,
    compile_rules,
    first_match,
    make_condition,
    match_compiled,
)

NODE, WAYPOINT, SIDECAR = IstioView.NODE_PROXY, IstioView.WAYPOINT, IstioView.SIDECAR

BASE = """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: test}
spec: {mode: MODE}
---
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ns, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: ns, labels: {app: admin}}
spec: {serviceAccountName: admin, containers: [{name: c}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ns, labels: {app: server, tier: back}}
spec:
  serviceAccountName: server
  containers: [{name: c, ports: [{containerPort: 80, name: plain}, {containerPort: 8080, name: web}]}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: other, labels: {app: stranger}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: ns}
spec:
  selector: {app: server}
  ports: [{name: web, port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ns, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def build(*docs: str, mode: str = "ambient") -> World:
    text = BASE.replace("MODE", mode) + "".join("---\n" + textwrap.dedent(d).strip() + "\n" for d in docs)
    return World.build(parse_documents(load_text(text, "test.yaml")))


def ap(name: str, spec: str, ns: str = "ns", annotations: str = "") -> str:
    meta = (
        f"{{name: {name}, namespace: {ns}"
        + (f", annotations: {{{annotations}}}" if annotations else "")
        + "}"
    )
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec:\n{body}\n"


def pa(name: str, spec: str, ns: str = "ns") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


def ra(name: str, spec: str, ns: str = "ns") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


def flow(
    world: World,
    src: str = "ns/client",
    dst: str = "ns/server",
    port: int = 8080,
    *,
    mtls: bool = True,
    method: str | None = None,
    path: str = "/",
    host: str = "server.ns.svc.cluster.local",
    headers: dict[str, str] | None = None,
    jwt: Jwt | None = None,
) -> FlowContext:
    sns, sname = src.split("/")
    dns, dname = dst.split("/")
    s = world.find_workloads(sns, sname)[0]
    d = world.find_workloads(dns, dname)[0]
    request = None
    if method is not None:
        request = HttpRequest(method, path, host, {k.lower(): v for k, v in (headers or {}).items()}, jwt)
    return FlowContext(world.endpoint(s, mtls=mtls), world.endpoint(d), port, request=request)


def decide(
    world: World, ctx: FlowContext, view: IstioView = NODE, *, service: bool = True
) -> Decision | None:
    engine = IstioEngine(world)
    if view is WAYPOINT:
        svc = world.services[("ns", "server")] if service else None
        return engine.evaluate(ctx, view, waypoint=world.waypoints[("ns", "waypoint")], service=svc)
    return engine.evaluate(ctx, view)


def verdict(world: World, ctx: FlowContext, view: IstioView = NODE, *, service: bool = True) -> str:
    d = decide(world, ctx, view, service=service)
    return "none" if d is None else d.verdict.value.lower()


def findings(world: World, code: str) -> list[Finding]:
    return [f for f in IstioEngine(world).analyze() if f.code == code]


# ---- scope and attachment (reference §4.2) ---------------------------------------------------------


def test_no_policy_means_no_say() -> None:
    """Istio: "If there are no ALLOW policies for the workload, allow the request" - with no
    policy at all the engine has no say (None), so other APIs decide."""
    assert decide(build(), flow(build())) is None


def test_selector_policy_applies_only_to_selected_workloads() -> None:
    """API: "The selector will match with workloads in the same namespace as the authorization policy"."""
    w = build(ap("deny-all", "selector: {matchLabels: {app: server}}\naction: DENY\nrules: [{}]"))
    assert verdict(w, flow(w)) == "deny"
    assert verdict(w, flow(w, dst="ns/admin")) == "none"


def test_namespace_wide_policy_without_selector() -> None:
    """API: "If the selector and the targetRef are not set, the selector will match all workloads"
    (ztunnel scope NAMESPACE) - in the policy's namespace only."""
    w = build(ap("deny-all", "action: DENY\nrules: [{}]"))
    assert verdict(w, flow(w)) == "deny" and verdict(w, flow(w, dst="ns/admin")) == "deny"
    assert verdict(w, flow(w, dst="other/stranger")) == "none"


def test_root_namespace_policy_is_mesh_wide() -> None:
    """API: "If set to root namespace, the policy applies to all namespaces in a mesh" (GLOBAL)."""
    w = build(ap("deny-all", "action: DENY\nrules: [{}]", ns="istio-system"))
    assert verdict(w, flow(w, dst="other/stranger")) == "deny" and verdict(w, flow(w)) == "deny"


def test_root_namespace_selector_matches_in_every_namespace() -> None:
    """API: "If the authorization policy is in the root namespace, the selector will additionally
    match with workloads in all namespaces"."""
    w = build(
        ap("deny", "selector: {matchLabels: {app: stranger}}\naction: DENY\nrules: [{}]", ns="istio-system")
    )
    assert verdict(w, flow(w, dst="other/stranger")) == "deny"
    assert verdict(w, flow(w)) == "none"


def test_selector_in_another_namespace_does_not_apply() -> None:
    """API: the selector matches workloads in the policy's own namespace (unless root)."""
    w = build(ap("deny", "selector: {matchLabels: {app: server}}\naction: DENY\nrules: [{}]", ns="other"))
    assert verdict(w, flow(w)) == "none"


TARGETED_DENY = """
targetRefs: [{kind: Service, group: '', name: server}]
action: DENY
rules: [{}]
"""


def test_target_refs_policies_are_not_sent_to_the_node_proxy() -> None:
    """IS convertAuthorizationPolicy: "TargetRef is not intended for ztunnel" (returns nil)."""
    w = build(ap("deny", TARGETED_DENY))
    assert verdict(w, flow(w), NODE) == "none"
    assert verdict(w, flow(w), SIDECAR) == "none"
    assert verdict(w, flow(w, method="GET"), WAYPOINT) == "deny"


def test_waypoints_ignore_selector_policies() -> None:
    """API: "Waypoint proxies are required to use this field [targetRefs] for policies to apply;
    `selector` policies will be ignored"."""
    w = build(ap("deny", "action: DENY\nrules: [{}]"))
    assert verdict(w, flow(w, method="GET"), WAYPOINT) == "none"


@pytest.mark.parametrize(
    ("target", "ns", "applies"),
    [
        ("{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}", "ns", True),
        ("{kind: Gateway, group: gateway.networking.k8s.io, name: elsewhere}", "ns", False),
        ("{kind: Service, group: '', name: server}", "ns", True),
        (
            "{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}",
            "istio-system",
            True,
        ),
        ("{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}", "ns", False),
    ],
)
def test_waypoint_attachment(target: str, ns: str, applies: bool) -> None:
    """Reference §4.2: targetRefs attach to a Gateway (the waypoint), a Service (traffic to it via
    its waypoint), or GatewayClass istio-waypoint from the root namespace (every waypoint)."""
    w = build(ap("deny", f"targetRefs: [{target}]\naction: DENY\nrules: [{{}}]", ns=ns))
    assert verdict(w, flow(w, method="GET"), WAYPOINT) == ("deny" if applies else "none")


def test_service_policy_needs_the_service() -> None:
    """Reference §4.2: a Service targetRef applies to traffic addressed to that Service; pod-addressed
    traffic through a workload waypoint does not carry it."""
    w = build(ap("deny", TARGETED_DENY))
    assert verdict(w, flow(w, method="GET"), WAYPOINT, service=False) == "none"


# ---- evaluation order (reference §4.1) ---------------------------------------------------------------

ALLOW_CLIENT = """
selector: {matchLabels: {app: server}}
rules:
- from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]
"""


def test_deny_wins_over_allow() -> None:
    """API: "If there are any DENY policies that match the request, deny the request" (before ALLOW)."""
    w = build(ap("allow", ALLOW_CLIENT), ap("deny", "action: DENY\nrules: [{}]"))
    d = decide(w, flow(w))
    assert d is not None and not d.allowed and d.policy is not None and d.policy.name == "deny"
    assert d.drop_reason is DropReason.POLICY_DENY and d.rule == 0
    assert d.reason.startswith("explicitly denied by: ns/deny")


def test_no_allow_policy_allows() -> None:
    """API: "If there are no ALLOW policies for the workload, allow the request"."""
    w = build(ap("deny", "action: DENY\nrules: [{from: [{source: {principals: [nobody]}}]}]"))
    d = decide(w, flow(w))
    assert d is not None and d.allowed and d.api is Api.ISTIO and d.policy is None


def test_matching_allow_allows_and_names_the_rule() -> None:
    """API: "If any of the ALLOW policies match the request, allow the request"."""
    w = build(ap("allow", ALLOW_CLIENT))
    d = decide(w, flow(w))
    assert d is not None and d.allowed and d.policy is not None and d.policy.name == "allow" and d.rule == 0


def test_allow_policies_exist_but_none_allowed() -> None:
    """API: "5. Deny the request." ZT: the error is "allow policies exist, but none allowed"."""
    w = build(ap("allow", ALLOW_CLIENT), ap("allow2", ALLOW_CLIENT.replace("client", "nobody")))
    d = decide(w, flow(w, src="ns/admin"))
    assert d is not None and not d.allowed and d.drop_reason is DropReason.POLICY_DENIED
    assert "allow policies exist, but none allowed" in d.reason
    assert "ns/allow" in d.reason and "ns/allow2" in d.reason
    assert d.status is None  # the node proxy refuses the connection; no HTTP status


def test_empty_spec_denies_everything() -> None:
    """API: `spec: {}` "allows nothing and effectively denies all requests"."""
    w = build(ap("allow-nothing", "{}"))
    assert verdict(w, flow(w)) == "deny"


def test_empty_rule_allows_everything() -> None:
    """API: `rules: [{}]` "allows all requests"; "An empty rule is always matched"."""
    w = build(ap("allow-all", "rules: [{}]"), ap("allow-nothing", "{}"))
    assert verdict(w, flow(w)) == "allow"


def test_custom_is_never_silently_dropped() -> None:
    """API: CUSTOM is evaluated first by an external authorizer; nodemesh has none, so it says so
    on every decision (never a silent allow)."""
    w = build(ap("ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"))
    for view in (NODE, SIDECAR):
        d = decide(w, flow(w), view)
        assert d is not None and d.allowed
        assert any("CUSTOM policy ns/ext is not enforced by nodemesh" in n for n in d.notes)


def test_audit_never_changes_the_verdict() -> None:
    """API: "AUDIT policies do not affect whether requests are allowed or denied"."""
    w = build(ap("audit", "action: AUDIT\nrules: [{}]"), ap("allow", ALLOW_CLIENT))
    d = decide(w, flow(w, method="GET"), SIDECAR)
    assert d is not None and d.allowed and any("AUDIT ns/audit matched" in n for n in d.notes)
    d = decide(w, flow(w, src="ns/admin", method="GET"), SIDECAR)
    assert d is not None and not d.allowed and any("AUDIT ns/audit matched" in n for n in d.notes)


def test_audit_is_not_evaluated_by_the_node_proxy() -> None:
    """Reference §4.2: "CUSTOM and AUDIT policies are not sent to ztunnel at all"."""
    w = build(ap("audit", "action: AUDIT\nrules: [{}]"))
    d = decide(w, flow(w), NODE)
    assert d is not None and d.allowed and any("not evaluated at the node proxy" in n for n in d.notes)


def test_dry_run_deny_only_notes() -> None:
    """API: the `istio.io/dry-run` annotation dry-runs "the policy without actually enforcing it"."""
    w = build(ap("deny", "action: DENY\nrules: [{}]", annotations="istio.io/dry-run: 'true'"))
    d = decide(w, flow(w))
    assert d is not None and d.allowed and "dry-run DENY ns/deny would deny (rule 0)" in d.notes


def test_dry_run_allow_is_not_an_allow_policy() -> None:
    """ZT assert_rbac: dry-run ALLOWs are only logged; with no real ALLOW the request is allowed."""
    w = build(ap("allow", ALLOW_CLIENT, annotations="istio.io/dry-run: 'true'"))
    d = decide(w, flow(w, src="ns/admin"))
    assert d is not None and d.allowed and "dry-run ALLOW ns/allow would not allow" in d.notes


# ---- the ztunnel matcher (reference §4.5) ----------------------------------------------------------


def test_rules_or_clauses_and() -> None:
    """ZT: "If ANY rule matches it's a match"; "If ALL clauses match, it is a match"."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]
              to: [{operation: {ports: ['80']}}]
            - from: [{source: {principals: [cluster.local/ns/ns/sa/admin]}}]
            """,
        )
    )
    assert verdict(w, flow(w, port=80)) == "allow"
    assert verdict(w, flow(w, port=8080)) == "deny"  # client: rule 0 needs port 80
    assert verdict(w, flow(w, src="ns/admin", port=8080)) == "allow"  # rule 1


def test_sources_or_fields_and() -> None:
    """API Source: "Fields in the source are ANDed together"; sources of one rule are ORed."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - from:
              - source: {principals: [cluster.local/ns/ns/sa/client], ipBlocks: [10.9.0.0/16]}
              - source: {principals: [cluster.local/ns/ns/sa/admin]}
            """,
        )
    )
    assert verdict(w, flow(w)) == "deny"  # client: principal yes, ip no
    assert verdict(w, flow(w, src="ns/admin")) == "allow"


def test_positive_and_negative_lists() -> None:
    """ZT matches_internal: positive empty or any matches, AND negative empty or none matches."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - from: [{source: {namespaces: [ns], notPrincipals: [cluster.local/ns/ns/sa/admin]}}]
            """,
        )
    )
    assert verdict(w, flow(w)) == "allow"
    assert verdict(w, flow(w, src="ns/admin")) == "deny"


@pytest.mark.parametrize(
    ("field", "value", "client", "admin"),
    [
        ("principals", "cluster.local/ns/ns/sa/client", True, False),
        ("principals", "cluster.local/ns/ns/*", True, True),
        ("principals", "*/sa/admin", False, True),
        ("principals", "*", True, True),
        ("principals", "spiffe://cluster.local/ns/ns/sa/client", False, False),
        ("namespaces", "ns", True, True),
        ("namespaces", "n*", True, True),
        ("namespaces", "other", False, False),
        ("serviceAccounts", "ns/admin", False, True),
        ("serviceAccounts", "client", True, False),
        ("trustDomains", "cluster.local", True, True),
    ],
)
def test_string_and_identity_matching(field: str, value: str, client: bool, admin: bool) -> None:
    """API Rule: exact, "abc*" prefix, "*abc" suffix, "*" presence; ZT: principals are matched
    without spiffe:// ("spiffe://x" never matches); namespaces come from the peer certificate;
    serviceAccounts are `ns/sa` or `sa` in the policy's namespace (IS stringToServiceAccountMatch)."""
    w = build(ap("allow", f"rules:\n- from: [{{source: {{{field}: ['{value}']}}}}]"))
    assert verdict(w, flow(w), SIDECAR) == ("allow" if client else "deny")
    assert verdict(w, flow(w, src="ns/admin"), SIDECAR) == ("allow" if admin else "deny")


def test_plaintext_never_matches_principals_or_namespaces() -> None:
    """ZT: a connection without identity never matches `principals`/`namespaces` (presence too)."""
    for field in ("principals: ['*']", "namespaces: ['*']", "namespaces: [ns]", "serviceAccounts: [client]"):
        w = build(ap("allow", f"rules:\n- from: [{{source: {{{field}}}}}]"))
        assert verdict(w, flow(w, mtls=False)) == "deny", field
        assert verdict(w, flow(w, mtls=True)) == "allow", field


def test_plaintext_satisfies_not_principals_and_not_namespaces() -> None:
    """ZT: plaintext "does satisfy notPrincipals and notNamespaces" (the STRICT conversion
    `notPrincipals: [presence]` relies on it)."""
    for field in ("notPrincipals: ['*']", "notNamespaces: ['*']"):
        w = build(ap("deny", f"action: DENY\nrules:\n- from: [{{source: {{{field}}}}}]"))
        assert verdict(w, flow(w, mtls=False)) == "deny", field
        assert verdict(w, flow(w, mtls=True)) == "allow", field


def test_namespaces_come_from_the_identity_not_the_pod() -> None:
    """API Source.namespaces: "derived from the peer certificate" - the waypoint's relayed
    connection carries the waypoint's namespace, not the client pod's."""
    w = build(ap("allow", "rules:\n- from: [{source: {namespaces: [ns]}}]"))
    ctx = flow(w)
    relayed = ctx.with_src(
        type(ctx.src)(
            ip=ctx.src.ip, namespace="ns", workload="client", principal="cluster.local/ns/gw/sa/waypoint"
        )
    )
    assert verdict(w, relayed) == "deny"


def test_ip_blocks() -> None:
    """API Source.ipBlocks: "populated from the source address of the IP packet"; single IP or CIDR."""
    w = build(ap("allow", "rules:\n- from: [{source: {ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.3]}}]"))
    assert verdict(w, flow(w)) == "allow"
    assert verdict(w, flow(w, src="ns/admin")) == "deny"  # 10.0.0.3 excluded
    assert verdict(w, flow(w, src="other/stranger")) == "deny"  # 10.0.1.1 outside


def test_ports_are_target_ports_at_the_node_proxy() -> None:
    """Reference §4.5: "conn.dst is podIP:targetPort ... `ports` therefore match container
    (target) ports" - the Service port 80 maps to 8080."""
    w = build(ap("allow", "rules:\n- to: [{operation: {ports: ['8080']}}]"))
    assert verdict(w, flow(w, port=8080)) == "allow"
    assert verdict(w, flow(w, port=80)) == "deny"


def test_ports_are_service_ports_at_the_waypoint() -> None:
    """IS model.go AmbientDestinationPortAdapations: the waypoint gets its port from the
    inbound-vip listener, i.e. the Service port (80 here, target port 8080)."""
    w = build(
        ap(
            "allow",
            "targetRefs: [{kind: Service, group: '', name: server}]\nrules:\n- to: [{operation: {ports: ['80']}}]",
        )
    )
    assert verdict(w, flow(w, port=8080, method="GET"), WAYPOINT) == "allow"
    w = build(
        ap(
            "allow",
            "targetRefs: [{kind: Service, group: '', name: server}]\nrules:\n- to: [{operation: {ports: ['8080']}}]",
        )
    )
    assert verdict(w, flow(w, port=8080, method="GET"), WAYPOINT) == "deny"


def test_l4_when_keys() -> None:
    """IS handleRule: `when` source.ip, source.namespace, source.principal, destination.ip and
    destination.port are enforced by the node proxy, one clause each (ANDed)."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - when:
              - {key: source.ip, values: [10.0.0.0/24]}
              - {key: destination.port, notValues: ['80']}
              - {key: source.principal, values: ['*/sa/client']}
              - {key: destination.ip, values: [10.0.0.2]}
            """,
        )
    )
    assert verdict(w, flow(w, port=8080)) == "allow"
    assert verdict(w, flow(w, port=80)) == "deny"
    assert verdict(w, flow(w, src="ns/admin")) == "deny"


def _conn(principal: str | None, src: str, dst: str, port: int) -> FlowContext:
    return FlowContext(
        Endpoint(ip=ipaddress.ip_address(src), principal=principal),
        Endpoint(ip=ipaddress.ip_address(dst), namespace="namespace", workload="w"),
        port,
    )


PLAINTEXT = _conn(None, "127.0.0.1", "127.0.0.2", 8080)
TLS = _conn("td/ns/namespace/sa/account", "127.0.0.1", "127.0.0.2", 8080)
TLS_ALT = _conn("td-alt/ns/ns-alt/sa/sa=alt", "127.0.0.3", "127.0.0.4", 9090)


def _pol(rules: tuple[Rule, ...]) -> Policy:
    return Policy(
        PolicyRef(Api.ISTIO, "AuthorizationPolicy", "namespace", "p"), Direction.INGRESS, Action.ALLOW, rules
    )


def _one_match(cond: Condition) -> Policy:
    return _pol((Rule(0, "r", (Clause("c", (Match((cond,)),)),)),))


def _cond(attribute: Attribute, values: list[str], negated: bool) -> Condition:
    return make_condition(
        attribute, values, negated=negated, label="t", node_proxy=True, policy_namespace="x"
    )


def _cidr_cond(side: Side, value: str, negated: bool) -> Condition:
    return CidrCondition((parse_network(value),), side=side, negated=negated)


@pytest.mark.parametrize(
    ("name", "cond", "plaintext", "tls", "tls_alt"),
    [
        ("namespaces", _cond(Attribute.NAMESPACE, ["namespace"], False), False, True, False),
        ("not_namespaces", _cond(Attribute.NAMESPACE, ["namespace"], True), True, False, True),
        (
            "service_accounts",
            _cond(Attribute.SERVICE_ACCOUNT, ["namespace/account"], False),
            False,
            True,
            False,
        ),
        (
            "not_service_accounts",
            _cond(Attribute.SERVICE_ACCOUNT, ["namespace/account"], True),
            True,
            False,
            True,
        ),
        ("principals", _cond(Attribute.PRINCIPAL, ["td/ns/namespace/sa/account"], False), False, True, False),
        (
            "not_principals",
            _cond(Attribute.PRINCIPAL, ["td/ns/namespace/sa/account"], True),
            True,
            False,
            True,
        ),
        ("source_ips", _cidr_cond(Side.SOURCE, "127.0.0.1/32", False), True, True, False),
        ("not_source_ips", _cidr_cond(Side.SOURCE, "127.0.0.1/32", True), False, False, True),
        ("destination_ips", _cidr_cond(Side.DESTINATION, "127.0.0.2/32", False), True, True, False),
        ("not_destination_ips", _cidr_cond(Side.DESTINATION, "127.0.0.2/32", True), False, False, True),
        ("cidr_range", _cidr_cond(Side.DESTINATION, "127.0.0.1/24", False), True, True, True),
        ("destination_ports", _cond(Attribute.PORT, ["8080"], False), True, True, False),
        ("not_destination_ports", _cond(Attribute.PORT, ["8080"], True), False, False, True),
    ],
)
def test_ztunnel_rbac_truth_tables(
    name: str, cond: Condition, plaintext: bool, tls: bool, tls_alt: bool
) -> None:
    """ZT src/rbac.rs `rbac_test!` tables, case by case (plaintext_conn, tls_conn, tls_conn_alt)."""
    policy = _one_match(cond)
    got = tuple(first_match(policy, c) is not None for c in (PLAINTEXT, TLS, TLS_ALT))
    assert got == (plaintext, tls, tls_alt), name


def test_ztunnel_rbac_empty_policy() -> None:
    """ZT rbac_empty_policy: a rule with one empty Match never matches (the IR spells ztunnel's
    empty Match `void`); a rule with an empty clause matches; a rule with no clauses matches; a
    policy with no rules never matches."""
    assert first_match(_pol((Rule(0, "r", (Clause("c", (Match((), void=True),)),)),)), PLAINTEXT) is None
    assert first_match(_pol((Rule(0, "r", (Clause("c", ()),)),)), PLAINTEXT) is not None
    assert first_match(_pol((Rule(0, "r", ()),)), PLAINTEXT) is not None
    assert first_match(_pol(()), PLAINTEXT) is None


def test_ztunnel_rbac_nesting() -> None:
    """ZT rbac_nesting: [[ns a | ns b], [port 80]] - either namespace, and the port."""
    ns = Clause(
        "from",
        (
            Match((_cond(Attribute.NAMESPACE, ["a"], False),)),
            Match((_cond(Attribute.NAMESPACE, ["b"], False),)),
        ),
    )
    port = Clause("to", (Match((_cond(Attribute.PORT, ["80"], False),)),))
    policy = _pol((Rule(0, "r", (ns, port)),))
    for principal, p, ok in (
        ("td/ns/a/sa/account", 80, True),
        ("td/ns/b/sa/account", 80, True),
        ("td/ns/bad/sa/account", 80, False),
        ("td/ns/b/sa/account", 12345, False),
    ):
        assert (first_match(policy, _conn(principal, "127.0.0.1", "127.0.0.2", p)) is not None) is ok


def test_empty_match_is_skipped_not_matched() -> None:
    """ZT matches(): `if mg.is_empty() { continue }` - an empty Match never matches, so a clause of
    empty matches is false (unlike an empty clause, which is true)."""
    w = build(ap("deny", "action: DENY\nrules:\n- to: [{operation: {methods: [GET]}}]"))
    assert verdict(w, flow(w)) == "allow"


# ---- the node proxy's L4 projection (reference §4.6) ---------------------------------------------


def test_allow_groups_l7_rule_dropped_l4_rule_kept() -> None:
    """IS handleRule: "L7 policies never match for ALLOW" - a rule with any L7 attribute is dropped
    whole; other rules keep working (golden allow-groups)."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - from: [{source: {principals: [cluster.local/ns/ns/sa/admin]}}]
              to: [{operation: {methods: [GET]}}]
            - from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]
            """,
        )
    )
    assert verdict(w, flow(w)) == "allow"
    d = decide(w, flow(w, src="ns/admin"))
    assert d is not None and not d.allowed
    assert any(
        "rule 0 of ALLOW ns/allow dropped at the node proxy: it uses L7 fields (methods)" in n
        and "attach a waypoint" in n
        for n in d.notes
    )


def test_allow_with_only_l7_rules_denies_everything_at_the_node_proxy() -> None:
    """IS status: "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be
    more restrictive than requested." (TestAuthorizationL7 expects CheckDeny without a waypoint)."""
    w = build(ap("allow", "rules:\n- to: [{operation: {methods: [GET], paths: ['/api*']}}]"))
    d = decide(w, flow(w))
    assert d is not None and not d.allowed and d.drop_reason is DropReason.POLICY_DENIED
    assert any("it allows nothing here" in n for n in d.notes)
    # the same request at a sidecar-semantics proxy that sees it is allowed
    assert verdict(w, flow(w, method="GET", path="/api/x"), SIDECAR) == "allow"


def test_deny_groups_l7_only_deny_is_a_no_op() -> None:
    """IS: "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at
    ztunnel and will have no effect" (golden deny-groups, istio/istio#61126)."""
    w = build(ap("deny", "action: DENY\nrules:\n- to: [{operation: {methods: [POST]}}]"))
    d = decide(w, flow(w))
    assert d is not None and d.allowed
    assert any("no enforceable rule at the node proxy" in n for n in d.notes)
    assert any("it is a no-op" in n for n in d.notes)


def test_deny_with_l4_from_and_l7_when_is_a_no_op() -> None:
    """Reference §4.6: "DENY policy with L4 From and L7 When is a no-op due to AND empty clause"."""
    w = build(
        ap(
            "deny",
            """
            action: DENY
            rules:
            - from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]
              when: [{key: 'request.headers[x-evil]', values: ['1']}]
            """,
        )
    )
    assert verdict(w, flow(w)) == "allow"
    # with the request seen (sidecar semantics) it does deny
    assert verdict(w, flow(w, method="GET", headers={"x-evil": "1"}), SIDECAR) == "deny"


def test_deny_keeps_l4_fields_of_a_mixed_source_and_denies_more() -> None:
    """Reference §4.6: "If a Match keeps some L4 field (principals + requestPrincipals in one
    source -> only principals kept), the DENY is broader than written"."""
    w = build(
        ap(
            "deny",
            """
            action: DENY
            rules:
            - from: [{source: {principals: [cluster.local/ns/ns/sa/client], requestPrincipals: ['iss/bad']}}]
            """,
        )
    )
    d = decide(w, flow(w))
    assert d is not None and not d.allowed and d.drop_reason is DropReason.POLICY_DENY
    assert any("it matches more than written" in n for n in d.notes)


def test_deny_source_made_only_of_l7_fields_no_longer_matches() -> None:
    """ZT: an emptied Match is skipped, so a source made only of L7 fields can no longer match
    while the clause's other sources still can (the DENY is weaker than written)."""
    w = build(
        ap(
            "deny",
            """
            action: DENY
            rules:
            - from:
              - source: {principals: [cluster.local/ns/ns/sa/admin]}
              - source: {requestPrincipals: ['*']}
            """,
        )
    )
    assert verdict(w, flow(w)) == "allow"
    assert verdict(w, flow(w, src="ns/admin")) == "deny"


def test_trust_domains_are_not_enforced_by_the_node_proxy() -> None:
    """Reference §4.6 (trustDomains gap): ztunnel's Match has no trust-domain field. "An ALLOW rule
    with only trustDomains never matches; a DENY rule with only trustDomains is a no-op." istiod
    (newest source) reports them as unsupported, so an ALLOW rule using them is dropped."""
    w = build(ap("allow", "rules:\n- from: [{source: {trustDomains: [cluster.local], principals: ['*']}}]"))
    d = decide(w, flow(w))
    assert d is not None and not d.allowed
    assert any("trustDomains" in n and "no trust-domain field" in n for n in d.notes)
    w = build(ap("deny", "action: DENY\nrules:\n- from: [{source: {trustDomains: [cluster.local]}}]"))
    assert verdict(w, flow(w)) == "allow"
    assert verdict(w, flow(w, method="GET"), SIDECAR) == "deny"


def test_l7_when_keys_for_the_node_proxy() -> None:
    """IS l4WhenAttributes: any other key (request.*, connection.sni, source.serviceAccount,
    source.trustDomain, remote.ip) is L7 for ztunnel."""
    for key in ("remote.ip", "source.serviceAccount", "connection.sni", "request.auth.claims[groups]"):
        value = "10.0.0.0/8" if key == "remote.ip" else "ns/client"
        w = build(ap("allow", f"rules:\n- when: [{{key: '{key}', values: ['{value}']}}]"))
        d = decide(w, flow(w))
        assert d is not None and not d.allowed, key
        assert any(f"L7 fields (when {key})" in n for n in d.notes), key


def test_the_node_proxy_ignores_the_request() -> None:
    """Reference §4.2: ztunnel sees no request; the L7 projection applies even if a request is given."""
    w = build(ap("allow", "rules:\n- to: [{operation: {methods: [GET]}}]"))
    assert verdict(w, flow(w, method="GET"), NODE) == "deny"


# ---- the waypoint and the sidecar view (full L7) ----------------------------------------------------

L7_ALLOW = """
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
rules:
- to: [{operation: {methods: [GET, HEAD], paths: ['/api/*', '/items/{*}/detail'], hosts: ['*.svc.cluster.local']}}]
"""


@pytest.mark.parametrize(
    ("method", "path", "host", "expect"),
    [
        ("GET", "/api/v1", "server.ns.svc.cluster.local", "allow"),
        ("GET", "/api/v1?x=1", "SERVER.NS.SVC.CLUSTER.LOCAL", "allow"),
        ("HEAD", "/items/7/detail", "server.ns.svc.cluster.local", "allow"),
        ("GET", "/items/7/8/detail", "server.ns.svc.cluster.local", "deny"),
        ("get", "/api/v1", "server.ns.svc.cluster.local", "deny"),
        ("POST", "/api/v1", "server.ns.svc.cluster.local", "deny"),
        ("GET", "/apix", "server.ns.svc.cluster.local", "deny"),
        ("GET", "/api/v1", "example.com", "deny"),
    ],
)
def test_methods_paths_hosts(method: str, path: str, host: str, expect: str) -> None:
    """API Operation: methods exact; paths with prefix/suffix and `{*}` one-segment templates
    (the query string is not part of the path); hosts "The match is case-insensitive"."""
    w = build(ap("allow", L7_ALLOW))
    d = decide(w, flow(w, method=method, path=path, host=host), WAYPOINT)
    assert d is not None and d.verdict.value.lower() == expect
    if expect == "deny":
        assert d.status == 403 and d.reason.startswith("RBAC: access denied")


def test_headers_and_not_values() -> None:
    """API Condition: `request.headers[<name>]` with values / notValues; "*" = header present."""
    w = build(
        ap(
            "allow",
            """
            targetRefs: [{kind: Service, group: '', name: server}]
            rules:
            - when:
              - {key: 'request.headers[X-Team]', values: ['*']}
              - {key: 'request.headers[x-team]', notValues: [blocked*]}
            """,
        )
    )
    assert verdict(w, flow(w, method="GET", headers={"x-team": "a"}), WAYPOINT) == "allow"
    assert verdict(w, flow(w, method="GET", headers={"x-team": "blocked-1"}), WAYPOINT) == "deny"
    assert verdict(w, flow(w, method="GET"), WAYPOINT) == "deny"


JWT_AUTHN = """
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
jwtRules:
- issuer: https://issuer.example
  audiences: [shop]
"""
REQUIRE_JWT = """
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
rules:
- from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]
  when: [{key: 'request.auth.claims[role][name]', values: [admin]}]
"""


def _jwt(valid: bool = True, **claims: object) -> Jwt:
    base: dict[str, object] = {"iss": "https://issuer.example", "sub": "alice", "aud": ["shop"]}
    base.update(claims)
    return Jwt(base, valid)


def test_request_authentication_rejects_an_invalid_token_with_401() -> None:
    """Reference §4.8: "An invalid token -> rejected with 401" (Envoy: "Jwt verification fails")."""
    w = build(ra("jwt", JWT_AUTHN))
    d = decide(w, flow(w, method="GET", jwt=_jwt(valid=False)), WAYPOINT)
    assert d is not None and not d.allowed and d.status == 401 and "Jwt verification fails" in d.reason
    assert d.policy is not None and d.policy.kind == "RequestAuthentication"


def test_request_authentication_rejects_unknown_issuers_and_audiences() -> None:
    """Envoy jwt_authn (requires_any of the providers or allow_missing): a present token must come
    from a configured issuer, else 401, and carry an accepted audience, else 403 (Envoy
    `jwt_authn/filter.cc` onComplete: `status == Status::JwtAudienceNotAllowed ? Forbidden :
    Unauthorized`); a token that failed verification for its audience is 403 as well."""
    w = build(ra("jwt", JWT_AUTHN))
    d = decide(w, flow(w, method="GET", jwt=_jwt(iss="https://other")), WAYPOINT)
    assert d is not None and d.status == 401 and "issuer is not configured" in d.reason
    d = decide(w, flow(w, method="GET", jwt=_jwt(aud="billing")), WAYPOINT)
    assert d is not None and d.status == 403 and d.reason.startswith("Audiences in Jwt are not allowed")
    failed = Jwt({}, valid=False, error="Audiences in Jwt are not allowed")
    d = decide(w, flow(w, method="GET", jwt=failed), WAYPOINT)
    assert d is not None and d.status == 403
    d = decide(w, flow(w, method="GET", jwt=Jwt({}, valid=False, error="Jwt is expired")), WAYPOINT)
    assert d is not None and d.status == 401 and d.reason.startswith("Jwt is expired")


def test_no_token_passes_authentication_with_no_request_principal() -> None:
    """Reference §4.8: "No token -> accepted with no request principal. To require a token, add an
    AuthorizationPolicy with requestPrincipals: ["*"]"."""
    w = build(ra("jwt", JWT_AUTHN))
    assert verdict(w, flow(w, method="GET"), WAYPOINT) == "none"
    w = build(ra("jwt", JWT_AUTHN), ap("require", REQUIRE_JWT))
    d = decide(w, flow(w, method="GET"), WAYPOINT)
    assert d is not None and not d.allowed and d.status == 403


def test_request_principals_and_nested_claims() -> None:
    """API Source.requestPrincipals: "<ISS>/<SUB>"; `request.auth.claims[a][b]` nested claims."""
    w = build(ra("jwt", JWT_AUTHN), ap("require", REQUIRE_JWT))
    assert verdict(w, flow(w, method="GET", jwt=_jwt(role={"name": "admin"})), WAYPOINT) == "allow"
    assert verdict(w, flow(w, method="GET", jwt=_jwt(role={"name": "user"})), WAYPOINT) == "deny"


def test_a_token_without_request_authentication_gives_no_principal() -> None:
    """Envoy verifies a JWT only where a RequestAuthentication configures jwt_authn; without one
    the request has no request principal."""
    w = build(ap("require", REQUIRE_JWT))
    assert verdict(w, flow(w, method="GET", jwt=_jwt(role={"name": "admin"})), WAYPOINT) == "deny"


@pytest.mark.parametrize(
    ("pattern", "iss", "sub", "ok"),
    [
        ("https://issuer.example/alice", "https://issuer.example", "alice", True),
        ("https://issuer.example/alice", "https://issuer.example", "bob", False),
        ("*", "a", "b", True),
        ("https://issuer.example/*", "https://issuer.example", "x", True),
        ("*/alice", "anything", "alice", True),
        ("*.example/alice", "https://issuer.example", "alice", True),
        # split at the LAST "/": "https:/" exact and "iss*" prefix on the subject - no match
        ("https://iss*", "https://issuer.example", "x", False),
        ("https://issuer.example/a*", "https://issuer.example", "alice", True),
        ("*lice", "https://issuer.example", "alice", True),
    ],
)
def test_request_principal_patterns(pattern: str, iss: str, sub: str, ok: bool) -> None:
    """IS requestPrincipalGenerator: split at the last "/"; `*` = any; `*x` suffix on the issuer
    (with "/") or on the subject; `x*` prefix on the subject (with "/") or on the issuer."""
    w = build(
        ra("jwt", JWT_AUTHN.replace("https://issuer.example", iss)),
        ap(
            "p",
            f"targetRefs: [{{kind: Service, group: '', name: server}}]\nrules:\n- from: [{{source: {{requestPrincipals: ['{pattern}']}}}}]",
        ),
    )
    got = verdict(w, flow(w, method="GET", jwt=_jwt(iss=iss, sub=sub)), WAYPOINT)
    assert got == ("allow" if ok else "deny")


def test_tcp_at_the_waypoint_drops_http_allow_rules() -> None:
    """IS model.go checkError: for ALLOW an HTTP-only field on a TCP chain makes the rule ignored,
    "effectively result in a smaller allow policy"."""
    w = build(ap("allow", L7_ALLOW))
    d = decide(w, flow(w), WAYPOINT)
    assert d is not None and not d.allowed and d.status is None
    assert any("does not apply to TCP traffic" in n for n in d.notes)


def test_tcp_deny_treats_missing_attributes_as_matches() -> None:
    """API: "When this rule is applied to TCP traffic, the `method` field ... cannot be processed.
    For a DENY rule, missing attributes are treated as matches. This means all TCP traffic on port
    `8080` would be denied"."""
    deny = "selector: {matchLabels: {app: server}}\naction: DENY\nrules:\n- to: [{operation: {methods: [POST], ports: ['8080']}}]"
    w = build(ap("deny", deny), mode="kernel")
    assert verdict(w, flow(w, port=8080), SIDECAR) == "deny"
    assert verdict(w, flow(w, port=80), SIDECAR) == "allow"
    assert verdict(w, flow(w, port=8080, method="GET"), SIDECAR) == "allow"
    assert verdict(w, flow(w, port=8080, method="POST"), SIDECAR) == "deny"


def test_sidecar_request_authentication_by_selector() -> None:
    """Sidecar semantics: RequestAuthentication applies by selector / namespace (API: selector)."""
    w = build(
        ra("jwt", "selector: {matchLabels: {app: server}}\njwtRules: [{issuer: https://issuer.example}]")
    )
    d = decide(w, flow(w, method="GET", jwt=_jwt(valid=False)), SIDECAR)
    assert d is not None and d.status == 401
    assert decide(w, flow(w, method="GET", jwt=_jwt(valid=False)), WAYPOINT) is None


def test_has_l7_rules_by_port() -> None:
    """Kernel mode steers a port to the L7 proxy only when a selector/namespace policy has HTTP
    fields that can apply to that port (Cilium's "only spin up Envoy when an L7 policy demands it")."""
    w = build(
        ap(
            "p",
            "selector: {matchLabels: {app: server}}\nrules:\n- to: [{operation: {ports: ['8080'], methods: [GET]}}]",
        ),
        mode="kernel",
    )
    engine = IstioEngine(w)
    assert engine.has_l7_rules(flow(w, port=8080))
    assert not engine.has_l7_rules(flow(w, port=80))
    assert not engine.has_l7_rules(flow(w, dst="ns/admin"))
    w = build(ap("p", ALLOW_CLIENT), mode="kernel")
    assert not IstioEngine(w).has_l7_rules(flow(w))


# ---- PeerAuthentication (reference §4.7) -----------------------------------------------------------


def test_no_peer_authentication_no_say() -> None:
    """Reference §4.7: PERMISSIVE (the default) = no policy."""
    w = build()
    assert IstioEngine(w).peer_authentication(flow(w, mtls=False)) is None


def test_strict_rejects_plaintext() -> None:
    """Reference §4.7: STRICT = "deny any connection with no peer identity (plaintext through 15006)"."""
    w = build(pa("default", "mtls: {mode: STRICT}", ns="istio-system"))
    engine = IstioEngine(w)
    d = engine.peer_authentication(flow(w, mtls=False))
    assert d is not None and not d.allowed and d.drop_reason is DropReason.UNENCRYPTED
    assert d.policy is not None and d.policy.kind == "PeerAuthentication" and d.policy.name == "default"
    assert "istio-system/istio_converted_static_strict" in d.reason
    ok = engine.peer_authentication(flow(w))
    assert ok is not None and ok.allowed


def test_namespace_overrides_mesh_and_unset_inherits() -> None:
    """IS convertedSelectorPeerAuthentications: mesh, then namespace, then workload; UNSET inherits."""
    w = build(
        pa("mesh", "mtls: {mode: STRICT}", ns="istio-system"),
        pa("ns-wide", "mtls: {mode: PERMISSIVE}"),
        pa("server", "selector: {matchLabels: {app: server}}\nmtls: {mode: UNSET}"),
    )
    d = IstioEngine(w).peer_authentication(flow(w, mtls=False))
    assert d is not None and d.allowed and d.policy is not None and d.policy.name == "ns-wide"


def test_port_level_mtls_by_target_port() -> None:
    """Reference §4.7: portLevelMtls port numbers "are target/container ports"; a PERMISSIVE port
    under STRICT is exempt."""
    w = build(
        pa(
            "server",
            "selector: {matchLabels: {app: server}}\nmtls: {mode: STRICT}\nportLevelMtls: {80: {mode: PERMISSIVE}}",
        )
    )
    engine = IstioEngine(w)
    d80, d8080 = (
        engine.peer_authentication(flow(w, port=80, mtls=False)),
        engine.peer_authentication(flow(w, port=8080, mtls=False)),
    )
    assert d80 is not None and d80.allowed
    assert d8080 is not None and not d8080.allowed


def test_disable_acts_as_permissive_with_a_note() -> None:
    """Reference §4.7: "DISABLE is not supported in ambient. It is treated like PERMISSIVE"."""
    w = build(pa("mesh", "mtls: {mode: STRICT}", ns="istio-system"), pa("disabled", "mtls: {mode: DISABLE}"))
    d = IstioEngine(w).peer_authentication(flow(w, mtls=False))
    assert d is not None and d.allowed and any("DISABLE" in n for n in d.notes)


def test_oldest_mesh_policy_wins() -> None:
    """IS getOldestPeerAuthn: of several mesh-level policies the oldest wins (manifest order here)."""
    w = build(
        pa("first", "mtls: {mode: STRICT}", ns="istio-system"),
        pa("second", "mtls: {mode: PERMISSIVE}", ns="istio-system"),
    )
    d = IstioEngine(w).peer_authentication(flow(w, mtls=False))
    assert d is not None and not d.allowed and d.policy is not None and d.policy.name == "first"


# ---- the IR --------------------------------------------------------------------------------------


def test_policies_compile_to_the_shared_ir() -> None:
    """IR shape (ZT rbac.rs): rule = [from, to, one clause per when]; every field a condition."""
    w = build(
        ap(
            "p",
            ALLOW_CLIENT
            + "  to: [{operation: {ports: ['80'], methods: [GET]}}]\n  when: [{key: source.ip, values: [10.0.0.0/8]}]",
        )
    )
    (policy,) = IstioEngine(w).policies
    assert (
        isinstance(policy, Policy)
        and policy.ref.api is Api.ISTIO
        and policy.ref.kind == "AuthorizationPolicy"
    )
    (rule,) = policy.rules
    assert [c.name for c in rule.clauses] == ["from", "to", "when[0] source.ip"]
    assert rule.has_l7 and [c.name for c in rule.l4_clauses] == ["from", "when[0] source.ip"]


_PRINCIPALS = st.sampled_from(
    ["cluster.local/ns/ns/sa/client", "cluster.local/ns/ns/sa/admin", "*", "*/sa/admin"]
)
_SOURCE = st.fixed_dictionaries(
    {},
    optional={
        "principals": st.lists(_PRINCIPALS, min_size=1, max_size=2),
        "notPrincipals": st.lists(_PRINCIPALS, min_size=1, max_size=2),
        "notIpBlocks": st.just(["10.0.0.3"]),
        "requestPrincipals": st.just(["*"]),
    },
).filter(bool)
_RULE = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.builds(lambda s: {"source": s}, _SOURCE), min_size=1, max_size=2),
        "to": st.lists(
            st.builds(lambda p: {"operation": {"ports": [p]}}, st.sampled_from(["80", "8080"])),
            min_size=1,
            max_size=2,
        ),
    },
)


@settings(max_examples=60, deadline=None)
@given(rules=st.lists(_RULE, min_size=1, max_size=3), action=st.sampled_from(["ALLOW", "DENY"]))
def test_compiled_matcher_agrees_with_the_ir(rules: list[dict[str, object]], action: str) -> None:
    """The compiled predicates (`match_compiled`) are the IR's own semantics (`Rule.matches`,
    ztunnel's algorithm in `first_match`) in every view's projection."""
    import json

    w = build(ap("p", f"action: {action}\nrules: {json.dumps(rules)}"))
    engine = IstioEngine(w)
    entry = engine._entries[0]
    for view, tcp in ((NODE, True), (SIDECAR, True), (SIDECAR, False)):
        policy = entry.view(view, tcp)
        compiled = compile_rules(policy)
        for src in ("ns/client", "ns/admin", "other/stranger"):
            for port in (80, 8080):
                for mtls in (True, False):
                    ctx = flow(w, src=src, port=port, mtls=mtls)
                    ir = next((r for r in policy.rules if r.matches(ctx)), None)
                    assert match_compiled(compiled, ctx) is ir
                    assert first_match(policy, ctx) is ir


def test_decisions_are_memoized_per_destination_and_source() -> None:
    """A node proxy's decision is a pure function of (destination, source identity, port, addresses)."""
    w = build(ap("allow", ALLOW_CLIENT))
    engine = IstioEngine(w)
    a = engine.evaluate(flow(w), NODE)
    assert a is engine.evaluate(flow(w), NODE)
    b = engine.evaluate(flow(w, src="ns/admin"), NODE)
    assert a is not None and b is not None and a.allowed and not b.allowed


def test_the_node_proxy_memo_keeps_ports_apart() -> None:
    """Reference §4.5: at the node proxy "`ports` therefore match container (target) ports", per
    connection. One engine remembers decisions per destination and source identity: an allow
    for 8080 must not be reused for port 80 from the same client."""
    w = build(ap("allow", "rules:\n- to: [{operation: {ports: ['8080']}}]"))
    engine = IstioEngine(w)
    first = engine.evaluate(flow(w, port=8080), NODE)
    second = engine.evaluate(flow(w, port=80), NODE)
    assert first is not None and first.allowed
    assert second is not None and not second.allowed


def test_the_node_proxy_memo_keeps_source_addresses_apart() -> None:
    """API Source.ipBlocks: "populated from the source address of the IP packet". Two plaintext
    clients share the same (absent) identity, so when a policy tests addresses the remembered
    decision of one must not answer for the other (same engine)."""
    w = build(ap("allow", "rules:\n- from: [{source: {ipBlocks: [10.0.0.1]}}]"))
    engine = IstioEngine(w)
    client = engine.evaluate(flow(w, mtls=False), NODE)
    admin = engine.evaluate(flow(w, src="ns/admin", mtls=False), NODE)
    assert client is not None and client.allowed
    assert admin is not None and not admin.allowed


# ---- analyze ---------------------------------------------------------------------------------------


def test_nm201_l7_allow_at_the_node_proxy() -> None:
    """Seed: "an AuthorizationPolicy works in sidecar mode but silently does nothing in ambient mode
    because no waypoint is attached"; for ALLOW it denies more than written (IS status)."""
    w = build(
        ap("allow", "selector: {matchLabels: {app: server}}\nrules:\n- to: [{operation: {methods: [GET]}}]")
    )
    (f,) = findings(w, "NM201")
    assert f.severity is Severity.WARNING and f.resource == "AuthorizationPolicy ns/allow"
    assert "denies more than written" in f.message and "no waypoint serves these workloads" in f.message
    assert f.file == "test.yaml" and f.line > 0
    # with a waypoint in front of the service: it still does not help, waypoints ignore selectors
    w = build(
        ap("allow", "selector: {matchLabels: {app: server}}\nrules:\n- to: [{operation: {methods: [GET]}}]"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns, labels: {istio.io/use-waypoint: waypoint}}\n",
    )
    (f,) = findings(w, "NM201")
    assert "waypoint(s) ns/waypoint serve these workloads but ignore selector policies" in f.message


def test_nm201_l7_deny_silently_does_nothing() -> None:
    """IS httpDenyNoEffectBoilerplate: the DENY "will have no effect" at ztunnel."""
    w = build(ap("deny", "action: DENY\nrules:\n- to: [{operation: {paths: ['/admin*']}}]"))
    (f,) = findings(w, "NM201")
    assert "silently does nothing" in f.message


def test_nm201_not_in_kernel_mode() -> None:
    """Kernel mode enforces selector policies with sidecar semantics (full L7): nothing to report."""
    w = build(ap("deny", "action: DENY\nrules:\n- to: [{operation: {paths: ['/admin*']}}]"), mode="kernel")
    assert findings(w, "NM201") == []


def test_nm202_target_without_a_waypoint() -> None:
    """Reference §4.2: targetRefs policies are enforced by the waypoint only; a Service without a
    waypoint (istio.io/use-waypoint) means nothing enforces the policy."""
    w = build(
        ap("p", TARGETED_DENY),
        ap(
            "q", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: missing}]\nrules: [{}]"
        ),
    )
    found = findings(w, "NM202")
    assert {f.resource for f in found} == {"AuthorizationPolicy ns/p", "AuthorizationPolicy ns/q"}
    assert all(f.severity is Severity.ERROR for f in found)


def test_nm202_quiet_when_the_service_uses_a_waypoint() -> None:
    """The seed's orders-from-frontend (targetRefs Service with a namespace waypoint) is enforced."""
    w = build(
        ap("p", TARGETED_DENY),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns, labels: {istio.io/use-waypoint: waypoint}}\n",
    )
    assert findings(w, "NM202") == []


def test_nm203_selector_matches_nothing() -> None:
    """A selector that matches no workload applies to nothing."""
    w = build(ap("p", "selector: {matchLabels: {app: nobody}}\nrules: [{}]"))
    (f,) = findings(w, "NM203")
    assert "app=nobody" in f.message


def test_nm204_deny_rule_that_can_never_fire() -> None:
    """ZT matches_internal: a field's positive values all excluded by its negative values can never hold."""
    w = build(ap("deny", "action: DENY\nrules:\n- to: [{operation: {ports: ['80'], notPorts: ['80']}}]"))
    (f,) = findings(w, "NM204")
    assert "DENY rule 0 can never fire" in f.message


def test_nm205_shadowed_rule() -> None:
    """Rules are ORed: a rule whose every match is covered by an earlier rule adds nothing."""
    w = build(
        ap(
            "allow",
            """
            rules:
            - from: [{source: {namespaces: [ns]}}]
            - from: [{source: {namespaces: [ns], principals: [cluster.local/ns/ns/sa/client]}}]
              to: [{operation: {ports: ['80']}}]
            """,
        )
    )
    (f,) = findings(w, "NM205")
    assert "ALLOW rule 1 is shadowed by rule 0" in f.message


def test_nm206_custom_and_audit() -> None:
    """nodemesh calls no external authorizer (CUSTOM) and has no audit sink (AUDIT)."""
    w = build(
        ap("ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"),
        ap("audit", "action: AUDIT\nrules: [{}]"),
    )
    by = {f.resource: f.severity for f in findings(w, "NM206")}
    assert by == {
        "AuthorizationPolicy ns/ext": Severity.ERROR,
        "AuthorizationPolicy ns/audit": Severity.WARNING,
    }


def test_nm207_use_waypoint_naming_a_missing_gateway() -> None:
    """istio.io/use-waypoint names a Gateway (in istio.io/use-waypoint-namespace or the same namespace)."""
    w = build(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other, labels: {istio.io/use-waypoint: nowhere}}\n"
    )
    (f,) = findings(w, "NM207")
    assert f.resource == "Namespace other" and "no Gateway other/nowhere" in f.message


def test_nm208_disable() -> None:
    """Reference §4.7: "DISABLE is not supported in ambient"."""
    w = build(pa("disabled", "selector: {matchLabels: {app: server}}\nmtls: {mode: DISABLE}"))
    (f,) = findings(w, "NM208")
    assert f.resource == "PeerAuthentication ns/disabled"


def test_verdict_enum_sanity() -> None:
    """Decisions use the shared Verdict enum."""
    w = build(ap("allow-nothing", "{}"))
    d = decide(w, flow(w))
    assert d is not None and d.verdict is Verdict.DENY


def test_a_leading_star_wins_over_a_trailing_one() -> None:
    """IS matcher.StringMatcherWithPrefix / ambient stringToMatch check `HasPrefix(v, "*")` before
    `HasSuffix(v, "*")`: "*a*" is a suffix match on "a*", not a prefix or substring match."""
    w = build(ap("allow", "rules:\n- from: [{source: {principals: ['*sa/client*']}}]"))
    assert verdict(w, flow(w)) == "deny"
    ctx = flow(w)
    odd = ctx.with_src(Endpoint(ip=ctx.src.ip, principal="cluster.local/ns/ns/sa/client*"))
    assert verdict(w, odd) == "allow"
