"""``pyxia wal``: operator tools for write-ahead log directories."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import click

from pyxia import _native


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


@wal.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--entries/--no-entries",
    default=True,
    show_default=True,
    help="List every entry, not just the segments.",
)
def scan(directory: Path, entries: bool) -> None:
    """List the segments of a WAL directory and their entries
    (offset, term, size, crc). Read-only: nothing is changed."""
    segments = sorted(directory.glob("*.txnx"))
    if not segments:
        click.echo(f"{directory}: no segments")
        return
    damaged = False
    for seg in segments:
        idx = seg.with_suffix(".idxx")
        records, error = _native.scan_segment(seg)
        first = records[0][1] if records else None
        last = records[-1][1] if records else None
        click.echo(
            f"segment {seg.name}: {seg.stat().st_size} bytes, {len(records)} entries"
            + (f" [{first}..{last}]" if records else "")
            + (", index present" if idx.exists() else ", no index")
        )
        if entries:
            click.echo(
                f"  {'offset':>12} {'term':>8} {'size':>8} {'crc':>10} {'position':>10}  timestamp"
            )
            for pos, offset, term, size, crc, _prev, ts in records:
                when = (
                    datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC).isoformat(
                        timespec="milliseconds"
                    )
                    if ts
                    else "-"
                )
                click.echo(f"  {offset:>12} {term:>8} {size:>8} {crc:#010x} {pos:>10}  {when}")
        if error:
            damaged = True
            click.echo(f"  DAMAGED: {error}")
    if damaged:
        sys.exit(1)
