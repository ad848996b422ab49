#!/usr/bin/env bash
# `make demo`: the seed's shop scenario, evaluated by nodemesh's policy engine.
# Shows allowed and denied flows with the exact policy and rule that decided each, and what
# `nodemesh analyze` finds in the manifests.
set -uo pipefail
cd "$(dirname "$0")/.."
NM=.venv/bin/nodemesh
SHOP=examples/shop
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== The shop example (examples/shop/): frontend, orders (2 replicas), reporting; a waypoint;"
echo "== the seed's CiliumNetworkPolicies and AuthorizationPolicy. Mode: ambient."

step $NM trace -f $SHOP --from shop/frontend --to shop/orders --port 8080 --method GET --path /api/v1/orders/7
step $NM trace -f $SHOP --from shop/reporting --to shop/orders --port 8080 --method GET --path /api/v1/orders/7
step $NM trace -f $SHOP --from shop/frontend --to shop/orders --port 8080 --method DELETE --path /api/v1/orders/7

echo
echo "== POST /api/v1/orders/7 with all the seed's policies applied: Cilium merges orders-allow-frontend"
echo "== (L4 only) with orders-http on the same peer and port, which voids the HTTP rules (upstream rule)."
step $NM trace -f $SHOP --from shop/frontend --to shop/orders --port 8080 --method POST --path /api/v1/orders/7
echo
echo "== The same request with orders-http alone (orders-allow-frontend not applied): the HTTP rules decide."
step $NM trace -f $SHOP/00-namespace.yaml -f $SHOP/10-workloads.yaml -f $SHOP/21-orders-http.yaml \
  -f $SHOP/30-istio-policies.yaml --from shop/frontend --to shop/orders --port 8080 --method POST --path /api/v1/orders/7

echo
echo "== Many probes at once (JSON lines in, JSON lines out): a policy test suite for CI."
step $NM trace -f $SHOP --probes examples/shop/probes.jsonl

echo
echo "== What analyze finds in the manifests."
step $NM analyze -f $SHOP
echo
echo "== And in kernel mode (no waypoints): the Istio targetRefs policy has no enforcement point."
step $NM analyze -f $SHOP --mode kernel

if [ "$(id -u)" -ne 0 ]; then
  echo; echo "== (skipping the live cluster: nodemesh up needs root)"; exit 0
fi
echo
echo "== The shop as a live cluster in ambient mode: 2 nodes from network namespaces, the control"
echo "== plane; per node a node agent and a node proxy (in-pod capture, HBONE mTLS, L4 policy); and"
echo "== the waypoint shop/waypoint in its own pod (L7 policy per request: orders-from-frontend)."
NAME=demo-$$
trap '$NM down --name $NAME >/dev/null 2>&1' EXIT
step $NM up -f $SHOP --name $NAME || exit 1
step $NM status --name $NAME
echo
echo "== frontend -> orders (plain curl; captured, HBONE to the waypoint, allowed by orders-from-frontend,"
echo "== HBONE on to an orders pod, allowed there by the CiliumNetworkPolicy):"
step $NM exec --name $NAME shop/frontend -- curl -sS -m 5 -o /dev/null -w "frontend -> orders: HTTP %{http_code}\n" http://orders.shop:8080/api/v1/orders/7
echo
echo "== reporting -> orders (denied at the waypoint: Envoy's 403 'RBAC: access denied'):"
step $NM exec --name $NAME shop/reporting -- curl -sS -m 5 -w "\nreporting -> orders: HTTP %{http_code}\n" http://orders.shop:8080/api/v1/orders/7
echo
echo "== The flow records of both: per request at the waypoint (with the deciding policy) and per"
echo "== connection at the client's node proxy (the tunnel to the waypoint). The waypoint pools its"
echo "== upstream connections, so the destination's record comes when that connection closes."
step $NM observe --name $NAME --last 10
step $NM down --name $NAME
trap - EXIT
exit 0
