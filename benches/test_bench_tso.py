"""The timestamp oracle: throughput and latency of GetTs against a real ``pyxia standalone``
(RF=1, fsync on), each figure next to the same load against a bare gRPC echo of the same
message shape measured in the same run; and leadership churn on a 3-server cluster with the
coordinator (kill -9 / SIGSTOP of the TSO leader every ~2 s for a minute, 16 clients), with
the history checker and the failover gap (last timestamp from the old leader → first from
the new) next to the coordinator's election time in the same run.

    pytest benches/test_bench_tso.py --benchmark-enable -s

Targets (issue 8): >= 1,000,000 timestamps/s with 16 clients asking count 1024; >= 3,000
GetTs calls/s with count 1; single GetTs p50 <= 1 ms; failover gap median <= 500 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pyxia.proto import tso_pb2
from pyxia.tso.client import GET_TS, AsyncTsoClient, TsoClient
from servers import ServerProcess, standalone_args
from test_tso_churn import run_churn

SECONDS = 5.0
CLIENTS = 16

TSO_ECHO_SERVER = r"""
import asyncio
import grpc
from pyxia.proto import tso_pb2

async def main():
    replies = {}

    async def get_ts(raw, context):
        count = tso_pb2.GetTsRequest.FromString(raw).count
        reply = replies.get(count)
        if reply is None:
            reply = replies[count] = tso_pb2.GetTsResponse(
                physical_ms=1 << 45, logical_start=0, count=count, epoch_lo=1
            ).SerializeToString()
        return reply

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "tsoracle.v1.TsoService",
        {"GetTs": grpc.unary_unary_rpc_method_handler(
            get_ts, request_deserializer=None, response_serializer=None)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("bench-tso")
    s = ServerProcess(standalone_args(base), base).start()
    with TsoClient(s.public) as tso:  # the fence is done
        tso.get_ts()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    p = subprocess.Popen([sys.executable, "-c", TSO_ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        yield f"127.0.0.1:{int(p.stdout.readline())}"
    finally:
        p.kill()
        p.wait(10)


@dataclass
class Load:
    calls_per_s: float
    timestamps_per_s: float
    p50_ms: float
    p99_ms: float


async def raw_load(address: str, clients: int, count: int, seconds: float) -> Load:
    """``clients`` callers, each on its own channel awaiting one GetTs at a time; requests are
    serialized once, answers only decoded for their count (as little client CPU as possible:
    the client shares the machine's 2 cores with the server)."""
    req = tso_pb2.GetTsRequest(count=count).SerializeToString()
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    latencies: list[float] = []
    granted = 0
    try:
        calls = [ch.unary_unary(GET_TS) for ch in channels]
        for c in calls:
            await c(req)  # connected and warm
        stop = time.perf_counter() + seconds

        async def caller(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
            nonlocal granted
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                raw = await call(req)
                latencies.append(time.perf_counter() - t0)
                granted += tso_pb2.GetTsResponse.FromString(raw).count

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in calls))
        el = time.perf_counter() - t0
    finally:
        for ch in channels:
            await ch.close()
    latencies.sort()
    return Load(
        len(latencies) / el,
        granted / el,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def interleaved(
    tso: str, echo: str, clients: int, count: int, seconds: float, rounds: int = 4
) -> tuple[Load, Load]:
    """The same load against the oracle and the echo, alternating in ``rounds`` slices so
    that both see the same background load (the machine is shared)."""
    parts: dict[str, list[Load]] = {tso: [], echo: []}
    for _ in range(rounds):
        for address in (echo, tso):
            parts[address].append(asyncio.run(raw_load(address, clients, count, seconds / rounds)))

    def merge(loads: list[Load]) -> Load:
        return Load(
            statistics.fmean(x.calls_per_s for x in loads),
            statistics.fmean(x.timestamps_per_s for x in loads),
            statistics.median(x.p50_ms for x in loads),
            max(x.p99_ms for x in loads),
        )

    return merge(parts[tso]), merge(parts[echo])


def single_call_p50_ms(address: str, n: int = 2000) -> float:
    """One caller, one GetTs at a time, the synchronous gRPC stub."""
    req = tso_pb2.GetTsRequest(count=1).SerializeToString()
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(GET_TS)
        for _ in range(100):
            call(req)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            call(req)
            lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1000


async def client_load(address: str, callers: int, seconds: float) -> Load:
    """``callers`` coroutines each awaiting ``AsyncTsoClient.get_ts()`` (coalesced)."""
    latencies: list[float] = []
    async with AsyncTsoClient(address) as tso:
        await tso.get_ts()
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await tso.get_ts()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        el = time.perf_counter() - t0
        rpcs = tso.rpcs
    latencies.sort()
    n = len(latencies)
    print(f"  (AsyncTsoClient: {n} calls in {rpcs} RPCs)")
    return Load(n / el, n / el, latencies[n // 2] * 1000, latencies[int(n * 0.99)] * 1000)


def _report(benchmark: BenchmarkFixture, what: str, value: float, base: float, unit: str) -> None:
    benchmark.extra_info.update(
        {
            what: round(value, 3),
            f"{what}_echo_baseline": round(base, 3),
            "ratio": round(value / base, 3),
        }
    )
    print(
        f"\n{what}: {value:,.2f} {unit}   bare gRPC echo, same run: {base:,.2f} {unit}   "
        f"ratio {value / base:.2f}"
    )


def test_timestamps_per_second_16_clients_count_1024(
    benchmark: BenchmarkFixture, standalone: ServerProcess, echo: str
) -> None:
    res, base = benchmark.pedantic(
        lambda: interleaved(standalone.public, echo, CLIENTS, 1024, 2 * SECONDS),
        rounds=1,
        iterations=1,
    )
    _report(
        benchmark,
        "timestamps/s (16 clients, count 1024)",
        res.timestamps_per_s,
        base.timestamps_per_s,
        "ts/s",
    )
    print(
        f"  GetTs calls/s {res.calls_per_s:,.0f}, p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms"
    )


def test_get_ts_calls_per_second_count_1(
    benchmark: BenchmarkFixture, standalone: ServerProcess, echo: str
) -> None:
    res, base = benchmark.pedantic(
        lambda: interleaved(standalone.public, echo, CLIENTS, 1, 2 * SECONDS),
        rounds=1,
        iterations=1,
    )
    _report(
        benchmark,
        "GetTs calls/s (16 clients, count 1)",
        res.calls_per_s,
        base.calls_per_s,
        "calls/s",
    )
    coalesced = asyncio.run(client_load(standalone.public, 64, SECONDS))
    benchmark.extra_info["client_get_ts_per_s_64_callers"] = round(coalesced.calls_per_s)
    print(
        f"  AsyncTsoClient.get_ts() with 64 callers (coalesced): {coalesced.calls_per_s:,.0f}/s, "
        f"p50 {coalesced.p50_ms:.2f} ms"
    )


def test_single_get_ts_p50(
    benchmark: BenchmarkFixture, standalone: ServerProcess, echo: str
) -> None:
    def both() -> tuple[float, float]:
        tso, base = [], []
        for _ in range(4):
            base.append(single_call_p50_ms(echo, 500))
            tso.append(single_call_p50_ms(standalone.public, 500))
        return statistics.median(tso), statistics.median(base)

    res, base = benchmark.pedantic(both, rounds=1, iterations=1)
    _report(benchmark, "single GetTs p50", res, base, "ms")
    with TsoClient(standalone.public) as tso:
        for _ in range(100):
            tso.get_ts()
        lat = []
        for _ in range(2000):
            t0 = time.perf_counter()
            tso.get_ts()
            lat.append(time.perf_counter() - t0)
    p50 = statistics.median(lat) * 1000
    benchmark.extra_info["tso_client_get_ts_p50_ms"] = round(p50, 3)
    print(f"  TsoClient.get_ts() p50 (sync client, loop thread): {p50:.2f} ms")


def test_churn_a_minute_and_failover_gap(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    report = benchmark.pedantic(lambda: run_churn(tmp_path, seconds=60.0), rounds=1, iterations=1)
    print("\n" + report.summary())
    gaps = sorted(report.gaps_ms)
    elections = report.elections_ms
    benchmark.extra_info.update(
        {
            "grants": len(report.records),
            "violations": len(report.violations),
            "faults": len(report.faults),
            "failover_gap_median_ms": round(statistics.median(gaps), 1) if gaps else None,
            "failover_gap_max_ms": round(gaps[-1], 1) if gaps else None,
            "election_median_ms": round(statistics.median(elections), 1) if elections else None,
        }
    )
    if gaps:
        print(
            f"failover gap over {len(gaps)} kills: median {statistics.median(gaps):.0f} ms, "
            f"max {gaps[-1]:.0f} ms   (the coordinator's election, same run: median "
            f"{statistics.median(elections):.0f} ms)"
        )
    assert report.violations == [], report.violations[:5]
    assert all(f.resumed_at is not None for f in report.faults)
