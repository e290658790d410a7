"""WAL micro-benchmarks with same-run baselines.

    pytest benches/test_bench_wal.py --benchmark-enable

Each benchmark has a baseline measured in the same session on the same
disk, so compare the ratio, not the absolute number (the machine is shared).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pyxia._native import Wal

VALUE = os.urandom(100)
BATCH = 1000


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[Wal]:
    w = Wal(tmp_path / "wal", sync_data=True)
    yield w
    w.close()


def test_append_batch_1000_unsynced(benchmark: BenchmarkFixture, wal: Wal) -> None:
    state = {"next": 0}

    def run() -> None:
        o = state["next"]
        wal.append_batch([(1, i, VALUE, 0) for i in range(o, o + BATCH)])
        state["next"] = o + BATCH

    benchmark(run)


def test_append_one_and_sync(benchmark: BenchmarkFixture, wal: Wal) -> None:
    state = {"next": 0}

    def run() -> None:
        wal.append(1, state["next"], VALUE, 0)
        wal.sync()
        state["next"] += 1

    benchmark(run)


def test_baseline_write_fdatasync(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "baseline.dat", os.O_WRONLY | os.O_CREAT, 0o644)

    def run() -> None:
        os.write(fd, VALUE)
        os.fdatasync(fd)

    try:
        benchmark(run)
    finally:
        os.close(fd)


def test_read_batch_1000(benchmark: BenchmarkFixture, wal: Wal) -> None:
    wal.append_batch([(1, i, VALUE, 0) for i in range(10 * BATCH)])
    benchmark(lambda: wal.read_batch(0, BATCH))
