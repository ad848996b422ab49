"""A node namespace and two pod namespaces joined by veths, for real capture tests (root only).

The shape is the runtime's (docs/runtime.md, CNI `ptp`): each pod has `ip/32` on `eth0` and a
default route via the gateway `10.244.0.1`, which every node-side veth carries; the node has a
/32 route per pod and forwards. Names are `nm<hex>-node|-a|-b` (visible in `ip netns list` while
a test runs); each veth is created directly between two of these namespaces, so no link ever
exists in the host's namespace, and deleting the namespaces in `finally` removes everything the
test made (veths, rules, routes, conntrack entries), even when the test fails.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from nodemesh.runtime.netns import socket_in

GATEWAY = "10.244.0.1"
POD_A_IP = "10.244.0.2"
POD_B_IP = "10.244.0.3"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, veths, nftables rules and routes")
    for tool in ("ip", "nft", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs the `{tool}` command")


@dataclass(frozen=True)
class Netns:
    name: str
    ip: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"


@dataclass(frozen=True)
class Topology:
    node: Netns
    a: Netns
    b: Netns


def _ip(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *argv], input=stdin, text=True, check=True, capture_output=True)


@pytest.fixture
def topology() -> Iterator[Topology]:
    require_root()
    prefix = f"nm{secrets.token_hex(3)}"
    topo = Topology(
        Netns(f"{prefix}-node", GATEWAY), Netns(f"{prefix}-a", POD_A_IP), Netns(f"{prefix}-b", POD_B_IP)
    )
    created: list[str] = []
    try:
        for ns in (topo.node, topo.a, topo.b):
            _ip("netns", "add", ns.name)
            created.append(ns.name)
        node = ["link set lo up"]
        for i, pod in enumerate((topo.a, topo.b)):
            node += [
                f"link add veth{i} type veth peer name eth0 netns {pod.name}",
                f"addr add {GATEWAY}/32 dev veth{i} noprefixroute",
                f"link set veth{i} up",
                f"route add {pod.ip}/32 dev veth{i} scope link",
            ]
        _ip("-n", topo.node.name, "-batch", "-", stdin="\n".join(node) + "\n")
        _ip("netns", "exec", topo.node.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for pod in (topo.a, topo.b):
            batch = [
                "link set lo up",
                f"addr add {pod.ip}/32 dev eth0",
                "link set eth0 up",
                f"route add {GATEWAY} dev eth0 scope link",
                f"route add default via {GATEWAY} dev eth0",
            ]
            _ip("-n", pod.name, "-batch", "-", stdin="\n".join(batch) + "\n")
        yield topo
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# ---- small real clients and servers --------------------------------------------------------


def listen_in(ns: Netns, port: int, host: str = "0.0.0.0") -> socket.socket:
    """A plain (unmarked) listener inside a namespace: the stand-in for an application."""
    sock = socket_in(ns.path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def accept_any(listeners: Sequence[socket.socket], timeout: float = 5.0) -> tuple[int, socket.socket]:
    """The first connection any listener receives: (the listener's port, the accepted socket)."""
    ready, _, _ = select.select(list(listeners), [], [], timeout)
    assert ready, "no listener received a connection"
    conn, _ = ready[0].accept()
    conn.setblocking(True)
    conn.settimeout(timeout)
    return ready[0].getsockname()[1], conn


def nothing_pending(listeners: Sequence[socket.socket]) -> bool:
    ready, _, _ = select.select(list(listeners), [], [], 0)
    return not ready


def connect_from(ns: Netns, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A plain (unmarked) client socket made inside a namespace: an application's connection."""
    sock = socket_in(ns.path)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def http_answer(conn: socket.socket, body: str) -> None:
    """Read one HTTP request head and answer it with `body`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    payload = body.encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
    )
    conn.close()


def curl_in(ns: Netns, url: str) -> subprocess.Popen[str]:
    """Start the real curl inside a namespace (`ip netns exec`)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "curl", "-sS", "-m", "5", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
