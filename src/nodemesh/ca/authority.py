"""The signing core: a root CA that issues workload SVIDs, node credentials and the control
plane's own serving certificate.

Upstream shape (reference §1.2; Istio security/pkg/pki/ca and ZT:src/tls/csr.rs):
- keys are ECDSA P-256;
- a workload certificate (SVID) has an empty subject and exactly one URI SAN,
  `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (marked critical, as RFC 5280 §4.2.1.6 requires
  for an empty subject), is not a CA, and serves both TLS ends (serverAuth + clientAuth);
- the default lifetime is 24 h (`SECRET_TTL`, `DEFAULT_WORKLOAD_CERT_TTL`); a request for more
  than the maximum (Istio `MAX_WORKLOAD_CERT_TTL`, 90 days) is refused, not shortened;
- the identity in the certificate is the one the CA decided (after node authorization), never
  what the CSR claims: "the server side may overwrite any requested certificate field based on
  its policies" (istio/api security/v1alpha1/ca.proto). A CSR that claims a different URI SAN
  is refused rather than silently rewritten, so a confused client learns about it.

Pure: `now` is an argument; the only randomness is the keys' and serial numbers' (from the OS,
as every CA does), injectable through `serials`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodemesh.ca.bundle import TrustBundle, fingerprint, spiffe_ids_of
from nodemesh.ca.errors import CertificateRequestError
from nodemesh.ca.spiffe import NODE_GROUP, NODE_USER_PREFIX, SpiffeId

__all__ = [
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "CertificateAuthority",
    "IssuedCertificate",
    "RootCA",
    "build_csr",
    "check_signature",
    "generate_key",
    "key_pem",
    "spiffe_ids_of",
]

DEFAULT_LIFETIME = timedelta(hours=24)
MAX_LIFETIME = timedelta(days=90)
ROOT_LIFETIME = timedelta(days=3650)
CLOCK_SKEW_GRACE = timedelta(minutes=2)
"""Certificates are valid from this long before they are signed (Istio `ClockSkewGracePeriod`,
istio/istio#32176 "Handle clock skew in CA signing": `NotBefore: now.Add(-ClockSkewGracePeriod)`,
`NotAfter: now.Add(ttl)`): a node whose clock is a little behind the CA's must not find a fresh
SVID "not yet valid" (X.509 times are whole seconds, so even the same clock can be a second behind)."""
NODE_LIFETIME = timedelta(days=365)
SERVER_NAMES = ("istiod.istio-system.svc", "localhost")

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (ztunnel's and Istio's default workload key)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def build_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> str:
    """A PEM CSR carrying the identity as its URI SAN (ZT:src/tls/csr.rs)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed certificate with its chain (leaf first, root last, as Istio answers)."""

    chain_pem: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    serial: int

    @property
    def cert_pem(self) -> str:
        return self.chain_pem[0]

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem[0].encode())


@dataclass(frozen=True, slots=True)
class RootCA:
    """A self-signed root: its certificate and private key."""

    cert: x509.Certificate
    key: SigningKey

    @classmethod
    def generate(cls, trust_domain: str, now: datetime, *, generation: int = 1) -> RootCA:
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"nodemesh root CA {generation}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_GRACE)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem_bytes: bytes) -> RootCA:
        """A user-supplied root (`--ca-cert/--ca-key`): must be a CA whose key matches."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem_bytes, password=None)
        except ValueError as exc:
            raise CertificateRequestError(f"cannot load the CA certificate or key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateRequestError("the CA key must be an ECDSA or RSA private key")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateRequestError("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        cert_public = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public != cert_public:
            raise CertificateRequestError("the CA key does not match the CA certificate")
        return cls(cert, key)

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """Signs with `signer`; `bundle` is what peers trust (the signer's root first)."""

    signer: RootCA
    bundle: TrustBundle
    default_lifetime: timedelta = DEFAULT_LIFETIME
    max_lifetime: timedelta = MAX_LIFETIME
    serials: Callable[[], int] = field(default=x509.random_serial_number, compare=False)

    @classmethod
    def create(cls, signer: RootCA, older_roots: Sequence[x509.Certificate] = ()) -> CertificateAuthority:
        return cls(signer, TrustBundle((signer.cert, *older_roots)))

    def trust(self, new_root: RootCA) -> CertificateAuthority:
        """Phase 1 of a root rotation: trust `new_root` alongside the current roots; keep signing
        with the current one until every node holds the new bundle."""
        return replace(self, bundle=self.bundle.with_root(new_root.cert))

    def rotate(self, new_root: RootCA) -> CertificateAuthority:
        """Phase 2: sign with `new_root` from now on (trusted alongside every earlier root)."""
        return replace(self, signer=new_root, bundle=self.bundle.signed_by(new_root.cert))

    # ---- workload SVIDs -------------------------------------------------------------------
    def sign_workload(
        self, csr_pem: str | bytes, identity: SpiffeId, now: datetime, lifetime: timedelta | None = None
    ) -> IssuedCertificate:
        """Issue an SVID for `identity` (already authorized) from a PEM CSR."""
        csr = self._load_csr(csr_pem)
        claimed = [u for u in _csr_uris(csr) if u != identity.uri]
        if claimed:
            raise CertificateRequestError(
                f"the CSR asks for {claimed[0]!r} but the requested identity is {identity.uri!r}"
            )
        lifetime = self._lifetime(lifetime)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CertificateRequestError("the CSR key must be ECDSA or RSA")
        builder = self._leaf(public_key, x509.Name([]), now, lifetime)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        return self._sign(builder, now, lifetime)

    # ---- node credentials and the control plane's serving certificate ---------------------
    def sign_node(
        self,
        node: str,
        public_key: ec.EllipticCurvePublicKey,
        now: datetime,
        lifetime: timedelta = NODE_LIFETIME,
    ) -> IssuedCertificate:
        """A node agent's client certificate: subject CN `system:node:<node>`, O `system:nodes`
        (Kubernetes' node identity), no URI SAN, clientAuth only."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_GROUP),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{NODE_USER_PREFIX}{node}"),
            ]
        )
        builder = self._leaf(public_key, subject, now, lifetime)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"{node}.nodes.nodemesh.internal")]), critical=False
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._sign(builder, now, lifetime)

    def sign_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        now: datetime,
        *,
        trust_domain: str,
        names: Sequence[str] = SERVER_NAMES,
        addresses: Sequence[str] = ("127.0.0.1",),
        lifetime: timedelta = NODE_LIFETIME,
    ) -> IssuedCertificate:
        """The control plane's serving certificate (istiod's DNS name, loopback, its SPIFFE id)."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        sans.append(x509.UniformResourceIdentifier(SpiffeId(trust_domain, "istio-system", "istiod").uri))
        builder = self._leaf(public_key, x509.Name([]), now, lifetime)
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        return self._sign(builder, now, lifetime)

    # ---- internals ----------------------------------------------------------------------
    def _lifetime(self, requested: timedelta | None) -> timedelta:
        if requested is None or requested <= timedelta(0):
            return self.default_lifetime
        if requested > self.max_lifetime:
            raise CertificateRequestError(
                f"requested TTL {requested} is greater than the max allowed TTL {self.max_lifetime}"
            )
        return requested

    @staticmethod
    def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise CertificateRequestError(f"cannot parse the CSR: {exc}") from exc
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR signature is invalid")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in ("secp256r1", "secp384r1"):
            raise CertificateRequestError(f"unsupported curve {key.curve.name}")
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise CertificateRequestError("RSA keys must have at least 2048 bits")
        return csr

    def _leaf(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        subject: x509.Name,
        now: datetime,
        lifetime: timedelta,
    ) -> x509.CertificateBuilder:
        issuer = self.signer.cert
        not_after = now + lifetime
        if not_after > issuer.not_valid_after_utc:
            raise CertificateRequestError(
                f"a certificate valid until {not_after.isoformat()} would outlive the root CA"
            )
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(self.serials())
            .not_valid_before(now - CLOCK_SKEW_GRACE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(aki, critical=False)
        )

    def _sign(
        self, builder: x509.CertificateBuilder, now: datetime, lifetime: timedelta
    ) -> IssuedCertificate:
        cert = builder.sign(self.signer.key, hashes.SHA256())
        leaf = cert.public_bytes(serialization.Encoding.PEM).decode()
        not_before = now - CLOCK_SKEW_GRACE
        return IssuedCertificate((leaf, self.signer.cert_pem), not_before, now + lifetime, cert.serial_number)


def _csr_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def check_signature(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer` signed `cert` (used to tell which root a certificate chains to)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
