"""The HBONE data path end to end on real sockets: client app -> outbound -> mTLS HTTP/2 CONNECT
-> inbound -> server app, with real TLS (a test CA from nodemesh.ca) and a real HTTP client."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import textwrap
from collections.abc import Callable

import pytest

from nodemesh.nodeproxy import Direction, FlowVerdict, PoolSettings, SecurityPolicy, StreamRelay
from nodemesh.nodeproxy.testbed import issue_certificate
from nodemesh.nodeproxy.tls import client_context
from nodemesh.protocols import HboneClient
from nodemesh.protocols.frames import CONNECTION_PREFACE, FrameType, encode_frame, encode_settings

from .conftest import NOW, Mesh, request, run

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

ALLOW_OTHER_ONLY = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: only-other, namespace: bench}
    spec:
      selector: {matchLabels: {app: server}}
      action: ALLOW
      rules:
        - from: [{source: {principals: ["cluster.local/ns/bench/sa/other"]}}]
    """
)
DENY_CLIENT = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-client, namespace: bench}
    spec:
      selector: {matchLabels: {app: server}}
      action: DENY
      rules:
        - from: [{source: {principals: ["cluster.local/ns/bench/sa/client"]}}]
    """
)
STRICT = textwrap.dedent(
    """\
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: strict, namespace: bench}
    spec: {mtls: {mode: STRICT}}
    """
)


@needs_curl
@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_curl_reaches_the_app_through_hbone(mesh_factory: Callable[..., Mesh], loop_kind: str) -> None:
    """Issue 5 / reference §1.3: outbound opens mTLS to `<pod IP>:15008` and a CONNECT with
    `:authority = <pod IP>:<port>`; inbound connects to the app "with the original client IP as
    source (IP_TRANSPARENT)" and answers 200; each end writes one flow record, identities from
    the verified certificates, `connection_security_policy=mutual_tls`."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            code, out = await mesh.curl()
            assert code == 0, out
            assert "200 OK" in out and out.endswith("hello\n")
            assert f"x-peer: {mesh.spec.client_ip}" in out  # the app saw the client pod's address
            await mesh.settle(2)
        finally:
            await mesh.close()
        by_dir = {r.direction: r for r in mesh.sink.records}
        out_rec, in_rec = by_dir[Direction.OUTBOUND], by_dir[Direction.INBOUND]
        for r in (out_rec, in_rec):
            assert r.verdict is FlowVerdict.FORWARDED and r.error is None
            assert r.security_policy is SecurityPolicy.MUTUAL_TLS
            assert r.dst_hbone_addr == f"{mesh.spec.server_ip}:{mesh.spec.app_port}"
            assert r.bytes_received == len(out.split("\r\n\r\n", 1)[0]) + 4 + len("hello\n")
        assert out_rec.dst_addr == f"{mesh.spec.server_ip}:15008"
        assert out_rec.dst_identity == mesh.spec.identity("server")
        assert in_rec.src_identity == mesh.spec.identity("client")
        assert out_rec.bytes_sent == in_rec.bytes_sent > 0
        assert (in_rec.src_workload, in_rec.dst_workload) == ("client", "server")

    run(body, loop_kind)


def test_pool_carries_many_streams_over_one_tls_connection(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.5 (ZT:src/proxy/pool.rs): streams share a pooled connection per (source
    identity, destination identity, destination address); a new connection opens only when the
    existing ones carry 100 streams (POOL_MAX_STREAMS_PER_CONNECTION)."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            conns = [await mesh.connect() for _ in range(60)]
            answers = await asyncio.gather(*(request(r, w) for r, w in conns))
            assert all(a.endswith(b"hello\n") for a in answers)
            assert mesh.pool.connections_opened == 1
            (tunnel,) = mesh.pool.connections()
            assert len(tunnel.handlers) == 60
            more = [await mesh.connect() for _ in range(50)]
            await asyncio.gather(*(request(r, w) for r, w in more))
            assert mesh.pool.connections_opened == 2
            assert sorted(len(t.handlers) for t in mesh.pool.connections()) == [10, 100]
            assert len(mesh.inbound.tunnels) == 2
            for _, w in conns + more:
                w.close()
            await mesh.settle(2 * 110)
            # sequential new connections reuse the warm connection: no new handshake
            for _ in range(5):
                r, w = await mesh.connect()
                await request(r, w)
                w.close()
            assert mesh.pool.connections_opened == 2
        finally:
            await mesh.close()

    run(body)


def test_idle_pooled_connection_is_evicted(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.5: a pooled connection without streams is released after the idle timeout
    (POOL_UNUSED_RELEASE_TIMEOUT); the next request opens a new one."""
    mesh = mesh_factory(pool_settings=PoolSettings(idle_timeout=0.2))

    async def body() -> None:
        await mesh.start()
        try:
            r, w = await mesh.connect()
            await request(r, w)
            w.close()
            await mesh.settle(2)
            assert len(mesh.pool.connections()) == 1
            await asyncio.sleep(0.5)
            assert mesh.pool.connections() == []
            r, w = await mesh.connect()
            await request(r, w)
            w.close()
            assert mesh.pool.connections_opened == 2
        finally:
            await mesh.close()

    run(body)


@needs_curl
def test_authorization_deny_is_401_and_the_record_names_the_policy(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.3/§4.5: the destination evaluates its AuthorizationPolicies with the peer
    certificate's principal; "allow policies exist, but none allowed" is answered 401 and the
    stream closed; curl fails; both records say DROPPED, the inbound one names the policy."""
    mesh = mesh_factory(extra_yaml=ALLOW_OTHER_ONLY)

    async def body() -> None:
        await mesh.start()
        try:
            code, out = await mesh.curl()
            assert code != 0, out
            await mesh.settle(2)
        finally:
            await mesh.close()
        assert not mesh.apps  # the app never saw a connection
        by_dir = {r.direction: r for r in mesh.sink.records}
        inbound, outbound = by_dir[Direction.INBOUND], by_dir[Direction.OUTBOUND]
        assert inbound.verdict is FlowVerdict.DROPPED and inbound.response_flags == "DENY"
        assert inbound.policy is not None and "only-other" in inbound.policy
        assert inbound.src_identity == mesh.spec.identity("client")
        assert outbound.verdict is FlowVerdict.DROPPED and outbound.error == "http status: 401"

    run(body)


def test_policy_change_closes_a_live_connection(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.7 (ZT:src/proxy/connection_manager.rs): "re-evaluates tracked inbound
    connections whenever policy changes and closes any that are now denied"."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            r, w = await mesh.connect()
            assert (await request(r, w)).endswith(b"hello\n")
            assert len(mesh.inbound.registry) == 1
            closed = mesh.update_policy(DENY_CLIENT)
            assert closed == 1
            async with asyncio.timeout(5):
                assert await r.read() == b""  # the client's connection was closed
            await mesh.settle(2)
            w.close()
            # and a new connection is now refused
            r2, w2 = await mesh.connect()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await request(r2, w2)
            w2.close()
        finally:
            await mesh.close()
        inbound = [x for x in mesh.sink.records if x.direction is Direction.INBOUND]
        assert inbound[0].verdict is FlowVerdict.DROPPED
        assert inbound[0].policy is not None and "deny-client" in inbound[0].policy
        assert inbound[0].error is not None and "policy rejection" in inbound[0].error
        assert inbound[0].bytes_received > 0

    run(body)


def test_a_server_with_the_wrong_identity_is_refused(mesh_factory: Callable[..., Mesh], ca: object) -> None:
    """Reference §1.2 (IdentityVerifier): the client checks that the server certificate's URI SAN
    EQUALS the expected destination identity; a valid certificate for another workload of the
    same mesh is refused before any CONNECT is sent."""
    from nodemesh.ca import CertificateAuthority

    assert isinstance(ca, CertificateAuthority)
    impostor = issue_certificate(ca, "spiffe://cluster.local/ns/bench/sa/impostor", NOW)
    mesh = mesh_factory(
        server_cert=type(impostor)(
            "spiffe://cluster.local/ns/bench/sa/server", impostor.chain_pem, impostor.key_pem
        )
    )

    async def body() -> None:
        await mesh.start()
        try:
            r, w = await mesh.connect()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await request(r, w)
            w.close()
            await mesh.settle(1)
        finally:
            await mesh.close()
        (rec,) = [x for x in mesh.sink.records if x.direction is Direction.OUTBOUND]
        assert rec.verdict is FlowVerdict.DROPPED and rec.response_flags == "IDENTITY_ERROR"
        assert rec.error is not None and "impostor" in rec.error
        assert mesh.pool.connections() == [] and not mesh.apps
        assert not [x for x in mesh.sink.records if x.direction is Direction.INBOUND]

    run(body)


def test_a_client_of_another_trust_domain_is_refused(mesh_factory: Callable[..., Mesh], ca: object) -> None:
    """Reference §1.2 (TrustDomainVerifier): the server requires a client certificate chaining to
    the bundle whose URI SAN is in the server's own trust domain."""
    from nodemesh.ca import CertificateAuthority

    assert isinstance(ca, CertificateAuthority)
    foreign = issue_certificate(ca, "spiffe://evil.example/ns/bench/sa/client", NOW)
    mesh = mesh_factory(
        client_cert=type(foreign)(
            "spiffe://cluster.local/ns/bench/sa/client", foreign.chain_pem, foreign.key_pem
        )
    )

    async def body() -> None:
        await mesh.start()
        try:
            r, w = await mesh.connect()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await request(r, w)
            w.close()
            await mesh.settle(1)
        finally:
            await mesh.close()
        assert not mesh.apps
        assert not [x for x in mesh.sink.records if x.direction is Direction.INBOUND]
        (rec,) = mesh.sink.records
        assert rec.verdict is FlowVerdict.DROPPED

    run(body)


def test_a_client_without_a_certificate_fails_the_handshake(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.2: mTLS always — the server requires the client's certificate."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            r, w = await asyncio.open_connection(mesh.spec.server_ip, 15008, ssl=ctx, server_hostname="")
            w.write(CONNECTION_PREFACE + encode_settings())
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await w.drain()
                assert await r.read() == b""
                raise ConnectionError("closed")
            w.close()
        finally:
            await mesh.close()

    run(body)


def test_malformed_frames_close_only_that_connection(mesh_factory: Callable[..., Mesh]) -> None:
    """RFC 9113 §5.4.1: a connection error ends that connection (GOAWAY, close); the inbound's
    other HBONE connections and their streams are unaffected."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            r, w = await mesh.connect()
            assert (await request(r, w)).endswith(b"hello\n")
            ctx = client_context(
                issue_certificate(mesh.ca, mesh.spec.identity("client"), NOW), mesh.ca.bundle.to_pem()
            )
            br, bw = await asyncio.open_connection(mesh.spec.server_ip, 15008, ssl=ctx, server_hostname="")
            bad = encode_frame(FrameType.DATA, 0, 0, b"on stream zero")
            bw.write(CONNECTION_PREFACE + encode_settings() + bad)
            await bw.drain()
            async with asyncio.timeout(5):
                answer = await br.read()  # server SETTINGS, SETTINGS ACK, GOAWAY, then EOF
            assert bytes([FrameType.GOAWAY]) in answer
            bw.close()
            assert (await request(r, w)).endswith(b"hello\n")  # the other connection still works
            w.close()
            assert len(mesh.inbound.tunnels) == 1
        finally:
            await mesh.close()

    run(body)


def test_upstream_connect_failure_answers_503(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.3: the server replies 200 only after the upstream TCP connect succeeded;
    503 when it fails."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start(app=False)
        try:
            r, w = await mesh.connect()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await request(r, w)
            w.close()
            await mesh.settle(2)
        finally:
            await mesh.close()
        by_dir = {x.direction: x for x in mesh.sink.records}
        assert by_dir[Direction.INBOUND].response_flags == "CONNECT"
        assert by_dir[Direction.INBOUND].verdict is FlowVerdict.DROPPED
        assert by_dir[Direction.OUTBOUND].error == "http status: 503"

    run(body)


def test_authority_that_is_not_this_pod_is_400(mesh_factory: Callable[..., Mesh]) -> None:
    """Reference §1.3 (validate_destination): 400 when the authority IP is not the IP the 15008
    connection arrived on."""
    mesh = mesh_factory()

    async def body() -> None:
        await mesh.start()
        try:
            from nodemesh.nodeproxy import PoolKey

            key = PoolKey(
                mesh.spec.identity("client"), mesh.spec.identity("server"), (mesh.spec.server_ip, 15008)
            )
            tunnel = await mesh.pool.checkout(key)
            relay = StreamRelay(tunnel)
            relay.stream_id = mesh.pool.open_stream(tunnel, "127.0.0.1:18080", (), relay)
            assert await relay.response == 400
            relay.abandon("test")
            await mesh.settle(1)
        finally:
            await mesh.close()
        (rec,) = mesh.sink.records
        assert rec.error is not None and "ip mismatch" in rec.error

    run(body)


def test_bulk_transfer_is_intact_with_backpressure(mesh_factory: Callable[..., Mesh]) -> None:
    """Flow control sized for bulk transfer (4 MiB stream / 16 MiB connection windows): many
    windows' worth of bytes cross intact while the reader is slower than the writer."""
    mesh = mesh_factory()
    size = 24 * 1024 * 1024

    async def body() -> None:
        await mesh.start(body=bytes(range(256)) * (size // 256))
        try:
            r, w = await mesh.connect()
            w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            got = 0
            expected = bytes(range(256)) * 16
            while got < size:
                chunk = await r.read(64 * 1024)
                assert chunk, "connection ended early"
                assert (
                    chunk
                    == (expected * (len(chunk) // len(expected) + 2))[got % 256 : got % 256 + len(chunk)]
                )
                got += len(chunk)
                if got % (4 * 1024 * 1024) < 64 * 1024:
                    await asyncio.sleep(0.05)  # a slow reader: the sender must wait, not buffer
            assert b"200 OK" in head
            w.close()
        finally:
            await mesh.close()

    run(body)


def test_client_library_refuses_push_from_the_inbound() -> None:
    """Push is disabled (reference §1.4): a PUSH_PROMISE is a connection error for the client."""
    client = HboneClient()
    client.initiate(0.0)
    client.receive_data(encode_settings(), 0.0)
    events = client.receive_data(encode_frame(FrameType.PUSH_PROMISE, 4, 1, bytes(4)), 0.0)
    assert client.closed and events


@pytest.mark.parametrize("strict", [False, True])
def test_plaintext_inbound_is_refused_under_strict(mesh_factory: Callable[..., Mesh], strict: bool) -> None:
    """Reference §1.7/§4.7: 15006 plaintext runs RBAC with no identity; PeerAuthentication STRICT
    ("deny any connection with no peer identity") refuses it, PERMISSIVE forwards it."""
    mesh = mesh_factory(extra_yaml=STRICT if strict else "")

    async def body() -> None:
        await mesh.start()
        mesh.inbound.original_destination = lambda _s: (mesh.spec.server_ip, mesh.spec.app_port)
        listener = mesh.sockets.tcp_bind(0, mesh.spec.server_ip)
        mesh.tasks.spawn(mesh.inbound.serve_plaintext(listener), name="plaintext")
        try:
            r, w = await asyncio.open_connection(*listener.getsockname(), local_addr=(mesh.spec.client_ip, 0))
            if strict:
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await request(r, w)
            else:
                assert (await request(r, w)).endswith(b"hello\n")
            w.close()
            await mesh.settle(1)
        finally:
            await mesh.close()
            listener.close()
        (rec,) = mesh.sink.records
        assert rec.security_policy is SecurityPolicy.UNKNOWN and rec.src_identity is None
        assert rec.verdict is (FlowVerdict.DROPPED if strict else FlowVerdict.FORWARDED)
        if strict:
            assert rec.policy is not None and "strict" in rec.policy

    run(body)
