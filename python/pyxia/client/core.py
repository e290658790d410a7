"""The client core: one per client, living on one asyncio event loop. ``AsyncClient`` calls it
on its own loop; ``Client`` (sync) runs it on a background loop thread. Operations are built
(validated, routed) by ``*_op`` in the caller's thread and submitted on the loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from time import monotonic
from typing import Any

from xxhash import xxh3_64_intdigest

from pyxia.client.assignments import AssignmentsWatcher
from pyxia.client.connections import Connections
from pyxia.client.errors import (
    ClientClosed,
    InvalidOptions,
    KeyNotFound,
    Unavailable,
)
from pyxia.client.ops import (
    DeleteOp,
    DeleteRangeOp,
    EphemeralPutOp,
    PutOp,
    ReadOp,
    Target,
    WriteOp,
    fail,
)
from pyxia.client.options import ClientOptions
from pyxia.client.policy import Backoff, approx_put_bytes
from pyxia.client.reader import ShardReader
from pyxia.client.results import ComparisonType, GetResult, Version
from pyxia.client.sessions import SessionManager
from pyxia.client.shard_map import KeyOrder, ShardMap
from pyxia.client.streams import (
    NotificationsFeed,
    SequenceUpdatesFeed,
    merge_sorted,
    shard_scan,
)
from pyxia.client.writer import ShardWriter
from pyxia.common.keys import INTERNAL_KEY_PREFIX, MAX_SEQUENCE_VALUE
from pyxia.proto import client_pb2

log = logging.getLogger("pyxia.client")

SecondaryIndexes = Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]]


def _check_key(key: str, what: str = "key") -> None:
    if not isinstance(key, str) or not key:
        raise InvalidOptions(f"oxia: the {what} must be a non-empty string")
    if key.startswith(INTERNAL_KEY_PREFIX):
        raise InvalidOptions(f"oxia: {what} {key!r} is in the internal key space")


def _value(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidOptions(f"oxia: a value must be bytes or str, not {type(value).__name__}")


def _indexes(indexes: SecondaryIndexes) -> list[dict[str, str]]:
    pairs: list[tuple[str, str]] = []
    if isinstance(indexes, Mapping):
        for name, sk in indexes.items():
            if isinstance(sk, str):
                pairs.append((name, sk))
            else:
                pairs.extend((name, s) for s in sk)
    else:
        pairs = [(n, s) for n, s in indexes]
    out = []
    for name, sk in pairs:
        if not name or "/" in name:
            raise InvalidOptions(f"oxia: invalid secondary index name {name!r} (no '/' allowed)")
        out.append({"index_name": name, "secondary_key": sk})
    return out


class _SubTarget:
    """One shard's part of a fan-out get."""

    __slots__ = ("_done", "_fan")

    def __init__(self, fan: GetFanIn) -> None:
        self._fan = fan
        self._done = False

    def done(self) -> bool:
        return self._done or self._fan.target.done()

    def set_result(self, result: Any, /) -> None:
        if not self.done():
            self._done = True
            self._fan.answer(result)

    def set_exception(self, exc: BaseException, /) -> None:
        if not self.done():
            self._done = True
            self._fan.answer(None if isinstance(exc, KeyNotFound) else exc)


class GetFanIn:
    """Gets the same key from every shard and keeps the answer the comparison calls for, in the
    namespace's key order (Oxia ``doMultiShardGet``/``selectResponse``)."""

    def __init__(
        self,
        n: int,
        key: str,
        comparison: int,
        order: KeyOrder,
        index: str | None,
        target: Target,
    ) -> None:
        self.left = n
        self.key = key
        self.comparison = comparison
        self.order = order
        self.index = index
        self.target = target
        self.best: GetResult | None = None
        self.best_key: Any = None

    def _sort_key(self, r: GetResult) -> Any:
        if self.index is not None:
            return self.order.index_sort_key(self.index, r.secondary_index_key or "", r.key)
        return self.order.sort_key(r.key)

    def answer(self, r: GetResult | BaseException | None) -> None:
        if self.target.done():
            return
        if isinstance(r, BaseException):
            self.target.set_exception(r)
            return
        if r is not None:
            k = self._sort_key(r)
            if self.best is None:
                take = True
            elif self.comparison in (ComparisonType.FLOOR, ComparisonType.LOWER):
                take = k > self.best_key
            else:  # EQUAL (through an index), CEILING, HIGHER: the lowest
                take = k < self.best_key
            if take:
                self.best, self.best_key = r, k
        self.left -= 1
        if self.left == 0:
            if self.best is None:
                self.target.set_exception(KeyNotFound(f"oxia: key not found: {self.key!r}"))
            else:
                self.target.set_result(self.best)


def _record(r: client_pb2.GetResponse) -> GetResult:
    return GetResult(
        r.key,
        r.value,
        Version.from_proto(r.version),
        r.secondary_index_key if r.HasField("secondary_index_key") else None,
    )


class ClientCore:
    def __init__(self, options: ClientOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.options = options
        self.loop = loop
        self.namespace = options.namespace
        self.conns = Connections(
            options.max_message_bytes, options.client_tls(), options.token_source()
        )
        self.backoff = Backoff(options.retry_initial_backoff_s, options.retry_max_backoff_s)
        self.shard_map: ShardMap | None = None
        self._hints: dict[int, str] = {}
        self._writers: dict[int, ShardWriter] = {}
        self._readers: dict[int, ShardReader] = {}
        self._map_listeners: list[Callable[[ShardMap], None]] = []
        # The hash range of every shard any map named (split parents too, after they left it):
        # a notifications feed resumed after a split finds a gone shard's children with it.
        self.shard_ranges_seen: dict[int, tuple[int, int]] = {}
        self.sessions = SessionManager(self)
        self._watcher = AssignmentsWatcher(self, self._on_map)
        self._feeds: set[NotificationsFeed | SequenceUpdatesFeed] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        self.closed = False
        self.draining = False
        self._timeout = options.request_timeout_s

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            await asyncio.shield(self._watcher.ready)
            return
        self._started = True
        self._watcher.start()
        try:
            await asyncio.wait_for(
                asyncio.shield(self._watcher.ready), self.options.request_timeout_s
            )
        except TimeoutError:
            raise Unavailable(
                "oxia: no shard assignments from "
                f"{', '.join(self.options.service_addresses)}: {self._watcher.last_error}"
            ) from None
        self._sweeper = self.loop.create_task(self._sweep(), name="pyxia-deadlines")

    async def _sweep(self) -> None:
        interval = min(1.0, self.options.request_timeout_s / 10)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for w in list(self._writers.values()):
                w.expire(now)
            for r in list(self._readers.values()):
                r.expire(now)

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stops taking operations, waits for the pending ones (up to ``drain_timeout``, the
        request timeout by default), closes sessions (their ephemeral records go) and
        streams. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.draining = True
        timeout = self.options.request_timeout_s if drain_timeout is None else drain_timeout
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(w.drain() for w in self._writers.values()),
                    *(r.drain() for r in self._readers.values()),
                ),
                timeout,
            )
        except TimeoutError:
            log.warning("closing with operations still pending after %.1fs", timeout)
        self.draining = False
        for feed in list(self._feeds):
            await feed.close()
        await self.sessions.close()
        for w in self._writers.values():
            w.close()
        for r in self._readers.values():
            r.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._watcher.close()
        await self.conns.close()

    # -- routing ----------------------------------------------------------------------------------

    def _on_map(self, m: ShardMap) -> None:
        self.shard_map = m
        for shard, r in m.router.ranges().items():
            self.shard_ranges_seen[shard] = (r.min_inclusive, r.max_inclusive)
        self._hints.clear()
        for w in list(self._writers.values()):
            w.leader_changed()
        for fn in list(self._map_listeners):
            try:
                fn(m)
            except Exception:
                log.exception("shard map listener failed")

    def add_map_listener(self, fn: Callable[[ShardMap], None]) -> Callable[[], None]:
        self._map_listeners.append(fn)

        def remove() -> None:
            if fn in self._map_listeners:
                self._map_listeners.remove(fn)

        return remove

    def shard_exists(self, shard: int) -> bool:
        m = self.shard_map
        return m is not None and shard in m.leaders

    def leader_of(self, shard: int) -> str | None:
        h = self._hints.get(shard)
        if h:
            return h
        m = self.shard_map
        return m.leader(shard) if m is not None else None

    def set_leader_hint(self, shard: int, address: str) -> None:
        self._hints[shard] = address

    def _map(self) -> ShardMap:
        m = self.shard_map
        if m is None:
            raise Unavailable("oxia: the client has no shard assignments yet")
        return m

    # -- submission (event-loop thread) -----------------------------------------------------------

    def submit_write(self, op: WriteOp) -> None:
        w = self._writers.get(op.shard)
        if w is None:
            if self.closed and not self.draining:
                fail(op.target, ClientClosed("oxia: the client is closed"))
                return
            if not self.shard_exists(op.shard):
                self.reroute_write(op)
                return
            w = self._writers[op.shard] = ShardWriter(self, op.shard)
        w.submit(op)

    def submit_writes(self, ops: list[WriteOp]) -> None:
        for op in ops:
            self.submit_write(op)

    def reroute_write(self, op: WriteOp) -> None:
        m = self.shard_map
        if m is None or (op.kind == DeleteRangeOp.kind and op.partition_key is None):
            fail(op.target, Unavailable("oxia: the shards changed during the request; retry"))
            return
        op.shard = m.shard_for(op.key, op.partition_key)
        if not self.shard_exists(op.shard):
            fail(op.target, Unavailable(f"oxia: no shard for key {op.key!r}"))
            return
        self.submit_write(op)

    def submit_read(self, op: ReadOp) -> None:
        r = self._readers.get(op.shard)
        if r is None:
            if self.closed and not self.draining:
                fail(op.target, ClientClosed("oxia: the client is closed"))
                return
            if not self.shard_exists(op.shard):
                self.reroute_read(op)
                return
            r = self._readers[op.shard] = ShardReader(self, op.shard)
        r.submit(op)

    def submit_reads(self, ops: list[ReadOp]) -> None:
        for op in ops:
            self.submit_read(op)

    def reroute_read(self, op: ReadOp) -> None:
        m = self.shard_map
        if m is None or isinstance(op.target, _SubTarget):
            if not self.shard_exists(op.shard):
                fail(op.target, Unavailable("oxia: the shards changed during the request; retry"))
                return
            self.submit_read(op)
            return
        op.shard = m.shard_for(op.key, op.partition_key)
        if not self.shard_exists(op.shard):
            fail(op.target, Unavailable(f"oxia: no shard for key {op.key!r}"))
            return
        self.submit_read(op)

    # -- operations (built in any thread) ---------------------------------------------------------

    def deadline(self) -> float:
        return time.monotonic() + self.options.request_timeout_s

    def plain_put_op(self, key: str, value: bytes, target: Target) -> PutOp:
        """``put_op`` for the common case (no options): the hot path."""
        m = self.shard_map
        if (
            type(key) is not str
            or type(value) is not bytes
            or not key
            or key.startswith(INTERNAL_KEY_PREFIX)
            or m is None
            or self.closed
        ):
            return self.put_op(key, value, target)
        return PutOp(
            key,
            None,
            {"key": key, "value": value},
            len(key) + len(value) + 16,
            True,
            m.router.shard_for_hash(xxh3_64_intdigest(key.encode()) & 0xFFFFFFFF),
            monotonic() + self._timeout,
            target,
        )

    def put_op(
        self,
        key: str,
        value: bytes | bytearray | memoryview | str,
        target: Target,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
        sequence_key_deltas: Sequence[int] | None = None,
        secondary_indexes: SecondaryIndexes | None = None,
    ) -> PutOp:
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        _check_key(key)
        v = _value(value)
        fields: dict[str, Any] = {"key": key, "value": v}
        safe = True
        if expected_version_id is not None:
            if not isinstance(expected_version_id, int) or expected_version_id < -1:
                raise InvalidOptions(f"oxia: invalid expected version id {expected_version_id}")
            fields["expected_version_id"] = expected_version_id
            safe = False
        if partition_key is not None:
            fields["partition_key"] = partition_key
        if sequence_key_deltas is not None:
            deltas = list(sequence_key_deltas)
            if partition_key is None:
                raise InvalidOptions("oxia: sequential keys need a partition key")
            if expected_version_id is not None:
                raise InvalidOptions("oxia: sequential keys cannot have an expected version")
            if not deltas or deltas[0] <= 0:
                raise InvalidOptions("oxia: the first sequence delta must be > 0")
            if any(not 0 <= d <= MAX_SEQUENCE_VALUE for d in deltas):
                raise InvalidOptions("oxia: sequence deltas must be uint64")
            fields["sequence_key_delta"] = deltas
            safe = False
        if secondary_indexes:
            fields["secondary_indexes"] = _indexes(secondary_indexes)
        shard = self._map().shard_for(key, partition_key)
        return PutOp(
            key,
            partition_key,
            fields,
            approx_put_bytes(key, v),
            safe,
            shard,
            time.monotonic() + self.options.request_timeout_s,
            target,
        )

    async def put_ephemeral(self, op: PutOp) -> None:
        """Binds a put to the client's session on its shard, then submits it."""
        sid = await self.sessions.session_id(op.shard)
        eop = EphemeralPutOp(
            op.key, op.partition_key, op.fields, op.size, op.safe, op.shard, op.deadline, op.target
        )
        eop.fields["session_id"] = sid
        eop.fields["client_identity"] = self.options.identity
        eop.session_id = sid
        eop.on_session_missing = self.sessions.on_missing
        self.submit_write(eop)

    def delete_op(
        self,
        key: str,
        target: Target,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
    ) -> DeleteOp:
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        _check_key(key)
        fields: dict[str, Any] = {"key": key}
        if expected_version_id is not None:
            if not isinstance(expected_version_id, int) or expected_version_id < -1:
                raise InvalidOptions(f"oxia: invalid expected version id {expected_version_id}")
            fields["expected_version_id"] = expected_version_id
        if partition_key is not None:
            fields["partition_key"] = partition_key
        shard = self._map().shard_for(key, partition_key)
        return DeleteOp(
            key,
            partition_key,
            fields,
            len(key) + 16,
            expected_version_id is None,
            shard,
            self.deadline(),
            target,
        )

    def delete_range_ops(
        self,
        start: str,
        end: str,
        targets: Callable[[], Target],
        partition_key: str | None = None,
    ) -> list[WriteOp]:
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        m = self._map()
        shards = [m.shard_for("", partition_key)] if partition_key is not None else m.shards
        fields = {"start_inclusive": start, "end_exclusive": end}
        dl = self.deadline()
        return [
            DeleteRangeOp(
                start, partition_key, fields, len(start) + len(end) + 16, True, s, dl, targets()
            )
            for s in shards
        ]

    def plain_get_op(self, key: str, target: Target) -> ReadOp:
        """``get_ops`` for the common case (a get of one key, with its value): the hot path."""
        m = self.shard_map
        if type(key) is not str or m is None or self.closed:
            return self.get_ops(key, target)[0]
        return ReadOp(
            key,
            None,
            {"key": key, "include_value": True},
            m.router.shard_for_hash(xxh3_64_intdigest(key.encode()) & 0xFFFFFFFF),
            monotonic() + self._timeout,
            target,
        )

    def get_ops(
        self,
        key: str,
        target: Target,
        *,
        comparison: ComparisonType | int = ComparisonType.EQUAL,
        include_value: bool = True,
        partition_key: str | None = None,
        use_index: str | None = None,
    ) -> list[ReadOp]:
        """One op (a single-shard get), or one per shard (a comparison or index get without a
        partition key), all answering into ``target``."""
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        if not isinstance(key, str):
            raise InvalidOptions("oxia: the key must be a string")
        ct = int(comparison)
        if ct not in (0, 1, 2, 3, 4):
            raise InvalidOptions(f"oxia: unknown comparison type {comparison}")
        fields: dict[str, Any] = {"key": key, "include_value": include_value}
        if ct:
            fields["comparison_type"] = ct
        if use_index is not None:
            fields["secondary_index_name"] = use_index
        m = self._map()
        dl = self.deadline()
        if partition_key is not None or (ct == 0 and use_index is None):
            shard = m.shard_for(key, partition_key)
            return [ReadOp(key, partition_key, fields, shard, dl, target)]
        shards = m.shards
        fan = GetFanIn(len(shards), key, ct, m.order, use_index, target)
        return [ReadOp(key, None, fields, s, dl, _SubTarget(fan)) for s in shards]

    # -- scans ------------------------------------------------------------------------------------

    def scan(
        self,
        records: bool,
        start: str,
        end: str,
        *,
        partition_key: str | None = None,
        use_index: str | None = None,
        include_internal_keys: bool = False,
    ) -> AsyncIterator[list[Any]]:
        """Chunks of keys (``records`` False) or GetResults, merged across shards in the
        namespace's key order."""
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        m = self._map()
        order = m.order
        shards = [m.shard_for("", partition_key)] if partition_key is not None else m.shards
        # Through an index, the order is the index's: a List across shards cannot be merged
        # without the secondary keys, so it scans the records and keeps their keys.
        use_scan = records or (use_index is not None and len(shards) > 1)
        sources = [
            shard_scan(self, s, use_scan, start, end, use_index, include_internal_keys)
            for s in shards
        ]
        key: Callable[[Any], Any]
        if not use_scan:
            key = order.sort_key
        elif use_index is not None:
            idx = use_index

            def key(r: Any) -> Any:
                return order.index_sort_key(idx, r.secondary_index_key, r.key)
        else:

            def key(r: Any) -> Any:
                return order.sort_key(r.key)

        merged = merge_sorted(sources, key)
        return self._convert(merged, records, use_scan)

    @staticmethod
    async def _convert(
        merged: AsyncIterator[list[Any]], records: bool, scanned: bool
    ) -> AsyncIterator[list[Any]]:
        try:
            async for chunk in merged:
                if records:
                    yield [_record(r) for r in chunk]
                elif scanned:
                    yield [r.key for r in chunk]
                else:
                    yield chunk
        finally:
            aclose = getattr(merged, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- feeds ------------------------------------------------------------------------------------

    def notifications(self, start_after: Mapping[int, int] | None = None) -> NotificationsFeed:
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        feed = NotificationsFeed(self, start_after)
        self._feeds.add(feed)
        return feed

    def sequence_updates(self, prefix: str, partition_key: str) -> SequenceUpdatesFeed:
        if self.closed:
            raise ClientClosed("oxia: the client is closed")
        _check_key(prefix, "prefix")
        if partition_key is None:
            raise InvalidOptions("oxia: sequence updates need a partition key")
        feed = SequenceUpdatesFeed(self, prefix, partition_key)
        self._feeds.add(feed)
        return feed

    def forget_feed(self, feed: NotificationsFeed | SequenceUpdatesFeed) -> None:
        self._feeds.discard(feed)
