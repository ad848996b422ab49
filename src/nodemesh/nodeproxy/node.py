"""One node's ambient node proxy: the in-pod listeners of every ambient pod of the node, served
from the node proxy's own event loop (Istio Ambient's ztunnel in shared, in-pod mode).

What it does, step by step as ztunnel and istio-cni do it (reference §3.1):
1. A pod is handed over with its network namespace (istio-cni's `AddWorkload` with the netns fd).
   `plan_pod` decides, with no I/O, whether the node proxy serves it: a pod of the world, with
   an address, in the ambient mesh (`World.in_mesh`: not `istio.io/dataplane-mode: none`, not
   host-network). Otherwise the pod is skipped and left alone, as istio-cni leaves it.
2. Its SVID must be available (`CredentialSource`: the node agent's certificates); a pod whose
   certificate is not there yet is not served (its traffic would be captured into listeners
   that cannot do mTLS) and `AmbientNode.add_pod` says why.
3. The in-pod capture is installed inside the pod's namespace (`nodemesh.capture`, idempotent).
4. Listeners 15001 (outbound), 15006 (plaintext inbound) and 15008 (HBONE, on the pod's IP) are
   opened INSIDE the pod's namespace (`PodSocketFactory`: setns for the `socket()` call only,
   mark 0x539, SO_REUSEPORT) and served from this loop; the inbound proxy connects to the app
   with the original client address (IP_TRANSPARENT, `ZT:src/proxy.rs` `freebind_connect`).
   Each pod has its own HBONE pool, whose sockets are also made in the pod (in-pod mode: "every
   workload has its own pool", §1.5).

Removing a pod (`remove_pod`, istio-cni's `DelWorkload`) closes its listeners, its pool and its
connections, and removes its capture. Closing the node proxy (`close`) closes listeners and
connections but LEAVES the capture in place: as with ztunnel restarts, a pod's traffic is then
refused (captured, nothing listening) rather than sent in the clear around the mesh, and a new
node proxy takes over with new listeners (SO_REUSEPORT).

`update_policy(engine)` adopts a new world and policies: outbound decisions use it at once, and
live inbound connections are re-evaluated and closed when no longer allowed (ztunnel's
PolicyWatcher, §1.7). Waypoints: `waypoint_address` says where each waypoint runs (the process
passes its config's `waypoint_ips`); a waypoint it has no address for is refused with that reason
in the flow record (never sent around the waypoint).

Decide, then do: `plan_pod` and `plan_pods` are pure; `AmbientNode` executes their plans.
Every task is named and owned (per pod, a `TaskSet` of accept loops and one of connection
tasks); removing a pod stops accepting at once, drains connection tasks for `drain_grace`
seconds, then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from nodemesh.capture import CaptureConfig, PodSocketFactory, install_capture, original_dst, remove_capture
from nodemesh.errors import NodemeshError
from nodemesh.model.world import Waypoint, Workload, World
from nodemesh.nodeproxy.credentials import CredentialSource, CredentialSync, NodeCredentials
from nodemesh.nodeproxy.flow import FlowSink
from nodemesh.nodeproxy.inbound import InboundProxy
from nodemesh.nodeproxy.outbound import HBONE_PORT, OutboundProxy
from nodemesh.nodeproxy.pool import HbonePool, PoolSettings
from nodemesh.nodeproxy.runtime import TaskSet
from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.policy.engine import PolicyEngine
from nodemesh.policy.flow import IPAddress

__all__ = [
    "INBOUND_PLAINTEXT_PORT",
    "OUTBOUND_PORT",
    "AmbientNode",
    "CaptureSeam",
    "CredentialUnavailableError",
    "NodeProxyError",
    "NodeProxySettings",
    "PodAction",
    "PodAttachment",
    "PodChanges",
    "PodPlan",
    "plan_pod",
    "plan_pods",
]

log = logging.getLogger(__name__)

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006


class NodeProxyError(NodemeshError):
    """A pod the node proxy cannot serve (the reason is in the message)."""


class CredentialUnavailableError(NodeProxyError):
    """No usable SVID for a pod's identity yet (the node agent has not obtained it)."""


@dataclass(frozen=True, slots=True)
class PodAttachment:
    """A pod handed to the node proxy: which pod, and the path of its network namespace."""

    namespace: str
    name: str
    netns: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodAction(Enum):
    SERVE = "serve"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class PodPlan:
    """Whether and how the node proxy serves one pod."""

    pod: PodAttachment
    action: PodAction
    reason: str
    workload: Workload | None = None
    identity: str | None = None
    """The pod's SPIFFE id (`spiffe://td/ns/x/sa/y`), when served."""

    @property
    def ip(self) -> IPAddress | None:
        return self.workload.ip if self.workload is not None else None

    def same_serving(self, other: PodPlan) -> bool:
        """Would serving `other` need new listeners or certificates? (netns, address, identity)"""
        return (self.pod.netns, self.ip, self.identity) == (other.pod.netns, other.ip, other.identity)


def _find_pod(world: World, namespace: str, name: str) -> Workload | None:
    return next((w for w in world.workloads if w.namespace == namespace and w.pod == name), None)


def plan_pod(world: World, pod: PodAttachment) -> PodPlan:
    """Serve the pod, or skip it and say why (istio-cni captures ambient pods only)."""
    workload = _find_pod(world, pod.namespace, pod.name)
    if workload is None:
        return PodPlan(pod, PodAction.SKIP, f"pod {pod.key} is not in the world")
    if workload.host_network:
        return PodPlan(pod, PodAction.SKIP, "host-network pods are never captured", workload)
    if not world.in_mesh(workload):
        return PodPlan(
            pod,
            PodAction.SKIP,
            "not in the ambient mesh (istio.io/dataplane-mode: none, or the cluster's mode is none)",
            workload,
        )
    if workload.ip is None:
        return PodPlan(pod, PodAction.SKIP, f"pod {pod.key} has no IP address", workload)
    identity = identity_uri(world.principal(workload))
    return PodPlan(pod, PodAction.SERVE, "in the ambient mesh", workload, identity)


@dataclass(frozen=True, slots=True)
class PodChanges:
    """What `plan_pods` says to do to go from the served pods to the desired ones."""

    add: tuple[PodPlan, ...] = ()
    remove: tuple[str, ...] = ()
    keep: tuple[PodPlan, ...] = ()
    """Served pods that stay as they are (their workload is refreshed from the new world)."""
    skip: tuple[PodPlan, ...] = ()


def plan_pods(world: World, desired: Sequence[PodAttachment], served: Mapping[str, PodPlan]) -> PodChanges:
    """Reconcile (istio-cni's snapshot: pods not in it are dropped): a pod whose namespace,
    address or identity changed is removed and added again."""
    add: list[PodPlan] = []
    keep: list[PodPlan] = []
    skip: list[PodPlan] = []
    remove: list[str] = []
    wanted: set[str] = set()
    for pod in desired:
        plan = plan_pod(world, pod)
        if plan.action is PodAction.SKIP:
            skip.append(plan)
            continue
        wanted.add(pod.key)
        current = served.get(pod.key)
        if current is None:
            add.append(plan)
        elif current.same_serving(plan):
            keep.append(plan)
        else:
            remove.append(pod.key)
            add.append(plan)
    remove += [key for key in served if key not in wanted]
    return PodChanges(tuple(add), tuple(remove), tuple(keep), tuple(skip))


class CaptureSeam(Protocol):
    """Installs and removes the in-pod capture (`nodemesh.capture` by default)."""

    def install(self, netns: str) -> None: ...

    def remove(self, netns: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _NftCapture:
    config: CaptureConfig | None = None

    def install(self, netns: str) -> None:
        install_capture(netns, self.config)

    def remove(self, netns: str) -> None:
        remove_capture(netns, self.config)


@dataclass(frozen=True, slots=True)
class NodeProxySettings:
    """How one node proxy runs; every default is ztunnel's where it has one."""

    pool: PoolSettings = field(default_factory=PoolSettings)
    """The HBONE pool of each pod (100 streams per connection, 5 min idle)."""
    connect_timeout: float = 10.0
    """Dialling the application inbound, and waiting for a CONNECT's answer outbound."""
    drain_grace: float = 1.0
    """Seconds a removed pod's (or a closing proxy's) connection tasks get to finish before they
    are cancelled (ztunnel drains for CONNECTION_TERMINATION_DEADLINE, 5 s)."""
    manage_capture: bool = True
    """Install the capture when a pod is added and remove it when it is removed. Off when
    something else (the runtime's node agent role) owns the rules."""


WaypointAddress = Callable[[Waypoint], IPAddress | None]


def no_waypoint_proxy(_waypoint: Waypoint) -> IPAddress | None:
    """No waypoint proxy runs yet: every waypoint has no address (traffic to it is refused)."""
    return None


def _original_destination(sock: socket.socket) -> tuple[str, int]:
    return original_dst(sock).as_tuple()


class _ServedPod:
    """The listeners, proxies, pool and tasks of one served pod.

    Two task sets: `accept` holds the accept loops (they run until cancelled), `tasks` the
    per-connection tasks the proxies spawn (short-lived: the relays themselves are callbacks).
    Closing stops accepting at once, then gives connection tasks `grace` seconds."""

    def __init__(self, plan: PodPlan, sockets: PodSocketFactory) -> None:
        self.plan = plan
        self.sockets = sockets
        self.accept = TaskSet(f"pod {plan.pod.key} accept")
        self.tasks = TaskSet(f"pod {plan.pod.key}")
        self.listeners: list[socket.socket] = []
        self.inbound: InboundProxy | None = None
        self.outbound: OutboundProxy | None = None
        self.pool: HbonePool | None = None

    async def close(self, grace: float) -> None:
        await self.accept.close()
        if self.inbound is not None:
            await self.inbound.close()
        for sock in self.listeners:
            sock.close()
        if self.pool is not None:
            self.pool.close()
        await self.tasks.close(grace=grace)
        self.sockets.close()


class AmbientNode:
    """The node proxy of one node: serves the ambient pods handed to it (see the module doc).

    Use from the node proxy's event loop: `await add_pod(...)`, `await remove_pod(key)`,
    `await sync_pods(pods)`, `update_policy(engine)`, `refresh_credentials()`, `await close()`."""

    def __init__(
        self,
        *,
        node: str,
        engine: PolicyEngine,
        credentials: CredentialSource,
        sink: FlowSink,
        settings: NodeProxySettings | None = None,
        capture: CaptureSeam | None = None,
        waypoint_address: WaypointAddress = no_waypoint_proxy,
    ) -> None:
        self.node = node
        self.engine = engine
        self.credentials = NodeCredentials(credentials)
        self.sink = sink
        self.settings = settings or NodeProxySettings()
        self.capture: CaptureSeam = capture or _NftCapture()
        self.waypoint_address = waypoint_address
        self._pods: dict[str, _ServedPod] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    # ---- queries ---------------------------------------------------------------------------
    @property
    def world(self) -> World:
        return self.engine.world

    @property
    def pods(self) -> Mapping[str, PodPlan]:
        """The pods served now, by `ns/name`."""
        return {key: served.plan for key, served in self._pods.items()}

    def live_inbound_connections(self) -> int:
        return sum(len(p.inbound.registry) for p in self._pods.values() if p.inbound is not None)

    def _identities(self, extra: str | None = None) -> set[str]:
        ids = {p.plan.identity for p in self._pods.values() if p.plan.identity is not None}
        if extra is not None:
            ids.add(extra)
        return ids

    # ---- pods ------------------------------------------------------------------------------
    async def add_pod(self, pod: PodAttachment) -> PodPlan:
        """Serve `pod` (a no-op returning the SKIP plan for a pod outside the ambient mesh).
        Raises `CredentialUnavailableError` when its SVID is not available yet, and capture or
        socket errors as they come; nothing of the pod is left behind on failure."""
        async with self._lock:
            plan = plan_pod(self.world, pod)
            if plan.action is PodAction.SERVE:
                current = self._pods.get(pod.key)
                if current is not None:  # re-add: never leave the pod uncaptured in between
                    await self._remove(pod.key, keep_capture=current.plan.pod.netns == pod.netns)
                await self._add(plan)
            return plan

    async def remove_pod(self, key: str) -> bool:
        """Stop serving the pod `ns/name` and remove its capture; False if it was not served."""
        async with self._lock:
            return await self._remove(key)

    async def sync_pods(self, pods: Sequence[PodAttachment]) -> tuple[PodChanges, dict[str, str]]:
        """Serve exactly `pods` (those in the mesh); returns the plan and the pods that could not
        be added, with why (they are retried by the next call)."""
        async with self._lock:
            changes = plan_pods(self.world, pods, self.pods)
            readded = {p.pod.key: p.pod.netns for p in changes.add}
            for key in changes.remove:
                same_netns = readded.get(key) == self._pods[key].plan.pod.netns
                await self._remove(key, keep_capture=same_netns)  # re-added: stays captured
            for plan in changes.keep:
                self._refresh_workload(self._pods[plan.pod.key], plan)
            failed: dict[str, str] = {}
            for plan in changes.add:
                try:
                    await self._add(plan)
                except (NodemeshError, OSError) as exc:
                    failed[plan.pod.key] = str(exc)
                    log.warning("node %s: cannot serve %s yet: %s", self.node, plan.pod.key, exc)
            return changes, failed

    async def _add(self, plan: PodPlan) -> None:
        if self._closed:
            raise NodeProxyError(f"the node proxy of {self.node} is closed")
        workload, identity, ip = plan.workload, plan.identity, plan.ip
        assert workload is not None and identity is not None and ip is not None
        sync = self.credentials.sync(self._identities(identity))
        if identity in sync.missing:
            raise CredentialUnavailableError(f"no certificate for {identity} on node {self.node} yet")
        netns = plan.pod.netns
        sockets = PodSocketFactory(netns)
        served = _ServedPod(plan, sockets)
        installed = False
        try:
            if self.settings.manage_capture:
                await asyncio.to_thread(self.capture.install, netns)
                installed = True
            outbound_listener = sockets.tcp_bind(OUTBOUND_PORT)
            served.listeners.append(outbound_listener)
            plaintext_listener = sockets.tcp_bind(INBOUND_PLAINTEXT_PORT)
            served.listeners.append(plaintext_listener)
            hbone_listener = sockets.tcp_bind(HBONE_PORT, str(ip))
            served.listeners.append(hbone_listener)
            store = self.credentials.store
            served.inbound = InboundProxy(
                pod=workload,
                identity=identity,
                engine=self.engine,
                credentials=store,
                sockets=sockets,
                sink=self.sink,
                tasks=served.tasks,
                original_destination=_original_destination,
                transparent=True,
                connect_timeout=self.settings.connect_timeout,
            )
            await served.inbound.start_hbone(hbone_listener)
            served.pool = HbonePool(
                store, sockets, self.settings.pool, name=f"pool {plan.pod.key}", source_ip=str(ip)
            )
            served.outbound = OutboundProxy(
                source=workload,
                engine=self.engine,
                pool=served.pool,
                sockets=sockets,
                original_destination=_original_destination,
                sink=self.sink,
                tasks=served.tasks,
                waypoint_address=self.waypoint_address,
                connect_timeout=self.settings.connect_timeout,
            )
            served.accept.spawn(served.outbound.serve(outbound_listener), name="outbound")
            served.accept.spawn(served.inbound.serve_plaintext(plaintext_listener), name="plaintext")
        except BaseException:
            await served.close(0.0)
            if installed:
                with contextlib.suppress(NodemeshError, OSError):
                    await asyncio.to_thread(self.capture.remove, netns)
            self.credentials.sync(self._identities())
            raise
        self._pods[plan.pod.key] = served
        log.info("node %s: serving %s (%s) at %s", self.node, plan.pod.key, identity, ip)

    async def _remove(self, key: str, *, keep_capture: bool = False) -> bool:
        served = self._pods.pop(key, None)
        if served is None:
            return False
        await served.close(self.settings.drain_grace)
        if self.settings.manage_capture and not keep_capture:
            try:
                await asyncio.to_thread(self.capture.remove, served.plan.pod.netns)
            except (NodemeshError, OSError) as exc:  # the namespace may be gone already
                log.info("node %s: capture of %s not removed: %s", self.node, key, exc)
        self.credentials.sync(self._identities())
        log.info("node %s: stopped serving %s", self.node, key)
        return True

    # ---- policy and credentials ------------------------------------------------------------
    def _refresh_workload(self, served: _ServedPod, plan: PodPlan) -> None:
        """Adopt the new world's workload (labels) for a pod whose serving did not change."""
        assert plan.workload is not None
        served.plan = plan
        if served.inbound is not None:
            served.inbound.pod = plan.workload
        if served.outbound is not None:
            served.outbound.source = plan.workload

    def update_policy(self, engine: PolicyEngine) -> int:
        """Adopt a new engine (world and policies) for every served pod; close the live inbound
        connections it no longer allows. Returns how many were closed."""
        self.engine = engine
        closed = 0
        for served in self._pods.values():
            plan = plan_pod(engine.world, served.plan.pod)
            if plan.action is PodAction.SERVE and served.plan.same_serving(plan):
                self._refresh_workload(served, plan)
            if served.outbound is not None:
                served.outbound.update_policy(engine)
            if served.inbound is not None:
                closed += served.inbound.update_policy(engine)
        if closed:
            log.info("node %s: policy change closed %d connection(s)", self.node, closed)
        return closed

    def refresh_credentials(self) -> CredentialSync:
        """Pick up rotated certificates and trust bundle changes for new connections."""
        return self.credentials.sync(self._identities())

    # ---- lifecycle -------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop serving every pod; the capture rules stay (see the module docstring)."""
        async with self._lock:
            self._closed = True
            for key in list(self._pods):
                await self._remove(key, keep_capture=True)
