"""Group commit across shards: one WAL sync round for every leader of the process.

Each shard has its own WAL (own files, own sync thread). With many shards and a few operations
per shard, every write was its own round: the shard's sync thread woke, flushed, wrote the
shard's notify pipe and the event loop woke for that shard alone (or, for a lone write, the
loop itself flushed inline, one shard after another). :class:`SyncGroup` gathers the leaders
whose appends wait for a sync and flushes them in one round: a worker thread calls the native
``sync_many``, which runs each WAL's round, several at a time with the GIL released (their
fsyncs overlap and the file system commits them together), and the loop is woken once for the
whole round, then tells each leader.

Invariants:

- at most one round is in flight per event loop; it starts at the end of the loop step in
  which the first leader asked (so the leaders that ask in the same step share it); leaders
  that ask while one flushes wait for the next, which starts as soon as it is done (so a
  round carries whatever was appended while the previous one flushed);
- a write is acknowledged only after a round that began after its append finished: the round
  is the WAL's own (``sync_inline_quiet``: the same flush, the same poisoning of a failed
  fsync, the same test hooks), and a member asks only after its append;
- a member whose leadership ended while its round flushed is not told (its handler is not its
  own any more); its WAL's sync thread is asked for a round instead, which writes the notify
  pipe for whoever owns the log now.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pyxia._native import Wal, sync_many

__all__ = ["SYNC_THREADS", "SyncGroup", "SyncMember"]

SYNC_THREADS = 8
"""WAL rounds a group round runs at a time (native threads, the GIL released)."""


class SyncMember(Protocol):
    """A leader's sync policy as the group sees it."""

    @property
    def wal(self) -> Wal: ...

    def group_round_done(self) -> None:
        """The round that included this member finished (its WAL's failure, if any, is set)."""


_GROUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SyncGroup] = (
    weakref.WeakKeyDictionary()
)


class SyncGroup:
    """The sync rounds shared by every leader of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int = SYNC_THREADS) -> None:
        self._loop = loop
        self._threads = threads
        self._pending: dict[int, SyncMember] = {}
        self._in_flight = False  # a round is scheduled or flushing
        self._executor: ThreadPoolExecutor | None = None
        self.inline_scheduled = 0  # lone-write rounds scheduled on the loop, not yet run
        self.rounds = 0  # group rounds finished (metrics for tests and benches)
        self.synced = 0  # member rounds they carried

    @staticmethod
    def for_loop(loop: asyncio.AbstractEventLoop) -> SyncGroup:
        """The group of ``loop`` (made on first use; it goes with the loop)."""
        group = _GROUPS.get(loop)
        if group is None:
            group = _GROUPS[loop] = SyncGroup(loop)
        return group

    @property
    def idle(self) -> bool:
        """No round in flight, none waiting and no lone-write round scheduled."""
        return not self._in_flight and not self._pending and not self.inline_scheduled

    def request(self, member: SyncMember) -> None:
        """Makes everything ``member``'s WAL holds now durable in the next round."""
        self._pending[id(member)] = member
        if not self._in_flight:
            self._in_flight = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        batch = list(self._pending.values())
        self._pending.clear()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="pyxia-sync-group")
        wals = [m.wal for m in batch]
        fut = self._loop.run_in_executor(self._executor, sync_many, wals, self._threads)
        fut.add_done_callback(lambda f: self._done(batch, f))

    def _done(self, batch: list[SyncMember], fut: asyncio.Future[list[str | None]]) -> None:
        self._in_flight = False
        self.rounds += 1
        self.synced += len(batch)
        try:
            fut.result()  # each WAL records its own failure; this raises only on a bug
        finally:
            for m in batch:
                m.group_round_done()
            if self._pending:
                self._in_flight = True
                self._start()
