"""Service load balancing rules (kube-proxy nftables mode), checked as rendered text."""

from __future__ import annotations

from pathlib import Path

from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.runtime.services import TABLE, endpoint_chain, render_ruleset, service_chain
from nodemesh.runtime.topology import plan_cluster

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def _shop_rules() -> tuple[str, object]:
    plan = plan_cluster(World.build(load_documents([SHOP])))
    return render_ruleset(plan), plan


def test_cluster_ips_dispatch_through_one_verdict_map() -> None:
    """kube-proxy nftables: `ip daddr . meta l4proto . th dport vmap @service-ips`."""
    rules, _ = _shop_rules()
    assert rules.startswith(f"table ip {TABLE} {{")
    assert "ip daddr . meta l4proto . th dport vmap @service-ips" in rules
    assert "10.96.0.10 . udp . 53 : goto svc-" in rules
    assert "10.96.0.2 . tcp . 8080 : goto svc-" in rules


def test_replicas_are_picked_uniformly_with_numgen() -> None:
    """kube-proxy nftables: `numgen random mod N vmap { 0 : goto endpoint-..., ... }`."""
    rules, plan = _shop_rules()
    orders = next(s for s in plan.services if s.name == "orders")  # type: ignore[attr-defined]
    port = orders.ports[0]
    chain = service_chain(orders, port)
    eps = [endpoint_chain(orders, port, ep) for ep in port.endpoints]
    assert f"numgen random mod 2 vmap {{ 0 : goto {eps[0]}, 1 : goto {eps[1]} }}" in rules
    assert f"chain {chain} {{" in rules
    for ep in port.endpoints:
        assert f"meta l4proto tcp dnat to {ep.ip}:{ep.port}" in rules


def test_only_hairpin_traffic_is_masqueraded() -> None:
    """kube-proxy marks for masquerade only when the client is the chosen endpoint
    (`ip saddr <ep> jump mark-for-masquerade`), so every other client keeps its source IP."""
    rules, _ = _shop_rules()
    assert "ip saddr 10.244.1.2 jump mark-for-masquerade" in rules
    assert "meta mark & 0x4000 == 0 return" in rules
    assert rules.count("masquerade fully-random") == 1


def test_a_service_without_endpoints_is_rejected_not_blackholed() -> None:
    """kube-proxy: services with no endpoints go to `no-endpoint-services` and are rejected."""
    from nodemesh.model.loader import load_text
    from nodemesh.model.validate import parse_documents

    text = """
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: t}
spec:
  selector: {app: none}
  ports: [{port: 80}]
"""
    plan = plan_cluster(World.build(parse_documents(load_text(text, "s.yaml"))))
    rules = render_ruleset(plan)
    ip = next(s.cluster_ip for s in plan.services if s.name == "empty")
    assert f"{ip} . tcp . 80 : goto reject-chain" in rules
    assert "ct state new jump service-endpoints-check" in rules
