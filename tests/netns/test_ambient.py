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
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.netns.conftest import (
    CLI,
    Cluster,
    cli,
    host_snapshot,
    require_root,
    running_cluster,
    unique_name,
)

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shop-ambient-l4"
ORDERS = "http://orders.shop:8080/api/v1/orders/7"
POLICY = "orders-allow-frontend-principal"
DENY_POLICY = "orders-deny-frontend"
DENY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {DENY_POLICY}, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/shop/sa/frontend"]
"""
# A keep-alive client in frontend's pod: one request, then it waits for the connection's end.
LONG_LIVED = """
import socket
s = socket.create_connection(("orders.shop", 8080), timeout=60)
s.sendall(b"GET /api/v1/orders/7 HTTP/1.1\\r\\nhost: orders.shop\\r\\n\\r\\n")
data = b""
while b"\\r\\n\\r\\n" not in data:
    data += s.recv(65536)
head, _, body = data.partition(b"\\r\\n\\r\\n")
length = next(int(h.split(b":")[1]) for h in head.split(b"\\r\\n") if h.lower().startswith(b"content-length"))
while len(body) < length:
    body += s.recv(65536)
print(head.split(b"\\r\\n")[0].decode(), flush=True)
try:
    print("closed" if not s.recv(65536) else "data", flush=True)
except TimeoutError:
    print("open", flush=True)
except OSError as exc:
    print("reset", exc, flush=True)
"""


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


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of `process`'s stdout, or "" once `timeout` passed or it ended."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().strip()


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _acked(c: Cluster) -> dict[str, str]:
    agents = c.status()["agents"]
    assert isinstance(agents, list)
    return {str(a["node"]): str(a["acked_version"]) for a in agents}


def _enforced_everywhere(c: Cluster, before: dict[str, str]) -> Callable[[], bool]:
    """Every agent ACKed a version newer than `before`, and its node proxy enforces it."""

    def done() -> bool:
        status = c.status()
        agents, proxies = status["agents"], status["node_proxies"]
        assert isinstance(agents, list) and isinstance(proxies, list)
        acked = {str(a["node"]): str(a["acked_version"]) for a in agents}
        enforced = {str(p["node"]): str(p["policy_version"]) for p in proxies}
        return all(acked[n] != before[n] for n in before) and enforced == acked

    return done


def test_a_policy_applied_after_up_closes_live_connections_and_is_enforced_until_deleted(
    tmp_path: Path,
) -> None:
    """Istio AuthorizationPolicy: "If there are any DENY policies that match the request, deny
    the request", and ztunnel's PolicyWatcher "re-evaluates tracked inbound connections whenever
    policy changes and closes any that are now denied" (istio-ambient.md, ztunnel). A policy
    applied to the running cluster reaches every node proxy through its agent's ACKed view:
    frontend's open keep-alive connection to orders is closed, its new connections are refused,
    `observe` names the new policy, and deleting the policy lets frontend in again."""
    require_root()
    name = unique_name("amp")
    deny = tmp_path / "deny.yaml"
    deny.write_text(DENY)
    with running_cluster(EXAMPLE, name) as c:
        assert c.up.returncode == 0, c.up.stdout + c.up.stderr
        assert c.curl_json("shop/frontend", ORDERS)["pod"] in ("orders-0", "orders-1")
        client = subprocess.Popen(
            [*CLI, "exec", "--name", name, "shop/frontend", "--", sys.executable, "-c", LONG_LIVED],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert _readline(client, 30) == "HTTP/1.1 200 OK"  # the connection is open, idle

            before = _acked(c)
            applied = cli("apply", "--cluster", name, "-f", str(deny))
            assert applied.returncode == 0, applied.stderr
            _wait_for("the new policy in every node proxy", _enforced_everywhere(c, before))

            assert _readline(client, 30).split(" ")[0] in ("closed", "reset")
        finally:
            client.kill()
            client.communicate()

        denied = c.exec("shop/frontend", "curl", "-sS", "-m", "5", ORDERS)
        assert denied.returncode != 0, denied.stdout
        out = cli("observe", "--name", name, "--verdict", "DROPPED", "-o", "json", "--last", "50")
        assert out.returncode == 0, out.stderr
        flows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        flows = [f.get("flow", f) for f in flows]
        drops = [
            f
            for f in flows
            if f.get("reporter") == "destination" and f["source"].get("pod_name") == "frontend-0"
        ]
        assert drops and DENY_POLICY in json.dumps(drops[-1]), out.stdout

        before = _acked(c)
        deleted = cli("delete", "--cluster", name, "AuthorizationPolicy", DENY_POLICY, "-n", "shop")
        assert deleted.returncode == 0, deleted.stderr
        _wait_for("the deletion in every node proxy", _enforced_everywhere(c, before))
        assert c.curl_json("shop/frontend", ORDERS)["pod"] in ("orders-0", "orders-1")
