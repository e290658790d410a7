"""``pyxia.AsyncClient``: the asyncio face of the client core."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from pyxia.client.core import ClientCore, SecondaryIndexes
from pyxia.client.errors import ClientClosed
from pyxia.client.options import ClientOptions, addresses
from pyxia.client.results import (
    ComparisonType,
    GetResult,
    NotificationBatch,
    PutResult,
    SessionEvent,
)
from pyxia.client.streams import NotificationsFeed, SequenceUpdatesFeed


def make_options(
    service_address: str | Sequence[str], options: ClientOptions | None, kw: dict[str, Any]
) -> ClientOptions:
    if options is not None:
        if kw:
            raise TypeError("pass either options= or keyword options, not both")
        return options
    return ClientOptions(service_addresses=addresses(service_address), **kw)


class Notifications:
    """An async iterator of :class:`NotificationBatch` over every shard of the namespace,
    re-established across server restarts and leader changes without losing or repeating a
    batch. ``position`` (shard -> offset of the last batch delivered) resumes it later:
    ``client.get_notifications(start_after=n.position)``."""

    def __init__(self, feed: NotificationsFeed, on_close: Callable[[], None]) -> None:
        self._feed = feed
        self._on_close = on_close

    @property
    def position(self) -> dict[int, int]:
        return dict(self._feed.position)

    async def wait_connected(self) -> None:
        """Waits until every shard's stream has started: later changes will be delivered."""
        await self._feed.wait_connected()

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> NotificationBatch:
        try:
            return await self._feed.next()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def get(self, timeout: float | None = None) -> NotificationBatch | None:
        """The next batch, or None if none comes within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._feed.next(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        await self._feed.close()
        self._on_close()

    async def __aenter__(self) -> Notifications:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SequenceUpdates:
    """An async iterator of the highest key of a sequence, each time it changes."""

    def __init__(self, feed: SequenceUpdatesFeed, on_close: Callable[[], None]) -> None:
        self._feed = feed
        self._on_close = on_close

    def __aiter__(self) -> SequenceUpdates:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._feed.next()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def get(self, timeout: float | None = None) -> str | None:
        try:
            return await asyncio.wait_for(self._feed.next(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        await self._feed.close()
        self._on_close()

    async def __aenter__(self) -> SequenceUpdates:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient:
    """An Oxia client for asyncio.

    ``service_address`` is one address or several (a list, or comma-separated): any server of
    the cluster; the client follows the shard assignments from there. Use it as
    ``async with AsyncClient("localhost:6648") as client: ...`` or call ``await start()`` and
    ``await close()``. Every method must be called from the event loop it started on."""

    def __init__(
        self,
        service_address: str | Sequence[str] = "localhost:6648",
        *,
        options: ClientOptions | None = None,
        **kw: Any,
    ) -> None:
        self.options = make_options(service_address, options, kw)
        self._core: ClientCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def over(cls, core: ClientCore) -> AsyncClient:
        """An asyncio face over an existing (started) core, for code that runs on the core's
        loop (the recipes, under the sync client)."""
        c = cls.__new__(cls)
        c.options = core.options
        c._core = core
        c._loop = core.loop
        return c

    async def start(self) -> AsyncClient:
        if self._core is None:
            self._loop = asyncio.get_running_loop()
            self._core = ClientCore(self.options, self._loop)
        await self._core.start()
        return self

    async def _ready(self) -> ClientCore:
        core = self._core
        if core is None or core.shard_map is None:
            await self.start()
            core = self._core
            assert core is not None
        return core

    async def close(self) -> None:
        """Sends and waits for pending operations, closes sessions (their ephemeral records
        are deleted) and streams. Idempotent."""
        if self._core is not None:
            await self._core.close()

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- writes -----------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
        ephemeral: bool = False,
        sequence_key_deltas: Sequence[int] | None = None,
        secondary_indexes: SecondaryIndexes | None = None,
    ) -> PutResult:
        """Writes a record. ``expected_version_id`` makes it conditional
        (``EXPECTED_RECORD_DOES_NOT_EXIST`` = create only); ``ephemeral`` binds it to the
        client's session (it is deleted when the session ends); ``sequence_key_deltas`` (with
        a ``partition_key``) makes the server append a sequence suffix to ``key``: the result
        holds the key created. Raises UnexpectedVersion, SessionNotFound."""
        core = self._core
        if core is None or core.shard_map is None:
            core = await self._ready()
        fut: asyncio.Future[PutResult] = core.loop.create_future()
        if (
            expected_version_id is None
            and partition_key is None
            and not ephemeral
            and sequence_key_deltas is None
            and secondary_indexes is None
        ):
            core.submit_write(core.plain_put_op(key, value, fut))  # type: ignore[arg-type]
            return await fut
        op = core.put_op(
            key,
            value,
            fut,
            expected_version_id=expected_version_id,
            partition_key=partition_key,
            sequence_key_deltas=sequence_key_deltas,
            secondary_indexes=secondary_indexes,
        )
        if ephemeral:
            await core.put_ephemeral(op)
        else:
            core.submit_write(op)
        return await fut

    async def delete(
        self,
        key: str,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
    ) -> bool:
        """Deletes a record: True if it existed, False if not. Raises UnexpectedVersion."""
        core = await self._ready()
        fut: asyncio.Future[bool] = core.loop.create_future()
        core.submit_write(
            core.delete_op(
                key, fut, expected_version_id=expected_version_id, partition_key=partition_key
            )
        )
        return await fut

    async def delete_range(
        self, start_inclusive: str, end_exclusive: str, *, partition_key: str | None = None
    ) -> None:
        """Deletes the records in ``[start_inclusive, end_exclusive)`` (the namespace's key
        order), on every shard unless ``partition_key`` names one."""
        core = await self._ready()
        loop = core.loop
        futs: list[asyncio.Future[None]] = []

        def target() -> asyncio.Future[None]:
            f: asyncio.Future[None] = loop.create_future()
            futs.append(f)
            return f

        core.submit_writes(
            core.delete_range_ops(start_inclusive, end_exclusive, target, partition_key)
        )
        await asyncio.gather(*futs)

    # -- reads ------------------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        *,
        comparison: ComparisonType = ComparisonType.EQUAL,
        include_value: bool = True,
        partition_key: str | None = None,
        use_index: str | None = None,
    ) -> GetResult:
        """Reads a record: the one at ``key``, or (``comparison``) the highest key <= / < it or
        the lowest >= / > it; through a secondary index with ``use_index``. Raises
        KeyNotFound."""
        core = self._core
        if core is None or core.shard_map is None:
            core = await self._ready()
        fut: asyncio.Future[GetResult] = core.loop.create_future()
        ops = core.get_ops(
            key,
            fut,
            comparison=comparison,
            include_value=include_value,
            partition_key=partition_key,
            use_index=use_index,
        )
        if len(ops) == 1:
            core.submit_read(ops[0])
        else:
            core.submit_reads(ops)
        return await fut

    async def list(
        self,
        start_inclusive: str,
        end_exclusive: str,
        *,
        partition_key: str | None = None,
        use_index: str | None = None,
        include_internal_keys: bool = False,
    ) -> builtins.list[str]:
        """The keys in ``[start_inclusive, end_exclusive)``, across shards, in key order."""
        out: builtins.list[str] = []
        async for chunk in await self._scan(
            False, start_inclusive, end_exclusive, partition_key, use_index, include_internal_keys
        ):
            out.extend(chunk)
        return out

    async def range_scan(
        self,
        start_inclusive: str,
        end_exclusive: str,
        *,
        partition_key: str | None = None,
        use_index: str | None = None,
        include_internal_keys: bool = False,
    ) -> AsyncIterator[GetResult]:
        """The records in ``[start_inclusive, end_exclusive)``, streamed across shards in key
        order (through ``use_index``: in the index's order)."""
        chunks = await self._scan(
            True, start_inclusive, end_exclusive, partition_key, use_index, include_internal_keys
        )
        try:
            async for chunk in chunks:
                for r in chunk:
                    yield r
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _scan(
        self,
        records: bool,
        start: str,
        end: str,
        partition_key: str | None,
        use_index: str | None,
        include_internal_keys: bool,
    ) -> AsyncIterator[builtins.list[Any]]:
        core = await self._ready()
        return core.scan(
            records,
            start,
            end,
            partition_key=partition_key,
            use_index=use_index,
            include_internal_keys=include_internal_keys,
        )

    # -- streams of changes -----------------------------------------------------------------------

    async def get_notifications(
        self, *, start_after: Mapping[int, int] | None = None
    ) -> Notifications:
        """Follows the changes of the namespace (notifications must be enabled on it): from
        now on, or after the batches in ``start_after`` (shard -> offset, e.g. a previous
        feed's ``position``)."""
        core = await self._ready()
        feed = core.notifications(start_after)
        return Notifications(feed, lambda: core.forget_feed(feed))

    async def get_sequence_updates(self, prefix: str, *, partition_key: str) -> SequenceUpdates:
        core = await self._ready()
        feed = core.sequence_updates(prefix, partition_key)
        return SequenceUpdates(feed, lambda: core.forget_feed(feed))

    # -- sessions ---------------------------------------------------------------------------------

    def add_session_listener(self, fn: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """Calls ``fn`` on every change of state of the client's sessions (on the event loop);
        returns a function that removes it."""
        if self._core is None:
            raise ClientClosed("oxia: the client is not started")
        return self._core.sessions.add_listener(fn)

    async def session_id(self, shard: int) -> int:
        """The client's session on ``shard`` (opened if needed)."""
        core = await self._ready()
        return await core.sessions.session_id(shard)

    def shard_for(self, key: str, partition_key: str | None = None) -> int:
        if self._core is None or self._core.shard_map is None:
            raise ClientClosed("oxia: the client is not started")
        return self._core.shard_map.shard_for(key, partition_key)

    @property
    def core(self) -> ClientCore:
        if self._core is None:
            raise ClientClosed("oxia: the client is not started")
        return self._core
