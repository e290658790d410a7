"""Client load generators for the benchmarks: N async callers each awaiting one put (or get)
at a time through ``pyxia.AsyncClient``, and N threads doing the same through ``pyxia.Client``.
Each returns operations per second and the latencies seen."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyxia import AsyncClient, Client


@dataclass
class ClientResult:
    ops_per_s: float
    ops: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000 if self.latencies_s else 0.0


async def async_puts(
    address: str, callers: int, seconds: float, value_size: int = 100, keys: int = 100_000
) -> ClientResult:
    value = os.urandom(value_size)
    async with AsyncClient(address) as c:
        await asyncio.gather(*(c.put(f"/warm/{i}", value) for i in range(callers)))
        done = 0
        stop = time.perf_counter() + seconds

        async def caller(n: int) -> None:
            nonlocal done
            i = n
            put = c.put
            while time.perf_counter() < stop:
                await put(f"/bench/k{i % keys}", value)
                i += callers
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        el = time.perf_counter() - t0
    return ClientResult(done / el, done, el)


async def async_gets(address: str, callers: int, seconds: float, keys: int = 1000) -> ClientResult:
    async with AsyncClient(address) as c:
        await asyncio.gather(*(c.put(f"/bench/k{i}", b"x" * 100) for i in range(keys)))
        done = 0
        stop = time.perf_counter() + seconds

        async def caller(n: int) -> None:
            nonlocal done
            i = n
            get = c.get
            while time.perf_counter() < stop:
                await get(f"/bench/k{i % keys}")
                i += callers
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        el = time.perf_counter() - t0
    return ClientResult(done / el, done, el)


def _threads(threads: int, seconds: float, op: Callable[[int], None]) -> tuple[int, float]:
    """``threads`` threads calling ``op(i)`` (i = thread, thread + threads, ...) until
    ``seconds`` pass; returns the calls made and the seconds taken."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(n: int) -> None:
        i = n
        while time.perf_counter() < stop:
            op(i)
            i += threads
            counts[n] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts), time.perf_counter() - t0


def sync_puts(
    address: str, threads: int, seconds: float, value_size: int = 100, record: bool = False
) -> ClientResult:
    value = os.urandom(value_size)
    lat: list[float] = []
    with Client(address) as c:
        c.put("/warm", value)
        put = c.put

        def op(i: int) -> None:
            t = time.perf_counter()
            put(f"/bench/s{i % 100_000}", value)
            if record:
                lat.append(time.perf_counter() - t)

        done, el = _threads(threads, seconds, op)
    return ClientResult(done / el, done, el, lat)


def sync_gets(address: str, threads: int, seconds: float, keys: int = 1000) -> ClientResult:
    """``threads`` threads, each doing one ``pyxia.Client.get`` at a time."""
    with Client(address) as c:
        for i in range(keys):
            c.put(f"/bench/g{i}", b"x" * 100)
        get = c.get

        def op(i: int) -> None:
            get(f"/bench/g{i % keys}")

        done, el = _threads(threads, seconds, op)
    return ClientResult(done / el, done, el)


async def async_put_latencies(address: str, n: int = 300) -> list[float]:
    """One ``AsyncClient.put`` at a time."""
    lat: list[float] = []
    async with AsyncClient(address) as c:
        await c.put("/warm", b"x")
        for i in range(n):
            t = time.perf_counter()
            await c.put(f"/alat/{i}", b"x" * 100)
            lat.append(time.perf_counter() - t)
    return lat


async def raw_put_latencies(address: str, n: int = 300) -> list[float]:
    """One put at a time through a bare WriteStream (pre-built requests): the round trip the
    server and gRPC cost without pyxia's client."""
    import grpc

    from pyxia.proto import client_pb2

    reqs = [
        client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key=f"/raw/{i}", value=b"x" * 100)])
        for i in range(n)
    ]
    lat: list[float] = []
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.stream_stream(
            "/io.oxia.proto.v1.OxiaClient/WriteStream",
            request_serializer=client_pb2.WriteRequest.SerializeToString,
            response_deserializer=client_pb2.WriteResponse.FromString,
        )(metadata=(("namespace", "default"), ("shard-id", "0")))
        for r in reqs:
            t = time.perf_counter()
            await call.write(r)
            await call.read()
            lat.append(time.perf_counter() - t)
        call.cancel()
    return lat


def sync_put_latencies(address: str, n: int = 300) -> list[float]:
    lat: list[float] = []
    with Client(address) as c:
        c.put("/warm", b"x")
        for i in range(n):
            t = time.perf_counter()
            c.put(f"/lat/{i}", b"x" * 100)
            lat.append(time.perf_counter() - t)
    return lat
