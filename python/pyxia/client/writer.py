"""Writes of one shard: batches over one ``WriteStream`` to the shard's leader.

Each batch is one WriteRequest (one log entry on the server); responses come back in request
order, so a FIFO of in-flight batches maps them. Per-key order holds because a shard's batches
leave in submission order on one stream, and after a failure the unanswered batches go back to
the head of the queue, ahead of newer ones, before the stream is reopened.

When the assignments name a new leader, the stream to the old one is left, not broken: no new
batch goes on it, and its unanswered batches get ``LEAVE_GRACE_S`` to be answered (a leader
that handed over on purpose answers each one: done, or refused with NODE_IS_NOT_LEADER and
resent as never taken) before it is broken as after a lost connection (an isolated old leader).
Newer batches wait for it, so per-key order still holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from pyxia.client.batcher import Batcher
from pyxia.client.errors import (
    ClientClosed,
    RequestIndeterminate,
    RequestTimeout,
    Unavailable,
)
from pyxia.client.ops import WriteOp, build_write_request, complete_writes, fail
from pyxia.client.policy import Retry, classify, leader_hint
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import NamespaceNotFound, PermissionDenied, PyxiaError, Unauthenticated

if TYPE_CHECKING:
    from pyxia.client.connections import Stub
    from pyxia.client.context import ClientContext

log = logging.getLogger("pyxia.client")

MAX_STREAM_INFLIGHT = 512
"""Batches on one stream before new ones wait (the server takes up to 1,024)."""

LEAVE_GRACE_S = 1.0
"""How long the stream to a former leader keeps waiting for its answers."""

HEADERS_WAIT_S = 0.05
"""How long a new stream waits for the server's headers before its first write."""


def raw_sender(call: Any) -> Callable[[Any], Awaitable[None]] | None:
    """Sends on a started stream without grpc-python's status override, if this grpc has it.

    grpc-python's ``write`` replaces the status the server sent with INTERNAL "Internal error
    from Core" when the write fails because that status just ended the call (grpc/grpc#36066;
    the fix, grpc/grpc#43486, is not released). The status is what tells the client whether
    its unanswered writes were taken (a refusal, NODE_IS_NOT_LEADER: they were not, resend
    them) or may have been (WRITE_INDETERMINATE); INTERNAL leaves only the honest "may have
    been". Sending through the call's Cython layer directly fails the same way but leaves the
    status alone. Used after the first write (which ``write`` makes wait for the call's
    headers to be sent); None if this grpc lacks the layer (then ``write`` it is)."""
    send = getattr(getattr(call, "_cython_call", None), "send_serialized_message", None)
    if send is None:
        return None

    def sender(req: Any) -> Awaitable[None]:
        return cast("Awaitable[None]", send(req.SerializeToString()))

    return sender


class _InFlight:
    __slots__ = ("ops", "sent")

    def __init__(self, ops: list[WriteOp]) -> None:
        self.ops = ops
        self.sent = False


class _WriteStream:
    """One WriteStream call: a writer task feeding requests, a reader task mapping answers."""

    def __init__(self, owner: ShardWriter, stub: Stub, namespace: str, shard: int) -> None:
        self.owner = owner
        self.address = stub.address
        self.token_generation = owner.core.conns.token_generation()
        self.call: Any = stub.write_stream(
            metadata=(("namespace", namespace), ("shard-id", str(shard)))
        )
        self.inflight: deque[_InFlight] = deque()
        self._queue: deque[tuple[Any, _InFlight]] = deque()
        self._wake = asyncio.Event()
        self.broken = False
        # The assignments moved the leadership away: nothing new is sent on this stream.
        self.leaving = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(), name=f"pyxia-ws-write-{shard}")
        self._reader = loop.create_task(self._read_loop(), name=f"pyxia-ws-read-{shard}")

    def send(self, ops: list[WriteOp]) -> None:
        entry = _InFlight(ops)
        self.inflight.append(entry)
        self._queue.append((build_write_request(ops), entry))
        self._wake.set()

    async def _write_loop(self) -> None:
        q = self._queue
        call = self.call
        try:
            # A pyxia server sends its headers at once, or refuses the stream with a status
            # alone: waiting for either before the first write keeps that status from racing a
            # write (see raw_sender). A server that sends its headers with its first answer
            # (Oxia) costs HEADERS_WAIT_S, once per stream.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.initial_metadata(), HEADERS_WAIT_S)
            write: Callable[[Any], Awaitable[None]] = call.write
            raw = raw_sender(call) or write
            while True:
                while not q:
                    self._wake.clear()
                    await self._wake.wait()
                req, entry = q.popleft()
                if call.done():  # it ended (refused, never connected): this one was not sent
                    raise asyncio.InvalidStateError("the write stream ended")
                entry.sent = True
                try:
                    await write(req)
                except asyncio.InvalidStateError:
                    entry.sent = False  # refused before sending: the call had just ended
                    raise
                write = raw
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: the task is being garbage-collected; it must not await.
            raise
        except BaseException as e:
            self._break(await self._ended_with(e))

    async def _ended_with(self, write_error: BaseException) -> BaseException:
        """Why the call ended, after a write failed on it: a write racing the server's final
        status fails with a local error ("RPC already finished") that would hide what the
        server said about the unanswered writes (NODE_IS_NOT_LEADER: not taken). The status,
        if the call ends within a second, else ``write_error``."""
        call = self.call
        try:
            code = await asyncio.wait_for(call.code(), 1.0)
            if code == grpc.StatusCode.OK:
                return write_error
            return grpc.aio.AioRpcError(
                code,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                await call.details(),
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            return write_error

    async def _read_loop(self) -> None:
        read = self.call.read
        eof = grpc.aio.EOF
        on_response = self.owner.on_response
        try:
            while True:
                resp = await read()
                if resp is eof:
                    raise Unavailable("oxia: the write stream was closed by the server")
                entry = self.inflight.popleft()
                on_response(self, entry.ops, resp)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._break(e)

    def _break(self, e: BaseException) -> None:
        if self.broken:
            return
        self.broken = True
        current = asyncio.current_task()
        for t in (self._writer, self._reader):
            if t is not current:
                t.cancel()
        self.call.cancel()
        err = e if isinstance(e, PyxiaError) else error_from_rpc(e)
        self.owner.on_broken(self, err, list(self.inflight))

    def close(self) -> None:
        """Ends the stream (nothing may be in flight)."""
        if self.broken:
            return
        self.broken = True
        self._writer.cancel()
        self._reader.cancel()
        self.call.cancel()


class ShardWriter:
    def __init__(self, core: ClientContext, shard: int) -> None:
        self.core = core
        self.shard = shard
        o = core.options
        self._window = o.max_inflight_batches
        self.batcher = Batcher(
            core.loop,
            self._enqueue,
            self._has_room,
            max_ops=o.max_requests_per_batch,
            max_bytes=o.max_batch_bytes,
            linger=o.batch_linger_s,
            ordered=True,
            window=o.max_inflight_batches,
        )
        self.submit = self.batcher.add
        self._ready: deque[list[WriteOp]] = deque()
        self._stream: _WriteStream | None = None
        self._attempt = 0
        self._retry: asyncio.TimerHandle | None = None
        self._leave_timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self.closed = False

    # -- flow -------------------------------------------------------------------------------------

    def _has_room(self) -> bool:
        s = self._stream
        return (len(s.inflight) if s is not None else 0) + len(self._ready) < self._window

    def _enqueue(self, ops: list[WriteOp]) -> None:
        self._idle.clear()
        self._ready.append(ops)
        self._pump()

    def _pump(self) -> None:
        if self._retry is not None:
            return
        ready = self._ready
        conns = self.core.conns
        while ready:
            s = self._stream
            if s is not None and s.leaving:
                return  # the batches on the former leader's stream are answered first
            if (
                s is not None
                and conns.tokens is not None
                and not s.inflight
                and s.token_generation != conns.token_generation()
            ):
                # A new token: the stream opened with the old one is left while idle (the
                # server would end it once the old token expires).
                s.close()
                self._stream = s = None
            if s is None:
                s = self._open()
                if s is None:
                    return
            if len(s.inflight) >= MAX_STREAM_INFLIGHT:
                return
            ops = ready.popleft()
            live = [op for op in ops if not op.target.done()]
            if live:
                s.send(live)
        self._check_idle()

    def _open(self) -> _WriteStream | None:
        core = self.core
        if not core.shard_exists(self.shard):
            self._reroute_all()
            return None
        leader = core.leader_of(self.shard)
        if leader is None:
            self._schedule_retry(Unavailable(f"oxia: no leader known for shard {self.shard}"))
            return None
        self._stream = _WriteStream(self, core.conns.stub(leader), core.namespace, self.shard)
        return self._stream

    # -- answers ----------------------------------------------------------------------------------

    def on_response(self, stream: _WriteStream, ops: list[WriteOp], resp: Any) -> None:
        self._attempt = 0
        try:
            complete_writes(ops, resp)
        except IndexError:  # a malformed answer: fail what is left
            for op in ops:
                fail(op.target, Unavailable("oxia: malformed write response"))
        if stream.leaving and not stream.inflight:
            self._left(stream)
        outstanding = len(ops) + len(self.batcher.pending)
        for entry in stream.inflight:
            outstanding += len(entry.ops)
        for batch in self._ready:
            outstanding += len(batch)
        self.batcher.room_freed(outstanding)
        if self._ready:
            self._pump()
        else:
            self._check_idle()

    def on_broken(self, stream: _WriteStream, err: PyxiaError, unanswered: list[_InFlight]) -> None:
        if stream is self._stream:
            self._stream = None
            self._cancel_leave()
        kind = classify(err)
        if isinstance(err, Unauthenticated) and (
            stream.token_generation != self.core.conns.token_generation()
        ):
            # The server refused the stream's (old) token and applied nothing it did not
            # answer: send again with the new one.
            kind = Retry.ALWAYS
        # A refusal of the stream itself (who the client is, what it may do, a namespace that
        # is gone) holds for every batch on it, sent or not: none was applied, and sending
        # them again would only be refused again until the deadline.
        refused_stream = kind is Retry.NEVER and isinstance(
            err, (Unauthenticated, PermissionDenied, NamespaceNotFound)
        )
        hint = leader_hint(err)
        if hint:
            self.core.set_leader_hint(self.shard, hint)
        now = time.monotonic()
        requeue: list[list[WriteOp]] = []
        for i, entry in enumerate(unanswered):
            keep: list[WriteOp] = []
            for op in entry.ops:
                if op.target.done():
                    continue
                if refused_stream:
                    op.target.set_exception(err)
                    continue
                if not entry.sent or kind is Retry.ALWAYS:
                    retry = True
                elif kind is Retry.NEVER and i == 0:
                    op.target.set_exception(err)
                    continue
                else:
                    retry = op.safe
                if not retry:
                    exc = RequestIndeterminate(
                        f"oxia: the connection to {stream.address} broke before the answer "
                        f"({err}); the write may or may not have been applied",
                        shard=self.shard,
                    )
                    exc.__cause__ = err
                    op.target.set_exception(exc)
                elif now >= op.deadline:
                    exc2 = RequestTimeout(f"oxia: request timed out ({err})", shard=self.shard)
                    exc2.__cause__ = err
                    op.target.set_exception(exc2)
                else:
                    keep.append(op)
            if keep:
                requeue.append(keep)
        self._ready.extendleft(reversed(requeue))
        if self.closed and not self.core.draining:
            self._fail_all(ClientClosed("oxia: the client is closed"))
            return
        if self._ready or self.batcher.pending:
            self._schedule_retry(err, immediate=bool(hint) and self._attempt == 0)
        else:
            self._check_idle()

    def leader_changed(self) -> None:
        """The assignments name another leader than the stream's server: leave that stream.
        Its unanswered batches get ``LEAVE_GRACE_S`` to be answered (a leader that handed
        over answers them all), then the stream is broken and they are handled as after a lost
        connection (an isolated old leader would hold them until the connection broke); newer
        batches go to the new leader after them."""
        s = self._stream
        leader = self.core.leader_of(self.shard)
        if s is None or s.broken or s.leaving or leader is None or s.address == leader:
            return
        s.leaving = True
        if not s.inflight:
            self._left(s)
            return
        self._leave_timer = self.core.loop.call_later(LEAVE_GRACE_S, self._leave_expired, s)

    def _leave_expired(self, s: _WriteStream) -> None:
        self._leave_timer = None
        if not s.broken:
            s._break(
                Unavailable(
                    f"oxia: the leader of shard {self.shard} moved away from {s.address}, "
                    f"which did not answer within {LEAVE_GRACE_S:g}s"
                )
            )

    def _left(self, s: _WriteStream) -> None:
        """Every batch on the former leader's stream is answered: close it, go on."""
        if s is self._stream:
            self._stream = None
        self._cancel_leave()
        s.close()
        self._pump()

    def _cancel_leave(self) -> None:
        if self._leave_timer is not None:
            self._leave_timer.cancel()
            self._leave_timer = None

    def _schedule_retry(self, err: BaseException, immediate: bool = False) -> None:
        if self._retry is not None:
            return
        delay = 0.0 if immediate else self.core.backoff.after(err, self._attempt)
        self._attempt += 1
        log.debug("shard %d: write stream failed (%s), retrying in %.3fs", self.shard, err, delay)
        self._retry = self.core.loop.call_later(delay, self._on_retry)

    def _on_retry(self) -> None:
        self._retry = None
        if not self.core.shard_exists(self.shard):
            self._reroute_all()
            return
        self._pump()

    def _reroute_all(self) -> None:
        """The shard is gone from the map (split): route its operations again."""
        ops = [op for batch in self._ready for op in batch] + self.batcher.take()
        self._ready.clear()
        for op in ops:
            if not op.target.done():
                self.core.reroute_write(op)
        self._check_idle()

    # -- deadlines and closing --------------------------------------------------------------------

    def expire(self, now: float) -> None:
        def check(ops: list[WriteOp]) -> None:
            for op in ops:
                if now >= op.deadline and not op.target.done():
                    op.target.set_exception(
                        RequestTimeout("oxia: request timed out", shard=self.shard)
                    )

        check(self.batcher.pending)
        for batch in self._ready:
            check(batch)
        s = self._stream
        if s is not None:
            for entry in s.inflight:
                check(entry.ops)
        self._check_idle()

    def busy(self) -> bool:
        if self.batcher.pending or any(
            not op.target.done() for batch in self._ready for op in batch
        ):
            return True
        s = self._stream
        return s is not None and any(
            not op.target.done() for entry in s.inflight for op in entry.ops
        )

    def _check_idle(self) -> None:
        """Updates ``_idle`` for ``drain``, the only one waiting on it (``busy`` walks every
        pending operation: not worth doing on every answer when nobody waits)."""
        if not self._draining:
            return
        if not self.busy():
            self._idle.set()
        else:
            self._idle.clear()

    async def drain(self) -> None:
        """Sends what is pending and waits until every operation is answered (or expired)."""
        self._draining = True
        self.batcher.flush()
        self._check_idle()
        await self._idle.wait()

    def _fail_all(self, exc: BaseException) -> None:
        for op in self.batcher.take():
            fail(op.target, exc)
        for batch in self._ready:
            for op in batch:
                fail(op.target, exc)
        self._ready.clear()
        s = self._stream
        if s is not None:
            for entry in s.inflight:
                for op in entry.ops:
                    fail(op.target, exc)
        self._idle.set()

    def close(self) -> None:
        self.closed = True
        self._cancel_leave()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._fail_all(ClientClosed("oxia: the client is closed"))
        s, self._stream = self._stream, None
        if s is not None:
            s.close()
