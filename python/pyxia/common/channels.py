"""gRPC channels from this process to other data servers' internal ports (replication) and from
the coordinator to data servers: one pool, the one place such channels are made.

Every call made through the pool proves cluster membership: with a cluster secret the pool
adds ``ClusterSecret.sign(method)`` to the call's metadata (one proof per call or stream,
nothing per message), and with peer TLS the channel is a TLS channel presenting this process's
certificate (mutual TLS on the internal port). Callers get an :class:`InternalChannel`, which
offers only the four multicallable factories: there is no raw channel to call without a proof.

Rotation: when the peer TLS files change (:meth:`ClientTls.generation`), the next call to an
address opens a new channel with the new credentials; the old channel is retired and closed
once its last call finished, or after ``retire_grace_s`` (long-lived streams then end and
reconnect on the new channel).

Invariants:
- A call through the pool always carries a proof when a secret is configured; the metadata the
  caller passes is kept, the proof added after it.
- Retired channels are closed exactly once; closing the pool closes every channel, current and
  retired, and the pool refuses new calls afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from pyxia.common.grpc_metrics import CountedResponses, client_metrics, count_client_call
from pyxia.common.grpc_options import grpc_client_options
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.tls import ClientTls
from pyxia.test_hooks import dial

log = logging.getLogger("pyxia.channels")

RETIRE_GRACE_S = 60.0

Metadata = tuple[tuple[str, str | bytes], ...]


class _Connection:
    """One channel to one address and the calls in flight on it."""

    __slots__ = ("active", "channel", "closing", "generation", "retired")

    def __init__(self, channel: grpc.aio.Channel, generation: int) -> None:
        self.channel = channel
        self.generation = generation
        self.active = 0
        self.retired = False
        self.closing = False


class ChannelPool:
    def __init__(
        self,
        tls: ClientTls | None = None,
        secret: ClusterSecret | None = None,
        *,
        retire_grace_s: float = RETIRE_GRACE_S,
    ) -> None:
        self.tls = tls
        self.secret = secret
        self.retire_grace_s = retire_grace_s
        self._conns: dict[str, _Connection] = {}
        self._retired: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def get(self, address: str) -> InternalChannel:
        """The channel to ``address``'s internal port (opened on first use)."""
        if self._closed:
            raise RuntimeError("the channel pool is closed")
        generation = self.tls.generation() if self.tls is not None else 0
        conn = self._conns.get(address)
        if conn is not None and conn.generation != generation:
            log.info("TLS files changed: new connections to %s use them", address)
            self._retire(conn)
            conn = None
        if conn is None:
            conn = _Connection(self._open(address), generation)
            self._conns[address] = conn
        return InternalChannel(self, conn)

    def _open(self, address: str) -> grpc.aio.Channel:
        target = dial(address)
        if self.tls is not None:
            return self.tls.secure_channel(target, grpc_client_options())
        return grpc.aio.insecure_channel(target, options=grpc_client_options())

    def metadata(self, method: str, metadata: Any) -> Metadata | None:
        """The metadata of one call of ``method``: the caller's, plus the proof of membership."""
        if self.secret is None:
            return metadata  # type: ignore[no-any-return]
        proof = self.secret.sign(method)
        if not metadata:
            return (proof,)
        return (*tuple(metadata), proof)

    # -- channel lifetime -------------------------------------------------------------------------

    def _started(self, conn: _Connection, call: grpc.aio.Call) -> None:
        conn.active += 1
        call.add_done_callback(lambda _: self._finished(conn))

    def _finished(self, conn: _Connection) -> None:
        conn.active -= 1
        if conn.retired and conn.active <= 0:
            self._close_later(conn, 0.0)

    def _retire(self, conn: _Connection) -> None:
        conn.retired = True
        self._retired.add(conn)
        self._close_later(conn, 0.0 if conn.active <= 0 else self.retire_grace_s)

    def _close_later(self, conn: _Connection, delay: float) -> None:
        if conn.closing:
            return
        if delay <= 0:
            conn.closing = True

        async def close() -> None:
            if delay > 0:
                await asyncio.sleep(delay)
                if conn.closing:
                    return
                conn.closing = True
            self._retired.discard(conn)
            await conn.channel.close()

        task = asyncio.get_running_loop().create_task(close(), name="close-retired-channel")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drop(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.closing = True
            await conn.channel.close()

    async def close(self) -> None:
        self._closed = True
        conns = [*self._conns.values(), *self._retired]
        self._conns = {}
        self._retired = set()
        tasks, self._tasks = self._tasks, set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for conn in conns:
            conn.closing = True
            await conn.channel.close()


class InternalChannel:
    """A channel of the pool: multicallables whose every call carries the proof of membership
    (and counts as in flight on its channel until it ends)."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ChannelPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn

    def unary_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None
    ) -> _UnaryUnary:
        inner = self._conn.channel.unary_unary(method, request_serializer, response_deserializer)
        return _UnaryUnary(self._pool, self._conn, method, inner)

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None
    ) -> _UnaryStream:
        inner = self._conn.channel.unary_stream(method, request_serializer, response_deserializer)
        return _UnaryStream(self._pool, self._conn, method, inner)

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None
    ) -> _StreamUnary:
        inner = self._conn.channel.stream_unary(method, request_serializer, response_deserializer)
        return _StreamUnary(self._pool, self._conn, method, inner)

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None
    ) -> _StreamStream:
        inner = self._conn.channel.stream_stream(method, request_serializer, response_deserializer)
        return _StreamStream(self._pool, self._conn, method, inner)


if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamMultiCallable[Any, Any]
else:  # the runtime classes are not generic
    _UnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.aio.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.aio.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.aio.StreamStreamMultiCallable


class _Signed:
    __slots__ = ("_conn", "_inner", "_method", "_pool")

    def __init__(self, pool: ChannelPool, conn: _Connection, method: str, inner: Any) -> None:
        self._pool = pool
        self._conn = conn
        self._method = method
        self._inner = inner


class _UnaryUnary(_Signed, _UnaryUnaryBase):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        call: grpc.aio.UnaryUnaryCall[Any, Any] = self._inner(
            request,
            timeout=timeout,
            metadata=self._pool.metadata(self._method, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        self._pool._started(self._conn, call)
        m = client_metrics("unary", self._method)
        count_client_call(m, call, unary_request=True, unary_response=True)
        return call


class _UnaryStream(_Signed, _UnaryStreamBase):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        call: grpc.aio.UnaryStreamCall[Any, Any] = self._inner(
            request,
            timeout=timeout,
            metadata=self._pool.metadata(self._method, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        self._pool._started(self._conn, call)
        m = client_metrics("server_stream", self._method)
        count_client_call(m, call, unary_request=True, unary_response=False)
        return cast("grpc.aio.UnaryStreamCall[Any, Any]", CountedResponses(call, m))


class _StreamUnary(_Signed, _StreamUnaryBase):
    def __call__(
        self,
        request_iterator: AsyncIterator[Any] | Iterator[Any] | None = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.StreamUnaryCall[Any, Any]:
        m = client_metrics("client_stream", self._method)
        if request_iterator is not None:
            request_iterator = m.counted_requests(request_iterator)
        call: grpc.aio.StreamUnaryCall[Any, Any] = self._inner(
            request_iterator,
            timeout=timeout,
            metadata=self._pool.metadata(self._method, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        self._pool._started(self._conn, call)
        count_client_call(m, call, unary_request=False, unary_response=True)
        return call


class _StreamStream(_Signed, _StreamStreamBase):
    def __call__(
        self,
        request_iterator: AsyncIterator[Any] | Iterator[Any] | None = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
        m = client_metrics("bidi_stream", self._method)
        if request_iterator is not None:
            request_iterator = m.counted_requests(request_iterator)
        call: grpc.aio.StreamStreamCall[Any, Any] = self._inner(
            request_iterator,
            timeout=timeout,
            metadata=self._pool.metadata(self._method, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        self._pool._started(self._conn, call)
        count_client_call(m, call, unary_request=False, unary_response=False)
        return cast("grpc.aio.StreamStreamCall[Any, Any]", CountedResponses(call, m))
