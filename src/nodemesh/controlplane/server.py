"""The control plane process (the istiod role): store, CA, views and the gRPC services.

`ControlPlane.start(settings)` opens the store, loads or creates the CA, computes every node's
view and serves:
- on the admin socket (plaintext, file permissions guard it): `ResourceService` (Apply, Get,
  Delete, Status, RotateRoot);
- on the node endpoint (mutual TLS, node credentials): `ViewService/StreamView` (the push) and
  `istio.v1.auth.IstioCertificateService/CreateCertificate` (the CA).

A node is identified by its TLS client certificate (`system:node:<name>`), never by what it
says in a request: the view it receives and the certificates it may obtain follow from that.

Every successful write recomputes the views (pure, `views.compute_views`) and wakes each node's
stream, whose `NodePushState` decides what to send; only changed resources move. A CA rotation
first pushes a bundle with both roots and waits (bounded) for the connected nodes to ACK it, and
only then signs with the new root, so no node ever sees a certificate it cannot verify.

All state is owned by one asyncio event loop; the store is called from it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf import json_format

from nodemesh.ca import (
    CertificateAuthority,
    CertificateRequestError,
    NodeAuthorizer,
    RootCA,
    SpiffeId,
    TrustBundle,
    generate_key,
    key_pem,
)
from nodemesh.ca.spiffe import NODE_GROUP, NODE_USER_PREFIX
from nodemesh.controlplane.credentials import NodeCredential, write_private
from nodemesh.controlplane.kinds import resolve_kind
from nodemesh.controlplane.placement import Placement, SpreadScheduler
from nodemesh.controlplane.push import NodePushState, Push, Reply
from nodemesh.controlplane.references import DocKey
from nodemesh.controlplane.settings import ControlPlaneSettings
from nodemesh.controlplane.store import Action, Store, WriteOutcome
from nodemesh.controlplane.views import ViewInputs, ViewSet, compute_views
from nodemesh.errors import ManifestError, ManifestProblem, NodemeshError
from nodemesh.model.loader import RawDocument, SourceLocation, load_text
from nodemesh.model.schema import KINDS
from nodemesh.model.schema.base import Document
from nodemesh.model.world import World
from nodemesh.protos.gen import ca_pb2, ca_pb2_grpc
from nodemesh.protos.gen import controlplane_pb2 as pb
from nodemesh.protos.gen import controlplane_pb2_grpc as pbg

__all__ = ["ControlPlane", "NodeSyncStatus", "Refusal"]

log = logging.getLogger(__name__)

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
ACTIONS = {
    Action.CREATED: pb.CREATED,
    Action.CONFIGURED: pb.CONFIGURED,
    Action.UNCHANGED: pb.UNCHANGED,
    Action.DELETED: pb.DELETED,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class NodeSyncStatus:
    """Where one node's agent stands (like a row of `istioctl proxy-status`)."""

    node: str
    connected: bool
    acked_version: str
    synced: bool
    resources: int
    nack_version: str = ""
    nack_nonce: str = ""
    nack_reason: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A certificate request the CA refused (also logged at WARNING)."""

    node: str
    identity: str
    reason: str


class _Session:
    """One live StreamView: its push state and the queue its loop waits on."""

    WAKE = object()
    CLOSE = object()

    def __init__(self, node: str, state: NodePushState) -> None:
        self.node = node
        self.state = state
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def wake(self) -> None:
        self.queue.put_nowait(self.WAKE)


class ControlPlane:
    """The running control plane. Create with `await ControlPlane.start(settings)`."""

    def __init__(self, settings: ControlPlaneSettings, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.clock = clock
        self.store: Store | None = None
        self.ca: CertificateAuthority | None = None
        self.node_address = ""
        self.refusals: deque[Refusal] = deque(maxlen=1000)
        self.signed = 0
        self._scheduler = settings.scheduler or SpreadScheduler(settings.node_count)
        self._world: World | None = None
        self._placement = Placement()
        self._placement_bindings: dict[str, str] = {}
        self._views: ViewSet | None = None
        self._authorizer: NodeAuthorizer | None = None
        self._sessions: dict[str, _Session] = {}
        self._states: dict[str, NodePushState] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._admin: grpc.aio.Server | None = None
        self._nodes: grpc.aio.Server | None = None
        self._rotation_lock = asyncio.Lock()

    # ---- lifecycle ------------------------------------------------------------------------
    @classmethod
    async def start(
        cls, settings: ControlPlaneSettings, *, clock: Callable[[], datetime] = utc_now
    ) -> ControlPlane:
        """Open the store, load or create the CA, and serve both endpoints."""
        cp = cls(settings, clock=clock)
        await cp._start()
        return cp

    async def _start(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(s.store_path)
        self.ca = self._load_ca()
        self._refresh()
        for node in s.nodes if s.nodes is not None else tuple(n.name for n in self._placement.nodes):
            if not (s.node_dir(node) / "node.crt").exists():
                self.issue_node_credential(node)

        self._admin = grpc.aio.server()
        pbg.add_ResourceServiceServicer_to_server(_ResourceServicer(self), self._admin)
        with contextlib.suppress(FileNotFoundError):
            s.admin_socket.unlink()
        self._admin.add_insecure_port(s.admin_address)
        s.admin_socket.chmod(0o600)

        self._nodes = grpc.aio.server()
        pbg.add_ViewServiceServicer_to_server(_ViewServicer(self), self._nodes)
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(_CertificateServicer(self), self._nodes)
        if s.listen.startswith("unix:"):
            with contextlib.suppress(FileNotFoundError):
                Path(s.listen[5:]).unlink()
        port = self._nodes.add_secure_port(s.listen, self._server_credentials())
        self.node_address = (
            s.listen if s.listen.startswith("unix:") else f"{s.listen.rsplit(':', 1)[0]}:{port}"
        )
        await self._admin.start()
        await self._nodes.start()
        endpoints = {"nodes": self.node_address, "admin": s.admin_address}
        write_private(s.state_dir / "endpoints.json", json.dumps(endpoints) + "\n")
        log.info("control plane serving nodes on %s, admin on %s", self.node_address, s.admin_address)

    async def stop(self, grace: float = 1.0) -> None:
        for session in list(self._sessions.values()):
            session.queue.put_nowait(_Session.CLOSE)
        for server in (self._nodes, self._admin):
            if server is not None:
                await server.stop(grace)
        if self.store is not None:
            self.store.close()
            self.store = None

    async def wait_closed(self) -> None:
        if self._nodes is not None:
            await self._nodes.wait_for_termination()

    # ---- CA -------------------------------------------------------------------------------
    def _load_ca(self) -> CertificateAuthority:
        s, now = self.settings, self.clock()
        d = s.ca_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        trusted = (
            TrustBundle.from_pem((d / "roots.pem").read_bytes()).roots if (d / "roots.pem").exists() else ()
        )
        if s.ca_cert is not None and s.ca_key is not None:
            signer = RootCA.from_pem(s.ca_cert.read_bytes(), s.ca_key.read_bytes())
        elif (d / "signer.crt").exists():
            signer = RootCA.from_pem((d / "signer.crt").read_bytes(), (d / "signer.key").read_bytes())
        else:
            signer = RootCA.generate(self._trust_domain(), now)
        ca = CertificateAuthority.create(signer, [r for r in trusted if r != signer.cert])
        ca = replace(ca, default_lifetime=s.cert_lifetime)
        if (d / "next.crt").exists():  # a rotation was interrupted after phase 1: finish it
            ca = ca.rotate(RootCA.from_pem((d / "next.crt").read_bytes(), (d / "next.key").read_bytes()))
        self._save_ca(ca)
        return ca

    def _save_ca(self, ca: CertificateAuthority, pending: RootCA | None = None) -> None:
        d = self.settings.ca_dir
        write_private(d / "roots.pem", ca.bundle.to_pem())
        write_private(d / "signer.crt", ca.signer.cert_pem)
        write_private(d / "signer.key", ca.signer.key_pem)
        if pending is not None:
            write_private(d / "next.crt", pending.cert_pem)
            write_private(d / "next.key", pending.key_pem)
        else:
            for name in ("next.crt", "next.key"):
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()

    def _trust_domain(self) -> str:
        return self._world.trust_domain if self._world is not None else "cluster.local"

    def _server_credentials(self) -> grpc.ServerCredentials:
        assert self.ca is not None
        key = generate_key()
        host = self.settings.listen.rsplit(":", 1)[0] if not self.settings.listen.startswith("unix:") else ""
        addresses = ["127.0.0.1"] + ([host] if host and _is_ip(host) and host != "127.0.0.1" else [])
        issued = self.ca.sign_server(
            key.public_key(), self.clock(), trust_domain=self._trust_domain(), addresses=addresses
        )
        return grpc.ssl_server_credentials(
            [(key_pem(key).encode(), "".join(issued.chain_pem).encode())],
            root_certificates=self.ca.bundle.to_pem().encode(),
            require_client_auth=True,
        )

    def issue_node_credential(self, node: str) -> NodeCredential:
        """Sign a client certificate for `node` and write it to `<state>/nodes/<node>/`."""
        assert self.ca is not None
        key = generate_key()
        issued = self.ca.sign_node(node, key.public_key(), self.clock())
        cred = NodeCredential(node, issued.cert_pem, key_pem(key), self.ca.bundle.to_pem())
        cred.write(self.settings.node_dir(node))
        log.info("issued the node credential of %s", node)
        return cred

    async def rotate_root(self) -> TrustBundle:
        """Two-phase root rotation: trust the new root everywhere, then sign with it."""
        async with self._rotation_lock:
            assert self.ca is not None
            new = RootCA.generate(
                self._trust_domain(), self.clock(), generation=len(self.ca.bundle.roots) + 1
            )
            self.ca = self.ca.trust(new)
            self._save_ca(self.ca, pending=new)
            self._refresh_views(reuse=True)
            connected = list(self._sessions)
            try:
                await asyncio.wait_for(
                    self._wait(lambda: all(self._node_synced(n) for n in connected if n in self._sessions)),
                    self.settings.rotation_ack_timeout,
                )
            except TimeoutError:
                log.warning("CA rotation: not every node ACKed the new bundle in time; switching anyway")
            self.ca = self.ca.rotate(new)
            self._save_ca(self.ca)
            self._refresh_views(reuse=True)
            log.info("CA rotated: signing with root %s", new.fingerprint[:16])
            return self.ca.bundle

    def sign(self, node: str, csr_pem: str, identity_text: str, validity_seconds: int) -> tuple[str, ...]:
        """CreateCertificate's decision and signing (raises CaError subclasses)."""
        from nodemesh.ca.errors import NodeAuthorizationError

        assert self.ca is not None and self._authorizer is not None
        try:
            identity = SpiffeId.parse(identity_text)
        except ValueError as exc:
            raise CertificateRequestError(str(exc)) from exc
        decision = self._authorizer.authorize(node, identity)
        if not decision.allowed:
            self.refusals.append(Refusal(node, identity.uri, decision.reason))
            log.warning("refused a certificate for %s to node %s: %s", identity, node, decision.reason)
            raise NodeAuthorizationError(decision.reason)
        lifetime = timedelta(seconds=validity_seconds) if validity_seconds > 0 else None
        issued = self.ca.sign_workload(csr_pem, identity, self.clock(), lifetime)
        self.signed += 1
        log.info("signed %s for node %s (serial %x)", identity, node, issued.serial)
        return issued.chain_pem

    # ---- desired state --------------------------------------------------------------------
    def _binder(self, state: Sequence[Document], bindings: Mapping[str, str]) -> dict[str, str]:
        previous = (
            self._placement if bindings == self._placement_bindings else Placement.from_bindings(bindings)
        )
        world = World.build(state)
        return self._scheduler.place(world, previous).to_bindings()

    def apply_manifests(self, manifests: Sequence[tuple[str, str]]) -> WriteOutcome:
        """Parse, validate and apply a batch of (file name, YAML text); raises ManifestError."""
        assert self.store is not None
        raws: list[RawDocument] = []
        problems: list[ManifestProblem] = []
        for file, text in manifests:
            try:
                raws.extend(load_text(text, file))
            except ManifestError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ManifestError(problems)
        # Placement depends on pods and nodes only: a batch of policies needs no new binding.
        kinds = {raw.body.get("kind") for raw in raws}
        binder = self._binder if kinds & TOPOLOGY_KINDS else None
        outcome = self.store.apply(raws, binder=binder)
        if outcome.changed:
            self._refresh(topology=_touches_topology(outcome))
        return outcome

    def delete_resources(self, targets: Sequence[tuple[DocKey, SourceLocation]]) -> WriteOutcome:
        assert self.store is not None
        outcome = self.store.delete(targets, binder=self._binder)
        self._refresh(topology=_touches_topology(outcome))
        return outcome

    def _refresh(self, *, topology: bool = True) -> None:
        """Recompute the world, the placement, the authorizer and every view. Without
        `topology` (only policies changed), pods, services and placement are reused."""
        assert self.store is not None
        docs = self.store.documents()
        if not topology and self._world is not None and self._views is not None:
            policies = [d for d in docs if d.kind not in TOPOLOGY_KINDS]
            self._world = replace(self._world, policies=policies, documents=docs)
            self._refresh_views(reuse=True)
            return
        bindings = self.store.bindings()
        placement = (
            self._placement if bindings == self._placement_bindings else Placement.from_bindings(bindings)
        )
        world = World.build(docs, ips={k: p.ip for k, p in placement.pods.items()})
        fresh = self._scheduler.place(world, placement)
        if fresh != placement:  # first start, or the node list changed
            self.store.save_bindings(fresh.to_bindings())
            placement = fresh
            world = World.build(docs, ips={k: p.ip for k, p in placement.pods.items()})
        self._world = world
        self._placement = placement
        self._placement_bindings = dict(self.store.bindings())
        td = world.trust_domain
        self._authorizer = NodeAuthorizer.from_pods(
            td,
            (
                (placement.pods[w.key].node, SpiffeId(td, w.namespace, w.service_account))
                for w in world.workloads
                if w.key in placement.pods
            ),
        )
        self._refresh_views()

    def _refresh_views(self, *, reuse: bool = False) -> None:
        assert self.store is not None and self._world is not None and self.ca is not None
        bodies = {s.key: s.body for s in self.store.resources() if s.kind not in TOPOLOGY_KINDS}
        self._views = compute_views(
            ViewInputs(self.store.revision, self._world, self._placement, self.ca.bundle.pems, bodies),
            self._views if reuse else None,
        )
        for session in self._sessions.values():
            session.state.set_view(self._views.for_node(session.node))
            session.wake()
        self._notify()

    # ---- status and waiting ---------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.store.revision if self.store is not None else 0

    @property
    def views(self) -> ViewSet:
        assert self._views is not None
        return self._views

    @property
    def placement(self) -> Placement:
        return self._placement

    def status(self) -> list[NodeSyncStatus]:
        names = sorted({n.name for n in self._placement.nodes} | set(self._states))
        out = []
        for name in names:
            state = self._states.get(name)
            nack = state.last_nack if state else None
            out.append(
                NodeSyncStatus(
                    node=name,
                    connected=name in self._sessions,
                    acked_version=state.acked_version if state else "",
                    synced=self._node_synced(name),
                    resources=len(state.held) if state else 0,
                    nack_version=nack.version_info if nack else "",
                    nack_nonce=nack.nonce if nack else "",
                    nack_reason=nack.reason if nack else "",
                )
            )
        return out

    def _node_synced(self, node: str) -> bool:
        state = self._states.get(node)
        return (
            state is not None
            and state.synced
            and state.desired is not None
            and (state.desired.revision == self.revision)
        )

    async def wait_for_sync(self, node: str, timeout: float = 10.0) -> NodeSyncStatus:
        """Wait until `node`'s agent has ACKed the view of the current revision (tests' helper:
        wait for the ACK instead of sleeping). TimeoutError otherwise."""
        await asyncio.wait_for(self._wait(lambda: self._node_synced(node)), timeout)
        return next(s for s in self.status() if s.node == node)

    async def wait_for_nack(self, node: str, timeout: float = 10.0) -> NodeSyncStatus:
        """Wait until `node`'s latest push is NACKed."""

        def nacked() -> bool:
            state = self._states.get(node)
            return state is not None and state.last_nack is not None

        await asyncio.wait_for(self._wait(nacked), timeout)
        return next(s for s in self.status() if s.node == node)

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(fut)
            try:
                await fut
            finally:
                self._waiters.discard(fut)

    def _notify(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)

    # ---- node streams ---------------------------------------------------------------------
    async def serve_stream(
        self,
        node: str,
        first: pb.ViewRequest,
        requests: AsyncIterator[pb.ViewRequest],
        context: grpc.aio.ServicerContext[pb.ViewRequest, pb.ViewResponse],
    ) -> None:
        state = NodePushState(node, dict(first.initial_resource_versions), first.version_info)
        session = _Session(node, state)
        old = self._sessions.get(node)
        if old is not None:
            old.queue.put_nowait(_Session.CLOSE)
        self._sessions[node] = session
        self._states[node] = state
        assert self._views is not None
        state.set_view(self._views.for_node(node))
        # Only now does the agent's wait_for_connection return: once it believes it is
        # connected, the status shows it connected (and synced, if it holds the desired view).
        try:
            await context.send_initial_metadata(())
        except BaseException:
            if self._sessions.get(node) is session:
                del self._sessions[node]
            raise
        self._notify()
        log.info("node %s connected (holds %d resources)", node, len(state.held))

        async def read() -> None:
            try:
                async for request in requests:
                    session.queue.put_nowait(request)
            finally:
                session.queue.put_nowait(_Session.CLOSE)

        reader = asyncio.create_task(read(), name=f"view-reader-{node}")
        try:
            while True:
                push = state.next_push()
                if push is not None:
                    await context.write(_push_to_proto(push))
                    self._notify()
                item = await session.queue.get()
                if item is _Session.CLOSE:
                    break
                if isinstance(item, pb.ViewRequest):
                    reply = state.on_reply(item.response_nonce, item.error_detail)
                    if reply is Reply.NACKED:
                        log.warning(
                            "node %s NACKed version %s: %s", node, item.version_info, item.error_detail
                        )
                    self._notify()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self._sessions.get(node) is session:
                del self._sessions[node]
            log.info("node %s disconnected", node)
            self._notify()


# Kinds that shape pods, services, waypoints and nodes; every other kind is a policy
# (World.build's split). A write that touches none of them only recomputes policies.
TOPOLOGY_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "Pod", "Deployment", "Service", "Cluster", "Gateway"}
)


def _touches_topology(outcome: WriteOutcome) -> bool:
    return any(r.key[0] in TOPOLOGY_KINDS for r in outcome.results if r.action is not Action.UNCHANGED)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _push_to_proto(push: Push) -> pb.ViewResponse:
    return pb.ViewResponse(
        version_info=push.version_info,
        nonce=push.nonce,
        resources=[
            pb.ViewResource(type=r.type, name=r.name, version=r.version, body=r.body) for r in push.resources
        ],
        removed=list(push.removed),
    )


class _Authenticated(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def node_of(context: _Authenticated) -> str | None:
    """The node name in the peer's verified client certificate (`system:node:<name>`)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    for pem in pems:
        cert = x509.load_pem_x509_certificate(pem)
        orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if (
            NODE_GROUP in orgs
            and names
            and isinstance(names[0], str)
            and names[0].startswith(NODE_USER_PREFIX)
        ):
            return names[0][len(NODE_USER_PREFIX) :]
    return None


# ---- gRPC servicers (thin: convert, call the ControlPlane, convert back) --------------------
class _ViewServicer(pbg.ViewServiceServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def StreamView(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.ViewRequest],
        context: grpc.aio.ServicerContext[pb.ViewRequest, pb.ViewResponse],
    ) -> None:
        node = node_of(context)
        if node is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node credential is required")
            return
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        await self.cp.serve_stream(node, first, request_iterator, context)


class _CertificateServicer(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def CreateCertificate(  # noqa: N802
        self,
        request: ca_pb2.IstioCertificateRequest,
        context: grpc.aio.ServicerContext[ca_pb2.IstioCertificateRequest, ca_pb2.IstioCertificateResponse],
    ) -> ca_pb2.IstioCertificateResponse:
        node = node_of(context)
        if node is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node credential is required")
        meta = json_format.MessageToDict(request.metadata) if request.HasField("metadata") else {}
        identity = str(meta.get(IMPERSONATED_IDENTITY) or request.subject_id or "")
        from nodemesh.ca.errors import CaError

        try:
            chain = self.cp.sign(str(node), request.csr, identity, int(request.validity_duration))
        except CaError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return ca_pb2.IstioCertificateResponse(cert_chain=list(chain))


class _ResourceServicer(pbg.ResourceServiceServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def Apply(  # noqa: N802
        self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext[pb.ApplyRequest, pb.WriteResponse]
    ) -> pb.WriteResponse:
        try:
            outcome = self.cp.apply_manifests([(m.file, m.text) for m in request.manifests])
        except ManifestError as exc:
            return pb.WriteResponse(problems=[_problem(p) for p in exc.problems], revision=self.cp.revision)
        return _write_response(outcome)

    async def Delete(  # noqa: N802
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext[pb.DeleteRequest, pb.WriteResponse]
    ) -> pb.WriteResponse:
        targets: list[tuple[DocKey, SourceLocation]] = []
        problems: list[ManifestProblem] = []
        for m in request.manifests:
            try:
                raws = load_text(m.text, m.file)
            except ManifestError as exc:
                problems.extend(exc.problems)
                continue
            for raw in raws:
                key = _key_of_raw(raw, problems)
                if key is not None:
                    targets.append((key, raw.location))
        for ref in request.refs:
            try:
                info = resolve_kind(ref.kind)
            except NodemeshError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise
            ns = (ref.namespace or "default") if info.namespaced else ""
            targets.append(((info.kind, ns, ref.name), SourceLocation("<command line>", 0, {})))
        try:
            if problems:
                raise ManifestError(problems)
            outcome = self.cp.delete_resources(targets)
        except ManifestError as exc:
            return pb.WriteResponse(problems=[_problem(p) for p in exc.problems], revision=self.cp.revision)
        return _write_response(outcome)

    async def Get(  # noqa: N802
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext[pb.GetRequest, pb.GetResponse]
    ) -> pb.GetResponse:
        assert self.cp.store is not None
        try:
            info = resolve_kind(request.kind)
        except NodemeshError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if not info.namespaced:
            ns: str | None = ""
        elif request.all_namespaces:
            ns = None
        else:
            ns = request.namespace or "default"
        found = self.cp.store.resources(info.kind, ns, request.name or None)
        if request.name and not found:
            where = f' in namespace "{ns}"' if ns else ""
            await context.abort(grpc.StatusCode.NOT_FOUND, f'{info.plural} "{request.name}" not found{where}')
        found.sort(key=lambda s: (s.namespace, s.name))
        return pb.GetResponse(
            resources=[
                pb.Resource(
                    api_version=s.api_version,
                    kind=s.kind,
                    namespace=s.namespace,
                    name=s.name,
                    resource_version=s.resource_version,
                    body_json=json.dumps(s.manifest()),
                )
                for s in found
            ],
            revision=self.cp.revision,
        )

    async def Status(  # noqa: N802
        self,
        request: pb.StatusRequest,
        context: grpc.aio.ServicerContext[pb.StatusRequest, pb.StatusResponse],
    ) -> pb.StatusResponse:
        assert self.cp.ca is not None
        return pb.StatusResponse(
            revision=self.cp.revision,
            nodes=[
                pb.NodeStatus(
                    node=s.node,
                    connected=s.connected,
                    acked_version=s.acked_version,
                    synced=s.synced,
                    nack_version=s.nack_version,
                    nack_nonce=s.nack_nonce,
                    nack_reason=s.nack_reason,
                    resources=s.resources,
                )
                for s in self.cp.status()
            ],
            bundle_fingerprints=list(self.cp.ca.bundle.fingerprints),
        )

    async def RotateRoot(  # noqa: N802
        self,
        request: pb.RotateRootRequest,
        context: grpc.aio.ServicerContext[pb.RotateRootRequest, pb.RotateRootResponse],
    ) -> pb.RotateRootResponse:
        bundle = await self.cp.rotate_root()
        return pb.RotateRootResponse(bundle_fingerprints=list(bundle.fingerprints))


def _problem(p: ManifestProblem) -> pb.Problem:
    return pb.Problem(file=p.file, line=p.line, path=p.path, message=p.message, hint=p.hint)


def _write_response(outcome: WriteOutcome) -> pb.WriteResponse:
    return pb.WriteResponse(
        results=[
            pb.ResourceResult(
                ref=pb.ResourceRef(kind=r.key[0], namespace=r.key[1], name=r.key[2]),
                action=ACTIONS[r.action],
                resource_version=r.resource_version,
            )
            for r in outcome.results
        ],
        revision=outcome.revision,
    )


def _key_of_raw(raw: RawDocument, problems: list[ManifestProblem]) -> DocKey | None:
    """(kind, namespace, name) of a document named in `delete -f` (no full validation: like
    kubectl, deleting only needs the kind and the name)."""
    api_version, kind = raw.body.get("apiVersion"), raw.body.get("kind")
    meta = raw.body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(api_version, str) or not isinstance(kind, str) or not isinstance(name, str):
        problems.append(
            raw.location.problem(("metadata", "name"), "a document needs apiVersion, kind and metadata.name")
        )
        return None
    group = api_version.rpartition("/")[0]
    entry = KINDS.get((group, kind))
    if entry is None:
        problems.append(raw.location.problem(("kind",), f"unknown kind {kind!r} in {api_version!r}"))
        return None
    namespaced = entry[1].namespaced
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    return (kind, (ns if isinstance(ns, str) and ns else "default") if namespaced else "", name)
