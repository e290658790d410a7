"""Single-put latency of pyxia's client (pytest-benchmark), next to the bare WriteStream round
trip measured in the same run:

    pytest benches/test_bench_client_latency.py --benchmark-enable -s

Target (issue 6): a single synchronous put round trip p50 <= 1 ms on loopback. These run on a
server of their own, in a module of their own (so the throughput benchmarks' server is gone):
a server that just took seconds of full-speed writes is still flushing and compacting its DB,
which slows a lone put, the bare one included, for a while.
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
from client_load import async_put_latencies, raw_put_latencies, sync_put_latencies
from servers import ServerProcess, standalone_args


@pytest.fixture(scope="module")
def idle_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own for the one-put-at-a-time latencies: the other benchmarks leave
    their server flushing and compacting what they wrote, which slows a lone put (the bare
    one too) for a while."""
    base = tmp_path_factory.mktemp("bench-client-latency")
    s = ServerProcess(standalone_args(base), base).start()
    yield s
    s.kill()


def _report(benchmark: BenchmarkFixture, what: str, value: float, base: float) -> None:
    benchmark.extra_info.update({what: round(value, 3), f"{what}_baseline": round(base, 3)})
    print(f"\n{what}: {value:.2f} ms   same-run baseline {base:.2f} ms   ratio {value / base:.2f}")


def test_single_async_put_p50(benchmark: BenchmarkFixture, idle_standalone: ServerProcess) -> None:
    base = statistics.median(asyncio.run(raw_put_latencies(idle_standalone.public))) * 1000
    lat = benchmark.pedantic(
        lambda: asyncio.run(async_put_latencies(idle_standalone.public)), rounds=1, iterations=1
    )
    _report(benchmark, "async_put_p50_ms", statistics.median(lat) * 1000, base)


def test_single_sync_put_p50(benchmark: BenchmarkFixture, idle_standalone: ServerProcess) -> None:
    base = statistics.median(asyncio.run(raw_put_latencies(idle_standalone.public))) * 1000
    lat = benchmark.pedantic(
        lambda: sync_put_latencies(idle_standalone.public), rounds=1, iterations=1
    )
    _report(benchmark, "sync_put_p50_ms", statistics.median(lat) * 1000, base)
