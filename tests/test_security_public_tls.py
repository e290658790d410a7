"""TLS on the public port (server certificate, mutual TLS, rotation without restart) with
pyxia's clients, the TSO client with TLS and a token, and the CLI commands with ``--tls-*`` and
``--auth-token-file`` against a ``pyxia standalone`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from oidc_issuer import Issuer
from public_server import ServerThread
from pyxia import Client, TsoClient, Unauthenticated, Unavailable
from pyxia.cli import main
from pyxia.security.pki import CertFiles, CertificateAuthority
from pyxia.security.public import PublicAuthOptions
from pyxia.security.tls import TlsOptions
from servers import ServerProcess, standalone_args, wait_for


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, CertFiles]:
    ca = CertificateAuthority.create("public CA")
    other = CertificateAuthority.create("other CA")
    d = tmp_path / "pki"
    return {
        "ca": ca.save(d / "ca"),
        "other_ca": other.save(d / "other"),
        "server": ca.issue_files(d, "server"),
        "client": ca.issue_files(d, "client"),
        "other_server": other.issue_files(d / "o", "server"),
    }


def server_tls(pki: dict[str, CertFiles], **kw: object) -> TlsOptions:
    return TlsOptions(
        cert_file=pki["server"].cert,
        key_file=pki["server"].key,
        trusted_ca_file=pki["ca"].cert if kw.get("client_auth") else None,
        client_auth=bool(kw.get("client_auth", False)),
    )


def test_tls_public_port_with_the_client(tmp_path: Path, pki: dict[str, CertFiles]) -> None:
    s = ServerThread(tmp_path / "s", tls=server_tls(pki))
    try:
        with Client(s.address, tls=TlsOptions(trusted_ca_file=pki["ca"].cert)) as c:
            c.put("/t", b"secure")
            assert c.get("/t").value == b"secure"
        with pytest.raises(Unavailable, match=r"(?i)handshake|certificate|ssl"):
            Client(
                s.address, tls=TlsOptions(trusted_ca_file=pki["other_ca"].cert), request_timeout_s=3
            )
        with pytest.raises(Unavailable):
            Client(s.address, request_timeout_s=2)  # plaintext to a TLS port
    finally:
        s.close()


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tmp_path: Path, pki: dict[str, CertFiles]
) -> None:
    s = ServerThread(tmp_path / "s", tls=server_tls(pki, client_auth=True))
    try:
        with pytest.raises(Unavailable):
            Client(s.address, tls=TlsOptions(trusted_ca_file=pki["ca"].cert), request_timeout_s=3)
        mtls = TlsOptions(
            trusted_ca_file=pki["ca"].cert,
            cert_file=pki["client"].cert,
            key_file=pki["client"].key,
        )
        with Client(s.address, tls=mtls) as c:
            c.put("/m", b"1")
    finally:
        s.close()


def test_public_certificate_rotation_without_restart(
    tmp_path: Path, pki: dict[str, CertFiles]
) -> None:
    live = CertFiles(tmp_path / "live.crt", tmp_path / "live.key")
    live.cert.write_bytes(pki["server"].cert.read_bytes())
    live.key.write_bytes(pki["server"].key.read_bytes())
    s = ServerThread(tmp_path / "s", tls=TlsOptions(cert_file=live.cert, key_file=live.key))
    try:
        with Client(s.address, tls=TlsOptions(trusted_ca_file=pki["ca"].cert)) as c:
            c.put("/r", b"1")
        # Rotate to a certificate of another CA: new connections present it.
        for src, dst in (
            (pki["other_server"].key, live.key),
            (pki["other_server"].cert, live.cert),
        ):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)

        def rotated() -> bool:
            try:
                with Client(
                    s.address,
                    tls=TlsOptions(trusted_ca_file=pki["other_ca"].cert),
                    request_timeout_s=2,
                ) as c:
                    return c.get("/r").value == b"1"
            except Unavailable:
                return False

        wait_for(rotated, timeout=30, interval=0.2, what="the rotated certificate")
    finally:
        s.close()


def test_tso_client_with_tls_and_a_token(tmp_path: Path, pki: dict[str, CertFiles]) -> None:
    issuer = Issuer()
    auth = PublicAuthOptions(provider="oidc", provider_params=issuer.params())
    s = ServerThread(tmp_path / "s", tls=server_tls(pki), auth=auth)
    try:
        tls = TlsOptions(trusted_ca_file=pki["ca"].cert)
        with TsoClient(s.address, tls=tls, auth_token=issuer.token("alice")) as tso:
            a = tso.get_ts()
            assert tso.get_ts() > a
        with TsoClient(s.address, tls=tls, timeout_s=3) as tso, pytest.raises(Unauthenticated):
            tso.get_ts()
        with Client(s.address, tls=tls, auth_token=issuer.token("alice")) as c:
            c.put("/both", b"1")
    finally:
        s.close()
        issuer.close()


# -- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def secure_process(
    tmp_path: Path, pki: dict[str, CertFiles]
) -> Iterator[tuple[ServerProcess, Issuer, Path]]:
    issuer = Issuer()
    args = standalone_args(
        tmp_path / "srv",
        "--shards",
        "2",
        "--tls-cert-file",
        str(pki["server"].cert),
        "--tls-key-file",
        str(pki["server"].key),
        "--auth-provider-name",
        "oidc",
        "--auth-provider-params",
        issuer.params(),
    )
    (tmp_path / "srv").mkdir()
    s = ServerProcess(args, tmp_path / "srv").start()
    token = tmp_path / "token"
    token.write_text(issuer.token("alice") + "\n")
    try:
        yield s, issuer, token
    finally:
        s.kill()
        issuer.close()


def test_cli_commands_with_tls_and_a_token_file(
    secure_process: tuple[ServerProcess, Issuer, Path], pki: dict[str, CertFiles]
) -> None:
    s, _, token = secure_process
    ca = str(pki["ca"].cert)
    sec = ["--tls-trusted-ca-file", ca, "--auth-token-file", str(token)]

    def run(*args: str) -> str:
        r = CliRunner().invoke(main, ["client", "-a", s.public, *sec, *args])
        assert r.exit_code == 0, r.output + repr(r.exception)
        return r.output

    v = json.loads(run("put", "/cli", "hello"))
    assert v["key"] == "/cli"
    assert run("get", "/cli").strip() == "hello"
    assert run("list", "-s", "/", "-e", "/~").split() == ["/cli"]
    r = CliRunner().invoke(
        main,
        [
            "client",
            "-a",
            s.public,
            "--tls-trusted-ca-file",
            ca,
            "--request-timeout",
            "5",
            "get",
            "/cli",
        ],
    )
    assert r.exit_code != 0 and "bearer token" in r.output
    r = CliRunner().invoke(main, ["health", "--address", s.public, "--tls-trusted-ca-file", ca])
    assert r.exit_code == 0 and "SERVING" in r.output, r.output
    r = CliRunner().invoke(
        main,
        [
            "perf",
            "-a",
            s.public,
            *sec,
            "--duration",
            "1s",
            "--rate",
            "200",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["ops_per_s"] > 0 and report["failed_ops_per_s"] == 0, report


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--auth-provider-name", "oidc"], "--auth-provider-params is required"),
        (["--auth-provider-name", "ldap", "--auth-provider-params", "{}"], "unsupported"),
        (["--auth-provider-name", "oidc", "--auth-provider-params", "{"], "not valid JSON"),
        (
            [
                "--auth-provider-name",
                "oidc",
                "--auth-provider-params",
                '{"allowedIssueURLs":"http://x"}',
            ],
            "allowedAudiences is empty",
        ),
        (["--auth-policy-file", "/nonexistent.yaml"], "needs --auth-provider-name"),
        (
            [
                "--auth-provider-name",
                "oidc",
                "--auth-provider-params",
                '{"allowedIssueURLs":"http://127.0.0.1:1","allowedAudiences":"oxia"}',
            ],
            "cannot load the keys of OIDC issuer",
        ),
    ],
)
def test_bad_auth_flags_are_one_line_startup_errors(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pyxia", *standalone_args(tmp_path, *extra)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_raw_channel_with_wrong_ca_fails_clearly(tmp_path: Path, pki: dict[str, CertFiles]) -> None:
    s = ServerThread(tmp_path / "s", tls=server_tls(pki))
    try:
        creds = grpc.ssl_channel_credentials(pki["other_ca"].cert.read_bytes())
        with (
            grpc.secure_channel(s.address, creds) as ch,
            pytest.raises(grpc.FutureTimeoutError),
        ):
            grpc.channel_ready_future(ch).result(timeout=2)
    finally:
        s.close()
