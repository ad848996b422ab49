"""A node proxy process: one `AmbientNode` per node, on its own event loop, with its flow
pipeline and `/metrics` (ztunnel's process: in-pod proxies, access log, metrics on 15020).

    python -m nodemesh.nodeproxy.process --config node-0.json [--wait-for-go]

The runtime starts one per node, in the node's network namespace, with a JSON config
(`NodeProxyConfig`, documented in docs/hbone.md "Running a node proxy"): the node, the
manifests and the addresses the runtime assigned (pods and Service ClusterIPs), the pods of the
node with their namespace files, where the SVIDs are, where flows go, the metrics address.

Reporting and control, as the runtime's node agents do it: one JSON object per line on stdout
(`{"event": "ready", ...}`, then `pods`, `reloaded`, `error`, `stopped`); SIGHUP re-reads the
config file (new manifests = new policies and pods: `update_policy` closes live connections no
longer allowed, then the pods are reconciled) and answers with a `reloaded` line; SIGTERM or
SIGINT drains and exits 0. With `policies` (the node agent's ACKed policies, a JSON object
`{"version": ..., "documents": [...]}`), the policies come from that file instead of the
manifests whenever it exists, and `ready`/`reloaded` name its `policy_version`: the runtime's
agent rewrites it on every ACK and the runtime sends SIGHUP (docs/runtime.md, "Ambient mode").
Pods whose certificate is not there yet are retried every `retry_seconds`; certificates are
re-read every `credential_refresh_seconds`.

Everything the process owns is closed on the way out (pods' listeners and connections, the
metrics server, the flow file); the in-pod capture stays, so traffic of the node's pods fails
closed until the next node proxy takes over (see `node.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nodemesh.errors import NodemeshError
from nodemesh.model.loader import RawDocument, load_text
from nodemesh.model.schema.base import Document
from nodemesh.model.validate import load_documents, parse_documents
from nodemesh.model.world import Waypoint, World
from nodemesh.nodeproxy.credentials import AgentCertificates, AuthorityCredentials, CredentialSource
from nodemesh.nodeproxy.node import AmbientNode, NodeProxySettings, PodAttachment, PodChanges
from nodemesh.nodeproxy.observe_adapter import FlowRecorder
from nodemesh.nodeproxy.runtime import TaskSet, loop_name, new_event_loop, tune_allocator
from nodemesh.observe import FlowPipeline, FlowRing, FlowWriter, MetricsServer, TcpMetrics
from nodemesh.policy.engine import PolicyEngine
from nodemesh.policy.flow import IPAddress

__all__ = [
    "ConfigError",
    "CredentialConfig",
    "NodeProxyConfig",
    "PolicySnapshot",
    "WorldSource",
    "build_world",
    "credential_source",
    "main",
    "parse_metrics_address",
    "print_report",
    "process_main",
    "read_config_json",
    "read_policies",
    "run_node_proxy",
    "run_on_new_loop",
    "serve_node_proxy",
]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, object]], None]
TOPOLOGY_KINDS = frozenset(
    {"Namespace", "Cluster", "ServiceAccount", "Pod", "Deployment", "Service", "Gateway"}
)
"""The kinds `World.build` does not file under `policies` (the control plane's TOPOLOGY_KINDS)."""


FLOW_BATCH_SECONDS = 0.02
"""Flow records are mapped, counted and written in batches this long after the connection ends
(`FlowRecorder(batch_delay=...)`): off the path of the next connection."""


class ConfigError(NodemeshError):
    """A node proxy config that cannot be used (the message names the field)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    """Where SVIDs come from: `agent` (the node agent's certificate directory + a bundle file)
    or `ca` (a CA directory in the control plane's layout: signer.crt, signer.key, roots.pem;
    the node proxy signs itself, without node authorization: tests and standalone use)."""

    kind: str
    directory: Path
    bundle: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("agent", "ca"):
            raise ConfigError(f"credentials.kind must be 'agent' or 'ca', not {self.kind!r}")
        if self.kind == "agent" and self.bundle is None:
            raise ConfigError("credentials.bundle is required for kind 'agent'")


@dataclass(frozen=True, slots=True)
class NodeProxyConfig:
    """Everything one node proxy process needs (see docs/hbone.md, "Running a node proxy")."""

    node: str
    manifests: tuple[Path, ...]
    """Manifest files or directories: the world and its policies."""
    pods: tuple[PodAttachment, ...]
    """The pods on this node, with their network namespace files (ambient ones are served)."""
    credentials: CredentialConfig
    pod_ips: Mapping[str, str] = field(default_factory=dict)
    """`ns/pod` -> address, as the runtime assigned them."""
    service_ips: Mapping[str, str] = field(default_factory=dict)
    """`ns/service` -> ClusterIP, as the runtime assigned them."""
    cluster_name: str | None = None
    mode: str | None = None
    """The cluster's data path mode as the runtime planned it (`World.mode_override`)."""
    flows_dir: Path | None = None
    """Where `<node>.jsonl` is written (`nodemesh observe --flows-dir`); None: no export."""
    metrics: tuple[str, int] | None = ("0.0.0.0", 15020)
    """`/metrics` address (ztunnel's 15020); None: no metrics endpoint."""
    manage_capture: bool = True
    use_uvloop: bool = True
    credential_refresh_seconds: float = 30.0
    retry_seconds: float = 0.5
    policies: Path | None = None
    """A policy snapshot file (`PolicySnapshot`); when it exists, its documents replace the
    manifests' policies (the runtime's node agent writes it on every ACK)."""
    waypoint_ips: Mapping[str, str] = field(default_factory=dict)
    """`ns/gateway` -> the address of the pod running that waypoint; traffic that must go
    through a waypoint missing here is refused (never sent around it)."""

    def waypoint_address(self, waypoint: Waypoint) -> IPAddress | None:
        """The `waypoint_address` callback of the node's outbound proxies."""
        ip = self.waypoint_ips.get(waypoint.key)
        return ipaddress.ip_address(ip) if ip else None

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> NodeProxyConfig:
        try:
            creds = raw["credentials"]
            assert isinstance(creds, Mapping)
            metrics_addr = parse_metrics_address(raw.get("metrics", "0.0.0.0:15020"))
            pods_raw = raw.get("pods", [])
            assert isinstance(pods_raw, list)
            manifests = raw.get("manifests", [])
            assert isinstance(manifests, list)
            flows = raw.get("flows_dir")
            policies = raw.get("policies")
            return cls(
                node=str(raw["node"]),
                manifests=tuple(Path(str(p)) for p in manifests),
                policies=Path(str(policies)) if policies else None,
                pods=tuple(
                    PodAttachment(str(p["namespace"]), str(p["name"]), str(p["netns"])) for p in pods_raw
                ),
                credentials=CredentialConfig(
                    str(creds["kind"]),
                    Path(str(creds["directory"])),
                    Path(str(creds["bundle"])) if creds.get("bundle") else None,
                ),
                pod_ips=_str_map(raw.get("pod_ips", {})),
                service_ips=_str_map(raw.get("service_ips", {})),
                cluster_name=_opt_str(raw.get("cluster_name")),
                mode=_opt_str(raw.get("mode")),
                flows_dir=Path(str(flows)) if flows else None,
                metrics=metrics_addr,
                manage_capture=bool(raw.get("manage_capture", True)),
                use_uvloop=bool(raw.get("use_uvloop", True)),
                credential_refresh_seconds=float(str(raw.get("credential_refresh_seconds", 30.0))),
                retry_seconds=float(str(raw.get("retry_seconds", 0.5))),
                waypoint_ips=_str_map(raw.get("waypoint_ips", {})),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"invalid node proxy config: {exc!r}") from exc

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "manifests": [str(p) for p in self.manifests],
            "policies": str(self.policies) if self.policies else None,
            "pods": [{"namespace": p.namespace, "name": p.name, "netns": p.netns} for p in self.pods],
            "credentials": {
                "kind": self.credentials.kind,
                "directory": str(self.credentials.directory),
                "bundle": str(self.credentials.bundle) if self.credentials.bundle else None,
            },
            "pod_ips": dict(self.pod_ips),
            "service_ips": dict(self.service_ips),
            "cluster_name": self.cluster_name,
            "mode": self.mode,
            "flows_dir": str(self.flows_dir) if self.flows_dir else None,
            "metrics": f"{self.metrics[0]}:{self.metrics[1]}" if self.metrics else None,
            "manage_capture": self.manage_capture,
            "use_uvloop": self.use_uvloop,
            "credential_refresh_seconds": self.credential_refresh_seconds,
            "retry_seconds": self.retry_seconds,
            "waypoint_ips": dict(self.waypoint_ips),
        }

    @classmethod
    def load(cls, path: Path) -> NodeProxyConfig:
        return cls.from_dict(read_config_json(path, "node proxy"))

    def write(self, path: Path) -> None:
        """Write atomically (what a runtime does before SIGHUP)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)


def _pod(raw: object) -> PodAttachment:
    if not isinstance(raw, Mapping):
        raise TypeError("each pod is an object {namespace, name, netns}")
    return PodAttachment(str(raw["namespace"]), str(raw["name"]), str(raw["netns"]))


def _str_map(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise TypeError("expected an object of strings")
    return {str(k): str(v) for k, v in raw.items()}


def _opt_str(raw: object) -> str | None:
    return None if raw is None else str(raw)


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """The policies a node agent ACKed: the view's version and its policy documents."""

    version: str
    documents: tuple[RawDocument, ...]


def read_policies(path: Path | None) -> PolicySnapshot | None:
    """The snapshot in `path`, or None when there is none (yet): the manifests' policies apply."""
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the policy snapshot {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("documents"), list):
        raise ConfigError(f"{path}: a policy snapshot is an object with a `documents` list")
    documents = tuple(
        doc for i, body in enumerate(raw["documents"]) for doc in load_text(json.dumps(body), f"{path}#{i}")
    )
    return PolicySnapshot(str(raw.get("version", "")), documents)


def _is_policy(doc: Document) -> bool:
    """What `World.build` files under `policies` (every kind that is not topology)."""
    return doc.kind not in TOPOLOGY_KINDS


class WorldSource(Protocol):
    """What `build_world` reads from a config (the node proxy's, or a waypoint's)."""

    @property
    def manifests(self) -> tuple[Path, ...]: ...
    @property
    def pod_ips(self) -> Mapping[str, str]: ...
    @property
    def service_ips(self) -> Mapping[str, str]: ...
    @property
    def cluster_name(self) -> str | None: ...
    @property
    def mode(self) -> str | None: ...


def build_world(config: WorldSource, policies: PolicySnapshot | None = None) -> World:
    """The world from the manifests, with the runtime's pod addresses and Service ClusterIPs;
    with `policies`, its documents replace the manifests' policies."""
    docs = load_documents([str(p) for p in config.manifests])
    if policies is not None:
        docs = [d for d in docs if not _is_policy(d)] + parse_documents(policies.documents)
    world = World.build(docs, ips=dict(config.pod_ips))
    if config.cluster_name is not None:
        world.cluster_name = config.cluster_name
    if config.mode is not None:
        world.mode_override = config.mode
    for key, ip in config.service_ips.items():
        ns, _, name = key.partition("/")
        svc = world.services.get((ns, name))
        if svc is not None:
            world.services[(ns, name)] = dataclasses.replace(svc, cluster_ip=ipaddress.ip_address(ip))
    world.reindex()
    return world


def credential_source(config: CredentialConfig) -> CredentialSource:
    if config.kind == "agent":
        assert config.bundle is not None
        return AgentCertificates(config.directory, config.bundle)
    from nodemesh.ca import CertificateAuthority, RootCA, TrustBundle  # cryptography: kind `ca` only

    d = config.directory
    signer = RootCA.from_pem((d / "signer.crt").read_bytes(), (d / "signer.key").read_bytes())
    roots = TrustBundle.from_pem((d / "roots.pem").read_bytes()).roots if (d / "roots.pem").exists() else ()
    return AuthorityCredentials(CertificateAuthority.create(signer, [r for r in roots if r != signer.cert]))


def _changes(changes: PodChanges, failed: Mapping[str, str]) -> dict[str, object]:
    return {
        "added": sorted(p.pod.key for p in changes.add if p.pod.key not in failed),
        "removed": sorted(changes.remove),
        "skipped": {p.pod.key: p.reason for p in changes.skip},
        "failed": dict(failed),
    }


class _NodeProxyProcess:
    """The process's state: the node, its pipeline, metrics, and the control loop."""

    def __init__(self, config: NodeProxyConfig, reload: Callable[[], NodeProxyConfig] | None, report: Report):
        self.config = config
        self.reload_config = reload
        self.report = report
        self.tasks = TaskSet(f"node-proxy {config.node}")
        self.stop = asyncio.Event()
        self.reloads: asyncio.Queue[None] = asyncio.Queue()
        self.generation = 0
        self.failed: dict[str, str] = {}
        policies = read_policies(config.policies)
        self.policy_version = policies.version if policies is not None else ""
        world = build_world(config, policies)
        self.metrics = TcpMetrics()
        writer = FlowWriter(config.flows_dir, config.node) if config.flows_dir is not None else None
        self.pipeline = FlowPipeline(FlowRing(), self.metrics, writer)
        self.recorder = FlowRecorder(self.pipeline, config.node, world, batch_delay=FLOW_BATCH_SECONDS)
        self.node = AmbientNode(
            node=config.node,
            engine=PolicyEngine(world, "ambient"),
            credentials=credential_source(config.credentials),
            sink=self.recorder,
            settings=NodeProxySettings(manage_capture=config.manage_capture),
            waypoint_address=self._waypoint_address,
        )
        self.metrics_server = MetricsServer(self.metrics, *config.metrics) if config.metrics else None

    def _waypoint_address(self, waypoint: Waypoint) -> IPAddress | None:
        return self.config.waypoint_address(waypoint)  # follows the config across reloads

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, self.reloads.put_nowait, None)
        try:
            if self.metrics_server is not None:
                await self.metrics_server.start()
            changes, self.failed = await self.node.sync_pods(self.config.pods)
            self.report(
                {
                    "event": "ready",
                    "node": self.config.node,
                    "loop": loop_name(loop),
                    "pods": sorted(self.node.pods),
                    "metrics_port": self.metrics_server.port if self.metrics_server else None,
                    "policy_version": self.policy_version,
                    **_changes(changes, self.failed),
                }
            )
            self.tasks.spawn(self._reloads(), name="reloads")
            self.tasks.spawn(self._refresh(), name="credentials")
            await self.stop.wait()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self.tasks.close(grace=0.0)
            await self.node.close()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            self.recorder.flush()
            self.pipeline.close()
            self.report({"event": "stopped", "node": self.config.node, "flows": self.recorder.recorded})

    async def _reloads(self) -> None:
        while True:
            await self.reloads.get()
            if self.reload_config is None:
                continue
            try:
                config = self.reload_config()
                policies = read_policies(config.policies)
                world = build_world(config, policies)
            except (NodemeshError, OSError) as exc:
                self.report({"event": "error", "node": self.config.node, "error": str(exc)})
                continue
            self.config = config
            self.policy_version = policies.version if policies is not None else ""
            self.generation += 1
            self.recorder.world = world
            closed = self.node.update_policy(PolicyEngine(world, "ambient"))
            changes, self.failed = await self.node.sync_pods(config.pods)
            self.report(
                {
                    "event": "reloaded",
                    "node": config.node,
                    "generation": self.generation,
                    "closed": closed,
                    "policy_version": self.policy_version,
                    "pods": sorted(self.node.pods),
                    **_changes(changes, self.failed),
                }
            )

    async def _refresh(self) -> None:
        """Re-read certificates; retry pods that could not be served yet (no SVID)."""
        since_refresh = 0.0
        while True:
            delay = self.config.retry_seconds if self.failed else self.config.credential_refresh_seconds
            await asyncio.sleep(delay)
            since_refresh += delay
            if since_refresh >= self.config.credential_refresh_seconds:
                since_refresh = 0.0
                self.node.refresh_credentials()
            if self.failed:
                changes, self.failed = await self.node.sync_pods(self.config.pods)
                if changes.add:
                    self.report(
                        {
                            "event": "pods",
                            "node": self.config.node,
                            "policy_version": self.policy_version,
                            "pods": sorted(self.node.pods),
                            **_changes(changes, self.failed),
                        }
                    )


def print_report(event: dict[str, object]) -> None:
    """The processes' report channel: one sorted JSON object per line on stdout."""
    print(json.dumps(event, sort_keys=True), flush=True)


def read_config_json(path: Path, what: str) -> Mapping[str, object]:
    """A process's JSON config object, or ConfigError naming `what` and the path."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return raw


def parse_metrics_address(raw: object) -> tuple[str, int] | None:
    """`host:port` (`[v6]:port`, empty host = 0.0.0.0), or None for no metrics endpoint."""
    if raw is None:
        return None
    host, _, port = str(raw).rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def run_on_new_loop(serve: Callable[[], Coroutine[Any, Any, None]], *, use_uvloop: bool) -> None:
    """Run `serve()` on a fresh loop (uvloop unless told otherwise) until it returns."""
    loop = new_event_loop(use_uvloop=use_uvloop)
    try:
        loop.run_until_complete(serve())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def process_main(
    argv: Sequence[str] | None, *, prog: str, description: str, what: str, run: Callable[[Path], None]
) -> int:
    """The command line both proxy processes share: `--config`, `--log-level`, `--wait-for-go`
    (imported, wait for a line on stdin before reading the config: the runtime sends it once the
    node's agent holds its view and SVIDs), errors on stderr with the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help=f"the {what}'s JSON config")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--wait-for-go",
        action="store_true",
        help="imported, wait for a line on stdin before reading the config (the runtime sends it "
        "once the node's agent holds its view and SVIDs)",
    )
    args = parser.parse_args(argv)
    if args.wait_for_go and not sys.stdin.readline():
        return 1  # the supervisor went away first
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args.config)
    except NodemeshError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a CA directory or a namespace file that is not there
        print(f"{what}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve_node_proxy(
    config: NodeProxyConfig,
    *,
    reload: Callable[[], NodeProxyConfig] | None = None,
    report: Report = print_report,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run a node proxy on the running loop until SIGTERM/SIGINT (or `stop` is set).

    `handle_signals=False` (a loop outside the main thread) leaves the signals alone: stop it
    with `stop`."""
    process = _NodeProxyProcess(config, reload, report)
    if stop is not None:
        process.stop = stop
    await process.run(handle_signals=handle_signals)


def run_node_proxy(config: NodeProxyConfig, config_path: Path | None = None) -> None:
    """What the runtime calls in a node proxy process: a fresh loop (uvloop unless the config
    says otherwise), then `serve_node_proxy` until SIGTERM/SIGINT. With `config_path`, SIGHUP
    re-reads the config."""
    if os.environ.get("NODEMESH_NO_MALLOPT") != "1":
        tune_allocator()
    reload = (lambda: NodeProxyConfig.load(config_path)) if config_path is not None else None
    run_on_new_loop(lambda: serve_node_proxy(config, reload=reload), use_uvloop=config.use_uvloop)


def main(argv: Sequence[str] | None = None) -> int:
    return process_main(
        argv,
        prog="python -m nodemesh.nodeproxy.process",
        description="Run the ambient node proxy of one node (see docs/hbone.md).",
        what="node proxy",
        run=lambda path: run_node_proxy(NodeProxyConfig.load(path), path),
    )


if __name__ == "__main__":
    sys.exit(main())
