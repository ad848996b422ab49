"""A waypoint proxy process: one waypoint pod's HBONE listener, L7 policy, flows and metrics.

    python -m nodemesh.waypoint.process --config waypoint.json [--wait-for-go]

The runtime starts one per waypoint pod, IN the pod's network namespace (the waypoint pod is not
captured: `istio.io/dataplane-mode: none`, as Istio's waypoint template labels it), once the
node agent of the pod's node has ACKed its view: that agent obtains the waypoint's SVID
(`spiffe://<td>/ns/<ns>/sa/<gateway>`) like any SVID of its node's pods, and node authorization
only lets it do so because the waypoint pod is placed on its node. The config
(`WaypointConfig`) is the node proxy's shape: manifests plus the runtime's addresses, the agent's
`policies.json`, where the SVID is, where flows go, the metrics address.

Reporting and control, as the node proxy does it (`nodeproxy.process`): JSON lines on stdout,
`ready` (waypoint, pod, address, `metrics_port`, `policy_version`), `waiting` (no SVID yet;
retried every `retry_seconds`), `reloaded` (`generation`, `policy_version`), `error` (a reload
that could not be applied: the previous policies stay), `stopped` (`requests`); SIGHUP re-reads
the config and the policy snapshot (new requests are decided with the new policies at once);
SIGTERM/SIGINT drain (stop accepting, let sessions finish for a second) and exit 0.

JWKS: the key sets of RequestAuthentication rules with a `jwksUri` (and no inline `jwks`) are
fetched by this process (`fetch_jwks`, a GET with a 5 s timeout, Istio's JWTRule `timeout`
default) after it listens and after every reload: the waypoint pod is not captured, so it
reaches cluster pods directly, and an issuer started after the waypoint is fetched on a retry
(1 s, doubling up to 30 s, while the policies stay the same). Until a fetch succeeds the tokens
of that issuer fail as Envoy's "Jwks remote fetch is failed"; after a reload the last good key
set of a URI stays in use until the new fetch answers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from nodemesh.capture.sockets import HostSocketFactory
from nodemesh.errors import NodemeshError
from nodemesh.model.world import Waypoint, Workload, World
from nodemesh.nodeproxy.credentials import NodeCredentials
from nodemesh.nodeproxy.outbound import HBONE_PORT
from nodemesh.nodeproxy.pool import HbonePool
from nodemesh.nodeproxy.process import (
    ConfigError,
    CredentialConfig,
    build_world,
    credential_source,
    parse_metrics_address,
    print_report,
    process_main,
    read_config_json,
    read_policies,
    run_on_new_loop,
)
from nodemesh.nodeproxy.runtime import TaskSet, loop_name
from nodemesh.nodeproxy.tls import identity_uri
from nodemesh.observe import FlowPipeline, FlowRing, FlowWriter, MetricsServer, TcpMetrics
from nodemesh.observe.flow import Flow
from nodemesh.policy.engine import PolicyEngine
from nodemesh.waypoint.jwt_authn import JwtPolicies
from nodemesh.waypoint.observe import HttpMetrics
from nodemesh.waypoint.proxy import WaypointProxy

__all__ = ["WaypointConfig", "fetch_jwks", "main", "run_waypoint", "serve_waypoint"]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, object]], None]

JWKS_TIMEOUT = 5.0
JWKS_MAX_BYTES = 1 << 20
JWKS_RETRY_MAX = 30.0


def _get(uri: str, timeout: float) -> str:
    with urllib.request.urlopen(uri, timeout=timeout) as response:
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        body: bytes = response.read(JWKS_MAX_BYTES + 1)
    if len(body) > JWKS_MAX_BYTES:
        raise OSError("JWKS larger than 1 MiB")
    return body.decode("utf-8")


async def fetch_jwks(uris: Iterable[str], timeout: float = JWKS_TIMEOUT) -> dict[str, str | None]:
    """GET every URI once, concurrently: its body, or None when it failed (any error, a status
    other than 200, or no answer within `timeout` seconds)."""
    ordered = sorted(set(uris))

    async def one(uri: str) -> str | None:
        try:
            return await asyncio.wait_for(asyncio.to_thread(_get, uri, timeout), timeout + 1.0)
        except (OSError, ValueError, TimeoutError, UnicodeDecodeError) as exc:
            log.warning("waypoint: JWKS fetch from %s failed: %s", uri, exc or repr(exc))
            return None

    results = await asyncio.gather(*(one(uri) for uri in ordered))
    return dict(zip(ordered, results, strict=True))


@dataclass(frozen=True, slots=True)
class WaypointConfig:
    """Everything one waypoint process needs (docs/waypoint.md, "The process")."""

    waypoint: str
    """`ns/name` of the Gateway (class istio-waypoint)."""
    pod: str
    """`ns/pod` of the waypoint pod this process serves."""
    node: str
    manifests: tuple[Path, ...]
    credentials: CredentialConfig
    pod_ips: Mapping[str, str] = field(default_factory=dict)
    service_ips: Mapping[str, str] = field(default_factory=dict)
    cluster_name: str | None = None
    mode: str | None = None
    policies: Path | None = None
    """The node agent's ACKed policy snapshot (`nodeproxy.process.PolicySnapshot`)."""
    flows_dir: Path | None = None
    """Where `waypoint.<ns>.<name>.jsonl` is written (None: no export)."""
    metrics: tuple[str, int] | None = ("0.0.0.0", 15020)
    use_uvloop: bool = True
    credential_refresh_seconds: float = 30.0
    retry_seconds: float = 0.5

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> WaypointConfig:
        try:
            creds = raw["credentials"]
            assert isinstance(creds, Mapping)
            manifests = raw.get("manifests", [])
            assert isinstance(manifests, list)
            policies, flows = raw.get("policies"), raw.get("flows_dir")
            pod_ips, service_ips = raw.get("pod_ips", {}), raw.get("service_ips", {})
            assert isinstance(pod_ips, Mapping) and isinstance(service_ips, Mapping)
            return cls(
                waypoint=str(raw["waypoint"]),
                pod=str(raw["pod"]),
                node=str(raw["node"]),
                manifests=tuple(Path(str(p)) for p in manifests),
                credentials=CredentialConfig(
                    str(creds["kind"]),
                    Path(str(creds["directory"])),
                    Path(str(creds["bundle"])) if creds.get("bundle") else None,
                ),
                pod_ips={str(k): str(v) for k, v in pod_ips.items()},
                service_ips={str(k): str(v) for k, v in service_ips.items()},
                cluster_name=None if raw.get("cluster_name") is None else str(raw["cluster_name"]),
                mode=None if raw.get("mode") is None else str(raw["mode"]),
                policies=Path(str(policies)) if policies else None,
                flows_dir=Path(str(flows)) if flows else None,
                metrics=parse_metrics_address(raw.get("metrics", "0.0.0.0:15020")),
                use_uvloop=bool(raw.get("use_uvloop", True)),
                credential_refresh_seconds=float(str(raw.get("credential_refresh_seconds", 30.0))),
                retry_seconds=float(str(raw.get("retry_seconds", 0.5))),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"invalid waypoint config: {exc!r}") from exc

    @classmethod
    def load(cls, path: Path) -> WaypointConfig:
        return cls.from_dict(read_config_json(path, "waypoint"))


def _find(world: World, config: WaypointConfig) -> tuple[Waypoint, Workload]:
    ns, _, name = config.waypoint.partition("/")
    waypoint = world.waypoints.get((ns, name))
    if waypoint is None:
        raise ConfigError(f"no Gateway {config.waypoint} of class istio-waypoint in the manifests")
    pod = next((w for w in world.workloads if w.key == config.pod), None)
    if pod is None or pod.ip is None:
        raise ConfigError(f"no pod {config.pod} with an address in the manifests")
    return waypoint, pod


class _WaypointProcess:
    def __init__(self, config: WaypointConfig, reload: Callable[[], WaypointConfig] | None, report: Report):
        self.config = config
        self.reload_config = reload
        self.report = report
        self.stop = asyncio.Event()
        self.reloads: asyncio.Queue[None] = asyncio.Queue()
        self.tasks = TaskSet(f"waypoint {config.waypoint}")
        self.generation = 0
        policies = read_policies(config.policies)
        self.policy_version = policies.version if policies is not None else ""
        world = build_world(config, policies)
        self.waypoint, self.pod = _find(world, config)
        self.identity = identity_uri(world.principal(self.pod))
        self.engine = PolicyEngine(world, "ambient")
        self.world = world
        self.jwks: dict[str, str | None] = {}
        """Every JWKS fetched so far, by URI (the last good body of each)."""
        self.jwt = JwtPolicies(world, self.jwks)
        registry = CollectorRegistry()
        self.tcp_metrics = TcpMetrics(registry)
        self.http_metrics = HttpMetrics(registry)
        name = f"waypoint.{self.waypoint.namespace}.{self.waypoint.name}"
        writer = FlowWriter(config.flows_dir, name) if config.flows_dir is not None else None
        self.pipeline = FlowPipeline(FlowRing(), self.tcp_metrics, writer)
        self.metrics_server = MetricsServer(self.tcp_metrics, *config.metrics) if config.metrics else None
        self.credentials = NodeCredentials(credential_source(config.credentials))
        self.requests = 0

    def record(self, flow: Flow) -> None:
        self.pipeline(flow)
        if self.http_metrics.record(flow):
            self.requests += 1

    async def _credentials(self) -> None:
        """Wait until the node agent has written the waypoint's SVID."""
        announced = False
        while True:
            sync = self.credentials.sync({self.identity})
            if self.identity not in sync.missing:
                return
            if not announced:
                self.report({"event": "waiting", "waypoint": self.config.waypoint, "reason": "no SVID yet"})
                announced = True
            await asyncio.sleep(self.config.retry_seconds)

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, self.reloads.put_nowait, None)
        assert self.pod.ip is not None
        sockets = HostSocketFactory(reuse_port=True)
        proxy: WaypointProxy | None = None
        try:
            if self.metrics_server is not None:
                await self.metrics_server.start()
            waiting = asyncio.ensure_future(self._credentials())
            stopping = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (waiting, stopping):
                fut.cancel()
            if self.stop.is_set():
                return
            pool = HbonePool(
                self.credentials.store,
                sockets,
                name=f"pool {self.config.waypoint}",
                source_ip=str(self.pod.ip),
            )
            proxy = WaypointProxy(
                waypoint=self.waypoint,
                pod=self.pod,
                identity=self.identity,
                engine=self.engine,
                credentials=self.credentials.store,
                pool=pool,
                record=self.record,
                node=self.config.node,
                tasks=self.tasks,
                jwt=self.jwt,
            )
            await proxy.start(sockets.tcp_bind(HBONE_PORT, str(self.pod.ip)))
            self.report(
                {
                    "event": "ready",
                    "waypoint": self.config.waypoint,
                    "pod": self.config.pod,
                    "ip": str(self.pod.ip),
                    "identity": self.identity,
                    "loop": loop_name(loop),
                    "metrics_port": self.metrics_server.port if self.metrics_server else None,
                    "policy_version": self.policy_version,
                }
            )
            self.tasks.spawn(self._reloads(proxy), name="reloads")
            self._fetch_jwks(proxy)
            self.tasks.spawn(self._refresh(), name="credentials")
            await self.stop.wait()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            if proxy is not None:
                await proxy.close(grace=1.0)
            await self.tasks.close(grace=0.0)
            if self.metrics_server is not None:
                await self.metrics_server.close()
            self.pipeline.close()
            self.report({"event": "stopped", "waypoint": self.config.waypoint, "requests": self.requests})

    async def _reloads(self, proxy: WaypointProxy) -> None:
        while True:
            await self.reloads.get()
            if self.reload_config is None:
                continue
            try:
                config = self.reload_config()
                policies = read_policies(config.policies)
                world = build_world(config, policies)
                _find(world, config)
            except (NodemeshError, OSError) as exc:
                self.report({"event": "error", "waypoint": self.config.waypoint, "error": str(exc)})
                continue
            self.config = config
            self.policy_version = policies.version if policies is not None else ""
            self.generation += 1
            self.world = world
            self.jwt = JwtPolicies(world, self.jwks)
            proxy.update_policy(PolicyEngine(world, "ambient"), self.jwt)
            self._fetch_jwks(proxy)
            self.report(
                {
                    "event": "reloaded",
                    "waypoint": config.waypoint,
                    "generation": self.generation,
                    "policy_version": self.policy_version,
                }
            )

    def _fetch_jwks(self, proxy: WaypointProxy) -> None:
        if self.jwt.jwks_uris:
            self.tasks.spawn(
                self._jwks(proxy, self.world, self.jwt.jwks_uris, self.generation),
                name=f"jwks-{self.generation}",
            )

    async def _jwks(self, proxy: WaypointProxy, world: World, uris: frozenset[str], generation: int) -> None:
        """Fetch the policies' JWKS URIs; retry the failed ones until they answer or the
        policies change (module doc)."""
        delay, pending = 1.0, set(uris)
        while pending:
            results = await fetch_jwks(pending)
            if generation != self.generation:
                return
            self.jwks.update({uri: text for uri, text in results.items() if text is not None})
            if any(text is not None for text in results.values()):
                self.jwt = JwtPolicies(world, self.jwks)
                proxy.update_jwks(self.jwt)
            pending = {uri for uri, text in results.items() if text is None}
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, JWKS_RETRY_MAX)
                if generation != self.generation:
                    return

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.config.credential_refresh_seconds)
            self.credentials.sync({self.identity})


async def serve_waypoint(
    config: WaypointConfig,
    *,
    reload: Callable[[], WaypointConfig] | None = None,
    report: Report = print_report,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run a waypoint on the running loop until SIGTERM/SIGINT (or `stop` is set)."""
    process = _WaypointProcess(config, reload, report)
    if stop is not None:
        process.stop = stop
    await process.run(handle_signals=handle_signals)


def run_waypoint(config: WaypointConfig, config_path: Path | None = None) -> None:
    """A fresh loop (uvloop unless the config says otherwise), `serve_waypoint` until SIGTERM;
    with `config_path`, SIGHUP re-reads the config."""
    reload = (lambda: WaypointConfig.load(config_path)) if config_path is not None else None
    run_on_new_loop(lambda: serve_waypoint(config, reload=reload), use_uvloop=config.use_uvloop)


def main(argv: Sequence[str] | None = None) -> int:
    return process_main(
        argv,
        prog="python -m nodemesh.waypoint.process",
        description="Run an ambient waypoint proxy (see docs/waypoint.md).",
        what="waypoint",
        run=lambda path: run_waypoint(WaypointConfig.load(path), path),
    )


if __name__ == "__main__":
    sys.exit(main())
