"""The waypoint's pod, as Istio's deployment controller makes it (pure).

Istio does not run a waypoint from the Gateway resource directly: its deployment controller
renders, for each Gateway of class `istio-waypoint`, a ServiceAccount and a Deployment named
after the Gateway (IS:manifests/charts/istio-control/istio-discovery/files/waypoint.yaml):

- service account = the Gateway's name, so the waypoint's SPIFFE id is
  `spiffe://<td>/ns/<ns>/sa/<gateway>`;
- pod labels `gateway.networking.k8s.io/gateway-name: <gateway>`,
  `gateway.istio.io/managed: istio.io-mesh-controller` and **`istio.io/dataplane-mode: none`**:
  the waypoint pod is never redirected by istio-cni (its own HBONE listener is the way in);
- `service.istio.io/canonical-name: <gateway>` (its metrics' workload labels).

nodemesh's local runtime does the same at `up` (mode ambient): `waypoint_manifest(world)` renders
those documents, the runtime adds them to the cluster's manifest snapshot, and from then on the
waypoint is an ordinary pod for every component: the plan places it and gives it an address,
the control plane's placement and node authorization know it (a node agent only obtains
certificates for pods of its own node), and the node agent of its node obtains its SVID. What
runs in the pod is not a container but the waypoint process (`nodemesh.waypoint.process`),
supervised by the runtime like a node proxy. The Istio chart's Service for the waypoint is not
rendered: node proxies are given the waypoint pod's address directly.

`waypoint_of(world, workload)` says whether a pod is the waypoint pod of a Gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from nodemesh.model.world import Waypoint, Workload, World

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

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"
WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_IMAGE = "nodemesh/waypoint"
GENERATED_MANIFEST = "waypoints.generated.yaml"
"""The file name the runtime gives the rendered documents in a cluster's manifest snapshot."""


def _exists(world: World, kind: str, namespace: str, name: str) -> bool:
    return any(d.kind == kind and d.namespace == namespace and d.name == name for d in world.documents)


def waypoint_documents(world: World) -> list[dict[str, object]]:
    """A ServiceAccount (unless one of that name exists) and a Deployment per waypoint Gateway
    that has no Deployment of its name yet, in manifest order."""
    out: list[dict[str, object]] = []
    for wp in world.waypoints.values():
        if _exists(world, "Deployment", wp.namespace, wp.name):
            continue
        if not _exists(world, "ServiceAccount", wp.namespace, wp.service_account):
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {
                        "name": wp.service_account,
                        "namespace": wp.namespace,
                        "labels": {GATEWAY_NAME_LABEL: wp.name, GATEWAY_CLASS_LABEL: WAYPOINT_CLASS},
                    },
                }
            )
        pod_labels = {
            "istio.io/dataplane-mode": "none",
            "service.istio.io/canonical-name": wp.name,
            "service.istio.io/canonical-revision": "latest",
            GATEWAY_NAME_LABEL: wp.name,
            GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
            MANAGED_LABEL: MANAGED_VALUE,
        }
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": wp.name,
                    "namespace": wp.namespace,
                    "labels": {
                        GATEWAY_NAME_LABEL: wp.name,
                        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
                        MANAGED_LABEL: MANAGED_VALUE,
                    },
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {GATEWAY_NAME_LABEL: wp.name}},
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "serviceAccountName": wp.service_account,
                            "containers": [
                                {
                                    "name": "istio-proxy",
                                    "image": WAYPOINT_IMAGE,
                                    "ports": [
                                        {"name": "mesh", "containerPort": 15008},
                                        {"name": "metrics", "containerPort": 15020},
                                    ],
                                }
                            ],
                        },
                    },
                },
            }
        )
    return out


def waypoint_manifest(world: World) -> str:
    """`waypoint_documents` as one YAML stream ("" when there is nothing to add)."""
    docs = waypoint_documents(world)
    header = "# Rendered by nodemesh for each Gateway of class istio-waypoint (Istio's waypoint template).\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False) if docs else ""


def _is_managed(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED_LABEL) == MANAGED_VALUE and GATEWAY_NAME_LABEL in labels


def waypoint_of(world: World, workload: Workload) -> Waypoint | None:
    """The waypoint Gateway whose managed pod `workload` is, else None."""
    if not _is_managed(workload.labels):
        return None
    wp = world.waypoints.get((workload.namespace, workload.labels[GATEWAY_NAME_LABEL]))
    if wp is None or wp.service_account != workload.service_account:
        return None
    return wp


def waypoint_pods(world: World, waypoint: Waypoint) -> list[Workload]:
    """The pods that run `waypoint` (its managed Deployment's replicas)."""
    return [w for w in world.workloads if waypoint_of(world, w) == waypoint]
