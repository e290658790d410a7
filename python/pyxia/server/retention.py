"""Retention of every shard replica's WAL and notification batches: the rules (pure) and the
keeper that applies them on leaders and followers alike.

**WAL** (:func:`plan_wal_trim`; whole closed segments, oldest first, on every replica):

1. *time*: a segment whose newest entry is older than ``now - retention time`` may go (Oxia's
   rule; the timestamps are the leader's, recorded in the entries);
2. *size*: the oldest segments go while the WAL's segment files (the one being written
   included) take more than the retention size — a bound Oxia does not have;
3. *never past what this replica has applied and made durable*: a restart replays the WAL from
   the DB's commit offset, and the DB's own WAL is off, so the keeper flushes the DB before it
   deletes a segment, and never deletes one holding an entry above the commit offset it had
   applied before the flush (uncommitted entries are never trimmed: a WAL whose commit offset
   stalls can outgrow the size bound);
4. *on a leader, what a follower still needs stays, up to the size bound*: the time rule keeps
   every entry after a follower's acknowledged offset, so a follower that was away for a while
   catches up from the log; a follower further behind than the size bound keeps is not waited
   for: its entries go and its cursor sends it a snapshot (a follower whose next entry is below
   the WAL's first gets a snapshot, see ``follower_cursor.py``). The size bound is hard.

**Notifications** (``reads.trim_notifications_window``): the window is a function of the log,
not of a replica's clock: batches whose timestamp is not after the newest batch's timestamp
minus the retention are deleted. The timestamps are the leader's, identical on every replica,
and non-decreasing along the log (a new leader stamps no earlier than its log's head), so
trimming is path-independent: every replica that applied the same entries converges to the
same window however often it trims, and a follower that becomes leader serves the window its
predecessor served. (A wall-clock cutoff, as in Oxia, gives each replica its own window.)

**When**: every replica on a timer of a small fraction of the shorter retention
(:func:`check_interval_s`); one replica when it opens and whenever its WAL closes a segment (the
WAL's ``segment_closed_fd``): only a closed segment can be deleted, so the size bound is checked
exactly when it can act. A replica's event checks that replica only (a server opening 1,000
replicas does not check all of them 1,000 times), and the timer's check yields to the event
loop between replicas. A check that trims
nothing costs one ``segments()`` call and a seek or two in the DB. The DB flush and the
segment deletions (fsyncs) run in a worker thread (``ShardStorage.flush_and_trim``, serialized
with the replica's close and snapshot install), so the event loop keeps serving meanwhile; the
WAL can outgrow the size bound by what is written during that step (a segment or two).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyxia.common.signals import Signal
from pyxia.server.follower_controller import FollowerController
from pyxia.server.leader_controller import LEADER, LeaderController
from pyxia.storage import reads

if TYPE_CHECKING:
    from pyxia.server.shard_storage import ShardStorage
    from pyxia.server.shards_director import Controller, ShardsDirector
    from pyxia.storage.db import ShardDB

log = logging.getLogger("pyxia.retention")

_YIELD_EVERY = 16
"""A check over many replicas lets the event loop run after this many of them."""

DEFAULT_WAL_RETENTION_TIME_S = 3600.0
DEFAULT_WAL_RETENTION_SIZE = 1024 * 1024 * 1024
"""Per shard replica: 16 segments of the default 64 MiB."""
DEFAULT_NOTIFICATIONS_RETENTION_TIME_S = 3600.0

MIN_CHECK_INTERVAL_S = 0.1
MAX_CHECK_INTERVAL_S = 60.0
CHECK_FRACTION = 20
"""The timer runs every retention / CHECK_FRACTION (clamped): 1 h -> 60 s, 2 s -> 0.1 s."""


def check_interval_s(*retentions_s: float) -> float:
    """How often the retention is checked: 1/20 of the shortest retention, within
    [0.1 s, 60 s], so an entry outlives its retention by at most that much."""
    shortest = min(retentions_s)
    return min(MAX_CHECK_INTERVAL_S, max(MIN_CHECK_INTERVAL_S, shortest / CHECK_FRACTION))


def check_retention_size(size_bytes: int, segment_size: int) -> None:
    """The size bound must hold at least two segments (the one being written and one closed),
    otherwise every closed segment would go at once. Raises ValueError."""
    if size_bytes < 2 * segment_size:
        raise ValueError(
            f"the WAL retention size ({size_bytes} bytes) must be at least twice the WAL "
            f"segment size ({segment_size} bytes)"
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """One WAL segment as the rule sees it (``Wal.segments()``)."""

    base: int
    last_offset: int
    size_bytes: int
    last_timestamp: int
    closed: bool


@dataclass(frozen=True, slots=True)
class WalRetention:
    time_ms: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class TrimPlan:
    """``keep_from``: the first offset to keep (None: nothing to delete); ``snapshot``: the
    followers whose next entry will not be in the WAL any more (served by a snapshot)."""

    keep_from: int | None
    snapshot: frozenset[str]


def plan_wal_trim(
    segments: Sequence[Segment],
    retention: WalRetention,
    *,
    now_ms: int,
    durable_commit: int,
    followers: Mapping[str, int] | None = None,
) -> TrimPlan:
    """The trim rule (module docstring). ``segments`` oldest first, closed ones first;
    ``durable_commit``: the highest offset applied to this replica's DB and durable there;
    ``followers`` (on a leader): follower -> the next offset it needs (acked + 1)."""
    followers = followers or {}
    if not segments:
        return TrimPlan(None, frozenset())
    closed = 0
    while closed < len(segments) and segments[closed].closed:
        closed += 1

    def start(k: int) -> int:
        """The first offset left when the first ``k`` segments are deleted."""
        return segments[k].base if k < len(segments) else segments[-1].last_offset + 1

    # Size: the fewest oldest closed segments to delete to fit in the bound.
    total = sum(s.size_bytes for s in segments)
    by_size = 0
    while by_size < closed and total > retention.size_bytes:
        total -= segments[by_size].size_bytes
        by_size += 1
    # Time, except what a follower within the size window still needs.
    cutoff = now_ms - retention.time_ms
    needed = [n for n in followers.values() if n >= start(by_size)]
    floor = min(needed) if needed else None
    by_time = 0
    while (
        by_time < closed
        and segments[by_time].last_timestamp < cutoff
        and (floor is None or segments[by_time].last_offset < floor)
    ):
        by_time += 1
    k = max(by_time, by_size)
    # Never what this replica has not applied durably.
    applied = 0
    while applied < k and segments[applied].last_offset <= durable_commit:
        applied += 1
    first = start(applied)
    snapshot = frozenset(f for f, n in followers.items() if n < first)
    return TrimPlan(first if applied > 0 else None, snapshot)


@dataclass(frozen=True, slots=True)
class ReplicaTrim:
    """What one check did to one replica (for logs and tests)."""

    shard: int
    role: str
    first_offset: int
    wal_bytes: int
    segments_deleted: int
    notifications_deleted: int
    snapshot: frozenset[str]


class RetentionKeeper:
    """Applies the retention rules to every shard replica of one data server."""

    def __init__(
        self,
        director: ShardsDirector,
        wal: WalRetention,
        notifications_retention_ms: int,
        *,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.director = director
        self.wal = wal
        self.notifications_retention_ms = notifications_retention_ms
        self.interval_s = (
            interval_s
            if interval_s is not None
            else check_interval_s(wal.time_ms / 1000, notifications_retention_ms / 1000)
        )
        self._clock = clock
        self._wake = Signal()
        self._watched: dict[int, tuple[ShardStorage, int]] = {}
        # Replicas that opened or closed a segment since the last check (by id of storage).
        self._due: dict[int, ShardStorage] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.checks = 0
        # A replica opened: watch its WAL and check it now, not at the next tick.
        director.storage_listeners.append(self._opened)

    def _opened(self, storage: ShardStorage) -> None:
        self._due[id(storage)] = storage
        self._wake.notify()

    async def run(self) -> None:
        """Checks every replica every ``interval_s``, and one replica when it opens or closes
        a segment, until cancelled."""
        self._loop = loop = asyncio.get_running_loop()
        next_full = loop.time()
        try:
            while True:
                seen = self._wake.generation
                due, self._due = self._due, {}
                try:
                    if loop.time() >= next_full:
                        next_full = loop.time() + self.interval_s
                        self._watch_segment_closes()
                        await self.check_async()
                    elif due:
                        for st in due.values():
                            self._watch(id(st), st)
                        await self.check_async(only=set(due))
                except Exception:
                    log.exception("retention check failed")
                await self._wake.wait(seen, max(0.0, next_full - loop.time()))
        finally:
            self._unwatch_all()

    # -- triggers ---------------------------------------------------------------------------------

    def _watch_segment_closes(self) -> None:
        """Follows the segment-closed descriptor of every open replica's WAL (and forgets the
        replicas that are gone). The storage is held while watched, so its descriptor cannot
        be closed and reused under the event loop."""
        loop = self._loop
        if loop is None:
            return
        current = {id(st): st for st, _ in self.director.replicas()}
        for key in [k for k, (st, _) in self._watched.items() if current.get(k) is not st]:
            st, fd = self._watched.pop(key)
            loop.remove_reader(fd)
        for key, st in current.items():
            self._watch(key, st)

    def _watch(self, key: int, st: ShardStorage) -> None:
        loop = self._loop
        if loop is None or key in self._watched or st.closed:
            return
        fd = st.wal.segment_closed_fd
        loop.add_reader(fd, self._on_segment_closed, fd, st)
        self._watched[key] = (st, fd)

    def _on_segment_closed(self, fd: int, storage: ShardStorage) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._due[id(storage)] = storage
        self._wake.notify()

    def _unwatch_all(self) -> None:
        loop = self._loop
        for _, fd in self._watched.values():
            if loop is not None:
                loop.remove_reader(fd)
        self._watched.clear()

    # -- the check --------------------------------------------------------------------------------

    def check(self, now_ms: int | None = None) -> list[ReplicaTrim]:
        """Applies the rules to every replica now, in the calling thread; returns what was
        done (tests and tools; the keeper's loop uses :meth:`check_async`)."""
        out = []
        for step in self._plan_all(now_ms):
            try:
                first = -1
                if step.plan.keep_from is not None:
                    first = step.storage.flush_and_trim(step.plan.keep_from, step.applied, step.db)
                out.append(self._finish(step, first))
            except Exception:
                log.exception("retention of shard %s failed", step.storage.shard)
        return out

    async def check_async(
        self, now_ms: int | None = None, *, only: set[int] | None = None
    ) -> list[ReplicaTrim]:
        """:meth:`check` with the DB flush and the segment deletions (fsyncs) in a worker
        thread, so the event loop keeps serving meanwhile; ``only`` restricts it to the
        replicas with these storage ids. It yields to the loop every few replicas."""
        out = []
        for i, step in enumerate(self._plan_all(now_ms, only)):
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            try:
                first = -1
                if step.plan.keep_from is not None:
                    first = await asyncio.to_thread(
                        step.storage.flush_and_trim, step.plan.keep_from, step.applied, step.db
                    )
                if self._may_touch(step.storage, step.controller):
                    out.append(self._finish(step, first))
            except Exception:
                log.exception("retention of shard %s failed", step.storage.shard)
        return out

    @staticmethod
    def _may_touch(storage: ShardStorage, controller: Controller | None) -> bool:
        # A NewTerm, Truncate or snapshot install may be running in a thread, replacing the
        # DB: the next check will do this replica. A failed WAL is left alone (its replica is
        # out of service until it is reopened).
        return (
            not storage.closed
            and storage.wal.failure is None
            and not (isinstance(controller, FollowerController) and controller.busy)
        )

    def _plan_all(self, now_ms: int | None, only: set[int] | None = None) -> list[_Step]:
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        self.checks += 1
        steps = []
        for storage, controller in self.director.replicas():
            if only is not None and id(storage) not in only:
                continue
            if not self._may_touch(storage, controller):
                continue
            try:
                steps.append(self._plan(storage, controller, now))
            except Exception:
                log.exception("retention of shard %s/%s failed", storage.namespace, storage.shard)
        return steps

    def _plan(self, storage: ShardStorage, controller: Controller | None, now_ms: int) -> _Step:
        followers: dict[str, int] = {}
        role = "follower"
        if isinstance(controller, LeaderController):
            role = "leader" if controller.status == LEADER else "fenced"
            if controller.status == LEADER:
                followers = {name: c.ack_offset + 1 for name, c in controller.cursors.items()}
        segments = [Segment(*s) for s in storage.wal.segments()]
        applied = storage.commit_offset
        plan = plan_wal_trim(
            segments, self.wal, now_ms=now_ms, durable_commit=applied, followers=followers
        )
        return _Step(storage, controller, role, storage.db, applied, tuple(segments), plan)

    def _finish(self, step: _Step, first: int) -> ReplicaTrim:
        """After the WAL step: metrics, logs, then the notification batches (on the loop)."""
        storage = step.storage
        segments = storage.wal.segments()
        deleted = sum(1 for s in step.segments if s.last_offset < first) if first >= 0 else 0
        if deleted:
            storage.metrics.wal_trimmed_segments.inc(deleted)
            log.debug(
                "shard %s (%s): WAL trimmed to %d, %d segment(s) deleted",
                storage.shard,
                step.role,
                first,
                deleted,
            )
        for name in sorted(step.plan.snapshot):
            log.debug(
                "shard %s: follower %s is behind the retained WAL: a snapshot serves it",
                storage.shard,
                name,
            )
        wal_bytes = sum(s[2] for s in segments)
        storage.metrics.wal_size_bytes.set(wal_bytes)
        notified = 0
        if storage.db is step.db:
            notified = reads.trim_notifications_window(storage.db, self.notifications_retention_ms)
        return ReplicaTrim(
            storage.shard,
            step.role,
            storage.wal.first_offset,
            wal_bytes,
            deleted,
            notified,
            step.plan.snapshot,
        )


@dataclass(frozen=True, slots=True)
class _Step:
    """One replica's plan, between the planning (on the loop) and the trim (in a thread)."""

    storage: ShardStorage
    controller: Controller | None
    role: str
    db: ShardDB
    applied: int
    segments: tuple[Segment, ...]
    plan: TrimPlan
