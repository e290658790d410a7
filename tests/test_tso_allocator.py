"""The TSO allocator, window extension and fence arithmetic: unit tests and properties.

The stateful property drives several nodes sharing one durable high-water through arbitrary
interleavings of grants, window extensions (prepared, then committed or lost), lease renewals,
step-downs, fences and clock jumps back and forth, and checks that every grant any node makes
is strictly above every grant made before it, whole, and under a durable high-water.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyxia.tso.allocator import (
    LOGICAL_MAX,
    MAX_COUNT,
    MAX_PHYSICAL,
    AdvanceOutOfRange,
    Allocator,
    Extension,
    InvalidCount,
    NotLeader,
    WindowExhausted,
    pack,
    unpack,
)
from pyxia.tso.fence import fence_plan

NOW = 1_800_000_000_000  # ms, year 2027


def serving(floor: int = NOW, high_water: int = NOW + 3000, epoch: int = 1) -> Allocator:
    a = Allocator(window_ahead_ms=3000)
    a.become_leader(floor, high_water, epoch)
    return a


def test_pack_layout() -> None:
    assert pack(1, 0) == 1 << 18
    assert unpack(pack(NOW, LOGICAL_MAX)) == (NOW, LOGICAL_MAX)
    assert pack(MAX_PHYSICAL, LOGICAL_MAX) == (1 << 64) - 1


def test_not_leader_until_elected_and_after_step_down() -> None:
    a = Allocator()
    with pytest.raises(NotLeader):
        a.try_grant(1, NOW)
    a.become_leader(NOW, NOW + 10, 3)
    assert a.try_grant(1, NOW).epoch == 3
    a.step_down()
    assert a.epoch is None and a.high_water is None
    with pytest.raises(NotLeader):
        a.try_grant(1, NOW)
    with pytest.raises(NotLeader):
        a.prepare_window_extension(NOW)


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1])
def test_invalid_counts(count: int) -> None:
    with pytest.raises(InvalidCount):
        serving().try_grant(count, NOW)


def test_grants_are_whole_and_consecutive_within_a_millisecond() -> None:
    a = serving()
    g1 = a.try_grant(10, NOW)
    g2 = a.try_grant(5, NOW)
    assert (g1.physical_ms, g1.logical_start, g1.count) == (NOW, 0, 10)
    assert (g2.physical_ms, g2.logical_start) == (NOW, 10)
    assert g2.first == g1.last + 1


def test_logical_overflow_moves_to_the_next_millisecond_never_splits() -> None:
    a = serving()
    a.try_grant(LOGICAL_MAX, NOW)  # logicals 0..LOGICAL_MAX-1
    g = a.try_grant(2, NOW)  # does not fit in the one logical left
    assert (g.physical_ms, g.logical_start, g.count) == (NOW + 1, 0, 2)
    full = a.try_grant(MAX_COUNT, NOW)
    assert (full.physical_ms, full.logical_start) == (NOW + 2, 0)
    assert full.last == pack(NOW + 2, LOGICAL_MAX)


def test_clock_going_back_never_goes_back() -> None:
    a = serving()
    g1 = a.try_grant(1, NOW + 500)
    g2 = a.try_grant(1, NOW - 60_000)
    assert g2.first > g1.last
    assert g2.physical_ms == NOW + 500


def test_window_exhaustion_and_extension() -> None:
    a = serving(high_water=NOW + 100)
    assert a.would_grant(1, NOW + 100)
    assert not a.would_grant(1, NOW + 101)
    with pytest.raises(WindowExhausted):
        a.try_grant(1, NOW + 101)
    ext = a.prepare_window_extension(NOW + 101)
    assert ext == Extension(1, NOW + 101 + 3000)
    assert a.commit_window_extension(ext, ext.requested)
    assert a.try_grant(1, NOW + 101).physical_ms == NOW + 101
    # A commit that does not advance, or from another epoch, is ignored.
    assert not a.commit_window_extension(ext, ext.requested)
    assert not a.commit_window_extension(Extension(0, NOW + 99_999), NOW + 99_999)
    assert a.high_water == ext.requested


def test_extension_starts_above_the_high_water_when_the_clock_is_behind() -> None:
    a = serving(high_water=NOW + 100)
    ext = a.prepare_window_extension(NOW - 10_000)
    assert ext.requested == NOW + 101 + 3000


def test_renewal_keeps_the_bound_until_it_runs_short() -> None:
    a = serving(high_water=NOW + 3000)
    assert a.prepare_renewal(NOW, min_ahead_ms=250).requested == NOW + 3000
    near = a.prepare_renewal(NOW + 2900, min_ahead_ms=250)
    assert near.requested == NOW + 3001 + 3000  # max(H + 1, now) + window


def test_advance_out_of_range() -> None:
    a = serving(floor=MAX_PHYSICAL - 10, high_water=MAX_PHYSICAL)
    with pytest.raises(AdvanceOutOfRange):
        a.try_grant(1, MAX_PHYSICAL + 5)
    with pytest.raises(AdvanceOutOfRange):
        a.prepare_window_extension(MAX_PHYSICAL)
    with pytest.raises(AdvanceOutOfRange):
        fence_plan(MAX_PHYSICAL, NOW, 1000)
    with pytest.raises(AdvanceOutOfRange):
        Allocator().become_leader(NOW, MAX_PHYSICAL + 1, 1)


def test_become_leader_checks_its_bounds() -> None:
    with pytest.raises(ValueError, match="floor"):
        Allocator().become_leader(NOW + 1, NOW, 1)
    with pytest.raises(ValueError, match="floor"):
        Allocator().become_leader(0, NOW, 1)


def test_the_plus_one_is_load_bearing() -> None:
    """An old leader may have granted the last logical of its high-water millisecond; the new
    leader's first grant must be above it even with its clock far behind."""
    old = serving(floor=NOW, high_water=NOW)
    last_old = old.try_grant(MAX_COUNT, NOW).last
    assert last_old == pack(NOW, LOGICAL_MAX)
    plan = fence_plan(NOW, NOW - 5000, 1000)
    assert plan.floor_ms == NOW + 1 and plan.requested_ms == NOW + 1001
    new = Allocator()
    new.become_leader(plan.floor_ms, plan.requested_ms, 2)
    assert new.try_grant(1, NOW - 5000).first > last_old


@given(
    loaded=st.integers(-1, MAX_PHYSICAL - 10_000),
    now=st.integers(0, MAX_PHYSICAL - 10_000),
    advance=st.integers(0, 5000),
)
def test_fence_plan_is_above_the_high_water_and_the_clock(
    loaded: int, now: int, advance: int
) -> None:
    plan = fence_plan(loaded, now, advance)
    assert plan.floor_ms > loaded
    assert plan.floor_ms >= now
    assert plan.requested_ms == plan.floor_ms + advance


@given(
    ops=st.lists(
        st.tuples(st.integers(1, MAX_COUNT), st.integers(-10_000, 10_000)), min_size=1, max_size=60
    )
)
def test_one_leader_is_strictly_monotonic_whatever_the_clock(ops: list[tuple[int, int]]) -> None:
    a = serving(high_water=NOW + 1000)
    last = -1
    clock = NOW
    for count, jump in ops:
        clock = max(1, clock + jump)
        try:
            g = a.try_grant(count, clock)
        except WindowExhausted:
            ext = a.prepare_window_extension(clock)
            assert a.commit_window_extension(ext, ext.requested)
            g = a.try_grant(count, clock)
        assert g.count == count
        assert g.first > last
        assert g.physical_ms <= (a.high_water or -1)
        last = g.last


class ClusterOfAllocators(RuleBasedStateMachine):
    """Nodes share one durable high-water (a max register, like the TSO shard's key); at most
    one is elected at a time, and an election runs the fence's arithmetic."""

    NODES = 3

    @initialize()
    def setup(self) -> None:
        self.nodes = [Allocator(window_ahead_ms=3000) for _ in range(self.NODES)]
        self.durable = -1
        self.clock = NOW
        self.epoch = 0
        self.leader: int | None = None
        self.issued_max = -1
        self.pending: list[tuple[int, Extension]] = []

    # -- the world --------------------------------------------------------------------------------

    @rule(delta=st.integers(-3_600_000, 3_600_000))
    def clock_jumps(self, delta: int) -> None:
        self.clock = min(MAX_PHYSICAL - 20 * 3_600_000, max(1, self.clock + delta))

    @rule(delta=st.integers(0, 50))
    def clock_ticks(self, delta: int) -> None:
        self.clock += delta

    # -- leadership -------------------------------------------------------------------------------

    @rule(node=st.integers(0, NODES - 1), advance=st.integers(0, 2000))
    def elect(self, node: int, advance: int) -> None:
        """The fence: the old leader steps down, in-flight extensions drain (committed or
        lost), load, floor = max(H + 1, now), persist floor + advance, seed."""
        if self.leader is not None:
            self.nodes[self.leader].step_down()
        self.pending.clear()
        self.epoch += 1
        plan = fence_plan(self.durable, self.clock, advance)
        self.durable = max(self.durable, plan.requested_ms)
        self.nodes[node].become_leader(plan.floor_ms, self.durable, self.epoch)
        self.leader = node

    @precondition(lambda self: self.leader is not None)
    @rule()
    def step_down(self) -> None:
        assert self.leader is not None
        self.nodes[self.leader].step_down()
        self.leader = None

    # -- grants and extensions --------------------------------------------------------------------

    @precondition(lambda self: self.leader is not None)
    @rule(count=st.integers(1, MAX_COUNT))
    def grant(self, count: int) -> None:
        assert self.leader is not None
        a = self.nodes[self.leader]
        try:
            g = a.try_grant(count, self.clock)
        except WindowExhausted:
            return
        assert g.count == count
        assert g.first > self.issued_max, "a grant went backwards"
        assert g.physical_ms <= self.durable, "a grant above the durable high-water"
        self.issued_max = g.last

    @precondition(lambda self: self.leader is not None)
    @rule(renewal=st.booleans())
    def prepare(self, renewal: bool) -> None:
        assert self.leader is not None
        a = self.nodes[self.leader]
        ext = (
            a.prepare_renewal(self.clock, 250)
            if renewal
            else a.prepare_window_extension(self.clock)
        )
        self.pending.append((self.leader, ext))

    @precondition(lambda self: bool(self.pending))
    @rule(i=st.integers(0, 100), extra=st.integers(0, 100))
    def commit(self, i: int, extra: int) -> None:
        """A persisted extension (the driver may return more than asked)."""
        node, ext = self.pending.pop(i % len(self.pending))
        self.durable = max(self.durable, ext.requested + extra)
        self.nodes[node].commit_window_extension(ext, self.durable)

    @precondition(lambda self: bool(self.pending))
    @rule(i=st.integers(0, 100))
    def lose(self, i: int) -> None:
        self.pending.pop(i % len(self.pending))

    @invariant()
    def only_the_leader_serves(self) -> None:
        for i, a in enumerate(self.nodes):
            if i != self.leader:
                assert a.epoch is None
            else:
                assert a.epoch == self.epoch
                assert (a.high_water or 0) <= self.durable


TestClusterOfAllocators = ClusterOfAllocators.TestCase
TestClusterOfAllocators.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
