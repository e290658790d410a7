"""Replication cost, fsync on, all on loopback on this machine: batched
WriteStream throughput with RF=3 (three ``pyxia server`` processes) next to
RF=1 (one server) measured in the same run, and the latency of a single
put at RF=3.

    pytest benches/test_bench_replication.py --benchmark-enable -s

Targets (issue 4): RF=3 throughput >= 50 % of RF=1; single put p50 <= 2 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from grpc_stubs import OxiaClientStub
from load import write_stream_load
from pyxia.proto import client_pb2
from test_replication_processes import MD, Proc, new_term

SECONDS = 5.0


def elect(procs: list[Proc]) -> None:
    heads = {p.internal: new_term(p, 1) for p in procs}
    leader = procs[0]
    become_leader_rf(leader, {k: v for k, v in heads.items() if k != leader.internal}, len(procs))


def become_leader_rf(leader: Proc, followers: dict, rf: int) -> None:  # type: ignore[type-arg]
    from pyxia.proto import replication_pb2

    leader.coord().BecomeLeader(
        replication_pb2.BecomeLeaderRequest(
            namespace="default", shard=0, term=1, replication_factor=rf, follower_maps=followers
        ),
        timeout=60,
        metadata=MD,
    )


@pytest.fixture(scope="module")
def rf1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    p = Proc(tmp_path_factory.mktemp("rf1") / "n0")
    p.start()
    elect([p])
    yield p
    p.kill()


@pytest.fixture(scope="module")
def rf3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    base = tmp_path_factory.mktemp("rf3")
    procs = [Proc(base / f"n{i}") for i in range(3)]
    for p in procs:
        p.start()
    elect(procs)
    yield procs[0]
    for p in procs:
        p.kill()


def test_rf3_vs_rf1_throughput(benchmark: BenchmarkFixture, rf1: Proc, rf3: Proc) -> None:
    base = asyncio.run(write_stream_load(rf1.public, 0, SECONDS))
    res = benchmark.pedantic(
        lambda: asyncio.run(write_stream_load(rf3.public, 0, SECONDS)), rounds=1, iterations=1
    )
    ratio = res.ops_per_s / base.ops_per_s
    benchmark.extra_info.update(
        {
            "rf3_puts_per_s": round(res.ops_per_s),
            "rf1_puts_per_s": round(base.ops_per_s),
            "ratio": round(ratio, 3),
        }
    )
    print(
        f"\nRF=3: {res.ops_per_s:,.0f} puts/s   RF=1 (same run): {base.ops_per_s:,.0f} puts/s"
        f"   ratio {ratio:.2f}"
    )


ECHO = r"""
import asyncio, grpc
async def main():
    async def echo(req, ctx):
        return req
    async def stream(reqs, ctx):
        async for r in reqs:
            yield r
    s = grpc.aio.server()
    s.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "echo.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo),
                      "Stream": grpc.stream_stream_rpc_method_handler(stream)})])
    port = s.add_insecure_port("127.0.0.1:0")
    await s.start()
    print(port, flush=True)
    await s.wait_for_termination()
asyncio.run(main())
"""


def echo_latencies(n: int) -> tuple[list[float], list[float]]:
    """Round trips between two Python processes on this machine, in ms: a
    bare unary gRPC echo (the client's call) and a bidi-stream ping-pong (a
    replication hop: Append out, Ack back). Together with an fsync they are
    the floor under a single replicated put."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        payload = client_pb2.WriteRequest(
            shard=0, puts=[client_pb2.PutRequest(key="/lat/x", value=b"x" * 100)]
        ).SerializeToString()
        unary = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/echo.Echo/Unary")
            for i in range(n + 20):
                t0 = time.perf_counter()
                call(payload)
                if i >= 20:
                    unary.append((time.perf_counter() - t0) * 1000)

        async def pingpong() -> list[float]:
            out = []
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ach:
                s = ach.stream_stream("/echo.Echo/Stream")()
                for i in range(n + 20):
                    t0 = time.perf_counter()
                    await s.write(payload)
                    await s.read()
                    if i >= 20:
                        out.append((time.perf_counter() - t0) * 1000)
                await s.done_writing()
            return out

        return unary, asyncio.run(pingpong())
    finally:
        p.kill()
        p.wait(10)


def test_rf3_single_put_latency(benchmark: BenchmarkFixture, rf1: Proc, rf3: Proc) -> None:
    def latencies(p: Proc, n: int) -> list[float]:
        out = []
        with grpc.insecure_channel(p.public) as ch:
            stub = OxiaClientStub(ch)
            for i in range(n):
                req = client_pb2.WriteRequest(
                    shard=0, puts=[client_pb2.PutRequest(key=f"/lat/{i}", value=b"x" * 100)]
                )
                t0 = time.perf_counter()
                stub.Write(req, timeout=10)
                out.append((time.perf_counter() - t0) * 1000)
        return out

    def stream_latencies(p: Proc, n: int) -> list[float]:
        """One put at a time through WriteStream, as Oxia's and pyxia's clients send them."""

        async def run() -> list[float]:
            out = []
            async with grpc.aio.insecure_channel(p.public) as ch:
                s = ch.stream_stream(
                    "/io.oxia.proto.v1.OxiaClient/WriteStream",
                    request_serializer=client_pb2.WriteRequest.SerializeToString,
                    response_deserializer=client_pb2.WriteResponse.FromString,
                )(metadata=(("namespace", "default"), ("shard-id", "0")))
                for i in range(n + 20):
                    req = client_pb2.WriteRequest(
                        shard=0, puts=[client_pb2.PutRequest(key=f"/ws/{i}", value=b"x" * 100)]
                    )
                    t0 = time.perf_counter()
                    await s.write(req)
                    await s.read()
                    if i >= 20:
                        out.append((time.perf_counter() - t0) * 1000)
                await s.done_writing()
            return out

        return asyncio.run(run())

    echo, hop = echo_latencies(300)
    base = latencies(rf1, 300)
    ws_base = stream_latencies(rf1, 300)
    ws = stream_latencies(rf3, 300)
    lat = benchmark.pedantic(lambda: latencies(rf3, 300), rounds=1, iterations=1)
    p50, p99 = statistics.median(lat), sorted(lat)[int(len(lat) * 0.99)]
    b50 = statistics.median(base)
    e50 = statistics.median(echo)
    h50 = statistics.median(hop)
    ws50, ws99 = statistics.median(ws), sorted(ws)[int(len(ws) * 0.99)]
    wsb50 = statistics.median(ws_base)
    benchmark.extra_info.update(
        {
            "rf3_writestream_p50_ms": round(ws50, 3),
            "rf3_writestream_p99_ms": round(ws99, 3),
            "rf1_writestream_p50_ms": round(wsb50, 3),
            "rf3_p50_ms": round(p50, 3),
            "rf3_p99_ms": round(p99, 3),
            "rf1_p50_ms": round(b50, 3),
            "echo_p50_ms": round(e50, 3),
            "stream_pingpong_p50_ms": round(h50, 3),
        }
    )
    print(
        f"\nsingle put RF=3: p50 {p50:.2f} ms, p99 {p99:.2f} ms   same run: RF=1 p50 "
        f"{b50:.2f} ms, bare unary gRPC echo p50 {e50:.2f} ms, bare stream ping-pong p50 "
        f"{h50:.2f} ms (floor for RF=3 ~ echo + ping-pong = {e50 + h50:.2f} ms)"
    )
    print(
        f"single put RF=3 through WriteStream (the clients' path): p50 {ws50:.2f} ms, p99 "
        f"{ws99:.2f} ms   same run: RF=1 p50 {wsb50:.2f} ms, bare stream ping-pong p50 "
        f"{h50:.2f} ms"
    )
