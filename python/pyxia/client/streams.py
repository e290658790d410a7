"""Streams: List/RangeScan across shards (merged in key order), notifications, sequence
updates. Each shard's stream is re-established after a failure (server restart, leader change)
from where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pyxia.client.errors import ClientClosed, RequestTimeout
from pyxia.client.policy import Retry, classify, leader_hint
from pyxia.client.results import NotificationBatch
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import PyxiaError
from pyxia.proto import client_pb2

if TYPE_CHECKING:
    from pyxia.client.context import ClientContext
    from pyxia.client.shard_map import ShardMap

log = logging.getLogger("pyxia.client")

T = TypeVar("T")


def _err(e: BaseException) -> PyxiaError:
    return e if isinstance(e, PyxiaError) else error_from_rpc(e)


async def _retry_wait(core: ClientContext, shard: int, err: PyxiaError, attempt: int) -> None:
    hint = leader_hint(err)
    if hint:
        core.set_leader_hint(shard, hint)
    await asyncio.sleep(0 if hint and attempt == 0 else core.backoff.after(err, attempt))


# -- List / RangeScan -----------------------------------------------------------------------------


async def shard_scan(
    core: ClientContext,
    shard: int,
    range_scan: bool,
    start: str,
    end: str,
    index: str | None,
    include_internal: bool,
) -> AsyncIterator[list[Any]]:
    """The chunks (keys, or GetResponse records) of one shard, in the shard's key order. A
    broken stream is reopened after the last key received (not possible through an index, where
    one secondary key holds many records: then the error is raised)."""
    last: str | None = None
    attempt = 0
    deadline = time.monotonic() + core.options.request_timeout_s
    while True:
        lower = start if last is None else last + "\x00"
        msg: Any = (client_pb2.RangeScanRequest if range_scan else client_pb2.ListRequest)(
            shard=shard,
            start_inclusive=lower,
            end_exclusive=end,
            include_internal_keys=include_internal,
        )
        if index is not None:
            msg.secondary_index_name = index
        try:
            leader = core.leader_of(shard)
            if leader is None:
                raise RequestTimeout(f"oxia: no leader known for shard {shard}")
            stub = core.conns.stub(leader)
            call = (stub.range_scan if range_scan else stub.list)(msg)
            async for resp in call:
                chunk: list[Any] = list(resp.records if range_scan else resp.keys)
                if not chunk:
                    continue
                attempt = 0
                deadline = time.monotonic() + core.options.request_timeout_s
                last = chunk[-1].key if range_scan else chunk[-1]
                yield chunk
            return
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            err = _err(e)
            if (
                classify(err) is Retry.NEVER
                or (last is not None and index is not None)
                or time.monotonic() >= deadline
                or core.closed
            ):
                raise err from None
            await _retry_wait(core, shard, err, attempt)
            attempt += 1


class _Prefetch(Generic[T]):
    """Reads a source in a background task, a few chunks ahead."""

    _END: Any = object()

    def __init__(self, source: AsyncIterator[T], depth: int = 4) -> None:
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue(depth)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for item in self._source:
                await self._queue.put(item)
            await self._queue.put(self._END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await self._queue.put(e)

    async def next(self) -> T | None:
        item = await self._queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        out: T = item
        return out

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def merge_sorted(
    sources: list[AsyncIterator[list[T]]], key: Callable[[T], Any]
) -> AsyncIterator[list[T]]:
    """Heap-merges sources that each yield chunks in ``key`` order into chunks in ``key`` order,
    streaming: a chunk goes out as soon as the next item's place cannot change."""
    if len(sources) == 1:
        async for chunk in sources[0]:
            yield chunk
        return
    feeds = [_Prefetch(s) for s in sources]
    try:
        bufs: list[list[T]] = [[] for _ in feeds]
        heap: list[tuple[Any, int, int]] = []

        async def refill(i: int) -> None:
            while True:
                chunk = await feeds[i].next()
                if chunk is None:
                    return
                if chunk:
                    bufs[i] = chunk
                    heapq.heappush(heap, (key(chunk[0]), i, 0))
                    return

        await asyncio.gather(*(refill(i) for i in range(len(feeds))))
        out: list[T] = []
        while heap:
            _, i, j = heapq.heappop(heap)
            buf = bufs[i]
            out.append(buf[j])
            j += 1
            if j < len(buf):
                heapq.heappush(heap, (key(buf[j]), i, j))
            else:
                yield out
                out = []
                await refill(i)
        if out:
            yield out
    finally:
        for f in feeds:
            await f.close()


# -- notifications --------------------------------------------------------------------------------


class NotificationsFeed:
    """The change notifications of every shard of the namespace, as batches.

    Each shard is followed from the offset of the last batch received: after a broken stream
    (server restart, leader change) it resumes with ``start_offset_exclusive`` = that offset,
    so no batch is lost or repeated. When a shard is split, its children (new shards whose
    hash range lies within the followed parent's, which left the map) are followed from the
    parent's offset: a child's log continues its parent's, so the child delivers the parent's
    batches it had not delivered yet, for the child's keys, then its own. ``position`` holds the
    offset of the last batch *delivered* per shard: pass it as ``start_after`` to a later feed
    to pick up exactly there."""

    def __init__(
        self, core: ClientContext, start_after: Mapping[int, int] | None, max_buffered: int = 1000
    ) -> None:
        self.core = core
        self._offsets: dict[int, int] = dict(start_after or {})
        self.position: dict[int, int] = dict(start_after or {})
        self._queue: asyncio.Queue[NotificationBatch | BaseException] = asyncio.Queue(max_buffered)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._connected: dict[int, asyncio.Event] = {}
        # The hash range of every shard the client saw (a split parent's too, once it left).
        self._ranges = core.shard_ranges_seen
        self.closed = False
        self._remove_listener = core.add_map_listener(self._on_map)
        if core.shard_map is not None:
            self._on_map(core.shard_map)

    def _on_map(self, m: ShardMap) -> None:
        if self.closed:
            return
        ranges = {s: (r.min_inclusive, r.max_inclusive) for s, r in m.router.ranges().items()}
        for shard, task in list(self._tasks.items()):
            if shard not in ranges:
                task.cancel()  # the shard is gone (split: its children take over below)
                del self._tasks[shard]
                gone = self._connected.pop(shard, None)
                if gone is not None:
                    gone.set()  # nothing to wait for on it any more
        for shard in m.shards:
            if shard not in self._tasks:
                lo, hi = ranges[shard]
                if shard not in self._offsets:
                    # The latest position on its lineage: offsets grow from parent to child.
                    inherited = [
                        self._offsets[old]
                        for old, (plo, phi) in self._ranges.items()
                        if old not in ranges and old in self._offsets and plo <= lo <= hi <= phi
                    ]
                    if inherited:
                        self._offsets[shard] = max(inherited)
                self._connected[shard] = asyncio.Event()
                self._tasks[shard] = self.core.loop.create_task(
                    self._follow(shard), name=f"pyxia-notifications-{shard}"
                )

    async def wait_connected(self) -> None:
        """Waits until every shard's stream has started (its position is known): a change made
        after this is delivered."""
        await asyncio.gather(*(e.wait() for e in list(self._connected.values())))

    async def _follow(self, shard: int) -> None:
        core = self.core
        attempt = 0
        while not self.closed:
            req = client_pb2.NotificationsRequest(shard=shard)
            if shard in self._offsets:
                req.start_offset_exclusive = self._offsets[shard]
            try:
                leader = core.leader_of(shard)
                if leader is None:
                    raise RequestTimeout(f"oxia: no leader known for shard {shard}")
                async for b in core.conns.stub(leader).get_notifications(req):
                    attempt = 0
                    last = self._offsets.get(shard)
                    if last is None:
                        # No position yet: the server's first batch tells where "now" is.
                        self._offsets[shard] = b.offset
                        self.position.setdefault(shard, b.offset)
                        self._connected[shard].set()
                        if not b.notifications:
                            continue
                    elif b.offset <= last:
                        continue
                    self._connected[shard].set()
                    self._offsets[shard] = b.offset
                    await self._queue.put(NotificationBatch.from_proto(b))
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                err = _err(e)
                if classify(err) is Retry.NEVER and not isinstance(err, RequestTimeout):
                    await self._queue.put(err)
                    return
                log.debug("notifications of shard %d: %s; reconnecting", shard, err)
                await _retry_wait(core, shard, err, attempt)
                attempt += 1

    async def next(self) -> NotificationBatch:
        if self.closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.position[item.shard] = item.offset
        return item

    def next_nowait(self) -> NotificationBatch | None:
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if isinstance(item, BaseException):
            raise item
        self.position[item.shard] = item.offset
        return item

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._remove_listener()
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(ClientClosed("oxia: the notifications feed is closed"))


# -- sequence updates -----------------------------------------------------------------------------


class SequenceUpdatesFeed:
    """The highest key of a sequence (``prefix`` within ``partition_key``'s shard), each time it
    changes; re-established after failures (a value already delivered is not repeated)."""

    def __init__(self, core: ClientContext, prefix: str, partition_key: str) -> None:
        self.core = core
        self.prefix = prefix
        self.partition_key = partition_key
        self.last: str | None = None
        self._queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self.closed = False
        self._task = core.loop.create_task(self._run(), name="pyxia-sequence-updates")

    async def _run(self) -> None:
        core = self.core
        attempt = 0
        sent: str | None = None
        while not self.closed:
            m = core.shard_map
            shard = m.shard_for(self.prefix, self.partition_key) if m is not None else -1
            try:
                leader = core.leader_of(shard)
                if leader is None:
                    raise RequestTimeout(f"oxia: no leader known for shard {shard}")
                req = client_pb2.GetSequenceUpdatesRequest(shard=shard, key=self.prefix)
                async for r in core.conns.stub(leader).get_sequence_updates(req):
                    attempt = 0
                    if r.highest_sequence_key != sent:
                        sent = r.highest_sequence_key
                        await self._queue.put(sent)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                err = _err(e)
                if classify(err) is Retry.NEVER and not isinstance(err, RequestTimeout):
                    await self._queue.put(err)
                    return
                await _retry_wait(core, shard, err, attempt)
                attempt += 1

    async def next(self) -> str:
        if self.closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.last = item
        return item

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._queue.put_nowait(ClientClosed("oxia: the sequence updates feed is closed"))
