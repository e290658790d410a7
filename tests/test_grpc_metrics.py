"""The gRPC metrics (go-grpc-prometheus's names): a server's calls are counted started, handled
with the code the handler answered (Go's spelling), and per message on streams; the interceptor
changes no answer. The client side counts the calls a ChannelPool makes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_metrics import GrpcServerMetrics, go_code_name

SERVICE = "test.v1.Echo"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request == b"bad":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    if request == b"boom":
        raise RuntimeError("boom")
    return request


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r
        yield r


async def _writer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A server stream sent with ``context.write`` (as GetNotifications is)."""
    for x in request:
        await context.write(bytes([x]))


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "Writer": grpc.unary_stream_rpc_method_handler(_writer),
        },
    )


def test_go_code_names() -> None:
    assert go_code_name(grpc.StatusCode.OK) == "OK"
    assert go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert go_code_name(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidArgument"


@pytest.mark.asyncio
async def test_server_and_client_calls_are_counted() -> None:
    server = grpc.aio.server(interceptors=[GrpcServerMetrics()])
    server.add_generic_rpc_handlers([_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = ChannelPool()
    unary = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Unary"}
    bidi = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "Bidi"}
    writer = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Writer"}
    before = {
        "written": _value("grpc_server_msg_sent_total", **writer),
        "ok": _value("grpc_server_handled_total", **unary, grpc_code="OK"),
        "bad": _value("grpc_server_handled_total", **unary, grpc_code="InvalidArgument"),
        "unknown": _value("grpc_server_handled_total", **unary, grpc_code="Unknown"),
        "started": _value("grpc_server_started_total", **unary),
        "received": _value("grpc_server_msg_received_total", **bidi),
        "sent": _value("grpc_server_msg_sent_total", **bidi),
        "client_ok": _value("grpc_client_handled_total", **unary, grpc_code="OK"),
        "client_sent": _value("grpc_client_msg_sent_total", **bidi),
        "client_received": _value("grpc_client_msg_received_total", **bidi),
    }
    try:
        ch = pool.get(f"127.0.0.1:{port}")
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        assert await call(b"hello") == b"hello"  # the interceptor changes no answer
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(b"bad")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(b"boom")
        assert e.value.code() == grpc.StatusCode.UNKNOWN

        async def three() -> AsyncIterator[bytes]:
            for x in (b"a", b"b", b"c"):
                yield x

        stream = ch.stream_stream(f"/{SERVICE}/Bidi")(three())
        assert [r async for r in stream] == [b"a", b"a", b"b", b"b", b"c", b"c"]
        assert await stream.code() == grpc.StatusCode.OK
        written = ch.unary_stream(f"/{SERVICE}/Writer")(b"wxyz")
        assert [r async for r in written] == [b"w", b"x", b"y", b"z"]
    finally:
        await pool.close()
        await server.stop(None)

    def delta(key: str, name: str, labels: dict[str, str], **extra: str) -> float:
        return _value(name, **labels, **extra) - before[key]

    assert delta("started", "grpc_server_started_total", unary) == 3
    assert delta("ok", "grpc_server_handled_total", unary, grpc_code="OK") == 1
    assert delta("bad", "grpc_server_handled_total", unary, grpc_code="InvalidArgument") == 1
    assert delta("unknown", "grpc_server_handled_total", unary, grpc_code="Unknown") == 1
    assert delta("received", "grpc_server_msg_received_total", bidi) == 3
    assert delta("sent", "grpc_server_msg_sent_total", bidi) == 6
    assert delta("written", "grpc_server_msg_sent_total", writer) == 4
    assert delta("client_ok", "grpc_client_handled_total", unary, grpc_code="OK") == 1
    assert delta("client_sent", "grpc_client_msg_sent_total", bidi) == 3
    assert delta("client_received", "grpc_client_msg_received_total", bidi) == 6
