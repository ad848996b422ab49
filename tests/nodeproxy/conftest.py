"""A real mesh of two pods on loopback addresses: a test CA (nodemesh.ca), SVIDs, a world, the
server pod's app and inbound proxy, the client pod's outbound proxy. Everything is closed at the
end of each test (listeners, connections, tasks)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from nodemesh.ca import CertificateAuthority, RootCA
from nodemesh.model.world import Workload, World
from nodemesh.nodeproxy import (
    LISTEN_BACKLOG,
    CredentialStore,
    HbonePool,
    HostSocketFactory,
    InboundProxy,
    ListSink,
    OutboundProxy,
    PoolSettings,
    TaskSet,
    WorkloadCertificate,
    new_event_loop,
)
from nodemesh.nodeproxy.testbed import HttpApp, TestbedSpec, build_world, issue_certificate
from nodemesh.policy.engine import PolicyEngine

T = TypeVar("T")
NOW = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
_SUBNETS = itertools.count(1)


def run(coro_fn: Callable[[], Awaitable[T]], loop_kind: str = "uvloop") -> T:
    """Run a test body on a fresh event loop of the given kind, then close the loop."""
    loop = new_event_loop(use_uvloop=loop_kind == "uvloop")
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 60))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(RootCA.generate("cluster.local", NOW))


@pytest.fixture
def spec() -> TestbedSpec:
    """Fresh loopback addresses per test (127.0.90+n.x), so no test sees another's sockets."""
    n = next(_SUBNETS)
    return TestbedSpec(client_ip=f"127.0.{90 + n}.5", server_ip=f"127.0.{90 + n}.10", app_port=18080)


@dataclass
class Mesh:
    spec: TestbedSpec
    ca: CertificateAuthority
    extra_yaml: str = ""
    pool_settings: PoolSettings = field(default_factory=PoolSettings)
    server_cert: WorkloadCertificate | None = None
    client_cert: WorkloadCertificate | None = None
    sink: ListSink = field(default_factory=ListSink)
    apps: list[HttpApp] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.world: World = build_world(self.spec, self.extra_yaml)
        self.engine = PolicyEngine(self.world, "ambient")
        self.client: Workload = self.world.find_workloads(self.spec.namespace, "client")[0]
        self.server: Workload = self.world.find_workloads(self.spec.namespace, "server")[0]
        client_cert = self.client_cert or issue_certificate(self.ca, self.spec.identity("client"), NOW)
        server_cert = self.server_cert or issue_certificate(self.ca, self.spec.identity("server"), NOW)
        bundle = self.ca.bundle.to_pem()
        self.client_creds = CredentialStore(bundle, [client_cert])
        self.server_creds = CredentialStore(bundle, [server_cert])
        self.sockets = HostSocketFactory(
            mark=None, backlog=LISTEN_BACKLOG, freebind=True, bind_no_port=True, dual_stack=False
        )
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    async def start(self, *, app: bool = True, body: bytes = b"hello\n") -> None:
        loop = asyncio.get_running_loop()
        self.tasks = TaskSet("test")
        if app:

            def make_app() -> HttpApp:
                a = HttpApp(body)
                self.apps.append(a)
                return a

            server = await loop.create_server(
                make_app, self.spec.server_ip, self.spec.app_port, reuse_address=True
            )
            self._closers.append(self._server_closer(server))
        self.inbound = InboundProxy(
            pod=self.server,
            identity=self.spec.identity("server"),
            engine=self.engine,
            credentials=self.server_creds,
            sockets=self.sockets,
            sink=self.sink,
            tasks=self.tasks,
        )
        await self.inbound.start_hbone(self.sockets.tcp_bind(self.spec.hbone_port, self.spec.server_ip))
        self.pool = HbonePool(
            self.client_creds, self.sockets, self.pool_settings, source_ip=self.spec.client_ip
        )
        self.outbound = OutboundProxy(
            source=self.client,
            engine=self.engine,
            pool=self.pool,
            sockets=self.sockets,
            original_destination=lambda _sock: (self.spec.server_ip, self.spec.app_port),
            sink=self.sink,
            tasks=self.tasks,
        )
        self.listener = self.sockets.tcp_bind(0, self.spec.client_ip)
        self.outbound_addr: tuple[str, int] = self.listener.getsockname()
        self.tasks.spawn(self.outbound.serve(self.listener), name="accept")

    @staticmethod
    def _server_closer(server: asyncio.Server) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        return close

    def update_policy(self, extra_yaml: str) -> int:
        self.world = build_world(self.spec, extra_yaml)
        self.engine = PolicyEngine(self.world, "ambient")
        self.outbound.update_policy(self.engine)
        return self.inbound.update_policy(self.engine)

    async def close(self) -> None:
        self.pool.close()
        await self.inbound.close()
        await self.tasks.close(grace=0.2)
        self.listener.close()
        for closer in self._closers:
            await closer()
        await asyncio.sleep(0)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client-pod application connection to the server's app, through the outbound."""
        sock = socket.socket()
        sock.bind((self.spec.client_ip, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self.outbound_addr)
        return await asyncio.open_connection(sock=sock)

    async def curl(self, *args: str) -> tuple[int, str]:
        host, port = self.outbound_addr
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--interface",
            self.spec.client_ip,
            *args,
            f"http://{host}:{port}/",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async def settle(self, n: int, timeout: float = 5.0) -> None:
        """Wait until `n` flow records were emitted."""
        async with asyncio.timeout(timeout):
            while len(self.sink.records) < n:
                await asyncio.sleep(0.01)


@pytest.fixture
def mesh_factory(spec: TestbedSpec, ca: CertificateAuthority) -> Iterator[Callable[..., Mesh]]:
    def make(**kw: Any) -> Mesh:
        return Mesh(spec, ca, **kw)

    yield make


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive HTTP request on an open connection; the response head and body."""
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    return head + await reader.readexactly(length)
