"""pyxia's client (and so ``pyxia perf``) against an Oxia server older than 0.12, which serves the
client API only under its old package name ``io.streamnative.oxia.proto``: the client is told
UNIMPLEMENTED for ``io.oxia.proto.v1`` and goes on under the old name.

The old server is a forwarding proxy in this process that serves only the old name (passing
each call on to a real ``pyxia standalone``, which serves both) and names itself as the leader
of every shard, so every call of the client goes through it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from pyxia import AsyncClient, ComparisonType
from pyxia.proto import client_pb2
from servers import ServerProcess, standalone_args

OLD = "io.streamnative.oxia.proto.OxiaClient"

UNARY_STREAM = (
    "GetShardAssignments",
    "Read",
    "List",
    "RangeScan",
    "GetNotifications",
    "GetSequenceUpdates",
)
UNARY = ("Write", "CreateSession", "KeepAlive", "CloseSession")
STREAM_STREAM = ("WriteStream",)


def _ident(b: bytes) -> bytes:
    return b


def _forwarded_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (str(m.key), str(m.value))
        for m in context.invocation_metadata() or ()
        if m.key in ("namespace", "shard-id")
    )


class OldOxiaServer:
    """Serves the client API under the old service name only, forwarding to ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls: list[str] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    def _rewrite_assignments(self, raw: bytes) -> bytes:
        a = client_pb2.ShardAssignments.FromString(raw)
        for ns in a.namespaces.values():
            for sa in ns.assignments:
                sa.leader = self.address
        return a.SerializeToString()

    async def start(self) -> OldOxiaServer:
        ch = self._channel = grpc.aio.insecure_channel(self.target)
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

        def unary_stream(name: str) -> Callable[..., AsyncIterator[bytes]]:
            mc = ch.unary_stream(f"/{OLD}/{name}", _ident, _ident)

            async def handler(req: bytes, context: Any) -> AsyncIterator[bytes]:
                self.calls.append(name)
                async for r in mc(req, metadata=_forwarded_metadata(context)):
                    yield self._rewrite_assignments(r) if name == "GetShardAssignments" else r

            return handler

        def unary(name: str) -> Callable[..., Any]:
            mc = ch.unary_unary(f"/{OLD}/{name}", _ident, _ident)

            async def handler(req: bytes, context: Any) -> bytes:
                self.calls.append(name)
                out: bytes = await mc(req, metadata=_forwarded_metadata(context))
                return out

            return handler

        def stream_stream(name: str) -> Callable[..., AsyncIterator[bytes]]:
            mc = ch.stream_stream(f"/{OLD}/{name}", _ident, _ident)

            async def handler(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                self.calls.append(name)
                async for r in mc(requests, metadata=_forwarded_metadata(context)):
                    yield r

            return handler

        for n in UNARY_STREAM:
            handlers[n] = grpc.unary_stream_rpc_method_handler(unary_stream(n))
        for n in UNARY:
            handlers[n] = grpc.unary_unary_rpc_method_handler(unary(n))
        for n in STREAM_STREAM:
            handlers[n] = grpc.stream_stream_rpc_method_handler(stream_stream(n))
        server = self._server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(OLD, handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        await server.start()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close()


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("compat")
    s = ServerProcess(standalone_args(base, "--shards", "2"), base).start()
    yield s
    s.kill()


@pytest.fixture
async def old_server(standalone: ServerProcess) -> AsyncIterator[OldOxiaServer]:
    o = await OldOxiaServer(standalone.public).start()
    try:
        yield o
    finally:
        await o.close()


async def test_client_falls_back_to_the_old_service_name(old_server: OldOxiaServer) -> None:
    p = f"/compat-{uuid.uuid4().hex[:8]}"
    async with AsyncClient(old_server.address, request_timeout_s=10.0) as c:
        r = await c.put(f"{p}/a", b"1")
        assert r.version.modifications_count == 0
        await c.put(f"{p}/b", b"2")
        assert (await c.get(f"{p}/a")).value == b"1"
        assert (await c.get(f"{p}/a0", comparison=ComparisonType.HIGHER)).key == f"{p}/b"
        assert await c.list(f"{p}/", f"{p}//") == [f"{p}/a", f"{p}/b"]
        assert [r.key async for r in c.range_scan(f"{p}/", f"{p}//")] == [f"{p}/a", f"{p}/b"]
        assert await c.delete(f"{p}/a")
        await c.put(f"{p}/e", b"x", ephemeral=True)
        assert (await c.get(f"{p}/e")).version.is_ephemeral
    # Every call went through the old name (the proxy serves nothing else), writes included.
    assert {"GetShardAssignments", "WriteStream", "Read", "List", "RangeScan"} <= set(
        old_server.calls
    )
    assert "CreateSession" in old_server.calls


async def test_pyxia_perf_drives_an_old_oxia_server(old_server: OldOxiaServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyxia",
        "perf",
        "--service-address",
        old_server.address,
        "--rate",
        "200",
        "--duration",
        "2s",
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["ops_per_s"] > 0
    assert report["failed_ops_per_s"] == 0
    assert "WriteStream" in old_server.calls and "Read" in old_server.calls
