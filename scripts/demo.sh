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
echo "== The same shop as a live cluster: 2 nodes from network namespaces, the control plane and a"
echo "== node agent per node. The ambient data path is not built yet, so the cluster runs with no"
echo "== mesh (mode none): traffic flows, nothing is enforced; the verdicts above are what the mesh will do."
NAME=demo-$$
trap '$NM down --name $NAME >/dev/null 2>&1' EXIT
step $NM up -f $SHOP --name $NAME
step $NM status --name $NAME
step $NM exec --name $NAME shop/frontend -- curl -s -m 5 http://orders.shop:8080/api/v1/orders/7
echo
step $NM exec --name $NAME shop/reporting -- curl -s -m 5 -o /dev/null -w "reporting -> orders: HTTP %{http_code} (no mesh: not enforced)\n" http://orders:8080/api/v1/orders/7
step $NM down --name $NAME
trap - EXIT
exit 0
