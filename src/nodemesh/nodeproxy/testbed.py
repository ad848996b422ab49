"""A two-pod HBONE testbed on loopback addresses, for tests and benchmarks that need the node
proxy in its own process (a crash must not take the test runner with it; CPU must be measured
per process).

Two pods in one ambient namespace, `client` and `server`, with addresses on 127.0.0.0/8. The
client's outbound listener plays the captured 15001 (every connection's original destination is
the server pod's app port, since nothing is REDIRECTed on loopback); the server's inbound
listener is the pod's 15008 and dials the app with the client's address as source.

    python -m nodemesh.nodeproxy.testbed certs DIR
    python -m nodemesh.nodeproxy.testbed serve DIR --role client|server|both [--loop asyncio]

`serve` prints `ready` once listening, runs until SIGTERM/SIGINT, drains, then prints one JSON
line of counters and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nodemesh.ca import CertificateAuthority, RootCA, SpiffeId, build_csr, generate_key, key_pem
from nodemesh.capture.sockets import HostSocketFactory
from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import Workload, World
from nodemesh.nodeproxy.flow import ListSink
from nodemesh.nodeproxy.inbound import InboundProxy
from nodemesh.nodeproxy.outbound import OutboundProxy
from nodemesh.nodeproxy.pool import HbonePool, PoolSettings
from nodemesh.nodeproxy.runtime import TaskSet, loop_name, new_event_loop, tune_allocator
from nodemesh.nodeproxy.socket_factory import LISTEN_BACKLOG
from nodemesh.nodeproxy.tls import CredentialStore, WorkloadCertificate
from nodemesh.policy.engine import PolicyEngine

__all__ = [
    "HttpApp",
    "TestbedSpec",
    "build_world",
    "issue_certificate",
    "load_credentials",
    "main",
    "write_certificates",
]


@dataclass(frozen=True, slots=True)
class TestbedSpec:
    """Addresses and names of the two pods."""

    client_ip: str = "127.0.0.5"
    server_ip: str = "127.0.0.10"
    app_port: int = 18080
    outbound_port: int = 15001
    hbone_port: int = 15008
    namespace: str = "bench"
    trust_domain: str = "cluster.local"

    def identity(self, service_account: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{service_account}"


def world_yaml(spec: TestbedSpec) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Namespace
        metadata: {{name: {spec.namespace}, labels: {{istio.io/dataplane-mode: ambient}}}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: client, namespace: {spec.namespace}, labels: {{app: client}}}}
        spec: {{serviceAccountName: client, containers: [{{name: c}}]}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: server, namespace: {spec.namespace}, labels: {{app: server}}}}
        spec:
          serviceAccountName: server
          containers: [{{name: c, ports: [{{containerPort: {spec.app_port}}}]}}]
        """
    )


def build_world(spec: TestbedSpec, extra_yaml: str = "") -> World:
    text = world_yaml(spec) + (f"---\n{extra_yaml}" if extra_yaml else "")
    ips = {f"{spec.namespace}/client": spec.client_ip, f"{spec.namespace}/server": spec.server_ip}
    return World.build(parse_documents(load_text(text, "testbed.yaml")), ips=ips)


def issue_certificate(ca: CertificateAuthority, identity: str, now: datetime.datetime) -> WorkloadCertificate:
    key = generate_key()
    sid = SpiffeId.parse(identity)
    issued = ca.sign_workload(build_csr(key, sid), sid, now)
    return WorkloadCertificate(identity, "".join(issued.chain_pem), key_pem(key))


def write_certificates(directory: Path, spec: TestbedSpec) -> None:
    """A fresh root and the two pods' SVIDs, as PEM files (keys readable by the owner only)."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca = CertificateAuthority.create(RootCA.generate(spec.trust_domain, now))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bundle.pem").write_text(ca.bundle.to_pem())
    for sa in ("client", "server"):
        cert = issue_certificate(ca, spec.identity(sa), now)
        (directory / f"{sa}.pem").write_text(cert.chain_pem)
        key_path = directory / f"{sa}.key"
        key_path.touch(mode=0o600)
        key_path.write_text(cert.key_pem)


def load_credentials(directory: Path, spec: TestbedSpec) -> CredentialStore:
    certs = [
        WorkloadCertificate(
            spec.identity(sa), (directory / f"{sa}.pem").read_text(), (directory / f"{sa}.key").read_text()
        )
        for sa in ("client", "server")
    ]
    return CredentialStore((directory / "bundle.pem").read_text(), certs)


class HttpApp(asyncio.Protocol):
    """A tiny keep-alive HTTP/1.1 server: every request gets `body`, plus the client's address in
    an `x-peer` header (to check the proxy connected with the original client address)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = str(transport.get_extra_info("peername")[0])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            out.append(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-peer: %s\r\n%s\r\n%s"
                % (len(self.body), self.peer.encode(), b"connection: close\r\n" if close else b"", self.body)
            )
            if close:
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if b"connection: close" in out[-1][:200]:
                self.transport.close()


async def serve_app(host: str, port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: HttpApp(body), host, port, reuse_address=True)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def _pod(world: World, spec: TestbedSpec, name: str) -> Workload:
    return world.find_workloads(spec.namespace, name)[0]


async def serve(spec: TestbedSpec, certs: Path, role: str, pool_idle: float) -> dict[str, object]:
    """Run the role's listeners until SIGTERM/SIGINT; return counters."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    world = build_world(spec)
    engine = PolicyEngine(world, "ambient")
    creds = load_credentials(certs, spec)
    sockets = HostSocketFactory(
        mark=None, backlog=LISTEN_BACKLOG, freebind=True, bind_no_port=True, dual_stack=False
    )
    tasks = TaskSet(f"testbed-{role}")
    sink = ListSink()
    counters: dict[str, object] = {"loop": loop_name(loop)}
    inbound: InboundProxy | None = None
    pool: HbonePool | None = None
    listener = None
    if role in ("server", "both"):
        inbound = InboundProxy(
            pod=_pod(world, spec, "server"),
            identity=spec.identity("server"),
            engine=engine,
            credentials=creds,
            sockets=sockets,
            sink=sink,
            tasks=tasks,
        )
        await inbound.start_hbone(sockets.tcp_bind(spec.hbone_port, spec.server_ip))
    if role in ("client", "both"):
        pool = HbonePool(creds, sockets, PoolSettings(idle_timeout=pool_idle), source_ip=spec.client_ip)
        outbound = OutboundProxy(
            source=_pod(world, spec, "client"),
            engine=engine,
            pool=pool,
            sockets=sockets,
            original_destination=lambda _sock: (spec.server_ip, spec.app_port),
            sink=sink,
            tasks=tasks,
        )
        listener = sockets.tcp_bind(spec.outbound_port, spec.client_ip)
        tasks.spawn(outbound.serve(listener), name="outbound-accept")
    print("ready", flush=True)
    await stop.wait()
    if pool is not None:
        counters["hbone_connections_opened"] = pool.connections_opened
        pool.close()
    if inbound is not None:
        await inbound.close()
    await tasks.close(grace=0.5)
    if listener is not None:
        listener.close()
    counters["flow_records"] = len(sink.records)
    errors = [f"{r.direction.value}: {r.error}" for r in sink.records if r.error]
    counters["errors"] = len(errors)
    counters["error_kinds"] = sorted(set(errors))[:10]
    return counters


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodemesh.nodeproxy.testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    p_certs = sub.add_parser("certs", help="write a CA bundle and the two pods' SVIDs")
    p_certs.add_argument("directory", type=Path)
    p_app = sub.add_parser("app", help="run the server pod's HTTP app (1 KiB responses)")
    p_app.add_argument("--size", type=int, default=1024)
    p_serve = sub.add_parser("serve", help="run the client and/or server node proxy")
    p_serve.add_argument("directory", type=Path)
    p_serve.add_argument("--role", choices=("client", "server", "both"), default="both")
    p_serve.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p_serve.add_argument("--pool-idle", type=float, default=300.0, help="0 disables pooling")
    default = TestbedSpec()
    for p in (p_certs, p_serve, p_app):
        p.add_argument("--client-ip", default=default.client_ip)
        p.add_argument("--server-ip", default=default.server_ip)
        p.add_argument("--app-port", type=int, default=default.app_port)
        p.add_argument("--outbound-port", type=int, default=default.outbound_port)
        p.add_argument("--hbone-port", type=int, default=default.hbone_port)
    args = parser.parse_args(argv)
    spec = TestbedSpec(args.client_ip, args.server_ip, args.app_port, args.outbound_port, args.hbone_port)
    if args.command == "certs":
        write_certificates(args.directory, spec)
        return 0
    if args.command == "app":
        app_loop = new_event_loop()
        try:
            app_loop.run_until_complete(serve_app(spec.server_ip, spec.app_port, b"x" * args.size))
        finally:
            app_loop.close()
        return 0
    if os.environ.get("NODEMESH_NO_MALLOPT") != "1":
        tune_allocator()
    loop = new_event_loop(use_uvloop=args.loop == "uvloop")
    try:
        counters = loop.run_until_complete(serve(spec, args.directory, args.role, args.pool_idle))
    finally:
        loop.close()
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
