"""The serving side of one node's oracle: who may grant, the window, the lease, and the
other calls of tsoracle's protocol (dense sequences, stamping leases, the safe point and the
safe frontier).

Serving state (published by the fence, :mod:`pyxia.tso.fence`, the only code that publishes
"serving"): ``serving`` (a :class:`Leading` target whose fence completed), ``fencing`` (leader,
fence in progress: not serving), ``failed`` (stopped after a permanent error), or none of them
(not the leader). Stepping down always clears the allocator (and the term's sequence and lease
tables) before anything else.

Hot path: :meth:`Oracle.try_grant` is synchronous — one allocator call plus two comparisons.
When the window is exhausted or the lease is about to lapse, one high-water write is proposed
(single-flight: one task, awaited by every caller that needs it, holding the ``gate`` so a
fence can drain it). Requests keep being served from the current window meanwhile.

**The time lease** (replication factor above one). A leader's window survives a pause of its
process (SIGSTOP, a GC or VM stall): resumed, it would still hand out timestamps under its old
high-water while a new leader, elected meanwhile, hands out larger ones, so a client could
receive a smaller timestamp after another client received a larger one. So a leader grants
only while its lease holds: a lease runs ``lease_s`` from the *proposal* time of its last
high-water write that committed. That write was acknowledged by a quorum which, at that
moment, was not yet fenced by any newer term; a new leader is only made leader after a quorum
was fenced, so it starts ``lease_s`` (plus a guard) after observing its own leadership: by
then every older lease has lapsed — unless the last leader released it (a planned step-down,
:meth:`Oracle.release_for_handoff`: it stops granting, then logs the release marker; see
``driver.py`` and ``fence.py``). Serving leaders renew in the background (every
``lease_s / 2`` while there are requests; an idle leader's first request waits for one write).
With one replica nobody else can be elected, and there is no lease.

**Sequences** (:mod:`~pyxia.tso.sequences`): a GetSeq/GetSeqBatch is one write of the new
counters through the leader's log, answered once it committed. Its safety needs no time lease:
a deposed leader's write can never commit. Outcome unknown after logging → ``SeqUncertain``.

**Stamping leases** (:mod:`~pyxia.tso.leases`): acquire and renew write the lease record and
a high-water of at least its bound (``now + ttl``) in one write; every lease write holds the
``gate`` until its outcome is known (a write is never abandoned while this node leads: the
table must match the log), even if the call's answer gave up waiting (UNAVAILABLE; acquire,
renew and release may be retried).

**A leader still fencing holds calls** (up to ``fence_hold_s``) until it serves, instead of
answering not-leader: its fence lasts a replicated write after a planned handoff, the time
lease after a failure, and a caller sent to it is at the right node. (tsoracle's client,
redirected to a leader naming itself, gives up on the call; held, it gets its answer.)

**Reads** (GetCurrentMaxSafe, GetSafeFrontier) are answered only by a serving leader whose
lease holds (they renew it if needed); anyone else answers 0 with a zero epoch, as tsoracle's
followers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pyxia.common.signals import Signal
from pyxia.errors import PyxiaError
from pyxia.storage.apply import ApplyResult
from pyxia.tso import metrics as m
from pyxia.tso.allocator import AdvanceOutOfRange, Allocator, Extension, Grant, WindowExhausted
from pyxia.tso.allocator import NotLeader as AllocatorNotLeader
from pyxia.tso.driver import HighWaterDriver, Leading
from pyxia.tso.errors import SeqUncertain, TsoFailed, TsoNotLeader, TsoUnavailable
from pyxia.tso.failures import Disposition, classify
from pyxia.tso.leases import (
    LAST_LEASE_ID_KEY,
    LEASE_PREFIX,
    LEASE_SCAN_END,
    LeaseRecord,
    LeaseTable,
    Mutation,
    check_acquire,
    decode_record,
    encode_record,
    max_safe,
    record_key,
    safe_frontier,
)
from pyxia.tso.native import NativeAllocator
from pyxia.tso.options import TsoOptions
from pyxia.tso.sequences import (
    SEQ_KEY_COUNT_KEY,
    SeqEntry,
    SequenceTable,
    check_entries,
    counter_key,
    decode_counter,
    encode_counter,
)

log = logging.getLogger("pyxia.tso")
T = TypeVar("T")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


Hint = tuple[str | None, int | None]


class Oracle:
    """One node's serving state, window and lease (see the module docstring)."""

    def __init__(
        self,
        driver: HighWaterDriver,
        options: TsoOptions | None = None,
        *,
        self_endpoint: Callable[[], str | None] = lambda: None,
        leader_hint: Callable[[], Hint] = lambda: (None, None),
        still_leading: Callable[[Leading], bool] = lambda _target: True,
        clock_ms: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        allocator: Allocator | None = None,
    ) -> None:
        self.options = options or TsoOptions()
        self.driver = driver
        self.allocator = allocator or Allocator(self.options.window_ahead_ms)
        self._native = allocator if isinstance(allocator, NativeAllocator) else None
        """The allocator the native TSO port grants from (:mod:`~pyxia.tso.native`): it needs
        the fast-path deadline (the lease less its renewal margin) whenever the lease moves.
        It compares that deadline with the real monotonic clock: with a native allocator,
        ``monotonic`` must be :func:`time.monotonic`."""
        self._fast_held = False
        """The fast path was closed because this node was seen not leading: it stays closed
        until this node is seen leading again (or serves a new term)."""
        self.gate = asyncio.Lock()
        """Held across every high-water and lease write of the serving leader; the fence takes
        it to drain the writes of an older term before it reads the high-water."""
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self._self_endpoint = self_endpoint
        self._leader_hint = leader_hint
        self._still_leading = still_leading
        self._serving: Leading | None = None
        self._fencing: Leading | None = None
        self._failed: PyxiaError | None = None
        self._lease_until: float | None = None
        self._renew_margin = self.options.lease_s / 2
        self._lease_ms = max(1, round(self.options.lease_s * 1000))
        self._ext_task: asyncio.Task[PyxiaError | None] | None = None
        self._sequences: SequenceTable | None = None
        self._leases: LeaseTable | None = None
        self._lease_tasks: set[asyncio.Task[Any]] = set()
        self.extensions = 0
        self.releases = 0
        self.changed = Signal()
        """Notified on every change of the serving state (calls held during a fence)."""

    # -- state (driven by the fence) --------------------------------------------------------------

    @property
    def serving(self) -> Leading | None:
        return self._serving

    @property
    def fencing(self) -> Leading | None:
        return self._fencing

    @property
    def failed(self) -> PyxiaError | None:
        return self._failed

    @property
    def lease_until(self) -> float | None:
        return self._lease_until

    def step_down(self) -> None:
        """Not serving: the allocator forgets its window first, then the term's tables."""
        self.allocator.step_down()
        was = self._serving is not None
        self._serving = None
        self._fencing = None
        self._lease_until = None
        self._sequences = None
        self._leases = None
        if was:
            m.SERVING.set(0)
        self.changed.notify()

    def begin_fence(self, target: Leading) -> None:
        self.step_down()
        self._fencing = target
        self.changed.notify()

    def become_serving(
        self, target: Leading, floor_ms: int, high_water_ms: int, lease_until: float | None
    ) -> None:
        """Seeds the allocator and publishes serving (the fence's last step)."""
        self.allocator.become_leader(floor_ms, high_water_ms, target.epoch)
        self._lease_until = lease_until if target.lease else None
        self._sequences = SequenceTable(self.options.max_seq_keys)
        self._leases = None  # loaded from the shard on first use
        self._fencing = None
        self._serving = target
        self._fast_held = False
        self._publish_fast_path()
        m.SERVING.set(1)
        m.HIGH_WATER.set(high_water_ms)
        self.changed.notify()

    def _publish_fast_path(self) -> None:
        """Tells the native TSO port until when it may grant on its own: while the lease
        holds less the renewal margin (renewals start on Python's path), without a lease
        for as long as this node serves (a step-down closes it synchronously)."""
        native = self._native
        if native is None or self._fast_held:
            return
        lease_until = self._lease_until
        native.set_fast_until(None if lease_until is None else lease_until - self._renew_margin)

    def poison(self, err: BaseException) -> None:
        """Stops the oracle on this node for good (a permanent error)."""
        self.step_down()
        self._failed = TsoFailed(f"tso: stopped on this node after a permanent error: {err}")
        m.FAILED.set(1)
        log.error("timestamp oracle stopped on this node: %s: %s", type(err).__name__, err)

    def release_for_handoff(self, handle: object, term: int) -> bool:
        """A planned step-down of the TSO shard's leader ``handle`` at ``term`` begins (called
        synchronously, before the controller refuses writes): stop granting, then log the
        release marker so the next leader need not wait the time lease out. Only a serving
        leader releases — one still fencing may not have waited out an older leader's lease.
        True if the marker was logged."""
        target = self._serving
        if target is None or target.handle is not handle or target.epoch != term:
            return False
        self.step_down()  # no grant from now on
        fut = self.driver.release(target)
        if fut is None:
            return False
        self.releases += 1
        m.RELEASES.inc()
        log.info("tso: stepping down from term %d, lease released", term)
        return True

    # -- errors -----------------------------------------------------------------------------------

    def not_serving_error(self) -> PyxiaError:
        if self._failed is not None:
            return self._failed
        fencing = self._fencing
        if fencing is not None:
            return TsoNotLeader(
                "tso: leader, fence in progress",
                leader_endpoint=self._self_endpoint(),
                leader_epoch=fencing.epoch,
            )
        endpoint, epoch = self._leader_hint()
        if endpoint is not None and endpoint == self._self_endpoint():
            # The map still names this node, which does not serve (it is handing over, or the
            # map is stale): pointing clients back here would only make them spin.
            endpoint, epoch = None, None
        return TsoNotLeader("tso: not the leader", leader_endpoint=endpoint, leader_epoch=epoch)

    async def until_serving(self) -> None:
        """While this node is the leader and its fence runs, waits (up to ``fence_hold_s``) for
        it to serve; returns at once otherwise."""
        if self._serving is not None or self._fencing is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.fence_hold_s
        while self._serving is None and self._fencing is not None:
            seen = self.changed.generation
            left = deadline - loop.time()
            if left <= 0 or not await self.changed.wait(seen, left):
                return

    def _check_serving(self) -> Leading:
        target = self._serving
        if target is None or not self._still_leading(target):
            # Deposed and not yet told by the watch (it steps down on the next event): the
            # native port stops granting too, until this node is seen leading again.
            if self._native is not None and target is not None:
                self._native.set_fast_until(0.0)
                self._fast_held = True
            raise self.not_serving_error()
        if self._fast_held:
            self._fast_held = False
            self._publish_fast_path()
        return target

    def _classify_write_error(self, e: BaseException, what: str) -> PyxiaError:
        """The error a caller sees when a write of the serving leader failed."""
        disposition = classify(e)
        if disposition is Disposition.STEPPED_DOWN:
            log.info("tso: %s write refused, not the leader: %s", what, e)
            if self._native is not None and self._serving is not None:
                self._native.set_fast_until(0.0)  # until seen leading again
                self._fast_held = True
            endpoint, epoch = self._leader_hint()
            return TsoNotLeader(
                f"tso: not the leader: {e}", leader_endpoint=endpoint, leader_epoch=epoch
            )
        if disposition is Disposition.PERMANENT:
            self.poison(e)
            return self.not_serving_error()
        log.warning("tso: %s write failed (transient): %s", what, e)
        m.ERRORS.labels("transient").inc()
        return TsoUnavailable(f"tso: {what} write failed: {e}")

    # -- grants -----------------------------------------------------------------------------------

    def try_grant(self, count: int) -> Grant | None:
        """A grant now, or None when a high-water write must come first. Raises when not
        serving (TsoNotLeader/TsoFailed) or for an invalid count."""
        target = self._check_serving()
        lease_until = self._lease_until
        if lease_until is not None:
            left = lease_until - self.monotonic()
            if left <= 0:
                return None
            if left < self._renew_margin and self._ext_task is None:
                self._start_write(target)
        try:
            return self.allocator.try_grant(count, self.clock_ms())
        except WindowExhausted:
            return None
        except AdvanceOutOfRange as e:  # a clock past the year 4199: nothing to retry
            self.poison(e)
            raise self.not_serving_error() from e
        except AllocatorNotLeader:
            raise self.not_serving_error() from None

    async def grant(self, count: int) -> Grant:
        """``count`` timestamps, waiting for the fence (:meth:`until_serving`) or one high-water
        write if needed."""
        await self.until_serving()
        g = self.try_grant(count)
        if g is not None:
            return g
        for _ in range(3):
            target = self._serving
            if target is None:
                raise self.not_serving_error()
            await self._await_write(target)
            g = self.try_grant(count)
            if g is not None:
                return g
        raise TsoUnavailable("tso: the window could not be extended far enough")

    async def _await_write(self, target: Leading) -> None:
        """Starts (or joins) the high-water write and waits for it."""
        task = self._start_write(target)
        try:
            err = await asyncio.wait_for(asyncio.shield(task), self.options.grant_wait_s)
        except TimeoutError:
            m.ERRORS.labels("transient").inc()
            raise TsoUnavailable(
                "tso: timed out waiting for a high-water write (extension or lease renewal)"
            ) from None
        if err is not None:
            raise err

    async def _leased(self) -> Leading:
        """The serving target with its time lease holding (renewed first if it lapsed)."""
        await self.until_serving()
        target = self._check_serving()
        for _ in range(3):
            lease_until = self._lease_until
            if lease_until is None or lease_until - self.monotonic() > 0:
                return target
            await self._await_write(target)
            target = self._check_serving()
        raise TsoUnavailable("tso: the lease could not be renewed")

    # -- high-water writes of the serving leader --------------------------------------------------

    def _start_write(self, target: Leading) -> asyncio.Task[PyxiaError | None]:
        task = self._ext_task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._write(target))
            self._ext_task = task
            task.add_done_callback(self._write_done)
        return task

    def _write_done(self, task: asyncio.Task[PyxiaError | None]) -> None:
        if self._ext_task is task:
            self._ext_task = None

    async def _write(self, target: Leading) -> PyxiaError | None:
        """One high-water write (window extension or lease renewal). Returns the error a
        waiting request should see, or None."""
        try:
            async with self.gate:
                if self._serving is not target:
                    return self.not_serving_error()
                now = self.clock_ms()
                ext: Extension
                if self._lease_until is not None:
                    ext = self.allocator.prepare_renewal(now, self._lease_ms)
                else:
                    ext = self.allocator.prepare_window_extension(now)
                why = "renewal" if ext.requested == self.allocator.high_water else "extension"
                proposed_at = self.monotonic()
                durable = await self.driver.persist_high_water(target, ext.requested)
                if self._serving is not target:
                    return self.not_serving_error()
                self._committed(ext, durable, proposed_at)
                m.EXTENSIONS.labels(why).inc()
                return None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return self._classify_write_error(e, "high-water")

    def _committed(self, ext: Extension, durable: int, proposed_at: float) -> None:
        """A high-water write of the serving leader committed: the window and the lease move."""
        self.allocator.commit_window_extension(ext, durable)
        if self._lease_until is not None:
            self._lease_until = max(self._lease_until, proposed_at + self.options.lease_s)
            self._publish_fast_path()
        self.extensions += 1
        m.EXTENSION_LATENCY.observe(self.monotonic() - proposed_at)
        m.HIGH_WATER.set(durable)

    # -- the safe point and the safe frontier -----------------------------------------------------

    def _not_leading_read(self) -> bool:
        if self._fencing is not None:
            return False  # held until it serves
        target = self._serving
        return target is None or not self._still_leading(target)

    async def current_max_safe(self) -> tuple[int, int | None]:
        """``(max_safe_physical_ms, epoch)``; ``(0, None)`` unless serving."""
        if self._not_leading_read():
            return 0, None
        try:
            target = await self._leased()
        except TsoNotLeader:
            return 0, None
        h = self.allocator.high_water
        if h is None:
            return 0, None
        return max_safe(h, self.options.window_ahead_ms), target.epoch

    async def safe_frontier(self) -> tuple[int, int | None]:
        """``(frontier_physical_ms, epoch)``; ``(0, None)`` unless serving."""
        if self._not_leading_read():
            return 0, None
        try:
            target = await self._leased()
            table = self._lease_table(target)
        except TsoNotLeader:
            return 0, None
        h = self.allocator.high_water
        if h is None:
            return 0, None
        return safe_frontier(h, table.min_unexpired_bound(self.clock_ms())), target.epoch

    # -- dense sequences --------------------------------------------------------------------------

    async def get_seq(self, entries: Sequence[SeqEntry]) -> tuple[tuple[int, ...], int]:
        """Blocks for ``entries`` (one atomic write): ``(starts, epoch)``. Before anything is
        logged, errors are definite (InvalidArgument, TsoNotLeader, SeqOverflow,
        SeqKeysExhausted); once logged, an unknown outcome is SeqUncertain."""
        o = self.options
        check_entries(entries, max_count=o.max_seq_count, max_batch_keys=o.max_seq_batch_keys)
        await self.until_serving()
        target = self._check_serving()
        table = self._sequences
        if table is None:
            raise self.not_serving_error()
        try:
            if table.key_count is None:
                raw = self.driver.read(target, SEQ_KEY_COUNT_KEY)
                table.seed_key_count(decode_counter(raw, "sequence key count") if raw else 0)
            for e in entries:
                if table.needs(e.key):
                    raw = self.driver.read(target, counter_key(e.key))
                    table.seed(e.key, decode_counter(raw) if raw is not None else None)
            plan = table.plan(entries)
            puts = [(counter_key(k), encode_counter(v)) for k, v in plan.counters()]
            if plan.new_keys:
                puts.append((SEQ_KEY_COUNT_KEY, encode_counter(plan.keys_after)))
            fut = self.driver.log(target, puts)
        except PyxiaError as e:
            if classify(e) is Disposition.STEPPED_DOWN:
                raise self.not_serving_error() from None
            raise
        table.apply(plan)
        m.SEQ_WRITES.inc()
        try:
            await self.driver.wait(fut, "sequence")
        except Exception as e:
            m.ERRORS.labels("seq_uncertain").inc()
            raise SeqUncertain(
                f"tso: the sequence write was logged but its outcome is unknown ({e}); the "
                "block may be spent: do not retry blindly"
            ) from None
        m.SEQ_VALUES.inc(sum(e.count for e in entries))
        return plan.starts, target.epoch

    # -- stamping leases --------------------------------------------------------------------------

    def _lease_table(self, target: Leading) -> LeaseTable:
        """The term's lease table, loaded from the shard on first use."""
        table = self._leases
        if table is None:
            if self._serving is not target:
                raise self.not_serving_error()
            table = LeaseTable(self.options.max_leases)
            records = [
                decode_record(k, v)
                for k, v in self.driver.scan(target, LEASE_PREFIX, LEASE_SCAN_END)
            ]
            raw = self.driver.read(target, LAST_LEASE_ID_KEY)
            last_id = decode_counter(raw, "last lease id") if raw is not None else 0
            table.seed(records, self.clock_ms(), last_id)
            self._leases = table
        return table

    async def acquire_lease(
        self, holder: bytes, holder_epoch: int, ttl_ms: int
    ) -> tuple[LeaseRecord, int]:
        """A lease for ``holder`` (see :mod:`~pyxia.tso.leases`) and the epoch that granted
        it."""
        o = self.options
        check_acquire(holder, ttl_ms, o.lease_ttl_floor_ms, o.lease_ttl_ceiling_ms)
        await self.until_serving()
        target = self._check_serving()
        return await self._lease_call(self._acquire(target, holder, holder_epoch, ttl_ms))

    async def renew_lease(self, lease_id: int) -> tuple[LeaseRecord, int]:
        await self.until_serving()
        target = self._check_serving()
        return await self._lease_call(self._renew(target, lease_id))

    async def release_lease(self, lease_id: int) -> int:
        await self.until_serving()
        target = self._check_serving()
        return await self._lease_call(self._release(target, lease_id))

    async def _lease_call(self, work: Coroutine[Any, Any, T]) -> T:
        """Runs a lease write as its own task: the caller may stop waiting, the task goes on
        (holding the gate) until the write's outcome is known."""
        task = asyncio.get_running_loop().create_task(work)
        self._lease_tasks.add(task)
        task.add_done_callback(self._lease_tasks.discard)
        task.add_done_callback(_collect)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.options.persist_timeout_s)
        except TimeoutError:
            m.ERRORS.labels("transient").inc()
            raise TsoUnavailable(
                "tso: the lease write was not committed in time; its outcome is unknown "
                "(acquire, renew and release may be retried)"
            ) from None

    async def _acquire(
        self, target: Leading, holder: bytes, holder_epoch: int, ttl_ms: int
    ) -> tuple[LeaseRecord, int]:
        async with self.gate:
            target = self._same(target)
            table = self._lease_table(target)
            now = self.clock_ms()
            decision = table.prepare_acquire(holder, holder_epoch, now)
            if isinstance(decision, LeaseRecord):
                return decision, target.epoch
            record = table.new_record(holder, holder_epoch, ttl_ms, now)
            mutation = Mutation(upsert=record, supersede=decision)
            await self._write_lease(target, table, mutation, now)
            m.LEASE_CALLS.labels("acquire").inc()
            return record, target.epoch

    async def _renew(self, target: Leading, lease_id: int) -> tuple[LeaseRecord, int]:
        async with self.gate:
            target = self._same(target)
            table = self._lease_table(target)
            now = self.clock_ms()
            record = table.renewed(table.prepare_renew(lease_id, now), now)
            await self._write_lease(target, table, Mutation(upsert=record), now)
            m.LEASE_CALLS.labels("renew").inc()
            return record, target.epoch

    async def _release(self, target: Leading, lease_id: int) -> int:
        async with self.gate:
            target = self._same(target)
            table = self._lease_table(target)
            if table.get(lease_id) is None:
                return target.epoch  # unknown, expired or released already: a no-op
            now = self.clock_ms()
            mutation = Mutation(remove=lease_id)
            puts, deletes = table.write_for(mutation, now)
            try:
                fut = self.driver.log(
                    target,
                    [(record_key(r.lease_id), encode_record(r)) for r in puts],
                    [record_key(i) for i in deletes],
                )
            except Exception as e:
                raise self._classify_write_error(e, "lease") from None
            await self._outcome(fut, "lease")
            if self._serving is not target:
                raise self.not_serving_error()
            table.apply(mutation, now)
            m.LEASE_CALLS.labels("release").inc()
            return target.epoch

    def _same(self, target: Leading) -> Leading:
        """Still serving ``target`` (checked again under the gate)."""
        if self._serving is not target or not self._still_leading(target):
            raise self.not_serving_error()
        return target

    async def _write_lease(
        self, target: Leading, table: LeaseTable, mutation: Mutation, now: int
    ) -> None:
        """The lease records, the last id and a high-water of at least the new bound in one
        write, awaited until its outcome is known (the gate is held); then the allocator and
        the table move."""
        puts, deletes = table.write_for(mutation, now)
        record = mutation.upsert
        assert record is not None and target.epoch == self.allocator.epoch
        h = self.allocator.high_water
        assert h is not None
        value = self.driver.planned_high_water(max(h, record.ts_upper_bound))
        ext = Extension(target.epoch, value)
        last_id = max(table.last_id, record.lease_id)
        proposed_at = self.monotonic()
        try:
            fut = self.driver.log_high_water(
                target,
                value,
                [
                    *((record_key(r.lease_id), encode_record(r)) for r in puts),
                    (LAST_LEASE_ID_KEY, encode_counter(last_id)),
                ],
                [record_key(i) for i in deletes],
            )
        except Exception as e:
            raise self._classify_write_error(e, "lease") from None
        await self._outcome(fut, "lease")
        if self._serving is not target:
            raise self.not_serving_error()
        self._committed(ext, value, proposed_at)
        table.apply(mutation, now)

    async def _outcome(self, fut: asyncio.Future[ApplyResult], what: str) -> None:
        """Waits for a logged write until its outcome is known (never abandoned while this
        node leads: the term's table must match the log)."""
        try:
            res = await asyncio.shield(fut)
        except Exception as e:
            raise self._classify_write_error(e, what) from None
        if res.error is not None:
            raise self._classify_write_error(res.error, what)

    async def close(self) -> None:
        task = self._ext_task
        self.step_down()
        for t in [task, *self._lease_tasks]:
            if t is not None and not t.done():
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass


def _collect(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
