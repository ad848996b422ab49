"""Service load balancing in the kernel: one nftables ruleset per node, rendered from the plan.

This is kube-proxy's nftables mode (kubernetes `pkg/proxy/nftables`), reduced to ClusterIPs:
- a verdict map `service-ips` keyed by `ip daddr . meta l4proto . th dport` sends a packet to the
  chain of its Service port, found in one lookup whatever the number of Services;
- a Service port chain picks an endpoint with `numgen random mod N vmap { 0 : goto ep-..., ... }`,
  uniform over the ready endpoints (kube-proxy's iptables mode reaches the same distribution with
  a cascade of `statistic --probability` rules);
- an endpoint chain DNATs to `podIP:targetPort`, and first marks the packet for masquerade when
  the client is that same endpoint (hairpin: without SNAT the reply would bypass the conntrack
  entry that un-DNATs it); every other connection keeps its source address;
- a Service port without endpoints is in `no-endpoint-services` and is rejected (kube-proxy:
  "ICMP reject for services with no endpoints"), so clients get "connection refused" at once.

Rendering is pure (text in, text out) and the ruleset is loaded with `nft -f` in each node's
namespace as one transaction, so a node has either all of it or none. The table lives only in
the sandbox's node namespaces, never in the host's ruleset.
"""

from __future__ import annotations

import base64
import hashlib

from nodemesh.policy.flow import Protocol
from nodemesh.runtime.topology import ClusterPlan, EndpointPlan, ServicePlan, ServicePortPlan

__all__ = ["MASQUERADE_MARK", "TABLE", "endpoint_chain", "render_ruleset", "service_chain"]

TABLE = "nodemesh-services"
MASQUERADE_MARK = 0x4000  # kube-proxy's KUBE-MARK-MASQ bit


def _hash(text: str) -> str:
    """kube-proxy's chain-name hash: sha256, base32, first 8 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest())[:8].decode()


def _proto(p: Protocol) -> str:
    return p.value.lower()


def service_chain(svc: ServicePlan, port: ServicePortPlan) -> str:
    return f"svc-{_hash(f'{svc.key}:{port.port}/{port.protocol.value}')}"


def endpoint_chain(svc: ServicePlan, port: ServicePortPlan, ep: EndpointPlan) -> str:
    return f"ep-{_hash(f'{svc.key}:{port.port}/{port.protocol.value}:{ep.ip}:{ep.port}')}"


def render_ruleset(plan: ClusterPlan) -> str:
    """The node ruleset (the same on every node: every node load-balances for its own pods)."""
    lines = [
        f"table ip {TABLE} {{",
        f'\tcomment "Service ClusterIPs of cluster {plan.name} (kube-proxy nftables mode)"',
    ]
    lb: list[str] = []
    rejected: list[str] = []
    chains: list[str] = []
    for svc in plan.services:
        for port in svc.ports:
            key = f"{svc.cluster_ip} . {_proto(port.protocol)} . {port.port}"
            if not port.endpoints:
                rejected.append(f"{key} : goto reject-chain")
                continue
            name = service_chain(svc, port)
            lb.append(f"{key} : goto {name}")
            targets = ", ".join(
                f"{i} : goto {endpoint_chain(svc, port, ep)}" for i, ep in enumerate(port.endpoints)
            )
            chains += [
                f"\tchain {name} {{",
                f'\t\tcomment "{svc.key}:{port.name or port.port}"',
                f"\t\tnumgen random mod {len(port.endpoints)} vmap {{ {targets} }}",
                "\t}",
            ]
            for ep in port.endpoints:
                chains += [
                    f"\tchain {endpoint_chain(svc, port, ep)} {{",
                    f'\t\tcomment "{svc.key}:{port.name or port.port} -> {ep.pod}"',
                    f"\t\tip saddr {ep.ip} jump mark-for-masquerade",
                    f"\t\tmeta l4proto {_proto(port.protocol)} dnat to {ep.ip}:{ep.port}",
                    "\t}",
                ]
    for map_name, elements, comment in (
        ("service-ips", lb, "ClusterIP traffic"),
        ("no-endpoint-services", rejected, "ClusterIPs with no endpoints"),
    ):
        lines += [
            f"\tmap {map_name} {{",
            "\t\ttype ipv4_addr . inet_proto . inet_service : verdict",
            f'\t\tcomment "{comment}"',
        ]
        if elements:
            lines.append("\t\telements = { " + ", ".join(elements) + " }")
        lines.append("\t}")
    lines += [
        "\tchain nat-prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain nat-output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain nat-postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tjump masquerading",
        "\t}",
        "\tchain filter-prerouting {",
        "\t\ttype filter hook prerouting priority dstnat + 10; policy accept;",
        "\t\tct state new jump service-endpoints-check",
        "\t}",
        "\tchain filter-output {",
        "\t\ttype filter hook output priority -90; policy accept;",
        "\t\tct state new jump service-endpoints-check",
        "\t}",
        "\tchain service-endpoints-check {",
        "\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "\t}",
        "\tchain reject-chain {",
        "\t\treject",
        "\t}",
        "\tchain mark-for-masquerade {",
        f"\t\tmeta mark set meta mark | {MASQUERADE_MARK:#x}",
        "\t}",
        "\tchain masquerading {",
        f"\t\tmeta mark & {MASQUERADE_MARK:#x} == 0 return",
        f"\t\tmeta mark set meta mark ^ {MASQUERADE_MARK:#x}",
        "\t\tmasquerade fully-random",
        "\t}",
        "\tchain services {",
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips",
        "\t}",
        *chains,
        "}",
    ]
    return "\n".join(lines) + "\n"
