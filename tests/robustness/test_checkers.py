"""The robustness suite's checkers on hand-made histories that must pass and must fail
(including concurrent and indeterminate cases), and hypothesis properties: histories generated
from a register with known linearization points always pass; a stale read in a sequential
history always fails."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.robustness.checkers import (
    Batch,
    EphemeralOwner,
    Notif,
    SequenceFinal,
    Subscription,
    TsoCall,
    check_ephemerals,
    check_linearizability,
    check_notifications,
    check_sequences,
    check_tso,
    check_versions,
)
from pyxia.robustness.history import (
    CAS,
    CDELETE,
    DELETE,
    FAIL,
    GET,
    INFO,
    LIST,
    OK,
    PUT,
    SCAN,
    SEQ,
    History,
    Op,
    Record,
)
from pyxia.robustness.linearizability import (
    DEL,
    READ,
    WRITE,
    LinOp,
    Outcome,
    check_ops,
    minimize,
)

K = "/lin/k000"


class H:
    """A tiny DSL for hand-made histories: times in arbitrary units."""

    def __init__(self) -> None:
        self.h = History()

    def op(self, p: int, kind: str, t0: int, t1: int | None, status: str = OK, **kw: Any) -> Op:
        kw.setdefault("shard", 0)
        key = kw.pop("key", K)
        op = self.h.new(p, kind, key, t0, **kw)
        op.complete = t1
        op.status = status
        return op

    def put(self, p: int, t0: int, t1: int | None, v: str, ver: int, mc: int, **kw: Any) -> Op:
        if t1 is None:
            return self.op(p, PUT, t0, None, INFO, value=v, **kw)
        return self.op(p, PUT, t0, t1, value=v, result="ok", version=ver, mod_count=mc, **kw)

    def cas(
        self, p: int, t0: int, t1: int | None, v: str, exp: int, res: str, ver: int = 0, mc: int = 0
    ) -> Op:
        if t1 is None:
            return self.op(p, CAS, t0, None, INFO, value=v, expected=exp)
        if res == "ok":
            return self.op(
                p, CAS, t0, t1, value=v, expected=exp, result="ok", version=ver, mod_count=mc
            )
        return self.op(p, CAS, t0, t1, value=v, expected=exp, result=res)

    def get(self, p: int, t0: int, t1: int, v: str | None, ver: int = 0, mc: int = 0) -> Op:
        if v is None:
            return self.op(p, GET, t0, t1, result="not_found")
        return self.op(p, GET, t0, t1, result="found", read_value=v, version=ver, mod_count=mc)

    def delete(self, p: int, t0: int, t1: int | None, res: str | None) -> Op:
        if t1 is None:
            return self.op(p, DELETE, t0, None, INFO)
        return self.op(p, DELETE, t0, t1, result=res)

    def ok(self) -> bool:
        return not check_linearizability(self.h).violations


# -- linearizability: hand-made ------------------------------------------------------------------


def test_sequential_register_passes() -> None:
    h = H()
    h.get(0, 0, 1, None)
    h.put(0, 2, 3, "a", 1, 0)
    h.get(1, 4, 5, "a", 1, 0)
    h.put(1, 6, 7, "b", 2, 1)
    h.get(0, 8, 9, "b", 2, 1)
    h.delete(0, 10, 11, "deleted")
    h.get(1, 12, 13, None)
    h.delete(1, 14, 15, "not_found")
    assert h.ok()


def test_stale_read_fails() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.put(1, 2, 3, "b", 2, 1)
    h.get(2, 4, 5, "a", 1, 0)  # b completed before this read started
    rep = check_linearizability(h.h)
    assert len(rep.violations) == 1
    text = "\n".join(rep.violations[0].details)
    assert "#2" in text and "'a'" in text


def test_concurrent_read_may_see_old_or_new() -> None:
    for seen in (("a", 1, 0), ("b", 2, 1)):
        h = H()
        h.put(0, 0, 1, "a", 1, 0)
        h.put(1, 2, 10, "b", 2, 1)
        h.get(2, 3, 4, *seen)
        assert h.ok(), seen


def test_reads_cannot_go_back_in_time() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.put(1, 2, 20, "b", 2, 1)  # concurrent with both reads
    h.get(2, 3, 4, "b", 2, 1)
    h.get(3, 5, 6, "a", 1, 0)  # after a read that saw b: not linearizable
    assert not h.ok()


def test_lost_acknowledged_write_fails() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.get(1, 2, 3, None)
    assert not h.ok()


def test_indeterminate_write_may_apply_later_or_never() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.put(1, 2, None, "b", 0, 0)  # timed out
    h.get(2, 10, 11, "a", 1, 0)  # not (yet) applied
    h.get(2, 50, 51, "b", 2, 1)  # applied much later
    assert h.ok()
    h2 = H()
    h2.put(0, 0, 1, "a", 1, 0)
    h2.put(1, 2, None, "b", 0, 0)
    h2.get(2, 10, 11, "a", 1, 0)
    assert h2.ok()


def test_indeterminate_write_cannot_apply_before_its_invocation() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.get(2, 2, 3, "b", 2, 1)
    h.put(1, 5, None, "b", 0, 0)
    assert not h.ok()


def test_indeterminate_write_applies_at_most_once_for_cas() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.cas(1, 2, None, "b", 1, "ok")
    h.get(2, 5, 6, "b", 2, 1)
    h.put(0, 7, 8, "c", 3, 2)
    h.get(2, 9, 10, "b", 2, 1)  # b came back after c: no
    assert not h.ok()


def test_cas_must_match_the_version() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.cas(1, 2, 3, "b", 1, "ok", 2, 1)
    h.cas(2, 4, 5, "c", 1, "ok", 3, 2)  # version 1 is gone: must fail
    assert not h.ok()
    h2 = H()
    h2.put(0, 0, 1, "a", 1, 0)
    h2.cas(1, 2, 3, "b", 1, "ok", 2, 1)
    h2.cas(2, 4, 5, "c", 1, "bad_version")
    h2.cas(2, 6, 7, "c", -1, "bad_version")  # exists
    h2.cas(2, 8, 9, "d", 2, "ok", 3, 2)
    assert h2.ok()


def test_cas_bad_version_needs_a_reason() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.cas(1, 2, 3, "b", 1, "bad_version")  # nothing changed version 1
    assert not h.ok()
    h2 = H()
    h2.put(0, 0, 1, "a", 1, 0)
    h2.put(1, 2, None, "x", 0, 0)  # an indeterminate write may be the reason
    h2.cas(1, 3, 4, "b", 1, "bad_version")
    assert h2.ok()


def test_mod_counts_and_version_order() -> None:
    h = H()
    h.put(0, 0, 1, "a", 5, 0)
    h.put(0, 2, 3, "b", 4, 1)  # versions must grow
    assert not h.ok()
    h2 = H()
    h2.put(0, 0, 1, "a", 1, 0)
    h2.cas(0, 2, 3, "b", 1, "ok", 2, 5)  # not retried: mod count must be exactly +1
    assert not h2.ok()
    h3 = H()
    h3.put(0, 0, 1, "a", 1, 0)
    h3.put(0, 2, 3, "b", 3, 2)  # a plain put may have been applied twice (unobserved)
    assert h3.ok()


def test_retried_put_applied_twice_is_explained_by_observed_versions() -> None:
    # put b is sent, applied (version 2), the connection breaks, the client sends it again:
    # applied again (version 4) after c; readers saw b@2, then c, then b@4.
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.put(1, 2, 20, "b", 4, 3)
    h.get(2, 3, 4, "b", 2, 1)
    h.put(3, 5, 6, "c", 3, 2)
    h.get(2, 7, 8, "c", 3, 2)
    h.get(2, 21, 22, "b", 4, 3)
    assert h.ok()
    # the same with a compare-and-set (never re-sent): not linearizable
    h2 = H()
    h2.put(0, 0, 1, "a", 1, 0)
    h2.cas(1, 2, 20, "b", 1, "ok", 4, 3)
    h2.get(2, 3, 4, "b", 2, 1)
    h2.put(3, 5, 6, "c", 3, 2)
    h2.get(2, 7, 8, "c", 3, 2)
    h2.get(2, 21, 22, "b", 4, 3)
    assert not h2.ok()


def test_retried_delete_applied_twice() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.delete(1, 2, 20, "deleted")  # first application removed a, the second b
    h.get(2, 3, 4, None)
    h.put(3, 5, 6, "b", 2, 0)
    h.get(2, 7, 8, "b", 2, 0)
    h.get(2, 21, 22, None)
    assert h.ok()


def test_lists_and_scans_are_reads_of_each_key() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.op(1, LIST, 2, 3, key="/lin/k000", end="/lin/k005", keys=["/lin/k000"])
    h.op(1, SCAN, 4, 5, key="/lin/k000", end="/lin/k005", records=[Record(K, "a", 1, 0)])
    h.op(1, LIST, 6, 7, key="/lin/k001", end="/lin/k005", keys=[])  # K not in range
    assert h.ok()
    h.op(1, LIST, 8, 9, key="/lin/k000", end="/lin/k005", keys=[])  # K is gone?
    assert not h.ok()


def test_failed_reads_and_unrelated_ops_are_ignored() -> None:
    h = H()
    h.put(0, 0, 1, "a", 1, 0)
    h.op(1, GET, 2, 3, FAIL, error="Unavailable")
    h.op(1, SEQ, 2, 3, key="/seq/a", value="s", result="ok", version=9, mod_count=0)
    assert h.ok()


def test_minimal_history_of_a_long_failing_history_is_short() -> None:
    h = H()
    t = 0
    for i in range(200):
        h.put(i % 4, t, t + 1, f"v{i}", i + 1, i)
        h.get((i + 1) % 4, t + 2, t + 3, f"v{i}", i + 1, i)
        t += 4
    h.get(0, t, t + 1, "v150", 151, 150)  # stale
    rep = check_linearizability(h.h)
    assert len(rep.violations) == 1
    lines = [x for x in rep.violations[0].details if x.startswith("  [")]
    assert 1 <= len(lines) <= 4, lines


def test_search_budget_reports_unknown() -> None:
    ops = [LinOp(i, 0, None, False, WRITE, value=f"v{i}") for i in range(25)]
    ops.append(LinOp(99, 100, 101, True, READ, value="nope", version=1, mod_count=0))
    assert check_ops(ops, max_steps=1000).outcome is Outcome.UNKNOWN


def test_minimize_keeps_a_failing_excerpt() -> None:
    ops = [
        LinOp(1, 0, 1, True, WRITE, value="a", version=1, mod_count=0),
        LinOp(2, 2, 3, True, DEL, result="deleted"),
        LinOp(3, 4, 5, True, READ, value="a", version=1, mod_count=0),
    ]
    m = minimize(ops)
    assert check_ops(m.ops, initial=m.initial).outcome is Outcome.VIOLATION
    assert m.ops[-1].source == 3


# -- linearizability: properties ------------------------------------------------------------------


def _simulate(seed: int, n: int, overlap: int, faults: bool) -> History:
    """A history of one register, generated from known linearization points: always
    linearizable. Intervals are random around the points; some writes are indeterminate
    (applied or not), some plain puts/deletes are applied twice (client retries)."""
    rng = random.Random(seed)
    h = History()
    state: tuple[str, int, int] | None = None
    next_version = 1
    t = 0
    pending_second: list[tuple[int, Op]] = []  # (at point index, op) second applications
    seen: set[int] = set()  # versions some operation returned

    def apply_put(op: Op, value: str) -> tuple[int, int]:
        nonlocal state, next_version
        v = next_version
        next_version += 1
        mc = 0 if state is None else state[2] + 1
        state = (value, v, mc)
        return v, mc

    for i in range(n):
        t += 10
        point = t
        for at, op in [x for x in pending_second if x[0] == i]:
            pending_second.remove((at, op))
            if op.kind == PUT:
                assert op.value is not None
                op.version, op.mod_count = apply_put(op, op.value)
            else:
                op.result = "deleted" if state is not None else "not_found"
                state = None
            op.complete = point + rng.randint(1, overlap)
        kind = rng.choice([PUT, PUT, CAS, GET, GET, GET, DELETE, CDELETE])
        inv = point - rng.randint(1, overlap)
        ret = point + rng.randint(1, overlap)
        p = rng.randrange(5)
        indeterminate = faults and kind in (PUT, CAS, DELETE, CDELETE) and rng.random() < 0.15
        twice = faults and kind in (PUT, DELETE) and not indeterminate and rng.random() < 0.15
        applied = not indeterminate or rng.random() < 0.5
        op = h.new(p, kind, K, inv)
        op.shard = 0
        op.complete = ret
        op.status = OK
        if kind == PUT:
            op.value = f"v{i}"
            if applied:
                op.version, op.mod_count = apply_put(op, op.value)
                op.result = "ok"
            if twice:
                pending_second.append((i + rng.randint(1, 3), op))
                op.complete = None
        elif kind == CAS:
            op.value = f"v{i}"
            # as in the workload: a version some operation saw (a read, a put's answer)
            cur = state[1] if state is not None else -1
            if cur in seen and rng.random() < 0.7:
                op.expected = cur
            else:
                op.expected = rng.choice([-1, *sorted(seen)])
            if (op.expected == -1 and state is None) or (
                state is not None and op.expected == state[1]
            ):
                if applied:
                    op.version, op.mod_count = apply_put(op, op.value)
                op.result = "ok"
            else:
                op.result = "bad_version"
        elif kind == GET:
            if state is None:
                op.result = "not_found"
            else:
                op.result = "found"
                op.read_value, op.version, op.mod_count = state
        elif kind == DELETE:
            if applied:
                op.result = "deleted" if state is not None else "not_found"
                state = None
            if twice:
                pending_second.append((i + rng.randint(1, 3), op))
                op.complete = None
        else:
            op.kind = CDELETE
            cur = state[1] if state is not None else -2
            op.expected = cur if cur in seen and rng.random() < 0.7 else 12345
            if state is not None and op.expected == state[1]:
                if applied:
                    state = None
                op.result = "deleted"
            else:
                op.result = "bad_version" if op.expected != -1 else "not_found"
        if indeterminate:
            op.status = INFO
            op.complete = None
            op.result = op.version = op.mod_count = None
        elif op.version is not None and op.complete is not None:
            seen.add(op.version)
    # second applications still pending at the end happen after everything
    for _, op in pending_second:
        t += 10
        if op.kind == PUT:
            assert op.value is not None
            op.version, op.mod_count = apply_put(op, op.value)
        else:
            op.result = "deleted" if state is not None else "not_found"
            state = None
        op.complete = t + 1
    return h


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    overlap=st.integers(1, 40),
    faults=st.booleans(),
)
def test_histories_from_a_register_are_linearizable(
    seed: int, n: int, overlap: int, faults: bool
) -> None:
    h = _simulate(seed, n, overlap, faults)
    rep = check_linearizability(h)
    assert not rep.violations, "\n".join(d for v in rep.violations for d in v.details)
    assert rep.unknown == 0


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(4, 50), data=st.data())
def test_a_stale_read_in_a_sequential_history_fails(seed: int, n: int, data: Any) -> None:
    h = _simulate(seed, n, overlap=4, faults=False)  # points 10 apart, intervals < 5 wide
    writes = [o for o in h.ops if o.kind in (PUT, CAS) and o.result == "ok"]
    gets = [o for o in h.ops if o.kind == GET]
    # a read that comes after two more acknowledged writes than the one it will return
    cands = [
        (g, w)
        for g in gets
        for w in writes
        if sum(1 for x in writes if (w.complete or 0) < x.invoke and (x.complete or 0) < g.invoke)
        >= 1
        and (g.read_value != w.value)
    ]
    if not cands:
        return
    g, w = data.draw(st.sampled_from(cands))
    g.result, g.read_value, g.version, g.mod_count = "found", w.value, w.version, w.mod_count
    assert check_linearizability(h).violations


# -- versions ------------------------------------------------------------------------------------


def test_versions_unique_per_shard() -> None:
    h = H()
    h.put(0, 0, 1, "a", 7, 0)
    h.op(1, PUT, 2, 3, key="/lin/k001", value="b", result="ok", version=7, mod_count=0)
    assert check_versions(h.h, one_shard).violations
    h2 = H()
    h2.put(0, 0, 1, "a", 7, 0)
    h2.op(1, PUT, 2, 3, key="/lin/k001", value="b", result="ok", version=7, mod_count=0)
    assert not check_versions(h2.h, k001_apart).violations


def one_shard(key: str, partition_key: str | None = None) -> int:
    return 0


def k001_apart(key: str, partition_key: str | None = None) -> int:
    """The final map: ``/lin/k001`` on shard 1, every other key on shard 0."""
    return 1 if key == "/lin/k001" else 0


def test_versions_follow_the_final_map_across_a_split() -> None:
    """Two writes went to one parent shard; after a split their keys live on two children,
    which go on with the parent's counter: the same version on both sides is no violation,
    and each child's versions grow in real time on their own."""
    h = H()
    h.put(0, 0, 1, "a", 7, 0)  # on the parent (shard 0 at the time)
    h.op(1, PUT, 2, 3, key="/lin/k001", value="b", result="ok", version=8, mod_count=0)
    h.op(2, PUT, 4, 5, key="/lin/k001", value="c", result="ok", version=9, mod_count=1)
    h.op(3, PUT, 6, 7, key=h.h.ops[0].key, value="d", result="ok", version=9, mod_count=1)
    assert not check_versions(h.h, k001_apart).violations
    assert check_versions(h.h, one_shard).violations


def test_versions_increase_with_real_time_per_shard() -> None:
    h = H()
    h.put(0, 0, 1, "a", 7, 0)
    h.op(1, PUT, 2, 3, key="/lin/k001", value="b", result="ok", version=5, mod_count=0)
    assert check_versions(h.h, one_shard).violations
    h2 = H()
    h2.put(0, 0, 5, "a", 7, 0)  # concurrent: any order
    h2.op(1, PUT, 2, 3, key="/lin/k001", value="b", result="ok", version=5, mod_count=0)
    assert not check_versions(h2.h, one_shard).violations


# -- notifications -------------------------------------------------------------------------------


def _sub(name: str, batches: list[tuple[int, int, list[tuple[str, int]]]]) -> Subscription:
    s = Subscription(name, 0, caught_up=True)
    s.batches = [
        Batch(i, shard, off, tuple(Notif("modified", k, v) for k, v in ns))
        for i, (shard, off, ns) in enumerate(batches)
    ]
    return s


def test_notifications_complete_and_ordered() -> None:
    h = H()
    h.put(0, 1, 2, "a", 10, 0)
    h.put(0, 3, 4, "b", 11, 1)
    good = _sub("s", [(0, 100, [(K, 10)]), (0, 101, [(K, 11)])])
    assert not check_notifications(h.h, [good]).violations
    lost = _sub("s", [(0, 100, [(K, 10)])])
    assert check_notifications(h.h, [lost]).violations
    dup = _sub("s", [(0, 100, [(K, 10)]), (0, 100, [(K, 10)]), (0, 101, [(K, 11)])])
    assert check_notifications(h.h, [dup]).violations
    reordered = _sub("s", [(0, 101, [(K, 11)]), (0, 100, [(K, 10)])])
    assert check_notifications(h.h, [reordered]).violations
    other = _sub("t", [(0, 100, [(K, 10)]), (0, 101, [(K, 99)])])
    assert check_notifications(h.h, [good, other]).violations  # same batch, other content
    late = _sub("s", [(0, 100, [(K, 10)]), (0, 101, [(K, 11)])])
    late.caught_up = False
    assert check_notifications(h.h, [late]).violations


def test_a_parents_change_may_be_notified_by_its_child() -> None:
    """A write answered by a split parent whose batch a subscriber got from a child (the
    child's log continues the parent's; its kept batches name the child)."""
    h = H()
    h.put(0, 1, 2, "a", 10, 0)
    h.put(0, 3, 4, "b", 11, 1)
    via_child = _sub("s", [(0, 100, [(K, 10)]), (7, 101, [(K, 11)])])
    assert not check_notifications(h.h, [via_child]).violations
    lost = _sub("s", [(0, 100, [(K, 10)]), (7, 101, [("/lin/k009", 11)])])
    assert check_notifications(h.h, [lost]).violations


def test_notifications_of_one_entry_hold_one_change_per_key() -> None:
    h = H()
    h.put(0, 1, 2, "a", 10, 0)
    h.put(1, 1, 2, "b", 11, 1)  # same log entry as version 10: notified once, as 11
    h.put(0, 3, 4, "c", 12, 2)
    s = _sub("s", [(0, 100, [(K, 11)]), (0, 101, [(K, 12)])])
    assert not check_notifications(h.h, [s]).violations
    # but a version that belongs to an earlier entry is lost, not coalesced
    h.put(0, 0, 1, "z", 5, 0)
    s2 = _sub("s", [(0, 99, [("/other", 6)]), (0, 100, [(K, 11)]), (0, 101, [(K, 12)])])
    assert check_notifications(h.h, [s2]).violations


def test_notifications_only_owed_after_the_subscription() -> None:
    h = H()
    h.put(0, 1, 2, "a", 10, 0)
    h.put(0, 30, 31, "b", 11, 1)
    s = _sub("s", [(0, 101, [(K, 11)])])
    s.connected_at = 20
    assert not check_notifications(h.h, [s]).violations


# -- sequences -----------------------------------------------------------------------------------


def _seq(h: H, t0: int, t1: int | None, n: int | None, v: str) -> Op:
    key = f"/seq/a-{n:020d}" if n is not None else None
    return h.op(
        0,
        SEQ,
        t0,
        t1,
        OK if t1 is not None else INFO,
        key="/seq/a",
        value=v,
        result="ok" if t1 is not None else None,
        result_key=key,
        version=n,
        mod_count=0,
    )


def test_sequences() -> None:
    h = H()
    _seq(h, 0, 1, 1, "x")
    _seq(h, 2, 3, 2, "y")
    _seq(h, 4, None, None, "z")  # indeterminate: applied
    recs = {f"/seq/a-{i:020d}": v for i, v in ((1, "x"), (2, "y"), (3, "z"))}
    assert not check_sequences(
        h.h, [SequenceFinal("/seq/a", recs, [[recs and k for k in recs]])]
    ).violations
    gap = {k: v for k, v in recs.items() if v != "y"}
    assert check_sequences(h.h, [SequenceFinal("/seq/a", gap)]).violations  # lost + gap
    invented = {**recs, f"/seq/a-{4:020d}": "?"}
    assert check_sequences(h.h, [SequenceFinal("/seq/a", invented)]).violations
    h2 = H()
    _seq(h2, 0, 1, 2, "x")
    _seq(h2, 2, 3, 1, "y")  # later put, lower key
    recs2 = {f"/seq/a-{1:020d}": "y", f"/seq/a-{2:020d}": "x"}
    assert check_sequences(h2.h, [SequenceFinal("/seq/a", recs2)]).violations
    back = SequenceFinal("/seq/a", recs, [[f"/seq/a-{2:020d}", f"/seq/a-{1:020d}"]])
    assert check_sequences(h.h, [back]).violations


# -- ephemeral records ---------------------------------------------------------------------------

S = 1_000_000_000


def test_ephemerals() -> None:
    o = EphemeralOwner("o", {"/eph/o/0": 0}, died_at=10 * S)
    o.observations = [(12 * S, "/eph/o/0", True), (14 * S, "/eph/o/0", False)]
    assert not check_ephemerals([o], 3 * S, 2 * S, [], {}).violations
    late = EphemeralOwner("o", {"/eph/o/0": 0}, died_at=10 * S)
    late.observations = [(16 * S, "/eph/o/0", True), (17 * S, "/eph/o/0", False)]
    assert check_ephemerals([late], 3 * S, 2 * S, [], {}).violations
    # a leader change of its shard at 14s restarts the clock; a fault until 15s too
    assert not check_ephemerals([late], 3 * S, 2 * S, [], {0: [14 * S]}).violations
    assert not check_ephemerals([late], 3 * S, 2 * S, [(11 * S, 15 * S)], {}).violations
    never = EphemeralOwner("o", {"/eph/o/0": 0}, died_at=10 * S)
    never.observations = [(11 * S, "/eph/o/0", True)]
    assert check_ephemerals([never], 3 * S, 2 * S, [], {}).violations


# -- TSO -----------------------------------------------------------------------------------------


def test_tso() -> None:
    ok = [TsoCall(0, 0, 1, 10, 5), TsoCall(1, 2, 3, 15, 1), TsoCall(2, 2, 9, 16, 3)]
    assert not check_tso(ok).violations
    back = [TsoCall(0, 0, 1, 10, 5), TsoCall(1, 2, 3, 14, 1)]  # after 10..14 was received
    assert check_tso(back).violations
    concurrent = [TsoCall(0, 0, 5, 20, 1), TsoCall(1, 1, 6, 10, 1)]  # overlap: any order
    assert not check_tso(concurrent).violations
    twice = [TsoCall(0, 0, 5, 20, 3), TsoCall(1, 1, 6, 21, 1)]
    assert check_tso(twice).violations


def test_describe_covers_every_kind() -> None:
    h = H()
    ops = [
        h.put(0, 0, 1, "a", 1, 0),
        h.cas(0, 0, None, "a", 1, "ok"),
        h.get(0, 0, 1, None),
        h.delete(0, 0, 1, "deleted"),
        h.op(0, CDELETE, 0, 1, expected=3, result="bad_version"),
        h.op(0, LIST, 0, 1, end="/z", keys=[]),
        h.op(0, SCAN, 0, 1, end="/z", records=[]),
        _seq(h, 0, 1, 1, "x"),
    ]
    for op in ops:
        assert op.describe()
    assert Op.from_json(ops[0].to_json()) == ops[0]


# -- the oracle's sequences and leases -------------------------------------------------------------


def test_tso_sequences_clean_and_with_uncertain_gaps() -> None:
    from pyxia.robustness.checkers import TsoSeqCall, check_tso_sequences

    calls = [
        TsoSeqCall(1, 0, 10, "k", 3, 0),
        TsoSeqCall(2, 5, 15, "k", 2, 3),
        TsoSeqCall(1, 20, 30, "k", 4, None),  # unknown outcome: spent
        TsoSeqCall(1, 31, 40, "k", 1, 9),
    ]
    r = check_tso_sequences(calls)
    assert r.violations == [] and "1 of unknown outcome" in r.checked


def test_tso_sequences_catch_reuse_gaps_and_going_back() -> None:
    from pyxia.robustness.checkers import TsoSeqCall, check_tso_sequences

    twice = [TsoSeqCall(1, 0, 10, "k", 3, 0), TsoSeqCall(2, 0, 10, "k", 2, 2)]
    assert "twice" in check_tso_sequences(twice).violations[0].summary
    gap = [TsoSeqCall(1, 0, 10, "k", 3, 0), TsoSeqCall(2, 11, 20, "k", 2, 5)]
    assert "never handed out" in check_tso_sequences(gap).violations[0].summary
    back = [TsoSeqCall(1, 0, 10, "k", 3, 3), TsoSeqCall(2, 11, 20, "k", 3, 0)]
    assert any("below" in v.summary for v in check_tso_sequences(back).violations)


def test_tso_leases_clean_history() -> None:
    from pyxia.robustness.checkers import TsoLeaseCall, check_tso_leases

    calls = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 1, 1, 6000, 6000),
        TsoLeaseCall(1, 20, 30, 1020, 1030, "acquire", b"h", 1, 1, 6000, 6000),  # idempotent
        TsoLeaseCall(1, 40, 50, 1040, 1050, "renew", b"h", 1, 1, 6040, 6040),
        TsoLeaseCall(1, 60, 70, 1060, 1070, "acquire", b"h", 2, 2, 6060, 6060),  # supersedes
        TsoLeaseCall(1, 80, 90, 1080, 1090, "release", b"h", 2, 2),
        TsoLeaseCall(1, 100, 110, 1100, 1110, "acquire", b"h", 2, 3, 6100, 6100),  # after release
    ]
    assert check_tso_leases(calls).violations == []


def test_tso_leases_judge_an_acquire_by_its_answer_not_its_invoke() -> None:
    """Seed 3 under load: lease 106 (epoch 28) expired at E on the server; the next acquire at
    epoch 28 was sent 1.3 s before E but waited behind the oracle's writes and was decided
    after E, as a fresh lease 109. Not two holders: 106 was gone when 109 was granted."""
    from pyxia.robustness.checkers import TsoLeaseCall, check_tso_leases

    e = 1_796_429_529_533
    ms = 1_000_000  # history times are ns
    expired_during_the_call = [
        TsoLeaseCall(
            1, 0, 10 * ms, e - 8_700, e - 8_690, "acquire", b"h", 28, 106, e - 3_700, e - 3_700
        ),
        TsoLeaseCall(1, 20 * ms, 30 * ms, e - 5_300, e - 5_000, "renew", b"h", 28, 106, e, e),
        TsoLeaseCall(
            1,
            40 * ms,
            2_000 * ms,
            e - 1_300,
            e + 600,
            "acquire",
            b"h",
            28,
            109,
            e + 5_500,
            e + 5_500,
        ),
    ]
    assert check_tso_leases(expired_during_the_call).violations == []
    # The same acquire answered while 106 still had 1.5 s to run is two holders.
    answered_early = [*expired_during_the_call[:2]]
    answered_early.append(
        TsoLeaseCall(
            1,
            40 * ms,
            200 * ms,
            e - 1_700,
            e - 1_500,
            "acquire",
            b"h",
            28,
            109,
            e + 3_300,
            e + 3_300,
        )
    )
    (v,) = check_tso_leases(answered_early).violations
    assert "lease 109 granted while lease 106 of the same epoch was live" in v.summary


def test_tso_leases_a_release_of_unknown_outcome_may_have_happened() -> None:
    from pyxia.robustness.checkers import TsoLeaseCall, check_tso_leases

    calls = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 1, 1, 9000, 9000),
        TsoLeaseCall(1, 20, 5020, 1020, 6020, "release-unknown", b"h", 1, 1),
        TsoLeaseCall(1, 5030, 5040, 6030, 6040, "acquire", b"h", 1, 2, 11030, 11030),
    ]
    assert check_tso_leases(calls).violations == []
    answered = [calls[0], calls[2]]  # no release sent: lease 1 was live (until 9000)
    assert "same epoch was live" in check_tso_leases(answered).violations[0].summary


def test_tso_leases_catch_two_holders() -> None:
    from pyxia.robustness.checkers import TsoLeaseCall, check_tso_leases

    same_epoch = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 1, 1, 9000, 9000),
        TsoLeaseCall(2, 20, 30, 1020, 1030, "acquire", b"h", 1, 2, 9020, 9020),
    ]
    assert "same epoch was live" in check_tso_leases(same_epoch).violations[0].summary
    lower = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 5, 1, 9000, 9000),
        TsoLeaseCall(2, 20, 30, 1020, 1030, "acquire", b"h", 4, 2, 9020, 9020),
    ]
    assert "acquired while epoch" in check_tso_leases(lower).violations[0].summary
    shared = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 1, 7, 9000, 9000),
        TsoLeaseCall(2, 0, 10, 1000, 1010, "acquire", b"g", 1, 7, 9000, 9000),
    ]
    assert "given to" in check_tso_leases(shared).violations[0].summary
    down = [
        TsoLeaseCall(1, 0, 10, 1000, 1010, "acquire", b"h", 1, 1, 9000, 9000),
        TsoLeaseCall(1, 20, 30, 1020, 1030, "renew", b"h", 1, 1, 8000, 9100),
    ]
    assert "went down" in check_tso_leases(down).violations[0].summary
