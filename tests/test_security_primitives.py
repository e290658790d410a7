"""The security building blocks on their own: the cluster secret's proofs (bound to a method,
fresh, used once), secret files, TLS options that cannot work, listeners and dialers picking up
rotated certificate files, the channel pool's proofs and channel rotation, the refusal log's
rate limit."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from pyxia.common.channels import ChannelPool
from pyxia.security import cluster_auth, tls
from pyxia.security.cluster_auth import (
    MAX_SKEW_MS,
    METADATA_KEY,
    ClusterSecret,
    SecretFileError,
    generate_secret_file,
)
from pyxia.security.internal_auth import RefusalLog, proof_of, reason_label
from pyxia.security.pki import CertFiles, CertificateAuthority
from pyxia.security.tls import TlsConfigError, TlsOptions, fetch_peer_certificate
from servers import wait_until

METHOD = "/replication.OxiaCoordination/DeleteShard"
OTHER = "/replication.OxiaCoordination/GetStatus"


def secret() -> ClusterSecret:
    return ClusterSecret(b"0123456789abcdef0123456789abcdef")


# -- cluster secret -------------------------------------------------------------------------------


def test_a_proof_is_accepted_once_for_its_method() -> None:
    s, verifier = secret(), secret()
    key, proof = s.sign(METHOD)
    assert key == METADATA_KEY
    assert verifier.verify(METHOD, proof) is None
    assert verifier.verify(METHOD, proof) == "replayed cluster credentials"


def test_a_proof_for_another_method_is_refused() -> None:
    _, proof = secret().sign(OTHER)
    assert secret().verify(METHOD, proof) == "bad cluster credentials"


def test_a_proof_made_with_another_secret_is_refused() -> None:
    _, proof = ClusterSecret(b"another secret of 32 bytes......").sign(METHOD)
    assert secret().verify(METHOD, proof) == "bad cluster credentials"


def test_stale_and_future_proofs_are_refused() -> None:
    now = int(time.time() * 1000)
    for skew in (MAX_SKEW_MS + 1000, -(MAX_SKEW_MS + 1000)):
        _, proof = secret().sign(METHOD, now_ms=now - skew)
        reason = secret().verify(METHOD, proof, now_ms=now)
        assert reason is not None and reason.startswith("expired"), reason


@pytest.mark.parametrize(
    "proof",
    [None, "", "v1", "v2.1.n.m", "v1.x.n." + "0" * 64, "v1.1..", "v1.1.n.short", "a.b.c.d.e"],
)
def test_malformed_proofs_are_refused(proof: str | None) -> None:
    reason = secret().verify(METHOD, proof)
    assert reason in ("no cluster credentials", "malformed cluster credentials")


def test_nonce_memory_is_bounded_and_forgets_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_auth, "MAX_REMEMBERED_NONCES", 4)
    s, v = secret(), secret()
    now = int(time.time() * 1000)
    proofs = [s.sign(METHOD, now_ms=now + i)[1] for i in range(6)]
    for p in proofs:
        assert v.verify(METHOD, p, now_ms=now + 10) is None
    assert len(v._seen) <= 4
    # The oldest were forgotten: replaying them is still refused (older than what is kept).
    for p in proofs:
        assert v.verify(METHOD, p, now_ms=now + 10) == "replayed cluster credentials"


def test_secret_files(tmp_path: Path) -> None:
    path = tmp_path / "s"
    generate_secret_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    ClusterSecret.from_file(path)
    with pytest.raises(FileExistsError):
        generate_secret_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        ClusterSecret.from_file(path)
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    os.chmod(short, 0o600)
    with pytest.raises(SecretFileError, match="at least"):
        ClusterSecret.from_file(short)
    with pytest.raises(SecretFileError, match="cannot read"):
        ClusterSecret.from_file(tmp_path / "missing")


# -- refusal log ----------------------------------------------------------------------------------


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    rl = RefusalLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pyxia.internal.auth"):
        for _ in range(1000):
            rl.refused(METHOD, "ipv4:10.0.0.9:1234", "no cluster credentials")
        now[0] += 10.5
        rl.refused(METHOD, "ipv4:10.0.0.9:1234", "no cluster credentials")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "10.0.0.9" in lines[0] and METHOD in lines[0]
    assert "999 more refused" in lines[1]


def test_proof_lookup_and_reason_labels() -> None:
    assert proof_of((("a", "b"), (METADATA_KEY, "v1.x"))) == "v1.x"
    assert proof_of(None) is None
    assert reason_label("expired cluster credentials (clock +70000 ms apart)") == "expired"
    assert reason_label("something new") == "other"


# -- TLS options ----------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.create()
    ca.save(tmp_path / "pki")
    return ca


def test_tls_options_that_cannot_work_are_refused(tmp_path: Path, ca: CertificateAuthority) -> None:
    pki = tmp_path / "pki"
    a = ca.issue_files(pki, "a")
    b = ca.issue_files(pki, "b")
    with pytest.raises(TlsConfigError, match="both"):
        TlsOptions(cert_file=a.cert).validate(server=True)
    with pytest.raises(TlsConfigError, match="needs a certificate"):
        TlsOptions(trusted_ca_file=pki / "ca.crt").validate(server=True)
    with pytest.raises(TlsConfigError, match="client authentication"):
        TlsOptions(cert_file=a.cert, key_file=a.key, client_auth=True).validate(server=True)
    with pytest.raises(TlsConfigError, match="does not match"):
        TlsOptions(cert_file=a.cert, key_file=b.key).validate(server=True)
    with pytest.raises(TlsConfigError, match=r"1\.3"):
        TlsOptions(cert_file=a.cert, key_file=a.key, min_version=tls.TLS13).validate(server=True)
    assert TlsOptions().client() is None  # off: plaintext, no error


def serial_of(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def serial_of_file(path: Path) -> int:
    return serial_of(path.read_bytes())


def reissue(ca: CertificateAuthority, files: CertFiles, name: str) -> int:
    """Replaces ``files`` with a newly issued pair (as a rotation does); the new serial."""
    new = ca.issue_files(files.cert.parent, name)
    assert new == files
    return serial_of_file(files.cert)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """Answers with the serial of the client's certificate (0 without one)."""
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    return str(serial_of(pem[0]) if pem else 0).encode()


@pytest.fixture
async def echo_server(tmp_path: Path, ca: CertificateAuthority) -> AsyncIterator[tuple[str, Path]]:
    """A mutual-TLS server (certificate ``server``) that answers with the client's serial."""
    pki = tmp_path / "pki"
    files = ca.issue_files(pki, "server")
    opts = TlsOptions(
        cert_file=files.cert, key_file=files.key, trusted_ca_file=pki / "ca.crt", client_auth=True
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.Echo", {"Serial": grpc.unary_unary_rpc_method_handler(_echo)}
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", opts.server_credentials())
    await server.start()
    try:
        yield f"127.0.0.1:{port}", pki
    finally:
        await server.stop(0)


async def test_a_listener_serves_rotated_certificate_files(
    echo_server: tuple[str, Path], ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "RELOAD_CHECK_S", 0.0)
    address, pki = echo_server
    client = ca.issue_files(pki, "client")
    pair = (client.key.read_bytes(), client.cert.read_bytes())
    files = CertFiles(pki / "server.crt", pki / "server.key")
    before = serial_of_file(files.cert)
    presented = await asyncio.to_thread(fetch_peer_certificate, address, pair)
    assert serial_of(presented[0]) == before
    after = reissue(ca, files, "server")
    presented = await asyncio.to_thread(fetch_peer_certificate, address, pair)
    assert serial_of(presented[0]) == after != before
    # A broken replacement is refused; the last good certificate stays in use.
    files.key.write_text("not a key")
    presented = await asyncio.to_thread(fetch_peer_certificate, address, pair)
    assert serial_of(presented[0]) == after


async def test_the_channel_pool_presents_rotated_client_certificates(
    echo_server: tuple[str, Path], ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "RELOAD_CHECK_S", 0.0)
    address, pki = echo_server
    files = ca.issue_files(pki, "peer")
    opts = TlsOptions(cert_file=files.cert, key_file=files.key, trusted_ca_file=pki / "ca.crt")
    client = opts.client()
    assert client is not None
    pool = ChannelPool(client, retire_grace_s=30.0)
    try:

        async def serial() -> int:
            call = pool.get(address).unary_unary("/t.Echo/Serial")
            return int(await call(b"", timeout=10))

        first = serial_of_file(files.cert)
        assert await serial() == first
        old = pool._conns[address]
        second = reissue(ca, files, "peer")
        assert await serial() == second != first
        # The old channel had no call in flight: it is closed, not kept for the grace period.
        await wait_until(lambda: old.closing and old not in pool._retired, 5, "closed")
        assert old.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    finally:
        await pool.close()


# -- the channel pool's proofs --------------------------------------------------------------------


async def test_every_call_through_the_pool_carries_a_proof_for_its_method() -> None:
    seen: list[tuple[str, str | None]] = []
    verifier = secret()

    async def record(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        proof = proof_of(context.invocation_metadata())
        md = dict(context.invocation_metadata() or ())
        seen.append((md.get("x-caller", ""), verifier.verify(method_of(context), proof)))
        if isinstance(request, bytes):
            return b"ok"
        async for _ in request:
            pass
        return b"ok"

    def method_of(context: Any) -> str:
        return "/t.S/" + dict(context.invocation_metadata())["x-method"]

    async def stream_out(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await record(request, context)
        yield b"a"
        yield b"b"

    async def stream_both(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await record(b"", context)
        async for r in requests:
            yield r

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.S",
                {
                    "UU": grpc.unary_unary_rpc_method_handler(record),
                    "US": grpc.unary_stream_rpc_method_handler(stream_out),
                    "SU": grpc.stream_unary_rpc_method_handler(record),
                    "SS": grpc.stream_stream_rpc_method_handler(stream_both),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = ChannelPool(secret=secret())
    addr = f"127.0.0.1:{port}"

    def md(kind: str) -> tuple[tuple[str, str], ...]:
        return (("x-caller", kind), ("x-method", kind))

    try:
        ch = pool.get(addr)
        assert await ch.unary_unary("/t.S/UU")(b"x", metadata=md("UU")) == b"ok"
        assert [r async for r in ch.unary_stream("/t.S/US")(b"x", metadata=md("US"))] == [
            b"a",
            b"b",
        ]
        assert await ch.stream_unary("/t.S/SU")(iter([b"1", b"2"]), metadata=md("SU")) == b"ok"
        got = [r async for r in ch.stream_stream("/t.S/SS")(iter([b"1", b"2"]), metadata=md("SS"))]
        assert got == [b"1", b"2"]
    finally:
        await pool.close()
        await server.stop(0)
    # Each call carried a valid proof for its own method, next to the caller's own metadata.
    assert seen == [("UU", None), ("US", None), ("SU", None), ("SS", None)]
    with pytest.raises(RuntimeError, match="closed"):
        pool.get(addr)
