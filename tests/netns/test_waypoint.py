"""The ambient waypoint on a live cluster (examples/shop): `nodemesh up` runs the waypoint pod,
plain `curl` from the shop's pods goes node proxy -> HBONE -> waypoint (L7 policy per request)
-> HBONE -> the endpoint's node proxy, and every verdict is the one `nodemesh trace` gives.

One cluster for the module (its `up` is the slow part); tests that apply a policy delete it
again and wait until every proxy enforces the result, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.netns.conftest import Cluster, cli, host_snapshot, require_root, running_cluster, unique_name
from tests.waypoint.shop import require_jwt_manifest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shop"
CLIENT = Path(__file__).with_name("waypoint_client.py")
ORDERS = "http://orders.shop:8080"
WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"

ALLOW_REPORTING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-from-reporting, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: orders}]
  rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/reporting"]}}]
      to: [{operation: {methods: ["GET"]}}]
"""
ONLY_WAYPOINT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-only-via-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/waypoint"]}}]
"""


@pytest.fixture(scope="module")
def shop() -> Iterator[Cluster]:
    require_root()
    before = host_snapshot()
    with running_cluster(EXAMPLE, unique_name("wp")) as cluster:
        assert cluster.up.returncode == 0, cluster.up.stdout + cluster.up.stderr
        yield cluster
    assert host_snapshot() == before


def _http(cluster: Cluster, pod: str, method: str, url: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl request from `pod`; status 0 when no response came."""
    out = cluster.exec(pod, "curl", "-sS", "-m", "5", "-X", method, "-o", "-", "-w", "\n%{http_code}", url)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def _flows(cluster: Cluster, *args: str) -> list[dict[str, object]]:
    out = cli("observe", "--name", cluster.name, "-o", "json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["flow"] for line in out.stdout.splitlines() if line.strip()]


def _waypoint_flows(cluster: Cluster) -> list[dict[str, object]]:
    return [f for f in _flows(cluster, "--last", "200") if f.get("reporter") == "waypoint" and "l7" in f]


def _policies_in_force(cluster: Cluster, timeout: float = 20.0) -> None:
    """Wait until every node proxy and the waypoint enforce what their node agents ACKed."""
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.status()
        acked = {a["node"]: a["acked_version"] for a in status["agents"]}  # type: ignore[index, union-attr]
        proxies = all(p["policy_version"] == acked[p["node"]] for p in status["node_proxies"])  # type: ignore[index, union-attr]
        waypoints = all(w["policy_version"] == acked[w["node"]] for w in status["waypoints"])  # type: ignore[index, union-attr]
        if proxies and waypoints and len(set(acked.values())) == 1:
            return
        assert time.monotonic() < deadline, f"policies not in force: {status}"
        time.sleep(0.2)


def _apply(cluster: Cluster, manifest: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nodemesh.cli.main", "apply", "--cluster", cluster.name, "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    _policies_in_force(cluster)


def _delete(cluster: Cluster, name: str) -> None:
    cli("delete", "--cluster", cluster.name, "authorizationpolicy", name, "-n", "shop")
    _policies_in_force(cluster)


def _trace(probes: list[dict[str, object]], *extra: Path) -> list[dict[str, object]]:
    files = [arg for path in (EXAMPLE, *extra) for arg in ("-f", str(path))]
    text = "\n".join(json.dumps(p) for p in probes)
    out = subprocess.run(
        [sys.executable, "-m", "nodemesh.cli.main", "trace", *files, "--probes", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_waypoint_pod_is_planned_and_serves(shop: Cluster) -> None:
    """Istio's deployment controller runs each Gateway of class istio-waypoint as a Deployment
    named after it, service account = the Gateway's name, pods labelled
    `istio.io/dataplane-mode: none` (IS:.../files/waypoint.yaml): here the waypoint pod has an
    address on a node, its process runs, and the status names its SPIFFE identity."""
    status = shop.status()
    waypoints = status["waypoints"]
    assert isinstance(waypoints, list) and len(waypoints) == 1
    wp = waypoints[0]
    assert wp["waypoint"] == "shop/waypoint" and wp["pod"] == "shop/waypoint-0"
    assert wp["phase"] == "Running" and wp["identity"] == WAYPOINT_ID
    assert shop.pod_ip("shop/waypoint-0") == wp["ip"]
    text = cli("status", "--name", shop.name)
    assert "WAYPOINT" in text.stdout and "shop/waypoint-0" in text.stdout


def test_frontend_allowed_reporting_and_delete_denied_with_rbac_403(shop: Cluster) -> None:
    """AuthorizationPolicy `orders-from-frontend` (targetRefs Service orders) is enforced by the
    waypoint only, in full L7: principals frontend AND methods GET/POST AND paths
    /api/v1/orders*; "If there are any ALLOW policies for the workload, allow the request if it
    matches any of them; deny otherwise". Envoy's RBAC filter answers a denied request with 403
    `RBAC: access denied`, and the connection stays usable for the next request."""
    code, body = _http(shop, "shop/frontend", "GET", f"{ORDERS}/api/v1/orders/7")
    assert code == 200 and json.loads(body)["pod"].startswith("orders-")
    assert _http(shop, "shop/reporting", "GET", f"{ORDERS}/api/v1/orders/7") == (403, "RBAC: access denied")
    assert _http(shop, "shop/frontend", "DELETE", f"{ORDERS}/api/v1/orders/7") == (403, "RBAC: access denied")
    # keep-alive: a denied request, then an allowed one, on ONE client connection
    out = shop.exec(
        "shop/frontend",
        *("curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"),
        *("-X", "DELETE", f"{ORDERS}/api/v1/orders/7", "--next", "-o", "/dev/null"),
        *("-w", "%{http_code} %{num_connects}\n", f"{ORDERS}/api/v1/orders/7"),
    )
    assert out.stdout.split("\n")[:2] == ["403 1", "200 0"], out.stdout + out.stderr


def test_observe_names_the_deciding_policy_and_metrics_report_waypoint(shop: Cluster) -> None:
    """The waypoint writes one L7 flow record per request (reporter `waypoint`); a deny carries
    the deciding AuthorizationPolicy. Istio's `istio_requests_total` is reported with
    `reporter="waypoint"` and `response_code` (IS:tests/integration/ambient/baseline_test.go),
    with the request duration and size histograms beside it (Envoy's default buckets)."""
    _http(shop, "shop/reporting", "GET", f"{ORDERS}/api/v1/orders/8")
    _http(shop, "shop/frontend", "GET", f"{ORDERS}/api/v1/orders/8")
    flows = [f for f in _waypoint_flows(shop) if f["l7"]["http"]["url"] == "/api/v1/orders/8"]  # type: ignore[index]
    denied = next(f for f in flows if f["source"]["pod_name"] == "reporting-0")  # type: ignore[index]
    assert denied["verdict"] == "DROPPED" and denied["l7"]["http"]["code"] == 403  # type: ignore[index]
    assert denied["ingress_denied_by"][0]["name"] == "orders-from-frontend"  # type: ignore[index]
    assert denied["source"]["principal"] == "spiffe://cluster.local/ns/shop/sa/reporting"  # type: ignore[index]
    allowed = next(f for f in flows if f["source"]["pod_name"] == "frontend-0")  # type: ignore[index]
    assert allowed["verdict"] == "FORWARDED" and allowed["l7"]["http"]["code"] == 200  # type: ignore[index]
    compact = cli("observe", "--name", shop.name, "--last", "20")
    assert "AuthorizationPolicy shop/orders-from-frontend" in compact.stdout or (
        "orders-from-frontend" in compact.stdout and "http-response DROPPED" in compact.stdout
    )
    metrics = shop.exec("shop/waypoint", "curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics").stdout
    lines = [line for line in metrics.splitlines() if line.startswith("istio_requests_total{")]
    assert any(
        'reporter="waypoint"' in line
        and 'response_code="403"' in line
        and 'source_workload="reporting"' in line
        and 'source_principal="spiffe://cluster.local/ns/shop/sa/reporting"' in line
        and 'destination_service="orders.shop.svc.cluster.local"' in line
        for line in lines
    ), lines
    assert any('response_code="200"' in line and 'source_workload="frontend"' in line for line in lines)
    durations = [
        ln for ln in metrics.splitlines() if ln.startswith("istio_request_duration_milliseconds_count{")
    ]
    assert any('response_code="200"' in ln and float(ln.rsplit(" ", 1)[1]) >= 1 for ln in durations), (
        durations
    )
    assert any(
        ln.startswith("istio_response_bytes_bucket{") and 'le="3600000"' in ln for ln in metrics.splitlines()
    )


def test_one_keep_alive_connection_is_balanced_per_request_over_both_endpoints(shop: Cluster) -> None:
    """Envoy load-balances per request, not per connection, and Istio's default policy is
    LEAST_REQUEST ("the host with the fewest active requests" of two random healthy hosts, Envoy
    `least_request.proto`): ONE keep-alive client connection from frontend (curl reuses it: one
    connect, then none) sending 20 requests to orders.shop is answered by BOTH orders pods, and
    the waypoint's per-request flow records name the pod that served each request."""
    urls = [f"{ORDERS}/api/v1/orders/{900 + i}" for i in range(20)]
    out = shop.exec(
        "shop/frontend", "curl", "-sS", "-m", "20", "-w", "\n@@ %{http_code} %{num_connects}\n", *urls
    )
    answers = re.findall(r"(.*?)\n@@ (\d+) (\d+)\n", out.stdout, re.S)
    assert len(answers) == len(urls), out.stdout + out.stderr
    assert [(code, connects) for _, code, connects in answers] == [("200", "1")] + [("200", "0")] * 19
    served = [json.loads(body)["pod"] for body, _, _ in answers]
    assert len(set(served)) == 2 and all(p.startswith("orders-") for p in served), served
    records = [f for f in _waypoint_flows(shop) if f["l7"]["http"]["url"] in {u[len(ORDERS) :] for u in urls}]  # type: ignore[index]
    assert len(records) == len(urls)
    by_url = {f["l7"]["http"]["url"]: f["destination"]["pod_name"] for f in records}  # type: ignore[index]
    assert [by_url[u[len(ORDERS) :]] for u in urls] == served
    assert all(f["verdict"] == "FORWARDED" for f in records)


PROBES: list[dict[str, object]] = [
    {"from": "shop/frontend", "to": "shop/orders", "port": 8080, "method": "GET", "path": "/api/v1/orders/7"},
    {"from": "shop/frontend", "to": "shop/orders", "port": 8080, "method": "POST", "path": "/api/v1/orders"},
    {
        "from": "shop/frontend",
        "to": "shop/orders",
        "port": 8080,
        "method": "DELETE",
        "path": "/api/v1/orders/7",
    },
    {"from": "shop/frontend", "to": "shop/orders", "port": 8080, "method": "GET", "path": "/healthz"},
    {
        "from": "shop/reporting",
        "to": "shop/orders",
        "port": 8080,
        "method": "GET",
        "path": "/api/v1/orders/7",
    },
    {"from": "shop/reporting", "to": "shop/frontend", "port": 8080, "method": "GET", "path": "/"},
    {"from": "shop/frontend", "to": "shop/reporting", "port": 8080, "method": "GET", "path": "/x"},
]


def _live(cluster: Cluster, probe: dict[str, object]) -> int:
    service = str(probe["to"]).split("/")[1]
    return _http(
        cluster, str(probe["from"]), str(probe["method"]), f"http://{service}.shop:8080{probe['path']}"
    )[0]


def _expected_status(trace: dict[str, object]) -> int:
    """What a client sees for a trace verdict: 200; the waypoint's 403; a destination deny is a
    refused upstream tunnel, which the waypoint answers with 503 (Envoy's upstream reset)."""
    if trace["verdict"] == "ALLOW":
        return 200
    decided = trace["decided_by"]
    assert isinstance(decided, dict)
    return (
        int(decided["status"]) if decided["point"] == "waypoint" else {"destination": 503}[decided["point"]]
    )


def _check_against_trace(cluster: Cluster, probes: list[dict[str, object]], *extra: Path) -> None:
    traces = _trace(probes, *extra)
    for probe, trace in zip(probes, traces, strict=True):
        assert trace["waypoint"] == "shop/waypoint", trace
        assert _live(cluster, probe) == _expected_status(trace), (probe, trace)
        decided = trace["decided_by"]
        assert isinstance(decided, dict)
        if trace["verdict"] == "DENY" and decided["point"] == "waypoint":
            record = _waypoint_flows(cluster)[-1]
            assert record["l7"]["http"]["url"] == probe["path"]  # type: ignore[index]
            assert record["ingress_denied_by"][0]["name"] == decided["policy"]["name"]  # type: ignore[index]


def test_live_verdicts_equal_nodemesh_trace(shop: Cluster, tmp_path: Path) -> None:
    """trace and the live data path are one engine: for every probe, the waypoint's answer and
    the deciding policy are what `nodemesh trace` says (the waypoint point with full L7, then the
    destination point with the waypoint's identity for Istio and the original client for
    Cilium, reference §4.2). With `orders-from-reporting` applied, reporting passes the waypoint
    and is denied at the destination by CiliumNetworkPolicy orders-allow-frontend, live and in
    trace: the destination evaluates the original client named by the waypoint's `forwarded`."""
    _check_against_trace(shop, PROBES)
    extra = tmp_path / "allow-reporting.yaml"
    extra.write_text(ALLOW_REPORTING)
    _apply(shop, ALLOW_REPORTING)
    try:
        traces = _trace(PROBES[4:5], extra)
        assert traces[0]["decided_by"]["point"] == "destination"  # type: ignore[index]
        _check_against_trace(shop, PROBES[4:5], extra)
        dest = [f for f in _flows(shop, "--last", "50") if f.get("reporter") == "destination"][-1]
        assert dest["ingress_denied_by"][0]["name"] == "orders-allow-frontend"  # type: ignore[index]
    finally:
        _delete(shop, "orders-from-reporting")
    assert _http(shop, "shop/reporting", "GET", f"{ORDERS}/api/v1/orders/7")[0] == 403


def test_destination_sees_the_waypoint_identity(shop: Cluster, tmp_path: Path) -> None:
    """ "When traffic goes through a waypoint, the destination ztunnel still enforces
    selector/namespace policies, but the source identity it sees is the waypoint's SA"
    (reference §4.2): with a selector policy on orders that admits only the waypoint's principal
    (Istio's recommended pairing), frontend reaches orders through the Service (via the
    waypoint) but not by pod IP (no waypoint: its own identity is refused), as trace says. The
    waypoint pools its upstream connections (Envoy), so the destination records one when it
    closes: here when the policy is deleted and the waypoint drops its idle connections."""
    extra = tmp_path / "only-waypoint.yaml"
    extra.write_text(ONLY_WAYPOINT)
    _apply(shop, ONLY_WAYPOINT)
    seen = {json.dumps(f, sort_keys=True) for f in _flows(shop, "--all")}
    try:
        code, _ = _http(shop, "shop/frontend", "GET", f"{ORDERS}/api/v1/orders/7")
        assert code == 200
        pod_ip = shop.pod_ip("shop/orders-0")
        direct = shop.exec("shop/frontend", "curl", "-sS", "-m", "5", f"http://{pod_ip}:8080/api/v1/orders/7")
        assert direct.returncode != 0  # refused at the destination: a reset, no HTTP answer
        direct_trace = _trace([{"from": "shop/frontend", "to": "workload:shop/orders", "port": 8080}], extra)[
            0
        ]
        assert direct_trace["verdict"] == "DENY" and direct_trace["decided_by"]["point"] == "destination"  # type: ignore[index]
        _check_against_trace(shop, PROBES[:1], extra)
    finally:
        _delete(shop, "orders-only-via-waypoint")
    deadline = time.monotonic() + 10.0
    while True:
        flows = [f for f in _flows(shop, "--all") if json.dumps(f, sort_keys=True) not in seen]
        new = [f for f in flows if f.get("reporter") == "destination"]
        via_waypoint = [f for f in new if f["source"]["principal"] == WAYPOINT_ID]  # type: ignore[index]
        if any(f["verdict"] == "FORWARDED" for f in via_waypoint):
            break
        assert time.monotonic() < deadline, new
        time.sleep(0.2)


def _client(cluster: Cluster, authority: str, *identity: str) -> dict[str, object]:
    wp_ip = cluster.pod_ip("shop/waypoint-0")
    out = cluster.exec("shop/waypoint", sys.executable, str(CLIENT), f"{wp_ip}:15008", authority, *identity)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_only_mesh_identities_reach_the_waypoint_and_bad_authority_is_400(shop: Cluster) -> None:
    """The waypoint's HBONE listener verifies the client certificate's chain to the mesh's roots
    and a SPIFFE id in its trust domain (ztunnel `TrustDomainVerifier`, reference §1.2): no
    certificate, or one the mesh did not sign, gets no answer at all. A verified client gets 400
    for a `:authority` that is not a destination of this waypoint (reference §1.3/§1.7)."""
    state = Path("/run/nodemesh") / shop.name
    orders_vip = next(s for s in shop.status()["services"] if s["name"] == "orders")["cluster_ip"]  # type: ignore[index, union-attr]
    assert "refused" in _client(shop, f"{orders_vip}:8080")
    assert "refused" in _client(
        shop, f"{orders_vip}:8080", "--self-signed", "spiffe://cluster.local/ns/shop/sa/frontend"
    )
    node = next(p["node"] for p in shop.status()["pods"] if p["name"] == "frontend-0")  # type: ignore[index, union-attr]
    svid = ("--svid", str(state / "agents" / str(node) / "certs" / "shop_frontend.json"))
    svid += ("--bundle", str(state / "controlplane" / "nodes" / str(node) / "ca.crt"))
    assert _client(shop, f"{orders_vip}:8080", *svid) == {"status": 200}
    assert _client(shop, f"{orders_vip}:9999", *svid) == {"status": 400}  # no such Service port
    assert _client(shop, "orders.shop:8080", *svid) == {"status": 400}  # not an IP
    frontend_ip = shop.pod_ip("shop/frontend-0")
    assert _client(shop, f"{frontend_ip}:8080", *svid) == {"status": 400}  # no workload waypoint


JWT_ISSUER = "https://issuer.shop.example"


def _http_with(cluster: Cluster, url: str, *headers: str) -> tuple[int, dict[str, str], str]:
    """(status, response headers, body) of a GET from frontend with extra request headers."""
    flags = [arg for h in headers for arg in ("-H", h)]
    out = cluster.exec("shop/frontend", "curl", "-sS", "-m", "5", "-D", "-", *flags, url)
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *fields = head.splitlines()
    parsed = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), parsed, body


def test_request_authentication_verifies_tokens_live_as_trace_says(shop: Cluster, tmp_path: Path) -> None:
    """RequestAuthentication at the waypoint (reference §4.8, Envoy jwt_authn): "An invalid token
    → rejected with 401. No token → accepted with no request principal", and "To require a
    token, add ... DENY with `notRequestPrincipals: ["*"]`". Live, with an inline JWKS: no token
    is 403 `RBAC: access denied`; a token signed by another key is 401 `Jwt verification fails`,
    an expired one 401 `Jwt is expired`, one for another audience 403 `Audiences in Jwt are not
    allowed` (Envoy answers jwt_verify's status string, 403 only for JwtAudienceNotAllowed), each
    with `www-authenticate: Bearer realm=..., error="invalid_token"`;
    a valid one reaches orders without its Authorization header and with the payload in
    `outputPayloadToHeader`; each verdict is the one `nodemesh trace` gives with the same claims."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = json.dumps({"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}]})
    claims = {"iss": JWT_ISSUER, "sub": "alice", "aud": "orders", "exp": int(time.time()) + 600}

    def mint(signer: rsa.RSAPrivateKey, **extra: object) -> str:
        return pyjwt.encode({**claims, **extra}, signer, algorithm="RS256", headers={"kid": "k1"})

    manifest = require_jwt_manifest(JWT_ISSUER, jwks, audiences=["orders"])
    extra = tmp_path / "jwt.yaml"
    extra.write_text(manifest)
    _apply(shop, manifest)
    try:
        url = f"{ORDERS}/api/v1/orders/7"
        probe: dict[str, object] = {
            "from": "shop/frontend",
            "to": "shop/orders",
            "port": 8080,
            "method": "GET",
            "path": "/api/v1/orders/7",
        }
        none, invalid, valid = _trace(
            [probe, {**probe, "jwt_invalid": True}, {**probe, "jwt_claims": claims}], extra
        )
        status, _, body = _http_with(shop, url)
        assert (status, body) == (403, "RBAC: access denied") and _expected_status(none) == 403
        assert none["decided_by"]["policy"]["name"] == "orders-require-jwt"  # type: ignore[index]
        realm = 'Bearer realm="http://orders.shop:8080/api/v1/orders/7", error="invalid_token"'
        bad_tokens = (
            (mint(stranger), 401, "Jwt verification fails"),
            (mint(key, exp=int(time.time()) - 600), 401, "Jwt is expired"),
            (mint(key, aud="billing"), 403, "Audiences in Jwt are not allowed"),
        )
        for bad, code, text in bad_tokens:
            status, headers, body = _http_with(shop, url, f"Authorization: Bearer {bad}")
            assert (status, body) == (code, text)
            assert headers["www-authenticate"] == realm
        assert _expected_status(invalid) == 401
        token = mint(key)
        status, _, body = _http_with(shop, url, f"Authorization: Bearer {token}")
        assert status == 200 and _expected_status(valid) == 200, (body, valid)
        seen = json.loads(body)["headers"]
        assert "authorization" not in seen and seen["x-jwt-payload"] == token.split(".")[1]
        record = _waypoint_flows(shop)[-1]
        assert record["verdict"] == "FORWARDED" and record["l7"]["http"]["code"] == 200  # type: ignore[index]
    finally:
        cli("delete", "--cluster", shop.name, "-f", str(extra))
        _policies_in_force(shop)
    assert _http(shop, "shop/frontend", "GET", f"{ORDERS}/api/v1/orders/7")[0] == 200
