"""mTLS for HBONE: the contexts both ends use, and the identity checks ztunnel makes.

Upstream (reference §1.2; ZT:src/tls/lib.rs, ZT:src/tls/workload.rs):
- TLS 1.3 only; ALPN `h2` on both ends; the client sends no SNI and does not resume sessions.
- The client presents the SOURCE workload's SVID; the server presents its own workload's SVID.
- The client checks the server (`IdentityVerifier`): a chain to the trust bundle, then the full
  SPIFFE URI SAN must EQUAL one of the expected identities (the destination workload's, or the
  waypoint's). DNS names are not used.
- The server checks the client (`TrustDomainVerifier`): a chain to the trust bundle, then a URI
  SAN in the server's own trust domain. Namespace and service account are left to RBAC.
- A peer's identity comes from its verified certificate and nothing else: `peer_identity` reads
  the URI SAN of the certificate OpenSSL verified, never a header or an address.

Python's `ssl` cannot run a custom verifier inside the handshake, so the SAN checks run right
after it, before a single HTTP/2 byte is sent or read: a connection failing them is aborted with
nothing exchanged but the handshake (the effect rustls' verifiers have). Cipher suites are
OpenSSL's TLS 1.3 defaults (Python cannot set TLS 1.3 suites); ztunnel allows the two AES-GCM.

Key material never touches a disk: `load_cert_chain` reads an anonymous memory file (memfd).
The server sends no session tickets (`num_tickets = 0`): nothing would use them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Collection
from dataclasses import dataclass, field

from nodemesh.errors import NodemeshError

__all__ = [
    "ALPN_H2",
    "CredentialStore",
    "IdentityError",
    "WorkloadCertificate",
    "client_context",
    "identity_uri",
    "peer_identity",
    "principal_of",
    "server_context",
    "trust_domain_of",
    "verify_client_identity",
    "verify_server_identity",
]

ALPN_H2 = "h2"
SPIFFE = "spiffe://"


class IdentityError(NodemeshError):
    """A TLS peer is not who it must be. `response_flag` is ztunnel's metric flag for it."""

    response_flag = "IDENTITY_ERROR"


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A workload's SVID: its SPIFFE id, certificate chain (leaf first, PEM) and private key."""

    identity: str
    chain_pem: str
    key_pem: str = field(repr=False)


def identity_uri(principal: str) -> str:
    """The policy engine's principal (`td/ns/x/sa/y`) as a SPIFFE id (`spiffe://td/ns/x/sa/y`)."""
    return principal if principal.startswith(SPIFFE) else SPIFFE + principal


def principal_of(identity: str) -> str:
    """A SPIFFE id as the policy engine's principal (without `spiffe://`)."""
    return identity[len(SPIFFE) :] if identity.startswith(SPIFFE) else identity


def trust_domain_of(identity: str) -> str:
    """`spiffe://td/ns/x/sa/y` -> `td`."""
    if not identity.startswith(SPIFFE):
        raise ValueError(f"{identity!r} is not a SPIFFE id")
    return identity[len(SPIFFE) :].split("/", 1)[0]


def _load_chain(ctx: ssl.SSLContext, cert: WorkloadCertificate) -> None:
    fd = os.memfd_create("svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, (cert.key_pem + "\n" + cert.chain_pem).encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _common(ctx: ssl.SSLContext, cert: WorkloadCertificate, bundle_pem: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    ctx.set_alpn_protocols([ALPN_H2])
    _load_chain(ctx, cert)
    return ctx


def client_context(cert: WorkloadCertificate, bundle_pem: str) -> ssl.SSLContext:
    """The outbound end: presents the SOURCE workload's SVID; verifies the chain (the SAN is
    checked by `verify_server_identity` after the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # no SNI, no DNS names: identity is the URI SAN
    return _common(ctx, cert, bundle_pem)


def server_context(cert: WorkloadCertificate, bundle_pem: str) -> ssl.SSLContext:
    """The 15008 end: presents the pod's SVID; requires and verifies a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    return _common(ctx, cert, bundle_pem)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[str]:
    """The URI SANs of the peer certificate OpenSSL verified (empty if there is none)."""
    if ssl_object is None:
        return []
    cert = ssl_object.getpeercert()
    if not cert:
        return []
    sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    return [str(value) for kind, value in sans if kind == "URI"]


def _check_alpn(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    if ssl_object.selected_alpn_protocol() != ALPN_H2:
        raise IdentityError(f"ALPN {ssl_object.selected_alpn_protocol()!r} negotiated, h2 required")
    if ssl_object.version() != "TLSv1.3":
        raise IdentityError(f"{ssl_object.version()} negotiated, TLS 1.3 required")


def verify_server_identity(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: Collection[str]
) -> str:
    """The server's identity, if its URI SAN equals one of `expected` exactly; else IdentityError."""
    if ssl_object is None:
        raise IdentityError("not a TLS connection")
    _check_alpn(ssl_object)
    sans = peer_identity(ssl_object)
    for san in sans:
        if san in expected:
            return san
    raise IdentityError(
        f"the server presented {', '.join(sans) or 'no URI SAN'}; expected {', '.join(sorted(expected))}"
    )


def verify_client_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str) -> str:
    """The client's identity: its (single) SPIFFE URI SAN, which must be in `trust_domain`."""
    if ssl_object is None:
        raise IdentityError("not a TLS connection")
    _check_alpn(ssl_object)
    sans = [s for s in peer_identity(ssl_object) if s.startswith(SPIFFE)]
    for san in sans:
        if trust_domain_of(san) == trust_domain:
            return san
    raise IdentityError(
        f"the client presented {', '.join(sans) or 'no SPIFFE id'}, not in trust domain {trust_domain}"
    )


class CredentialStore:
    """The SVIDs of a node's workloads and the trust bundle, as ready-made SSL contexts.

    Contexts are built once per identity and reused by every connection; `update` (rotation)
    replaces them for NEW connections, while established ones keep theirs (as in Istio)."""

    def __init__(self, bundle_pem: str, certificates: Collection[WorkloadCertificate] = ()) -> None:
        self._bundle_pem = bundle_pem
        self._certs: dict[str, WorkloadCertificate] = {}
        self._client: dict[str, ssl.SSLContext] = {}
        self._server: dict[str, ssl.SSLContext] = {}
        for cert in certificates:
            self.update(cert)

    def update(self, cert: WorkloadCertificate) -> None:
        self._certs[cert.identity] = cert
        self._client.pop(cert.identity, None)
        self._server.pop(cert.identity, None)

    def update_bundle(self, bundle_pem: str) -> None:
        self._bundle_pem = bundle_pem
        self._client.clear()
        self._server.clear()

    def remove(self, identity: str) -> None:
        self._certs.pop(identity, None)
        self._client.pop(identity, None)
        self._server.pop(identity, None)

    def _cert(self, identity: str) -> WorkloadCertificate:
        cert = self._certs.get(identity)
        if cert is None:
            raise IdentityError(f"no certificate for {identity} on this node")
        return cert

    def client_context(self, identity: str) -> ssl.SSLContext:
        ctx = self._client.get(identity)
        if ctx is None:
            ctx = self._client[identity] = client_context(self._cert(identity), self._bundle_pem)
        return ctx

    def server_context(self, identity: str) -> ssl.SSLContext:
        ctx = self._server.get(identity)
        if ctx is None:
            ctx = self._server[identity] = server_context(self._cert(identity), self._bundle_pem)
        return ctx
