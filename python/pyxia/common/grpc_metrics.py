"""gRPC server metrics with go-grpc-prometheus's names and labels (what Oxia exports and its
``oxia-grpc`` dashboard reads): ``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_msg_received_total`` and ``grpc_server_msg_sent_total``, labelled
``grpc_type`` (unary, client_stream, server_stream, bidi_stream), ``grpc_service``,
``grpc_method`` and, for handled calls, ``grpc_code`` in Go's spelling (``OK``,
``InvalidArgument``, ``Unavailable``...).

:class:`GrpcServerMetrics` is a ``grpc.aio`` server interceptor; the first interceptor of a
server, so that calls its other interceptors refuse are counted too.

Invariants:
- A method's children are bound on its first call and reused: per call one dictionary lookup,
  per message one increment of a lock-free counter (``pyxia.common.fast_metrics``: every call
  runs on the event loop's thread); a stream's messages pass through one extra async generator
  step.
- The code of a call is the one its handler set (``context.abort``/``set_code``), OK when it
  returned normally, Unknown when it raised anything else, Canceled when the client went away.
- The interceptor never changes what a handler answers.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pyxia.common.fast_metrics import FastCounter as Counter

_LABELS = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started", "Total number of RPCs started on the server.", _LABELS)
HANDLED = Counter(
    "grpc_server_handled",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
RECEIVED = Counter(
    "grpc_server_msg_received",
    "Total number of RPC stream messages received on the server.",
    _LABELS,
)
SENT = Counter(
    "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.", _LABELS
)


def go_code_name(code: grpc.StatusCode) -> str:
    """``DEADLINE_EXCEEDED`` -> ``DeadlineExceeded`` (Go's ``codes.Code.String()``)."""
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


_GO_NAMES = {code: go_code_name(code) for code in grpc.StatusCode}
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class MethodMetrics:
    """The children of one method, bound once."""

    __slots__ = ("_handled", "labels", "received", "sent", "started")

    def __init__(self, kind: str, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.labels = (kind, service, name)
        self.started = STARTED.labels(*self.labels)
        self.received = RECEIVED.labels(*self.labels)
        self.sent = SENT.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = HANDLED.labels(*self.labels, _GO_NAMES[code])
        child.inc()


def _code_of(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    set_code = context.code()
    if set_code is not None:
        if isinstance(set_code, grpc.StatusCode):
            return set_code
        found = _BY_VALUE.get(int(set_code))
        if found is not None:
            return found
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _counted(requests: AsyncIterator[Any], m: MethodMetrics) -> AsyncIterator[Any]:
    received = m.received.inc
    async for r in requests:
        received()
        yield r


Behavior = Callable[..., Any]


class _CountingWrites:
    """A servicer context whose ``write`` is counted as a message sent; every other
    attribute is the wrapped context's."""

    __slots__ = ("_context", "_sent")

    def __init__(self, context: Any, sent: Callable[[], None]) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _instrument(handler: grpc.RpcMethodHandler[Any, Any], m: MethodMetrics) -> Any:
    """``handler`` with the same serializers, its behavior counted."""
    inner: Any
    factory: Any
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream
        factory = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        inner = handler.stream_unary
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        inner = handler.unary_stream
        factory = grpc.unary_stream_rpc_method_handler
    else:
        inner = handler.unary_unary
        factory = grpc.unary_unary_rpc_method_handler
    streaming_in = handler.request_streaming
    if handler.response_streaming and inspect.isasyncgenfunction(inner):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            m.started.inc()
            if streaming_in:
                request = _counted(request, m)
            else:
                m.received.inc()
            sent = m.sent.inc
            error: BaseException | None = None
            try:
                async for response in inner(request, context):
                    sent()
                    yield response
            except BaseException as e:
                error = e
                raise
            finally:
                m.handled(_code_of(context, error))

        behavior: Behavior = stream_out
    else:

        async def single_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            m.started.inc()
            if streaming_in:
                request = _counted(request, m)
            else:
                m.received.inc()
            error: BaseException | None = None
            try:
                # A streaming handler that sends with ``context.write``: count each write.
                ctx: Any = (
                    _CountingWrites(context, m.sent.inc) if handler.response_streaming else context
                )
                result = inner(request, ctx)
                if inspect.isawaitable(result):
                    result = await result
                if not handler.response_streaming:
                    m.sent.inc()
                return result
            except BaseException as e:
                error = e
                raise
            finally:
                m.handled(_code_of(context, error))

        behavior = single_out
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


MAX_METHODS = 256
"""Distinct methods labelled at most; calls of further names (only refusals can have names the
server does not serve) are counted under the method ``unknown``."""


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    """Counts every call of the server it intercepts (see the module docstring)."""

    def __init__(self) -> None:
        self._metrics: dict[tuple[str, str], MethodMetrics] = {}
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _method_metrics(self, kind: str, method: str) -> MethodMetrics:
        key = (kind, method)
        m = self._metrics.get(key)
        if m is None:
            if len(self._metrics) >= MAX_METHODS:
                key = (kind, "/unknown/unknown")
                m = self._metrics.get(key)
            if m is None:
                m = self._metrics[key] = MethodMetrics(*key)
        return m

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _instrument(handler, self._method_metrics(rpc_type(handler), method))
        if len(self._wrapped) < MAX_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


# -- the client side: calls this process makes (replication, coordination) --------------------

CLIENT_STARTED = Counter(
    "grpc_client_started", "Total number of RPCs started on the client.", _LABELS
)
CLIENT_HANDLED = Counter(
    "grpc_client_handled",
    "Total number of RPCs completed by the client, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
CLIENT_RECEIVED = Counter(
    "grpc_client_msg_received",
    "Total number of RPC stream messages received by the client.",
    _LABELS,
)
CLIENT_SENT = Counter(
    "grpc_client_msg_sent", "Total number of gRPC stream messages sent by the client.", _LABELS
)


class ClientMethodMetrics:
    """The client-side children of one method, bound once (see :func:`client_metrics`)."""

    __slots__ = ("_handled", "labels", "received", "sent", "started")

    def __init__(self, kind: str, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.labels = (kind, service, name)
        self.started = CLIENT_STARTED.labels(*self.labels)
        self.received = CLIENT_RECEIVED.labels(*self.labels)
        self.sent = CLIENT_SENT.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = CLIENT_HANDLED.labels(*self.labels, _GO_NAMES[code])
        child.inc()

    async def counted_requests(self, requests: Any) -> AsyncIterator[Any]:
        """``requests`` (an iterator or async iterator of messages), each one counted sent."""
        sent = self.sent.inc
        if hasattr(requests, "__aiter__"):
            async for r in requests:
                sent()
                yield r
        else:
            for r in requests:
                sent()
                yield r


_CLIENT_METHODS: dict[tuple[str, str], ClientMethodMetrics] = {}
_PENDING: set[asyncio.Task[None]] = set()


def client_metrics(kind: str, method: str) -> ClientMethodMetrics:
    """The children of a method this process calls (its own code names them: bounded)."""
    m = _CLIENT_METHODS.get((kind, method))
    if m is None:
        m = _CLIENT_METHODS[(kind, method)] = ClientMethodMetrics(kind, method)
    return m


def count_client_call(
    m: ClientMethodMetrics, call: Any, *, unary_request: bool, unary_response: bool
) -> None:
    """A call just started: counted started (and its one request sent when unary); its code
    is counted handled once it ends, with its one response received when unary and OK (the
    code of an ended ``grpc.aio`` call is awaited in a task of its own, one per call)."""
    m.started.inc()
    if unary_request:
        m.sent.inc()

    def done(finished: Any) -> None:
        async def record() -> None:
            try:
                code = await finished.code()
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNKNOWN
            if unary_response and code is grpc.StatusCode.OK:
                m.received.inc()
            m.handled(code)

        task = asyncio.get_running_loop().create_task(record())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    call.add_done_callback(done)


class CountedResponses:
    """A streaming call whose responses, read by iterating it, are counted received; every
    other attribute is the call's own."""

    __slots__ = ("_call", "_received")

    def __init__(self, call: Any, m: ClientMethodMetrics) -> None:
        self._call = call
        self._received = m.received

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    async def _iterate(self) -> AsyncIterator[Any]:
        received = self._received.inc
        async for response in self._call:
            received()
            yield response

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    def __await__(self) -> Any:
        return self._call.__await__()
