"""mTLS contexts and identity checks (reference §1.2)."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from nodemesh.ca import CertificateAuthority
from nodemesh.nodeproxy.testbed import issue_certificate
from nodemesh.nodeproxy.tls import (
    IdentityError,
    client_context,
    server_context,
    verify_client_identity,
    verify_server_identity,
)

from .conftest import NOW

SERVER = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT = "spiffe://cluster.local/ns/bench/sa/client"


def _handshake(
    ca: CertificateAuthority, client_ctx: ssl.SSLContext
) -> tuple[ssl.SSLSocket | None, ssl.SSLSocket | None, BaseException | None]:
    srv_ctx = server_context(issue_certificate(ca, SERVER, NOW), ca.bundle.to_pem())
    a, b = socket.socketpair()
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            result["server"] = srv_ctx.wrap_socket(b, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            result["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        client = client_ctx.wrap_socket(a, server_hostname=None)
    except (ssl.SSLError, OSError) as exc:
        client = None
        result["client_error"] = exc
        a.close()
    t.join(5)
    server = result.get("server")
    err = result.get("client_error") or result.get("server_error")
    return client, server, err  # type: ignore[return-value]


def test_tls13_alpn_h2_and_identities_from_the_certificates(ca: CertificateAuthority) -> None:
    """Reference §1.2: TLS 1.3 only, ALPN h2 both ends; the client checks the server's URI SAN
    equals the expected identity, the server checks the client's trust domain."""
    ctx = client_context(issue_certificate(ca, CLIENT, NOW), ca.bundle.to_pem())
    client, server, err = _handshake(ca, ctx)
    assert err is None and client is not None and server is not None
    try:
        assert client.version() == "TLSv1.3" and client.selected_alpn_protocol() == "h2"
        assert verify_server_identity(client, {SERVER}) == SERVER
        with pytest.raises(IdentityError):
            verify_server_identity(client, {"spiffe://cluster.local/ns/bench/sa/other"})
        assert verify_client_identity(server, "cluster.local") == CLIENT
        with pytest.raises(IdentityError):
            verify_client_identity(server, "other.domain")
    finally:
        client.close()
        server.close()


def test_tls12_is_refused(ca: CertificateAuthority) -> None:
    """Reference §1.2: "TLS 1.3 only" (TLS12_ENABLED is off by default)."""
    ctx = client_context(issue_certificate(ca, CLIENT, NOW), ca.bundle.to_pem())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client, server, err = _handshake(ca, ctx)
    assert err is not None
    for s in (client, server):
        if s is not None:
            s.close()


def test_a_certificate_from_another_root_is_refused(ca: CertificateAuthority) -> None:
    """Reference §1.2: both ends verify "a WebPKI chain to the root bundle" first."""
    from nodemesh.ca import RootCA

    other = CertificateAuthority.create(RootCA.generate("cluster.local", NOW))
    ctx = client_context(issue_certificate(other, CLIENT, NOW), other.bundle.to_pem())
    client, server, err = _handshake(ca, ctx)
    assert err is not None
    for s in (client, server):
        if s is not None:
            s.close()
