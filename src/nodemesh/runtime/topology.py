"""The local cluster as a plan: nodes, pod CIDRs, pod addresses, ClusterIPs, links and routes.

`plan_cluster(world)` is a pure function from a validated `World` to a frozen `ClusterPlan`;
`render_network(plan, netns_dir)` turns the plan into the ordered `ip -batch` steps that build it.
Nothing here touches the kernel, so every address, route and scheduling decision is unit-tested
without root (ztunnel's split: `build_request` decides, `proxy_to` does). The supervisor only
executes what this module wrote down.

Shape (ztunnel's namespaced test harness, `src/test_helpers/netns.rs`, and kind's node network):
- one underlay bridge `nm-br0` in the sandbox's own network namespace; node `i` is a namespace
  whose `eth0` sits on it with address `172.18.0.(i+2)/24` (kind puts nodes on 172.18.0.0/16);
  the bridge itself has `172.18.0.1` (kind's network gateway), where the cluster's control plane
  serves node agents: every node namespace reaches it on-link;
- node `i` owns the pod CIDR `podCIDR` split into per-node subnets in order (kubeadm's
  `--node-cidr-mask-size`, /24 by default: node-0 gets 10.244.0.0/24, node-1 10.244.1.0/24);
- each pod is a namespace with a veth to its node, CNI `ptp` style: the pod has `ip/32` and a
  default route via the node-side gateway `x.y.z.1`, which every node-side veth carries; the node
  has a `/32` route per pod and a route per other node's pod CIDR via that node's underlay
  address. No NAT anywhere on pod-to-pod paths, so a pod's source address is preserved.

Invariants: pod addresses are unique, inside their node's subnet and never the gateway; ClusterIPs
are unique and inside the service CIDR; the plan is deterministic (same manifests, same plan),
which is what lets the CLI and the supervisor recompute it from the same snapshot.
"""

from __future__ import annotations

import ipaddress
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from nodemesh.errors import ManifestError, ManifestProblem
from nodemesh.model.schema.base import Document
from nodemesh.model.schema.core import Deployment, PodSpec
from nodemesh.model.world import ServiceInfo, Workload, World
from nodemesh.policy.flow import Protocol
from nodemesh.waypoint.deployment import waypoint_of, waypoint_pods

__all__ = [
    "CLUSTER_DOMAIN",
    "CONTROLPLANE_PORT",
    "DNS_NAMESPACE",
    "DNS_POD",
    "DNS_SERVICE",
    "UNDERLAY",
    "UNDERLAY_GATEWAY",
    "ClusterPlan",
    "ContainerPlan",
    "EndpointPlan",
    "NetworkStep",
    "NodePlan",
    "PodPlan",
    "ServicePlan",
    "ServicePortPlan",
    "node_name",
    "plan_cluster",
    "render_hosts",
    "render_network",
    "render_resolv_conf",
]

CLUSTER_DOMAIN = "cluster.local"
UNDERLAY = IPv4Network("172.18.0.0/24")
UNDERLAY_GATEWAY = UNDERLAY.network_address + 1
"""The bridge's own address, in the sandbox's network namespace: the control plane listens here."""
CONTROLPLANE_PORT = 15012  # istiod's xDS + CA port (reference §1.1)
BRIDGE = "nm-br0"
DNS_NAMESPACE = "kube-system"
DNS_POD = "coredns"
DNS_SERVICE = "kube-dns"
DNS_SERVICE_HOST = 10  # kubeadm's default: the 10th address of the service CIDR (10.96.0.10)
SUPPORTED_MODES = ("none", "ambient")
"""Modes with a data path in the local runtime; any other (`kernel`) warns and runs as `none`."""


def node_name(index: int) -> str:
    return f"node-{index}"


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node: a network namespace on the underlay bridge, owning one pod subnet."""

    name: str
    index: int
    ip: IPv4Address
    pod_cidr: IPv4Network

    @property
    def gateway(self) -> IPv4Address:
        """The address every node-side pod veth carries; pods route everything via it."""
        return self.pod_cidr.network_address + 1

    @property
    def uplink(self) -> str:
        """The bridge-side end of this node's underlay veth (in the sandbox namespace)."""
        return f"nm-up{self.index}"


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """A process to start in a pod: the argv after `nodemesh` was mapped to this checkout."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str | None
    tcp_ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PodPlan:
    namespace: str
    name: str
    workload: str
    node: str
    ip: IPv4Address
    labels: Mapping[str, str]
    containers: tuple[ContainerPlan, ...]
    host_network: bool = False
    system: bool = False
    host_index: int = 0
    waypoint: str | None = None
    """`ns/gateway` when this is a waypoint pod: the runtime runs the waypoint process in it
    (`nodemesh.waypoint.process`), not containers."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        """Name of the pod's namespace file; host-network pods share their node's."""
        return self.node if self.host_network else f"pod.{self.namespace}.{self.name}"

    @property
    def host_veth(self) -> str:
        """The node-side veth; unique per node because the host index is."""
        return f"veth{self.host_index}"


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    pod: str
    ip: IPv4Address
    port: int


@dataclass(frozen=True, slots=True)
class ServicePortPlan:
    name: str | None
    port: int
    protocol: Protocol
    endpoints: tuple[EndpointPlan, ...]


@dataclass(frozen=True, slots=True)
class ServicePlan:
    namespace: str
    name: str
    cluster_ip: IPv4Address
    ports: tuple[ServicePortPlan, ...]
    system: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    name: str
    mode: str
    requested_mode: str
    pod_cidr: IPv4Network
    service_cidr: IPv4Network
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    services: tuple[ServicePlan, ...]
    warnings: tuple[str, ...] = ()

    @property
    def dns_ip(self) -> IPv4Address:
        return self.service_cidr.network_address + DNS_SERVICE_HOST

    @property
    def controlplane_address(self) -> str:
        """The control plane's node endpoint: the underlay gateway, istiod's port."""
        return f"{UNDERLAY_GATEWAY}:{CONTROLPLANE_PORT}"

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, key: str) -> PodPlan | None:
        return next((p for p in self.pods if p.key == key), None)

    def pods_on(self, node: str) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def ips(self) -> dict[str, str]:
        """`ns/pod` -> address, in the form `World.build(docs, ips=...)` takes."""
        return {p.key: str(p.ip) for p in self.pods if not p.system}

    def find_pods(self, target: str) -> list[PodPlan]:
        """Pods for `ns/name` (a workload or a pod) or `name` (namespace `default`)."""
        ns, _, name = target.rpartition("/")
        ns = ns or "default"
        owned = [p for p in self.pods if p.namespace == ns and p.workload == name]
        return owned or [p for p in self.pods if p.namespace == ns and p.name == name]


@dataclass(frozen=True, slots=True)
class NetworkStep:
    """`ip -batch` lines to run in one namespace (`netns` None: the sandbox's own), plus the
    sysctls to write there first."""

    netns: str | None
    batch: tuple[str, ...]
    sysctls: tuple[tuple[str, str], ...] = ()


# ---- planning ----------------------------------------------------------------------------------


def plan_cluster(world: World, *, name: str | None = None, nodes: int | None = None) -> ClusterPlan:
    """The whole cluster, or a `ManifestError` naming every input problem (nothing is built)."""
    settings = world.settings
    problems: list[ManifestProblem] = []
    warnings: list[str] = []
    cluster_doc = next((d for d in world.documents if d.kind == "Cluster"), None)
    try:
        pod_cidr = IPv4Network(settings.pod_cidr)
        service_cidr = IPv4Network(settings.service_cidr)
    except ValueError as exc:
        problem = _problem(cluster_doc, ("spec",), f"the local runtime supports IPv4 CIDRs only: {exc}")
        raise ManifestError([problem]) from exc
    for label, net, field in (
        ("pod CIDR", pod_cidr, "podCIDR"),
        ("service CIDR", service_cidr, "serviceCIDR"),
    ):
        if net.overlaps(UNDERLAY):
            problems.append(
                _problem(
                    cluster_doc, ("spec", field), f"the {label} {net} overlaps the node underlay {UNDERLAY}"
                )
            )
    if pod_cidr.overlaps(service_cidr):
        problems.append(
            _problem(
                cluster_doc, ("spec", "serviceCIDR"), f"the service CIDR {service_cidr} overlaps the pod CIDR"
            )
        )
    node_count = nodes if nodes is not None else settings.nodes
    node_plans = _nodes(node_count, pod_cidr, cluster_doc, problems)
    requested = world.mode
    mode = requested if requested in SUPPORTED_MODES else "none"
    if requested not in SUPPORTED_MODES:
        warnings.append(
            f"mode {requested!r} has no data path in the local runtime yet; "
            "running with mode 'none' (no mesh)"
        )
    if mode == "ambient":
        warnings += _waypoint_warnings(world)
    if problems:
        raise ManifestError(problems)

    docs = _docs_by_key(world.documents)
    pods = _schedule(world, node_plans, docs, problems)
    if problems:
        raise ManifestError(problems)
    services = _services(world, pods, service_cidr, docs=docs, problems=problems, warnings=warnings)
    if problems:
        raise ManifestError(problems)
    dns_pod = next(p for p in pods if p.system)
    dns_service = ServicePlan(
        DNS_NAMESPACE,
        DNS_SERVICE,
        service_cidr.network_address + DNS_SERVICE_HOST,
        (
            ServicePortPlan("dns", 53, Protocol.UDP, (EndpointPlan(dns_pod.key, dns_pod.ip, 53),)),
            ServicePortPlan("dns-tcp", 53, Protocol.TCP, (EndpointPlan(dns_pod.key, dns_pod.ip, 53),)),
        ),
        system=True,
    )
    return ClusterPlan(
        name=name or world.cluster_name,
        mode=mode,
        requested_mode=requested,
        pod_cidr=pod_cidr,
        service_cidr=service_cidr,
        nodes=node_plans,
        pods=tuple(pods),
        services=(dns_service, *services),
        warnings=tuple(warnings),
    )


def _waypoint_warnings(world: World) -> list[str]:
    """Services whose traffic must go through a waypoint that no pod runs (`up` renders a
    waypoint pod for every Gateway of class istio-waypoint, `nodemesh.waypoint.deployment`;
    a world without those pods has none): the node proxy refuses such traffic rather than skip
    the waypoint's L7 policy (ztunnel sends it to the waypoint, istio-ambient.md §1.6 step 1)."""
    out = []
    for svc in world.services.values():
        wp = world.service_waypoint(svc)
        if wp is not None and not waypoint_pods(world, wp):
            out.append(
                f"service {svc.namespace}/{svc.name} uses waypoint {wp.namespace}/{wp.name}, which no "
                "pod runs: the node proxies refuse its traffic (`nodemesh up` renders a waypoint pod "
                "for every Gateway of class istio-waypoint in mode ambient)"
            )
    return out


def _problem(
    doc: Document | None, path: tuple[str | int, ...], message: str, hint: str = ""
) -> ManifestProblem:
    if doc is None:
        return ManifestProblem("<defaults>", 0, "", message, hint)
    return doc.location.problem(path, message, hint)


def _nodes(
    count: int, pod_cidr: IPv4Network, cluster_doc: Document | None, problems: list[ManifestProblem]
) -> tuple[NodePlan, ...]:
    bits = max(0, math.ceil(math.log2(count))) if count > 1 else 0
    prefix = max(24, pod_cidr.prefixlen + bits)
    if prefix > 28 or pod_cidr.prefixlen + bits > prefix:
        problems.append(
            _problem(
                cluster_doc, ("spec", "podCIDR"), f"the pod CIDR {pod_cidr} is too small for {count} nodes"
            )
        )
        return ()
    subnets = pod_cidr.subnets(new_prefix=prefix)
    return tuple(
        NodePlan(node_name(i), i, UNDERLAY.network_address + 2 + i, next(subnets)) for i in range(count)
    )


def _docs_by_key(docs: Sequence[Document]) -> dict[tuple[str, str, str], Document]:
    return {(d.kind, d.namespace, d.name): d for d in docs}


def _workload_doc(docs: Mapping[tuple[str, str, str], Document], w: Workload) -> Document | None:
    kind = "Deployment" if w.kind == "deployment" else "Pod"
    return docs.get((kind, w.namespace, w.name))


def _spec_path(doc: Document | None) -> tuple[str, ...]:
    return ("spec", "template", "spec") if isinstance(doc, Deployment) else ("spec",)


def _schedule(
    world: World,
    nodes: tuple[NodePlan, ...],
    docs: Mapping[tuple[str, str, str], Document],
    problems: list[ManifestProblem],
) -> list[PodPlan]:
    """Pods onto nodes: `spec.nodeName` when given, otherwise the node with the fewest replicas of
    the same workload, then the fewest pods, then the lowest index (kube-scheduler's default
    spreading, made deterministic)."""
    by_name = {n.name: n for n in nodes}
    next_host = {n.name: 2 for n in nodes}
    total = {n.name: 0 for n in nodes}
    per_workload: dict[tuple[str, str, str], int] = {}
    host_ports: dict[tuple[str, int, Protocol], str] = {}
    first = nodes[0]
    dns = PodPlan(
        DNS_NAMESPACE,
        DNS_POD,
        DNS_POD,
        first.name,
        first.pod_cidr.network_address + next_host[first.name],
        {"k8s-app": "kube-dns"},
        (),
        system=True,
        host_index=next_host[first.name],
    )
    next_host[first.name] += 1
    out = [dns]
    seen: set[str] = {dns.key}
    for w in world.workloads:
        doc = _workload_doc(docs, w)
        spec_at = _spec_path(doc)
        if w.key in seen:
            problems.append(_problem(doc, ("metadata", "name"), f"pod {w.key} is defined twice"))
            continue
        seen.add(w.key)
        if w.spec is None:
            continue
        waypoint = waypoint_of(world, w)
        containers = () if waypoint is not None else _containers(w, w.spec, doc, spec_at, problems)
        if w.node is not None and w.node not in by_name:
            problems.append(
                _problem(
                    doc,
                    (*spec_at, "nodeName"),
                    f"unknown node {w.node!r}",
                    "nodes are " + ", ".join(by_name),
                )
            )
            continue
        if w.node is not None:
            node = by_name[w.node]
        else:
            node = min(
                nodes,
                key=lambda n: (per_workload.get((w.namespace, w.name, n.name), 0), total[n.name], n.index),
            )
        per_workload[(w.namespace, w.name, node.name)] = (
            per_workload.get((w.namespace, w.name, node.name), 0) + 1
        )
        total[node.name] += 1
        if w.host_network:
            for p in w.ports:
                clash = host_ports.get((node.name, p.port, p.protocol))
                if clash is not None:
                    problems.append(
                        _problem(
                            doc,
                            (*spec_at, "containers"),
                            f"port {p.port}/{p.protocol.value} on {node.name} is already taken by "
                            f"host-network pod {clash}",
                        )
                    )
                host_ports[(node.name, p.port, p.protocol)] = w.key
            out.append(
                PodPlan(
                    w.namespace,
                    w.pod,
                    w.name,
                    node.name,
                    node.ip,
                    dict(w.labels),
                    containers,
                    host_network=True,
                )
            )
            continue
        host = next_host[node.name]
        if host >= node.pod_cidr.num_addresses - 1:
            problems.append(
                _problem(doc, ("metadata", "name"), f"node {node.name}'s pod CIDR {node.pod_cidr} is full")
            )
            continue
        next_host[node.name] += 1
        out.append(
            PodPlan(
                w.namespace,
                w.pod,
                w.name,
                node.name,
                node.pod_cidr.network_address + host,
                dict(w.labels),
                containers,
                host_index=host,
                waypoint=waypoint.key if waypoint is not None else None,
            )
        )
    return out


def _containers(
    w: Workload,
    spec: PodSpec,
    doc: Document | None,
    spec_at: tuple[str, ...],
    problems: list[ManifestProblem],
) -> tuple[ContainerPlan, ...]:
    out = []
    ports_seen: dict[tuple[int, str], str] = {}
    for ci, c in enumerate(spec.containers):
        tcp = []
        for pi, p in enumerate(c.ports):
            owner = ports_seen.get((p.container_port, p.protocol))
            if owner is not None:
                problems.append(
                    _problem(
                        doc,
                        (*spec_at, "containers", ci, "ports", pi, "containerPort"),
                        f"port {p.container_port}/{p.protocol} clashes with container {owner!r} of the "
                        "same pod (containers of a pod share its network namespace)",
                    )
                )
            ports_seen[(p.container_port, p.protocol)] = c.name
            if p.protocol == "TCP":
                tcp.append(p.container_port)
        argv = [*c.command, *c.args]
        if not c.command:
            if (c.image or "").split(":")[0].endswith("nodemesh/echo"):
                argv = ["nodemesh", "echo", *(a for port in tcp for a in ("--http", str(port))), *c.args]
            else:
                problems.append(
                    _problem(
                        doc,
                        (*spec_at, "containers", ci, "command"),
                        "a command is required: the local runtime runs commands on this machine, not images",
                        "use e.g. command: [nodemesh, echo, --http, '8080']",
                    )
                )
                continue
        out.append(
            ContainerPlan(
                name=c.name,
                argv=tuple(_map_nodemesh(argv)),
                env=tuple((e.name, e.value) for e in c.env),
                working_dir=c.working_dir,
                tcp_ports=tuple(tcp),
            )
        )
    return tuple(out)


def _map_nodemesh(argv: Sequence[str]) -> list[str]:
    """`nodemesh ...` runs this checkout's nodemesh with this interpreter, whatever is on PATH.

    `nodemesh echo` goes straight to its verb module, which parses the same flags without
    importing every other verb (the full CLI takes ~1 s of CPU to start, the echo verb ~0.2 s,
    and every pod of the example starts one)."""
    if argv[:2] == ["nodemesh", "echo"]:
        return [sys.executable, "-m", "nodemesh.cli.echo", *argv[2:]]
    if argv and argv[0] == "nodemesh":
        return [sys.executable, "-m", "nodemesh.cli.main", *argv[1:]]
    return list(argv)


def _services(
    world: World,
    pods: Sequence[PodPlan],
    cidr: IPv4Network,
    *,
    docs: Mapping[tuple[str, str, str], Document],
    problems: list[ManifestProblem],
    warnings: list[str],
) -> list[ServicePlan]:
    """ClusterIPs (explicit ones first, then allocated in order from `.1`, skipping the DNS
    address) and each port's endpoints: pods the selector matches that have the target port."""
    dns_ip = cidr.network_address + DNS_SERVICE_HOST
    taken: dict[IPv4Address, str] = {dns_ip: f"{DNS_NAMESPACE}/{DNS_SERVICE}"}
    chosen: dict[tuple[str, str], IPv4Address] = {}
    ip: IPv4Address | None
    for key, svc in sorted(world.services.items()):
        if svc.cluster_ip is None:
            continue
        doc = docs.get(("Service", *key))
        if not isinstance(svc.cluster_ip, IPv4Address) or svc.cluster_ip not in cidr:
            message = f"{svc.cluster_ip} is not in the service CIDR {cidr}"
            problems.append(_problem(doc, ("spec", "clusterIP"), message))
            continue
        ip = svc.cluster_ip
        if ip in taken:
            problems.append(
                _problem(doc, ("spec", "clusterIP"), f"{ip} is already used by Service {taken[ip]}")
            )
            continue
        taken[ip] = f"{key[0]}/{key[1]}"
        chosen[key] = ip
    hosts = (cidr.network_address + i for i in range(1, cidr.num_addresses - 1))
    out = []
    by_workload = {p.key: p for p in pods if not p.system}
    for key, svc in world.services.items():
        doc = docs.get(("Service", *key))
        ip = chosen.get(key)
        if ip is None:
            ip = next((h for h in hosts if h not in taken), None)
            if ip is None:
                problems.append(_problem(doc, ("metadata", "name"), f"the service CIDR {cidr} is full"))
                continue
            taken[ip] = f"{key[0]}/{key[1]}"
        ports = _service_ports(world, svc, by_workload, doc, problems)
        selected = world.endpoints_of(svc)
        if svc.selector is not None and not selected:
            warnings.append(
                f"Service {svc.namespace}/{svc.name} selects no pod (selector "
                + ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items()))
                + "): connections to it are refused"
            )
        out.append(ServicePlan(svc.namespace, svc.name, ip, ports))
    return out


def _service_ports(
    world: World,
    svc: ServiceInfo,
    pods: Mapping[str, PodPlan],
    doc: Document | None,
    problems: list[ManifestProblem],
) -> tuple[ServicePortPlan, ...]:
    seen: set[tuple[int, Protocol]] = set()
    out = []
    members = [w for w in world.endpoints_of(svc) if w.key in pods]
    for i, sp in enumerate(svc.ports):
        if (sp.port, sp.protocol) in seen:
            problems.append(
                _problem(
                    doc, ("spec", "ports", i, "port"), f"port {sp.port}/{sp.protocol.value} is listed twice"
                )
            )
            continue
        seen.add((sp.port, sp.protocol))
        endpoints = []
        for w in members:
            target = _target_port(w, sp.target_port, sp.protocol)
            if target is not None:
                pod = pods[w.key]
                endpoints.append(EndpointPlan(pod.key, pod.ip, target))
        out.append(ServicePortPlan(sp.name, sp.port, sp.protocol, tuple(endpoints)))
    return tuple(out)


def _target_port(w: Workload, target: int | str, protocol: Protocol) -> int | None:
    """A number is used as is; a name is looked up among the pod's container ports, and a pod
    without that name is not an endpoint of this port (Kubernetes EndpointSlice semantics)."""
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    return next((p.port for p in w.ports if p.name == target and p.protocol == protocol), None)


# ---- rendering ------------------------------------------------------------------------------


def render_network(plan: ClusterPlan, netns_dir: str) -> tuple[NetworkStep, ...]:
    """The ordered steps that build the plan, once every namespace file exists in `netns_dir`."""

    def path(ns: str) -> str:
        return f"{netns_dir}/{ns}"

    sandbox = [
        "link set lo up",
        f"link add {BRIDGE} type bridge",
        f"addr add {UNDERLAY_GATEWAY}/{UNDERLAY.prefixlen} dev {BRIDGE}",
        f"link set {BRIDGE} up",
    ]
    for n in plan.nodes:
        sandbox += [
            f"link add {n.uplink} type veth peer name eth0 netns {path(n.name)}",
            f"link set {n.uplink} master {BRIDGE}",
            f"link set {n.uplink} up",
        ]
    steps = [NetworkStep(None, tuple(sandbox))]
    forwarding = (
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    )
    for n in plan.nodes:
        batch = [
            "link set lo up",
            f"addr add {n.ip}/{UNDERLAY.prefixlen} dev eth0",
            "link set eth0 up",
        ]
        for other in plan.nodes:
            if other.name != n.name:
                batch.append(f"route add {other.pod_cidr} via {other.ip} dev eth0")
        for p in plan.pods_on(n.name):
            if p.host_network:
                continue
            batch += [
                f"link add {p.host_veth} type veth peer name eth0 netns {path(p.netns)}",
                f"addr add {n.gateway}/32 dev {p.host_veth} noprefixroute",
                f"link set {p.host_veth} up",
                f"route add {p.ip}/32 dev {p.host_veth} scope link",
            ]
        steps.append(NetworkStep(n.name, tuple(batch), forwarding))
    for p in plan.pods:
        if p.host_network:
            continue
        gw = plan.node(p.node).gateway
        steps.append(
            NetworkStep(
                p.netns,
                (
                    "link set lo up",
                    f"addr add {p.ip}/32 dev eth0",
                    "link set eth0 up",
                    f"route add {gw} dev eth0 scope link",
                    f"route add default via {gw} dev eth0",
                ),
            )
        )
    return tuple(steps)


def render_resolv_conf(plan: ClusterPlan, namespace: str) -> str:
    """The kubelet's ClusterFirst resolv.conf: the cluster DNS, the pod's namespace first in the
    search list, `ndots:5` (so `orders` and `orders.shop` are tried under the search domains)."""
    search = " ".join((f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN))
    return f"nameserver {plan.dns_ip}\nsearch {search}\noptions ndots:5\n"


def render_hosts(pod: PodPlan) -> str:
    """The kubelet-managed /etc/hosts: localhost and the pod's own name on its address."""
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod.ip}\t{pod.name}\n"


def all_addresses(plan: ClusterPlan) -> Iterable[ipaddress.IPv4Address]:
    """Every address the plan assigns (for tests of uniqueness)."""
    yield from (n.ip for n in plan.nodes)
    yield from (p.ip for p in plan.pods if not p.host_network)
    yield from (s.cluster_ip for s in plan.services)
