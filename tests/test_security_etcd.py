"""The etcd metadata provider over TLS (issue 16): a real etcd serving https with
``--client-cert-auth`` (certificates from pyxia.security.pki) refuses a client without a
certificate signed by its CA; the provider with the right certificate campaigns, stores and
compares-and-sets. A second etcd with users enabled (server-only TLS: etcd refuses gateway
requests that carry a client certificate while auth is on) takes the provider's user name and
password, and nothing without them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import wait_for
from pyxia.common.ports import free_port
from pyxia.coordinator.metadata import NOT_EXISTS, create_provider
from pyxia.coordinator.metadata.etcd import EtcdMetadataProvider
from pyxia.errors import MetadataBadVersion, ResourceUnavailable
from pyxia.security.pki import CertFiles, CertificateAuthority
from pyxia.security.tls import TlsOptions
from servers import cluster_secret_file
from test_metadata_providers import DEADLINE, find_etcd, sample_status

PASSWORD = "etcd-root-password"


@dataclass
class Pki:
    ca: Path
    server: CertFiles
    client: CertFiles
    rogue_client: CertFiles  # signed by another CA


@dataclass
class Etcd:
    url: str
    pki: Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create()
    rogue = CertificateAuthority.create("rogue CA")
    return Pki(
        ca=ca.save(d).cert,
        server=ca.issue_files(d, "etcd", ["localhost", "127.0.0.1"]),
        client=ca.issue_files(d, "coordinator"),
        rogue_client=rogue.issue_files(d / "rogue", "coordinator"),
    )


def _start_etcd(workdir: Path, pki: Pki, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = find_etcd()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    client = f"https://127.0.0.1:{free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    with open(workdir / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                "--name=pyxia-tls",
                f"--data-dir={workdir / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=pyxia-tls={peer}",
                f"--cert-file={pki.server.cert}",
                f"--key-file={pki.server.key}",
                "--log-level=warn",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, client


def _ctx(pki: Pki, client: CertFiles | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _post(etcd: Etcd, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{etcd.url}{path}", json=body, timeout=10, trust_env=False, **kw)


@contextlib.contextmanager
def _running(proc: subprocess.Popen[bytes], url: str, pki: Pki, workdir: Path) -> Iterator[Etcd]:
    etcd = Etcd(url, pki)

    def healthy() -> bool:
        assert proc.poll() is None, (workdir / "etcd.log").read_text()
        try:
            r = httpx.get(f"{url}/health", timeout=1, trust_env=False, verify=_ctx(pki, pki.client))
            return bool(r.json().get("health") == "true")
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=DEADLINE, interval=0.05, what="etcd (TLS) to be healthy")
        yield etcd
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def etcd_mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Etcd]:
    """etcd over https requiring a client certificate signed by the CA."""
    workdir = tmp_path_factory.mktemp("etcd-mtls")
    proc, url = _start_etcd(workdir, pki, f"--trusted-ca-file={pki.ca}", "--client-cert-auth")
    with _running(proc, url, pki, workdir) as etcd:
        yield etcd


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Etcd]:
    """etcd over https (server certificate only) with users on: root / PASSWORD."""
    workdir = tmp_path_factory.mktemp("etcd-auth")
    proc, url = _start_etcd(workdir, pki)
    with _running(proc, url, pki, workdir) as etcd:
        ctx = _ctx(pki, None)
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": PASSWORD}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/enable", {}),
        ]:
            _post(etcd, path, body, verify=ctx).raise_for_status()
        yield etcd


def _provider(etcd: Etcd, tls: TlsOptions | None, **kw: Any) -> EtcdMetadataProvider:
    return EtcdMetadataProvider(
        etcd.url,
        prefix=f"/pyxia-tls-{free_port()}",
        tls=tls,
        lease_ttl=2,
        campaign_interval=0.05,
        request_timeout=5.0,
        **kw,
    )


def test_etcd_refuses_a_client_without_a_certificate(etcd_mtls: Etcd) -> None:
    pki = etcd_mtls.pki
    # Control: the same request with the client certificate is answered.
    _post(
        etcd_mtls, "/v3/kv/range", {"key": "eA=="}, verify=_ctx(pki, pki.client)
    ).raise_for_status()
    for client in (None, pki.rogue_client):
        # The TLS handshake itself fails (etcd closes it, or answers with an alert).
        with pytest.raises(httpx.HTTPError):
            _post(etcd_mtls, "/v3/kv/range", {"key": "eA=="}, verify=_ctx(pki, client))


async def test_provider_with_the_right_certificate_works(etcd_mtls: Etcd) -> None:
    pki = etcd_mtls.pki
    tls = TlsOptions(cert_file=pki.client.cert, key_file=pki.client.key, trusted_ca_file=pki.ca)
    a, b = _provider(etcd_mtls, tls), _provider(etcd_mtls, tls)
    b.status_key, b.leader_key = a.status_key, a.leader_key
    try:
        lost = await asyncio.wait_for(a.wait_to_become_leader(), DEADLINE)
        assert lost is not None
        v = await a.store(sample_status(1), NOT_EXISTS)
        assert await a.get() == (sample_status(1), v)
        v2 = await a.store(sample_status(2), v)
        with pytest.raises(MetadataBadVersion):
            await a.store(sample_status(3), v)  # stale version: CAS refused
        assert await b.get() == (sample_status(2), v2)
        assert all(u.startswith("https://") for u in a.endpoints)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("which", ["no certificate", "certificate of another CA"])
async def test_provider_without_an_accepted_certificate_is_refused(
    etcd_mtls: Etcd, which: str
) -> None:
    pki = etcd_mtls.pki
    if which == "no certificate":
        tls = TlsOptions(trusted_ca_file=pki.ca)
    else:
        tls = TlsOptions(
            cert_file=pki.rogue_client.cert, key_file=pki.rogue_client.key, trusted_ca_file=pki.ca
        )
    p = _provider(etcd_mtls, tls)
    try:
        with pytest.raises(ResourceUnavailable, match="no etcd endpoint reachable"):
            await p.get()
    finally:
        await p.close()


async def test_provider_refuses_an_etcd_it_does_not_trust(etcd_mtls: Etcd, tmp_path: Path) -> None:
    """The server is verified: a CA that did not sign etcd's certificate is refused."""
    other_ca = CertificateAuthority.create("other").save(tmp_path).cert
    pki = etcd_mtls.pki
    tls = TlsOptions(cert_file=pki.client.cert, key_file=pki.client.key, trusted_ca_file=other_ca)
    p = _provider(etcd_mtls, tls)
    try:
        with pytest.raises(ResourceUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await p.get()
    finally:
        await p.close()


def test_plaintext_endpoint_with_tls_options_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="plaintext"):
        EtcdMetadataProvider("http://127.0.0.1:2379", tls=TlsOptions(trusted_ca_file=pki.ca))
    p = EtcdMetadataProvider("127.0.0.1:2379", tls=TlsOptions(trusted_ca_file=pki.ca))
    assert p.endpoints == ["https://127.0.0.1:2379"]


async def test_provider_authenticates_with_user_and_password(etcd_auth: Etcd) -> None:
    tls = TlsOptions(trusted_ca_file=etcd_auth.pki.ca)
    anonymous = _provider(etcd_auth, tls)
    wrong = _provider(etcd_auth, tls, username="root", password="wrong")
    p = _provider(etcd_auth, tls, username="root", password=PASSWORD)
    try:
        with pytest.raises(ResourceUnavailable, match="user name is empty"):
            await anonymous.get()
        with pytest.raises(ResourceUnavailable, match="authentication failed"):
            await wrong.get()
        lost = await asyncio.wait_for(p.wait_to_become_leader(), DEADLINE)
        assert lost is not None
        v = await p.store(sample_status(1), NOT_EXISTS)
        # etcd forgot the token (expired, restarted): the provider logs in again, once.
        assert p._gateway is not None
        p._gateway._token = "expired.1"
        v = await p.store(sample_status(2), v)
        assert await p.get() == (sample_status(2), v)
        assert not lost.fired
    finally:
        for q in (anonymous, wrong, p):
            await q.close()


def test_factory_reads_the_etcd_password_from_a_private_file(tmp_path: Path, pki: Pki) -> None:
    secret = tmp_path / "etcd.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    p = create_provider(
        "etcd",
        etcd_endpoints="127.0.0.1:2379",
        etcd_tls=TlsOptions(trusted_ca_file=pki.ca),
        etcd_username="root",
        etcd_password_file=str(secret),
    )
    assert isinstance(p, EtcdMetadataProvider)
    assert p._credentials == ("root", PASSWORD)
    assert p.endpoints == ["https://127.0.0.1:2379"]
    secret.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        create_provider(
            "etcd",
            etcd_endpoints="127.0.0.1:2379",
            etcd_username="root",
            etcd_password_file=str(secret),
        )
    with pytest.raises(ValueError, match="--etcd-password-file"):
        create_provider("etcd", etcd_endpoints="127.0.0.1:2379", etcd_username="root")


def test_coordinator_cli_leads_through_etcd_over_mutual_tls(
    etcd_mtls: Etcd, tmp_path: Path
) -> None:
    pki = etcd_mtls.pki
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "namespaces:\n  - name: default\n    initialShardCount: 1\n    replicationFactor: 1\n"
        "servers:\n  - public: 127.0.0.1:1\n    internal: 127.0.0.1:2\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxia",
            "coordinator",
            "--cluster-config",
            str(config),
            "--metadata",
            "etcd",
            "--etcd-endpoints",
            etcd_mtls.url,
            "--etcd-tls-cert-file",
            str(pki.client.cert),
            "--etcd-tls-key-file",
            str(pki.client.key),
            "--etcd-tls-trusted-ca-file",
            str(pki.ca),
            "--internal-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
            "--cluster-secret-file",
            str(cluster_secret_file(tmp_path)),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"etcd: leading coordinator", line):
                break
        else:
            raise AssertionError("the coordinator exited:\n" + "".join(lines))
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("name", "works"), [("localhost", True), ("other.example", False)])
async def test_server_name_is_the_name_etcd_must_carry(
    etcd_mtls: Etcd, name: str, works: bool
) -> None:
    pki = etcd_mtls.pki
    tls = TlsOptions(
        cert_file=pki.client.cert,
        key_file=pki.client.key,
        trusted_ca_file=pki.ca,
        server_name=name,
    )
    p = _provider(etcd_mtls, tls)  # dials 127.0.0.1; the certificate names localhost too
    try:
        if works:
            assert await p.get() == (None, NOT_EXISTS)
        else:
            with pytest.raises(ResourceUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await p.get()
    finally:
        await p.close()
