"""``create_provider(name, **options)``: what ``pyxia coordinator --metadata``
builds. Option names follow the command line (``--metadata-dir`` ->
``metadata_dir``, ``--etcd-endpoints`` -> ``etcd_endpoints``, ``--raft-address``
/ ``--raft-peers`` / ``--raft-secret-file`` -> ``raft_address`` / ``raft_peers`` /
``raft_secret_file``, ``--etcd-tls-*`` -> ``etcd_tls`` (a TlsOptions),
``--etcd-username`` / ``--etcd-password-file``); anything else is passed to the
provider's constructor as is. The raft provider is never built without a
secret; secrets come from files only their owner can access (0600).

The raft, etcd and kubernetes providers need packages that a client-only install leaves out
(the extras ``pyxia[raft]``, ``pyxia[etcd]``, ``pyxia[kubernetes]``): each provider's module
is imported only when that provider is built, and a missing package is a ValueError naming
the extra to install."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyxia.security.tls import TlsOptions

from .provider import MetadataProvider

PROVIDER_NAMES = ("memory", "file", "raft", "etcd", "kubernetes")

# The top-level modules each optional provider imports, by the extra that installs them.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "raft": frozenset({"pysyncobj"}),
    "etcd": frozenset({"httpx", "httpcore"}),
    "kubernetes": frozenset({"kubernetes", "aiohttp", "httpx", "httpcore"}),
}


def missing_extra(error: ModuleNotFoundError, extra: str) -> ValueError:
    """The one-line error for a provider whose packages are not installed; re-raises
    ``error`` when the missing module is not one the extra provides (a real bug)."""
    missing = (error.name or "").split(".")[0]
    if missing not in EXTRA_MODULES[extra]:
        raise error
    return ValueError(
        f"the {extra} metadata provider needs the {missing!r} package, which a plain install "
        f"leaves out: pip install 'pyxia[{extra}]'"
    )


def split_addresses(value: str | Sequence[str] | None) -> list[str]:
    """``"h:p,h:p"`` (or a list) -> ``["h:p", "h:p"]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _memory(**options: Any) -> MetadataProvider:
    from .memory import MemoryMetadataProvider

    return MemoryMetadataProvider(**options)


def _file(*, metadata_dir: str | None = None, **options: Any) -> MetadataProvider:
    from .file import FileMetadataProvider

    if not metadata_dir:
        raise ValueError("the file metadata provider needs --metadata-dir")
    return FileMetadataProvider(metadata_dir, **options)


def _read_private(path: Path, what: str) -> str:
    """A secret from a file only its owner can access (0600), stripped; ValueError naming the
    file otherwise."""
    from pyxia.security.cluster_auth import check_private_file

    check_private_file(path, what)
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from None
    if not text:
        raise ValueError(f"{what} {path} is empty")
    return text


def read_raft_secret(path: str | Path) -> bytes:
    """The raft provider's shared secret: a file only its owner can read (0600), at least
    16 bytes once stripped. Raises ValueError naming the file otherwise."""
    try:
        from .raft import MIN_SECRET_BYTES
    except ModuleNotFoundError as e:
        raise missing_extra(e, "raft") from None

    path = Path(path)
    secret = _read_private(path, "raft secret file").encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"raft secret file {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
            "needed (e.g. openssl rand -hex 32)"
        )
    return secret


def _raft(
    *,
    raft_address: str | None = None,
    raft_peers: str | Sequence[str] | None = None,
    raft_secret_file: str | Path | None = None,
    metadata_dir: str | None = None,
    **options: Any,
) -> MetadataProvider:
    try:
        from .raft import RaftMetadataProvider
    except ModuleNotFoundError as e:
        raise missing_extra(e, "raft") from None

    if not raft_address:
        raise ValueError("the raft metadata provider needs --raft-address")
    if "secret" not in options:
        if not raft_secret_file:
            raise ValueError(
                "the raft metadata provider needs --raft-secret-file (a file with mode 0600 "
                "holding the secret shared by every coordinator): PySyncObj unpickles what "
                "reaches its port unless it can authenticate it"
            )
        options["secret"] = read_raft_secret(raft_secret_file)
    options.setdefault("data_dir", metadata_dir)
    return RaftMetadataProvider(raft_address, split_addresses(raft_peers), **options)


def _etcd(
    *,
    etcd_endpoints: str | Sequence[str] | None = None,
    etcd_tls: TlsOptions | None = None,
    etcd_username: str | None = None,
    etcd_password_file: str | Path | None = None,
    **options: Any,
) -> MetadataProvider:
    try:
        from .etcd import EtcdMetadataProvider
    except ModuleNotFoundError as e:
        raise missing_extra(e, "etcd") from None

    endpoints = split_addresses(etcd_endpoints)
    if not endpoints:
        raise ValueError("the etcd metadata provider needs --etcd-endpoints")
    if etcd_tls is not None and etcd_tls.is_enabled:
        options["tls"] = etcd_tls
    if (etcd_username is None) != (etcd_password_file is None):
        raise ValueError("etcd authentication needs both --etcd-username and --etcd-password-file")
    if etcd_username is not None and etcd_password_file is not None:
        options["username"] = etcd_username
        options["password"] = _read_private(Path(etcd_password_file), "etcd password file")
    return EtcdMetadataProvider(endpoints, **options)


def _kubernetes(**options: Any) -> MetadataProvider:
    try:
        from .kubernetes import KubernetesMetadataProvider
    except ModuleNotFoundError as e:
        raise missing_extra(e, "kubernetes") from None

    return KubernetesMetadataProvider(**options)


_BUILDERS: dict[str, Callable[..., MetadataProvider]] = {
    "memory": _memory,
    "file": _file,
    "raft": _raft,
    "etcd": _etcd,
    "kubernetes": _kubernetes,
}


def create_provider(name: str, **options: Any) -> MetadataProvider:
    """Builds (does not start) the named provider. Options that are ``None``
    are treated as absent, so a CLI can pass every flag through."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown metadata provider {name!r}: choose one of {', '.join(PROVIDER_NAMES)}"
        ) from None
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return builder(**given)
    except TypeError as e:
        raise ValueError(f"bad options for the {name} metadata provider: {e}") from e
