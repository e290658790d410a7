"""A WriteStream that ends with a refusal: the server answers every write it logged, logs
nothing after the refused one and ends with the refusal's status; pyxia's client gets that
status even when it was writing as the stream ended (grpc-python would otherwise report
INTERNAL "Internal error from Core", grpc/grpc#36066, and a refused write would look
indeterminate)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyxia.client import AsyncClient
from pyxia.client.connections import Stub
from pyxia.client.errors import error_from_rpc
from pyxia.client.ops import WriteOp
from pyxia.client.writer import _WriteStream, raw_sender
from pyxia.common import grpc_errors
from pyxia.common.ports import free_port
from pyxia.config import NamespaceConfig
from pyxia.errors import NodeIsNotLeader, PyxiaError
from pyxia.node import standalone
from pyxia.proto import client_pb2
from pyxia.server.data_server import ServerOptions
from servers import wait_until

SERVICE = "io.oxia.proto.v1.OxiaClient"


def put(key: str) -> bytes:
    return client_pb2.WriteRequest(
        shard=0, puts=[client_pb2.PutRequest(key=key, value=b"v")]
    ).SerializeToString()


async def test_nothing_after_a_refused_write_is_logged(tmp_path: Path) -> None:
    node = standalone(
        ServerOptions(
            public_addr="127.0.0.1:0",
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            data_dir=tmp_path / "db",
            wal_dir=tmp_path / "wal",
            tso=None,
        ),
        [NamespaceConfig("default", 1, 1)],
    )
    await node.start()
    try:
        lc = node.server.director.leaders[0]
        async with grpc.aio.insecure_channel(node.server.public_address) as ch:
            call: Any = ch.stream_stream(f"/{SERVICE}/WriteStream")(metadata=(("shard-id", "0"),))
            for i in range(3):
                await call.write(put(f"/before{i}"))
                assert client_pb2.WriteResponse.FromString(await call.read()).puts[0].status == 0
            head = lc.head_offset
            await lc.step_down(lc.term, 1.0)  # a planned move begins: writes are refused
            send = raw_sender(call)  # writes that may race the status must not replace it
            assert send is not None
            for i in range(3):
                with contextlib.suppress(Exception):  # the stream may have ended already
                    await send(client_pb2.WriteRequest.FromString(put(f"/after{i}")))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert isinstance(error_from_rpc(e.value), NodeIsNotLeader)
            assert lc.head_offset == head  # none of the three was logged
            # once the handoff is over (no new term came), nothing of the old stream appears
            tenure = lc.replica.tenure
            assert tenure is not None
            tenure.handoff = None
            r = await lc.get(client_pb2.GetRequest(key="/after1"))
            assert r.status == client_pb2.KEY_NOT_FOUND
    finally:
        await node.close()


class _Conns:
    def token_generation(self) -> int:
        return 0  # no auth token: the stream's token never changes


class _Core:
    conns = _Conns()


class _Owner:
    """Stands in for the ShardWriter: records how the stream ended."""

    def __init__(self) -> None:
        self.core = _Core()
        self.answered = 0
        self.broken: asyncio.Future[PyxiaError] = asyncio.get_running_loop().create_future()

    def on_response(self, stream: Any, ops: list[WriteOp], resp: Any) -> None:
        self.answered += 1

    def on_broken(self, stream: Any, err: PyxiaError, unanswered: list[Any]) -> None:
        if not self.broken.done():
            self.broken.set_result(err)


async def _refusing_server(answer: int) -> tuple[grpc.aio.Server, int]:
    async def handler(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        await context.send_initial_metadata(())
        n = 0
        async for _ in requests:
            n += 1
            if n > answer:
                await grpc_errors.abort(
                    context, NodeIsNotLeader("oxia: handing over", shard=0, leader_hint="b:1")
                )
            yield client_pb2.WriteResponse(
                puts=[client_pb2.PutResponse(status=client_pb2.OK)]
            ).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"WriteStream": grpc.stream_stream_rpc_method_handler(handler)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_the_client_keeps_the_refusal_while_it_writes() -> None:
    """The client writes without waiting for answers as the server refuses: every trial must
    end with NODE_IS_NOT_LEADER and its hint (before the fix most ended INTERNAL)."""
    server, port = await _refusing_server(answer=3)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = Stub(f"127.0.0.1:{port}", ch)
            for _ in range(40):
                owner = _Owner()
                s = _WriteStream(owner, stub, "default", 0)  # type: ignore[arg-type]
                for i in range(200):
                    s.send([])
                    if i % 20 == 0:
                        await asyncio.sleep(0)
                err = await asyncio.wait_for(owner.broken, 10)
                assert isinstance(err, NodeIsNotLeader), err
                assert err.leader_hint == "b:1"
                s.close()
    finally:
        await server.stop(0)


async def test_a_write_to_a_server_that_is_gone_was_never_sent(tmp_path: Path) -> None:
    """The shard's leader as the client knows it refuses connections (it stopped): a create-
    only put is resent, never reported indeterminate, and succeeds once the client learns the
    real leader."""
    node = standalone(
        ServerOptions(
            public_addr="127.0.0.1:0",
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            data_dir=tmp_path / "db",
            wal_dir=tmp_path / "wal",
            tso=None,
        ),
        [NamespaceConfig("default", 1, 1)],
    )
    await node.start()
    try:
        async with AsyncClient(node.server.public_address, request_timeout_s=20) as client:
            core = client._core
            assert core is not None
            await client.put("/warm", "up")
            gone = f"127.0.0.1:{free_port()}"  # nothing listens there
            core.set_leader_hint(0, gone)
            writer = core._writers[0]
            writer.leader_changed()
            fut = asyncio.ensure_future(client.put("/created", "v", expected_version_id=-1))
            # it fails against the gone address, again and again, without giving up
            await wait_until(lambda: writer._attempt >= 3, what="retries to the gone address")
            assert not fut.done()
            core._hints.clear()  # the client learns the leader again
            r = await asyncio.wait_for(fut, 20)
            assert r.version.modifications_count == 0
    finally:
        await node.close()


async def _server_refusing_writes(code: grpc.StatusCode) -> tuple[grpc.aio.Server, str]:
    """Assigns one shard to itself and refuses every write stream at once with ``code`` and
    no headers (as an authorizing interceptor does), before any write is read."""
    address: list[str] = []

    async def assignments(request: bytes, context: Any) -> AsyncIterator[bytes]:
        ns = client_pb2.NamespaceShardsAssignment(
            assignments=[
                client_pb2.ShardAssignment(
                    shard=0,
                    leader=address[0],
                    int32_hash_range=client_pb2.Int32HashRange(
                        min_hash_inclusive=0, max_hash_inclusive=0xFFFFFFFF
                    ),
                )
            ],
            shard_key_router=client_pb2.XXHASH3,
        )
        yield client_pb2.ShardAssignments(namespaces={"default": ns}).SerializeToString()
        await asyncio.Event().wait()  # the stream stays open, as a server's does

    async def write_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        await context.abort(code, "user 'bob' may not write namespace 'default'")
        yield b""  # pragma: no cover - a generator that never yields

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "GetShardAssignments": grpc.unary_stream_rpc_method_handler(assignments),
                    "WriteStream": grpc.stream_stream_rpc_method_handler(write_stream),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    address.append(f"127.0.0.1:{port}")
    await server.start()
    return server, address[0]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied"),
        (grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated"),
    ],
)
async def test_a_refused_write_stream_fails_the_write_at_once(
    code: grpc.StatusCode, error: str
) -> None:
    """A stream refused before the write went out (the refusal raced the send) must fail the
    write with the refusal, not resend it until the request timeout: the refusal holds for
    every write on the stream (seen in CI as a RequestTimeout after 40 s instead of
    PermissionDenied)."""
    server, address = await _server_refusing_writes(code)
    try:
        async with AsyncClient(address, request_timeout_s=30) as client:
            for _ in range(5):  # whether or not the write was sent before the refusal came
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(PyxiaError) as e:
                    await client.put("/y", b"1")
                assert type(e.value).__name__ == error, repr(e.value)
                assert "may not write" in str(e.value)
                assert loop.time() - started < 10  # answered, not timed out after 30 s
    finally:
        await server.stop(0)
