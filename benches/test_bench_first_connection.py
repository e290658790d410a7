"""A client started before its cluster is ready connects promptly once it is.

A benchmark, not part of the default test run (it times how soon clients connect, which a
loaded machine stretches): ``pytest benches/test_bench_first_connection.py``. The default run
checks the mechanism instead (tests/test_client_policy.py: the retry wait for a server not
ready yet, and the channels' reconnect backoff).

A fresh cluster is not ready at once: its servers may not listen yet (they start next to their
clients), or, as Oxia's data servers do, refuse ``GetShardAssignments`` with NOT_INITIALIZED
until the coordinator has pushed the assignments (which Oxia's coordinator retries with its
own backoff). A client that backs off to a second or more between attempts then connects up
to that long after the cluster is ready (measured against a fresh real Oxia cluster: 7-14 s
after its leaders were elected, Go client and pyxia's alike, most of it Oxia's own push
backoff). pyxia's client keeps retrying a not-yet-ready cluster often (``STARTUP_RETRY_MAX_S``
and a short gRPC reconnect backoff): it must be connected within ``PROMPT_S`` of the cluster
becoming ready, after it had been retrying long enough for any backoff to reach its ceiling;
and a write refused by a leader not initialized yet (Oxia pushes each data server on its own)
must be answered within ``PROMPT_S`` of that leader becoming ready.

Several clients wait at once: each one's lag is random (jittered backoff), so with the old
ceilings (1 s) all of them being prompt by chance is unlikely (< 3%)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from pyxia.client import AsyncClient
from pyxia.common import grpc_errors
from pyxia.common.ports import free_port
from pyxia.config import NamespaceConfig
from pyxia.errors import NotInitialized
from pyxia.node import standalone
from pyxia.proto import client_pb2
from pyxia.server.data_server import ServerOptions

CLIENTS = 4
RETRYING_S = 3.0
"""How long the clients retry before the cluster becomes ready: the scenario (long enough for a
backoff doubling from 20 ms to reach a 1 s ceiling), not a synchronisation."""
PROMPT_S = 0.45


async def _connect(address: str) -> float:
    """Starts a client; the monotonic time at which it had the shard assignments."""
    client = AsyncClient(address, request_timeout_s=30.0)
    await client.__aenter__()
    connected = time.monotonic()
    await client.close()
    return connected


async def _answered(put: asyncio.Task[Any]) -> float:
    await put
    return time.monotonic()


async def _clients(address: str) -> list[asyncio.Task[float]]:
    tasks = [asyncio.create_task(_connect(address)) for _ in range(CLIENTS)]
    await asyncio.sleep(RETRYING_S)  # the scenario: the clients have been retrying a while
    assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
    return tasks


async def test_a_client_connects_promptly_once_its_server_listens(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    tasks = await _clients(address)
    node = standalone(
        ServerOptions(
            public_addr=address,
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            data_dir=tmp_path / "db",
            wal_dir=tmp_path / "wal",
            wal_sync_data=False,
            tso=None,
        ),
        [NamespaceConfig("default", 1, 1)],
    )
    try:
        await node.start()
        ready = time.monotonic()
        connected = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        lags = sorted(round(c - ready, 3) for c in connected)
        assert lags[-1] < PROMPT_S, f"clients connected {lags} s after the server was ready"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.close()


class _NotInitializedYet:
    """A server that, like a fresh Oxia data server before the coordinator's first push,
    refuses ``GetShardAssignments`` with NOT_INITIALIZED until ``initialized`` is set, and
    ``WriteStream`` (as the leader of shard 0, which the map says it is) until
    ``writes_initialized`` is set; then it answers every put OK."""

    def __init__(self) -> None:
        self.address = ""
        self.initialized = False
        self.writes_initialized = False
        self.refused = 0
        self.writes_refused = 0

    async def get_shard_assignments(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if not self.initialized:
            self.refused += 1
            await grpc_errors.abort(context, NotInitialized("oxia: server not initialized yet"))
        a = client_pb2.ShardAssignments()
        nsa = a.namespaces["default"]
        nsa.shard_key_router = client_pb2.XXHASH3
        nsa.assignments.add(
            shard=0,
            leader=self.address,
            int32_hash_range=client_pb2.Int32HashRange(
                min_hash_inclusive=0, max_hash_inclusive=0xFFFFFFFF
            ),
        )
        yield a.SerializeToString()
        await asyncio.Event().wait()  # the stream stays open, as a real server's does

    async def write_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if not self.writes_initialized:
            self.writes_refused += 1
            await grpc_errors.abort(context, NotInitialized("oxia: server not initialized yet"))
        async for raw in requests:
            req = client_pb2.WriteRequest.FromString(raw)
            res = client_pb2.WriteResponse(puts=[client_pb2.PutResponse() for _ in req.puts])
            yield res.SerializeToString()

    def serve(self) -> grpc.aio.Server:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "io.oxia.proto.v1.OxiaClient",
            {
                "GetShardAssignments": grpc.unary_stream_rpc_method_handler(
                    self.get_shard_assignments
                ),
                "WriteStream": grpc.stream_stream_rpc_method_handler(self.write_stream),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        return server


async def test_a_client_connects_promptly_once_the_server_is_initialized() -> None:
    fake = _NotInitializedYet()
    server = fake.serve()
    await server.start()
    try:
        tasks = await _clients(fake.address)
        assert fake.refused >= CLIENTS
        fake.initialized = True
        ready = time.monotonic()
        connected = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        lags = sorted(round(c - ready, 3) for c in connected)
        assert lags[-1] < PROMPT_S, f"clients connected {lags} s after the server was ready"
    finally:
        await server.stop(grace=None)


async def test_a_write_reaches_a_leader_promptly_once_it_is_initialized() -> None:
    """The server a client connects to is ready, the leader of its shard not yet (Oxia's
    coordinator pushes each data server on its own, with its own backoff)."""
    fake = _NotInitializedYet()
    fake.initialized = True
    server = fake.serve()
    await server.start()
    try:
        clients = [AsyncClient(fake.address, request_timeout_s=30.0) for _ in range(CLIENTS)]
        for c in clients:
            await c.__aenter__()
        try:
            puts = [asyncio.create_task(c.put("/k", b"v")) for c in clients]
            await asyncio.sleep(RETRYING_S)  # the scenario: the writes have been retried a while
            assert fake.writes_refused >= 3 * CLIENTS and not any(p.done() for p in puts)
            fake.writes_initialized = True
            ready = time.monotonic()
            answered = await asyncio.wait_for(asyncio.gather(*(_answered(p) for p in puts)), 30)
            lags = sorted(round(t - ready, 3) for t in answered)
            assert lags[-1] < PROMPT_S, f"writes answered {lags} s after the leader was ready"
        finally:
            for c in clients:
                await c.close()
    finally:
        await server.stop(grace=None)
