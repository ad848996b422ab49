"""The signing core: SVID shape, lifetime, refusals, user-supplied roots, and root rotation."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nodemesh.ca import (
    CertificateAuthority,
    CertificateRequestError,
    RootCA,
    SpiffeId,
    build_csr,
    generate_key,
    key_pem,
    load_pem_chain,
)
from nodemesh.ca.bundle import spiffe_ids_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORDERS = SpiffeId("cluster.local", "shop", "orders")
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(RootCA.generate("cluster.local", NOW))


def test_svid_has_exactly_one_uri_san_and_default_24h_lifetime(ca: CertificateAuthority) -> None:
    """Reference §1.2: ECDSA P-256 keys, a URI SAN `spiffe://<td>/ns/<ns>/sa/<sa>`, sent with
    `validity_duration=SECRET_TTL (default 24h)`; ztunnel's parser wants exactly that URI."""
    issued = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    leaf = issued.certificate
    assert spiffe_ids_of(leaf) == ["spiffe://cluster.local/ns/shop/sa/orders"]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280 §4.2.1.6: an empty subject needs a critical SAN
    assert leaf.subject == x509.Name([])
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(issued.chain_pem) == 2 and issued.chain_pem[-1] == ca.signer.cert_pem  # leaf first, root last
    root_key = ca.signer.cert.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey) and root_key.curve.name == "secp256r1"
    assert ca.bundle.verify(load_pem_chain("".join(issued.chain_pem)), NOW + timedelta(hours=1)) == ORDERS


def test_expired_svid_does_not_verify(ca: CertificateAuthority) -> None:
    """A certificate is only trusted inside its validity period (WebPKI chain check, §1.2)."""
    issued = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    with pytest.raises(CertificateRequestError, match="not valid"):
        ca.bundle.verify(load_pem_chain("".join(issued.chain_pem)), NOW + timedelta(hours=25))


def test_the_ca_decides_the_identity_not_the_csr(ca: CertificateAuthority) -> None:
    """istio/api ca.proto: "the server side may overwrite any requested certificate field based
    on its policies"; a CSR claiming another identity than the authorized one is refused."""
    with pytest.raises(CertificateRequestError, match="asks for"):
        ca.sign_workload(build_csr(generate_key(), FRONTEND), ORDERS, NOW)


def test_lifetime_above_the_maximum_is_refused(ca: CertificateAuthority) -> None:
    """Istio: "requested TTL ... is greater than the max allowed TTL" (MAX_WORKLOAD_CERT_TTL)."""
    with pytest.raises(CertificateRequestError, match="greater than the max allowed TTL"):
        ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW, timedelta(days=91))
    short = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW, timedelta(hours=1))
    assert short.not_after == NOW + timedelta(hours=1)


def test_certificates_are_valid_from_two_minutes_before_signing(ca: CertificateAuthority) -> None:
    """istio/istio#32176 "Handle clock skew in CA signing": `NotBefore:
    now.Add(-ClockSkewGracePeriod)` (2 minutes), `NotAfter: now.Add(ttl)`: a verifier whose clock
    is up to 2 minutes behind the CA's accepts a fresh SVID; the lifetime still ends at now + ttl."""
    issued = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    assert issued.not_before == NOW - timedelta(minutes=2)
    assert issued.not_after == NOW + timedelta(hours=24)
    chain = load_pem_chain("".join(issued.chain_pem))
    assert ca.bundle.verify(chain, NOW - timedelta(seconds=90)) == ORDERS  # a verifier 90 s behind
    with pytest.raises(CertificateRequestError, match="not valid"):
        ca.bundle.verify(chain, NOW - timedelta(minutes=3))


def test_garbage_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRequestError, match="cannot parse the CSR"):
        ca.sign_workload("not a csr", ORDERS, NOW)


def test_spiffe_id_needs_exactly_five_parts() -> None:
    """ZT:src/identity/manager.rs: exactly 5 `/`-separated parts, `ns` and `sa` literals."""
    assert SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/orders") == ORDERS
    for bad in (
        "spiffe://cluster.local/ns/shop",
        "spiffe://td/ns/a/sa/b/extra",
        "https://td/ns/a/sa/b",
        "spiffe://td/x/a/sa/b",
    ):
        with pytest.raises(ValueError):
            SpiffeId.parse(bad)


def test_user_supplied_root_is_used_and_checked(tmp_path: Path) -> None:
    """`--ca-cert/--ca-key`: a CA certificate whose key matches is used to sign; a leaf
    certificate or a mismatched key is refused."""
    user = RootCA.generate("cluster.local", NOW)
    loaded = RootCA.from_pem(user.cert_pem.encode(), user.key_pem.encode())
    ca = CertificateAuthority.create(loaded)
    issued = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    assert issued.certificate.issuer == user.cert.subject
    other = RootCA.generate("cluster.local", NOW)
    with pytest.raises(CertificateRequestError, match="does not match"):
        RootCA.from_pem(user.cert_pem.encode(), other.key_pem.encode())
    leaf_key = generate_key()
    leaf = ca.sign_workload(build_csr(leaf_key, ORDERS), ORDERS, NOW)
    with pytest.raises(CertificateRequestError, match="not a CA"):
        RootCA.from_pem(leaf.cert_pem.encode(), key_pem(leaf_key).encode())


def test_root_rotation_is_two_phase_and_keeps_old_certificates_valid() -> None:
    """Rotation with overlap: phase 1 trusts the new root while still signing with the old one;
    phase 2 signs with the new root; certificates of both roots verify against the bundle, and
    a bundle without the new root would reject the new certificates (why phase 1 comes first)."""
    old_root = RootCA.generate("cluster.local", NOW)
    ca = CertificateAuthority.create(old_root)
    before = ca.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    new_root = RootCA.generate("cluster.local", NOW, generation=2)
    phase1 = ca.trust(new_root)
    assert phase1.signer == old_root and len(phase1.bundle.roots) == 2
    during = phase1.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    assert during.chain_pem[-1] == old_root.cert_pem
    phase2 = phase1.rotate(new_root)
    after = phase2.sign_workload(build_csr(generate_key(), ORDERS), ORDERS, NOW)
    assert after.chain_pem[-1] == new_root.cert_pem
    assert phase2.bundle.fingerprints[0] == new_root.fingerprint
    for issued in (before, during, after):
        assert phase2.bundle.verify(load_pem_chain("".join(issued.chain_pem)), NOW) == ORDERS
    with pytest.raises(CertificateRequestError):
        ca.bundle.verify(load_pem_chain("".join(after.chain_pem)), NOW)


def _tls_files(tmp_path: Path, name: str, ca: CertificateAuthority, identity: SpiffeId) -> tuple[Path, Path]:
    key = generate_key()
    issued = ca.sign_workload(build_csr(key, identity), identity, datetime.now(UTC) - timedelta(minutes=1))
    cert = tmp_path / f"{name}.crt"
    keyfile = tmp_path / f"{name}.key"
    cert.write_text("".join(issued.chain_pem[:-1]))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, keyfile


def _context(server: bool, files: tuple[Path, Path], bundle_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE: the URI SAN is checked, never a DNS name (§1.2)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(*files)
    ctx.load_verify_locations(cadata=bundle_pem)
    return ctx


def _pump(
    client: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO],
    server: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO],
) -> None:
    """Run both handshakes over in-memory BIOs (the real OpenSSL TLS stack, no sockets)."""
    (a, a_in, a_out), (b, b_in, b_out) = client, server
    done = {id(a): False, id(b): False}
    for _ in range(20):
        for obj in (a, b):
            if not done[id(obj)]:
                try:
                    obj.do_handshake()
                    done[id(obj)] = True
                except ssl.SSLWantReadError:
                    pass
        b_in.write(a_out.read())
        a_in.write(b_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def peer_sans(obj: ssl.SSLObject) -> list[tuple[str, str]]:
    cert = obj.getpeercert()
    assert cert is not None
    return [tuple(x) for x in cert["subjectAltName"]]  # type: ignore[misc]


def test_mtls_across_a_root_rotation_with_real_tls(tmp_path: Path) -> None:
    """Reference §1.2: TLS 1.3, both sides present SVIDs and verify the chain to the bundle.
    A connection set up before the rotation stays usable after it, and a new one between an
    old-root and a new-root certificate verifies against the combined bundle (no dropped
    connections, no flag day)."""
    old = CertificateAuthority.create(RootCA.generate("cluster.local", NOW))
    server_files = _tls_files(tmp_path, "server", old, ORDERS)
    client_files = _tls_files(tmp_path, "client", old, FRONTEND)

    def connect(
        server_bundle: str, client_bundle: str, client: tuple[Path, Path]
    ) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
        bios = [ssl.MemoryBIO() for _ in range(4)]
        s = _context(True, server_files, server_bundle).wrap_bio(bios[0], bios[1], server_side=True)
        c = _context(False, client, client_bundle).wrap_bio(bios[2], bios[3])
        _pump((c, bios[2], bios[3]), (s, bios[0], bios[1]))
        return s, c, bios

    s, c, bios = connect(old.bundle.to_pem(), old.bundle.to_pem(), client_files)
    assert s.version() == "TLSv1.3"
    assert ("URI", FRONTEND.uri) in peer_sans(s)

    new_root = RootCA.generate("cluster.local", NOW, generation=3)
    rotated = old.trust(new_root).rotate(new_root)
    # the live connection keeps working after the rotation
    c.write(b"ping")
    bios[0].write(bios[3].read())
    assert s.read(4) == b"ping"
    # a new client with a new-root certificate reaches the old-root server: both trust both roots
    new_client = _tls_files(tmp_path, "client2", rotated, FRONTEND)
    s2, _, _ = connect(rotated.bundle.to_pem(), rotated.bundle.to_pem(), new_client)
    assert ("URI", FRONTEND.uri) in peer_sans(s2)
    # ... which the old bundle alone would refuse
    with pytest.raises(ssl.SSLError):
        connect(old.bundle.to_pem(), rotated.bundle.to_pem(), new_client)
