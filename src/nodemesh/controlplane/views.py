"""Per-node views: what one node's agent needs to know, computed from the desired state.

A view is a set of named, versioned resources, shaped like ztunnel's xDS resources
(`istio.workload.Address` and `istio.security.Authorization`, ZT:src/xds.rs):

  workload/<ns>/<pod>      a pod ON THIS NODE: address, identity, labels, ports, waypoint
  service/<ns>/<name>      every Service: ClusterIP, ports, waypoint, and its endpoints (pod,
                           address, node, identity, resolved target ports), which is what a node
                           needs to reach it and to verify the peer's certificate
  policy/<Kind>/<ns>/<name> every policy that selects a pod on this node (the stored document)
  waypoint/<ns>/<name>     every waypoint (where L7 policy is enforced)
  peer/<node>              every node's underlay address and pod CIDR
  bundle/roots             the trust bundle (PEM roots)
  cluster/settings         mode, trust domain, root namespace

Each resource's version is a digest of its canonical JSON body, so a resource that did not
change keeps its version and is never pushed again; only what changed moves (delta xDS).

Which policies go to which node (a policy goes where it can take effect):
- NetworkPolicy: `podSelector` over the pods of its namespace (Kubernetes).
- CiliumNetworkPolicy: `endpointSelector` over its namespace's pods; Clusterwide: over all pods;
  keys match with or without the `k8s:`/`any:` source prefix (Cilium label sources). A rule
  with a `nodeSelector` (host policy) goes to every node.
- Istio AuthorizationPolicy / PeerAuthentication / RequestAuthentication: `selector` over the
  pods of its namespace (every namespace when it is the root namespace); no selector = the whole
  namespace (the whole mesh in the root namespace); `targetRef(s)` policies are enforced by
  waypoints, which any node may run: they go to every node (reference §4.2).
- Any other kind goes to every node (conservative: a node that does not need a policy ignores
  it; a node that misses one would enforce too little).

Pure and deterministic: the same inputs give byte-identical views.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from nodemesh.controlplane.placement import Placement, PodPlacement
from nodemesh.controlplane.results import DocKey
from nodemesh.policy.selector import LabelSelector

if TYPE_CHECKING:  # types only: a node agent imports this module without the schemas
    from nodemesh.model.schema.base import Document
    from nodemesh.model.world import ServiceInfo, Workload, World

__all__ = ["NodeView", "ViewInputs", "ViewResource", "ViewSet", "compute_views", "digest"]

ISTIO_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class ViewResource:
    """One named resource of a view; `version` is the digest of `body` (canonical JSON)."""

    type: str
    name: str
    version: str
    body: bytes

    @property
    def key(self) -> str:
        return f"{self.type}/{self.name}"

    @classmethod
    def make(cls, type_: str, name: str, obj: object) -> ViewResource:
        body = _canonical(obj)
        return cls(type_, name, digest(body), body)

    def value(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class NodeView:
    """Everything one node holds, keyed by `type/name`, computed from store `revision`."""

    node: str
    revision: int
    resources: Mapping[str, ViewResource]

    def versions(self) -> dict[str, str]:
        return {k: r.version for k, r in self.resources.items()}

    @property
    def size(self) -> int:
        """Bytes of resource bodies (what a full push carries, before protobuf framing)."""
        return sum(len(r.body) for r in self.resources.values())

    def of_type(self, type_: str) -> list[ViewResource]:
        return [r for r in self.resources.values() if r.type == type_]


@dataclass(frozen=True, slots=True)
class ViewInputs:
    revision: int
    world: World
    placement: Placement
    bundle: tuple[str, ...]
    bodies: Mapping[DocKey, Mapping[str, object]] = field(default_factory=dict)
    """The stored body of each policy document, by (kind, namespace, name)."""


@dataclass(frozen=True, slots=True)
class ViewSet:
    """Every node's view: resources all nodes share, plus each node's own."""

    revision: int
    shared: Mapping[str, ViewResource]
    per_node: Mapping[str, Mapping[str, ViewResource]]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.per_node)

    def for_node(self, node: str) -> NodeView:
        own = self.per_node.get(node, {})
        return NodeView(node, self.revision, MappingProxyType({**self.shared, **own}))


# ---- computation ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Pod:
    workload: Workload
    at: PodPlacement


def compute_views(inputs: ViewInputs, previous: ViewSet | None = None) -> ViewSet:
    """Every node's view. With `previous` (computed from the same pods, services, waypoints and
    nodes: only policies or the bundle changed), its other resources are reused as they are and
    only policies, the bundle and the settings are recomputed."""
    world, placement = inputs.world, inputs.placement
    td = world.trust_domain
    pods = [_Pod(w, placement.pods[w.key]) for w in world.workloads if w.key in placement.pods]
    by_ns: dict[str, list[_Pod]] = {}
    for pod in pods:
        by_ns.setdefault(pod.workload.namespace, []).append(pod)
    node_names = [n.name for n in placement.nodes]

    shared: dict[str, ViewResource] = {}
    per_node: dict[str, dict[str, ViewResource]] = {n: {} for n in node_names}

    def put_shared(res: ViewResource) -> None:
        shared[res.key] = res

    put_shared(
        ViewResource.make(
            "cluster",
            "settings",
            {
                "name": world.cluster_name,
                "mode": world.mode,
                "trustDomain": td,
                "rootNamespace": world.root_namespace,
            },
        )
    )
    put_shared(ViewResource.make("bundle", "roots", {"roots": list(inputs.bundle)}))
    if previous is not None:
        for key, res in previous.shared.items():
            if res.type not in ("policy", "bundle", "cluster"):
                shared[key] = res
        for name, resources in previous.per_node.items():
            if name in per_node:
                per_node[name].update((k, r) for k, r in resources.items() if r.type != "policy")
    else:
        _topology(world, placement, by_ns, pods, put_shared=put_shared, per_node=per_node)

    # Same topology and same policy body: the same nodes (reuse the previous selection).
    known: dict[str, tuple[str, set[str] | None]] = {}
    if previous is not None:
        for key, res in previous.shared.items():
            if res.type == "policy":
                known[key] = (res.version, None)
        for name, resources in previous.per_node.items():
            for key, res in resources.items():
                if res.type == "policy":
                    entry = known.setdefault(key, (res.version, set()))
                    if entry[1] is not None:
                        entry[1].add(name)
    cilium_labels: dict[str, dict[str, str]] = {}
    for doc in world.policies:
        body = inputs.bodies.get((doc.kind, doc.namespace, doc.name))
        if body is None:
            continue
        res = ViewResource.make("policy", f"{doc.kind}/{doc.namespace or '-'}/{doc.name}", body)
        before = known.get(res.key)
        if before is not None and before[0] == res.version:
            nodes = before[1]
        else:
            nodes = _selected_nodes(doc, world, by_ns, pods, cilium_labels)
        if nodes is None:
            put_shared(res)
            continue
        for name in nodes:
            if name in per_node:
                per_node[name][res.key] = res
    return ViewSet(
        inputs.revision,
        MappingProxyType(shared),
        MappingProxyType({n: MappingProxyType(r) for n, r in per_node.items()}),
    )


def _topology(
    world: World,
    placement: Placement,
    by_ns: Mapping[str, list[_Pod]],
    pods: list[_Pod],
    *,
    put_shared: Callable[[ViewResource], None],
    per_node: dict[str, dict[str, ViewResource]],
) -> None:
    """Peers, waypoints, services (shared) and each node's own workloads."""
    td = world.trust_domain
    for node in placement.nodes:
        put_shared(
            ViewResource.make(
                "peer", node.name, {"name": node.name, "address": node.address, "podCIDR": node.pod_cidr}
            )
        )
    for wp in world.waypoints.values():
        put_shared(
            ViewResource.make(
                "waypoint",
                wp.key,
                {
                    "namespace": wp.namespace,
                    "name": wp.name,
                    "for": wp.waypoint_for,
                    "identity": _spiffe(td, wp.namespace, wp.service_account),
                },
            )
        )
    for svc in world.services.values():
        put_shared(_service_resource(world, svc, by_ns.get(svc.namespace, ()), placement))
    for pod in pods:
        if pod.at.node in per_node:
            res = _workload_resource(world, pod)
            per_node[pod.at.node][res.key] = res


def _spiffe(td: str, ns: str, sa: str) -> str:
    return f"spiffe://{td}/ns/{ns}/sa/{sa}"


def _workload_resource(world: World, pod: _Pod) -> ViewResource:
    w = pod.workload
    waypoint = world.workload_waypoint(w)
    return ViewResource.make(
        "workload",
        w.key,
        {
            "namespace": w.namespace,
            "pod": w.pod,
            "workload": w.name,
            "kind": w.kind,
            "node": pod.at.node,
            "ip": pod.at.ip,
            "serviceAccount": w.service_account,
            "identity": _spiffe(world.trust_domain, w.namespace, w.service_account),
            "inMesh": world.in_mesh(w),
            "hostNetwork": w.host_network,
            "labels": dict(w.labels),
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol.value} for p in w.ports],
            "waypoint": waypoint.key if waypoint else None,
        },
    )


def _service_resource(
    world: World, svc: ServiceInfo, candidates: Iterable[_Pod], placement: Placement
) -> ViewResource:
    selector = svc.selector
    endpoints = []
    if selector:
        for pod in candidates:
            w = pod.workload
            if all(w.labels.get(k) == v for k, v in selector.items()):
                ports = {}
                for sp in svc.ports:
                    target = sp.target_port
                    if isinstance(target, str):
                        named = next(
                            (p.port for p in w.ports if p.name == target and p.protocol == sp.protocol), None
                        )
                        if named is None:
                            continue
                        target = named
                    ports[sp.name or str(sp.port)] = target
                endpoints.append(
                    {
                        "pod": w.key,
                        "ip": pod.at.ip,
                        "node": pod.at.node,
                        "identity": _spiffe(world.trust_domain, w.namespace, w.service_account),
                        "inMesh": world.in_mesh(w),
                        "ports": ports,
                    }
                )
    waypoint = world.service_waypoint(svc)
    key = f"{svc.namespace}/{svc.name}"
    return ViewResource.make(
        "service",
        key,
        {
            "namespace": svc.namespace,
            "name": svc.name,
            "hostname": svc.hostname,
            "clusterIP": placement.service_ips.get(key),
            "ports": [
                {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol.value}
                for p in svc.ports
            ],
            "waypoint": waypoint.key if waypoint else None,
            "endpoints": endpoints,
        },
    )


# ---- policy selection ---------------------------------------------------------------------
def _selected_nodes(
    doc: Document,
    world: World,
    by_ns: Mapping[str, list[_Pod]],
    pods: list[_Pod],
    cilium_labels: dict[str, dict[str, str]],
) -> set[str] | None:
    """The nodes a policy can take effect on; None = every node."""
    spec: Any = getattr(doc, "spec", None)
    if doc.kind == "NetworkPolicy" and spec is not None:
        selector = LabelSelector.from_model(spec.pod_selector)
        return {p.at.node for p in by_ns.get(doc.namespace, ()) if selector.matches(p.workload.labels)}
    if doc.kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
        rules = doc.rules() if hasattr(doc, "rules") else []
        scope = by_ns.get(doc.namespace, []) if doc.namespaced else pods
        out: set[str] = set()
        for _, rule in rules:
            if rule.endpoint_selector is None:
                return None  # host policy (nodeSelector): every node
            selector = LabelSelector.from_model(rule.endpoint_selector)
            out |= {
                p.at.node for p in scope if selector.matches(_cilium_view(world, p.workload, cilium_labels))
            }
        return out
    if doc.kind in ISTIO_KINDS and spec is not None:
        if getattr(spec, "target_ref", None) is not None or getattr(spec, "target_refs", None):
            return None
        root = doc.namespace == world.root_namespace
        scope = pods if root else by_ns.get(doc.namespace, [])
        workload_selector = getattr(spec, "selector", None)
        labels: Mapping[str, str] = workload_selector.match_labels if workload_selector is not None else {}
        if not labels and root:
            return None
        return {p.at.node for p in scope if all(p.workload.labels.get(k) == v for k, v in labels.items())}
    return None


def _cilium_view(world: World, w: Workload, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    """A pod's Cilium identity labels, under every source prefix a selector may use."""
    found = cache.get(w.key)
    if found is None:
        found = {}
        for key, value in world.endpoint(w).identity_labels.items():
            bare = key.split(":", 1)[1] if ":" in key else key
            found[bare] = value
            found[f"k8s:{bare}"] = value
            found[f"any:{bare}"] = value
        cache[w.key] = found
    return found
