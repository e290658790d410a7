"""``pyxia client ...``: read and write records (flags as ``oxia client``)."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from pyxia.cli.oxia_flags import GO_DURATION
from pyxia.cli.security_flags import client_security_flags, client_security_from_flags
from pyxia.client import Client, ComparisonType, GetResult, PyxiaError, Version

_COMPARISONS = {c.name.lower(): c for c in ComparisonType}


def _version(key: str, v: Version) -> dict[str, Any]:
    return {
        "key": key,
        "version_id": v.version_id,
        "created_timestamp": v.created_timestamp,
        "modified_timestamp": v.modified_timestamp,
        "modifications_count": v.modifications_count,
        "ephemeral": v.is_ephemeral,
        "session_id": v.session_id or 0,
        "client_identity": v.client_identity or "",
    }


def _value(b: bytes | None) -> str:
    if b is None:
        return ""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def _out(obj: Any) -> None:
    click.echo(obj if isinstance(obj, str) else json.dumps(obj))


@contextmanager
def _client(ctx: click.Context) -> Iterator[Client]:
    o = ctx.obj
    try:
        with Client(
            o["service_address"],
            namespace=o["namespace"],
            request_timeout_s=o["request_timeout"],
            **o["security"],
        ) as c:
            yield c
    except PyxiaError as e:
        raise click.ClickException(str(e)) from e


@click.group()
@click.option(
    "-a",
    "--service-address",
    default="localhost:6648",
    show_default=True,
    help="Service address(es), comma-separated.",
)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--request-timeout",
    type=GO_DURATION,
    default="30s",
    show_default=True,
    help="Go duration or seconds.",
)
@client_security_flags()
@click.pass_context
def client(
    ctx: click.Context,
    /,
    service_address: str,
    namespace: str,
    request_timeout: float,
    **security: Any,
) -> None:
    """Read and write records of an Oxia-compatible service."""
    ctx.obj = {
        "service_address": service_address,
        "namespace": namespace,
        "request_timeout": request_timeout,
        "security": client_security_from_flags(security),
    }


@client.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option("-e", "--expected-version", type=int, default=None, help="-1: must not exist.")
@click.option("-c", "--std-in", is_flag=True, help="Read the value from stdin.")
@click.option("-p", "--partition-key", default=None)
@click.option("-d", "--sequence-keys-deltas", default=None, help="Comma-separated deltas.")
@click.option("--index", "indexes", multiple=True, help="NAME=SECONDARY_KEY (repeatable).")
@click.pass_context
def put(
    ctx: click.Context,
    key: str,
    value: str | None,
    expected_version: int | None,
    std_in: bool,
    partition_key: str | None,
    sequence_keys_deltas: str | None,
    indexes: tuple[str, ...],
) -> None:
    """Put a value (prints the record's version as JSON)."""
    if value is not None and std_in:
        raise click.UsageError("the value can either be provided as argument or read from std-in")
    if value is None and not std_in:
        raise click.UsageError("no value provided for the record")
    data = sys.stdin.buffer.read() if std_in else (value or "").encode()
    deltas = [int(d) for d in sequence_keys_deltas.split(",")] if sequence_keys_deltas else None
    idx = [tuple(i.split("=", 1)) for i in indexes]
    if any(len(i) != 2 for i in idx):
        raise click.UsageError("--index takes NAME=SECONDARY_KEY")
    with _client(ctx) as c:
        r = c.put(
            key,
            data,
            expected_version_id=expected_version,
            partition_key=partition_key,
            sequence_key_deltas=deltas,
            secondary_indexes=[(a, b) for a, b in idx] or None,
        )
    _out(_version(r.key, r.version))


@client.command()
@click.argument("key")
@click.option("-v", "--include-version", is_flag=True, help="Also print the version.")
@click.option("-p", "--partition-key", default=None)
@click.option("--index", default=None, help="Secondary index to look the key up in.")
@click.option(
    "-t",
    "--comparison-type",
    type=click.Choice(sorted(_COMPARISONS)),
    default="equal",
    show_default=True,
)
@click.pass_context
def get(
    ctx: click.Context,
    key: str,
    include_version: bool,
    partition_key: str | None,
    index: str | None,
    comparison_type: str,
) -> None:
    """Get one record (prints its value)."""
    with _client(ctx) as c:
        r = c.get(
            key,
            comparison=_COMPARISONS[comparison_type],
            partition_key=partition_key,
            use_index=index,
        )
    _out(_value(r.value))
    if include_version:
        _out("---")
        _out(_version(r.key, r.version))


@client.command()
@click.argument("key")
@click.option("-e", "--expected-version", type=int, default=None)
@click.option("-p", "--partition-key", default=None)
@click.pass_context
def delete(
    ctx: click.Context, key: str, expected_version: int | None, partition_key: str | None
) -> None:
    """Delete one record."""
    with _client(ctx) as c:
        found = c.delete(key, expected_version_id=expected_version, partition_key=partition_key)
    if not found:
        raise click.ClickException(f"oxia: key not found: {key!r}")


def _range_options(f: Any) -> Any:
    for o in reversed(
        [
            click.option("-s", "--key-min", default="", help="Range start (inclusive)."),
            click.option("-e", "--key-max", default="", help="Range end (exclusive)."),
            click.option("-p", "--partition-key", default=None),
        ]
    ):
        f = o(f)
    return f


@client.command("delete-range")
@_range_options
@click.pass_context
def delete_range(ctx: click.Context, key_min: str, key_max: str, partition_key: str | None) -> None:
    """Delete the records in a key range."""
    with _client(ctx) as c:
        c.delete_range(key_min, key_max, partition_key=partition_key)


@client.command("list")
@_range_options
@click.option("--index", default=None, help="Secondary index.")
@click.pass_context
def list_cmd(
    ctx: click.Context, key_min: str, key_max: str, partition_key: str | None, index: str | None
) -> None:
    """List the keys in a range (one per line)."""
    with _client(ctx) as c:
        for k in c.list(key_min, key_max, partition_key=partition_key, use_index=index):
            _out(k)


@client.command("range-scan")
@_range_options
@click.option("--index", default=None, help="Secondary index.")
@click.pass_context
def range_scan(
    ctx: click.Context, key_min: str, key_max: str, partition_key: str | None, index: str | None
) -> None:
    """Print the records in a range (one JSON object per line)."""
    with (
        _client(ctx) as c,
        c.range_scan(key_min, key_max, partition_key=partition_key, use_index=index) as it,
    ):
        for r in it:
            _out(_record(r))


def _record(r: GetResult) -> dict[str, Any]:
    return {"value": _value(r.value), **_version(r.key, r.version)}


@client.command()
@click.option("--count", type=int, default=0, help="Stop after this many notifications.")
@click.pass_context
def notifications(ctx: click.Context, count: int) -> None:
    """Follow the change notifications (one JSON object per line)."""
    n = 0
    with _client(ctx) as c, c.get_notifications() as feed:
        for batch in feed:
            for note in batch:
                obj: dict[str, Any] = {
                    "shard": batch.shard,
                    "offset": batch.offset,
                    "type": note.type.name,
                    "key": note.key,
                }
                if note.version_id is not None:
                    obj["version_id"] = note.version_id
                if note.key_range_end is not None:
                    obj["key_range_end"] = note.key_range_end
                _out(obj)
                n += 1
                if count and n >= count:
                    return


@client.command("sequence-updates")
@click.argument("key")
@click.option("-p", "--partition-key", required=True)
@click.option("--count", type=int, default=0, help="Stop after this many updates.")
@click.pass_context
def sequence_updates(ctx: click.Context, key: str, partition_key: str, count: int) -> None:
    """Follow the highest key of a sequence."""
    n = 0
    with _client(ctx) as c, c.get_sequence_updates(key, partition_key=partition_key) as it:
        for k in it:
            _out(k)
            n += 1
            if count and n >= count:
                return
