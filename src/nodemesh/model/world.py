"""The world a policy is evaluated in: namespaces, workloads, services, waypoints, settings.

Built once from a validated batch of documents (and, on a live cluster, from the addresses the
runtime assigned). Deployments are expanded into `replicas` pods named `<deployment>-<i>`.
A namespace that is referenced but not declared exists implicitly, with the label Kubernetes
always sets (`kubernetes.io/metadata.name`).

Mesh membership follows Istio: a pod is outside the mesh when it or its namespace carries
`istio.io/dataplane-mode: none`; otherwise it is in when the cluster's mode is a mesh mode or
its namespace is labelled `istio.io/dataplane-mode: ambient`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from nodemesh.errors import ManifestError
from nodemesh.model.schema.base import Document
from nodemesh.model.schema.core import Cluster, ClusterSpec, Deployment, Namespace, Pod, PodSpec, Service
from nodemesh.policy.flow import Endpoint, IPAddress, NamedPort, Protocol

__all__ = [
    "DATAPLANE_MODE",
    "USE_WAYPOINT",
    "WAYPOINT_FOR",
    "ServiceInfo",
    "ServicePortInfo",
    "Waypoint",
    "Workload",
    "World",
]

DATAPLANE_MODE = "istio.io/dataplane-mode"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
NS_NAME_LABEL = "kubernetes.io/metadata.name"

# Cilium identity label keys (pkg/k8s/apis/cilium.io/const.go)
CILIUM_NS = "io.kubernetes.pod.namespace"
CILIUM_SA = "io.cilium.k8s.policy.serviceaccount"
CILIUM_CLUSTER = "io.cilium.k8s.policy.cluster"
CILIUM_NS_LABELS = "io.cilium.k8s.namespace.labels."


@dataclass(frozen=True, slots=True)
class Workload:
    """One pod. `workload` is its owner's name (the Deployment) or the pod's own name."""

    namespace: str
    name: str
    pod: str
    kind: str
    labels: Mapping[str, str]
    service_account: str
    ports: tuple[NamedPort, ...] = ()
    ip: IPAddress | None = None
    node: str | None = None
    host_network: bool = False
    spec: PodSpec | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    name: str | None
    port: int
    target_port: int | str
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    labels: Mapping[str, str]
    selector: Mapping[str, str] | None
    ports: tuple[ServicePortInfo, ...]
    cluster_ip: IPAddress | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A Gateway of class `istio-waypoint`. `waypoint_for`: service (default), workload, all, none."""

    namespace: str
    name: str
    waypoint_for: str
    service_account: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class _Index:
    """`World`'s lookup tables, valid for the sizes they were built at (`World.reindex()` after
    an in-place change): the node proxy looks pods and VIPs up several times per connection, and
    a scan of every workload per lookup does not scale (10,000 workloads: milliseconds each)."""

    workloads: int
    services: int
    by_ip: dict[IPAddress, Workload]
    by_vip: dict[IPAddress, ServiceInfo]
    endpoints: dict[tuple[str, str], tuple[ServiceInfo, tuple[Workload, ...]]] = field(default_factory=dict)
    services_of: dict[int, tuple[Workload, tuple[ServiceInfo, ...]]] = field(default_factory=dict)


@dataclass
class World:
    """Everything policies are evaluated against. Treat as read-only after `build`."""

    settings: ClusterSpec
    cluster_name: str = "default"
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    workloads: list[Workload] = field(default_factory=list)
    services: dict[tuple[str, str], ServiceInfo] = field(default_factory=dict)
    waypoints: dict[tuple[str, str], Waypoint] = field(default_factory=dict)
    policies: list[Document] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    mode_override: str | None = None
    _endpoints: dict[tuple[int, bool | None], tuple[Workload, str, Endpoint]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """`endpoint()` results by (id of the workload, mtls), with the workload (so its id stays
    unique) and the cluster name they were built with: the node proxy asks several times per
    connection for the same few pods."""
    _index: _Index | None = field(default=None, init=False, repr=False, compare=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[Document], ips: Mapping[str, str] | None = None) -> World:
        """Build from a validated batch. `ips` maps `ns/pod` to an address (live clusters)."""
        clusters = [d for d in docs if isinstance(d, Cluster)]
        if len(clusters) > 1:
            raise ManifestError(
                [clusters[1].location.problem(("kind",), "only one Cluster resource may be given")]
            )
        cluster = clusters[0] if clusters else None
        world = cls(settings=cluster.spec if cluster else ClusterSpec())
        if cluster is not None:
            world.cluster_name = cluster.name
        world.documents = list(docs)
        for doc in docs:
            if isinstance(doc, Namespace):
                labels = {NS_NAME_LABEL: doc.name, **doc.labels}
                world.namespaces[doc.name] = MappingProxyType(labels)
        for doc in docs:
            if doc.namespaced:
                world._ensure_namespace(doc.namespace)
            if isinstance(doc, Pod):
                world.workloads.append(_pod_workload(doc, ips))
            elif isinstance(doc, Deployment):
                world.workloads.extend(_deployment_workloads(doc, ips))
            elif isinstance(doc, Service):
                world.services[(doc.namespace, doc.name)] = _service_info(doc)
            elif doc.kind == "Gateway":
                wp = _waypoint(doc)
                if wp is not None:
                    world.waypoints[(wp.namespace, wp.name)] = wp
            elif not isinstance(doc, Namespace | Cluster) and doc.kind not in ("ServiceAccount",):
                world.policies.append(doc)
        return world

    def _ensure_namespace(self, name: str) -> None:
        if name not in self.namespaces:
            self.namespaces[name] = MappingProxyType({NS_NAME_LABEL: name})

    # ---- queries --------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.mode_override or self.settings.mode

    @property
    def trust_domain(self) -> str:
        return self.settings.trust_domain

    @property
    def root_namespace(self) -> str:
        return self.settings.root_namespace

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespaces.get(namespace, MappingProxyType({NS_NAME_LABEL: namespace}))

    def in_mesh(self, workload: Workload) -> bool:
        ns_mode = self.namespace_labels(workload.namespace).get(DATAPLANE_MODE)
        pod_mode = workload.labels.get(DATAPLANE_MODE)
        if workload.host_network or pod_mode == "none" or ns_mode == "none":
            return False
        return self.mode != "none"

    def principal(self, workload: Workload) -> str:
        return f"{self.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}"

    def find_workloads(self, namespace: str, name: str) -> list[Workload]:
        """Pods of workload `name` (a Deployment or a Pod) or the pod named `name`."""
        owned = [w for w in self.workloads if w.namespace == namespace and w.name == name]
        return owned or [w for w in self.workloads if w.namespace == namespace and w.pod == name]

    def reindex(self) -> None:
        """Forget the lookup indexes: call after changing `workloads` or `services` in place."""
        self._index = None
        self._endpoints.clear()

    def _lookup(self) -> _Index:
        index = self._index
        if index is None or index.workloads != len(self.workloads) or index.services != len(self.services):
            index = self._index = _Index(
                len(self.workloads),
                len(self.services),
                {w.ip: w for w in reversed(self.workloads) if w.ip is not None},
                {s.cluster_ip: s for s in reversed(self.services.values()) if s.cluster_ip is not None},
            )
        return index

    def workload_by_ip(self, ip: IPAddress) -> Workload | None:
        return self._lookup().by_ip.get(ip)

    def service_by_ip(self, ip: IPAddress) -> ServiceInfo | None:
        return self._lookup().by_vip.get(ip)

    def endpoints_of(self, service: ServiceInfo) -> list[Workload]:
        if service.selector is None:
            return []
        index = self._lookup()
        key = (service.namespace, service.name)
        cached = index.endpoints.get(key)
        if cached is not None and cached[0] is service:
            return list(cached[1])
        sel = service.selector
        found = tuple(
            w
            for w in self.workloads
            if w.namespace == service.namespace and all(w.labels.get(k) == v for k, v in sel.items())
        )
        index.endpoints[key] = (service, found)
        return list(found)

    def services_of(self, workload: Workload) -> list[ServiceInfo]:
        index = self._lookup()
        cached = index.services_of.get(id(workload))
        if cached is not None and cached[0] is workload:
            return list(cached[1])
        found = tuple(
            s
            for s in self.services.values()
            if s.namespace == workload.namespace
            and s.selector
            and all(workload.labels.get(k) == v for k, v in s.selector.items())
        )
        index.services_of[id(workload)] = (workload, found)
        return list(found)

    def service_waypoint(self, service: ServiceInfo) -> Waypoint | None:
        """The waypoint traffic to `service` goes through (service label, then namespace label)."""
        return self._waypoint_from(service.labels, service.namespace, ("service", "all"))

    def workload_waypoint(self, workload: Workload) -> Waypoint | None:
        """The waypoint for traffic addressed to the pod itself (waypoint-for workload|all)."""
        return self._waypoint_from(workload.labels, workload.namespace, ("workload", "all"))

    def _waypoint_from(
        self, labels: Mapping[str, str], namespace: str, kinds: Iterable[str]
    ) -> Waypoint | None:
        ns_labels = self.namespace_labels(namespace)
        for source in (labels, ns_labels):
            name = source.get(USE_WAYPOINT)
            if name is None:
                continue
            if name == "none":
                return None
            wp_ns = source.get(USE_WAYPOINT_NAMESPACE, namespace)
            wp = self.waypoints.get((wp_ns, name))
            if wp is None or wp.waypoint_for not in kinds:
                return None
            return wp
        return None

    def endpoint(self, workload: Workload, *, mtls: bool | None = None) -> Endpoint:
        """The flow endpoint for a pod. `mtls` (default: in the mesh) sets whether its SPIFFE
        principal is visible to the peer: only a verified certificate carries identity."""
        cached = self._endpoints.get((id(workload), mtls))
        if cached is not None and cached[0] is workload and cached[1] == self.cluster_name:
            return cached[2]
        endpoint = self._build_endpoint(workload, mtls)
        self._endpoints[(id(workload), mtls)] = (workload, self.cluster_name, endpoint)
        return endpoint

    def _build_endpoint(self, workload: Workload, mtls: bool | None) -> Endpoint:
        ns_labels = self.namespace_labels(workload.namespace)
        identity = {f"k8s:{k}": v for k, v in workload.labels.items()}
        identity[f"k8s:{CILIUM_NS}"] = workload.namespace
        identity[f"k8s:{CILIUM_SA}"] = workload.service_account
        identity[f"k8s:{CILIUM_CLUSTER}"] = self.cluster_name
        for k, v in ns_labels.items():
            identity[f"k8s:{CILIUM_NS_LABELS}{k}"] = v
        with_identity = self.in_mesh(workload) if mtls is None else mtls
        return Endpoint(
            ip=workload.ip,
            namespace=workload.namespace,
            workload=workload.name,
            pod=workload.pod,
            service_account=workload.service_account,
            labels=workload.labels,
            namespace_labels=ns_labels,
            identity_labels=MappingProxyType(identity),
            principal=self.principal(workload) if with_identity else None,
            entities=frozenset({"host"} if workload.host_network else {"cluster"}),
            ports=workload.ports,
            node=workload.node,
        )

    def external_endpoint(self, ip: IPAddress) -> Endpoint:
        """An address outside the cluster: Cilium's `world` entity, no identity."""
        return Endpoint(ip=ip, identity_labels=MappingProxyType({"reserved:world": ""}))


def _ports(spec: PodSpec) -> tuple[NamedPort, ...]:
    return tuple(
        NamedPort(p.name or "", p.container_port, Protocol(p.protocol))
        for c in spec.containers
        for p in c.ports
    )


def _ip(text: str | None) -> IPAddress | None:
    return ipaddress.ip_address(text) if text else None


def _pod_workload(pod: Pod, ips: Mapping[str, str] | None) -> Workload:
    key = f"{pod.namespace}/{pod.name}"
    ip = (ips or {}).get(key) or (pod.status.pod_ip if pod.status else None)
    return Workload(
        namespace=pod.namespace,
        name=pod.name,
        pod=pod.name,
        kind="pod",
        labels=MappingProxyType(dict(pod.labels)),
        service_account=pod.spec.sa_name,
        ports=_ports(pod.spec),
        ip=_ip(ip),
        node=pod.spec.node_name,
        host_network=pod.spec.host_network,
        spec=pod.spec,
    )


def _deployment_workloads(dep: Deployment, ips: Mapping[str, str] | None) -> list[Workload]:
    tmpl = dep.spec.template
    labels = MappingProxyType(dict(tmpl.metadata.labels if tmpl.metadata else {}))
    out = []
    for i in range(dep.spec.replicas):
        pod = f"{dep.name}-{i}"
        out.append(
            Workload(
                namespace=dep.namespace,
                name=dep.name,
                pod=pod,
                kind="deployment",
                labels=labels,
                service_account=tmpl.spec.sa_name,
                ports=_ports(tmpl.spec),
                ip=_ip((ips or {}).get(f"{dep.namespace}/{pod}")),
                node=tmpl.spec.node_name,
                host_network=tmpl.spec.host_network,
                spec=tmpl.spec,
            )
        )
    return out


def _service_info(svc: Service) -> ServiceInfo:
    ports = tuple(
        ServicePortInfo(
            p.name, p.port, p.target_port if p.target_port is not None else p.port, Protocol(p.protocol)
        )
        for p in svc.spec.ports
    )
    ip = svc.spec.cluster_ip if svc.spec.cluster_ip not in (None, "", "None") else None
    return ServiceInfo(
        svc.namespace, svc.name, MappingProxyType(dict(svc.labels)), svc.spec.selector, ports, _ip(ip)
    )


def _waypoint(doc: Document) -> Waypoint | None:
    spec = getattr(doc, "spec", None)
    if getattr(spec, "gateway_class_name", None) != "istio-waypoint":
        return None
    return Waypoint(
        namespace=doc.namespace,
        name=doc.name,
        waypoint_for=doc.labels.get(WAYPOINT_FOR, "service"),
        service_account=doc.name,
    )
