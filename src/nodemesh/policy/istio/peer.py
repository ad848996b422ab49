"""PeerAuthentication: the effective mTLS mode of a destination, and its verdict on a flow.

Ambient semantics (reference §4.7; `IS:pilot/pkg/serviceregistry/ambient/authorization.go`
`convertPeerAuthentication`, `convertedSelectorPeerAuthentications`): the mode is resolved as mesh
(root namespace, no selector, oldest wins), then namespace, then workload selector, then
`portLevelMtls` by target port (ztunnel sees the pod port); UNSET inherits. STRICT denies a
plaintext connection (no peer principal), as ztunnel does through the static DENY policy
`<root>/istio_converted_static_strict`; DISABLE is not supported in ambient and acts as
PERMISSIVE ("DISABLE mode is not supported", API proto). Selector policies in the root namespace
are ignored.

Invariants: the documents are read-only; the (mesh, namespace, workload) levels are cached per
destination workload and revalidated against its labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from nodemesh.model.schema.istio import PeerAuthentication
from nodemesh.policy.decision import Decision, DropReason
from nodemesh.policy.flow import FlowContext
from nodemesh.policy.ir import Api
from nodemesh.policy.istio.compile import policy_ref
from nodemesh.policy.selector import LabelSelector

__all__ = ["STATIC_STRICT", "PeerAuthentications"]

STATIC_STRICT = "istio_converted_static_strict"

_PeerLevels = tuple[PeerAuthentication | None, PeerAuthentication | None, PeerAuthentication | None]


class PeerAuthentications:
    """Every PeerAuthentication of a world (in manifest order), resolved per destination."""

    def __init__(self, root: str, docs: Sequence[PeerAuthentication]) -> None:
        self.root = root
        self._peer = tuple(docs)
        self._peer_cache: dict[tuple[object, ...], tuple[Mapping[str, str], *_PeerLevels]] = {}

    def decide(self, ctx: FlowContext) -> Decision | None:
        """The effective mTLS mode for ctx.dst at ctx.port (reference §4.7): mesh (root namespace,
        no selector, oldest wins), then namespace, then workload selector, then portLevelMtls by
        target port; UNSET inherits; DISABLE acts as PERMISSIVE. STRICT and plaintext (no peer
        principal) is denied. None when no PeerAuthentication applies."""
        dst = ctx.dst
        if dst.namespace is None or not self._peer:
            return None
        key = (dst.namespace, dst.pod or dst.workload)
        cached = self._peer_cache.get(key)
        if cached is None or not (cached[0] is dst.labels or cached[0] == dst.labels):
            cached = (dst.labels, *self._peer_levels(dst.namespace, dst.labels))
            self._peer_cache[key] = cached
        _, mesh, ns, wl = cached
        if mesh is None and ns is None and wl is None:
            return None
        mode, source, level = "PERMISSIVE", None, "default"
        for pa, lvl in ((mesh, "mesh-wide"), (ns, "namespace-wide"), (wl, "workload")):
            if pa is not None and pa.spec.mode != "UNSET":
                mode, source, level = pa.spec.mode, pa, lvl
        if wl is not None and wl.spec.port_level_mtls:
            port_mode = wl.spec.port_level_mtls.get(ctx.port)
            if port_mode is not None and port_mode.mode != "UNSET":
                mode, source, level = port_mode.mode, wl, f"port {ctx.port}"
        decider = source or wl or ns or mesh
        assert decider is not None
        ref = policy_ref(decider)
        notes: list[str] = []
        if mode == "DISABLE":
            notes.append(
                f"PeerAuthentication {ref.namespace}/{ref.name} sets DISABLE, which ambient does not "
                "support: treated as PERMISSIVE (mTLS between mesh workloads still happens)"
            )
            mode = "PERMISSIVE"
        if mode == "STRICT":
            if ctx.src.principal is None:
                return Decision.deny(
                    f"PeerAuthentication {ref.namespace}/{ref.name} requires mTLS ({level} STRICT) and this "
                    f"connection is plaintext (ztunnel: explicitly denied by: {self.root}/{STATIC_STRICT})",
                    api=Api.ISTIO,
                    policy=ref,
                    drop_reason=DropReason.UNENCRYPTED,
                    notes=tuple(notes),
                )
            return Decision.allow(
                f"mTLS as PeerAuthentication {ref.namespace}/{ref.name} requires ({level} STRICT)",
                api=Api.ISTIO,
                policy=ref,
                notes=tuple(notes),
            )
        how = "mTLS" if ctx.src.principal is not None else "plaintext"
        return Decision.allow(
            f"{how} accepted: PeerAuthentication {ref.namespace}/{ref.name} leaves {level} mode PERMISSIVE",
            api=Api.ISTIO,
            policy=ref,
            notes=tuple(notes),
        )

    def _peer_levels(self, namespace: str, labels: Mapping[str, str]) -> _PeerLevels:
        """The mesh, namespace and workload PeerAuthentication for a workload (IS
        convertedSelectorPeerAuthentications: selector policies in the root namespace are ignored)."""
        mesh = self._oldest(p for p in self._peer if p.namespace == self.root and not p.spec.has_selector)
        if namespace == self.root:
            return mesh, None, None
        ns = self._oldest(p for p in self._peer if p.namespace == namespace and not p.spec.has_selector)
        wl = self._oldest(
            p
            for p in self._peer
            if p.namespace == namespace
            and p.spec.selector is not None
            and p.spec.has_selector
            and LabelSelector.from_labels(p.spec.selector.match_labels).matches(labels)
        )
        return mesh, ns, wl

    @staticmethod
    def _oldest(candidates: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
        """The oldest wins (creationTimestamp); manifests carry none, so the first in order."""
        return next(iter(candidates), None)
