"""Istio security kinds and the Gateway: what loads, and what Istio's validation rejects, with
file:line and the field path (istio/istio `pkg/config/validation/validation.go`,
reference /work/shared/reference/istio-ambient.md §4.2-§4.3)."""

from __future__ import annotations

import textwrap

import pytest

from nodemesh.errors import ManifestError, ManifestProblem
from nodemesh.model.loader import load_text
from nodemesh.model.schema.istio import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World


def _load(text: str) -> list[object]:
    return list(parse_documents(load_text(textwrap.dedent(text), "p.yaml")))


def _problems(text: str) -> list[ManifestProblem]:
    with pytest.raises(ManifestError) as err:
        _load(text)
    return err.value.problems


def _ap(spec: str, version: str = "v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"apiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{body}\n"


def _one(text: str) -> ManifestProblem:
    problems = _problems(text)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_both_api_versions_are_served(version: str) -> None:
    """security.istio.io serves AuthorizationPolicy as v1 and v1beta1 with the same schema
    (API: "{{<tab name="v1beta1">}} ... {{<tab name="v1">}}" examples are identical)."""
    docs = _load(_ap("rules: [{}]", version))
    assert isinstance(docs[0], AuthorizationPolicy)
    assert docs[0].spec.action == "ALLOW"


def test_other_versions_are_refused_with_the_served_ones() -> None:
    """Only the served versions load (the CRD serves v1 and v1beta1)."""
    p = _one(_ap("rules: [{}]", "v1alpha1"))
    assert p.path == "apiVersion" and "v1" in p.hint and "v1beta1" in p.hint


def test_deny_without_rules_is_rejected_with_istios_wording() -> None:
    """validation.go: "DENY action without `rules` is meaningless as it will never be triggered,
    add an empty rule `{}` if you want it be triggered for every request"."""
    p = _one(_ap("action: DENY"))
    assert p.file == "p.yaml" and p.line == 4 and p.path == "spec.rules"
    assert "add an empty rule `{}`" in p.message


def test_custom_needs_rules_and_a_provider() -> None:
    """validation.go: CUSTOM without rules is meaningless; "`provider.name` must not be empty"."""
    assert "add an empty rule" in _one(_ap("action: CUSTOM\nprovider: {name: ext}")).message
    p = _one(_ap("action: CUSTOM\nrules: [{}]"))
    assert p.path == "spec.provider.name" and "must not be empty" in p.message


def test_provider_only_with_custom() -> None:
    """validation.go: "`provider` must not be with non CUSTOM action"."""
    p = _one(_ap("provider: {name: ext}\nrules: [{}]"))
    assert p.path == "spec.provider" and "non CUSTOM action" in p.message


def test_custom_rejects_identity_fields() -> None:
    """validation.go: for CUSTOM, "From.Principals is currently not supported with CUSTOM action"."""
    p = _one(
        _ap(
            """
            action: CUSTOM
            provider: {name: ext}
            rules:
            - from: [{source: {principals: [a]}}]
            """
        )
    )
    assert p.path == "spec.rules[0].from[0].source.principals" and "CUSTOM" in p.message


def test_empty_from_and_to_lists_are_rejected() -> None:
    """validation.go: "`from` must not be empty, found at rule 0"; same for `to`."""
    problems = _problems(_ap("rules:\n- from: []\n  to: []"))
    assert {p.path for p in problems} == {"spec.rules[0].from", "spec.rules[0].to"}
    assert all("must not be empty" in p.message for p in problems)


def test_from_without_source_and_to_without_operation() -> None:
    """validation.go: "`from.source` must not be nil" / "`to.operation` must not be nil"."""
    problems = _problems(_ap("rules:\n- from: [{}]\n  to: [{}]"))
    assert {p.path for p in problems} == {"spec.rules[0].from[0]", "spec.rules[0].to[0]"}


def test_empty_source_and_operation_are_rejected() -> None:
    """validation.go: "`from.source` must not be empty" / "`to.operation` must not be empty"."""
    problems = _problems(_ap("rules:\n- from: [{source: {}}]\n  to: [{operation: {}}]"))
    assert {p.path for p in problems} == {"spec.rules[0].from[0].source", "spec.rules[0].to[0].operation"}


def test_empty_string_values_are_rejected_at_their_index() -> None:
    """security.CheckEmptyValues: "empty value not allowed, found in Principals"."""
    p = _one(_ap("rules:\n- from: [{source: {principals: [a, '']}}]"))
    assert p.path == "spec.rules[0].from[0].source.principals[1]" and "empty value" in p.message


def test_when_needs_values_or_not_values() -> None:
    """validation.go: "at least one of `values` or `notValues` must be set for key ..."."""
    p = _one(_ap("rules:\n- when: [{key: source.ip}]"))
    assert p.path == "spec.rules[0].when[0]" and "at least one of `values` or `notValues`" in p.message


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("request.headers[x-token]", True),
        ("request.auth.claims[groups]", True),
        ("request.auth.claims[nested][key]", True),
        ("experimental.envoy.filters.network.mysql_proxy[db.table]", True),
        ("source.serviceAccount", True),
        ("request.headers", False),
        ("request.header[x]", False),
        ("source.user", False),
        ("destination.name", False),
    ],
)
def test_when_keys_are_the_known_attributes(key: str, ok: bool) -> None:
    """security.ValidateAttribute: known keys (model.go), bracketed header/claim names; anything
    else is "unknown attribute"; source.user etc. are "only supported in v1alpha1"."""
    text = _ap(f"rules:\n- when: [{{key: '{key}', values: [v]}}]")
    if ok:
        _load(text)
    else:
        assert _one(text).path == "spec.rules[0].when[0].key"


def test_when_ip_and_port_values_are_checked() -> None:
    """security.ValidateAttribute: source.ip/destination.ip values are IPs or CIDRs,
    destination.port values are ports."""
    problems = _problems(
        _ap(
            "rules:\n- when:\n  - {key: source.ip, values: [10.0.0.300]}\n  - {key: destination.port, values: ['0']}"
        )
    )
    assert {p.path for p in problems} == {
        "spec.rules[0].when[0].values[0]",
        "spec.rules[0].when[1].values[0]",
    }


def test_service_accounts_cannot_be_combined_with_principals() -> None:
    """API Source.serviceAccounts: cannot be set together with principals or namespaces."""
    p = _one(_ap("rules:\n- from: [{source: {serviceAccounts: [ns/a], namespaces: [ns]}}]"))
    assert p.path == "spec.rules[0].from[0].source.serviceAccounts"


def test_selector_and_target_refs_are_exclusive() -> None:
    """validation.go validateOneOfSelectorType: "only one of targetRefs or workloadSelector can be set"."""
    p = _one(
        _ap(
            "selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Service, group: '', name: s}]\nrules: [{}]"
        )
    )
    assert p.path == "spec.targetRefs" and "only one of" in p.message


def test_at_most_16_target_refs() -> None:
    """CRD: targetRefs maxItems 16 (reference §4.2)."""
    refs = ", ".join(f"{{kind: Service, group: '', name: s{i}}}" for i in range(17))
    assert "at most 16" in _one(_ap(f"targetRefs: [{refs}]\nrules: [{{}}]")).message


def test_at_most_512_rules() -> None:
    """CRD: rules maxItems 512 (reference §4.2)."""
    rules = ", ".join("{}" for _ in range(513))
    assert "at most 512" in _one(_ap(f"rules: [{rules}]")).message


def test_target_ref_kinds() -> None:
    """validation.go allowedTargetRefs: Service, ServiceEntry, Gateway (plus GatewayClass)."""
    p = _one(_ap("targetRefs: [{kind: Deployment, group: apps, name: d}]\nrules: [{}]"))
    assert p.path == "spec.targetRefs[0].kind"


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1"])
def test_ports_must_be_1_to_65535(port: str) -> None:
    """security.ValidatePorts: "bad port"."""
    p = _one(_ap(f"rules:\n- to: [{{operation: {{ports: ['{port}']}}}}]"))
    assert p.path == "spec.rules[0].to[0].operation.ports[0]" and "bad port" in p.message


def test_ports_are_strings() -> None:
    """API Operation.ports is `repeated string`: a YAML number is not a string."""
    p = _one(_ap("rules:\n- to: [{operation: {ports: [8080]}}]"))
    assert p.path.startswith("spec.rules[0].to[0].operation.ports")


@pytest.mark.parametrize("block", ["10.0.0.0/33", "10.0.0.256", "nope"])
def test_ip_blocks_must_be_ips_or_cidrs(block: str) -> None:
    """security.ValidateIPs: a single IP, or a CIDR when it contains '/'."""
    p = _one(_ap(f"rules:\n- from: [{{source: {{notIpBlocks: ['{block}']}}}}]"))
    assert p.path == "spec.rules[0].from[0].source.notIpBlocks[0]"


def test_misspelt_field_names_the_closest_one() -> None:
    """Unknown fields are errors (a typo must not be a silent no-op), with the closest name."""
    p = _one(_ap("rules:\n- from: [{source: {principal: [a]}}]"))
    assert p.path == "spec.rules[0].from[0].source.principal" and p.hint == "did you mean 'principals'?"
    assert p.line == 6


def test_path_templates_must_be_whole_segments() -> None:
    """security.CheckValidPathTemplate: `{*}` and `{**}` operators; `{**}` must be last."""
    problems = _problems(_ap("rules:\n- to: [{operation: {paths: ['/a/{**}/b', '/x{*}']}}]"))
    assert {p.path for p in problems} == {
        "spec.rules[0].to[0].operation.paths[0]",
        "spec.rules[0].to[0].operation.paths[1]",
    }


def test_dry_run_annotation() -> None:
    """API: the `istio.io/dry-run: "true"` annotation marks a dry-run policy."""
    doc = _load(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: 'true'}}\nspec: {}\n"
    )[0]
    assert isinstance(doc, AuthorizationPolicy) and doc.dry_run


def test_peer_authentication_port_level_needs_a_selector() -> None:
    """ValidatePeerAuthentication: "mesh/namespace peer authentication cannot have port level mTLS"."""
    p = _one(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\n"
        "spec:\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}\n"
    )
    assert p.path == "spec.portLevelMtls" and "cannot have port level mTLS" in p.message


def test_peer_authentication_modes() -> None:
    """API MutualTLS.Mode: UNSET, DISABLE, PERMISSIVE, STRICT."""
    doc = _load(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\n"
        "spec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: DISABLE}}\n"
    )[0]
    assert isinstance(doc, PeerAuthentication) and doc.spec.port_level_mtls is not None
    assert doc.spec.port_level_mtls[8080].mode == "DISABLE"
    p = _one(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\n"
        "spec:\n  mtls: {mode: STRICTER}\n"
    )
    assert p.path == "spec.mtls.mode"


def test_request_authentication_issuer_is_required() -> None:
    """validateJwtRule: "issuer must be set"; "audience must be non-empty string"."""
    problems = _problems(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: ns}\n"
        "spec:\n  jwtRules:\n  - audiences: ['']\n"
    )
    assert {p.path for p in problems} == {"spec.jwtRules[0].issuer", "spec.jwtRules[0].audiences[0]"}


def test_request_authentication_loads() -> None:
    """API JWTRule: issuer, audiences, jwksUri, fromHeaders, outputPayloadToHeader, forwardOriginalToken."""
    doc = _load(
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: r, namespace: ns}
        spec:
          targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
          jwtRules:
          - issuer: https://issuer.example
            audiences: [shop]
            jwksUri: https://issuer.example/jwks.json
            fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]
            outputPayloadToHeader: x-payload
            forwardOriginalToken: true
        """
    )[0]
    assert isinstance(doc, RequestAuthentication) and doc.spec.jwt_rules[0].audiences == ["shop"]


GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ns, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
"""


def test_a_gateway_of_class_istio_waypoint_is_a_waypoint() -> None:
    """Istio Ambient: a waypoint is a Gateway with gatewayClassName istio-waypoint; the
    istio.io/waypoint-for label says which traffic it serves."""
    world = World.build(parse_documents(load_text(GATEWAY, "g.yaml")))
    assert world.waypoints[("ns", "waypoint")].waypoint_for == "all"


def test_gateway_listeners() -> None:
    """Gateway API: at least one listener; names unique; port 1-65535."""
    assert (
        _one(
            GATEWAY.replace("  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}", "  listeners: []")
        ).path
        == "spec.listeners"
    )
    dup = GATEWAY + "  - {name: mesh, port: 15009, protocol: HBONE}\n"
    assert _one(dup).path == "spec.listeners[1].name"
    assert _one(GATEWAY.replace("15008", "0")).path == "spec.listeners[0].port"
