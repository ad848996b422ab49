"""Node authorization: a node may only obtain certificates for identities of its own pods."""

from __future__ import annotations

from nodemesh.ca import NodeAuthorizer, SpiffeId

ORDERS = SpiffeId("cluster.local", "shop", "orders")
REPORTING = SpiffeId("cluster.local", "shop", "reporting")


def _authorizer() -> NodeAuthorizer:
    return NodeAuthorizer.from_pods(
        "cluster.local", [("node-0", ORDERS), ("node-1", ORDERS), ("node-1", REPORTING)]
    )


def test_node_gets_identities_of_its_own_pods() -> None:
    """Istio node_auth.go: the node authorizer "validates that a node proxy which requests
    certificates for workloads on its own node is request valid identities which run on that
    node (rather than arbitrary ones)"."""
    assert _authorizer().authorize("node-0", ORDERS).allowed
    assert _authorizer().authorize("node-1", REPORTING).allowed


def test_identity_of_a_pod_on_another_node_is_refused_with_istios_reason() -> None:
    """Istio node_auth.go refuses with `no instances of %q found on node %q` when no pod with the
    requested service account is scheduled on the caller's node."""
    decision = _authorizer().authorize("node-0", REPORTING)
    assert not decision.allowed
    assert decision.reason == 'no instances of "shop/reporting" found on node "node-0"'
    assert not _authorizer().authorize("node-9", ORDERS).allowed


def test_other_trust_domain_is_refused() -> None:
    decision = _authorizer().authorize("node-0", SpiffeId("evil.example", "shop", "orders"))
    assert not decision.allowed and "trust domain" in decision.reason
