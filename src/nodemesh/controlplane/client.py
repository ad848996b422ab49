"""A blocking client of the control plane's admin API, for the CLI and the local runtime.

Manifests are sent as the files the user wrote (name and text), so the control plane's errors
name the user's file and line; a rejected batch comes back as the same `ManifestError` a local
validation would raise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from nodemesh.controlplane.results import Action, ResourceResult
from nodemesh.controlplane.settings import (
    DEFAULT_STATE_DIR,
    ENV_ADDRESS,
    ENV_STATE_DIR,
    default_admin_address,
)
from nodemesh.errors import ManifestError, ManifestProblem, NodemeshError, UsageError
from nodemesh.protos.gen import controlplane_pb2 as pb
from nodemesh.protos.gen import controlplane_pb2_grpc as pbg

__all__ = [
    "ControlPlaneClient",
    "ControlPlaneUnavailableError",
    "NodeRow",
    "RemoteResource",
    "StatusReport",
    "WriteResult",
    "add_connection_arguments",
    "client_from_args",
    "read_manifests",
]

_T = TypeVar("_T")
SUFFIXES = (".yaml", ".yml", ".json")
ACTIONS = {
    pb.CREATED: Action.CREATED,
    pb.CONFIGURED: Action.CONFIGURED,
    pb.UNCHANGED: Action.UNCHANGED,
    pb.DELETED: Action.DELETED,
}


class ControlPlaneUnavailableError(NodemeshError):
    """The control plane did not answer (not running, wrong address)."""

    exit_code = 3


@dataclass(frozen=True, slots=True)
class WriteResult:
    revision: int
    results: tuple[ResourceResult, ...]


@dataclass(frozen=True, slots=True)
class RemoteResource:
    api_version: str
    kind: str
    namespace: str
    name: str
    resource_version: int
    manifest: dict[str, object]


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    connected: bool
    acked_version: str
    synced: bool
    resources: int
    nack_version: str
    nack_reason: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    revision: int
    nodes: tuple[NodeRow, ...]
    bundle_fingerprints: tuple[str, ...]


def read_manifests(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(file name, text) of every file named: files, directories (recursively, sorted
    *.yaml/*.yml/*.json) and `-` for stdin."""
    out: list[tuple[str, str]] = []
    for raw in paths:
        if raw == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(raw)
        if path.is_dir():
            out += [
                (str(p), p.read_text(encoding="utf-8"))
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in SUFFIXES
            ]
        elif path.exists():
            out.append((str(path), path.read_text(encoding="utf-8")))
        else:
            raise ManifestError([ManifestProblem(raw, 0, "", "no such file or directory")])
    return out


class ControlPlaneClient:
    """Blocking calls to the admin endpoint (`unix:<state-dir>/admin.sock` by default)."""

    def __init__(self, address: str, *, timeout: float = 60.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = pbg.ResourceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- calls ----------------------------------------------------------------------------
    def apply(self, manifests: Sequence[tuple[str, str]]) -> WriteResult:
        request = pb.ApplyRequest(manifests=[pb.Manifest(file=f, text=t) for f, t in manifests])
        return self._write(self._call(lambda: self._stub.Apply(request, timeout=self.timeout)))

    def delete(
        self, manifests: Sequence[tuple[str, str]] = (), refs: Sequence[tuple[str, str, str]] = ()
    ) -> WriteResult:
        """Delete what `manifests` name and/or `refs` (kind, namespace, name), atomically."""
        request = pb.DeleteRequest(
            manifests=[pb.Manifest(file=f, text=t) for f, t in manifests],
            refs=[pb.ResourceRef(kind=k, namespace=n, name=m) for k, n, m in refs],
        )
        return self._write(self._call(lambda: self._stub.Delete(request, timeout=self.timeout)))

    def get(
        self, kind: str, namespace: str = "", name: str = "", *, all_namespaces: bool = False
    ) -> list[RemoteResource]:
        request = pb.GetRequest(kind=kind, namespace=namespace, name=name, all_namespaces=all_namespaces)
        response = self._call(lambda: self._stub.Get(request, timeout=self.timeout))
        return [
            RemoteResource(
                r.api_version, r.kind, r.namespace, r.name, r.resource_version, json.loads(r.body_json)
            )
            for r in response.resources
        ]

    def status(self) -> StatusReport:
        response = self._call(lambda: self._stub.Status(pb.StatusRequest(), timeout=self.timeout))
        return StatusReport(
            response.revision,
            tuple(
                NodeRow(
                    n.node, n.connected, n.acked_version, n.synced, n.resources, n.nack_version, n.nack_reason
                )
                for n in response.nodes
            ),
            tuple(response.bundle_fingerprints),
        )

    def rotate_root(self) -> tuple[str, ...]:
        response = self._call(lambda: self._stub.RotateRoot(pb.RotateRootRequest(), timeout=self.timeout))
        return tuple(response.bundle_fingerprints)

    # ---- internals ------------------------------------------------------------------------
    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ControlPlaneUnavailableError(
                    f"cannot reach the control plane at {self.address} ({details}); "
                    "is a local cluster (`nodemesh up`) or `nodemesh controlplane` running? "
                    "set --cluster, --controlplane or $NODEMESH_CONTROLPLANE"
                ) from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(details or "invalid request") from exc
            raise NodemeshError(details or str(code)) from exc

    @staticmethod
    def _write(response: pb.WriteResponse) -> WriteResult:
        if response.problems:
            raise ManifestError(
                [ManifestProblem(p.file, p.line, p.path, p.message, p.hint) for p in response.problems]
            )
        return WriteResult(
            response.revision,
            tuple(
                ResourceResult(
                    (r.ref.kind, r.ref.namespace, r.ref.name), ACTIONS[r.action], r.resource_version
                )
                for r in response.results
            ),
        )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """`--controlplane ADDR` and `--state-dir DIR`, shared by the verbs that call the admin API."""
    parser.add_argument(
        "--controlplane",
        metavar="ADDR",
        help=f"admin endpoint, unix:/path/admin.sock (default: ${ENV_ADDRESS}, else <state-dir>/admin.sock)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"the control plane's state directory (default: ${ENV_STATE_DIR}, else {DEFAULT_STATE_DIR})",
    )


def client_from_args(args: argparse.Namespace) -> ControlPlaneClient:
    if args.controlplane:
        return ControlPlaneClient(args.controlplane)
    state_dir = Path(args.state_dir) if args.state_dir else None
    return ControlPlaneClient(default_admin_address(state_dir))
