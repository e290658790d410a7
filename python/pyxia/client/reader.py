"""Reads of one shard: gets batched into ``Read`` calls to the shard's leader (reads are
idempotent, so any failure is retried until the deadline)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pyxia.client.batcher import Batcher
from pyxia.client.errors import ClientClosed, RequestTimeout, Unavailable
from pyxia.client.ops import ReadOp, fail
from pyxia.client.policy import Retry, classify, leader_hint
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import PyxiaError
from pyxia.proto import client_pb2

if TYPE_CHECKING:
    from pyxia.client.context import ClientContext

log = logging.getLogger("pyxia.client")


class ShardReader:
    def __init__(self, core: ClientContext, shard: int) -> None:
        self.core = core
        self.shard = shard
        o = core.options
        self._window = o.max_inflight_batches
        self.batcher = Batcher(
            core.loop,
            self._emit,
            self._has_room,
            max_ops=o.max_requests_per_batch,
            max_bytes=1 << 62,
            linger=o.batch_linger_s,
            ordered=False,
            window=o.max_inflight_batches,
        )
        self.submit = self.batcher.add
        self._inflight: set[tuple[ReadOp, ...]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._attempt = 0
        self.closed = False

    def _has_room(self) -> bool:
        return len(self._inflight) < self._window

    def _emit(self, ops: list[ReadOp]) -> None:
        batch = tuple(ops)
        self._inflight.add(batch)
        t = self.core.loop.create_task(self._read(batch))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _read(self, batch: tuple[ReadOp, ...]) -> None:
        i = 0
        core = self.core
        try:
            leader = core.leader_of(self.shard)
            if leader is None:
                raise Unavailable(f"oxia: no leader known for shard {self.shard}")
            req = client_pb2.ReadRequest(shard=self.shard)
            add = req.gets.add
            for op in batch:
                add(**op.fields)
            async for resp in core.conns.stub(leader).read(req):
                for g in resp.gets:
                    batch[i].complete(g)
                    i += 1
            if i < len(batch):
                raise Unavailable("oxia: the read answered fewer gets than asked")
            self._attempt = 0
        except asyncio.CancelledError:
            for op in batch:
                fail(op.target, ClientClosed("oxia: the client is closed"))
            raise
        except BaseException as e:
            err = e if isinstance(e, PyxiaError) else error_from_rpc(e)
            self._failed(batch[i:], err)
        finally:
            outstanding = len(self.batcher.pending)
            for b in self._inflight:
                outstanding += len(b)
            self._inflight.discard(batch)
            self.batcher.room_freed(outstanding)

    def _failed(self, ops: tuple[ReadOp, ...], err: PyxiaError) -> None:
        hint = leader_hint(err)
        if hint:
            self.core.set_leader_hint(self.shard, hint)
        if classify(err) is Retry.NEVER or self.closed:
            for op in ops:
                fail(op.target, err)
            return
        now = time.monotonic()
        retry = []
        for op in ops:
            if op.target.done():
                continue
            if now >= op.deadline:
                exc = RequestTimeout(f"oxia: request timed out ({err})", shard=self.shard)
                exc.__cause__ = err
                op.target.set_exception(exc)
            else:
                retry.append(op)
        if not retry:
            return
        delay = 0.0 if hint and self._attempt == 0 else self.core.backoff.after(err, self._attempt)
        self._attempt += 1
        log.debug("shard %d: read failed (%s), retrying in %.3fs", self.shard, err, delay)

        def resubmit() -> None:
            for op in retry:
                if not op.target.done():
                    self.core.reroute_read(op)

        self.core.loop.call_later(delay, resubmit)

    def expire(self, now: float) -> None:
        for op in self.batcher.pending:
            if now >= op.deadline:
                fail(op.target, RequestTimeout("oxia: request timed out", shard=self.shard))
        for batch in self._inflight:
            for op in batch:
                if now >= op.deadline:
                    fail(op.target, RequestTimeout("oxia: request timed out", shard=self.shard))

    def busy(self) -> bool:
        return bool(self.batcher.pending or self._inflight)

    async def drain(self) -> None:
        self.batcher.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        self.closed = True
        for op in self.batcher.take():
            fail(op.target, ClientClosed("oxia: the client is closed"))
        for t in list(self._tasks):
            t.cancel()
