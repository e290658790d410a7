"""Who runs a WAL sync round: the caller's event loop, or the sync thread.

The WAL's sync thread lets appends and fsyncs overlap, which is what load
needs (group commit). For a lone write it costs two thread wake-ups: the
loop wakes the sync thread, the sync thread wakes the loop through the
notify pipe, and on a busy machine each wake-up waits for a CPU. So when
the entry just appended is the only one not yet durable and no round has
finished in the last ``IDLE_S`` (nothing is streaming in behind it), the
round runs inline on the loop, one step later (so whatever arrived in the
same step joins it), with the GIL released during the flush. Under load
the previous round has only just finished, and the thread does the work.

An inline round blocks the event loop (every shard of the process) for the
length of the flush, so a round slower than ``SLOW_S`` (a stalling disk)
hands syncing back to the thread for ``BACKOFF_S``.

Only a leader with no followers uses it (measured on this machine: single
puts at RF=1 5-9 % faster in interleaved A/B runs; at RF=3 the leader's loop must stay
free to ship entries, and inline rounds on followers made no difference).

With a :class:`~pyxia.server.sync_group.SyncGroup` (every leader of a server shares one), a
write is "lone" only if the whole process is idle: no group round in flight or waiting and no
other shard's lone round scheduled. Otherwise such a leader's round goes to the group, which
flushes every shard that asked in one round (1,000 shards each with one write in flight made
1,000 inline rounds, one after another on the loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pyxia._native import Wal, WalError
from pyxia.server.sync_group import SyncGroup

IDLE_S = 0.0003
SLOW_S = 0.002
BACKOFF_S = 1.0


class SyncPolicy:
    __slots__ = (
        "_group",
        "_inline_ok",
        "_last_round",
        "_loop",
        "_off_until",
        "_on_round",
        "_scheduled",
        "_wal",
        "inline",
        "slow",
    )

    def __init__(
        self,
        wal: Wal,
        loop: asyncio.AbstractEventLoop,
        on_round: Callable[[], None],
        inline_ok: Callable[[], bool],
        group: SyncGroup | None = None,
    ) -> None:
        self._wal = wal
        self._group = group
        self._loop = loop
        self._on_round = on_round
        self._inline_ok = inline_ok
        self._last_round = 0.0
        self._scheduled = False
        self._off_until = 0.0
        self.inline = 0  # rounds run inline (a metric for tests and benches)
        self.slow = 0  # inline rounds slower than SLOW_S

    @property
    def wal(self) -> Wal:
        return self._wal

    def round_done(self) -> None:
        """Called by the owner whenever it learns a round finished."""
        self._last_round = time.monotonic()

    def after_append(self, offset: int) -> None:
        """Asks for the entries up to ``offset`` to be made durable."""
        wal = self._wal
        if self._scheduled:
            return  # the inline round already scheduled covers this entry
        now = time.monotonic()
        group = self._group
        if not self._inline_ok():
            wal.request_sync()
        elif (
            wal.last_synced_offset == offset - 1
            and now - self._last_round > IDLE_S
            and now >= self._off_until
            and (group is None or group.idle)
        ):
            self._scheduled = True
            if group is not None:
                group.inline_scheduled += 1
            self._loop.call_soon(self._run_inline)
        elif group is not None:
            group.request(self)
        else:
            wal.request_sync()

    def group_round_done(self) -> None:
        """A group round that carried this WAL finished (``SyncMember``)."""
        self._last_round = time.monotonic()
        wal = self._wal
        if not self._inline_ok():
            # The leadership ended meanwhile: the round handler is not ours to call; the sync
            # thread's round tells whoever owns the log now (through the notify pipe).
            if not wal.closed:
                wal.request_sync()
            return
        self._on_round()

    def _run_inline(self) -> None:
        self._scheduled = False
        if self._group is not None:
            self._group.inline_scheduled -= 1
        wal = self._wal
        if not self._inline_ok():
            # The owner closed (or the shard changed hands) in between: the
            # entry is the thread's, and the round handler is not ours to call.
            if wal.last_synced_offset < wal.last_offset and not wal.closed:
                wal.request_sync()
            return
        if wal.last_synced_offset >= wal.last_offset:
            return
        started = time.monotonic()
        try:
            wal.sync_inline()
        except WalError:
            if wal.failure is None:
                return  # closed under us
            # poisoned: the owner's round handler reads ``wal.failure``
        self.inline += 1
        self._last_round = now = time.monotonic()
        if now - started > SLOW_S:
            self.slow += 1
            self._off_until = now + BACKOFF_S
        self._on_round()
