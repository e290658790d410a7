"""Oxia's TLS flags (``--tls-*``, ``--internal-tls-*``, ``--peer-tls-*``) as click options, and
the :class:`TlsOptions` they describe; ``--cluster-secret-file`` and the rule that a cluster
process proves membership on internal calls (a secret, or mutual TLS); a client command's TLS
and bearer-token flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pyxia.cli.startup import StartupError
from pyxia.security.cluster_auth import ClusterSecret, SecretFileError
from pyxia.security.tls import TlsConfigError, TlsOptions, parse_tls_version

F = Callable[..., Any]


def _flag(prefix: str) -> str:
    return f"--{prefix}-tls" if prefix else "--tls"


def _key(prefix: str, name: str) -> str:
    return (f"{prefix}_tls_{name}" if prefix else f"tls_{name}").replace("-", "_")


def tls_flags(prefix: str, what: str, *, listener: bool) -> Callable[[F], F]:
    """The TLS flags of one port (``listener``) or one kind of outgoing connection.

    ``prefix`` is ``""`` (``--tls-*``), ``"internal"`` or ``"peer"``; ``what`` names the port or
    connection in the help text."""
    base = _flag(prefix)
    path = click.Path(dir_okay=False, path_type=Path)
    opts = [
        click.option(
            f"{base}-cert-file",
            _key(prefix, "cert_file"),
            type=path,
            default=None,
            help=f"TLS certificate (PEM) of {what}; turns TLS on.",
        ),
        click.option(
            f"{base}-key-file",
            _key(prefix, "key_file"),
            type=path,
            default=None,
            help=f"TLS private key (PEM) of {what}.",
        ),
        click.option(
            f"{base}-trusted-ca-file",
            _key(prefix, "trusted_ca_file"),
            type=path,
            default=None,
            help=f"CA certificates (PEM) trusted by {what}"
            + (" for client certificates." if listener else " (default: the system's)."),
        ),
        click.option(
            f"{base}-min-version",
            _key(prefix, "min_version"),
            default=None,
            help="Minimum TLS version (771 = 1.2; gRPC never goes below 1.2).",
        ),
        click.option(
            f"{base}-max-version",
            _key(prefix, "max_version"),
            default=None,
            help="Maximum TLS version (772 = 1.3).",
        ),
        click.option(
            f"{base}-insecure-skip-verify",
            _key(prefix, "insecure_skip_verify"),
            is_flag=True,
            default=False,
            help="Tests only: trust any certificate the other side presents"
            + (" (no effect on a listener; accepted as Oxia does)." if listener else "."),
        ),
    ]
    if listener:
        opts.append(
            click.option(
                f"{base}-client-auth",
                _key(prefix, "client_auth"),
                is_flag=True,
                default=False,
                help=f"Mutual TLS: {what} requires a client certificate signed by the trusted CA.",
            )
        )
    else:
        opts.append(
            click.option(
                f"{base}-server-name",
                _key(prefix, "server_name"),
                default=None,
                help="Name the other side's certificate must carry (default: the host dialed).",
            )
        )

    def apply(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return f

    return apply


def tls_from_flags(kw: dict[str, Any], prefix: str, *, listener: bool) -> TlsOptions:
    """The options the flags of ``tls_flags(prefix, ...)`` describe; a one-line error when they
    cannot work (a missing key, an unreadable file, a key that does not match)."""
    try:
        opts = TlsOptions(
            cert_file=kw[_key(prefix, "cert_file")],
            key_file=kw[_key(prefix, "key_file")],
            trusted_ca_file=kw[_key(prefix, "trusted_ca_file")],
            insecure_skip_verify=kw[_key(prefix, "insecure_skip_verify")],
            client_auth=bool(kw.get(_key(prefix, "client_auth"), False)),
            server_name=kw.get(_key(prefix, "server_name")),
            min_version=parse_tls_version(kw[_key(prefix, "min_version")]),
            max_version=parse_tls_version(kw[_key(prefix, "max_version")]),
        )
        opts.validate(server=listener)
    except TlsConfigError as e:
        # One line and a non-zero exit, like every startup error (no usage banner).
        raise click.ClickException(f"{_flag(prefix)}-*: {e}") from None
    return opts


def cluster_secret_flag(f: F) -> F:
    """``--cluster-secret-file``: the shared secret proving cluster membership on internal calls."""
    return click.option(
        "--cluster-secret-file",
        "cluster_secret_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File (mode 0600) holding the secret every process of the cluster shares: internal "
        "calls carry a proof of it and the internal port refuses calls without one "
        "(make one with `pyxia certs secret --out FILE`).",
    )(f)


def secret_from_flags(kw: dict[str, Any]) -> ClusterSecret | None:
    """The secret ``--cluster-secret-file`` names (None without the flag); a one-line error
    when the file cannot be used."""
    path: Path | None = kw.get("cluster_secret_file")
    if path is None:
        return None
    try:
        return ClusterSecret.from_file(path)
    except SecretFileError as e:
        raise click.ClickException(f"--cluster-secret-file: {e}") from None


def require_membership_proof(
    what: str, secret: ClusterSecret | None, peer: TlsOptions, internal: TlsOptions | None
) -> None:
    """A cluster process must prove membership on its internal calls (and, with a listener,
    demand it): a secret, or mutual TLS (``internal`` with client auth, when this process has an
    internal port, and a peer certificate to present). Raises
    :class:`~pyxia.cli.startup.StartupError` otherwise (one line, printed before anything is
    touched)."""
    if secret is not None:
        return
    listener_ok = internal is None or (internal.is_enabled and internal.client_auth)
    if listener_ok and peer.is_enabled and peer.cert_file is not None:
        return
    mtls = (
        "--internal-tls-client-auth with --internal-tls-{cert,key,trusted-ca}-file and "
        if internal is not None
        else ""
    ) + "--peer-tls-{cert,key,trusted-ca}-file"
    raise StartupError(
        f"{what} needs proof of cluster membership on internal calls: --cluster-secret-file FILE "
        f"(make one with `pyxia certs secret --out FILE`), or mutual TLS ({mtls})"
    )


def client_security_flags(what: str = "the server", *, tokens: bool = True) -> Callable[[F], F]:
    """A client command's TLS flags (``--tls``, ``--tls-*``) and, with ``tokens``, bearer token
    flags (Oxia's ``--auth-token`` / ``--auth-token-file``)."""
    tls = tls_flags("", f"the connection to {what}", listener=False)
    opts = [
        click.option(
            "--tls",
            "tls_on",
            is_flag=True,
            default=False,
            help="Connect with TLS (implied by the --tls-* files); without "
            "--tls-trusted-ca-file the system's trusted roots verify the server.",
        ),
        click.option(
            "--auth-token",
            default=None,
            help="Bearer token sent with every call (authorization metadata).",
        ),
        click.option(
            "--auth-token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="File holding the bearer token (re-read when it changes).",
        ),
    ]

    if not tokens:
        opts = opts[:1]

    def apply(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return tls(f)

    return apply


def client_security_from_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """``tls``, ``auth_token`` and ``auth_token_file`` for ``pyxia.Client`` & co from the flags
    of :func:`client_security_flags` (popped from ``kw``); a usage error when they cannot
    work."""
    tls = tls_from_flags(kw, "", listener=False)
    tls_on = kw.pop("tls_on", False)
    for name in (
        "tls_cert_file",
        "tls_key_file",
        "tls_trusted_ca_file",
        "tls_min_version",
        "tls_max_version",
        "tls_insecure_skip_verify",
        "tls_server_name",
    ):
        kw.pop(name, None)
    if tls_on or tls.server_name or tls.insecure_skip_verify:
        tls = TlsOptions(
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            trusted_ca_file=tls.trusted_ca_file,
            insecure_skip_verify=tls.insecure_skip_verify,
            server_name=tls.server_name,
            min_version=tls.min_version,
            max_version=tls.max_version,
            enabled=True,
        )
    token, token_file = kw.pop("auth_token", None), kw.pop("auth_token_file", None)
    if token is not None and token_file is not None:
        raise click.UsageError("give one of --auth-token or --auth-token-file")
    if token_file is not None:
        from pyxia.security.tokens import TokenError, TokenSource

        try:
            TokenSource(token_file=token_file)
        except TokenError as e:
            raise click.UsageError(f"--auth-token-file: {e}") from None
    return {
        "tls": tls if tls.is_enabled else None,
        "auth_token": token,
        "auth_token_file": token_file,
    }
