"""Client benchmarks (pytest-benchmark), each next to a same-run baseline:

    pytest benches/test_bench_client.py --benchmark-enable -s

``python benches/report.py`` measures the same and writes docs/benchmarks.md.

Target (issue 6): 64 concurrent async callers doing 100-byte puts get >= 80 % of the server's
own WriteStream throughput at the same concurrency. The single-put latency target is measured in
test_bench_client_latency.py.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from client_load import (
    async_gets,
    async_puts,
    sync_gets,
    sync_puts,
)
from load import read_load, write_stream_load
from servers import ServerProcess, standalone_args

SECONDS = 5.0
ROUNDS = 3


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("bench-client")
    s = ServerProcess(standalone_args(base), base).start()
    yield s
    s.kill()


def _report(benchmark: BenchmarkFixture, what: str, value: float, base: float, unit: str) -> None:
    benchmark.extra_info.update({what: round(value, 3), f"{what}_baseline": round(base, 3)})
    print(
        f"\n{what}: {value:,.2f}{unit}   same-run baseline {base:,.2f}{unit}   "
        f"ratio {value / base:.2f}"
    )


def test_async_puts_64_callers(benchmark: BenchmarkFixture, standalone: ServerProcess) -> None:
    """ROUNDS interleaved rounds (the bare loader's best of 64x1 and 32x2, then the client), the
    median of the per-round ratios: single shots on this shared 2-vCPU machine spread widely."""

    async def one_round() -> tuple[float, float]:
        bases = [
            (await write_stream_load(standalone.public, 0, SECONDS, batch=b, inflight=n)).ops_per_s
            for b, n in ((64, 1), (32, 2))
        ]
        res = await async_puts(standalone.public, 64, SECONDS)
        return res.ops_per_s, max(bases)

    def run() -> list[tuple[float, float]]:
        return [asyncio.run(one_round()) for _ in range(ROUNDS)]

    rounds = benchmark.pedantic(run, rounds=1, iterations=1)
    for value, base in rounds:
        print(f"\n  round: {value:,.0f}/s vs {base:,.0f}/s, ratio {value / base:.2f}", end="")
    ratio = statistics.median(v / b for v, b in rounds)
    value = statistics.median(v for v, _ in rounds)
    base = statistics.median(b for _, b in rounds)
    benchmark.extra_info["median_ratio"] = round(ratio, 3)
    _report(benchmark, "puts_per_s", value, base, "/s")
    print(f"median of the per-round ratios: {ratio:.2f}")


def test_sync_vs_async_puts(benchmark: BenchmarkFixture, standalone: ServerProcess) -> None:
    base = asyncio.run(async_puts(standalone.public, 64, SECONDS)).ops_per_s
    res = benchmark.pedantic(
        lambda: sync_puts(standalone.public, 64, SECONDS), rounds=1, iterations=1
    )
    _report(benchmark, "sync_puts_per_s_vs_async", res.ops_per_s, base, "/s")


def test_async_gets_64_callers(benchmark: BenchmarkFixture, standalone: ServerProcess) -> None:
    async def run() -> tuple[float, float]:
        res = await async_gets(standalone.public, 64, SECONDS)
        base = (await read_load(standalone.public, 0, SECONDS, batch=32, concurrency=2)).ops_per_s
        return res.ops_per_s, base

    value, base = benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    _report(benchmark, "gets_per_s", value, base, "/s")


def test_sync_vs_async_gets(benchmark: BenchmarkFixture, standalone: ServerProcess) -> None:
    base = asyncio.run(async_gets(standalone.public, 64, SECONDS)).ops_per_s
    res = benchmark.pedantic(
        lambda: sync_gets(standalone.public, 64, SECONDS), rounds=1, iterations=1
    )
    _report(benchmark, "sync_gets_per_s_vs_async", res.ops_per_s, base, "/s")


def test_sync_puts_8_threads(benchmark: BenchmarkFixture, standalone: ServerProcess) -> None:
    async def bare() -> float:
        results = [
            (await write_stream_load(standalone.public, 0, SECONDS, batch=b, inflight=n)).ops_per_s
            for b, n in ((8, 1), (4, 2))
        ]
        return max(results)

    base = asyncio.run(bare())
    res = benchmark.pedantic(
        lambda: sync_puts(standalone.public, 8, SECONDS), rounds=1, iterations=1
    )
    _report(benchmark, "sync_puts_8_threads_per_s", res.ops_per_s, base, "/s")
