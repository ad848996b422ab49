"""The shop as a live cluster sees it, without building one: examples/shop plus the waypoint
documents `nodemesh up` renders, with the plan's pod addresses and ClusterIPs."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path

from nodemesh.model.loader import load_text
from nodemesh.model.schema.base import Document
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World
from nodemesh.runtime.topology import ClusterPlan, plan_cluster
from nodemesh.waypoint.deployment import GENERATED_MANIFEST, waypoint_manifest

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def shop_docs(*extra: str) -> list[Document]:
    docs = load_documents([str(SHOP)])
    for i, text in enumerate(extra):
        docs += parse_documents(load_text(text, f"extra-{i}.yaml"))
    generated = waypoint_manifest(World.build(docs))
    return [*docs, *parse_documents(load_text(generated, GENERATED_MANIFEST))]


def live_shop(*extra: str) -> tuple[World, ClusterPlan]:
    """The world with addresses (as `nodeproxy.process.build_world` makes it) and the plan."""
    docs = shop_docs(*extra)
    plan = plan_cluster(World.build(docs))
    world = World.build(docs, ips=plan.ips())
    world.cluster_name = plan.name
    for svc in plan.services:
        info = world.services.get((svc.namespace, svc.name))
        if info is not None:
            world.services[(svc.namespace, svc.name)] = dataclasses.replace(
                info, cluster_ip=ipaddress.ip_address(str(svc.cluster_ip))
            )
    return world, plan


def require_jwt_manifest(issuer: str, jwks: str, audiences: Sequence[str] = ()) -> str:
    """A RequestAuthentication of `issuer` (inline JWKS, payload to `x-jwt-payload`) and the
    DENY on `notRequestPrincipals: ["*"]` that makes a token required (reference §4.8), both
    attached to Service orders."""
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: orders-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: orders}}]
  jwtRules:
    - issuer: {json.dumps(issuer)}
      audiences: {json.dumps(list(audiences))}
      outputPayloadToHeader: x-jwt-payload
      jwks: {json.dumps(jwks)}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-require-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: orders}}]
  action: DENY
  rules: [{{from: [{{source: {{notRequestPrincipals: ["*"]}}}}]}}]
"""
