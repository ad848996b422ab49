"""The in-pod capture on real namespaces: real curl, real kernel redirects, real conntrack.

Each test builds a node and two pods (`conftest.topology`), installs the capture in pod A, and
opens the node proxy's listeners (15001, 15006, 15008) inside pod A through `PodSocketFactory`,
then shows where a real connection lands. Statements are istio-ambient.md §3 (istio-cni in-pod
rules, `IS:cni/pkg/iptables/testdata/default.golden`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from nodemesh.capture import (
    INPOD_MARK,
    PROBE_SNAT_V4,
    TABLE,
    CaptureConfig,
    OriginalDestinationError,
    PodSocketFactory,
    capture_state,
    install_capture,
    install_probe_snat,
    list_ruleset,
    original_dst,
    plan_capture,
    remove_capture,
    remove_probe_snat,
    rule_counters,
)
from nodemesh.capture.install import run_in_netns
from tests.capture.conftest import (
    Topology,
    accept_any,
    connect_from,
    curl_in,
    http_answer,
    listen_in,
    nothing_pending,
)

pytestmark = pytest.mark.netns

OUTBOUND, INBOUND_PLAIN, HBONE = 15001, 15006, 15008


class Proxy:
    """The node proxy's three in-pod listeners in pod A, made through the socket factory."""

    def __init__(self, topo: Topology) -> None:
        self.factory = PodSocketFactory(topo.a.path)
        self.listeners = {port: self.factory.tcp_bind(port) for port in (OUTBOUND, INBOUND_PLAIN, HBONE)}

    def all(self) -> list[socket.socket]:
        return list(self.listeners.values())

    def close(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.factory.close()


@pytest.fixture
def captured(topology: Topology) -> Iterator[tuple[Topology, Proxy]]:
    install_capture(topology.a.path)
    proxy = Proxy(topology)
    try:
        yield topology, proxy
    finally:
        proxy.close()


def test_app_outbound_curl_lands_on_15001_with_the_original_destination(
    captured: tuple[Topology, Proxy],
) -> None:
    """istio-cni: `-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT
    --to-ports 15001`; ztunnel reads the original destination with SO_ORIGINAL_DST (§3.2)."""
    topo, proxy = captured
    app_b = listen_in(topo.b, 8080)
    try:
        curl = curl_in(topo.a, f"http://{topo.b.ip}:8080/hello")
        port, conn = accept_any([*proxy.all(), app_b])
        dst = original_dst(conn)
        peer = conn.getpeername()[0]
        http_answer(conn, f"captured on {port}, for {dst}")
        out, err = curl.communicate(timeout=10)
        assert curl.returncode == 0, err
        assert port == OUTBOUND
        assert str(dst) == f"{topo.b.ip}:8080" and dst.as_tuple() == (topo.b.ip, 8080)
        assert peer == topo.a.ip  # the app's own address: nothing else rewritten
        assert out == f"captured on 15001, for {topo.b.ip}:8080"
        assert nothing_pending([app_b]), "pod B must not see the app's connection"
        assert rule_counters(topo.a.path)["outbound"] >= 1
    finally:
        app_b.close()


def test_inbound_connection_lands_on_15006_with_the_original_destination(
    captured: tuple[Topology, Proxy],
) -> None:
    """istio-cni: `-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark
    0x539/0xfff -j REDIRECT --to-ports 15006`: plaintext inbound goes to the node proxy."""
    topo, proxy = captured
    app_a = listen_in(topo.a, 8080)
    try:
        client = connect_from(topo.b, (topo.a.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_a])
        assert port == INBOUND_PLAIN
        assert original_dst(conn).as_tuple() == (topo.a.ip, 8080)
        assert conn.getpeername()[0] == topo.b.ip  # the client's address is preserved
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        assert nothing_pending([app_a]), "the app must not see the connection directly"
        assert rule_counters(topo.a.path)["inbound-plaintext"] >= 1
        conn.close()
        client.close()
    finally:
        app_a.close()


def test_hbone_port_15008_is_not_redirected(captured: tuple[Topology, Proxy]) -> None:
    """istio-ambient.md §1.1: "Clients send to `<podIP>:15008`; it is not redirected, ztunnel's
    socket listens there in the pod netns" (the `! --dport 15008` of the inbound rule)."""
    topo, proxy = captured
    client = connect_from(topo.b, (topo.a.ip, HBONE))
    port, conn = accept_any(proxy.all())
    assert port == HBONE
    assert conn.getsockname() == (topo.a.ip, HBONE)
    assert nothing_pending(proxy.all())
    assert rule_counters(topo.a.path)["inbound-plaintext"] == 0
    conn.close()
    client.close()


def test_socket_marked_0x539_from_pod_a_goes_straight_to_pod_b(captured: tuple[Topology, Proxy]) -> None:
    """istio-ambient.md §3.1: "All outbound sockets created 'in' the pod get SO_MARK=1337 (0x539)",
    and every redirect rule carries `-m mark ! --mark 0x539/0xfff`: the proxy is never captured."""
    topo, proxy = captured
    app_b = listen_in(topo.b, 8080)
    try:
        marked = proxy.factory.new_tcp()
        assert marked.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == INPOD_MARK
        marked.setblocking(True)
        marked.settimeout(5)
        marked.connect((topo.b.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_b])
        assert port == 8080 and conn.getpeername()[0] == topo.a.ip
        marked.sendall(b"direct")
        assert conn.recv(6) == b"direct"
        conn.close()
        marked.close()
        # The same connection from an unmarked socket (the app's) is captured: the mark decides.
        plain = connect_from(topo.a, (topo.b.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_b])
        assert port == OUTBOUND
        conn.close()
        plain.close()
    finally:
        app_b.close()


def test_removing_the_capture_restores_direct_traffic(captured: tuple[Topology, Proxy]) -> None:
    """istio-cni `DeleteInpodRules`: a pod leaving the mesh gets its traffic back untouched."""
    topo, proxy = captured
    app_b = listen_in(topo.b, 8080)
    try:
        assert capture_state(topo.a.path).installed
        remove_capture(topo.a.path)
        remove_capture(topo.a.path)  # idempotent
        assert capture_state(topo.a.path).absent
        assert list_ruleset(topo.a.path).strip() == ""
        curl = curl_in(topo.a, f"http://{topo.b.ip}:8080/")
        port, conn = accept_any([*proxy.all(), app_b])
        assert port == 8080 and conn.getpeername()[0] == topo.a.ip
        http_answer(conn, "direct")
        out, err = curl.communicate(timeout=10)
        assert curl.returncode == 0 and out == "direct", err
    finally:
        app_b.close()


def test_install_is_idempotent_touches_only_the_pod_and_shows_exactly_one_table(topology: Topology) -> None:
    """istio-cni installs its rules inside the pod's namespace only (§3.1 step 2); here one table,
    one `ip rule fwmark 0x111/0xfff pref 32764 lookup 100`, one `local default dev lo table 100`."""

    def host() -> tuple[str, str, str]:
        def run(*argv: str) -> str:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

        return (
            run("nft", "list", "ruleset"),
            run("ip", "rule", "show"),
            run("ip", "route", "show", "table", "all"),
        )

    before = host()
    install_capture(topology.a.path)
    install_capture(topology.a.path)  # a second install changes nothing
    ruleset = list_ruleset(topology.a.path)
    assert [line for line in ruleset.splitlines() if line.startswith("table")] == [f"table inet {TABLE} {{"]
    rules = run_in_netns(topology.a.path, ("ip", "-4", "rule", "show"))
    assert rules.count("fwmark 0x111/0xfff lookup 100") == 1, rules
    assert "32764:" in rules
    routes = run_in_netns(topology.a.path, ("ip", "-4", "route", "show", "table", "100"))
    assert routes.strip() == "local default dev lo scope host", routes
    assert list_ruleset(topology.b.path).strip() == "" and list_ruleset(topology.node.path).strip() == ""
    assert host() == before
    remove_capture(topology.a.path)
    assert host() == before


def test_transparent_connection_to_the_app_gets_its_replies_through_connmark_and_table_100(
    captured: tuple[Topology, Proxy],
) -> None:
    """§3.3: the proxy's connection to the app is marked 0x539 and spoofs the client IP;
    PREROUTING sets connmark 0x111; the app's replies get mark 0x111 restored in OUTPUT and the
    `ip rule fwmark 0x111/0xfff lookup 100` sends them to the local route, back to the proxy's
    transparent socket instead of out of eth0. Without that rule the connection cannot form."""
    topo, proxy = captured
    app_a = listen_in(topo.a, 8080)
    try:
        spoofed = proxy.factory.transparent_tcp(topo.b.ip)
        spoofed.setblocking(True)
        spoofed.settimeout(5)
        spoofed.connect((topo.a.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_a])
        assert port == 8080
        assert conn.getpeername()[0] == topo.b.ip  # the app sees the original client
        spoofed.sendall(b"request")
        assert conn.recv(7) == b"request"
        conn.sendall(b"reply")
        assert spoofed.recv(5) == b"reply"
        counters = rule_counters(topo.a.path)
        assert counters["mark-connmark"] >= 1 and counters["restore-mark"] >= 1
        conn.close()
        spoofed.close()

        # Take the policy route away: the app's SYN-ACK now leaves through eth0 and is lost.
        for rule in plan_capture(CaptureConfig()).policy_rules:
            run_in_netns(topo.a.path, rule.delete_argv())
        broken = proxy.factory.transparent_tcp(topo.b.ip)
        broken.setblocking(True)
        broken.settimeout(1.5)
        with pytest.raises(OSError):
            broken.connect((topo.a.ip, 8080))
        broken.close()
    finally:
        app_a.close()


def test_app_calling_itself_or_localhost_is_not_captured(captured: tuple[Topology, Proxy]) -> None:
    """istio-cni: `-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT` ("Do not redirect app calls
    to back itself via Ztunnel when using the endpoint address") and the `! -d 127.0.0.1/32` of
    both redirects: a pod's traffic to itself stays inside it."""
    topo, proxy = captured
    app_a = listen_in(topo.a, 8080)
    try:
        for target in (topo.a.ip, "127.0.0.1"):
            client = connect_from(topo.a, (target, 8080))
            port, conn = accept_any([*proxy.all(), app_a])
            assert port == 8080, target
            assert nothing_pending(proxy.all())
            conn.close()
            client.close()
        assert rule_counters(topo.a.path)["loopback"] >= 1
    finally:
        app_a.close()


def test_host_probe_is_snatted_on_the_node_and_not_captured_in_the_pod(
    captured: tuple[Topology, Proxy],
) -> None:
    """§3.4: the node SNATs its own probes to 169.254.7.127 (`hostprobe.golden`), and the pod
    lets that source through (`-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT`), so a
    probe reaches the app itself while any other inbound connection goes to 15006."""
    topo, proxy = captured
    app_a = listen_in(topo.a, 8080)
    try:
        probe = connect_from(topo.node, (topo.a.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_a])
        assert port == INBOUND_PLAIN  # without the node-side SNAT the probe is captured
        conn.close()
        probe.close()

        install_probe_snat(topo.node.path, [ipaddress.IPv4Address(topo.a.ip)])
        probe = connect_from(topo.node, (topo.a.ip, 8080))
        port, conn = accept_any([*proxy.all(), app_a])
        assert port == 8080 and conn.getpeername()[0] == PROBE_SNAT_V4
        conn.sendall(b"ok")
        assert probe.recv(2) == b"ok"
        conn.close()
        probe.close()
        assert rule_counters(topo.a.path)["probe-in"] >= 1

        remove_probe_snat(topo.node.path)
        assert list_ruleset(topo.node.path).strip() == ""
    finally:
        app_a.close()


def test_listeners_served_from_an_asyncio_loop_that_never_changes_namespace(
    captured: tuple[Topology, Proxy],
) -> None:
    """STYLE.md / ztunnel `InpodNetns::run`: create the socket inside the pod's namespace, switch
    back, and hand it to asyncio (`start_server(sock=...)`); the loop's thread stays put."""
    topo, proxy = captured
    home = os.readlink("/proc/thread-self/ns/net")

    async def scenario() -> tuple[str, str, bytes]:
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(str(original_dst(sock)))
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, sock=proxy.listeners[INBOUND_PLAIN])
        loop_ns = os.readlink("/proc/thread-self/ns/net")
        with PodSocketFactory(topo.b.path, mark=None) as pod_b:
            client = pod_b.new_tcp()
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(client, (topo.a.ip, 9000)), 5)
            reader, writer = await asyncio.open_connection(sock=client)
            writer.write(b"hello")
            echoed = await asyncio.wait_for(reader.readexactly(5), 5)
            writer.close()
            return loop_ns, await asyncio.wait_for(seen, 5), echoed
        finally:
            server.close()

    loop_ns, dst, echoed = asyncio.run(scenario())
    assert loop_ns == home and os.readlink("/proc/thread-self/ns/net") == home
    assert dst == f"{topo.a.ip}:9000" and echoed == b"hello"


def test_listeners_carry_the_mark_and_reuseport(captured: tuple[Topology, Proxy]) -> None:
    """ztunnel `InPodSocketPortReuseFactory`: listeners get SO_REUSEPORT (`INPOD_PORT_REUSE`)
    and, like every socket of the in-pod factory, SO_MARK 0x539; they live in the pod's netns."""
    topo, proxy = captured
    for sock in proxy.all():
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == INPOD_MARK
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    # A second listener on the same port (a restarted proxy taking over) is allowed.
    twin = proxy.factory.tcp_bind(OUTBOUND)
    twin.close()
    listing = run_in_netns(topo.a.path, ("ss", "-Hltn"))
    assert all(f":{p}" in listing for p in (OUTBOUND, INBOUND_PLAIN, HBONE)), listing


def test_original_dst_of_a_connection_without_nat_is_an_error(topology: Topology) -> None:
    """SO_ORIGINAL_DST answers from conntrack; a namespace with no NAT rules keeps no record
    (ENOENT), which must surface as `OriginalDestinationError`, never as a made-up address."""
    server = listen_in(topology.b, 7000, "127.0.0.1")
    try:
        client = connect_from(topology.b, ("127.0.0.1", 7000))
        _, conn = accept_any([server])
        with pytest.raises(OriginalDestinationError):
            original_dst(conn)
        conn.close()
        client.close()
    finally:
        server.close()


def test_every_configuration_variant_loads_in_the_kernel(topology: Topology) -> None:
    """The nftables twin of every istio-cni variant (DNS capture on, IPv6 on) is valid nftables
    and installs and removes cleanly, routes included."""
    config = CaptureConfig(capture_dns=True, ipv6=True)
    install_capture(topology.a.path, config)
    state = capture_state(topology.a.path, config)
    assert state.installed
    counters = rule_counters(topology.a.path)
    assert {"dns-udp", "dns-tcp", "dns-zone-in", "dns-zone-out", "outbound-v6"} <= set(counters)
    remove_capture(topology.a.path, config)
    assert capture_state(topology.a.path, config).absent
