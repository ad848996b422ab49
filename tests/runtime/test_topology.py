"""The cluster plan: node subnets, scheduling, pod and service addresses, links, bad input."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

from nodemesh.errors import ManifestError
from nodemesh.model.loader import load_text
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import World
from nodemesh.runtime.topology import (
    UNDERLAY,
    ClusterPlan,
    all_addresses,
    plan_cluster,
    render_hosts,
    render_network,
    render_resolv_conf,
)

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")


def _plan(text: str, **kw: object) -> ClusterPlan:
    return plan_cluster(World.build(parse_documents(load_text(text, "c.yaml"))), **kw)  # type: ignore[arg-type]


def _deployment(name: str, replicas: int = 1, port: int = 8080, extra: str = "") -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: t}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{extra}      containers:
        - name: c
          command: [nodemesh, echo, --http, "{port}"]
          ports: [{{name: http, containerPort: {port}}}]
---
"""


def _service(name: str, selector: str, target: str = "http", cluster_ip: str = "") -> str:
    ip = f"\n  clusterIP: {cluster_ip}" if cluster_ip else ""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: t}}
spec:
  selector: {{app: {selector}}}{ip}
  ports: [{{name: http, port: 80, targetPort: {target}}}]
---
"""


def test_shop_plan_spreads_replicas_and_allocates_from_per_node_cidrs() -> None:
    """Pods get `10.244.<node>.<n>` from their node's /24 (kubeadm's --node-cidr-mask-size 24);
    the two orders replicas land on different nodes (kube-scheduler spreads a workload)."""
    plan = plan_cluster(World.build(load_documents([SHOP])))
    assert [n.name for n in plan.nodes] == ["node-0", "node-1"]
    assert [str(n.pod_cidr) for n in plan.nodes] == ["10.244.0.0/24", "10.244.1.0/24"]
    assert [str(n.ip) for n in plan.nodes] == ["172.18.0.2", "172.18.0.3"]
    orders = plan.find_pods("shop/orders")
    assert {p.node for p in orders} == {"node-0", "node-1"}
    for pod in plan.pods:
        node = plan.node(pod.node)
        assert pod.ip in node.pod_cidr and pod.ip != node.gateway
    addresses = list(all_addresses(plan))
    assert len(addresses) == len(set(addresses))
    assert plan.ips()["shop/frontend-0"] == "10.244.0.3"


def test_cluster_ips_come_from_the_service_cidr_and_dns_is_the_tenth() -> None:
    """kubeadm gives the DNS Service the 10th address of the service CIDR (10.96.0.10)."""
    plan = plan_cluster(World.build(load_documents([SHOP])))
    assert str(plan.dns_ip) == "10.96.0.10"
    dns = next(s for s in plan.services if s.system)
    assert (dns.namespace, dns.name, str(dns.cluster_ip)) == ("kube-system", "kube-dns", "10.96.0.10")
    ips = [s.cluster_ip for s in plan.services]
    assert len(ips) == len(set(ips)) and all(ip in plan.service_cidr for ip in ips)


def test_named_target_port_resolves_per_pod_and_numbers_pass_through() -> None:
    """Kubernetes: targetPort "can be a named port in the backend Pods"; a pod without that name
    is not an endpoint for that port."""
    text = _deployment("a", 2, 9000) + _service("by-name", "a", "http") + _service("by-number", "a", "7000")
    plan = _plan(text)
    by_name = next(s for s in plan.services if s.name == "by-name")
    by_number = next(s for s in plan.services if s.name == "by-number")
    assert {e.port for e in by_name.ports[0].endpoints} == {9000}
    assert len(by_name.ports[0].endpoints) == 2
    assert {e.port for e in by_number.ports[0].endpoints} == {7000}
    missing = _plan(_deployment("a", 1, 9000) + _service("s", "a", "metrics"))
    assert next(s for s in missing.services if s.name == "s").ports[0].endpoints == ()


def test_node_name_pins_a_pod_and_an_unknown_node_is_an_error_with_its_line() -> None:
    pinned = _plan(_deployment("a", 1, extra="      nodeName: node-1\n"))
    assert pinned.find_pods("t/a")[0].node == "node-1"
    with pytest.raises(ManifestError) as err:
        _plan(_deployment("a", 1, extra="      nodeName: node-7\n"))
    text = str(err.value)
    assert "c.yaml:" in text and "unknown node 'node-7'" in text and "node-0, node-1" in text
    assert "spec.template.spec.nodeName" in text


def test_port_clash_between_containers_of_a_pod_is_an_error() -> None:
    """Containers of a pod share its network namespace, so two cannot listen on one port."""
    text = """
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: t}
spec:
  containers:
    - {name: a, command: [sleep, "1"], ports: [{containerPort: 80}]}
    - {name: b, command: [sleep, "1"], ports: [{containerPort: 80}]}
"""
    with pytest.raises(ManifestError, match="port 80/TCP clashes with container 'a'"):
        _plan(text)


def test_overlapping_cidrs_are_errors() -> None:
    overlap_underlay = """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: c}
spec: {podCIDR: 172.18.0.0/16, serviceCIDR: 10.96.0.0/16}
"""
    with pytest.raises(ManifestError, match="overlaps the node underlay"):
        _plan(overlap_underlay)
    overlap_each_other = """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: c}
spec: {podCIDR: 10.0.0.0/8, serviceCIDR: 10.96.0.0/16}
"""
    with pytest.raises(ManifestError, match="overlaps the pod CIDR"):
        parse_documents(load_text(overlap_each_other, "c.yaml"))


def test_explicit_cluster_ip_outside_the_cidr_or_taken_is_an_error() -> None:
    with pytest.raises(ManifestError, match="not in the service CIDR"):
        _plan(_deployment("a") + _service("s", "a", cluster_ip="192.168.1.1"))
    with pytest.raises(ManifestError, match="already used by Service kube-system/kube-dns"):
        _plan(_deployment("a") + _service("s", "a", cluster_ip="10.96.0.10"))
    fixed = _plan(_deployment("a") + _service("s", "a", cluster_ip="10.96.5.5"))
    assert str(next(s for s in fixed.services if s.name == "s").cluster_ip) == "10.96.5.5"


def test_service_selecting_nothing_is_a_warning_not_an_error() -> None:
    plan = _plan(_deployment("a") + _service("lonely", "nobody"))
    assert any("t/lonely selects no pod" in w for w in plan.warnings)
    assert next(s for s in plan.services if s.name == "lonely").ports[0].endpoints == ()


def test_cluster_resource_sets_name_nodes_and_cidrs_and_ambient_is_planned() -> None:
    text = """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: lab}
spec: {nodes: 3, mode: ambient, podCIDR: 10.20.0.0/16, serviceCIDR: 10.30.0.0/24}
---
""" + _deployment("a", 3)
    plan = _plan(text)
    assert plan.name == "lab" and len(plan.nodes) == 3
    assert str(plan.nodes[2].pod_cidr) == "10.20.2.0/24"
    assert {p.node for p in plan.find_pods("t/a")} == {"node-0", "node-1", "node-2"}
    assert (plan.mode, plan.requested_mode) == ("ambient", "ambient")
    assert not any("mode 'ambient'" in w for w in plan.warnings)
    assert _plan(text, name="other", nodes=1).name == "other"


def test_a_mode_without_a_local_data_path_warns_and_runs_as_none() -> None:
    """`kernel` has no data path in the local runtime yet: it is planned as `none`, with a warning
    (the mesh is off, rather than half on)."""
    text = """
apiVersion: nodemesh.io/v1alpha1
kind: Cluster
metadata: {name: lab}
spec: {nodes: 2, mode: kernel}
---
""" + _deployment("a", 2)
    plan = _plan(text)
    assert (plan.mode, plan.requested_mode) == ("none", "kernel")
    assert any("mode 'kernel'" in w and "running with mode 'none'" in w for w in plan.warnings)
    assert _plan(text.replace("mode: kernel", "mode: none")).warnings == ()


def test_nodemesh_commands_run_this_checkout() -> None:
    plan = plan_cluster(World.build(load_documents([SHOP])))
    argv = plan.find_pods("shop/orders")[0].containers[0].argv
    assert argv[:3] == (sys.executable, "-m", "nodemesh.cli.echo") and argv[3:] == ("--http", "8080")


def test_network_steps_are_cni_ptp_with_routes_between_nodes() -> None:
    """CNI ptp: the pod has ip/32 and a default route via the node-side gateway; the node has a
    /32 route per pod and a route per other node's pod CIDR via that node's underlay address."""
    plan = plan_cluster(World.build(load_documents([SHOP])))
    steps = {s.netns: s for s in render_network(plan, "/ns")}
    assert "link add nm-br0 type bridge" in steps[None].batch
    assert "link add nm-up1 type veth peer name eth0 netns /ns/node-1" in steps[None].batch
    node0 = steps["node-0"]
    assert "route add 10.244.1.0/24 via 172.18.0.3 dev eth0" in node0.batch
    assert ("net/ipv4/ip_forward", "1") in node0.sysctls
    frontend = plan.find_pods("shop/frontend")[0]
    assert f"route add {frontend.ip}/32 dev {frontend.host_veth} scope link" in node0.batch
    pod = steps[frontend.netns]
    assert pod.batch[-1] == "route add default via 10.244.0.1 dev eth0"
    assert f"addr add {frontend.ip}/32 dev eth0" in pod.batch
    assert ipaddress.ip_address("172.18.0.2") in UNDERLAY


def test_resolv_conf_and_hosts_are_the_kubelets() -> None:
    """Kubernetes ClusterFirst: `search <ns>.svc.cluster.local svc.cluster.local cluster.local`,
    `options ndots:5`, the cluster DNS as the only nameserver."""
    plan = plan_cluster(World.build(load_documents([SHOP])))
    assert render_resolv_conf(plan, "shop") == (
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    assert "10.244.0.3\tfrontend-0" in render_hosts(plan.find_pods("shop/frontend")[0])


def test_plan_is_deterministic() -> None:
    world = World.build(load_documents([SHOP]))
    assert plan_cluster(world) == plan_cluster(World.build(load_documents([SHOP])))


def test_host_network_pods_share_the_node_and_cannot_share_a_port() -> None:
    """Kubernetes: a hostNetwork pod "will use the network namespace of the host" (here: its
    node), so two such pods on one node cannot listen on the same port."""
    pod = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: t}}
spec:
  hostNetwork: true
  nodeName: node-1
  containers: [{{name: c, command: [sleep, "9"], ports: [{{containerPort: 9100}}]}}]
---
"""
    plan = _plan(pod.format(name="agent"))
    agent = plan.find_pods("t/agent")[0]
    assert agent.host_network and agent.ip == plan.node("node-1").ip and agent.netns == "node-1"
    steps = render_network(plan, "/ns")
    assert [s.netns for s in steps] == [None, "node-0", "node-1", "pod.kube-system.coredns"]
    assert not any("veth" in line for s in steps if s.netns == "node-1" for line in s.batch)
    with pytest.raises(ManifestError, match="already taken by host-network pod t/a"):
        _plan(pod.format(name="a") + pod.format(name="b"))


def test_ambient_services_that_use_a_waypoint_are_warned_about() -> None:
    """Istio ambient: traffic to a Service labelled (or in a namespace labelled)
    `istio.io/use-waypoint` is sent to that waypoint, never straight to an endpoint
    (istio-ambient.md, outbound step 1). A world without the waypoint's pod (which `up` renders,
    tests/waypoint/test_deployment.py) gets a warning naming the Services the node proxies will
    refuse; the shop without that label has none."""
    shop = plan_cluster(World.build(load_documents([SHOP])))
    assert shop.mode == "ambient"
    assert any("service shop/orders uses waypoint shop/waypoint" in w for w in shop.warnings)
    l4 = plan_cluster(World.build(load_documents([str(Path(SHOP).parent / "shop-ambient-l4")])))
    assert l4.mode == "ambient" and l4.warnings == ()
