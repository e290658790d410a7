"""Load generators for the server benchmarks: raw gRPC over the Oxia
protocol, with requests serialized once up front so the client costs as
little CPU as possible (the client shares this machine's 2 cores)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import grpc

from pyxia.proto import client_pb2

WRITE_STREAM = "/io.oxia.proto.v1.OxiaClient/WriteStream"
READ = "/io.oxia.proto.v1.OxiaClient/Read"


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class Result:
    ops_per_s: float
    ops: int
    seconds: float


def write_pool(batch: int, keys: int = 100_000, value_size: int = 100) -> list[bytes]:
    val = os.urandom(value_size)
    return [
        client_pb2.WriteRequest(
            puts=[
                client_pb2.PutRequest(key=f"/bench/k{(i * batch + j) % keys}", value=val)
                for j in range(batch)
            ]
        ).SerializeToString()
        for i in range(max(1, keys // batch))
    ]


async def write_stream_load(
    address: str, shard: int, seconds: float, batch: int = 1000, inflight: int = 8
) -> Result:
    """Batched puts through one WriteStream, ``inflight`` requests in flight."""
    pool = write_pool(batch)
    async with grpc.aio.insecure_channel(address) as ch:
        ws = ch.stream_stream(
            WRITE_STREAM,
            request_serializer=_ident,
            response_deserializer=client_pb2.WriteResponse.FromString,
        )
        slots: asyncio.Queue[None] = asyncio.Queue(inflight)
        stop = time.perf_counter() + seconds

        async def requests():  # type: ignore[no-untyped-def]
            i = 0
            while time.perf_counter() < stop:
                await slots.put(None)
                yield pool[i % len(pool)]
                i += 1

        call = ws(requests(), metadata=(("namespace", "default"), ("shard-id", str(shard))))
        done = 0
        t0 = time.perf_counter()
        async for r in call:
            assert all(p.status == client_pb2.OK for p in r.puts[:1])
            done += len(r.puts)
            slots.get_nowait()
        el = time.perf_counter() - t0
    return Result(done / el, done, el)


async def read_load(
    address: str, shard: int, seconds: float, batch: int = 1000, concurrency: int = 4
) -> Result:
    """Batched gets through Read, ``concurrency`` calls in flight."""
    req = client_pb2.ReadRequest(
        shard=shard,
        gets=[client_pb2.GetRequest(key=f"/bench/k{j}", include_value=True) for j in range(batch)],
    ).SerializeToString()
    async with grpc.aio.insecure_channel(address) as ch:
        rd = ch.unary_stream(
            READ,
            request_serializer=_ident,
            response_deserializer=client_pb2.ReadResponse.FromString,
        )
        n = 0
        t0 = time.perf_counter()

        async def reader() -> None:
            nonlocal n
            while time.perf_counter() - t0 < seconds:
                async for r in rd(req):
                    n += len(r.gets)

        await asyncio.gather(*(reader() for _ in range(concurrency)))
        el = time.perf_counter() - t0
    return Result(n / el, n, el)


ECHO_SERVER = r"""
import asyncio, sys
import grpc
from pyxia.proto import client_pb2

async def main():
    batch = int(sys.argv[1])
    reply = client_pb2.WriteResponse(puts=[client_pb2.PutResponse(
        version=client_pb2.Version(version_id=1)) for _ in range(batch)]).SerializeToString()
    gets = client_pb2.ReadResponse(gets=[client_pb2.GetResponse(
        value=b"x" * 100, version=client_pb2.Version(version_id=1)) for _ in range(batch)]
    ).SerializeToString()

    async def write_stream(requests, context):
        async for _raw in requests:
            yield reply

    async def read(_raw, context):
        yield gets

    ident = lambda b: b
    handlers = {
        "WriteStream": grpc.stream_stream_rpc_method_handler(
            write_stream, request_deserializer=None, response_serializer=ident),
        "Read": grpc.unary_stream_rpc_method_handler(
            read, request_deserializer=None, response_serializer=ident),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("io.oxia.proto.v1.OxiaClient", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""
