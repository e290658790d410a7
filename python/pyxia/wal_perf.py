"""`pyxia wal perf`: WAL throughput and sync latency next to a same-run
baseline of plain ``write`` + ``os.fdatasync`` in the same directory.

Figures (all measured in one run, on the same disk):

- ``append_entries_per_s``: unsynced appends of 100-byte values through the
  batch API (batches of 1,000), including building the batches in Python;
- ``durable_entries_per_s``: 64 asyncio tasks, each appending one entry and
  awaiting its durability, in a loop (group commit at work);
- ``sync_p50_us`` / ``sync_p99_us``: duration of the WAL's sync rounds for a
  single writer appending one 100-byte entry and syncing it;
- ``baseline_fdatasync_entries_per_s`` and ``baseline_fdatasync_p50_us`` /
  ``baseline_fdatasync_p99_us``: a plain Python loop writing one 100-byte
  record and calling ``os.fdatasync`` each time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyxia._native import Wal
from pyxia.wal import AsyncWal

VALUE_SIZE = 100
BATCH = 1000
CONCURRENCY = 64


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    s = sorted(samples)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def measure_append(path: Path, seconds: float) -> float:
    value = os.urandom(VALUE_SIZE)
    ts = int(time.time() * 1000)
    with Wal(path, sync_data=False) as wal:
        offset = 0
        start = now = time.perf_counter()
        deadline = start + seconds
        while now < deadline:
            batch = [(1, o, value, ts) for o in range(offset, offset + BATCH)]
            wal.append_batch(batch)
            offset += BATCH
            now = time.perf_counter()
        return offset / (now - start)


async def _durable(path: Path, seconds: float) -> float:
    value = os.urandom(VALUE_SIZE)
    wal = Wal(path)
    awal = AsyncWal(wal)
    next_offset = 0
    done = 0
    stop = time.perf_counter() + seconds

    async def appender() -> None:
        nonlocal next_offset, done
        while time.perf_counter() < stop:
            o = next_offset
            next_offset += 1
            wal.append(1, o, value, 0)
            await awal.watcher.wait_durable(o)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await awal.close()
    return done / elapsed


def measure_durable(path: Path, seconds: float) -> float:
    return asyncio.run(_durable(path, seconds))


def measure_sync_latency(path: Path, seconds: float) -> tuple[float, float, int]:
    """p50/p99 (µs) of sync rounds for one writer syncing each entry."""
    value = os.urandom(VALUE_SIZE)
    with Wal(path) as wal:
        deadline = time.perf_counter() + seconds
        o = 0
        while time.perf_counter() < deadline:
            wal.append(1, o, value, 0)
            wal.sync()
            o += 1
        _, samples = wal.sync_stats()
    us = [float(s) for s in samples]
    return _percentile(us, 0.5), _percentile(us, 0.99), o


def measure_baseline(path: Path, seconds: float) -> tuple[float, float, float]:
    """Entries/s, p50 and p99 (µs) of write(100 B) + fdatasync per entry."""
    record = os.urandom(VALUE_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    lat: list[float] = []
    try:
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            os.write(fd, record)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            t1 = time.perf_counter()
            lat.append((t1 - t0) * 1e6)
            n += 1
            if t1 >= deadline:
                break
        rate = n / (t1 - start)
    finally:
        os.close(fd)
    return rate, _percentile(lat, 0.5), _percentile(lat, 0.99)


def run(
    directory: Path | None,
    seconds: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs every phase; returns the figures as a dict."""
    say = progress or (lambda _msg: None)
    base = Path(tempfile.mkdtemp(prefix="pyxia-wal-perf-", dir=directory))
    phase = max(seconds / 4.0, 0.2)
    try:
        say(f"baseline: write {VALUE_SIZE} B + fdatasync for {phase:.1f}s in {base}")
        b_rate, b_p50, b_p99 = measure_baseline(base / "baseline.dat", phase)
        say(f"  {b_rate:,.0f} entries/s, fdatasync p50 {b_p50:.0f} us")
        say(f"append: unsynced batches of {BATCH} for {phase:.1f}s")
        append_rate = measure_append(base / "append", phase)
        say(f"  {append_rate:,.0f} entries/s")
        say(f"durable: {CONCURRENCY} asyncio appenders awaiting durability for {phase:.1f}s")
        durable_rate = measure_durable(base / "durable", phase)
        say(f"  {durable_rate:,.0f} entries/s")
        say(f"sync latency: one writer, sync after each entry, for {phase:.1f}s")
        s_p50, s_p99, n = measure_sync_latency(base / "sync", phase)
        say(f"  p50 {s_p50:.0f} us, p99 {s_p99:.0f} us over {n} syncs")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "append_entries_per_s": round(append_rate),
        "durable_entries_per_s": round(durable_rate),
        "sync_p50_us": round(s_p50, 1),
        "sync_p99_us": round(s_p99, 1),
        "baseline_fdatasync_entries_per_s": round(b_rate),
        "baseline_fdatasync_p50_us": round(b_p50, 1),
        "baseline_fdatasync_p99_us": round(b_p99, 1),
        "durable_vs_baseline": round(durable_rate / b_rate, 2) if b_rate else None,
        "sync_p50_vs_baseline_p50": round(s_p50 / b_p50, 2) if b_p50 else None,
        "value_size": VALUE_SIZE,
        "concurrency": CONCURRENCY,
        "seconds_per_phase": phase,
        "median_of": 1,
    }


def run_repeated(
    directory: Path | None,
    seconds: float,
    repeat: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs ``repeat`` times and reports the median of each figure."""
    runs = []
    for i in range(repeat):
        if progress and repeat > 1:
            progress(f"run {i + 1}/{repeat}")
        runs.append(run(directory, seconds, progress))
    if repeat == 1:
        return runs[0]
    out: dict[str, Any] = {}
    for k, v in runs[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "median_of":
            out[k] = statistics.median(r[k] for r in runs)
        else:
            out[k] = v
    out["median_of"] = repeat
    return out
