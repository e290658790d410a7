"""Oxia's own Go client (github.com/oxia-db/oxia/oxia v0.17.1) against a
real ``pyxia standalone``: the checks live in tests/go/interop/main.go."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import ServerProcess, standalone_args

GO_DIR = Path(__file__).parent / "go" / "interop"


@pytest.fixture(scope="module")
def interop_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain is not installed")
    out = tmp_path_factory.mktemp("go") / "interop"
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    r = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=GO_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if r.returncode != 0:
        if "proxy.golang.org" in r.stderr or "dial tcp" in r.stderr:
            pytest.skip(f"Go modules unavailable: {r.stderr[-300:]}")
        raise AssertionError(f"go build failed:\n{r.stderr}")
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("go-standalone")
    s = ServerProcess(standalone_args(base, "--shards", "3"), base).start()
    yield s
    s.kill()


def test_go_client_against_pyxia(interop_binary: Path, server: ServerProcess) -> None:
    r = subprocess.run(
        [str(interop_binary), server.public, "/go-interop"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


@pytest.fixture(scope="module")
def secure_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, Path, str]]:
    """A standalone with public TLS and OIDC authentication (a local issuer)."""
    from oidc_issuer import Issuer
    from pyxia.security.pki import CertificateAuthority

    base = tmp_path_factory.mktemp("go-secure")
    ca = CertificateAuthority.create()
    ca_files = ca.save(base / "ca")
    cert = ca.issue_files(base, "server")
    issuer = Issuer()
    args = standalone_args(
        base,
        "--shards",
        "3",
        "--tls-cert-file",
        str(cert.cert),
        "--tls-key-file",
        str(cert.key),
        "--auth-provider-name",
        "oidc",
        "--auth-provider-params",
        issuer.params(),
    )
    s = ServerProcess(args, base).start()
    try:
        yield s, ca_files.cert, issuer.token("go-client")
    finally:
        s.kill()
        issuer.close()


def test_go_client_with_tls_and_a_token(
    interop_binary: Path, secure_server: tuple[ServerProcess, Path, str]
) -> None:
    s, ca, token = secure_server
    env = {**os.environ, "INTEROP_TLS_CA": str(ca), "INTEROP_AUTH_TOKEN": token}
    r = subprocess.run(
        [str(interop_binary), s.public, "/go-secure"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
    refused = {**os.environ, "INTEROP_TLS_CA": str(ca), "INTEROP_EXPECT_UNAUTHENTICATED": "1"}
    r = subprocess.run(
        [str(interop_binary), s.public, "/go-refused"],
        capture_output=True,
        text=True,
        timeout=120,
        env=refused,
    )
    assert r.returncode == 0 and "REFUSED OK" in r.stdout, r.stdout + r.stderr
