"""asyncio integration of the native WAL: durability waits without a thread
per waiter.

The WAL's sync thread writes one byte to a pipe after every group-commit
round; :class:`DurabilityWatcher` registers that pipe with the event loop and,
once per round, resolves every waiter whose offset is now durable. So 64
coroutines waiting on the same fsync cost one wake-up of the loop, not 64.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
from collections.abc import Sequence

from pyxia._native import Wal, WalClosed, WalFailed
from pyxia.failpoints import afailpoint

__all__ = ["AsyncWal", "DurabilityWatcher"]


class DurabilityWatcher:
    """Resolves ``await wait_durable(offset)`` calls as sync rounds complete."""

    def __init__(self, wal: Wal, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._wal = wal
        self._loop = loop or asyncio.get_running_loop()
        self._fd = wal.notify_fd
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._closed = False
        self._loop.add_reader(self._fd, self._on_round)

    @property
    def pending(self) -> int:
        """Number of waiters not yet resolved."""
        return len(self._waiters)

    async def wait_durable(self, offset: int) -> None:
        """Returns once ``offset`` is durable; raises WalClosed / WalFailed."""
        if self._wal.last_synced_offset >= offset:
            return
        if self._closed or self._wal.closed:
            raise WalClosed("the WAL is closed")
        failure = self._wal.failure
        if failure is not None:
            raise WalFailed(failure)
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiters, (offset, next(self._seq), fut))
        self._wal.request_sync()
        await fut

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _on_round(self) -> None:
        self._drain_pipe()
        synced = self._wal.last_synced_offset
        waiters = self._waiters
        while waiters and waiters[0][0] <= synced:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)
        if not waiters:
            return
        error: Exception | None = None
        if self._wal.closed:
            error = WalClosed("the WAL is closed")
        else:
            failure = self._wal.failure
            if failure is not None:
                error = WalFailed(failure)
        if error is not None:
            self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, fut in waiters:
            if not fut.done():
                fut.set_exception(error)

    def close(self) -> None:
        """Stops watching; pending waiters get WalClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._fail_all(WalClosed("the durability watcher was closed"))


class AsyncWal:
    """A WAL plus its durability watcher, for use from one event loop."""

    def __init__(self, wal: Wal, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.wal = wal
        self.watcher = DurabilityWatcher(wal, loop)

    async def append_durable(
        self,
        entries: Sequence[tuple[int, int, bytes, int]],
        previous_crc: int | None = None,
    ) -> int:
        """Appends a batch and returns its last CRC once it is durable."""
        crc = self.wal.append_batch(entries, previous_crc)
        await afailpoint("wal.after_append_before_sync")
        if entries:
            await self.watcher.wait_durable(entries[-1][1])
        return crc

    async def close(self) -> None:
        """Closes the watcher, then the WAL (off the event loop thread)."""
        self.watcher.close()
        await asyncio.to_thread(self.wal.close)
