"""NetworkPolicy manifests: what loads, its defaults, and what the apiserver rejects (with the line).

Rules come from the API reference (k8s.io/api networking/v1 types.go), the defaulting functions
(pkg/apis/networking/v1/defaults.go) and `ValidateNetworkPolicySpec`
(pkg/apis/networking/validation/validation.go).
"""

from __future__ import annotations

import pytest

from nodemesh.errors import ManifestError, ManifestProblem
from nodemesh.model.loader import load_text
from nodemesh.model.schema.networking import NetworkPolicy, parse_cidr
from nodemesh.model.validate import parse_documents

HEAD = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
"""


def _load(body: str) -> NetworkPolicy:
    (doc,) = parse_documents(load_text(HEAD + body, "np.yaml"))
    assert isinstance(doc, NetworkPolicy)
    return doc


def _problems(body: str) -> list[ManifestProblem]:
    with pytest.raises(ManifestError) as err:
        parse_documents(load_text(HEAD + body, "np.yaml"))
    return err.value.problems


def _one(body: str) -> ManifestProblem:
    problems = _problems(body)
    assert len(problems) == 1, problems
    return problems[0]


def test_a_policy_without_spec_selects_every_pod_for_ingress() -> None:
    """API reference: spec is optional; podSelector "is optional. If it is not specified, it defaults
    to an empty selector"; with no policyTypes, "all policies ... are assumed to affect ingress"."""
    doc = _load("")
    assert doc.spec.pod_selector.match_labels == {} and doc.spec.pod_selector.match_expressions == []
    assert doc.spec.effective_policy_types == {"Ingress"}


def test_policy_types_default_adds_egress_only_when_there_are_egress_rules() -> None:
    """defaults.go: policyTypes = [Ingress], plus Egress `if len(obj.Spec.Egress) != 0`."""
    assert _load("spec:\n  egress: [{}]\n").spec.effective_policy_types == {"Ingress", "Egress"}
    assert _load("spec:\n  egress: []\n").spec.effective_policy_types == {"Ingress"}
    assert _load("spec:\n  policyTypes: [Egress]\n").spec.effective_policy_types == {"Egress"}


def test_full_manifest_loads_with_upstream_field_names() -> None:
    """The documentation's example policy (kubernetes.io network-policies) loads unchanged."""
    doc = _load(
        """spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: frontend}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 32000, endPort: 32768}]
"""
    )
    ingress = (doc.spec.ingress or [])[0]
    assert ingress.from_[0].ip_block is not None and ingress.from_[0].ip_block.except_ == ["172.17.1.0/24"]
    assert (doc.spec.egress or [])[0].ports[0].end_port == 32768


def test_port_protocol_defaults_to_tcp() -> None:
    """API reference NetworkPolicyPort.protocol: "If not specified, this field defaults to TCP."."""
    doc = _load("spec:\n  ingress: [{ports: [{port: 80}]}]\n")
    assert (doc.spec.ingress or [])[0].ports[0].effective_protocol == "TCP"


def test_misspelt_field_names_the_closest_valid_name_and_its_line() -> None:
    """Unknown fields are errors, not silent no-ops, and the message points at the field."""
    problem = _one("spec:\n  ingress:\n  - from:\n    - podSelecter: {}\n")
    assert problem.line == 7 and problem.path == "spec.ingress[0].from[0].podSelecter"
    assert "podSelector" in problem.hint
    problem = _one("spec:\n  polcyTypes: [Ingress]\n")
    assert problem.line == 5 and "policyTypes" in problem.hint


def test_python_names_of_keyword_fields_are_not_manifest_keys() -> None:
    """`from` and `except` are the only spellings: `from_` is an unknown field that hints `from`."""
    problem = _one("spec:\n  ingress: [{from_: []}]\n")
    assert problem.path == "spec.ingress[0].from_" and "'from'" in problem.hint


def test_invalid_cidr_is_rejected_with_its_line() -> None:
    """validation.go ValidateIPBlock: the cidr must parse as a CIDR (a bare IP has no prefix)."""
    for cidr in ("10.0.0.300/8", "10.0.0.1", "10.0.0.0/33", "nonsense"):
        problem = _one(f"spec:\n  ingress:\n  - from:\n    - ipBlock: {{cidr: '{cidr}'}}\n")
        assert problem.path == "spec.ingress[0].from[0].ipBlock.cidr" and problem.line == 7
        assert "not a valid CIDR" in problem.message


def test_cidr_forms_the_apiserver_accepts() -> None:
    """The legacy CIDR parser (ParseCIDRSloppy, non-strict validation) accepts host bits and IPv4
    octets with leading zeros, read as decimal."""
    assert str(parse_cidr("10.0.0.1/24")) == "10.0.0.0/24"
    assert str(parse_cidr("010.000.001.000/24")) == "10.0.1.0/24"
    assert str(parse_cidr("2001:db8::1/64")) == "2001:db8::/64"
    _load("spec:\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]\n")


def test_except_must_be_a_strict_subset_of_cidr() -> None:
    """validation.go: each except "must be a strict subset of `cidr`" (inside it, longer prefix)."""
    problems = _problems(
        "spec:\n  egress:\n  - to:\n"
        "    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16, 10.0.0.0/8, '::/0']}\n"
    )
    assert [p.path for p in problems] == [f"spec.egress[0].to[0].ipBlock.except[{i}]" for i in (1, 2, 3)]
    assert all("strict subset" in p.message for p in problems)


def test_end_port_with_a_named_port_is_rejected() -> None:
    """API reference: endPort "cannot be defined if the port field is not defined or if the port
    field is defined as a named (string) port"."""
    problem = _one("spec:\n  ingress: [{ports: [{port: http, endPort: 90}]}]\n")
    assert problem.path == "spec.ingress[0].ports[0].endPort" and "non-numeric" in problem.message
    problem = _one("spec:\n  ingress: [{ports: [{endPort: 90}]}]\n")
    assert "not specified" in problem.message


def test_end_port_must_not_be_below_port() -> None:
    """API reference: "The endPort must be equal or greater than port"."""
    problem = _one("spec:\n  ingress: [{ports: [{port: 100, endPort: 90}]}]\n")
    assert problem.path == "spec.ingress[0].ports[0].endPort"
    _load("spec:\n  ingress: [{ports: [{port: 100, endPort: 100}]}]\n")


def test_port_numbers_and_names_are_validated() -> None:
    """validation.go: IsValidPortNum (1-65535) and IsValidPortName (IANA_SVC_NAME)."""
    assert "between 1 and 65535" in _one("spec:\n  ingress: [{ports: [{port: 0}]}]\n").message
    assert "at least one letter" in _one("spec:\n  ingress: [{ports: [{port: '80'}]}]\n").message
    assert "15 characters" in _one("spec:\n  ingress: [{ports: [{port: a-very-long-port-name}]}]\n").message
    assert "a port number or a port name" in _one("spec:\n  ingress: [{ports: [{port: true}]}]\n").message


def test_protocol_must_be_tcp_udp_or_sctp() -> None:
    """validation.go: protocol NotSupported unless TCP, UDP or SCTP (case matters)."""
    problem = _one("spec:\n  ingress: [{ports: [{protocol: tcp, port: 80}]}]\n")
    assert problem.path == "spec.ingress[0].ports[0].protocol" and "'TCP'" in problem.message


def test_a_peer_may_not_combine_ip_block_with_a_selector() -> None:
    """validation.go ValidateNetworkPolicyPeer: "may not specify both ipBlock and another peer"."""
    problem = _one("spec:\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n")
    assert problem.path == "spec.ingress[0].from[0]" and "both ipBlock" in problem.message


def test_a_peer_must_specify_something() -> None:
    """validation.go ValidateNetworkPolicyPeer: an empty peer is rejected ("must specify a peer")."""
    problem = _one("spec:\n  ingress: [{from: [{}]}]\n")
    assert problem.path == "spec.ingress[0].from[0]" and "must specify a peer" in problem.message


def test_unknown_policy_type_is_rejected_with_a_suggestion() -> None:
    """validation.go: policyTypes entries NotSupported unless Ingress or Egress; at most two."""
    problem = _one("spec:\n  policyTypes: [ingress]\n")
    assert problem.path == "spec.policyTypes[0]" and "'Ingress'" in problem.message
    assert "more than two" in _one("spec:\n  policyTypes: [Ingress, Egress, Ingress]\n").message


def test_selector_operators_and_label_syntax_are_validated() -> None:
    """ValidateLabelSelector: In/NotIn need values, Exists/DoesNotExist take none, keys and values
    must be valid label keys and values."""
    problems = _problems(
        "spec:\n  podSelector:\n    matchLabels: {'bad key': x, app: 'bad value!'}\n"
        "    matchExpressions: [{key: a, operator: Exists, values: [x]}]\n"
    )
    assert {p.path for p in problems} == {
        "spec.podSelector.matchLabels.bad key",
        "spec.podSelector.matchLabels.app",
        "spec.podSelector.matchExpressions[0].values",
    }
