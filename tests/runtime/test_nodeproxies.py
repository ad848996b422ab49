"""Mode ambient in the local runtime: each node proxy's config and the pods it must serve (pure),
and the gate that starts workloads only once every node proxy serves its node's ambient pods."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from nodemesh.model.validate import load_documents
from nodemesh.model.world import World
from nodemesh.nodeproxy.process import NodeProxyConfig
from nodemesh.runtime.mesh import MeshProcesses, Supervised, policy_reload_due
from nodemesh.runtime.nodeproxies import plan_node_proxies
from nodemesh.runtime.state import ClusterDir
from nodemesh.runtime.topology import ClusterPlan, plan_cluster

ROOT = Path(__file__).resolve().parents[2]
SHOP_L4 = ROOT / "examples" / "shop-ambient-l4"

OUT_OF_MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: plain}
spec:
  nodeName: node-1
  containers: [{name: c, command: [nodemesh, echo, --http, "8080"]}]
"""


def _world_and_plan(tmp_path: Path, extra: str = "") -> tuple[World, ClusterPlan]:
    paths = [str(SHOP_L4)]
    if extra:
        (tmp_path / "extra.yaml").write_text(extra)
        paths.append(str(tmp_path / "extra.yaml"))
    docs = load_documents(paths)
    plan = plan_cluster(World.build(docs), name="lab")
    world = World.build(docs, ips=plan.ips())
    world.mode_override = plan.mode
    return world, plan


def test_the_shop_without_waypoint_is_planned_ambient_with_a_node_proxy_per_node(tmp_path: Path) -> None:
    """Istio ambient: pods of a namespace labelled `istio.io/dataplane-mode=ambient` are in the
    mesh (istio-ambient.md §3.1 step 1), and one ztunnel per node serves them all (in-pod mode).
    Without a `Cluster` resource the mode is ambient, and the runtime now plans it as such."""
    world, plan = _world_and_plan(tmp_path)
    assert plan.mode == "ambient" and plan.warnings == ()
    state = ClusterDir(tmp_path / "lab")
    proxies = {p.node: p for p in plan_node_proxies(world, plan, state)}
    assert set(proxies) == {"node-0", "node-1"}
    assert proxies["node-0"].expected == ("shop/frontend-0", "shop/orders-1")
    assert proxies["node-1"].expected == ("shop/orders-0", "shop/reporting-0")


def test_each_config_is_a_valid_node_proxy_config_with_agent_svids_and_no_capture_ownership(
    tmp_path: Path,
) -> None:
    """ztunnel gets its workloads' certificates through the node's credential, never from a CA
    key of its own: the node proxy reads the SVIDs the node agent obtained (`kind: agent`). The
    supervisor owns the in-pod rules, so the proxy must not install or remove them."""
    world, plan = _world_and_plan(tmp_path)
    state = ClusterDir(tmp_path / "lab")
    proxy = next(p for p in plan_node_proxies(world, plan, state) if p.node == "node-1")
    config = NodeProxyConfig.from_dict(proxy.config)
    assert config.manage_capture is False and config.mode == "ambient" and config.cluster_name == "lab"
    assert config.credentials.kind == "agent"
    assert config.credentials.directory == state.agent_dir("node-1") / "certs"
    assert config.credentials.bundle == state.controlplane / "nodes" / "node-1" / "ca.crt"
    assert config.flows_dir == state.flows and config.metrics == ("0.0.0.0", 15020)
    assert config.manifests == (state.manifests,)
    assert {p.key for p in config.pods} == {"shop/orders-0", "shop/reporting-0"}
    assert all(p.netns.startswith(str(state.netns)) for p in config.pods)
    assert config.service_ips["shop/orders"] == "10.96.0.2"
    assert config.pod_ips["shop/orders-0"] == "10.244.1.2"


def test_a_pod_out_of_the_mesh_is_given_to_the_proxy_but_not_expected(tmp_path: Path) -> None:
    """`istio.io/dataplane-mode: none` keeps a pod out of ambient (istio-ambient.md §3.1): it is
    not captured, so the data path does not wait for the node proxy to serve it."""
    world, plan = _world_and_plan(tmp_path, OUT_OF_MESH)
    state = ClusterDir(tmp_path / "lab")
    proxy = next(p for p in plan_node_proxies(world, plan, state) if p.node == "node-1")
    assert "plain/legacy" not in proxy.expected
    assert "plain/legacy" in {p.key for p in NodeProxyConfig.from_dict(proxy.config).pods}


class _Running(Supervised):
    def __init__(self, running: bool) -> None:
        super().__init__("x", ["true"], "/dev/null", lambda _: None, lambda: None)
        self._running = running

    @property
    def running(self) -> bool:
        return self._running


def test_workloads_wait_until_every_node_proxy_serves_its_ambient_pods(tmp_path: Path) -> None:
    """The capture is installed before any workload starts; captured traffic with no proxy
    listening is refused, so the data path is ready only when each node proxy reports (its `ready`
    or `pods` line) every ambient pod of its node, and only while that proxy runs."""
    mesh = MeshProcesses(ClusterDir(tmp_path))
    assert mesh.data_path_ready()  # mode none: no node proxy, nothing to wait for
    mesh.node_proxies = {"node-0": _Running(True), "node-1": _Running(True)}
    mesh.proxy_expected = {"node-0": ("shop/a",), "node-1": ()}
    assert not mesh.data_path_ready()
    mesh._on_node_proxy("node-0", {"event": "ready", "pods": [], "failed": {"shop/a": "no SVID"}})
    assert not mesh.data_path_ready()
    assert mesh.node_proxy_statuses()[0].waiting == ("shop/a: no SVID",)
    mesh._on_node_proxy("node-0", {"event": "pods", "pods": ["shop/a"], "failed": {}})
    assert mesh.data_path_ready()
    assert mesh.node_proxy_statuses()[0].pods == ("shop/a",)
    mesh.node_proxies["node-0"] = _Running(False)
    assert not mesh.data_path_ready() and mesh.served("node-0") == ()


def test_the_agents_acked_policies_replace_the_manifests_policies(tmp_path: Path) -> None:
    """ztunnel enforces the `Authorization` resources of its xDS stream, not a snapshot taken at
    start: each node proxy is pointed at its agent's ACKed policies, and once that file exists
    its documents replace every policy of the manifests (a deleted policy is gone too)."""
    import dataclasses

    from nodemesh.nodeproxy.process import build_world, read_policies

    world, plan = _world_and_plan(tmp_path)
    state = ClusterDir(tmp_path / "lab")
    proxy = next(p for p in plan_node_proxies(world, plan, state) if p.node == "node-0")
    config = dataclasses.replace(NodeProxyConfig.from_dict(proxy.config), manifests=(SHOP_L4,))
    assert config.policies == state.agent_policies("node-0")
    before = build_world(config, read_policies(config.policies))  # no file yet
    assert [d.name for d in before.policies] == ["orders-allow-frontend-principal"]

    state.agent_dir("node-0").mkdir(parents=True)
    deny = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "orders-deny-frontend", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "orders"}}, "action": "DENY", "rules": [{}]},
    }
    assert config.policies is not None
    config.policies.write_text(json.dumps({"version": "3", "documents": [deny]}))
    after = build_world(config, read_policies(config.policies))
    assert [(d.kind, d.name) for d in after.policies] == [("AuthorizationPolicy", "orders-deny-frontend")]
    assert {w.key for w in after.workloads} == {w.key for w in before.workloads}


class _Proxy(Supervised):
    """A node proxy that runs as `pid` and records the signals it is sent."""

    def __init__(self, pid: int) -> None:
        super().__init__("proxy", ["true"], "/dev/null", lambda _: None, lambda: None)
        self._pid = pid
        self.signals: list[signal.Signals] = []

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return True

    def signal(self, signum: signal.Signals) -> None:
        self.signals.append(signum)


def test_policy_reload_is_due_for_an_acked_version_neither_enforced_nor_signalled() -> None:
    """ztunnel re-evaluates its connections "whenever policy changes" (reference, PolicyWatcher):
    a reload is due once per new ACKed version, never for no version or the one enforced."""
    assert policy_reload_due("4", "3", "")
    assert not policy_reload_due("4", "4", "")  # already enforced
    assert not policy_reload_due("4", "3", "4")  # signalled, its `reloaded` line not read yet
    assert not policy_reload_due("", "", "")  # the agent has ACKed nothing yet
    assert policy_reload_due("5", "3", "4")  # a newer ACK while a reload was in flight


def test_a_node_proxy_gets_sighup_when_its_agent_acks_new_policies_and_only_once_ready(
    tmp_path: Path,
) -> None:
    """A PolicyWatcher "re-evaluates tracked inbound connections whenever policy changes and
    closes any that are now denied" (istio-ambient.md, ztunnel): the runtime's trigger is its
    agent's ACK of a new version. A proxy is signalled only after its `ready` (SIGHUP's default
    action would kill it while it starts); a proxy that started on an older file is signalled at
    its `ready`."""
    mesh = MeshProcesses(ClusterDir(tmp_path))
    proxy = _Proxy(4242)
    mesh.node_proxies = {"node-0": proxy}
    mesh.proxy_expected = {"node-0": ()}
    mesh._on_agent("node-0", {"event": "agent", "acked_version": "3"})
    assert proxy.signals == []  # not ready yet: it reads the latest file when it starts
    mesh._on_node_proxy("node-0", {"event": "ready", "pods": [], "policy_version": "3"})
    assert proxy.signals == []
    mesh._on_agent("node-0", {"event": "agent", "acked_version": "4"})
    mesh._on_agent("node-0", {"event": "agent", "acked_version": "4", "connected": True})
    assert proxy.signals == [signal.SIGHUP]  # once per version
    mesh._on_node_proxy("node-0", {"event": "reloaded", "pods": [], "policy_version": "4", "closed": 1})
    assert proxy.signals == [signal.SIGHUP]
    assert mesh.node_proxy_statuses()[0].policy_version == "4"

    restarted = _Proxy(4343)  # a new process: not signalled before its own `ready`
    mesh.node_proxies["node-0"] = restarted
    mesh._on_agent("node-0", {"event": "agent", "acked_version": "5"})
    assert restarted.signals == []
    mesh._on_node_proxy("node-0", {"event": "ready", "pods": [], "policy_version": "4"})
    assert restarted.signals == [signal.SIGHUP]
