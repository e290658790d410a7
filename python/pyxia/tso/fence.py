"""The failover fence: what a node does on every leadership change.

Decisions are pure functions (:func:`~pyxia.tso.failures.classify`, :func:`backoff_delay`,
:func:`fence_plan`, :func:`next_action`, :func:`lease_wait_s`); :class:`LeaderWatch` is the async
shell that runs them against the data server's leadership events, the high-water driver and the
:class:`~pyxia.tso.oracle.Oracle`.

On observing ``Leading(epoch)`` the fence, in order:

1. publishes not-serving (the allocator forgets its window first);
2. takes the oracle's ``gate``: every in-flight high-water write of the old term drains;
3. loads the high-water, linearized (:meth:`ShardDriver.load_high_water`);
4. with a lease (replication factor > 1) waits until ``lease_s`` (+ guard) after it observed
   its leadership, so that any older leader's lease has lapsed (see ``oracle``) — unless the
   release marker is in the state it loaded: then the last leader that could hold a lease
   stopped granting before it logged the marker, and every older one's lease lapsed before
   that leader served (below), so nobody grants from an older window any more;
   — failpoint ``fence.after_load_before_persist``;
5. ``floor = max(high-water + 1, now)`` (the +1 is load-bearing: the high-water is
   inclusive, an older leader may have granted every logical of that millisecond);
6. persists ``floor + failover_advance`` at its term and waits for the quorum commit;
   — failpoint ``fence.after_persist_before_publish``;
7. checks it still leads at that term, seeds the allocator with ``floor`` and the durable
   value, and publishes serving (the only place that does).

Invariants of the handoff (the marker, ``__oxia/tso/released``):

- a leader logs the marker only while serving at its term, and only after it stopped granting
  (:meth:`Oracle.release_for_handoff`, called as its planned step-down begins); a leader still
  fencing never logs it (it may not have waited out an older leader's lease yet);
- every high-water write deletes the marker in the same atomic write, and a time lease is only
  ever established or renewed by a committed high-water write, so in the log's order the marker
  is present exactly when no lease was granted after the last release;
- a new leader reads the state of every entry that can ever commit from earlier terms (it
  leads only once it applied them; the others can never commit), so it sees the marker iff
  the releasing leader's last grant came before it — the new leader's floor (above the
  high-water) is then above every timestamp any older leader can still hand out.
So two leaders never serve overlapping or out-of-order timestamps, with or without the wait.

Errors are classified (:mod:`pyxia.tso.failures`), never fatal to the process (tsoracle's
PR #227 → issue #229 → PR #235):

- **stepped down** (not leader, fenced, invalid term/status, controller closed): publish
  not-serving and wait for the next leadership event;
- **transient** (replication/quorum timeout, unavailable, an injected failpoint error): retry
  with backoff 25 ms * 2^n capped at 250 ms for as long as this node still leads at that term,
  each wait racing the leadership events (a change ends the attempt at once). A still-elected
  leader is never left not-serving: it gets no new event to re-drive it;
- **permanent** (storage failure, corrupt high-water, a clock past 46 bits, anything
  unexpected): the oracle stops on this node (``pyxia_tso_failed`` = 1, an error logged, GetTs
  answers INTERNAL); the data server and its other shards keep running.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from pyxia.failpoints import afailpoint
from pyxia.tso import metrics as m
from pyxia.tso.allocator import MAX_PHYSICAL, AdvanceOutOfRange
from pyxia.tso.driver import Following, HighWaterDriver, Leadership, LeaderState, Leading
from pyxia.tso.failures import Disposition, classify

if TYPE_CHECKING:
    from pyxia.tso.oracle import Oracle

log = logging.getLogger("pyxia.tso.fence")

FENCE_RETRY_BASE_S = 0.025
FENCE_RETRY_CAP_S = 0.25
WARN_FIRST_AT = 8
WARN_EVERY = 20


def backoff_delay(attempt: int) -> float:
    """The wait before retry number ``attempt`` (1-based): 25 ms * 2^(n-1), capped at 250 ms."""
    shift = min(max(attempt, 1) - 1, 16)
    return min(FENCE_RETRY_BASE_S * (1 << shift), FENCE_RETRY_CAP_S)


def should_warn(attempt: int) -> bool:
    """Warn at the 8th transient retry, then every 20 (about 5 s apart at the cap)."""
    return attempt == WARN_FIRST_AT or (
        attempt > WARN_FIRST_AT and (attempt - WARN_FIRST_AT) % WARN_EVERY == 0
    )


@dataclass(frozen=True)
class FencePlan:
    floor_ms: int
    requested_ms: int


def fence_plan(loaded_high_water: int, now_ms: int, failover_advance_ms: int) -> FencePlan:
    """``floor = max(high-water + 1, now)``; persist ``floor + failover_advance``."""
    floor = max(loaded_high_water + 1, now_ms, 1)
    requested = floor + failover_advance_ms
    if requested > MAX_PHYSICAL:
        raise AdvanceOutOfRange(f"high-water {requested} ms does not fit in 46 bits")
    return FencePlan(floor, requested)


def lease_wait_s(lease_s: float) -> float:
    """How long a new leader waits, from observing its leadership, before serving: the lease
    plus a guard for clock-rate differences and scheduling."""
    return lease_s * 1.05 + 0.005


class Action(Enum):
    FENCE = "fence"
    STEP_DOWN = "step_down"
    NONE = "none"


def next_action(
    serving: Leading | None, fencing: Leading | None, failed: bool, observed: LeaderState
) -> Action:
    """What the watch does about an observed leadership state."""
    if failed:
        return Action.NONE
    if isinstance(observed, Leading):
        if serving is not None and serving.same(observed):
            return Action.NONE
        return Action.FENCE
    if serving is not None or fencing is not None:
        return Action.STEP_DOWN
    return Action.NONE


class _LeadershipChanged(Exception):
    """The fence's target is no longer what this node observes."""


class LeaderWatch:
    """Consumes leadership events and runs the fence (one task, started and closed
    explicitly)."""

    def __init__(
        self,
        oracle: Oracle,
        leadership: Leadership,
        driver: HighWaterDriver | None = None,
    ) -> None:
        self.oracle = oracle
        self.leadership = leadership
        self.driver = driver or oracle.driver
        self.options = oracle.options
        self.transient_retries = 0
        self.fences = 0
        self.released_fences = 0
        """Fences that found the release marker and did not wait the lease out."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tso-watch")

    async def close(self) -> None:
        """Stops at the next await (never publishing serving afterwards); idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.oracle.step_down()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._watch()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: never leave a half-fenced oracle serving
            log.exception("tso: the leader watch failed")
            self.oracle.poison(e)

    async def _watch(self) -> None:
        signal = self.leadership.signal
        while not self._closed:
            seen = signal.generation
            observed = self.leadership.current()
            o = self.oracle
            action = next_action(o.serving, o.fencing, o.failed is not None, observed)
            if action is Action.FENCE:
                assert isinstance(observed, Leading)
                if not await self._fence(observed):
                    return  # stopped for good (permanent error)
                continue  # re-observe at once
            if action is Action.STEP_DOWN:
                log.info("tso: not the leader any more, not serving")
                o.step_down()
            if o.failed is not None or signal.closed:
                return
            recheck = observed.recheck_s if isinstance(observed, Following) else None
            await signal.wait(seen, recheck)

    def _still(self, target: Leading) -> None:
        if not target.same(self.leadership.current()) or self._closed:
            raise _LeadershipChanged()

    async def _wait_racing(self, delay: float, target: Leading) -> bool:
        """Waits ``delay`` seconds; returns early (False) once ``target`` is no longer the
        observed leadership. True if the whole delay passed with the target unchanged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        signal = self.leadership.signal
        while True:
            seen = signal.generation
            if not target.same(self.leadership.current()) or self._closed:
                return False
            left = deadline - loop.time()
            if left <= 0:
                return True
            await signal.wait(seen, left)

    async def _fence(self, target: Leading) -> bool:
        """Runs the fence for ``target`` until it serves, the leadership changes, or a
        permanent error stops the oracle (returns False then)."""
        o = self.oracle
        o.begin_fence(target)
        observed_at = o.monotonic()
        log.info("tso: leader at term %d, fencing", target.epoch)
        attempt = 0
        while True:
            try:
                await self._fence_once(target, observed_at)
            except asyncio.CancelledError:
                o.step_down()
                raise
            except _LeadershipChanged:
                o.step_down()
                return True
            except Exception as e:
                disposition = classify(e)
                if disposition is Disposition.STEPPED_DOWN:
                    if not target.same(self.leadership.current()):
                        o.step_down()
                        log.info("tso: fence at term %d ended, stepped down: %s", target.epoch, e)
                        return True
                    # Refused, yet the controller still leads at that term: a leader that
                    # gave up here would get no new event to re-drive it (tsoracle #229).
                    disposition = Disposition.TRANSIENT
                if disposition is Disposition.PERMANENT:
                    o.poison(e)
                    return False
                attempt += 1
                self.transient_retries += 1
                m.FENCE_TRANSIENT_RETRIES.inc()
                delay = backoff_delay(attempt)
                if should_warn(attempt):
                    log.warning(
                        "tso: fence at term %d still failing after %d retries: %s",
                        target.epoch,
                        attempt,
                        e,
                    )
                else:
                    log.info(
                        "tso: fence at term %d: transient error, retrying: %s", target.epoch, e
                    )
                if not await self._wait_racing(delay, target):
                    o.step_down()
                    return True
                continue
            self.fences += 1
            m.LEADER_TRANSITIONS.inc()
            m.FENCE_LATENCY.observe(o.monotonic() - observed_at)
            log.info("tso: serving at term %d", target.epoch)
            return True

    async def _fence_once(self, target: Leading, observed_at: float) -> None:
        o = self.oracle
        async with o.gate:  # drain the older term's high-water writes
            self._still(target)
            loaded = await self.driver.load_high_water(target)
            if target.lease:
                if self.driver.released(target):
                    self.released_fences += 1
                else:
                    left = observed_at + lease_wait_s(self.options.lease_s) - o.monotonic()
                    if left > 0 and not await self._wait_racing(left, target):
                        raise _LeadershipChanged()
            self._still(target)
            await afailpoint("fence.after_load_before_persist")
            plan = fence_plan(loaded, o.clock_ms(), self.options.failover_advance_ms)
            proposed_at = o.monotonic()
            durable = await self.driver.persist_high_water(target, plan.requested_ms)
            await afailpoint("fence.after_persist_before_publish")
            self._still(target)
            o.become_serving(
                target,
                plan.floor_ms,
                durable,
                proposed_at + self.options.lease_s if target.lease else None,
            )


__all__ = [
    "Action",
    "Disposition",
    "FencePlan",
    "Following",
    "LeaderWatch",
    "backoff_delay",
    "classify",
    "fence_plan",
    "lease_wait_s",
    "next_action",
]
