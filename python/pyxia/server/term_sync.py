"""Term records of many shards made durable together, off the event loop and off the GIL.

A shard's term (NewTerm's fence) lives in its RocksDB, written through RocksDB's WAL. Written
synced (``ShardDB.update_term``), rocksdict holds the GIL through the fdatasync, so a server
fencing 1,000 shards (a restart, a coordinator electing them) ran 1,000 fdatasyncs one after
another on the event loop with every other thread of the process stopped. :class:`TermSyncGroup`
splits it: the term is written unsynced on the loop (RocksDB hands it to the OS at once, a few
microseconds), and one round, in a worker thread, syncs the RocksDB WAL files of every shard
whose term was written since the last round began (``ShardDB.sync_term``, several at a time
with the GIL released: the file system commits overlapping syncs together), then wakes the
loop once and tells each caller.

Invariants:

- :meth:`TermSyncGroup.store` returns only after a round that began after the term was written
  finished without error for that shard: the caller (the replica's ``TermStored``) may fence or
  lead in the term only once it is durable. A sync that fails raises from ``store`` for that
  shard alone (its term may not be durable: the caller reports the store as failed, as a
  failed synced write did);
- at most one round is in flight per event loop; it starts at the end of the loop step in
  which the first term was written (the shards fenced in the same step share it), and terms
  written while it flushes go in the next one, started as soon as it is done;
- a shard whose term is written twice before a round syncs both in it (the later record is
  the one read back, as RocksDB orders the writes of one DB).
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor

from pyxia.storage.db import ShardDB, TermOptions

__all__ = ["TERM_SYNC_THREADS", "TermSyncGroup"]

TERM_SYNC_THREADS = 4
"""Shards' WAL syncs a round runs at a time (worker threads, the GIL released). The round itself
runs in the loop's default executor; these threads are the group's only ones."""

_GROUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TermSyncGroup] = (
    weakref.WeakKeyDictionary()
)


def _sync(db: ShardDB) -> BaseException | None:
    try:
        db.sync_term()
    except Exception as e:
        return e
    return None


class TermSyncGroup:
    """The term sync rounds shared by every shard of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int = TERM_SYNC_THREADS) -> None:
        self._loop = loop
        self._threads = threads
        self._pending: dict[int, tuple[ShardDB, list[asyncio.Future[None]]]] = {}
        self._in_flight = False  # a round is scheduled or flushing
        self._sync_threads: ThreadPoolExecutor | None = None
        self.rounds = 0  # rounds finished (for tests and benches)
        self.synced = 0  # shard syncs they carried

    @staticmethod
    def for_loop(loop: asyncio.AbstractEventLoop) -> TermSyncGroup:
        """The group of ``loop`` (made on first use; it goes with the loop)."""
        group = _GROUPS.get(loop)
        if group is None:
            group = _GROUPS[loop] = TermSyncGroup(loop)
        return group

    async def store(self, db: ShardDB, term: int, options: TermOptions) -> None:
        """Writes ``term`` into ``db`` and returns once it is durable (raises ``OSError`` if its
        sync failed, or what the write raised)."""
        db.write_term(term, options)
        fut: asyncio.Future[None] = self._loop.create_future()
        _, waiters = self._pending.setdefault(id(db), (db, []))
        waiters.append(fut)
        if not self._in_flight:
            self._in_flight = True
            self._loop.call_soon(self._start)
        await fut

    def _start(self) -> None:
        batch = list(self._pending.values())
        self._pending.clear()
        fut = self._loop.run_in_executor(None, self._sync_all, [db for db, _ in batch])
        fut.add_done_callback(lambda f: self._done(batch, f))

    def _sync_all(self, dbs: list[ShardDB]) -> list[BaseException | None]:
        """In a thread of the loop's default executor: each DB's sync, up to ``threads`` at
        a time."""
        if len(dbs) == 1:
            return [_sync(dbs[0])]
        if self._sync_threads is None:
            self._sync_threads = ThreadPoolExecutor(
                self._threads, thread_name_prefix="pyxia-term-sync"
            )
        return list(self._sync_threads.map(_sync, dbs))

    def _done(
        self,
        batch: list[tuple[ShardDB, list[asyncio.Future[None]]]],
        fut: asyncio.Future[list[BaseException | None]],
    ) -> None:
        self._in_flight = False
        self.rounds += 1
        self.synced += len(batch)
        try:
            outcomes: list[BaseException | None] = fut.result()
        except BaseException as e:  # the round itself failed: no term of it is known durable
            outcomes = [e] * len(batch)
        for (_, waiters), error in zip(batch, outcomes, strict=True):
            for w in waiters:
                if w.done():
                    continue  # its caller was cancelled
                if error is None:
                    w.set_result(None)
                else:
                    w.set_exception(error)
        if self._pending:
            self._in_flight = True
            self._start()
