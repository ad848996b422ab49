"""The ambient waypoint proxy (Istio Ambient's L7 hop, reference §1.6-1.7, §4.2, §4.8, §5.2).

Modules (import them directly; this package's namespace stays light because the node proxy
imports `deployment` to recognise a waypoint peer):
- `deployment` (pure): the waypoint's ServiceAccount and Deployment as Istio's deployment
  controller renders them, and `waypoint_of(world, pod)`;
- `decide` (pure): `decide_connect` (HBONE CONNECT -> 200/400/401/503 and the endpoints),
  `decide_request` (the engine's waypoint point per request -> forward, or 403/401),
  `decide_http` (jwt_authn, then `decide_request`);
- `balance` (pure): Envoy's LEAST_REQUEST (two random choices, fewer active requests wins),
  the endpoint of each request;
- `jwt_authn` (pure): RequestAuthentication as Envoy's jwt_authn filter (token locations,
  checks, several rules, the forwarded request's edits); `jwt_verify` (pure): one token's parse
  and signature as jwt_verify_lib does them, with PyJWT's algorithms;
- `http` (sans-IO): one client connection's HTTP/1.1 exchange over h11, both sides;
- `observe` (pure + a collector): L7 flow records and `istio_requests_total`;
- `proxy` (asyncio): the 15008 listener, sessions, upstream HBONE through the node proxy's pool;
- `process`: the process the runtime runs in the waypoint pod (`python -m nodemesh.waypoint.process`).
"""

from nodemesh.waypoint.deployment import (
    GATEWAY_NAME_LABEL,
    GENERATED_MANIFEST,
    MANAGED_LABEL,
    MANAGED_VALUE,
    WAYPOINT_IMAGE,
    waypoint_documents,
    waypoint_manifest,
    waypoint_of,
    waypoint_pods,
)

__all__ = [
    "GATEWAY_NAME_LABEL",
    "GENERATED_MANIFEST",
    "MANAGED_LABEL",
    "MANAGED_VALUE",
    "WAYPOINT_IMAGE",
    "waypoint_documents",
    "waypoint_manifest",
    "waypoint_of",
    "waypoint_pods",
]
