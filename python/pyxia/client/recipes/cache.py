"""A read-through cache of a key range, kept current by the notification feed (Oxia
``oxia/cache.go`` is the model).

``start()`` opens the feed first, then loads the range, so no change falls between the two;
each notification then refreshes or drops its key. The feed resumes by itself after a server
restart or a leader change without losing a batch, so the cache never goes stale silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pyxia.client.async_client import AsyncClient, Notifications
from pyxia.client.errors import KeyNotFound
from pyxia.client.results import GetResult, NotificationBatch, NotificationType

if TYPE_CHECKING:
    from pyxia.client.sync_client import Client

log = logging.getLogger("pyxia.recipes")


class Cache:
    def __init__(self, client: AsyncClient, start_inclusive: str, end_exclusive: str) -> None:
        self.client = client
        self.start_key = start_inclusive
        self.end_key = end_exclusive
        self.records: dict[str, GetResult] = {}
        self.applied = 0
        """Notification batches applied (tests and metrics)."""
        self._feed: Notifications | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    def _order(self) -> Any:
        m = self.client.core.shard_map
        assert m is not None
        return m.order

    def _covers(self, key: str) -> bool:
        o = self._order()
        k = o.sort_key(key)
        return bool(
            o.sort_key(self.start_key) <= k and (not self.end_key or k < o.sort_key(self.end_key))
        )

    async def start(self) -> Cache:
        self._feed = await self.client.get_notifications()
        await self._feed.wait_connected()
        async for r in self.client.range_scan(self.start_key, self.end_key):
            self._store(r)
        self._task = asyncio.get_running_loop().create_task(self._follow())
        return self

    def _store(self, r: GetResult) -> None:
        old = self.records.get(r.key)
        if old is None or old.version.version_id <= r.version.version_id:
            self.records[r.key] = r

    async def _follow(self) -> None:
        assert self._feed is not None
        try:
            async for batch in self._feed:
                await self._apply(batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("cache %s..%s stopped following: %s", self.start_key, self.end_key, e)

    async def _apply(self, batch: NotificationBatch) -> None:
        for n in batch:
            if n.type is NotificationType.KEY_RANGE_DELETED:
                o = self._order()
                lo = o.sort_key(n.key)
                hi = o.sort_key(n.key_range_end) if n.key_range_end else None
                for k in list(self.records):
                    sk = o.sort_key(k)
                    if lo <= sk and (hi is None or sk < hi):
                        del self.records[k]
                continue
            if not self._covers(n.key):
                continue
            if n.type is NotificationType.KEY_DELETED:
                self.records.pop(n.key, None)
                continue
            cached = self.records.get(n.key)
            if (
                cached is not None
                and n.version_id is not None
                and cached.version.version_id >= n.version_id
            ):
                continue
            try:
                self._store(await self.client.get(n.key))
            except KeyNotFound:
                self.records.pop(n.key, None)
        self.applied += 1
        async with self._changed:
            self._changed.notify_all()

    def get(self, key: str) -> GetResult | None:
        """The cached record (None if the key has no record)."""
        return self.records.get(key)

    def keys(self) -> list[str]:
        o = self._order()
        return sorted(self.records, key=o.sort_key)

    async def wait_for(self, predicate: Any, timeout: float | None = None) -> bool:
        """Waits until ``predicate(cache)`` holds (True) or ``timeout`` passes (False)."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._feed is not None:
            await self._feed.close()

    async def __aenter__(self) -> Cache:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncCache:
    """:class:`Cache` for the sync ``Client``."""

    def __init__(self, client: Client, start_inclusive: str, end_exclusive: str) -> None:
        self._client = client

        async def make() -> Cache:
            return await Cache(
                AsyncClient.over(client.core), start_inclusive, end_exclusive
            ).start()

        self.cache = client._call(make())

    def get(self, key: str) -> GetResult | None:
        return self.cache.get(key)

    def keys(self) -> list[str]:
        async def keys() -> list[str]:
            return self.cache.keys()

        return self._client._call(keys())

    def wait_for(self, predicate: Any, timeout: float | None = None) -> bool:
        return self._client._call(self.cache.wait_for(predicate, timeout))

    def close(self) -> None:
        self._client._call(self.cache.close())

    def __enter__(self) -> SyncCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
