"""The client API (``OxiaClient``), served under ``io.oxia.proto.v1`` and,
for older clients such as the ``oxia`` PyPI package, under
``io.streamnative.oxia.proto``.

Handlers are registered by hand (not through the generated servicer) and
every one receives the raw request bytes: the write path logs them as they
came, wrapped in a ``LogEntryValue`` without being re-serialized, and every
handler decodes its request itself, so undecodable bytes are answered
INVALID_ARGUMENT (gRPC's deserializer would answer UNKNOWN or INTERNAL).

Authorization (``pyxia.security.public``): once a handler knows the namespace
of the shard it serves, it asks ``PublicAccess`` for ``read`` or ``write``
there (PERMISSION_DENIED otherwise); ``include_internal_keys`` needs
``internal-keys``, and a put with ``override_version_id`` or
``override_modifications_count`` needs ``migrate`` — checked by the leader
before the write is logged. In a WriteStream such a refusal ends the stream
with PERMISSION_DENIED after the writes before it are answered (a write's
per-operation status has no PERMISSION_DENIED).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from pyxia._native import read_gets
from pyxia.common import grpc_errors
from pyxia.errors import InvalidArgument, PyxiaError, ResourceUnavailable
from pyxia.proto import client_pb2
from pyxia.security.policy import INTERNAL_KEYS, MIGRATE, READ, WRITE
from pyxia.security.public import PublicAccess
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.leader_controller import LeaderController
from pyxia.server.shards_director import ShardsDirector
from pyxia.storage import reads

log = logging.getLogger("pyxia.rpc")

SERVICE_NAMES = ("io.oxia.proto.v1.OxiaClient", "io.streamnative.oxia.proto.OxiaClient")
MAX_CHUNK_BYTES = 2 * 1024 * 1024
MAX_CHUNK_RECORDS = 1000
MAX_PENDING_WRITES_PER_STREAM = 1024
NOTIFICATION_BATCHES_PER_READ = 100
NOTIFICATION_BYTES_PER_READ = 256 * 1024
"""Notification batches read from the DB at a time for one subscriber, at most that many and
(past the first) that many bytes: what it holds besides the batch gRPC is sending."""
DEFAULT_NOTIFICATIONS_SEND_TIMEOUT_S = 30.0
"""How long a notification batch may wait for a subscriber that stopped reading before its
stream is cut off."""
MAX_NATIVE_GETS = 1000
"""A Read of at most this many gets may be answered in one native call (a few ms at most)."""

Ctx = grpc.aio.ServicerContext[Any, Any]


class _CutOff(Exception):
    """A notifications subscriber was cut off; its status is already set on the context."""


T = TypeVar("T")


def _unary(
    fn: Callable[[Any, Any, Ctx], Awaitable[T]],
) -> Callable[[Any, Any, Ctx], Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> T:
        try:
            return await fn(self, request, context)
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
            raise  # unreachable: abort raises
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")
            raise

    return wrapper


def _streaming(
    fn: Callable[[Any, Any, Ctx], AsyncIterator[T]],
) -> Callable[[Any, Any, Ctx], AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")

    return wrapper


def _parse(cls: Any, raw: bytes) -> Any:
    """``raw`` as a ``cls`` message; undecodable bytes are INVALID_ARGUMENT (gRPC's own
    deserializer would answer UNKNOWN or INTERNAL)."""
    try:
        return cls.FromString(raw)
    except DecodeError as e:
        raise InvalidArgument(f"oxia: undecodable {cls.__name__}: {e}") from None


def _unary_of(
    cls: Any,
) -> Callable[[Callable[[Any, Any, Ctx], Awaitable[T]]], Callable[[Any, bytes, Ctx], Awaitable[T]]]:
    """A unary handler taking the request's bytes, decoded as ``cls`` (None: kept raw)."""

    def decorate(
        fn: Callable[[Any, Any, Ctx], Awaitable[T]],
    ) -> Callable[[Any, bytes, Ctx], Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, raw: bytes, context: Ctx) -> T:
            try:
                request = raw if cls is None else _parse(cls, raw)
                return await fn(self, request, context)
            except PyxiaError as e:
                await grpc_errors.abort(context, e)
                raise  # unreachable: abort raises
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as e:
                log.exception("%s failed", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")
                raise

        return wrapper

    return decorate


def _streaming_of(
    cls: Any,
) -> Callable[
    [Callable[[Any, Any, Ctx], AsyncIterator[T]]], Callable[[Any, bytes, Ctx], AsyncIterator[T]]
]:
    """A server-streaming handler taking the request's bytes, decoded as ``cls`` (None: kept
    raw)."""

    def decorate(
        fn: Callable[[Any, Any, Ctx], AsyncIterator[T]],
    ) -> Callable[[Any, bytes, Ctx], AsyncIterator[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, raw: bytes, context: Ctx) -> AsyncIterator[T]:
            try:
                request = raw if cls is None else _parse(cls, raw)
                async for item in fn(self, request, context):
                    yield item
            except PyxiaError as e:
                await grpc_errors.abort(context, e)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as e:
                log.exception("%s failed", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")

        return wrapper

    return decorate


def _metadata(context: Ctx) -> dict[str, str]:
    md: dict[str, str] = {}
    for k, v in context.invocation_metadata() or ():
        md[k] = v if isinstance(v, str) else v.decode()
    return md


class OxiaClientService:
    """Implements every client RPC on top of the shards director."""

    def __init__(
        self,
        director: ShardsDirector,
        assignments: AssignmentsDispatcher,
        access: PublicAccess | None = None,
        *,
        notifications_send_timeout_s: float = DEFAULT_NOTIFICATIONS_SEND_TIMEOUT_S,
    ) -> None:
        if notifications_send_timeout_s <= 0:
            raise ValueError("notifications_send_timeout_s must be positive")
        self.director = director
        self.assignments = assignments
        self.access = access or PublicAccess()
        self.notifications_send_timeout_s = notifications_send_timeout_s
        self.slow_subscribers_cut_off = 0

    def _check_migrate(self, namespace: str) -> None:
        self.access.check(namespace, MIGRATE)

    def _leader(self, shard: int | None) -> LeaderController:
        if shard is None:
            raise InvalidArgument("oxia: the request does not name a shard")
        return self.director.get_leader(shard)

    # -- assignments ------------------------------------------------------------------------------

    @_streaming_of(client_pb2.ShardAssignmentsRequest)
    async def get_shard_assignments(
        self, req: client_pb2.ShardAssignmentsRequest, context: Ctx
    ) -> AsyncIterator[bytes]:
        access = self.access
        visible = None
        if req.namespace:
            access.check_any(req.namespace)
        elif not access.open:
            visible = access.has_any  # every namespace: those the caller has a grant in
        # The serialized map, shared by every client stream that sends the same view.
        async for a in self.assignments.stream(req.namespace, visible):
            yield a

    # -- writes -----------------------------------------------------------------------------------

    @_unary_of(None)
    async def write(self, raw: bytes, context: Ctx) -> client_pb2.WriteResponse:
        req = _parse(client_pb2.WriteRequest, raw)
        leader = self._leader(req.shard if req.HasField("shard") else None)
        self.access.check(leader.namespace, WRITE)
        res = await leader.propose(req, raw, check_overrides=self._check_migrate)
        return leader.result_to_response(res)

    async def write_stream(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> AsyncIterator[client_pb2.WriteResponse | bytes]:
        """Each request is one log entry; responses go back in request order (as the applier's
        wire bytes when it has them: no message is built only to be serialized)."""
        try:
            md = _metadata(context)
            if "shard-id" not in md:
                raise InvalidArgument("oxia: WriteStream needs the shard-id metadata header")
            try:
                shard = int(md["shard-id"])
            except ValueError:
                raise InvalidArgument(f"oxia: bad shard-id header {md['shard-id']!r}") from None
            leader = self.director.get_leader(shard)
            self.access.check(leader.namespace, WRITE)
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
            return
        check_overrides = self._check_migrate
        # Headers now, before any answer: pyxia's client waits for them (briefly) before its
        # first write, so a stream refused at once reaches it as a status alone, never racing
        # a write (grpc-python would report such a race as INTERNAL, losing the refusal).
        await context.send_initial_metadata(())
        loop = asyncio.get_running_loop()
        inflight: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue(
            MAX_PENDING_WRITES_PER_STREAM
        )

        refused = False  # a write was refused: the stream ends there, nothing after is logged

        async def pump() -> None:
            nonlocal refused
            try:
                async for raw in requests:
                    if refused:
                        continue  # read and dropped until the stream ends
                    fut: asyncio.Future[Any] = loop.create_future()
                    try:
                        req = client_pb2.WriteRequest.FromString(raw)
                    except Exception as e:  # undecodable: nothing to answer per op
                        fut.set_exception(InvalidArgument(f"oxia: bad write request: {e}"))
                        refused = True
                        await inflight.put(fut)
                        continue
                    try:
                        fut = leader.propose(req, raw, check_overrides=check_overrides)
                    except InvalidArgument:
                        # Answered per operation: the stream (and the writes
                        # pipelined behind this one) go on.
                        fut.set_result(invalid_argument_response(req))
                    except PyxiaError as e:
                        # Refused as a whole (not the leader, stepping down, storage failed, a
                        # privileged field without the grant): the stream ends with this error
                        # once the writes ahead of it are answered, and nothing behind it is
                        # logged, so a client may resend all of those.
                        fut.set_exception(e)
                        refused = True
                    await inflight.put(fut)
            except PyxiaError as e:
                # The request stream itself was refused (its token expired): the messages
                # before were answered, this one is not applied.
                fut = loop.create_future()
                fut.set_exception(e)
                await inflight.put(fut)
            finally:
                await inflight.put(None)

        pump_task = loop.create_task(pump())
        try:
            while True:
                fut = await inflight.get()
                if fut is None:
                    break
                try:
                    res = await fut
                    resp: client_pb2.WriteResponse | bytes
                    if isinstance(res, client_pb2.WriteResponse):
                        resp = res
                    elif isinstance(res.error, InvalidArgument) and res.request is not None:
                        resp = invalid_argument_response(res.request)  # a rejected write
                    elif res.error is not None:
                        raise res.error
                    else:
                        resp = res.response_bytes()
                except PyxiaError as e:
                    await grpc_errors.abort(context, e)
                    return
                yield resp
        finally:
            pump_task.cancel()
            try:
                await pump_task
            except (asyncio.CancelledError, Exception):
                pass

    # -- reads ------------------------------------------------------------------------------------

    @_streaming_of(None)
    async def read(
        self, raw: bytes, context: Ctx
    ) -> AsyncIterator[client_pb2.ReadResponse | bytes]:
        """A batch of gets: EQUAL gets of user keys in one native call (``read_gets``: one
        multi-get, the response's bytes built natively); anything else get by get."""
        req = _parse(client_pb2.ReadRequest, raw)
        leader = self._leader(req.shard if req.HasField("shard") else None)
        self.access.check(leader.namespace, READ)
        await leader.confirm_leadership()
        db = leader.storage.db
        n_gets = len(req.gets)
        m = leader.metrics
        m.db_gets.inc(n_gets)
        started = time.perf_counter()
        if n_gets <= MAX_NATIVE_GETS:
            answered = read_gets(raw, db.encoding.name == "hierarchical", db.db.get)
            if answered is not None and len(answered) < MAX_CHUNK_BYTES:
                m.db_get_latency.observe((time.perf_counter() - started) * 1000.0)
                yield answered
                return
        get_into = reads.get_into
        resp = client_pb2.ReadResponse()
        add = resp.gets.add
        size = 0
        for g in req.gets:
            gr = add()
            get_into(db, g, gr)
            size += len(gr.value) + 64
            if size >= MAX_CHUNK_BYTES:
                m.db_get_latency.observe((time.perf_counter() - started) * 1000.0)
                yield resp
                started = time.perf_counter()
                resp = client_pb2.ReadResponse()
                add = resp.gets.add
                size = 0
                await asyncio.sleep(0)
                leader.check_leader()
        m.db_get_latency.observe((time.perf_counter() - started) * 1000.0)
        yield resp

    @_streaming_of(client_pb2.ListRequest)
    async def list_keys(
        self, req: client_pb2.ListRequest, context: Ctx
    ) -> AsyncIterator[client_pb2.ListResponse]:
        leader = self._leader(req.shard if req.HasField("shard") else None)
        self._check_scan(leader.namespace, req.include_internal_keys)
        await leader.confirm_leadership()
        m = leader.metrics
        m.db_lists.inc()
        started = time.perf_counter()
        chunk: list[str] = []
        size = 0
        for key in reads.list_keys(leader.storage.db, req):
            chunk.append(key)
            size += len(key) + 8
            if len(chunk) >= MAX_CHUNK_RECORDS * 10 or size >= MAX_CHUNK_BYTES:
                yield client_pb2.ListResponse(keys=chunk)
                chunk, size = [], 0
                await asyncio.sleep(0)
                leader.check_leader()
        m.db_list_latency.observe((time.perf_counter() - started) * 1000.0)
        yield client_pb2.ListResponse(keys=chunk)

    @_streaming_of(client_pb2.RangeScanRequest)
    async def range_scan(
        self, req: client_pb2.RangeScanRequest, context: Ctx
    ) -> AsyncIterator[client_pb2.RangeScanResponse]:
        leader = self._leader(req.shard if req.HasField("shard") else None)
        self._check_scan(leader.namespace, req.include_internal_keys)
        await leader.confirm_leadership()
        leader.metrics.db_range_scans.inc()
        chunk: list[client_pb2.GetResponse] = []
        size = 0
        for rec in reads.range_scan(leader.storage.db, req):
            chunk.append(rec)
            size += len(rec.value) + len(rec.key) + 64
            if len(chunk) >= MAX_CHUNK_RECORDS or size >= MAX_CHUNK_BYTES:
                yield client_pb2.RangeScanResponse(records=chunk)
                chunk, size = [], 0
                await asyncio.sleep(0)
                leader.check_leader()
        yield client_pb2.RangeScanResponse(records=chunk)

    def _check_scan(self, namespace: str, include_internal_keys: bool) -> None:
        self.access.check(namespace, READ)
        if include_internal_keys:
            self.access.check(namespace, INTERNAL_KEYS)

    # -- streams of changes -----------------------------------------------------------------------

    @_streaming_of(client_pb2.GetSequenceUpdatesRequest)
    async def get_sequence_updates(
        self, req: client_pb2.GetSequenceUpdatesRequest, context: Ctx
    ) -> AsyncIterator[client_pb2.GetSequenceUpdatesResponse]:
        if not req.key:
            raise InvalidArgument("oxia: GetSequenceUpdates needs a key prefix")
        leader = self._leader(req.shard)
        self.access.check(leader.namespace, READ)
        leader.check_leader()
        leader.metrics.db_get_sequence_updates.inc()
        w = leader.watch_sequence(req.key)
        sent: str | None = None
        try:
            while True:
                seen = w.signal.generation
                leader.check_leader()
                if w.last is not None and w.last != sent:
                    sent = w.last
                    yield client_pb2.GetSequenceUpdatesResponse(highest_sequence_key=sent)
                await w.signal.wait(seen)
        finally:
            leader.unwatch_sequence(w)

    @_unary_of(client_pb2.NotificationsRequest)
    async def get_notifications(self, req: client_pb2.NotificationsRequest, context: Ctx) -> None:
        """Streams the shard's notification batches, read from its DB (where they are kept for
        the notifications retention), so a subscriber costs the server one batch read ahead and
        what gRPC holds for its stream, however far behind it is. A subscriber that accepts no
        batch for ``notifications_send_timeout_s`` (flow control: it stopped reading) is cut
        off with RESOURCE_UNAVAILABLE (retryable); clients resume with
        ``start_offset_exclusive`` = the offset of the last batch they received."""
        try:
            await self._stream_notifications(req, context)
        except _CutOff:
            return  # the status is set

    async def _stream_notifications(
        self, req: client_pb2.NotificationsRequest, context: Ctx
    ) -> None:
        leader = self._leader(req.shard)
        self.access.check(leader.namespace, READ)
        leader.check_notifications()
        db = leader.storage.db
        timeout = self.notifications_send_timeout_s
        if req.HasField("start_offset_exclusive"):
            after = req.start_offset_exclusive
        else:
            # No position yet: tell the client where "now" is.
            after = leader.commit_offset
            await self._send_notifications(
                context,
                client_pb2.NotificationBatch(
                    shard=req.shard, offset=after, timestamp=int(time.time() * 1000)
                ),
                after,
                timeout,
            )
        while True:
            seen = leader.applied.generation
            leader.check_leader()
            batches = reads.read_notifications(
                db, after, NOTIFICATION_BATCHES_PER_READ, NOTIFICATION_BYTES_PER_READ
            )
            if batches:
                m = leader.metrics
                m.notifications_read_batches.inc(len(batches))
                m.notifications_read.inc(sum(len(b.notifications) for b in batches))
                m.notifications_read_bytes.inc(sum(b.ByteSize() for b in batches))
            for b in batches:
                await self._send_notifications(context, b, after, timeout)
                after = b.offset
            if not batches:
                await leader.applied.wait(seen)

    async def _send_notifications(
        self, context: Ctx, batch: client_pb2.NotificationBatch, after: int, timeout: float
    ) -> None:
        """Sends one batch; a subscriber that does not take it within ``timeout`` is cut off.
        The status is set on the context rather than aborted: the timed-out write is still
        in gRPC's hands (it may yet reach the client, which keeps whichever offset it got
        last), and an abort would collide with it."""
        try:
            await asyncio.wait_for(context.write(batch), timeout)
        except TimeoutError:
            self.slow_subscribers_cut_off += 1
            log.info(
                "notifications of shard %d: subscriber %s accepted no batch for %gs: cut off",
                batch.shard,
                context.peer(),
                timeout,
            )
            err = ResourceUnavailable(
                f"oxia: notifications subscriber too slow: no batch accepted for {timeout:g}s; "
                f"resume with start_offset_exclusive = the last offset received (>= {after})"
            )
            context.set_code(grpc_errors.status_code(err))
            context.set_details(str(err))
            context.set_trailing_metadata(grpc_errors.to_trailers(err))
            raise _CutOff from None

    # -- sessions ---------------------------------------------------------------------------------

    @_unary_of(client_pb2.CreateSessionRequest)
    async def create_session(
        self, req: client_pb2.CreateSessionRequest, context: Ctx
    ) -> client_pb2.CreateSessionResponse:
        leader = self._leader(req.shard)
        self.access.check(leader.namespace, WRITE)
        sid = await leader.sessions.create(req.session_timeout_ms, req.client_identity)
        return client_pb2.CreateSessionResponse(session_id=sid)

    @_unary_of(client_pb2.SessionHeartbeat)
    async def keep_alive(
        self, req: client_pb2.SessionHeartbeat, context: Ctx
    ) -> client_pb2.KeepAliveResponse:
        leader = self._leader(req.shard)
        self.access.check(leader.namespace, WRITE)
        leader.sessions.keep_alive(req.session_id)
        return client_pb2.KeepAliveResponse()

    @_unary_of(client_pb2.CloseSessionRequest)
    async def close_session(
        self, req: client_pb2.CloseSessionRequest, context: Ctx
    ) -> client_pb2.CloseSessionResponse:
        leader = self._leader(req.shard)
        self.access.check(leader.namespace, WRITE)
        await leader.sessions.close_session(req.session_id)
        return client_pb2.CloseSessionResponse()

    # -- registration -----------------------------------------------------------------------------

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        ser = _serialize
        return {
            "GetShardAssignments": grpc.unary_stream_rpc_method_handler(
                self.get_shard_assignments,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "Write": grpc.unary_unary_rpc_method_handler(
                self.write, request_deserializer=None, response_serializer=ser
            ),
            "WriteStream": grpc.stream_stream_rpc_method_handler(
                self.write_stream, request_deserializer=None, response_serializer=ser
            ),
            "Read": grpc.unary_stream_rpc_method_handler(
                self.read, request_deserializer=None, response_serializer=ser
            ),
            "List": grpc.unary_stream_rpc_method_handler(
                self.list_keys,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "RangeScan": grpc.unary_stream_rpc_method_handler(
                self.range_scan,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "GetSequenceUpdates": grpc.unary_stream_rpc_method_handler(
                self.get_sequence_updates,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "GetNotifications": grpc.unary_stream_rpc_method_handler(
                self.get_notifications,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "CreateSession": grpc.unary_unary_rpc_method_handler(
                self.create_session,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "KeepAlive": grpc.unary_unary_rpc_method_handler(
                self.keep_alive,
                request_deserializer=None,
                response_serializer=ser,
            ),
            "CloseSession": grpc.unary_unary_rpc_method_handler(
                self.close_session,
                request_deserializer=None,
                response_serializer=ser,
            ),
        }

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = self.method_handlers()
        return [grpc.method_handlers_generic_handler(name, handlers) for name in SERVICE_NAMES]


def invalid_argument_response(req: client_pb2.WriteRequest) -> client_pb2.WriteResponse:
    """Every operation of ``req`` answered with status INVALID_ARGUMENT."""
    bad = client_pb2.INVALID_ARGUMENT
    return client_pb2.WriteResponse(
        puts=[client_pb2.PutResponse(status=bad) for _ in req.puts],
        deletes=[client_pb2.DeleteResponse(status=bad) for _ in req.deletes],
        delete_ranges=[client_pb2.DeleteRangeResponse(status=bad) for _ in req.delete_ranges],
    )


def _serialize(msg: Any) -> bytes:
    """A response message's bytes (a handler may hand over bytes it already has)."""
    if isinstance(msg, bytes):
        return msg
    out: bytes = msg.SerializeToString()
    return out
