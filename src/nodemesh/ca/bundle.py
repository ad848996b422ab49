"""The trust bundle: every root a peer's certificate may chain to, the signing root first.

Root rotation works by overlap: a new root is added alongside the old one (`with_root`), the
bundle is pushed to every node, and only then does the CA sign with the new root (`signed_by`). A connection
set up with an old-root certificate keeps verifying (its root is still trusted) and is never
torn down; new certificates chain to the new root; once every old-root certificate has expired
the old root can be dropped (`without`).

Verification follows ztunnel's checks (reference §1.2): a chain to one of the roots, valid at
`now`, and exactly one URI SAN that parses as a SPIFFE workload identity. Pure: `now` is an
argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from nodemesh.ca.errors import CertificateRequestError
from nodemesh.ca.spiffe import SpiffeId

__all__ = ["TrustBundle", "fingerprint", "load_pem_chain", "spiffe_ids_of"]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_pem_chain(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificates(data)


def spiffe_ids_of(cert: x509.Certificate) -> list[str]:
    """Every URI SAN of `cert` (empty if it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """An ordered set of roots: `roots[0]` is the one the CA signs with now."""

    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("a trust bundle needs at least one root")

    @classmethod
    def from_pem(cls, pem: str | bytes) -> TrustBundle:
        return cls(tuple(load_pem_chain(pem)))

    def to_pem(self) -> str:
        return "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots)

    @property
    def pems(self) -> tuple[str, ...]:
        return tuple(r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint(r) for r in self.roots)

    def with_root(self, root: x509.Certificate) -> TrustBundle:
        """Trust `root` too (appended; a no-op if already trusted)."""
        if fingerprint(root) in self.fingerprints:
            return self
        return TrustBundle((*self.roots, root))

    def signed_by(self, root: x509.Certificate) -> TrustBundle:
        """The same roots plus `root`, with `root` first (the signing root)."""
        kept = tuple(r for r in self.roots if fingerprint(r) != fingerprint(root))
        return TrustBundle((root, *kept))

    def without(self, fingerprints: Iterable[str]) -> TrustBundle:
        """Drop retired roots (never the signing one)."""
        drop = set(fingerprints) - {fingerprint(self.roots[0])}
        return TrustBundle(tuple(r for r in self.roots if fingerprint(r) not in drop))

    def merged(self, other: TrustBundle) -> TrustBundle:
        """Our roots first, then any of `other`'s we lack."""
        have = set(self.fingerprints)
        return TrustBundle(self.roots + tuple(r for r in other.roots if fingerprint(r) not in have))

    def verify(self, chain: Sequence[x509.Certificate], now: datetime) -> SpiffeId:
        """Verify a leaf-first chain against this bundle at `now`; return its SPIFFE identity.

        Raises CertificateRequestError naming what failed (untrusted chain, expired, not exactly
        one URI SAN, not a SPIFFE workload identity)."""
        if not chain:
            raise CertificateRequestError("empty certificate chain")
        leaf, *rest = chain
        intermediates = [c for c in rest if fingerprint(c) not in set(self.fingerprints)]
        verifier = PolicyBuilder().store(Store(list(self.roots))).time(now).build_client_verifier()
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise CertificateRequestError(f"certificate does not verify against the bundle: {exc}") from exc
        uris = spiffe_ids_of(leaf)
        if len(uris) != 1:
            raise CertificateRequestError(f"expected exactly one URI SAN, found {len(uris)}")
        try:
            return SpiffeId.parse(uris[0])
        except ValueError as exc:
            raise CertificateRequestError(str(exc)) from exc
