"""Pure routing and admission decisions (no sockets): outbound `build_request`, inbound
`decide_inbound` / `decide_plaintext`, as ztunnel's `build_request` and `build_inbound_request`."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import Waypoint, World
from nodemesh.nodeproxy import InboundRequest, OutboundKind, build_request, decide_inbound, decide_plaintext
from nodemesh.nodeproxy.outbound import baggage_for
from nodemesh.policy.engine import PolicyEngine

IP = ipaddress.ip_address

BASE = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: legacy, labels: {istio.io/dataplane-mode: none}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: frontend, namespace: shop}
    spec:
      replicas: 1
      selector: {matchLabels: {app: frontend}}
      template:
        metadata: {labels: {app: frontend, version: v2}}
        spec: {serviceAccountName: frontend, containers: [{name: c}]}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: orders, namespace: shop}
    spec:
      replicas: 2
      selector: {matchLabels: {app: orders}}
      template:
        metadata: {labels: {app: orders}}
        spec:
          serviceAccountName: orders
          containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: orders, namespace: shop}
    spec:
      selector: {app: orders}
      clusterIP: 10.96.0.20
      ports: [{port: 80, targetPort: http}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty, namespace: shop}
    spec:
      selector: {app: nothing}
      clusterIP: 10.96.0.21
      ports: [{port: 80, targetPort: 8080}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: old, namespace: legacy, labels: {app: old}}
    spec: {serviceAccountName: default, containers: [{name: c}]}
    """
)
IPS = {
    "shop/frontend-0": "10.244.1.5",
    "shop/orders-0": "10.244.2.7",
    "shop/orders-1": "10.244.2.8",
    "legacy/old": "10.244.3.3",
}


def engine(extra: str = "") -> PolicyEngine:
    text = BASE + (f"---\n{extra}" if extra else "")
    return PolicyEngine(World.build(parse_documents(load_text(text, "w.yaml")), ips=IPS), "ambient")


def first(endpoints: object) -> object:
    return endpoints[0]  # type: ignore[index]


def test_pod_address_goes_hbone_to_pod_port_15008() -> None:
    """Reference §1.6 step 5: a mesh destination is reached over HBONE at `podIP:15008`,
    `:authority = podIP:targetPort`, and the server must prove the pod's SPIFFE identity."""
    e = engine()
    frontend = e.world.find_workloads("shop", "frontend")[0]
    plan = build_request(frontend, (IP("10.244.2.8"), 8080), e, first)  # type: ignore[arg-type]
    assert plan.kind is OutboundKind.HBONE
    assert plan.next_hop == (IP("10.244.2.8"), 15008)
    assert plan.authority == "10.244.2.8:8080"
    assert plan.dst_identity == "spiffe://cluster.local/ns/shop/sa/orders"
    assert plan.src_identity == "spiffe://cluster.local/ns/shop/sa/frontend"
    key = plan.pool_key
    assert key is not None and key.dst == ("10.244.2.8", 15008)


def test_service_vip_is_load_balanced_and_translated_to_the_target_port() -> None:
    """Reference §1.3: "The service port has already been translated to targetPort on the
    client side" (a named targetPort resolves to the chosen pod's container port)."""
    e = engine()
    frontend = e.world.find_workloads("shop", "frontend")[0]
    plan = build_request(frontend, (IP("10.96.0.20"), 80), e, lambda eps: eps[-1])
    assert plan.kind is OutboundKind.HBONE
    assert plan.authority == "10.244.2.8:8080"
    assert plan.service is not None and plan.service.hostname == "orders.shop.svc.cluster.local"


def test_service_without_endpoints_is_refused() -> None:
    """Reference §1.6 step 2: a Service VIP with no upstream is `NoHealthyUpstream`."""
    e = engine()
    frontend = e.world.find_workloads("shop", "frontend")[0]
    plan = build_request(frontend, (IP("10.96.0.21"), 80), e, first)  # type: ignore[arg-type]
    assert plan.kind is OutboundKind.REJECT and "no healthy upstream" in plan.reason


def test_destinations_outside_the_mesh_get_plain_tcp() -> None:
    """Reference §1.6: no workload -> "plain TCP passthrough to the original destination"; a pod
    not in the mesh (`InboundProtocol::TCP`) -> plain TCP too."""
    e = engine()
    frontend = e.world.find_workloads("shop", "frontend")[0]
    outside = build_request(frontend, (IP("93.184.216.34"), 443), e, first)  # type: ignore[arg-type]
    assert outside.kind is OutboundKind.PASSTHROUGH and outside.next_hop == (IP("93.184.216.34"), 443)
    legacy = build_request(frontend, (IP("10.244.3.3"), 80), e, first)  # type: ignore[arg-type]
    assert legacy.kind is OutboundKind.PASSTHROUGH and legacy.pool_key is None


def test_service_waypoint_gets_the_original_vip_as_authority() -> None:
    """Reference §1.3: to a waypoint, `:authority` is the ORIGINAL destination `<VIP>:<port>` and
    the TCP destination is `<waypointIP>:15008`; the server must be the waypoint's identity."""
    wp = textwrap.dedent(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}
        spec:
          gatewayClassName: istio-waypoint
          listeners: [{name: mesh, port: 15008, protocol: HBONE}]
        """
    )
    text = BASE.replace(
        "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}",
        "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}",
    )
    e = PolicyEngine(
        World.build(parse_documents(load_text(text + "---\n" + wp, "w.yaml")), ips=IPS), "ambient"
    )
    frontend = e.world.find_workloads("shop", "frontend")[0]

    def address(w: Waypoint) -> ipaddress.IPv4Address:
        return IP("10.244.9.9")  # type: ignore[return-value]

    plan = build_request(frontend, (IP("10.96.0.20"), 80), e, first, address)  # type: ignore[arg-type]
    assert plan.kind is OutboundKind.HBONE
    assert plan.next_hop == (IP("10.244.9.9"), 15008)
    assert plan.authority == "10.96.0.20:80"
    assert plan.dst_identity == "spiffe://cluster.local/ns/shop/sa/waypoint"
    no_address = build_request(frontend, (IP("10.96.0.20"), 80), e, first)  # type: ignore[arg-type]
    assert no_address.kind is OutboundKind.REJECT  # fail closed: never bypass the waypoint


def test_proxy_ports_on_loopback_are_refused() -> None:
    """Reference §1.1: a resolved destination port in {15001, 15006, 15008} on loopback is
    `SelfCall` ("attempted recursive call to ourselves")."""
    e = engine()
    frontend = e.world.find_workloads("shop", "frontend")[0]
    plan = build_request(frontend, (IP("127.0.0.1"), 15001), e, first)  # type: ignore[arg-type]
    assert plan.kind is OutboundKind.REJECT and "recursive" in plan.reason


def test_source_egress_policy_is_enforced_at_the_source() -> None:
    """The engine's ambient semantics: Kubernetes egress rules are enforced at the source's node
    proxy; a denied flow is refused there, with the deciding policy."""
    deny_egress = textwrap.dedent(
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: no-egress, namespace: shop}
        spec:
          podSelector: {matchLabels: {app: frontend}}
          policyTypes: [Egress]
        """
    )
    e = engine(deny_egress)
    frontend = e.world.find_workloads("shop", "frontend")[0]
    plan = build_request(frontend, (IP("10.244.2.7"), 8080), e, first)  # type: ignore[arg-type]
    assert plan.kind is OutboundKind.REJECT and plan.response_flag == "DENY"
    assert plan.decision is not None and "no-egress" in str(plan.decision.policy)


def test_baggage_uses_canonical_labels() -> None:
    """ZT:src/baggage.rs: service.name/version from the canonical labels (app, version)."""
    e = engine()
    b = baggage_for(e.world, e.world.find_workloads("shop", "frontend")[0])
    assert (b.namespace, b.workload_type, b.workload_name) == ("shop", "deployment", "frontend")
    assert (b.service_name, b.service_version) == ("frontend", "v2")


# ---- inbound ---------------------------------------------------------------------------------
ORDERS_ONLY_FRONTEND = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: orders-from-frontend, namespace: shop}
    spec:
      selector: {matchLabels: {app: orders}}
      action: ALLOW
      rules:
        - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
    """
)


def _req(authority: str, identity: str | None, method: str = "CONNECT") -> InboundRequest:
    return InboundRequest(method, authority, IP("10.244.2.7"), (IP("10.244.1.5"), 40000), identity)


def test_inbound_refuses_what_is_not_a_connect_to_this_pod() -> None:
    """Reference §1.3: 400 when "method is not CONNECT, bad authority, or the authority IP ≠ the IP
    the 15008 connection arrived on"."""
    e = engine()
    orders = e.world.find_workloads("shop", "orders")[0]
    fe = "spiffe://cluster.local/ns/shop/sa/frontend"
    assert decide_inbound(_req("10.244.2.7:8080", fe, "GET"), orders, e).status == 400
    assert decide_inbound(_req("orders:8080", fe), orders, e).status == 400
    mismatch = decide_inbound(_req("10.244.2.8:8080", fe), orders, e)
    assert mismatch.status == 400 and mismatch.reason == "ip mismatch: 10.244.2.8 != 10.244.2.7"
    assert decide_inbound(_req("10.244.2.7:15008", fe), orders, e).status == 400


def test_inbound_rbac_uses_the_certificate_principal_only() -> None:
    """Reference §1.7: RBAC uses "src_identity = the peer cert SAN and dst = podIP:<target
    port>"; the source address's pod lends labels, never an identity."""
    e = engine(ORDERS_ONLY_FRONTEND)
    orders = e.world.find_workloads("shop", "orders")[0]
    allowed = decide_inbound(_req("10.244.2.7:8080", "spiffe://cluster.local/ns/shop/sa/frontend"), orders, e)
    assert allowed.status == 200
    assert allowed.upstream == (IP("10.244.2.7"), 8080) and allowed.source_ip == IP("10.244.1.5")
    assert allowed.ctx is not None and allowed.ctx.src.workload == "frontend" and allowed.ctx.port == 8080
    # same source address (frontend's pod), another certificate: denied -> 401
    other = decide_inbound(_req("10.244.2.7:8080", "spiffe://cluster.local/ns/shop/sa/orders"), orders, e)
    assert other.status == 401 and other.response_flag == "DENY"
    assert other.decision is not None and "orders-from-frontend" in str(other.decision.policy)


@pytest.mark.parametrize("strict", [False, True])
def test_plaintext_needs_a_policy_that_allows_no_identity(strict: bool) -> None:
    """Reference §4.7: PERMISSIVE (the default) allows plaintext through 15006; STRICT becomes a
    DENY for connections without a peer identity."""
    pa = textwrap.dedent(
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: shop}
        spec: {mtls: {mode: STRICT}}
        """
    )
    e = engine(pa if strict else "")
    orders = e.world.find_workloads("shop", "orders")[0]
    plan = decide_plaintext((IP("10.244.2.7"), 8080), (IP("10.244.1.5"), 1234), orders, e)
    assert plan.status == (401 if strict else 200)
    assert plan.ctx is not None and plan.ctx.src.principal is None
