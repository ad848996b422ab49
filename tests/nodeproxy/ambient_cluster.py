"""Two real nodes with pods, for the ambient node proxy tests (root only).

The shape is the runtime's (docs/runtime.md) and ztunnel's namespaced tests': each node is a
network namespace; the two nodes are joined by a veth (the underlay, `172.31.0.2` <-> `.3`);
each pod is a namespace with a veth to its node, CNI `ptp` style (`10.244.<node>.<n>/32`, default
route via `10.244.<node>.1`, which every node-side veth carries); each node routes the other
node's pod CIDR over the underlay. Every name starts with a fresh `nm<hex>` prefix; veths are
created between these namespaces only, so nothing is ever made in the host's namespace, and
deleting the namespaces removes everything (links, routes, rules, conntrack), even after a
failure. (Copied and extended from tests/capture/conftest.py, which has one node.)

The node proxies run in the test process, on one event loop in a background thread
(`LoopThread`), so test bodies stay synchronous (real `curl` via `ip netns exec`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from nodemesh.nodeproxy.runtime import new_event_loop
from nodemesh.runtime.netns import socket_in

T = TypeVar("T")
UNDERLAY = "172.31.0"


def require_root(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, veths, nftables rules and routes")
    for tool in ("ip", "nft", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"needs the `{tool}` command")


@dataclass(frozen=True)
class Netns:
    name: str
    ip: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"


@dataclass
class Topology:
    prefix: str
    nodes: list[Netns] = field(default_factory=list)
    pods: dict[str, Netns] = field(default_factory=dict)
    pod_node: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def node_of(self, pod: str) -> Netns:
        return self.nodes[self.pod_node[pod]]


def _ip(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *argv], input=stdin, text=True, check=True, capture_output=True)


def _batch(ns: str, lines: list[str]) -> None:
    _ip("-n", ns, "-batch", "-", stdin="\n".join(lines) + "\n")


def build_topology(layout: Mapping[str, int], nodes: int = 2) -> Topology:
    """Nodes 0..nodes-1 and the pods of `layout` (pod name -> node index). On failure, what was
    made is deleted before the error propagates."""
    topo = Topology(f"nm{secrets.token_hex(3)}")
    try:
        for i in range(nodes):
            ns = Netns(f"{topo.prefix}-n{i}", f"{UNDERLAY}.{i + 2}")
            _ip("netns", "add", ns.name)
            topo.created.append(ns.name)
            topo.nodes.append(ns)
        counters = [1] * nodes
        for pod, node in layout.items():
            counters[node] += 1
            ns = Netns(f"{topo.prefix}-{pod}", f"10.244.{node}.{counters[node]}")
            _ip("netns", "add", ns.name)
            topo.created.append(ns.name)
            topo.pods[pod] = ns
            topo.pod_node[pod] = node
        # the underlay: one veth between node 0 and node 1
        _ip(
            "-n",
            topo.nodes[0].name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            topo.nodes[1].name,
        )
        for i, node_ns in enumerate(topo.nodes):
            lines = ["link set lo up", f"addr add {node_ns.ip}/24 dev eth0", "link set eth0 up"]
            for j, other in enumerate(topo.nodes):
                if j != i:
                    lines.append(f"route add 10.244.{j}.0/24 via {other.ip} dev eth0")
            host_index = 0
            for pod, node in topo.pod_node.items():
                if node != i:
                    continue
                pod_ns = topo.pods[pod]
                veth = f"veth{host_index}"
                host_index += 1
                lines += [
                    f"link add {veth} type veth peer name eth0 netns {pod_ns.name}",
                    f"addr add 10.244.{i}.1/32 dev {veth} noprefixroute",
                    f"link set {veth} up",
                    f"route add {pod_ns.ip}/32 dev {veth} scope link",
                ]
            _batch(node_ns.name, lines)
            _ip("netns", "exec", node_ns.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for pod, node in topo.pod_node.items():
            gateway = f"10.244.{node}.1"
            _batch(
                topo.pods[pod].name,
                [
                    "link set lo up",
                    f"addr add {topo.pods[pod].ip}/32 dev eth0",
                    "link set eth0 up",
                    f"route add {gateway} dev eth0 scope link",
                    f"route add default via {gateway} dev eth0",
                ],
            )
    except BaseException:
        delete_topology(topo)
        raise
    return topo


def delete_topology(topo: Topology) -> None:
    for name in reversed(topo.created):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    topo.created.clear()


# ---- applications -------------------------------------------------------------------------


@dataclass
class App:
    """`nodemesh echo` running in a pod's namespace."""

    pod: str
    netns: Netns
    proc: subprocess.Popen[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start_echo(topo: Topology, pod: str, namespace: str, node: str, *args: str) -> App:
    ns = topo.pods[pod]
    env = {
        "NODEMESH_POD_NAME": pod,
        "NODEMESH_POD_NAMESPACE": namespace,
        "NODEMESH_POD_IP": ns.ip,
        "NODEMESH_NODE_NAME": node,
    }
    argv = ["ip", "netns", "exec", ns.name, "env", *(f"{k}={v}" for k, v in env.items())]
    argv += [sys.executable, "-m", "nodemesh.cli.echo", *args, "--no-access-log"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return App(pod, ns, proc)


def wait_listening(from_ns: Netns, address: tuple[str, int], app: App, timeout: float = 15.0) -> None:
    """Until `address` accepts a TCP connection made from `from_ns` (the kubelet's TCP probe)."""
    deadline = time.monotonic() + timeout
    while True:
        if app.proc.poll() is not None:
            raise AssertionError(
                f"{app.pod}'s app exited: {app.proc.stderr.read() if app.proc.stderr else ''}"
            )
        sock = socket_in(from_ns.path)
        sock.settimeout(0.5)
        try:
            sock.connect(address)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            sock.close()


def curl_in(ns: Netns, url: str, *extra: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """The real curl inside a pod (`ip netns exec`)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, "curl", "-sS", "-m", str(timeout), *extra, url],
        capture_output=True,
        text=True,
        check=False,
    )


# ---- an event loop of its own ---------------------------------------------------------------


class LoopThread:
    """The node proxies' event loop (uvloop), run by a background thread."""

    def __init__(self) -> None:
        self.loop = new_event_loop(use_uvloop=True)
        self._thread = threading.Thread(target=self.loop.run_forever, name="node-proxy-loop", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 20.0) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper(), timeout)

    def stop(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(drain(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def wait_until(predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (records arrive when connections end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def iter_lines(stream: Any, deadline: float) -> Iterator[str]:
    """Lines of a subprocess pipe until `deadline` (monotonic)."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return
        line = stream.readline()
        if not line:
            return
        yield line
