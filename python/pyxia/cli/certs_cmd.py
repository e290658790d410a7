"""``pyxia certs``: the files a test cluster (or a first deployment) needs to run secured.

- ``create-ca --out DIR``: a new certificate authority (``DIR/ca.crt``, ``DIR/ca.key`` mode 0600);
- ``issue --ca-dir DIR --name NAME --host H...``: a certificate for one node or client, signed by
  that CA, valid for the given host names and IP addresses (``NAME.crt``, ``NAME.key``);
- ``secret --out FILE``: a new random cluster secret (mode 0600) for ``--cluster-secret-file``.

Nothing is overwritten: an existing CA key or secret file is an error, so a running cluster's
trust root cannot be replaced by a typo. A name becomes a file name, so it must match
``NAME_PATTERN``.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@click.group()
def certs() -> None:
    """Make a CA, node certificates and a cluster secret (test clusters, first deployments)."""


@certs.command("create-ca")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for ca.crt and ca.key (created if missing).",
)
@click.option("--name", default="pyxia CA", show_default=True, help="The CA's common name.")
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True)
def create_ca(out: Path, name: str, days: int) -> None:
    """Create a certificate authority."""
    from pyxia.security.pki import CertificateAuthority

    if (out / "ca.key").exists():
        raise click.ClickException(f"{out / 'ca.key'} exists: refusing to replace a CA")
    files = CertificateAuthority.create(name, days).save(out)
    click.echo(f"CA certificate: {files.cert}")
    click.echo(f"CA key:         {files.key} (keep it private)")


@certs.command("issue")
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Directory holding ca.crt and ca.key (from create-ca).",
)
@click.option("--name", required=True, help="Certificate name: common name and file name.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Host name or IP address the certificate is valid for (repeatable) "
    "[default: localhost and 127.0.0.1].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for NAME.crt and NAME.key [default: --ca-dir].",
)
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True)
def issue(ca_dir: Path, name: str, hosts: tuple[str, ...], out: Path | None, days: int) -> None:
    """Issue a certificate (server and client usage) signed by the CA."""
    from pyxia.security.pki import CertificateAuthority

    if not NAME_PATTERN.fullmatch(name):
        raise click.ClickException(
            f"bad certificate name {name!r}: letters, digits, '.', '_', '-' (64 at most), "
            "starting with a letter or digit"
        )
    try:
        ca = CertificateAuthority.load(ca_dir / "ca.crt", ca_dir / "ca.key")
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot load the CA in {ca_dir}: {e}") from None
    files = ca.issue_files(out or ca_dir, name, hosts or ("localhost", "127.0.0.1"), days)
    click.echo(f"certificate: {files.cert}")
    click.echo(f"key:         {files.key}")


@certs.command("secret")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to create (mode 0600); an existing file is never overwritten.",
)
def secret(out: Path) -> None:
    """Create a cluster secret file for --cluster-secret-file."""
    from pyxia.security.cluster_auth import generate_secret_file

    try:
        generate_secret_file(out)
    except FileExistsError:
        raise click.ClickException(f"{out} exists: refusing to overwrite a secret") from None
    except OSError as e:
        raise click.ClickException(f"cannot create {out}: {e.strerror or e}") from None
    click.echo(f"cluster secret: {out}")
