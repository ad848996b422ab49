"""A minimal HBONE client for the waypoint tests: one TLS connection, one CONNECT, its status.

    python waypoint_client.py HOST:PORT AUTHORITY [--svid FILE --bundle FILE | --self-signed ID]

Prints one JSON line: {"status": N} when the server answered the CONNECT, or {"refused": "..."}
when the TLS handshake or the connection failed first (a client certificate the server does
not accept). Uses the node proxy's own TLS settings (`nodeproxy.tls.client_context`) and the
sans-IO HBONE client, so the only variable is the identity presented.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodemesh.nodeproxy.tls import WorkloadCertificate, client_context
from nodemesh.protocols import HboneClient, HboneSettings, ResponseReceived, StreamReset


def _self_signed(identity: str) -> WorkloadCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "not the mesh")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return WorkloadCertificate(identity, cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("authority")
    parser.add_argument("--svid")
    parser.add_argument("--bundle")
    parser.add_argument("--self-signed")
    args = parser.parse_args()
    if args.svid:
        raw = json.loads(Path(args.svid).read_text())
        cert = WorkloadCertificate(raw["identity"], "".join(raw["chain"]), raw["key"])
        ctx = client_context(cert, Path(args.bundle).read_text())
    elif args.self_signed:
        cert = _self_signed(args.self_signed)
        ctx = client_context(cert, cert.chain_pem)
        ctx.verify_mode = ssl.CERT_NONE
    else:  # no client certificate at all
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
    host, _, port = args.server.rpartition(":")
    try:
        raw_sock = socket.create_connection((host, int(port)), timeout=5)
        sock = ctx.wrap_socket(raw_sock, server_hostname=None)
        conn = HboneClient(HboneSettings.client())
        conn.initiate(time.monotonic())
        sid = conn.open_stream(args.authority, ())
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                print(json.dumps({"refused": "connection closed before a response"}))
                return
            for ev in conn.receive_data(data, time.monotonic()):
                if isinstance(ev, ResponseReceived) and ev.stream_id == sid:
                    print(json.dumps({"status": ev.status}))
                    return
                if isinstance(ev, StreamReset) and ev.stream_id == sid:
                    print(json.dumps({"refused": f"stream reset {ev.error_code}"}))
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (OSError, ssl.SSLError) as exc:
        print(json.dumps({"refused": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main()
