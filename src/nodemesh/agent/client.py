"""The node agent's control-plane client: the view stream, ACK/NACK, certificates, reconnects.

What it guarantees (the data plane's static stability):
- It starts from disk: the last view it ACKed and the certificates it holds are loaded before
  any connection is attempted, and served whatever the control plane's state.
- A push is applied whole or NACKed with the reason (`LocalView.apply` plus the data path's
  `ViewCheck`s); an applied view is written to disk before the ACK is sent, so an ACK means
  "durable here".
- When the stream breaks it reconnects with exponential backoff and jitter (`Backoff`, gRPC's
  connection-backoff parameters) and resyncs: its first request carries the versions it holds
  (`initial_resource_versions`, delta xDS), so the control plane sends only differences. The
  current view is never cleared, so nothing built on it (live connections) is torn down; the
  data path sees only the deltas (`subscribe`).
- Certificates: for every in-mesh identity of its pods it holds an SVID obtained with
  `CreateCertificate` (a fresh P-256 key and CSR per request, `ImpersonatedIdentity` metadata
  as ztunnel sends in shared mode, ZT:src/identity/caclient.rs), verifies it against the pushed
  trust bundle, and renews it at its jittered refresh time (`RotationPolicy`), always before
  expiry. While the control plane is unreachable it keeps its certificates and retries.

Tests wait for events instead of sleeping: `wait_for_ack`, `wait_for_nack`, `wait_connected`,
`wait_for_certificates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from google.protobuf import struct_pb2

from nodemesh.agent.backoff import Backoff
from nodemesh.agent.disk import AgentDisk, WorkloadCertificate
from nodemesh.agent.view import LocalView, ViewCheck, ViewRejectedError
from nodemesh.ca import DEFAULT_ROTATION, RotationPolicy, SpiffeId, build_csr, generate_key, key_pem
from nodemesh.ca.bundle import load_pem_chain
from nodemesh.ca.errors import CertificateRequestError
from nodemesh.controlplane.credentials import NodeCredential
from nodemesh.controlplane.settings import SERVER_NAME
from nodemesh.controlplane.views import ViewResource
from nodemesh.protos.gen import ca_pb2, ca_pb2_grpc
from nodemesh.protos.gen import controlplane_pb2 as pb
from nodemesh.protos.gen import controlplane_pb2_grpc as pbg

__all__ = ["NodeAgent", "ViewListener"]

log = logging.getLogger(__name__)

ViewListener = Callable[[LocalView, LocalView], None]
"""Called with (previous, new) after every applied push."""

MAX_CERT_WAIT = 300.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class NodeAgent:
    """One node's control-plane client. `start()` runs it as a task of the current loop."""

    def __init__(
        self,
        node: str,
        address: str,
        credential: NodeCredential,
        state_dir: Path,
        *,
        checks: Sequence[ViewCheck] = (),
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        rotation: RotationPolicy = DEFAULT_ROTATION,
        clock: Callable[[], datetime] = utc_now,
        cert_lifetime: timedelta | None = None,
        server_name: str = SERVER_NAME,
        manage_certificates: bool = True,
    ) -> None:
        self.node = node
        self.address = address
        self.credential = credential
        self.checks = tuple(checks)
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.rotation = rotation
        self.clock = clock
        self.cert_lifetime = cert_lifetime
        self.server_name = server_name
        self.manage_certificates = manage_certificates
        self.disk = AgentDisk(state_dir)
        self.view: LocalView = self.disk.load_view()
        self.certificates: dict[SpiffeId, WorkloadCertificate] = self.disk.load_certificates()
        self.connected = False
        self.connects = 0
        self.ack_count = 0
        self.nack_count = 0
        self.pushes_received = 0
        self.last_acked_version = ""
        self.last_nack: tuple[str, str] | None = None
        self.renewals = 0
        self.certificate_errors: list[tuple[SpiffeId, str]] = []
        self.reconnect_delays: list[float] = []
        self._listeners: list[ViewListener] = []
        self._task: asyncio.Task[None] | None = None
        self._ca_stub: ca_pb2_grpc.IstioCertificateServiceAsyncStub | None = None
        self._view_changed = asyncio.Event()
        self._waiters: set[asyncio.Future[None]] = set()

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"node-agent-{self.node}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.disk.close()

    def subscribe(self, listener: ViewListener) -> None:
        self._listeners.append(listener)

    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff, until cancelled."""
        attempt = 0
        while True:
            established = False
            try:
                established = await self._session()
            except grpc.aio.AioRpcError as exc:
                log.info("node %s: control plane stream ended: %s %s", self.node, exc.code(), exc.details())
            except Exception:  # never let one bad session stop the agent: log, back off, retry
                log.exception("node %s: control plane session failed", self.node)
            finally:
                established = established or self.connected
                self.connected = False
                self._ca_stub = None
                self._notify()
            if established:
                attempt = 0
            delay = self.backoff.delay(attempt, self.rng)
            attempt += 1
            self.reconnect_delays.append(delay)
            await asyncio.sleep(delay)

    def _channel_credentials(self) -> grpc.ChannelCredentials:
        roots = [self.credential.ca_pem]
        bundle = self.view.bundle()
        if bundle is not None:
            roots += [p for p in bundle.pems if p not in self.credential.ca_pem]
        return grpc.ssl_channel_credentials(
            root_certificates="".join(roots).encode(),
            private_key=self.credential.key_pem.encode(),
            certificate_chain=self.credential.cert_pem.encode(),
        )

    async def _session(self) -> bool:
        options = [("grpc.ssl_target_name_override", self.server_name)]
        async with grpc.aio.secure_channel(
            self.address, self._channel_credentials(), options=options
        ) as channel:
            call = pbg.ViewServiceStub(channel).StreamView(None)
            await call.write(
                pb.ViewRequest(
                    node=self.node,
                    version_info=self.view.version_info,
                    initial_resource_versions=self.view.versions(),
                )
            )
            await call.wait_for_connection()
            self.connected = True
            self.connects += 1
            self._ca_stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            log.info("node %s: connected to the control plane at %s", self.node, self.address)
            self._notify()
            certs = asyncio.create_task(
                self._certificate_loop() if self.manage_certificates else asyncio.sleep(0),
                name=f"certificates-{self.node}",
            )
            try:
                while True:
                    response = await call.read()
                    if not isinstance(response, pb.ViewResponse):  # grpc.aio.EOF: the server closed
                        return True
                    await self._on_push(call, response)
            finally:
                certs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await certs

    async def _on_push(
        self, call: grpc.aio.StreamStreamCall[pb.ViewRequest, pb.ViewResponse], response: pb.ViewResponse
    ) -> None:
        self.pushes_received += 1
        resources = [ViewResource(r.type, r.name, r.version, r.body) for r in response.resources]
        try:
            candidate = self.view.apply(response.version_info, resources, response.removed, self.checks)
        except ViewRejectedError as exc:
            reason = str(exc)
            log.warning("node %s: NACK version %s: %s", self.node, response.version_info, reason)
            await call.write(
                pb.ViewRequest(
                    node=self.node,
                    response_nonce=response.nonce,
                    version_info=self.view.version_info,
                    error_detail=reason,
                )
            )
            self.nack_count += 1
            self.last_nack = (response.version_info, reason)
            self._notify()
            return
        previous = self.view
        self.disk.save_push(response.version_info, resources, response.removed)
        self.view = candidate
        await call.write(
            pb.ViewRequest(node=self.node, response_nonce=response.nonce, version_info=response.version_info)
        )
        self.ack_count += 1
        self.last_acked_version = response.version_info
        for listener in self._listeners:
            listener(previous, candidate)
        self._view_changed.set()
        self._notify()

    # ---- certificates ---------------------------------------------------------------------
    async def _certificate_loop(self) -> None:
        failures = 0
        while True:
            self._view_changed.clear()
            ok = await self.reconcile_certificates()
            failures = 0 if ok else failures + 1
            due = min((c.refresh_at for c in self.certificates.values()), default=None)
            wait = MAX_CERT_WAIT if due is None else (due - self.clock()).total_seconds()
            if failures:
                wait = max(wait, self.backoff.delay(failures - 1, self.rng))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._view_changed.wait(), min(max(wait, 0.0), MAX_CERT_WAIT))

    def needs_certificate(self, identity: SpiffeId, now: datetime) -> bool:
        held = self.certificates.get(identity)
        if held is None or now >= held.refresh_at:
            return True
        bundle = self.view.bundle()
        return bundle is not None and held.chain_pem[-1] not in bundle.pems

    async def reconcile_certificates(self) -> bool:
        """Obtain or renew the certificates the view's identities need; drop the others.
        Returns False if a request failed (it is retried later)."""
        wanted = self.view.identities()
        ok = True
        for identity in sorted(wanted):
            if not self.needs_certificate(identity, self.clock()) or self._ca_stub is None:
                continue
            renewing = identity in self.certificates
            try:
                cert = await self.request_certificate(identity)
            except (grpc.aio.AioRpcError, CertificateRequestError) as exc:
                detail = (
                    f"{exc.code().name}: {exc.details()}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                log.warning("node %s: no certificate for %s: %s", self.node, identity, detail)
                self.certificate_errors.append((identity, detail))
                ok = False
                continue
            self.certificates[identity] = cert
            self.disk.save_certificate(cert)
            self.renewals += int(renewing)
            self._notify()
        for identity in set(self.certificates) - wanted:
            del self.certificates[identity]
            self.disk.remove_certificate(identity)
        return ok

    async def request_certificate(self, identity: SpiffeId) -> WorkloadCertificate:
        """One CreateCertificate call for `identity`; the result is verified against the bundle."""
        stub = self._ca_stub
        if stub is None:
            raise CertificateRequestError("not connected to the control plane")
        key = generate_key()
        metadata = struct_pb2.Struct()
        metadata.update({"ImpersonatedIdentity": identity.uri})
        lifetime = int(self.cert_lifetime.total_seconds()) if self.cert_lifetime else 0
        request = ca_pb2.IstioCertificateRequest(
            csr=build_csr(key, identity), validity_duration=lifetime, metadata=metadata
        )
        response = await stub.CreateCertificate(request, timeout=10.0)
        chain = tuple(response.cert_chain)
        certs = load_pem_chain("".join(chain))
        now = self.clock()
        bundle = self.view.bundle()
        if bundle is not None and bundle.verify(certs, now) != identity:
            raise CertificateRequestError(
                f"the CA returned a certificate for another identity than {identity}"
            )
        leaf: x509.Certificate = certs[0]
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        return WorkloadCertificate(
            identity,
            chain,
            key_pem(key),
            not_before,
            not_after,
            self.rotation.refresh_at(not_before, not_after, self.rng),
        )

    # ---- waiting (tests wait for events, never sleep) ---------------------------------------
    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = 10.0) -> None:
        """Until `predicate()` holds, re-checked at every event (None: no time limit)."""

        async def loop() -> None:
            while not predicate():
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.add(fut)
                try:
                    await fut
                finally:
                    self._waiters.discard(fut)

        await asyncio.wait_for(loop(), timeout)

    async def wait_for_ack(
        self, version: int | None = None, *, since: int | None = None, timeout: float = 10.0
    ) -> str:
        """Until a push of at least `version` is ACKed (or, without a version, until one more push
        than `since` ACKs, default: than now). Returns the ACKed version."""
        if version is not None:
            await self.wait_for(
                lambda: bool(self.last_acked_version) and int(self.last_acked_version) >= version, timeout
            )
        else:
            base = self.ack_count if since is None else since
            await self.wait_for(lambda: self.ack_count > base, timeout)
        return self.last_acked_version

    async def wait_for_nack(self, *, since: int = 0, timeout: float = 10.0) -> str:
        """Until more than `since` pushes have been NACKed; returns the last NACK's reason."""
        await self.wait_for(lambda: self.nack_count > since, timeout)
        assert self.last_nack is not None
        return self.last_nack[1]

    async def wait_connected(self, *, since: int = 0, timeout: float = 10.0) -> None:
        """Until connected, after more than `since` connections in total."""
        await self.wait_for(lambda: self.connected and self.connects > since, timeout)

    async def wait_for_certificates(
        self, identities: Iterable[SpiffeId] | None = None, timeout: float = 10.0
    ) -> None:
        """Until a valid certificate is held for each identity (default: every identity the view needs)."""

        def done() -> bool:
            wanted = set(identities) if identities is not None else self.view.identities()
            now = self.clock()
            return all(i in self.certificates and not self.needs_certificate(i, now) for i in wanted)

        await self.wait_for(done, timeout)

    def _notify(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)
