"""The retention rules (pure): the WAL trim plan, the check interval, the notification window.

Properties of ``plan_wal_trim`` over random logs (contiguous segments, closed ones first):
it deletes whole closed segments only, never one holding an entry above the durable commit
offset; it deletes as much as the size bound asks (up to those two limits); it never deletes a
segment whose entries are young unless the size bound asks; a follower within the size window
loses nothing; the followers it reports for a snapshot are exactly those whose next entry is
gone; and more time or a higher commit offset never trims less.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.common import keys
from pyxia.common.keys import HIERARCHICAL
from pyxia.server.retention import (
    MAX_CHECK_INTERVAL_S,
    MIN_CHECK_INTERVAL_S,
    Segment,
    TrimPlan,
    WalRetention,
    check_interval_s,
    check_retention_size,
    plan_wal_trim,
)
from pyxia.storage import reads
from pyxia.storage.db import ShardDB
from pyxia.storage.notifications import Notifications


@st.composite
def logs(draw: st.DrawFn) -> list[Segment]:
    n = draw(st.integers(0, 8))
    offset = draw(st.integers(0, 1000))
    ts = draw(st.integers(0, 10_000))
    closed = draw(st.integers(max(0, n - 2), n)) if n else 0
    closed = min(closed, max(0, n - 1))  # the last segment is always the one written
    out = []
    for i in range(n):
        length = draw(st.integers(1, 50))
        ts += draw(st.integers(0, 3000))
        size = draw(st.sampled_from([4096, 8192, 65536]))
        out.append(Segment(offset, offset + length - 1, size, ts, i < closed))
        offset += length
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Segment], WalRetention, int, int, dict[str, int]]:
    segs = draw(logs())
    first = segs[0].base if segs else 0
    end = segs[-1].last_offset + 1 if segs else 0
    retention = WalRetention(
        time_ms=draw(st.integers(0, 20_000)), size_bytes=draw(st.integers(8192, 300_000))
    )
    now = draw(st.integers(0, 60_000))
    durable = draw(st.integers(-1, end))
    followers = draw(
        st.dictionaries(
            st.sampled_from(["f1", "f2", "f3"]), st.integers(first - 5, end), max_size=3
        )
    )
    return segs, retention, now, durable, followers


def start(segs: list[Segment], k: int) -> int:
    return segs[k].base if k < len(segs) else segs[-1].last_offset + 1


def deleted(segs: list[Segment], plan: TrimPlan) -> int:
    if plan.keep_from is None:
        return 0
    return next(i for i in range(len(segs) + 1) if start(segs, i) == plan.keep_from)


@settings(max_examples=600, deadline=None)
@given(cases())
def test_plan_wal_trim_properties(
    case: tuple[list[Segment], WalRetention, int, int, dict[str, int]],
) -> None:
    segs, retention, now, durable, followers = case
    plan = plan_wal_trim(segs, retention, now_ms=now, durable_commit=durable, followers=followers)
    k = deleted(segs, plan)  # raises StopIteration if keep_from is not a segment boundary
    assert (plan.keep_from is None) == (k == 0)
    gone, kept = segs[:k], segs[k:]
    # Whole closed segments only, never above the durable commit offset.
    assert all(s.closed and s.last_offset <= durable for s in gone)
    # Each deleted segment was expired or asked for by the size bound.
    cutoff = now - retention.time_ms
    for i, s in enumerate(gone):
        over = sum(x.size_bytes for x in segs[i:]) > retention.size_bytes
        assert s.last_timestamp < cutoff or over
    # As much as the size bound asks, up to what may go at all.
    if sum(s.size_bytes for s in kept) > retention.size_bytes and kept:
        nxt = kept[0]
        assert not nxt.closed or nxt.last_offset > durable
    # The size window: what the size bound alone keeps.
    by_size = 0
    total = sum(s.size_bytes for s in segs)
    while by_size < len(segs) and segs[by_size].closed and total > retention.size_bytes:
        total -= segs[by_size].size_bytes
        by_size += 1
    window = start(segs, by_size) if segs else 0
    first = start(segs, k) if segs else None
    for name, n in followers.items():
        if n >= window and segs:
            assert first is not None and n >= first, f"{name} lost entries within the window"
        assert (name in plan.snapshot) == (first is not None and n < first)
    # A kept closed segment that could go: it is young, or a follower still needs it.
    if kept and kept[0].closed and kept[0].last_offset <= durable:
        needed = [n for n in followers.values() if n >= window]
        assert kept[0].last_timestamp >= cutoff or (needed and kept[0].last_offset >= min(needed))


@settings(max_examples=300, deadline=None)
@given(cases(), st.integers(0, 30_000), st.integers(0, 50))
def test_plan_wal_trim_is_monotonic(
    case: tuple[list[Segment], WalRetention, int, int, dict[str, int]], later: int, more: int
) -> None:
    segs, retention, now, durable, followers = case
    a = plan_wal_trim(segs, retention, now_ms=now, durable_commit=durable, followers=followers)
    b = plan_wal_trim(
        segs, retention, now_ms=now + later, durable_commit=durable + more, followers=followers
    )
    assert deleted(segs, b) >= deleted(segs, a)


def seg(base: int, last: int, ts: int, closed: bool = True, size: int = 100) -> Segment:
    return Segment(base, last, size, ts, closed)


def test_plan_examples() -> None:
    log = [seg(0, 9, 1000), seg(10, 19, 2000), seg(20, 29, 3000), seg(30, 35, 4000, False)]
    big = WalRetention(time_ms=1500, size_bytes=10_000)
    # Nothing expired yet.
    assert plan_wal_trim(log, big, now_ms=2400, durable_commit=35) == TrimPlan(None, frozenset())
    # Time: the first two segments are older than 1.5 s at t=3600.
    assert plan_wal_trim(log, big, now_ms=3600, durable_commit=35).keep_from == 20
    # ... but never past what is applied and durable here.
    assert plan_wal_trim(log, big, now_ms=3600, durable_commit=15).keep_from == 10
    assert plan_wal_trim(log, big, now_ms=3600, durable_commit=8).keep_from is None
    # A follower within the size window holds the time rule back ...
    p = plan_wal_trim(log, big, now_ms=3600, durable_commit=35, followers={"f": 12})
    assert p == TrimPlan(10, frozenset())
    # ... not the size bound: 250 bytes keep two segments; f is behind them: snapshot.
    small = WalRetention(time_ms=1500, size_bytes=250)
    p = plan_wal_trim(log, small, now_ms=0, durable_commit=35, followers={"f": 12, "g": 25})
    assert p == TrimPlan(20, frozenset({"f"}))
    # The segment being written never goes, whatever the size.
    tiny = WalRetention(time_ms=0, size_bytes=1)
    assert plan_wal_trim(log, tiny, now_ms=10**9, durable_commit=35).keep_from == 30
    assert plan_wal_trim([], tiny, now_ms=10**9, durable_commit=35) == TrimPlan(None, frozenset())


def test_check_interval_is_a_fraction_of_the_retention() -> None:
    assert check_interval_s(3600) == MAX_CHECK_INTERVAL_S
    assert check_interval_s(2.0) == pytest.approx(0.1)
    assert check_interval_s(100.0) == pytest.approx(5.0)
    assert check_interval_s(3600, 40.0) == pytest.approx(2.0)  # the shorter one decides
    assert check_interval_s(0.01) == MIN_CHECK_INTERVAL_S


def test_retention_size_must_hold_two_segments() -> None:
    check_retention_size(2 * 4096, 4096)
    with pytest.raises(ValueError, match="at least twice the WAL segment size"):
        check_retention_size(2 * 4096 - 1, 4096)


# ---------------------------------------------------------------------------------------------
# The notification window is a function of the log
# ---------------------------------------------------------------------------------------------


def _write_batch(db: ShardDB, offset: int, ts: int) -> None:
    n = Notifications(0, offset, ts)
    n.modified(f"k{offset}", offset, 1)
    b = db.new_batch()
    b.put(db.encoding.encode(keys.notification_key(offset)), n.seal_bytes())
    db.write(b)


def _window(db: ShardDB) -> list[int]:
    return [b.offset for b in reads.read_notifications(db, -1, max_batches=10**6)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=60),
    st.integers(0, 3000),
    st.lists(st.integers(0, 59), max_size=6),
)
def test_notification_window_does_not_depend_on_when_a_replica_trims(
    steps: list[int], retention: int, trims: list[int]
) -> None:
    """Two replicas apply the same batches (non-decreasing timestamps, as the leader stamps
    them); one trims after some of them, the other only at the end: same window."""
    with tempfile.TemporaryDirectory() as d:
        a = ShardDB(Path(d) / "a", HIERARCHICAL)
        b = ShardDB(Path(d) / "b", HIERARCHICAL)
        try:
            ts = 0
            stamps = []
            for i, step in enumerate(steps):
                ts += step
                stamps.append(ts)
                _write_batch(a, i * 2, ts)
                _write_batch(b, i * 2, ts)
                if i in trims:
                    reads.trim_notifications_window(a, retention)
            reads.trim_notifications_window(a, retention)
            reads.trim_notifications_window(b, retention)
            assert _window(a) == _window(b)
            # The window: every batch whose timestamp is after newest - retention.
            assert _window(a) == [2 * i for i, t in enumerate(stamps) if t > ts - retention]
        finally:
            a.close()
            b.close()


def test_last_notification_batch(tmp_path: Path) -> None:
    db = ShardDB(tmp_path / "db", HIERARCHICAL)
    try:
        assert reads.last_notification_batch(db) is None
        assert reads.trim_notifications_window(db, 10) == 0
        _write_batch(db, 3, 500)
        _write_batch(db, 7, 900)
        assert reads.last_notification_batch(db) == (7, 900)
        assert reads.trim_notifications_window(db, 400) == 1
        assert _window(db) == [7]
    finally:
        db.close()
