"""Server throughput, RF=1, fsync on: batched puts through WriteStream and
batched gets through Read against a real ``pyxia standalone``, each next to
the same load against a bare gRPC echo server measured in the same run (the
cost of Python gRPC alone on this machine).

    pytest benches/test_bench_standalone.py --benchmark-enable -s

Targets (issue 3): >= 50,000 puts/s and >= 100,000 gets/s.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from load import ECHO_SERVER, read_load, write_stream_load
from servers import ServerProcess, standalone_args

SECONDS = 5.0


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("bench")
    s = ServerProcess(standalone_args(base), base).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, "1000"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        yield f"127.0.0.1:{int(p.stdout.readline())}"
    finally:
        p.kill()
        p.wait(10)


def _report(benchmark: BenchmarkFixture, what: str, value: float, baseline: float) -> None:
    benchmark.extra_info.update(
        {
            what: round(value),
            f"{what}_echo_baseline": round(baseline),
            "ratio": round(value / baseline, 3),
        }
    )
    print(
        f"\n{what}: {value:,.0f}/s   bare gRPC echo (same run): {baseline:,.0f}/s   "
        f"ratio {value / baseline:.2f}"
    )


def test_writestream_puts(
    benchmark: BenchmarkFixture, standalone: ServerProcess, echo: str
) -> None:
    base = asyncio.run(write_stream_load(echo, 0, SECONDS))
    res = benchmark.pedantic(
        lambda: asyncio.run(write_stream_load(standalone.public, 0, SECONDS)),
        rounds=1,
        iterations=1,
    )
    _report(benchmark, "puts", res.ops_per_s, base.ops_per_s)


def test_read_gets(benchmark: BenchmarkFixture, standalone: ServerProcess, echo: str) -> None:
    asyncio.run(write_stream_load(standalone.public, 0, 2.0))  # make sure the keys exist
    base = asyncio.run(read_load(echo, 0, SECONDS))
    res = benchmark.pedantic(
        lambda: asyncio.run(read_load(standalone.public, 0, SECONDS)), rounds=1, iterations=1
    )
    _report(benchmark, "gets", res.ops_per_s, base.ops_per_s)
