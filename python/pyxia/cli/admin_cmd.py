"""``pyxia admin namespace|dataserver|shard ...``: Oxia's admin CLI (``oxia admin``) over the
coordinator's ``io.oxia.proto.v1.OxiaAdmin`` service.

Mirrors ``oxia admin``: the same subcommands, arguments and flags (``--admin-address``, default
``localhost:6651``; ``-o/--output json|yaml|table``, default table; namespace ``--initial-shards``,
``--replication-factor``, ``--notifications``, ``--key-sorting``; data server ``--public``,
``--internal``, repeated ``--label key=value``; ``shard split --namespace --shard
--split-point``), plus ``list`` as a name for ``get`` without an argument, the TLS flags of a
client, and ``--cluster-secret-file`` (a change needs the cluster's proof, a client
certificate, or a coordinator trusting its own host: see docs/admin.md).

Output: ``json`` uses the protobuf field names (as Oxia's JSON), ``yaml`` Oxia's YAML keys
(camelCase), ``table`` Oxia's columns. A refused request prints ``Error: <why>`` and exits 1;
nothing is changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import click
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from pyxia.cli.security_flags import (
    client_security_flags,
    client_security_from_flags,
    cluster_secret_flag,
    secret_from_flags,
)

SERVICE = "io.oxia.proto.v1.OxiaAdmin"
DEFAULT_ADMIN_ADDRESS = "localhost:6651"
TIMEOUT_S = 30.0

F = Callable[..., Any]


def admin_flags(f: F) -> F:
    """Every ``pyxia admin`` subcommand's connection and output flags."""
    f = cluster_secret_flag(f)
    f = client_security_flags("the coordinator", tokens=False)(f)
    f = click.option(
        "-o",
        "--output",
        type=click.Choice(["json", "yaml", "table"]),
        default="table",
        show_default=True,
        help="Output format.",
    )(f)
    return click.option(
        "--admin-address",
        default=DEFAULT_ADMIN_ADDRESS,
        show_default=True,
        help="The coordinator's admin address (its --admin-addr, or its --internal-addr).",
    )(f)


def admin_dialer(kw: dict[str, Any]) -> Callable[[str], Any]:
    """Opens blocking channels to coordinators with the flags' TLS (the flags are read once,
    here); calls carry the cluster's proof when ``--cluster-secret-file`` is given."""
    import grpc

    from pyxia.security.internal_auth import SigningInterceptor

    tls = client_security_from_flags(kw)["tls"]
    secret = secret_from_flags(kw)
    dialer = tls.client() if tls is not None else None

    def dial(address: str) -> Any:
        channel = (
            dialer.sync_secure_channel(address)
            if dialer is not None
            else grpc.insecure_channel(address)
        )
        if secret is not None:
            channel = grpc.intercept_channel(channel, SigningInterceptor(secret))
        return channel

    return dial


def admin_channel(address: str, kw: dict[str, Any]) -> Any:
    """A blocking channel to the coordinator at ``address`` (see :func:`admin_dialer`)."""
    return admin_dialer(kw)(address)


MAX_REDIRECTS = 3
"""Hops to the leading coordinator that one call follows (as Oxia's admin client does)."""


def call(kw: dict[str, Any], method: str, request: Message, response_type: type[Message]) -> Any:
    """One OxiaAdmin call with the flags' TLS and cluster secret; a ClickException (one line)
    on any failure. A coordinator that does not lead names the one that does (its
    "coordinator-leader" hint): the call goes there, as Oxia's admin client does."""
    import grpc

    from pyxia.common.grpc_errors import coordinator_leader_hint

    address = kw["admin_address"]
    dial = admin_dialer(kw)
    for _ in range(MAX_REDIRECTS + 1):
        with dial(address) as ch:
            stub = ch.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                return stub(request, timeout=TIMEOUT_S)
            except grpc.RpcError as e:
                hint = (
                    coordinator_leader_hint(e.trailing_metadata())
                    if isinstance(e, grpc.Call)
                    else None
                )
                if hint is None or hint == address:
                    _fail(address, e)
                address = hint
    raise click.ClickException(
        f"{address}: the coordinators named other leaders {MAX_REDIRECTS} times over: try again "
        "once the election settles"
    )


def _fail(address: str, e: Any) -> NoReturn:
    import grpc

    if isinstance(e, grpc.Call):
        if e.code() == grpc.StatusCode.UNIMPLEMENTED and "Method not found" in (e.details() or ""):
            raise click.ClickException(
                f"{address} does not serve Oxia's admin API: point --admin-address at a "
                "coordinator's admin (or internal) address"
            ) from None
        raise click.ClickException(f"{address}: {e.code().name}: {e.details()}") from None
    raise click.ClickException(f"{address}: {e}") from None


# -- output ---------------------------------------------------------------------------------------


def _as_json(value: Message | list[Message]) -> Any:
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return json_format.MessageToDict(value, preserving_proto_field_name=True)


def _as_yaml(value: Message | list[Message]) -> Any:
    if isinstance(value, list):
        return [_as_yaml(v) for v in value]
    return json_format.MessageToDict(value)


def write(
    output: str,
    value: Message | list[Message],
    header: list[str],
    rows: list[list[str]],
) -> None:
    if output == "json":
        click.echo(json.dumps(_as_json(value), indent=2, sort_keys=True))
    elif output == "yaml":
        click.echo(yaml.safe_dump(_as_yaml(value), sort_keys=True).rstrip("\n"))
    else:
        table = [header, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _namespace_rows(namespaces: list[Any]) -> list[list[str]]:
    return [[n.name, str(n.initial_shard_count), str(n.replication_factor)] for n in namespaces]


NAMESPACE_HEADER = ["NAME", "INITIAL_SHARDS", "REPLICATION_FACTOR"]


def _write_namespace_views(output: str, views: list[Any]) -> None:
    write(output, views, NAMESPACE_HEADER, _namespace_rows([v.namespace for v in views]))


def _write_namespace(output: str, ns: Any) -> None:
    write(output, ns, NAMESPACE_HEADER, _namespace_rows([ns]))


def _write_data_server_views(output: str, views: list[Any]) -> None:
    from pyxia.proto import metadata_pb2

    rows = [
        [
            v.data_server.identity.name or v.data_server.identity.internal,
            v.data_server.identity.public,
            v.data_server.identity.internal,
            metadata_pb2.DataServerState.Name(v.data_server_status.state),
        ]
        for v in views
    ]
    write(output, views, ["NAME", "PUBLIC", "INTERNAL", "STATE"], rows)


def _write_data_server(output: str, ds: Any) -> None:
    ident = ds.identity
    rows = [
        [ident.name or ident.internal, ident.public, ident.internal, _labels(ds.metadata.labels)]
    ]
    write(output, ds, ["NAME", "PUBLIC", "INTERNAL", "LABELS"], rows)


# -- namespace ------------------------------------------------------------------------------------


@click.group("namespace")
def namespace() -> None:
    """Oxia admin operations on namespaces."""


def _get_namespaces(name: str | None, kw: dict[str, Any]) -> None:
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    if name is None:
        res = call(kw, "ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse)
        _write_namespace_views(output, list(res.namespaces))
    else:
        res = call(
            kw, "GetNamespace", pb.GetNamespaceRequest(namespace=name), pb.GetNamespaceResponse
        )
        _write_namespace_views(output, [res.namespace])


@namespace.command("get")
@click.argument("name", required=False)
@admin_flags
def namespace_get(name: str | None, **kw: Any) -> None:
    """Get a namespace, or list them all (no NAME)."""
    _get_namespaces(name, kw)


@namespace.command("list")
@admin_flags
def namespace_list(**kw: Any) -> None:
    """List the namespaces (those of the config file and of the admin API)."""
    _get_namespaces(None, kw)


@namespace.command("create")
@click.argument("name")
@click.option("--initial-shards", type=click.IntRange(1, 2**32 - 1), required=True)
@click.option("--replication-factor", type=click.IntRange(1, 2**32 - 1), required=True)
@click.option(
    "--notifications/--no-notifications",
    default=True,
    show_default=True,
    help="Whether notifications are enabled (Oxia's --notifications=false is --no-notifications).",
)
@click.option(
    "--key-sorting",
    type=click.Choice(["hierarchical", "natural"], case_sensitive=False),
    default="hierarchical",
    show_default=True,
)
@admin_flags
def namespace_create(
    name: str,
    initial_shards: int,
    replication_factor: int,
    notifications: bool,
    key_sorting: str,
    **kw: Any,
) -> None:
    """Create a namespace: its shards are created and elected."""
    from pyxia.proto import metadata_pb2
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    ns = metadata_pb2.Namespace(
        name=name,
        initial_shard_count=initial_shards,
        replication_factor=replication_factor,
        notifications_enabled=notifications,
        key_sorting=key_sorting.lower(),
    )
    res = call(
        kw, "CreateNamespace", pb.CreateNamespaceRequest(namespace=ns), pb.CreateNamespaceResponse
    )
    _write_namespace(output, res.namespace)


@namespace.command("patch")
@click.argument("name")
@click.option("--replication-factor", type=click.IntRange(1, 2**32 - 1), default=None)
@click.option("--notifications/--no-notifications", default=None)
@admin_flags
def namespace_patch(
    name: str, replication_factor: int | None, notifications: bool | None, **kw: Any
) -> None:
    """Patch a namespace: its replication factor (for shards created from now on) or whether
    notifications are on (from each shard's next term)."""
    from pyxia.proto import metadata_pb2
    from pyxia.proto import oxia_admin_pb2 as pb

    if replication_factor is None and notifications is None:
        raise click.UsageError("must specify at least one field to patch")
    output = kw.pop("output")
    ns = metadata_pb2.Namespace(name=name)
    if replication_factor is not None:
        ns.replication_factor = replication_factor
    if notifications is not None:
        ns.notifications_enabled = notifications
    res = call(
        kw, "PatchNamespace", pb.PatchNamespaceRequest(namespace=ns), pb.PatchNamespaceResponse
    )
    _write_namespace(output, res.namespace)


@namespace.command("delete")
@click.argument("name")
@admin_flags
def namespace_delete(name: str, **kw: Any) -> None:
    """Delete a namespace and its shards (on every data server)."""
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    res = call(
        kw,
        "DeleteNamespace",
        pb.DeleteNamespaceRequest(namespace=name),
        pb.DeleteNamespaceResponse,
    )
    _write_namespace(output, res.namespace)


# -- dataserver -----------------------------------------------------------------------------------


@click.group("dataserver")
def dataserver() -> None:
    """Oxia admin operations on data servers."""


def _parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--label {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _get_data_servers(name: str | None, kw: dict[str, Any]) -> None:
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    if name is None:
        res = call(kw, "ListDataServers", pb.ListDataServersRequest(), pb.ListDataServersResponse)
        _write_data_server_views(output, list(res.data_servers))
    else:
        res = call(
            kw,
            "GetDataServer",
            pb.GetDataServerRequest(data_server=name),
            pb.GetDataServerResponse,
        )
        _write_data_server_views(output, [res.data_server])


@dataserver.command("get")
@click.argument("name", required=False)
@admin_flags
def dataserver_get(name: str | None, **kw: Any) -> None:
    """Get a data server (by name, else internal address), or list them all (no NAME)."""
    _get_data_servers(name, kw)


@dataserver.command("list")
@admin_flags
def dataserver_list(**kw: Any) -> None:
    """List the data servers with their state (RUNNING, UNAVAILABLE, DRAINING)."""
    _get_data_servers(None, kw)


def _data_server_options(f: F) -> F:
    f = click.option("--label", "labels", multiple=True, help="A label key=value (repeatable).")(f)
    f = click.option("--internal", default=None, help="Internal address host:port.")(f)
    return click.option("--public", default=None, help="Public address host:port.")(f)


@dataserver.command("create")
@click.argument("name")
@_data_server_options
@admin_flags
def dataserver_create(
    name: str, public: str | None, internal: str | None, labels: tuple[str, ...], **kw: Any
) -> None:
    """Add a data server: the balancer starts moving replicas to it."""
    from pyxia.proto import metadata_pb2
    from pyxia.proto import oxia_admin_pb2 as pb

    if not public or not internal:
        raise click.UsageError("--public and --internal are required")
    output = kw.pop("output")
    ds = metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(name=name, public=public, internal=internal),
        metadata=metadata_pb2.DataServerMetadata(labels=_parse_labels(labels)),
    )
    res = call(
        kw,
        "CreateDataServer",
        pb.CreateDataServerRequest(data_server=ds),
        pb.CreateDataServerResponse,
    )
    _write_data_server(output, res.data_server)


@dataserver.command("patch")
@click.argument("name")
@_data_server_options
@admin_flags
def dataserver_patch(
    name: str, public: str | None, internal: str | None, labels: tuple[str, ...], **kw: Any
) -> None:
    """Change a data server's public or internal address or its labels (replaced)."""
    from pyxia.proto import metadata_pb2
    from pyxia.proto import oxia_admin_pb2 as pb

    if public is None and internal is None and not labels:
        raise click.UsageError("must specify at least one field to patch")
    output = kw.pop("output")
    ds = metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(
            name=name, public=public or "", internal=internal or ""
        )
    )
    if labels:
        ds.metadata.labels.update(_parse_labels(labels))
    res = call(
        kw, "PatchDataServer", pb.PatchDataServerRequest(data_server=ds), pb.PatchDataServerResponse
    )
    _write_data_server(output, res.data_server)


@dataserver.command("delete")
@click.argument("name")
@admin_flags
def dataserver_delete(name: str, **kw: Any) -> None:
    """Remove a data server: its replicas are moved to the others first."""
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    res = call(
        kw,
        "DeleteDataServer",
        pb.DeleteDataServerRequest(data_server=name),
        pb.DeleteDataServerResponse,
    )
    _write_data_server(output, res.data_server)


# -- shard ----------------------------------------------------------------------------------------


@click.group("shard")
def shard() -> None:
    """Oxia admin operations on shards."""


@shard.command("split")
@click.option("--namespace", default="default", show_default=True)
@click.option("--shard", "shard_id", type=click.IntRange(0, 2**63 - 1), required=True)
@click.option(
    "--split-point",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="Hash split point (default: the middle of the shard's hash range).",
)
@admin_flags
def shard_split(namespace: str, shard_id: int, split_point: int | None, **kw: Any) -> None:
    """Split a shard into two children."""
    from pyxia.proto import oxia_admin_pb2 as pb

    output = kw.pop("output")
    req = pb.SplitShardRequest(namespace=namespace, shard=shard_id)
    if split_point is not None:
        req.split_point = split_point
    res = call(kw, "SplitShard", req, pb.SplitShardResponse)
    write(
        output,
        res,
        ["LEFT_CHILD_SHARD", "RIGHT_CHILD_SHARD"],
        [[str(res.left_child_shard), str(res.right_child_shard)]],
    )


COMMANDS = (namespace, dataserver, shard)
