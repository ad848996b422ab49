"""Where a node proxy gets its workloads' SVIDs and the trust bundle: the `CredentialSource` seam.

In Istio Ambient, ztunnel holds one certificate per identity of the pods on its node, obtained
from the CA with `ImpersonatedIdentity` (reference §1.2, ZT:src/identity/manager.rs
`SecretManager`: a cache keyed by identity, refreshed at half the lifetime). In nodemesh the
node agent does the fetching (`nodemesh.agent.client`, which writes each SVID to
`agents/<node>/certs/<ns>_<sa>.json`), so the node proxy only needs to READ them:

- `AgentCertificates`: the agent's certificate directory plus a trust bundle file. What the
  runtime uses: the node proxy never talks to the CA and never holds a key the agent did not
  obtain for a pod of this node (the CA's node authorization stays the only gate).
- `AuthorityCredentials`: signs directly with a `nodemesh.ca.CertificateAuthority`, bypassing
  node authorization. For tests and standalone runs only.

`NodeCredentials` keeps the proxy's `CredentialStore` in step with a source (see `sync`).

Invariants: a source returns None for an identity it has no usable certificate for (missing or
expired); it never invents one. Time is an argument (`clock`), as everywhere in the CA code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nodemesh.ca.spiffe import SpiffeId
from nodemesh.nodeproxy.tls import CredentialStore, WorkloadCertificate

if TYPE_CHECKING:
    from nodemesh.ca.authority import CertificateAuthority

__all__ = [
    "AgentCertificates",
    "AuthorityCredentials",
    "CredentialSource",
    "CredentialSync",
    "NodeCredentials",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CredentialSource(Protocol):
    """The SVIDs of this node's workloads and the roots to verify peers with."""

    def certificate(self, identity: str) -> WorkloadCertificate | None:
        """The current SVID for a SPIFFE id (`spiffe://td/ns/x/sa/y`), or None if there is none
        usable yet (not issued, or expired)."""
        ...

    def trust_bundle(self) -> str:
        """The trust bundle (PEM roots, concatenated)."""
        ...


@dataclass(slots=True)
class AuthorityCredentials:
    """Issues SVIDs in-process from a CA (tests and standalone use; no node authorization).

    A certificate is issued on first request and re-issued once half its lifetime has passed
    (ztunnel's `refresh_at`, without jitter)."""

    ca: CertificateAuthority
    clock: Clock = _utc_now
    lifetime: timedelta | None = None
    backdate: timedelta = timedelta(minutes=5)
    """Issue with `not_before` this far in the past, so peers with a slightly slow clock accept it."""
    _issued: dict[str, tuple[WorkloadCertificate, datetime]] = field(default_factory=dict)

    def certificate(self, identity: str) -> WorkloadCertificate | None:
        now = self.clock()
        held = self._issued.get(identity)
        if held is not None and now < held[1]:
            return held[0]
        from nodemesh.ca.authority import build_csr, generate_key, key_pem  # cryptography: only here

        sid = SpiffeId.parse(identity)
        key = generate_key()
        issued_at = now - self.backdate
        issued = self.ca.sign_workload(build_csr(key, sid), sid, issued_at, self.lifetime)
        lifetime = self.lifetime or self.ca.default_lifetime
        cert = WorkloadCertificate(identity, "".join(issued.chain_pem), key_pem(key))
        self._issued[identity] = (cert, issued_at + lifetime / 2)
        return cert

    def trust_bundle(self) -> str:
        return self.ca.bundle.to_pem()


@dataclass(slots=True)
class AgentCertificates:
    """The node agent's certificates on disk (`<certs_dir>/<ns>_<sa>.json`, written by
    `nodemesh.agent.disk.AgentDisk`: `{"identity", "chain": [pem, ...], "key", "notAfter", ...}`)
    and a trust bundle file. Files are re-read when their modification time changes."""

    certs_dir: Path
    bundle_path: Path
    clock: Clock = _utc_now
    _cache: dict[Path, tuple[float, WorkloadCertificate, datetime]] = field(default_factory=dict)

    def _path(self, identity: str) -> Path:
        sid = SpiffeId.parse(identity)
        return self.certs_dir / f"{sid.namespace}_{sid.service_account}.json"

    def certificate(self, identity: str) -> WorkloadCertificate | None:
        path = self._path(identity)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                raw = json.loads(path.read_text())
                cert = WorkloadCertificate(str(raw["identity"]), "".join(raw["chain"]), str(raw["key"]))
                not_after = datetime.fromisoformat(str(raw["notAfter"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable certificate %s: %s", path, exc)
                return None
            cached = self._cache[path] = (mtime, cert, not_after)
        _, cert, not_after = cached
        if cert.identity != identity:
            log.warning("%s holds %s, not %s", path, cert.identity, identity)
            return None
        if self.clock() >= not_after:
            return None
        return cert

    def trust_bundle(self) -> str:
        return self.bundle_path.read_text()


@dataclass(frozen=True, slots=True)
class CredentialSync:
    """What one `NodeCredentials.sync` changed."""

    updated: frozenset[str] = frozenset()
    missing: frozenset[str] = frozenset()
    bundle_changed: bool = False


class NodeCredentials:
    """The node proxy's `CredentialStore`, kept in step with a `CredentialSource`.

    `sync(identities)` is the one place certificates move from the source into the store: only
    the identities the node serves; a certificate is replaced only when the source's changed, so
    SSL contexts are rebuilt only on rotation (established connections keep theirs, new ones get
    the new certificate, as in Istio); identities no longer served are dropped."""

    def __init__(self, source: CredentialSource) -> None:
        self.source = source
        self.store = CredentialStore("")
        self._held: dict[str, WorkloadCertificate] = {}
        self._bundle: str | None = None

    def has(self, identity: str) -> bool:
        return identity in self._held

    def sync(self, identities: Collection[str]) -> CredentialSync:
        bundle = self.source.trust_bundle()
        bundle_changed = bundle != self._bundle
        if bundle_changed:
            self.store.update_bundle(bundle)
            self._bundle = bundle
        updated: set[str] = set()
        missing: set[str] = set()
        for identity in identities:
            cert = self.source.certificate(identity)
            if cert is None:
                missing.add(identity)
                continue
            if self._held.get(identity) != cert:
                self.store.update(cert)
                self._held[identity] = cert
                updated.add(identity)
        for identity in set(self._held) - set(identities):
            self.store.remove(identity)
            del self._held[identity]
        return CredentialSync(frozenset(updated), frozenset(missing), bundle_changed)
