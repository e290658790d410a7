"""``pyxia standalone`` and ``pyxia server``.

Both take the internal port's TLS (``--internal-tls-*``), the TLS of the connections to peers
(``--peer-tls-*``) and ``--cluster-secret-file``. ``pyxia server`` refuses to start without a
way to prove cluster membership on internal calls: a secret, or mutual TLS on the internal port
with a peer certificate (docs/security.md).

Otherwise both take the same flags (Oxia's names) except ``--internal-addr``: a data server of
a cluster listens on ``0.0.0.0:6649`` by default; a standalone server has no peers and opens no
internal port unless ``--internal-addr`` is given (Oxia's standalone has none), and even then
accepts no coordination or replication calls on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pyxia._native import DEFAULT_SEGMENT_SIZE
from pyxia.cli.oxia_flags import (
    GO_DURATION,
    apply_options_file,
    bool_flag,
    bool_value,
    log_start,
    options_file_flag,
    setup_logging,
)
from pyxia.cli.security_flags import (
    cluster_secret_flag,
    require_membership_proof,
    secret_from_flags,
    tls_flags,
    tls_from_flags,
)
from pyxia.cli.startup import (
    StartupError,
    bound_address,
    check_addr,
    fail,
    guard_dirs,
    run,
    run_until_signalled,
    standalone_config_note,
)
from pyxia.common.validation import namespace_problem
from pyxia.config import SERVER_FILE_KEYS, ConfigError, NamespaceConfig, load_cluster_config
from pyxia.security.oidc import AuthConfigError
from pyxia.security.public import PublicAccess, PublicAuthOptions
from pyxia.security.tls import TlsOptions
from pyxia.server.data_server import DataServer, ServerOptions
from pyxia.server.read_lease import MAX_READ_LEASE_S, READ_LEASE_S
from pyxia.server.retention import DEFAULT_WAL_RETENTION_SIZE, check_retention_size
from pyxia.server.shards_director import DEFAULT_MAX_SHARDS
from pyxia.storage.apply import DEFAULT_WRITE_LIMITS, WriteLimits
from pyxia.storage.db import DEFAULT_CACHE_SIZE_MB
from pyxia.tso import DEFAULT_NAMESPACE as DEFAULT_TSO_NAMESPACE
from pyxia.tso.native import check_transport
from pyxia.tso.options import TsoOptions

log = logging.getLogger("pyxia.cli")

T = TypeVar("T")


def _namespace_names(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: every namespace name (one or several) must be valid."""
    for name in (value,) if isinstance(value, str) else value or ():
        if name:
            problem = namespace_problem(name)
            if problem is not None:
                raise click.BadParameter(f"namespace name {name!r} {problem}")
    return value


def _positive_duration(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: the duration must be more than zero."""
    if value is not None and value <= 0:
        raise click.BadParameter("must be more than zero")
    return value


def _read_lease(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: a read lease is within [0, MAX_READ_LEASE_S] seconds."""
    if value is not None and not 0 <= value <= MAX_READ_LEASE_S:
        raise click.BadParameter(f"must be within 0 and {MAX_READ_LEASE_S:g} seconds")
    return value


def server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The flags shared by ``standalone`` and ``server`` (Oxia's names)."""
    opts = [
        click.option(
            "-p",
            "--public-addr",
            default="0.0.0.0:6648",
            show_default=True,
            help="Public (client) gRPC address.",
        ),
        click.option(
            "-m",
            "--metrics-addr",
            default="0.0.0.0:8080",
            show_default=True,
            help="Prometheus /metrics address; empty to disable.",
        ),
        click.option(
            "--advertised-public-addr",
            default=None,
            help="Address clients are told to use (default: derived from "
            "--public-addr, 0.0.0.0 becoming localhost).",
        ),
        click.option(
            "--advertised-internal-addr",
            default=None,
            help="Address peers use for the internal port.",
        ),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("data/db"),
            show_default=True,
            help="Shard databases.",
        ),
        click.option(
            "--wal-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("data/wal"),
            show_default=True,
            help="Write-ahead logs.",
        ),
        bool_flag(
            "--wal-sync-data",
            default=True,
            help="fsync the WAL before acknowledging writes (--wal-sync-data=false: don't).",
        ),
        click.option(
            "--wal-retention-time",
            type=GO_DURATION,
            default="1h",
            show_default=True,
            help="WAL kept (Go duration, or seconds), never past the commit offset, on every "
            "replica; checked every 1/20 of it (0.1 s to 60 s) and whenever a segment closes.",
        ),
        click.option(
            "--wal-retention-size-mb",
            type=click.IntRange(min=1),
            default=DEFAULT_WAL_RETENTION_SIZE // (1024 * 1024),
            show_default=True,
            help="Bound on each shard replica's WAL on disk (MiB, at least two segments): the "
            "oldest segments go beyond it, even if young; a follower further behind than that "
            "gets a snapshot.",
        ),
        click.option(
            "--notifications-retention-time",
            type=GO_DURATION,
            default="1h",
            show_default=True,
            help="Notifications kept (Go duration, or seconds).",
        ),
        click.option(
            "--notifications-send-timeout",
            type=GO_DURATION,
            default="30s",
            show_default=True,
            callback=_positive_duration,
            help=(
                "A notifications subscriber that accepts no batch for this long (it stopped "
                "reading) is cut off; clients resume from their last offset."
            ),
        ),
        click.option(
            "--tso-namespace",
            default=DEFAULT_TSO_NAMESPACE,
            show_default=True,
            callback=_namespace_names,
            help="Namespace (one shard) whose leader serves the timestamp oracle "
            "(tsoracle.v1.TsoService/GetTs on the public port); empty to disable. A cluster "
            "declares it in its config with tso: true.",
        ),
        click.option(
            "--tso-addr",
            default="",
            help="IP:port of a TSO port: the oracle's GetTs served natively (much cheaper per "
            "call than the public port), without TLS or authentication; empty for none.",
        ),
    ]
    for o in reversed(opts + storage_limit_options()):
        f = o(f)
    f = tls_flags("internal", "the internal port", listener=True)(f)
    f = tls_flags("peer", "connections to other data servers", listener=False)(f)
    f = cluster_secret_flag(f)
    return public_security_flags(tls_flags("", "the public port", listener=True)(f))


def _on(tls: TlsOptions) -> TlsOptions | None:
    return tls if tls.is_enabled else None


def public_security_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    """Authentication (Oxia's flags) and authorization (pyxia's) of the public port."""
    opts = [
        click.option(
            "--auth-provider-name",
            default=None,
            help="Authenticate public calls with bearer tokens; supported: oidc.",
        ),
        click.option(
            "--auth-provider-params",
            default="",
            help="The provider's JSON parameters (Oxia's): "
            '{"allowedIssueURLs":"https://idp","allowedAudiences":"oxia","userNameClaim":"sub"} '
            'or {"issuers":{"https://idp":{"allowedAudiences":"oxia","userNameClaim":"sub",'
            '"staticKeyFile":"keys.pem"}}}.',
        ),
        click.option(
            "--auth-policy-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="YAML rules granting read/write/migrate/internal-keys per namespace to "
            "token users and claims (docs/security.md); default: every authenticated user "
            "reads and writes everything.",
        ),
        click.option(
            "--allow-migration-fields",
            is_flag=True,
            default=False,
            help="Honour override_version_id/override_modifications_count (for callers who may "
            "write) and include_internal_keys (for callers who may read): Oxia's migration "
            "fields, refused by default.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def storage_limit_options() -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """The DB cache and what one client write may hold (issue 15 §6)."""
    limits = DEFAULT_WRITE_LIMITS
    return [
        click.option(
            "--db-cache-size-mb",
            type=click.IntRange(1, 1 << 20),
            default=DEFAULT_CACHE_SIZE_MB,
            show_default=True,
            help="Block cache shared by every shard DB of the process, in MiB (as Oxia's).",
        ),
        click.option(
            "--max-key-size",
            type=click.IntRange(1, 1 << 30),
            default=limits.max_key_size,
            show_default=True,
            help="Bytes (UTF-8) a key, secondary index key or partition key may have; "
            "longer ones are refused with INVALID_ARGUMENT.",
        ),
        click.option(
            "--max-value-size",
            type=click.IntRange(1, 1 << 30),
            default=limits.max_value_size,
            show_default=True,
            help="Bytes a value may have; larger ones are refused with INVALID_ARGUMENT.",
        ),
        click.option(
            "--max-write-operations",
            type=click.IntRange(1, 1 << 30),
            default=limits.max_operations,
            show_default=True,
            help="Operations one write request may hold; more are refused with INVALID_ARGUMENT.",
        ),
    ]


def storage_limits_from_flags(kw: dict[str, Any]) -> dict[str, Any]:
    return {
        "db_cache_size_mb": kw["db_cache_size_mb"],
        "write_limits": WriteLimits(
            max_key_size=kw["max_key_size"],
            max_value_size=kw["max_value_size"],
            max_operations=kw["max_write_operations"],
        ),
    }


def build_options(kw: dict[str, Any]) -> ServerOptions:
    options = _build_options(kw)
    try:
        check_transport(
            kw.get("tso_addr") or None,
            public_tls=options.public_tls is not None and options.public_tls.is_enabled,
            public_auth=options.public_auth.enabled,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if kw.get("tso_addr") and options.tso is None:
        raise click.UsageError("--tso-addr needs the timestamp oracle (--tso-namespace)")
    if options.public_auth.enabled and not (options.public_tls and options.public_tls.is_enabled):
        log.warning(
            "authentication is on but the public port has no TLS (--tls-cert-file): "
            "bearer tokens travel in plaintext"
        )
    return options


def _build_options(kw: dict[str, Any]) -> ServerOptions:
    retention_size = kw["wal_retention_size_mb"] * 1024 * 1024
    try:
        check_retention_size(retention_size, kw.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    return ServerOptions(
        public_addr=check_addr("--public-addr", kw["public_addr"]) or "",
        # None (a standalone without --internal-addr): no internal port; given empty: refused.
        internal_addr=check_addr(
            "--internal-addr", kw["internal_addr"], allow_empty=kw["internal_addr"] is None
        ),
        metrics_addr=check_addr("--metrics-addr", kw["metrics_addr"], allow_empty=True),
        advertised_public_addr=kw["advertised_public_addr"],
        advertised_internal_addr=kw["advertised_internal_addr"],
        data_dir=kw["data_dir"],
        wal_dir=kw["wal_dir"],
        wal_sync_data=bool_value(click.get_current_context(silent=True), kw, "wal_sync_data"),
        wal_retention_s=kw["wal_retention_time"],
        wal_retention_size=retention_size,
        notifications_retention_s=kw["notifications_retention_time"],
        notifications_send_timeout_s=kw["notifications_send_timeout"],
        tso=(
            TsoOptions(namespace=kw["tso_namespace"], native_addr=kw.get("tso_addr") or None)
            if kw["tso_namespace"]
            else None
        ),
        internal_tls=_on(tls_from_flags(kw, "internal", listener=True)),
        peer_tls=_on(tls_from_flags(kw, "peer", listener=False)),
        cluster_secret=secret_from_flags(kw),
        public_tls=_on(tls_from_flags(kw, "", listener=True)),
        public_auth=public_auth_from_flags(kw),
        **storage_limits_from_flags(kw),
    )


def tso_port(server: DataServer) -> str:
    """`` tso=IP:PORT`` for the ready line when the server has a TSO port, else nothing."""
    from pyxia.node import tso_of

    svc = tso_of(server)
    t = svc.transport if svc is not None else None
    if t is None or t.port is None:
        return ""
    host = f"[{t.address.host}]" if ":" in t.address.host else t.address.host
    return f" tso={host}:{t.port}"


def public_auth_from_flags(kw: dict[str, Any]) -> PublicAuthOptions:
    """The public port's auth options; a usage error when they cannot work."""
    opts = PublicAuthOptions(
        provider=kw["auth_provider_name"] or None,
        provider_params=kw["auth_provider_params"] or "",
        policy_file=kw["auth_policy_file"],
        allow_migration_fields=kw["allow_migration_fields"],
    )
    try:
        PublicAccess.from_options(opts)
    except AuthConfigError as e:
        raise click.UsageError(str(e)) from None
    return opts


@click.command()
@server_options
@click.option(
    "-i",
    "--internal-addr",
    default=None,
    help="Internal gRPC address. Off unless given: a standalone server has no peers (it "
    "refuses coordination and replication calls even when this is set).",
)
@click.option(
    "-s",
    "--shards",
    type=click.IntRange(1, 65536),
    default=1,
    show_default=True,
    help="Shards of the namespace.",
)
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    default=("default",),
    show_default=True,
    callback=_namespace_names,
    help="Namespace(s) to create (repeatable).",
)
@bool_flag(
    "--notifications-enabled",
    default=True,
    help="Notifications on the namespaces (--notifications-enabled=false: off).",
)
@click.option(
    "--notifications/--no-notifications",
    "legacy_notifications",
    default=None,
    hidden=True,
    help="pyxia's older spelling of --notifications-enabled.",
)
@click.option(
    "--key-sorting",
    type=click.Choice(["hierarchical", "natural"]),
    default="hierarchical",
    show_default=True,
)
@click.option(
    "-f",
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster config YAML whose namespaces to create (replaces the flags above).",
)
def standalone(**kw: Any) -> None:
    """Run a single-node pyxia (RF=1, in-process coordinator)."""
    from pyxia.node import standalone

    setup_logging()
    ctx = click.get_current_context()
    notifications = bool_value(ctx, kw, "notifications_enabled")
    if kw["legacy_notifications"] is not None:
        notifications = kw["legacy_notifications"]
    if kw["config_file"] is not None:
        try:
            cfg = load_cluster_config(kw["config_file"], require_servers=False)
        except ConfigError as e:
            raise click.UsageError(str(e)) from e
        note = standalone_config_note(cfg, kw["config_file"])
        if note is not None:
            log.warning(note)
        namespaces = [
            NamespaceConfig(
                n.name, n.initial_shard_count, 1, n.notifications_enabled, n.key_sorting, n.tso
            )
            for n in cfg.namespaces
        ]
    else:
        namespaces = [
            NamespaceConfig(name, kw["shards"], 1, notifications, kw["key_sorting"])
            for name in dict.fromkeys(kw["namespaces"])
        ]
    try:
        options = build_options(kw)
        node = standalone(options, namespaces, config_file=kw["config_file"])
    except (StartupError, ValueError) as e:
        fail(str(e))
    guard_dirs(node.open_dirs, kw["data_dir"], kw["wal_dir"])

    def ready() -> str:
        # Once up (a failed start says one line only): the version and effective config.
        log_start("standalone", {**kw, "wal_sync_data": options.wal_sync_data})
        s = node.server
        total = sum(n.initial_shard_count for n in node.namespaces)
        return (
            f"pyxia standalone ready: public={s.public_address} "
            f"internal={s.internal_address or 'off'} "
            f"metrics={bound_address(options.metrics_addr, s.metrics_port)}{tso_port(s)} "
            f"namespaces={','.join(n.name for n in node.namespaces)} shards={total} "
            f"data-dir={options.data_dir} wal-dir={options.wal_dir}"
        )

    run(run_until_signalled(node.start, node.close, ready))


@click.command()
@server_options
@click.option(
    "-i",
    "--internal-addr",
    default="0.0.0.0:6649",
    show_default=True,
    help="Internal (coordination/replication) gRPC address.",
)
@click.option(
    "--max-shards",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_MAX_SHARDS,
    show_default=True,
    help="Shard replicas this server holds open at most; the coordinator's request for one "
    "more is refused (RESOURCE_EXHAUSTED) before anything is allocated. Replicas already on "
    "disk always open.",
)
@click.option(
    "--read-lease",
    type=GO_DURATION,
    default=f"{int(READ_LEASE_S * 1000)}ms",
    show_default=True,
    callback=_read_lease,
    help="Read lease a follower promises with each leadership confirmation (0 to 5 s; 0: "
    "none): for that long it answers no NewTerm of a newer term, so a leader holding a "
    "majority's promises serves linearizable reads without a round trip. A leader that stops "
    "while serving reads delays its shards' next election by up to this.",
)
@click.option(
    "--wal-segment-size",
    type=click.IntRange(4096, 2**32 - 1),
    default=64 * 1024 * 1024,
    show_default=True,
    help="Largest WAL segment file (preallocated); a log starts at 1 MiB and sizes each new "
    "segment for about a minute of its write rate, up to this.",
)
@options_file_flag("Data server")
@click.option(
    "--enable-test-hooks",
    is_flag=True,
    default=False,
    hidden=True,
    help="TESTING ONLY, off by default: serve pyxia.debug.v1.Debug on the internal port "
    "(arms failpoints in this process at runtime).",
)
def server(**kw: Any) -> None:
    """Run a data server of a cluster (shards are assigned by `pyxia coordinator`)."""
    from pyxia.node import data_server

    setup_logging()
    apply_options_file(click.get_current_context(), kw, kw["sconfig"], SERVER_FILE_KEYS)
    try:
        options = build_options(kw)
        require_membership_proof(
            "pyxia server",
            options.cluster_secret,
            options.peer_tls or TlsOptions(),
            options.internal_tls or TlsOptions(),
        )
    except StartupError as e:
        fail(str(e))
    options.wal_segment_size = kw["wal_segment_size"]
    options.max_shards = kw["max_shards"]
    options.read_lease_s = kw["read_lease"]
    node = data_server(options)
    guard_dirs(node.open_dirs, kw["data_dir"], kw["wal_dir"])
    if kw["enable_test_hooks"]:
        from pyxia.server.debug_rpc import debug_handler

        log.warning("test hooks enabled: pyxia.debug.v1.Debug is served on the internal port")
        node.extra_internal_handlers.append(debug_handler())

    def ready() -> str:
        # Once up (a failed start says one line only): the version and effective config.
        log_start("server", {**kw, "wal_sync_data": options.wal_sync_data})
        return (
            f"pyxia server ready: public={node.public_address} "
            f"internal={node.internal_address} "
            f"metrics={bound_address(options.metrics_addr, node.metrics_port)}{tso_port(node)} "
            f"data-dir={options.data_dir} wal-dir={options.wal_dir}"
        )

    run(run_until_signalled(node.start, node.close, ready))
