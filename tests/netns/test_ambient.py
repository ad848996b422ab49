"""Mode ambient on the local cluster, end to end through the CLI: `up` runs a node proxy per node,
plain `curl` from a pod is captured, tunnelled over HBONE and authorized at the destination, and
`nodemesh observe` shows the allowed and the denied flow with the deciding policy.

The cluster is examples/shop-ambient-l4/: the shop's workloads in an ambient namespace without
a waypoint, and an L4 AuthorizationPolicy allowing only frontend's principal to reach orders.
frontend-0 and orders-1 share node-0, orders-0 is on node-1: a Service VIP reaches both a
same-node and a cross-node replica.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netns.conftest import cli, host_snapshot, require_root, running_cluster, unique_name

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shop-ambient-l4"
ORDERS = "http://orders.shop:8080/api/v1/orders/7"
POLICY = "orders-allow-frontend-principal"


def test_ambient_shop_allows_frontend_denies_reporting_and_observe_names_the_policy() -> None:
    """Istio AuthorizationPolicy: "If there are any ALLOW policies for the workload, allow the
    request if it matches any of them; deny otherwise", with `principals` matched against the
    peer's mTLS identity, enforced by ztunnel at the destination (L4); ztunnel balances a Service
    VIP over its endpoints. A denied HBONE CONNECT fails the client's connection, and the flow
    record names the policy that decided."""
    require_root()
    before = host_snapshot()
    name = unique_name("amb")
    with running_cluster(EXAMPLE, name) as c:
        assert c.up.returncode == 0, c.up.stdout + c.up.stderr
        assert "mode ambient" in c.up.stdout
        status = c.status()
        proxies = status["node_proxies"]
        assert isinstance(proxies, list) and len(proxies) == 2
        assert all(p["phase"] == "Running" and set(p["expected"]) <= set(p["pods"]) for p in proxies)
        assert {p for n in proxies for p in n["pods"]} >= {
            "shop/frontend-0",
            "shop/orders-0",
            "shop/orders-1",
        }

        frontend_ip = c.pod_ip("shop/frontend-0")
        reached: set[str] = set()
        for _ in range(24):
            reply = c.curl_json("shop/frontend", ORDERS)
            reached.add(str(reply["pod"]))
            assert reply["peer_ip"] == frontend_ip  # the client's address is kept end to end
            if reached == {"orders-0", "orders-1"}:
                break
        assert reached == {"orders-0", "orders-1"}  # same node (orders-1) and cross node (orders-0)

        denied = c.exec("shop/reporting", "curl", "-sS", "-m", "5", ORDERS)
        assert denied.returncode != 0, denied.stdout

        out = cli("observe", "--name", name, "--verdict", "DROPPED", "-o", "json", "--last", "50")
        assert out.returncode == 0, out.stderr
        flows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        flows = [f.get("flow", f) for f in flows]
        ingress = [f for f in flows if f.get("reporter") == "destination"]
        assert ingress, out.stdout
        drop = ingress[-1]
        assert drop["verdict"] == "DROPPED"
        assert drop["source"]["pod_name"] == "reporting-0"
        assert drop["source"]["principal"] == "spiffe://cluster.local/ns/shop/sa/reporting"
        assert drop["destination"]["pod_name"] in ("orders-0", "orders-1")
        assert POLICY in json.dumps(drop)

        allowed = cli("observe", "--name", name, "--verdict", "FORWARDED", "--from-pod", "shop/frontend-0")
        assert allowed.returncode == 0 and "FORWARDED" in allowed.stdout, allowed.stderr
    assert host_snapshot() == before
