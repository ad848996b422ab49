"""The agent's local view: the last good configuration it accepted, and how a push is accepted.

Invariants
- A push is applied as a whole or not at all: `LocalView.apply` returns a new view or raises
  `ViewRejected`; the current view is never modified. A rejected push becomes a NACK and the
  agent keeps serving the previous view (xDS: "ACK/NACK takes place by returning the new API
  config version as applied or the previous API config version respectively").
- Every resource's version is the digest of its body, so corruption in transit or on disk is
  detected, not served.
- The data path can add its own checks (`ViewCheck`): a data path that cannot compile a policy
  rejects the push the same way, and the control plane shows the reason in its status.

Pure: no I/O here; `nodemesh.agent.disk` persists views.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from cryptography import x509

from nodemesh.ca.bundle import TrustBundle
from nodemesh.ca.spiffe import SpiffeId
from nodemesh.controlplane.views import ViewResource, digest
from nodemesh.errors import NodemeshError
from nodemesh.waypoint.deployment import MANAGED_LABEL, MANAGED_VALUE

__all__ = ["KNOWN_TYPES", "LocalView", "ViewCheck", "ViewRejectedError"]

KNOWN_TYPES = frozenset({"workload", "service", "policy", "waypoint", "peer", "bundle", "cluster"})


class ViewRejectedError(NodemeshError):
    """A push the agent will not apply; the message is the NACK's error_detail."""


class ViewCheck(Protocol):
    """A data path's extra validation of a candidate view: a reason to reject it, or None."""

    def __call__(self, candidate: LocalView) -> str | None: ...


def _is_waypoint_pod(labels: object) -> bool:
    """A pod of a waypoint Deployment (`nodemesh.waypoint.deployment`: Istio's managed label)."""
    return isinstance(labels, Mapping) and labels.get(MANAGED_LABEL) == MANAGED_VALUE


@dataclass(frozen=True, slots=True)
class LocalView:
    version_info: str = ""
    resources: Mapping[str, ViewResource] = field(default_factory=lambda: MappingProxyType({}))

    def versions(self) -> dict[str, str]:
        return {k: r.version for k, r in self.resources.items()}

    def apply(
        self,
        version_info: str,
        resources: Iterable[ViewResource],
        removed: Iterable[str],
        checks: Iterable[ViewCheck] = (),
    ) -> LocalView:
        """The view after a push, or ViewRejectedError (this view unchanged)."""
        merged = dict(self.resources)
        for key in removed:
            merged.pop(key, None)
        for res in resources:
            _validate(res)
            merged[res.key] = res
        candidate = LocalView(version_info, MappingProxyType(merged))
        for check in checks:
            reason = check(candidate)
            if reason:
                raise ViewRejectedError(reason)
        return candidate

    # ---- what the data path reads ---------------------------------------------------------
    def of_type(self, type_: str) -> list[ViewResource]:
        return [r for k, r in sorted(self.resources.items()) if r.type == type_]

    def workloads(self) -> list[dict[str, object]]:
        return [r.value() for r in self.of_type("workload")]

    def identities(self) -> set[SpiffeId]:
        """The identities of this node's pods that need an SVID: those in the mesh, and waypoint
        pods (Istio's waypoint template labels them `istio.io/dataplane-mode: none`, so they are
        not captured, yet they terminate and originate HBONE with their own SVID; the agent
        obtains it for them, node authorization permitting)."""
        return {
            SpiffeId.parse(str(w["identity"]))
            for w in self.workloads()
            if w.get("inMesh") or _is_waypoint_pod(w.get("labels"))
        }

    def bundle(self) -> TrustBundle | None:
        res = self.resources.get("bundle/roots")
        if res is None:
            return None
        return TrustBundle.from_pem("".join(res.value()["roots"]))

    # ---- persistence format ---------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "versionInfo": self.version_info,
                "resources": [
                    {"type": r.type, "name": r.name, "version": r.version, "body": r.body.decode()}
                    for _, r in sorted(self.resources.items())
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LocalView:
        raw = json.loads(text)
        resources = [
            ViewResource(r["type"], r["name"], r["version"], r["body"].encode()) for r in raw["resources"]
        ]
        return cls().apply(str(raw["versionInfo"]), resources, ())


def _validate(res: ViewResource) -> None:
    if res.type not in KNOWN_TYPES:
        raise ViewRejectedError(f"{res.key}: unknown resource type {res.type!r}")
    if digest(res.body) != res.version:
        raise ViewRejectedError(f"{res.key}: body does not match its version {res.version}")
    try:
        value = json.loads(res.body)
    except ValueError as exc:
        raise ViewRejectedError(f"{res.key}: body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ViewRejectedError(f"{res.key}: body is not a JSON object")
    try:
        if res.type == "workload":
            ipaddress.ip_address(str(value["ip"]))
            SpiffeId.parse(str(value["identity"]))
        elif res.type == "bundle":
            roots = value["roots"]
            if not roots:
                raise ViewRejectedError(f"{res.key}: empty trust bundle")
            x509.load_pem_x509_certificates("".join(roots).encode())
        elif res.type == "peer":
            ipaddress.ip_address(str(value["address"]))
            ipaddress.ip_network(str(value["podCIDR"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ViewRejectedError(f"{res.key}: invalid {res.type}: {exc}") from exc
