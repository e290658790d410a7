"""The fence: its pure decisions (error classification, backoff, plan, next action) and the
leader-watch runner against a fake leadership stream and a fake high-water driver (no
servers): transient errors retried while still leader and racing leadership changes,
step-down on not-leader, permanent errors stopping the oracle, no publish at a stale epoch,
in-flight extensions drained, the lease wait, and the fence failpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pyxia import failpoints
from pyxia._native import WalError
from pyxia.common.signals import Signal
from pyxia.errors import (
    AlreadyClosed,
    InvalidStatus,
    InvalidTerm,
    NodeIsNotLeader,
    ResourceUnavailable,
    StorageFailure,
    Unavailable,
)
from pyxia.failpoints import FailpointError
from pyxia.tso import metrics as tso_metrics
from pyxia.tso.allocator import MAX_PHYSICAL, AdvanceOutOfRange, pack
from pyxia.tso.driver import Following, LeaderState, Leading
from pyxia.tso.errors import HighWaterCorrupt, TsoFailed, TsoNotLeader, TsoUnavailable
from pyxia.tso.fence import (
    Action,
    Disposition,
    LeaderWatch,
    backoff_delay,
    classify,
    lease_wait_s,
    next_action,
    should_warn,
)
from pyxia.tso.oracle import Oracle, TsoOptions
from servers import wait_until

NOW = 1_800_000_000_000


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


# -- pure decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "disposition"),
    [
        (NodeIsNotLeader("x"), Disposition.STEPPED_DOWN),
        (InvalidTerm("x"), Disposition.STEPPED_DOWN),
        (InvalidStatus("x"), Disposition.STEPPED_DOWN),
        (AlreadyClosed("x"), Disposition.STEPPED_DOWN),
        (TsoNotLeader("x"), Disposition.STEPPED_DOWN),
        (TsoUnavailable("replication timeout"), Disposition.TRANSIENT),
        (ResourceUnavailable("x"), Disposition.TRANSIENT),
        (Unavailable("peer unreachable"), Disposition.TRANSIENT),
        (TimeoutError(), Disposition.TRANSIENT),
        (ConnectionResetError(), Disposition.TRANSIENT),
        (FailpointError("injected"), Disposition.TRANSIENT),
        (StorageFailure("disk gone"), Disposition.PERMANENT),
        (HighWaterCorrupt("x"), Disposition.PERMANENT),
        (AdvanceOutOfRange("x"), Disposition.PERMANENT),
        (WalError("corrupt"), Disposition.PERMANENT),
        (RuntimeError("a bug"), Disposition.PERMANENT),
    ],
)
def test_classify(err: BaseException, disposition: Disposition) -> None:
    assert classify(err) is disposition


def test_backoff_is_25ms_doubling_capped_at_250ms() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]
    assert backoff_delay(10_000) == 0.25


def test_warnings_are_rate_limited() -> None:
    assert [n for n in range(1, 60) if should_warn(n)] == [8, 28, 48]


def test_lease_wait_covers_the_lease() -> None:
    assert lease_wait_s(0.25) > 0.25


def test_next_action() -> None:
    a, b = Leading(1, object(), False), Leading(2, object(), False)
    assert next_action(None, None, False, a) is Action.FENCE
    assert next_action(a, None, False, a) is Action.NONE
    assert next_action(a, None, False, Leading(1, a.handle, True)) is Action.NONE
    assert next_action(a, None, False, b) is Action.FENCE
    assert next_action(a, None, False, Following("x")) is Action.STEP_DOWN
    assert next_action(None, a, False, Following()) is Action.STEP_DOWN
    assert next_action(None, None, False, Following()) is Action.NONE
    assert next_action(None, None, True, a) is Action.NONE


# -- fakes ----------------------------------------------------------------------------------------


class FakeLeadership:
    def __init__(self) -> None:
        self.signal = Signal()
        self.state: LeaderState = Following(None)

    def current(self) -> LeaderState:
        return self.state

    def set(self, state: LeaderState) -> None:
        self.state = state
        self.signal.notify()


class FakeDriver:
    """A durable max register with scripted failures and an optional gate on persists."""

    def __init__(self) -> None:
        self.stored = -1
        self.load_errors: list[BaseException] = []
        self.persist_errors: list[BaseException] = []
        self.persist_gate: asyncio.Event | None = None
        self.loads = 0
        self.persists: list[tuple[int, int]] = []

    async def load_high_water(self, target: Leading) -> int:
        self.loads += 1
        if self.load_errors:
            raise self.load_errors.pop(0)
        return self.stored

    async def persist_high_water(
        self, target: Leading, at_least: int, puts: Any = (), deletes: Any = ()
    ) -> int:
        if self.persist_errors:
            raise self.persist_errors.pop(0)
        if self.persist_gate is not None:
            await self.persist_gate.wait()
        self.stored = max(self.stored, at_least)
        self.persists.append((target.epoch, at_least))
        self.marker = False
        return self.stored

    # The rest of the driver (the marker; the sequence and lease records are not used here).
    marker = False

    def released(self, target: Leading) -> bool:
        return self.marker

    def release(self, target: Leading) -> bool:
        self.marker = True
        return True

    def read(self, target: Leading, key: str) -> bytes | None:
        return None

    def scan(self, target: Leading, start: str, end: str) -> list[tuple[str, bytes]]:
        return []


class Env:
    def __init__(self, options: TsoOptions | None = None) -> None:
        self.clock = [NOW]
        self.leadership = FakeLeadership()
        self.driver = FakeDriver()
        self.oracle = Oracle(
            self.driver, options or TsoOptions(lease_s=0.1), clock_ms=lambda: self.clock[0]
        )
        self.published: list[int] = []
        publish = self.oracle.become_serving

        def spy(target: Leading, *args: Any) -> None:
            self.published.append(target.epoch)
            publish(target, *args)

        self.oracle.become_serving = spy  # type: ignore[method-assign]
        self.watch = LeaderWatch(self.oracle, self.leadership)

    def lead(self, epoch: int, lease: bool = False) -> Leading:
        target = Leading(epoch, object(), lease)
        self.leadership.set(target)
        return target

    def serves(self, target: Leading) -> bool:
        return self.oracle.serving is target


@pytest.fixture
async def env() -> Any:
    e = Env()
    e.watch.start()
    try:
        yield e
    finally:
        await e.watch.close()
        await e.oracle.close()


# -- the runner -----------------------------------------------------------------------------------


async def test_fence_serves_strictly_above_the_stored_high_water(env: Env) -> None:
    env.driver.stored = NOW + 5000  # an old leader's window reached past our clock
    t = env.lead(1)
    await wait_until(lambda: env.serves(t), what="serving")
    assert env.driver.persists == [(1, NOW + 5001 + 1000)]
    g = env.oracle.try_grant(3)
    assert g is not None and g.epoch == 1
    assert g.first == pack(NOW + 5001, 0)


async def test_transient_errors_are_retried_by_the_same_leader(env: Env) -> None:
    env.driver.persist_errors = [TsoUnavailable("quorum blip")] * 3
    t0 = time.monotonic()
    t = env.lead(1)
    await wait_until(lambda: env.serves(t), what="serving after retries")
    assert env.watch.transient_retries == 3
    assert time.monotonic() - t0 >= 0.025 + 0.05 + 0.1 - 0.01  # the backoff was honoured
    assert env.published == [1]


async def test_a_leadership_change_ends_a_retrying_fence_at_once(env: Env) -> None:
    env.driver.persist_errors = [TsoUnavailable("down")] * 10_000
    env.lead(1)
    await wait_until(lambda: env.watch.transient_retries >= 6, what="retries at the cap")
    env.leadership.set(Following("other:1"))
    t0 = time.monotonic()
    await wait_until(lambda: env.oracle.fencing is None, what="the fence to end")
    assert time.monotonic() - t0 < 0.2
    assert env.oracle.serving is None
    env.driver.persist_errors.clear()
    t2 = env.lead(2)
    await wait_until(lambda: env.serves(t2), what="serving at the next term")
    assert env.published == [2]


async def test_not_leader_during_the_fence_steps_down_and_waits(env: Env) -> None:
    env.driver.persist_errors = [NodeIsNotLeader("term moved")]
    t1 = env.lead(1)
    await wait_until(lambda: env.driver.persist_errors == [], what="the refused persist")
    env.leadership.set(Following("new-leader:1"))  # the controller stepped down
    await wait_until(lambda: env.oracle.fencing is None)
    assert env.oracle.serving is None and not env.serves(t1)
    with pytest.raises(TsoNotLeader):
        env.oracle.try_grant(1)
    t2 = env.lead(2)
    await wait_until(lambda: env.serves(t2))
    assert env.published == [2]


async def test_refused_while_still_leading_is_retried_not_abandoned(env: Env) -> None:
    """tsoracle #229: a still-elected leader that gave up would get no new event."""
    env.driver.persist_errors = [InvalidStatus("blip")] * 2
    t = env.lead(1)
    await wait_until(lambda: env.serves(t), what="serving despite the refusals")
    assert env.watch.transient_retries == 2


async def test_permanent_error_stops_the_oracle_on_this_node(env: Env) -> None:
    env.driver.load_errors = [HighWaterCorrupt("garbage")]
    env.lead(1)
    await wait_until(lambda: env.oracle.failed is not None, what="the oracle to stop")
    await wait_until(lambda: not env.watch.running, what="the watch to end")
    assert REGISTRY.get_sample_value("pyxia_tso_failed") == 1
    with pytest.raises(TsoFailed):
        env.oracle.try_grant(1)
    env.lead(2)  # later leadership does not revive it: nothing is left to act on it
    assert not env.watch.running and env.oracle.failed is not None
    assert env.oracle.serving is None and env.published == []
    tso_metrics.FAILED.set(0)


async def test_never_publishes_serving_at_a_stale_epoch(env: Env) -> None:
    env.driver.persist_gate = asyncio.Event()
    env.lead(1)
    await wait_until(lambda: env.driver.loads == 1, what="the first fence to load")
    t2 = env.lead(2)  # leadership moves while the epoch-1 persist is in flight
    env.driver.persist_gate.set()
    await wait_until(lambda: env.serves(t2), what="serving at epoch 2")
    assert env.published == [2]


async def test_fence_drains_the_old_terms_extension_first() -> None:
    e = Env(TsoOptions(window_ahead_s=0.01, lease_s=0.1))
    e.watch.start()
    try:
        t1 = e.lead(1)
        await wait_until(lambda: e.serves(t1))
        e.driver.persist_gate = asyncio.Event()
        e.clock[0] = NOW + 60_000  # past the window: the next grant needs an extension
        waiter = asyncio.get_running_loop().create_task(e.oracle.grant(1))
        await wait_until(lambda: e.oracle.gate.locked(), what="the extension to hold the gate")
        loads = e.driver.loads
        t2 = e.lead(2)
        # The epoch-2 fence began (not serving) and waits for the gate, which the extension
        # holds: it may not load before the extension is done.
        await wait_until(lambda: e.oracle.fencing is t2, what="the epoch-2 fence to begin")
        assert e.oracle.gate.locked()
        assert e.driver.loads == loads, "the fence loaded while an old extension was in flight"
        e.driver.persist_gate.set()
        with pytest.raises(TsoNotLeader):
            await waiter
        await wait_until(lambda: e.serves(t2))
        ext_value = next(v for epoch, v in e.driver.persists if epoch == 1 and v > NOW + 60_000)
        g = e.oracle.try_grant(1)
        assert g is not None and g.physical_ms > ext_value
    finally:
        await e.watch.close()


async def test_with_a_lease_the_fence_waits_and_grants_need_a_live_lease() -> None:
    e = Env(TsoOptions(lease_s=0.1, grant_wait_s=0.2))
    e.watch.start()
    try:
        t0 = time.monotonic()
        t = e.lead(1, lease=True)
        await wait_until(lambda: e.serves(t))
        assert time.monotonic() - t0 >= lease_wait_s(0.1) - 0.005
        assert e.oracle.try_grant(1) is not None
        # Under load the lease is renewed in the background (one write per ~lease/2).
        persists = len(e.driver.persists)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert await e.oracle.grant(1)
            await asyncio.sleep(0.005)
        assert len(e.driver.persists) > persists
        # A leader whose renewals cannot commit stops granting once its lease lapses.
        e.driver.persist_gate = asyncio.Event()
        lease_until = e.oracle.lease_until
        assert lease_until is not None
        await asyncio.sleep(max(0.0, lease_until - time.monotonic()) + 0.01)
        assert e.oracle.try_grant(1) is None
        with pytest.raises(TsoUnavailable):
            await e.oracle.grant(1)
        e.driver.persist_gate.set()
        assert await e.oracle.grant(1)
    finally:
        await e.watch.close()


async def test_a_released_lease_is_not_waited_out_and_the_next_write_deletes_the_marker() -> None:
    e = Env(TsoOptions(lease_s=1.0))
    e.driver.marker = True  # the last leader released its lease (a planned step-down)
    e.watch.start()
    try:
        t0 = time.monotonic()
        t = e.lead(1, lease=True)
        await wait_until(lambda: e.serves(t))
        assert time.monotonic() - t0 < 0.5  # not the 1.05 s wait
        assert e.watch.released_fences == 1
        assert e.driver.marker is False  # the fence's own high-water write deleted it
        # Released again (a step-down of this leader): it stops granting first.
        assert e.oracle.release_for_handoff(t.handle, 1)
        assert e.oracle.serving is None and e.driver.marker is True
        with pytest.raises(TsoNotLeader):
            e.oracle.try_grant(1)
        # A leader still fencing never releases (it may not have waited an older lease out).
        t2 = e.lead(2, lease=True)
        e.driver.marker = False
        e.oracle.begin_fence(t2)
        assert not e.oracle.release_for_handoff(t2.handle, 2)
        assert e.driver.marker is False
    finally:
        await e.watch.close()


async def test_fence_failpoint_after_load_is_a_transient_error(env: Env) -> None:
    failpoints.arm("fence.after_load_before_persist", "2*raise")
    t = env.lead(1)
    await wait_until(lambda: env.serves(t))
    assert env.watch.transient_retries == 2
    assert env.driver.persists == [(1, NOW + 1000)]


async def test_fence_failpoint_after_persist_re_fences_above_the_first_persist(env: Env) -> None:
    failpoints.arm("fence.after_persist_before_publish", "1*raise")
    env.clock[0] = NOW
    t = env.lead(1)
    await wait_until(lambda: env.serves(t))
    (e1, first), (e2, second) = env.driver.persists
    assert e1 == e2 == 1 and second > first  # the retry loaded the first persist
    g = env.oracle.try_grant(1)
    assert g is not None and g.physical_ms > first


async def test_close_is_idempotent_and_stops_serving(env: Env) -> None:
    t = env.lead(1)
    await wait_until(lambda: env.serves(t))
    await env.watch.close()
    await env.watch.close()
    assert env.oracle.serving is None
    with pytest.raises(TsoNotLeader):
        env.oracle.try_grant(1)


async def test_a_clock_past_46_bits_stops_the_oracle(env: Env) -> None:
    t = env.lead(1)
    await wait_until(lambda: env.serves(t))
    env.clock[0] = MAX_PHYSICAL + 5
    with pytest.raises(TsoFailed):
        env.oracle.try_grant(1)
    assert env.oracle.failed is not None and env.oracle.serving is None
    tso_metrics.FAILED.set(0)


async def test_a_bug_in_the_watch_stops_serving_instead_of_hanging(env: Env) -> None:
    t = env.lead(1)
    await wait_until(lambda: env.serves(t))

    def broken() -> LeaderState:
        raise RuntimeError("a bug")

    env.leadership.current = broken  # type: ignore[method-assign]
    env.leadership.signal.notify()
    await wait_until(lambda: env.oracle.failed is not None, what="the oracle to stop")
    assert env.oracle.serving is None
    tso_metrics.FAILED.set(0)
