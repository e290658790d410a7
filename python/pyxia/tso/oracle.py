"""The serving side of one node's oracle: who may grant, the window, the lease.

Serving state (published by the fence, :mod:`pyxia.tso.fence`, the only code that publishes
"serving"): ``serving`` (a :class:`Leading` target whose fence completed), ``fencing`` (leader,
fence in progress: not serving), ``failed`` (stopped after a permanent error), or none of them
(not the leader). Stepping down always clears the allocator before anything else.

Hot path: :meth:`Oracle.try_grant` is synchronous — one allocator call plus two comparisons.
When the window is exhausted or the lease is about to lapse, one high-water write is proposed
(single-flight: one task, awaited by every caller that needs it, holding the ``gate`` so a
fence can drain it). Requests keep being served from the current window meanwhile.

**The lease** (replication factor above one). A leader's window survives a pause of its
process (SIGSTOP, a GC or VM stall): resumed, it would still hand out timestamps under its old
high-water while a new leader, elected meanwhile, hands out larger ones, so a client could
receive a smaller timestamp after another client received a larger one. So a leader grants
only while its lease holds: a lease runs ``lease_s`` from the *proposal* time of its last
high-water write that committed. That write was acknowledged by a quorum which, at that
moment, was not yet fenced by any newer term; a new leader is only made leader after a quorum
was fenced, so it starts ``lease_s`` (plus a guard) after observing its own leadership: by
then every older lease has lapsed. Serving leaders renew in the background (every
``lease_s / 2`` while there are requests; an idle leader's first request waits for one write).
With one replica nobody else can be elected, and there is no lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyxia.errors import PyxiaError
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso import metrics as m
from pyxia.tso.allocator import AdvanceOutOfRange, Allocator, Extension, Grant, WindowExhausted
from pyxia.tso.allocator import NotLeader as AllocatorNotLeader
from pyxia.tso.driver import HighWaterDriver, Leading
from pyxia.tso.errors import TsoFailed, TsoNotLeader, TsoUnavailable
from pyxia.tso.fence import Disposition, classify

log = logging.getLogger("pyxia.tso")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TsoOptions:
    """The oracle's tuning (tsoracle's names and defaults where they exist)."""

    namespace: str = DEFAULT_NAMESPACE
    window_ahead_s: float = 3.0
    """How far ahead of the clock each high-water extension reaches (one write per window)."""
    failover_advance_s: float = 1.0
    """How far above ``max(previous high-water + 1, now)`` a new leader persists its first
    high-water (clock-skew headroom; the visible jump on failover)."""
    lease_s: float = 0.25
    """A leader's lease (replication factor > 1); a new leader waits this long (plus a guard)
    before serving."""
    persist_timeout_s: float = 2.0
    """A high-water write not committed by then is a transient failure."""
    grant_wait_s: float = 1.0
    """How long a GetTs waits for a needed extension or lease renewal before UNAVAILABLE."""

    @property
    def window_ahead_ms(self) -> int:
        return max(1, round(self.window_ahead_s * 1000))

    @property
    def failover_advance_ms(self) -> int:
        return max(0, round(self.failover_advance_s * 1000))


class Oracle:
    """One node's serving state, window and lease (see the module docstring)."""

    def __init__(
        self,
        driver: HighWaterDriver,
        options: TsoOptions | None = None,
        *,
        self_endpoint: Callable[[], str | None] = lambda: None,
        leader_hint: Callable[[], str | None] = lambda: None,
        still_leading: Callable[[Leading], bool] = lambda _target: True,
        clock_ms: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options or TsoOptions()
        self.driver = driver
        self.allocator = Allocator(self.options.window_ahead_ms)
        self.gate = asyncio.Lock()
        """Held across every high-water write of the serving leader; the fence takes it to
        drain the writes of an older term before it reads the high-water."""
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
        self.extensions = 0

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
        """Not serving: the allocator forgets its window first."""
        self.allocator.step_down()
        was = self._serving is not None
        self._serving = None
        self._fencing = None
        self._lease_until = None
        if was:
            m.SERVING.set(0)

    def begin_fence(self, target: Leading) -> None:
        self.step_down()
        self._fencing = target

    def become_serving(
        self, target: Leading, floor_ms: int, high_water_ms: int, lease_until: float | None
    ) -> None:
        """Seeds the allocator and publishes serving (the fence's last step)."""
        self.allocator.become_leader(floor_ms, high_water_ms, target.epoch)
        self._lease_until = lease_until if target.lease else None
        self._fencing = None
        self._serving = target
        m.SERVING.set(1)
        m.HIGH_WATER.set(high_water_ms)

    def poison(self, err: BaseException) -> None:
        """Stops the oracle on this node for good (a permanent error)."""
        self.step_down()
        self._failed = TsoFailed(f"tso: stopped on this node after a permanent error: {err}")
        m.FAILED.set(1)
        log.error("timestamp oracle stopped on this node: %s: %s", type(err).__name__, err)

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
        return TsoNotLeader("tso: not the leader", leader_endpoint=self._leader_hint())

    # -- grants -----------------------------------------------------------------------------------

    def try_grant(self, count: int) -> Grant | None:
        """A grant now, or None when a high-water write must come first. Raises when not
        serving (TsoNotLeader/TsoFailed) or for an invalid count."""
        target = self._serving
        if target is None or not self._still_leading(target):
            # Deposed and not yet told by the watch (it steps down on the next event).
            raise self.not_serving_error()
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
        """``count`` timestamps, waiting for one high-water write if needed."""
        g = self.try_grant(count)
        if g is not None:
            return g
        for _ in range(3):
            target = self._serving
            if target is None:
                raise self.not_serving_error()
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
            g = self.try_grant(count)
            if g is not None:
                return g
        raise TsoUnavailable("tso: the window could not be extended far enough")

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
                self.allocator.commit_window_extension(ext, durable)
                if self._lease_until is not None:
                    self._lease_until = max(self._lease_until, proposed_at + self.options.lease_s)
                self.extensions += 1
                m.EXTENSIONS.labels(why).inc()
                m.EXTENSION_LATENCY.observe(self.monotonic() - proposed_at)
                m.HIGH_WATER.set(durable)
                return None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            disposition = classify(e)
            if disposition is Disposition.STEPPED_DOWN:
                # The controller stepped down (that notified the watch, which steps the
                # oracle down); until then try_grant refuses through still_leading.
                log.info("tso: high-water write refused, not the leader: %s", e)
                return TsoNotLeader(
                    f"tso: not the leader: {e}", leader_endpoint=self._leader_hint()
                )
            if disposition is Disposition.PERMANENT:
                self.poison(e)
                return self.not_serving_error()
            log.warning("tso: high-water write failed (transient): %s", e)
            m.ERRORS.labels("transient").inc()
            return TsoUnavailable(f"tso: high-water write failed: {e}")

    async def close(self) -> None:
        task = self._ext_task
        self.step_down()
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
