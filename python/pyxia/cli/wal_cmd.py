"""``pyxia wal``: operator tools for write-ahead log directories (Oxia's ``oxia wal``).

- ``perf``: measures the WAL against the disk's own write + fdatasync.
- ``scan``: reads a shard's log (``--wal-dir D --namespace N --shard S``, Oxia's flags;
  ``--offset-first`` / ``--offset-last``; ``--json``: one object per entry, as Oxia), or lists
  the shard logs a WAL dir holds. Read-only (segments are read as files, never recovered), so
  it may look at a running node's log.
- ``truncate``: removes the entries after an offset (``--offset``, Oxia's
  ``--last-safe-entry``; or ``--truncate-last-entry``). It holds the WAL dir's and the data
  dir's locks, so it refuses a running node. It reads the shard DB's commit offset: a cut
  below it cannot take back what the DB applied, so the log is then emptied and the shard
  continues from its DB. The segments it changes are copied to
  ``shard-<id>.truncated-<time>`` next to the shard's log first.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from pyxia import _native
from pyxia.cli.startup import fail
from pyxia.dirs import DirError, DirLock
from pyxia.dirs import holder as lock_holder
from pyxia.dirs import manifest as dir_manifest
from pyxia.proto import replication_pb2, storage_pb2
from pyxia.wal_inspect import (
    ShardScan,
    list_shards,
    read_entries,
    scan_shard,
    segment_files,
    shard_log_dir,
)


@click.group()
def wal() -> None:
    """Inspect and measure write-ahead logs."""


@wal.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to run in (default: the system temp dir). Use the disk you care about.",
)
@click.option(
    "--seconds",
    type=float,
    default=8.0,
    show_default=True,
    help="Total time; split evenly over the four phases.",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 99),
    default=1,
    show_default=True,
    help="Run several times and report medians.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perf(directory: Path | None, seconds: float, repeat: int, as_json: bool) -> None:
    """Measure WAL append/durable throughput and sync latency against a
    same-run baseline of write + fdatasync."""
    from pyxia import wal_perf

    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)

    def progress(msg: str) -> None:
        click.echo(msg, err=True)

    result = wal_perf.run_repeated(directory, seconds, repeat, progress)
    if as_json:
        click.echo(json.dumps(result))
        return
    rows = [
        ("append (unsynced, batch API)", f"{result['append_entries_per_s']:,.0f} entries/s"),
        ("durable (64 async appenders)", f"{result['durable_entries_per_s']:,.0f} entries/s"),
        (
            "baseline write+fdatasync",
            f"{result['baseline_fdatasync_entries_per_s']:,.0f} entries/s",
        ),
        ("durable / baseline", f"{result['durable_vs_baseline']}x"),
        ("sync round p50 / p99", f"{result['sync_p50_us']} / {result['sync_p99_us']} us"),
        (
            "baseline fdatasync p50 / p99",
            f"{result['baseline_fdatasync_p50_us']} / {result['baseline_fdatasync_p99_us']} us",
        ),
        ("sync p50 / baseline p50", f"{result['sync_p50_vs_baseline_p50']}x"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


def _when(ts: int) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def _decode(value: bytes) -> storage_pb2.LogEntryValue | None:
    try:
        return storage_pb2.LogEntryValue.FromString(value)
    except DecodeError:
        return None


def _short(key: str, width: int = 40) -> str:
    return key if len(key) <= width else key[: width - 3] + "..."


def describe_value(value: bytes) -> str:
    """A short summary of an entry's operations: ``put /a, delete /b (+3)``."""
    lev = _decode(value)
    if lev is None:
        return "(not a pyxia entry)"
    if lev.WhichOneof("value") == "control_request":
        return "control"
    ops: list[str] = []
    for w in lev.requests.writes:
        ops += [f"put {_short(p.key)}" for p in w.puts]
        ops += [f"delete {_short(d.key)}" for d in w.deletes]
        ops += [
            f"delete-range {_short(r.start_inclusive, 20)}..{_short(r.end_exclusive, 20)}"
            for r in w.delete_ranges
        ]
    if not ops:
        return "-"
    return ", ".join(ops[:3]) + (f" (+{len(ops) - 3})" if len(ops) > 3 else "")


def _entry_json(e: replication_pb2.LogEntry) -> dict[str, Any]:
    """Oxia's ``oxia wal scan --json`` object for one entry (proto field names, as Go's
    encoding/json writes Oxia's generated structs)."""
    out: dict[str, Any] = {"term": e.term, "offset": e.offset, "time": _when(e.timestamp)}
    lev = _decode(e.value)
    if lev is None:
        out["value"] = e.value.hex()
    elif lev.WhichOneof("value") == "control_request":
        out["controlRequest"] = json_format.MessageToDict(
            lev.control_request, preserving_proto_field_name=True
        )
    else:
        out["writeRequests"] = json_format.MessageToDict(
            lev.requests, preserving_proto_field_name=True
        )
    return out


def _note_running(wal_dir: Path) -> None:
    pid = lock_holder(wal_dir)
    if pid is not None:
        who = f"pid {pid}" if pid else "a running process"
        click.echo(
            f"note: {wal_dir} is in use by {who}: the log's tail may change while it is read",
            err=True,
        )


def _print_shard(scan: ShardScan, first: int, last: int, entries: bool, as_json: bool) -> None:
    lo = first if first >= 0 else None
    hi = last if last >= 0 else None
    if as_json:
        for e in read_entries(scan, lo, hi):
            click.echo(json.dumps(_entry_json(e)))
        return
    by_offset = {e.offset: e for e in read_entries(scan, lo, hi)} if entries else {}
    for seg in scan.segments:
        recs = seg.records
        click.echo(
            f"segment {seg.path.name}: {seg.size} bytes, {len(recs)} entries"
            + (f" [{recs[0].offset}..{recs[-1].offset}]" if recs else "")
            + (", index present" if seg.has_index else ", no index")
        )
        if entries:
            shown = [
                r for r in recs if (lo is None or r.offset >= lo) and (hi is None or r.offset <= hi)
            ]
            if shown:
                click.echo(
                    f"  {'offset':>12} {'term':>8} {'size':>8} {'crc':>10} {'position':>10}  "
                    f"{'timestamp':<29} operations"
                )
            for r in shown:
                entry = by_offset.get(r.offset)
                ops = describe_value(entry.value) if entry is not None else "(past the damage)"
                click.echo(
                    f"  {r.offset:>12} {r.term:>8} {r.size:>8} {r.crc:#010x} {r.position:>10}  "
                    f"{_when(r.timestamp):<29} {ops}"
                )
        if seg.error:
            click.echo(f"  DAMAGED: {seg.error}")
    if scan.damage is not None and not any(s.error for s in scan.segments):
        click.echo(f"DAMAGED: {scan.damage[0].name}: {scan.damage[1]}")


def _damage_line(scan: ShardScan) -> str:
    assert scan.damage is not None
    return f"{scan.damage[0]}: {scan.damage[1]} (the log is valid up to entry {scan.last_valid})"


def _list(wal_dir: Path, as_json: bool) -> bool:
    """Lists the shard logs of a top-level WAL dir; True if any is damaged."""
    shards = list_shards(wal_dir)
    if not shards:
        click.echo(f"{wal_dir}: no shard logs (a top-level WAL dir holds <namespace>/shard-<id>)")
        return False
    damaged = False
    for ns, shard, path in shards:
        scan = scan_shard(path)
        damaged |= scan.damage is not None
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "namespace": ns,
                        "shard": shard,
                        "segments": len(scan.segments),
                        "entries": scan.entries,
                        "firstOffset": scan.first_offset,
                        "lastOffset": scan.last_offset,
                        "lastValidOffset": scan.last_valid,
                        "damaged": _damage_line(scan) if scan.damage else None,
                    }
                )
            )
            continue
        span = f"entries {scan.first_offset}..{scan.last_offset}" if scan.entries else "empty"
        state = "DAMAGED: " + _damage_line(scan) if scan.damage else "valid"
        click.echo(f"{ns}/shard-{shard}: {len(scan.segments)} segment(s), {span}, {state}")
    return damaged


@wal.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--wal-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's WAL dir [default: data/wal].",
)
@click.option("--namespace", default="default", show_default=True)
@click.option(
    "--shard",
    type=click.IntRange(min=0),
    default=None,
    help="Shard id; without it, the shard logs of the WAL dir are listed.",
)
@click.option("--offset-first", type=int, default=-1, help="First offset to print.")
@click.option("--offset-last", type=int, default=-1, help="Last offset to print.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry (as Oxia).")
@click.option(
    "--entries/--no-entries",
    default=True,
    show_default=True,
    help="List every entry, not just the segments.",
)
def scan(
    directory: Path | None,
    wal_dir: Path | None,
    namespace: str,
    shard: int | None,
    offset_first: int,
    offset_last: int,
    as_json: bool,
    entries: bool,
) -> None:
    """Read a shard's log (term, offset, time, operations; damage with its byte position), or
    list the shard logs of a WAL dir. Read-only: nothing is changed. A DIRECTORY argument may
    name a WAL dir or one shard's log directory."""
    top = wal_dir or directory or Path("data/wal")
    if not top.is_dir():
        fail(f"no WAL at {top}")
    if shard is not None:
        path = shard_log_dir(top, namespace, shard)
        if not path.is_dir():
            fail(f"no log for shard {namespace}/{shard} in {top}")
        _note_running(top)
    elif segment_files(top):
        path = top  # one shard's log directory
        _note_running(top.parent.parent)
    else:
        _note_running(top)
        if _list(top, as_json):
            sys.exit(1)
        return
    result = scan_shard(path)
    _print_shard(result, offset_first, offset_last, entries, as_json)
    if result.damage is not None:
        if as_json:
            click.echo(f"pyxia: damaged: {_damage_line(result)}", err=True)
        sys.exit(1)


# -- truncate --------------------------------------------------------------------------------------


def _lock(path: Path, what: str, kind: str) -> DirLock:
    try:
        raw = dir_manifest.read_raw(path)
        if raw is not None:
            dir_manifest.check_manifest(raw, kind, what, path)
        return DirLock.acquire(path, what)
    except DirError as e:
        fail(f"{e}: stop the node first" if "in use" in str(e) else str(e))


def _db_commit_offset(data_dir: Path, namespace: str, shard: int) -> int:
    """The commit offset of the shard's DB (-1 if it has none)."""
    from pyxia.common.keys import encoding_by_name
    from pyxia.server.shard_storage import ENCODING_MARKER, is_db_corruption, shard_dir
    from pyxia.storage.db import ShardDB

    path = shard_dir(data_dir, namespace, shard)
    marker = path / ENCODING_MARKER
    if not marker.exists():
        return -1
    try:
        db = ShardDB(path, encoding_by_name(marker.read_text().strip()))
    except Exception as e:
        if is_db_corruption(e) or isinstance(e, ValueError):
            fail(f"the DB of shard {namespace}/{shard} ({path}) is damaged: {e}")
        raise
    try:
        return db.commit_offset()
    finally:
        db.close()


def _copy_aside(path: Path, scan: ShardScan, keep: int) -> Path | None:
    """Copies the segments the cut changes or removes next to the shard's log."""
    changed = [
        s
        for s in scan.segments
        if s.base > keep or s.error is not None or (s.records and s.records[-1].offset > keep)
    ]
    if not changed:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dst = path.with_name(f"{path.name}.truncated-{stamp}")
    n = 1
    while dst.exists():
        n += 1
        dst = path.with_name(f"{path.name}.truncated-{stamp}-{n}")
    dst.mkdir()
    for s in changed:
        shutil.copy2(s.path, dst / s.path.name)
        idx = s.path.with_suffix(".idxx")
        if idx.exists():
            shutil.copy2(idx, dst / idx.name)
    return dst


@wal.command()
@click.option(
    "--wal-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/wal"),
    show_default=True,
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's data dir (its shard DB says how far the log was applied) "
    "[default: the one the WAL dir's manifest names].",
)
@click.option("--namespace", default="default", show_default=True)
@click.option("--shard", type=click.IntRange(min=0), required=True)
@click.option(
    "--offset",
    "--last-safe-entry",
    "offset",
    type=click.IntRange(min=-1),
    default=None,
    help="Keep the entries up to this offset, remove those after it (-1: all).",
)
@click.option("--truncate-last-entry", is_flag=True, help="Remove the last entry.")
def truncate(
    wal_dir: Path,
    data_dir: Path | None,
    namespace: str,
    shard: int,
    offset: int | None,
    truncate_last_entry: bool,
) -> None:
    """Remove the entries of a shard's log after an offset (a damaged tail included). The node
    must be stopped; the changed segments are copied aside first."""
    if (offset is None) == (not truncate_last_entry):
        fail("give one of --offset (--last-safe-entry) or --truncate-last-entry", 2)
    path = shard_log_dir(wal_dir, namespace, shard)
    if not path.is_dir():
        fail(f"no log for shard {namespace}/{shard} in {wal_dir}")
    wal_lock = _lock(wal_dir, "wal dir", "wal")
    try:
        wal_doc = dir_manifest.read_raw(wal_dir) or {}
        if data_dir is None and isinstance(wal_doc.get("data_dir"), str):
            data_dir = Path(wal_doc["data_dir"])
        if data_dir is None:
            fail(
                "pass --data-dir: the shard's DB says how far the log was applied "
                f"({wal_dir} has no manifest naming it)"
            )
        if not data_dir.is_dir():
            fail(f"no data dir at {data_dir}: pass the node's --data-dir")
        data_lock = _lock(data_dir, "data dir", "data")
        try:
            data_doc = dir_manifest.read_raw(data_dir) or {}
            ids = (wal_doc.get("node_id"), data_doc.get("node_id"))
            if all(ids) and ids[0] != ids[1]:
                fail(f"{wal_dir} and {data_dir} belong to different nodes ({ids[0]}, {ids[1]})")
            _truncate(path, data_dir, namespace, shard, offset, truncate_last_entry)
        finally:
            data_lock.release()
    finally:
        wal_lock.release()


def _truncate(
    path: Path,
    data_dir: Path,
    namespace: str,
    shard: int,
    offset: int | None,
    last_entry: bool,
) -> None:
    applied = _db_commit_offset(data_dir, namespace, shard)
    scan = scan_shard(path)
    last = scan.last_valid
    target = last - 1 if last_entry else offset
    assert target is not None
    name = f"shard {namespace}/{shard}"
    if target >= applied and target >= last and scan.damage is None:
        click.echo(f"{name}: nothing to cut: the log ends at entry {last}")
        return
    empty = target < applied or target < scan.first_offset
    keep = -1 if empty else min(target, last)
    kept = _copy_aside(path, scan, keep)
    try:
        with _native.Wal(
            path, sync_data=True, retention_ms=2**62, commit_offset=keep if not empty else -1
        ) as log:
            if empty:
                log.clear()
            else:
                log.truncate(keep)
    except _native.WalError as e:
        fail(f"{name}: cannot cut the log: {e}")
    removed = (
        f"entries {keep + 1 if not empty else scan.first_offset}..{scan.last_offset}"
        if scan.entries
        else "nothing"
    ) + (" and the damaged rest" if scan.damage is not None else "")
    if empty and applied >= 0:
        click.echo(
            f"{name}: its DB already holds the entries up to {applied}, which a cut at "
            f"{target} cannot take back: the log was emptied ({removed} removed) and the "
            f"shard continues from its DB at entry {applied + 1}"
        )
    elif empty:
        click.echo(f"{name}: the log was emptied ({removed} removed)")
    else:
        click.echo(f"{name}: kept entries {scan.first_offset}..{keep}, removed {removed}")
    if kept is not None:
        click.echo(f"{name}: copies of the segments changed are in {kept}")
