"""``pyxia coordinator``, ``pyxia admin status`` and ``pyxia health``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pyxia.cli.oxia_flags import (
    GO_DURATION,
    apply_options_file,
    log_start,
    options_file_flag,
    refused,
    setup_logging,
)
from pyxia.cli.security_flags import (
    client_security_flags,
    client_security_from_flags,
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
    make_dirs_private,
    run,
    run_until_signalled,
)
from pyxia.config import COORDINATOR_FILE_KEYS, ConfigError, load_cluster_config
from pyxia.dirs import MetadataDir

log = logging.getLogger("pyxia.cli")

F = TypeVar("F", bound=Callable[..., Any])


def deprecated_alias(flag: str, dest: str, instead: str) -> Callable[[F], F]:
    """Oxia's deprecated spelling ``flag`` of ``instead``: accepted, hidden, with a warning."""

    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            click.echo(f"Flag {flag} has been deprecated, use {instead}", err=True)
        return value

    return click.option(
        flag,
        dest,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        hidden=True,
        callback=warn,
        help=f"Deprecated: {instead}.",
    )


def _file_param(name: str, value: Any) -> tuple[str, Any]:
    """Oxia's coordinator file parameters under this command's names."""
    if name == "raft_bootstrap_nodes":
        return name, ",".join(value)
    if name == "file_clusters_status_path":
        raise click.UsageError(
            "metadata.file.statusName is not supported: the file provider keeps the cluster "
            "status in --metadata-dir (metadata.file.dir)"
        )
    return name, value


@click.command()
@click.option(
    "-f",
    "--cluster-config",
    "cluster_config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster config YAML (namespaces, servers, loadBalancer); changes are "
    "picked up while running. Required (here or as cluster.configPath in --sconfig).",
)
@deprecated_alias("--conf", "cluster_config_conf", "--cluster-config")
@deprecated_alias("--cconfig", "cluster_config_cconfig", "--cluster-config")
@options_file_flag("Coordinator")
@click.option(
    "--metadata",
    type=click.Choice(["memory", "file", "raft", "etcd", "kubernetes", "configmap"]),
    default="file",
    show_default=True,
    help="Where the cluster status lives (configmap: Oxia's name of kubernetes).",
)
@click.option(
    "--k8s-configmap-name",
    default=None,
    help="ConfigMap holding the cluster status (kubernetes provider) "
    "[default: oxia-cluster-status].",
)
@click.option(
    "--raft-bootstrap-nodes",
    default=None,
    help="Every coordinator's raft address H:P,... (Oxia's form: this one's is left out, "
    "the rest are --raft-peers).",
)
@click.option(
    "--raft-data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Raft provider's directory (Oxia's name; default --metadata-dir).",
)
@refused(
    "--file-clusters-status-path",
    equivalent="the file provider keeps the cluster status in --metadata-dir",
)
@click.option(
    "--metadata-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/coordinator"),
    show_default=True,
    help="Directory of the file (and raft) providers.",
)
@click.option(
    "--etcd-endpoints",
    default=None,
    help="etcd endpoints H:P,... or https://H:P,... (etcd provider; https with --etcd-tls-*).",
)
@tls_flags("etcd", "the connections to etcd", listener=False)
@click.option(
    "--etcd-lease-ttl",
    type=click.IntRange(2, 3600),
    default=5,
    show_default=True,
    help="Seconds the leading coordinator's etcd lease lives without a keepalive: how long a "
    "standby waits to take over from a coordinator that died (kept alive every third of it "
    "from a thread of its own, however busy the coordinator).",
)
@click.option("--etcd-username", default=None, help="etcd user (etcd provider, auth enabled).")
@click.option(
    "--etcd-password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File (mode 0600) holding the password of --etcd-username.",
)
@click.option("--raft-address", default=None, help="This coordinator's raft address H:P.")
@click.option("--raft-peers", default=None, help="The other coordinators' raft addresses.")
@click.option(
    "--raft-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Secret shared by the coordinators (file, mode 0600; required with --metadata raft): "
    "authenticates and encrypts every raft frame.",
)
@click.option(
    "--k8s-namespace",
    default="default",
    show_default=True,
    help="Kubernetes namespace (kubernetes provider).",
)
@click.option(
    "-i",
    "--internal-addr",
    default="0.0.0.0:6649",
    show_default=True,
    help="gRPC address: health and the admin API (pyxia admin status).",
)
@click.option(
    "-p",
    "--admin-addr",
    "--public-addr",
    "admin_addr",
    default="0.0.0.0:6651",
    show_default=True,
    help="Admin API address (Oxia's io.oxia.proto.v1.OxiaAdmin, also served on "
    "--internal-addr; Oxia's --public-addr); empty to disable.",
)
@click.option(
    "--admin-trust-loopback",
    is_flag=True,
    default=False,
    help="Admit admin changes from this host (127.0.0.0/8, ::1) without the cluster's proof: "
    "lets Oxia's `oxia admin` CLI (no TLS, no proof) change the cluster from the "
    "coordinator's host. Bind --admin-addr to loopback with it.",
)
@click.option(
    "--admin-advertised-address",
    default=None,
    help="host:port where admin clients reach this coordinator; the coordinators that do not "
    "lead point Oxia's admin client here while this one leads (default: --admin-addr, with "
    "this host's name for 0.0.0.0).",
)
@click.option(
    "-m",
    "--metrics-addr",
    default="0.0.0.0:8080",
    show_default=True,
    help="Prometheus /metrics address; empty to disable.",
)
@click.option(
    "--liveness-probe-interval",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds between health probes of each data server [default: 2].",
)
@click.option(
    "--liveness-probe-timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds before a health probe counts as failed [default: 5].",
)
@click.option(
    "--liveness-failures",
    type=click.IntRange(1, 100),
    default=None,
    help="Consecutive failed probes that make an unresponsive (e.g. paused) data server "
    "unavailable; one that refuses connections is unavailable at once [default: 3].",
)
@click.option(
    "--per-shard-election-metrics/--no-per-shard-election-metrics",
    default=True,
    show_default=True,
    help="Election latency histograms and failure counts per shard (Oxia's labels), or per "
    'namespace (shard=""): per shard is about 70 series each, a 70 MB exposition for '
    "10,000 shards; the term gauge stays per shard either way.",
)
@click.option(
    "--assignments-push-linger",
    type=click.FloatRange(0, 5),
    default=0.1,  # = coordinator.DEFAULT_ASSIGNMENTS_PUSH_LINGER
    show_default=True,
    help="Seconds a data server's assignment push (the whole map) waits after a change for "
    "more changes, sent together: a burst of elections finishing one after another is one "
    "push per server; 0: each change as it comes.",
)
@tls_flags("", "the coordinator's gRPC port (health, admin API)", listener=True)
@tls_flags("peer", "connections to the data servers", listener=False)
@cluster_secret_flag
def coordinator(**kw: Any) -> None:
    """Run the cluster coordinator (elections, failure detection, placement)."""
    from pyxia.coordinator.coordinator import CoordinatorOptions
    from pyxia.coordinator.dataserver_controller import LivenessOptions
    from pyxia.coordinator.metadata.factory import create_provider
    from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions

    setup_logging()
    ctx = click.get_current_context()
    apply_options_file(ctx, kw, kw["sconfig"], COORDINATOR_FILE_KEYS, _file_param)
    path: Path | None = (
        kw["cluster_config"] or kw["cluster_config_conf"] or kw["cluster_config_cconfig"]
    )
    if path is None:
        raise click.UsageError(
            "a cluster config is required: -f/--cluster-config (or cluster.configPath in "
            "--sconfig)",
            ctx,
        )
    if kw["metadata"] == "configmap":
        kw["metadata"] = "kubernetes"
    listener_tls = tls_from_flags(kw, "", listener=True)
    peer_tls = tls_from_flags(kw, "peer", listener=False)
    secret = secret_from_flags(kw)
    try:
        require_membership_proof("pyxia coordinator", secret, peer_tls, None)
    except StartupError as e:
        fail(str(e))

    cluster_config: Path = path

    def load() -> Any:
        return load_cluster_config(cluster_config)

    try:
        load()
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    try:
        check_addr("--internal-addr", kw["internal_addr"])
        check_addr("--admin-addr", kw["admin_addr"], allow_empty=True)
        check_addr("--admin-advertised-address", kw["admin_advertised_address"], allow_empty=True)
        check_addr("--metrics-addr", kw["metrics_addr"], allow_empty=True)
    except StartupError as e:
        fail(str(e))
    options: dict[str, Any] = {}
    name = kw["metadata"]
    metadata_dir: MetadataDir | None = None
    if name in ("file", "raft"):
        # Locked and checked before its mode is touched; held for the life of the process.
        metadata_dir = guard_dirs(
            lambda: MetadataDir.open(kw["metadata_dir"], name), kw["metadata_dir"]
        )
        options["metadata_dir"] = str(kw["metadata_dir"])
    else:
        make_dirs_private()  # no directory of its own: what it writes is private all the same
    if name == "etcd":
        options["etcd_endpoints"] = kw["etcd_endpoints"]
        options["etcd_tls"] = tls_from_flags(kw, "etcd", listener=False)
        options["etcd_username"] = kw["etcd_username"]
        options["etcd_password_file"] = kw["etcd_password_file"]
        options["lease_ttl"] = kw["etcd_lease_ttl"]
    if name == "raft":
        options["raft_address"] = kw["raft_address"]
        options["raft_peers"] = kw["raft_peers"]
        if kw["raft_bootstrap_nodes"] and not kw["raft_peers"]:
            options["raft_peers"] = ",".join(
                n.strip()
                for n in kw["raft_bootstrap_nodes"].split(",")
                if n.strip() and n.strip() != kw["raft_address"]
            )
        options["raft_secret_file"] = kw["raft_secret_file"]
        if kw["raft_data_dir"] is not None:
            options["data_dir"] = str(kw["raft_data_dir"])
    if name == "kubernetes":
        options["namespace"] = kw["k8s_namespace"]
        if kw["k8s_configmap_name"]:
            options["status_name"] = kw["k8s_configmap_name"]
    liveness = {
        field: kw[f"liveness_{field}"]
        for field in ("probe_interval", "probe_timeout", "failures")
        if kw[f"liveness_{field}"] is not None
    }
    try:
        provider = create_provider(name, **options)
    except ValueError as e:
        raise click.ClickException(str(e)) from None  # one line: "Error: ..."
    server = CoordinatorServer(
        provider,
        load,
        CoordinatorServerOptions(
            internal_addr=kw["internal_addr"],
            metrics_addr=kw["metrics_addr"] or None,
            coordinator=CoordinatorOptions(
                liveness=LivenessOptions(**liveness),
                peer_tls=peer_tls if peer_tls.is_enabled else None,
                cluster_secret=secret,
                config_source=str(path),
                per_shard_election_metrics=kw["per_shard_election_metrics"],
                assignments_push_linger=kw["assignments_push_linger"],
            ),
            tls=listener_tls if listener_tls.is_enabled else None,
            admin_addr=kw["admin_addr"] or None,
            admin_trust_loopback=kw["admin_trust_loopback"],
            admin_advertised_address=kw["admin_advertised_address"] or None,
        ),
    )

    def ready() -> str:
        # Once up (a failed start says one line only): the version and effective config.
        log_start("coordinator", {**kw, "cluster_config": path, "metadata": name})
        admin = (
            f" admin={bound_address(kw['admin_addr'], server.admin_port)}"
            if server.admin_port
            else ""
        )
        return (
            f"pyxia coordinator ready: "
            f"internal={bound_address(kw['internal_addr'], server.port)}{admin} "
            f"metrics={bound_address(kw['metrics_addr'], server.metrics_port)} "
            f"metadata={name} config={path}"
        )

    async def close() -> None:
        await server.close()
        if metadata_dir is not None:
            metadata_dir.close()

    run(run_until_signalled(server.start, close, ready))


def _sync_channel(address: str, security: dict[str, Any]) -> Any:
    """A blocking channel to ``address``, with TLS when the flags ask for it."""
    import grpc

    tls = client_security_from_flags(security)["tls"]
    if tls is None:
        return grpc.insecure_channel(address)
    dialer = tls.client()
    assert dialer is not None
    return dialer.sync_secure_channel(address)


@click.group()
def admin() -> None:
    """Inspect a running cluster."""


@admin.command()
@click.option(
    "--coordinator",
    "--admin-address",
    "address",
    default="localhost:6649",
    show_default=True,
    help="The coordinator's internal (or admin) address.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@client_security_flags("the coordinator", tokens=False)
def status(address: str, as_json: bool, **security: Any) -> None:
    """Print every namespace's shards: term, leader, ensemble, status."""
    import grpc
    from google.protobuf import json_format

    from pyxia.proto import admin_pb2, metadata_pb2

    with _sync_channel(address, security) as ch:
        call = ch.unary_unary(
            "/pyxia.admin.v1.PyxiaAdmin/GetClusterStatus",
            request_serializer=admin_pb2.GetClusterStatusRequest.SerializeToString,
            response_deserializer=admin_pb2.GetClusterStatusResponse.FromString,
        )
        try:
            res = call(admin_pb2.GetClusterStatusRequest(), timeout=10)
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise click.ClickException(
                    f"{address} is not a coordinator (it does not serve pyxia's admin API; "
                    "a data server?): point --coordinator at a coordinator's address"
                ) from None
            detail = e.details() if isinstance(e, grpc.Call) else str(e)
            raise click.ClickException(f"{address}: {detail}") from None
    if not res.leader:
        raise click.ClickException(f"{address} is not the leading coordinator")
    if as_json:
        click.echo(json_format.MessageToJson(res))
        return
    down = {s.internal for s in res.servers if not s.available}
    for s in res.servers:
        click.echo(
            f"server {s.internal} (public {s.public}): "
            f"{'available' if s.available else 'UNAVAILABLE'}"
        )
    for ns_name in sorted(res.status.namespaces):
        ns = res.status.namespaces[ns_name]
        click.echo(f"namespace {ns_name} (replication factor {ns.replication_factor})")
        for shard_id in sorted(ns.shards):
            m = ns.shards[shard_id]
            ensemble = ", ".join(
                x.internal + (" (down)" if x.internal in down else "") for x in m.ensemble
            )
            leader = m.leader.internal if m.HasField("leader") else "-"
            click.echo(
                f"  shard {shard_id:<4} term {m.term:<5} "
                f"{metadata_pb2.ShardStatus.Name(m.status):<12} leader {leader:<22} "
                f"ensemble [{ensemble}]"
            )


@admin.command("move-leader")
@click.option(
    "--coordinator",
    "--admin-address",
    "address",
    default="localhost:6649",
    show_default=True,
    help="The coordinator's internal (or admin) address.",
)
@click.option("--namespace", default="default", show_default=True)
@click.option("--shard", type=click.IntRange(0), required=True)
@click.option(
    "--to",
    "target",
    default="",
    help="The ensemble member (internal address) to lead next (default: any other member).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the new leader.",
)
@client_security_flags("the coordinator", tokens=False)
@cluster_secret_flag
def move_leader(
    address: str, namespace: str, shard: int, target: str, timeout: float, **security: Any
) -> None:
    """Move a shard's leadership as a planned move: the leader finishes what it logged and
    hands over, clients see only retryable answers. A coordinator with a cluster secret needs
    it (--cluster-secret-file) or a cluster certificate (mutual TLS)."""
    import grpc

    from pyxia.cli.admin_cmd import admin_channel
    from pyxia.proto import admin_pb2

    with admin_channel(address, security) as ch:
        call = ch.unary_unary(
            "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
            request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
            response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
        )
        req = admin_pb2.MoveLeaderRequest(
            namespace=namespace, shard=shard, to=target, timeout_ms=int(timeout * 1000)
        )
        try:
            res = call(req, timeout=timeout + 5)
        except grpc.RpcError as e:
            detail = e.details() if isinstance(e, grpc.Call) else str(e)
            raise click.ClickException(f"{address}: {detail}") from None
    click.echo(f"shard {shard}: {res.leader} leads term {res.term}")


@click.command()
@click.option(
    "--address",
    default=None,
    help="Any pyxia gRPC port (data server public/internal, coordinator), host:port "
    "[default: localhost:6648].",
)
@click.option("--host", default=None, help="Host to probe (Oxia's form, with --port).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to probe (Oxia's form; with only --host: 6649, Oxia's default).",
)
@click.option("--service", default="", help="Health service name ('' = the server).")
@click.option(
    "--timeout", type=GO_DURATION, default="5s", show_default=True, help="Go duration or seconds."
)
@client_security_flags("the port", tokens=False)
def health(
    address: str | None,
    host: str | None,
    port: int | None,
    service: str,
    timeout: float,
    **security: Any,
) -> None:
    """Probe a pyxia port with the standard gRPC health check."""
    import grpc
    from grpc_health.v1 import health_pb2

    if address is not None and (host is not None or port is not None):
        raise click.UsageError("give --address, or --host/--port, not both")
    if address is None:
        if host is None and port is None:
            address = "localhost:6648"
        else:
            h = host or "localhost"
            address = f"[{h}]:{port or 6649}" if ":" in h else f"{h}:{port or 6649}"

    with _sync_channel(address, security) as ch:
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            r = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "UNAVAILABLE"
            click.echo(f"{address}: unreachable ({code})")
            sys.exit(2)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    click.echo(f"{address}: {name}")
    sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _attach_admin_commands() -> None:
    """``pyxia admin namespace|dataserver|shard`` (Oxia's ``oxia admin ...``) live in
    :mod:`pyxia.cli.admin_cmd`; they join the ``admin`` group when this module loads."""
    from pyxia.cli.admin_cmd import COMMANDS as ADMIN_COMMANDS

    for command in ADMIN_COMMANDS:
        admin.add_command(command)


_attach_admin_commands()
