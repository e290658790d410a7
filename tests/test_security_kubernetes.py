"""The kubernetes provider's connection to the API server is verified TLS unless the
kubeconfig itself turns verification off, which gets a warning (issue 16)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from pyxia.coordinator.metadata.kubernetes import KubernetesMetadataProvider
from pyxia.security.pki import CertificateAuthority


def _kubeconfig(tmp_path: Path, cluster: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster:\n{cluster}"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
        "current-context: x\n"
        "users:\n- name: u\n  user: {token: not-a-real-token}\n"
    )
    return path


async def test_api_server_certificate_is_verified(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority.create().save(tmp_path).cert
    cfg = _kubeconfig(
        tmp_path, f"    server: https://127.0.0.1:6443\n    certificate-authority: {ca}\n"
    )
    p = KubernetesMetadataProvider(namespace="pyxia", kubeconfig=str(cfg))
    caplog.set_level(logging.WARNING, logger="pyxia.coordinator.metadata.kubernetes")
    try:
        await p.start()
        assert p._api is not None
        assert p._api.configuration.verify_ssl is True
        ctx = p._api.rest_client.ssl_context
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert not caplog.records
    finally:
        await p.close()


async def test_kubeconfig_that_skips_verification_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _kubeconfig(
        tmp_path, "    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n"
    )
    p = KubernetesMetadataProvider(namespace="pyxia", kubeconfig=str(cfg))
    caplog.set_level(logging.WARNING, logger="pyxia.coordinator.metadata.kubernetes")
    try:
        await p.start()
        assert [r.getMessage() for r in caplog.records if "NOT verified" in r.getMessage()]
    finally:
        await p.close()
