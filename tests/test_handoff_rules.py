"""The planned-handoff rules (pure): when a stepping-down leader refuses writes, what it tells
clients, when it has drained; and the election's prefer/avoid choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.coordinator.election import Head, choose_leader
from pyxia.errors import InvalidArgument, InvalidTerm, NodeIsNotLeader
from pyxia.proto import replication_pb2
from pyxia.server import handoff
from pyxia.server.handoff import (
    Handoff,
    answered,
    begin,
    drained,
    hint_for_clients,
    refuses_writes,
)

LEADER = replication_pb2.LEADER
FENCED = replication_pb2.FENCED


def start(now: float = 100.0, drain_s: float = 5.0, term: int = 3) -> Handoff:
    return begin(
        None,
        status=LEADER,
        term=term,
        requested_term=term,
        now=now,
        drain_s=drain_s,
        leader_hint="self:6648",
        refuse_after_drain_s=15.0,
    )


def test_begin_sets_the_deadlines_and_remembers_the_stale_hint() -> None:
    h = start()
    assert h == Handoff(3, 105.0, 120.0, "self:6648")


def test_only_the_leader_of_that_term_steps_down() -> None:
    with pytest.raises(InvalidTerm):
        begin(None, status=LEADER, term=3, requested_term=2, now=0, drain_s=1, leader_hint=None)
    with pytest.raises(InvalidTerm):
        begin(None, status=LEADER, term=3, requested_term=4, now=0, drain_s=1, leader_hint=None)
    with pytest.raises(NodeIsNotLeader):
        begin(None, status=FENCED, term=3, requested_term=3, now=0, drain_s=1, leader_hint=None)


@pytest.mark.parametrize("drain_s", [-0.001, handoff.MAX_DRAIN_S + 0.001, float("nan")])
def test_a_drain_out_of_range_is_refused(drain_s: float) -> None:
    with pytest.raises(InvalidArgument):
        begin(
            None, status=LEADER, term=1, requested_term=1, now=0, drain_s=drain_s, leader_hint=None
        )


def test_a_retried_step_down_extends_and_keeps_the_stale_hint() -> None:
    h = start(now=100.0)
    again = begin(
        h,
        status=LEADER,
        term=3,
        requested_term=3,
        now=101.0,
        drain_s=5.0,
        leader_hint="other:6648",  # the assignments changed meanwhile: still not "stale"
        refuse_after_drain_s=15.0,
    )
    assert again == Handoff(3, 106.0, 121.0, "self:6648")
    # a shorter retried drain never shortens the running one
    shorter = begin(
        again, status=LEADER, term=3, requested_term=3, now=101.0, drain_s=0.0, leader_hint=None
    )
    assert shorter.drain_until == 106.0 and shorter.refuse_until == 121.0


def test_refusal_window() -> None:
    h = start(now=100.0)
    assert not refuses_writes(None, 3, 100.0)
    assert refuses_writes(h, 3, 100.0)
    assert refuses_writes(h, 3, 119.999)
    assert not refuses_writes(h, 3, 120.0)  # no NewTerm came: takes writes again
    assert not refuses_writes(h, 4, 101.0)  # a handoff of an older term means nothing


def test_once_answered_the_refusal_ends_soon() -> None:
    h = start(now=100.0)  # refuse_until 120
    a = answered(h, 101.0, wait_s=5.0)
    assert a.refuse_until == 106.0 and a.drain_until == h.drain_until
    assert answered(a, 103.0, wait_s=5.0).refuse_until == 106.0  # never later than it was
    assert answered(h, 119.0, wait_s=5.0).refuse_until == 120.0


def test_clients_are_never_sent_back_to_this_server() -> None:
    h = start()
    assert hint_for_clients(h, "self:6648") is None
    assert hint_for_clients(h, None) is None
    assert hint_for_clients(h, "") is None
    assert hint_for_clients(h, "new:6648") == "new:6648"


def test_drained_needs_nothing_pending_and_the_head_committed() -> None:
    assert drained(0, 10, 10)
    assert drained(0, -1, -1)
    assert not drained(1, 10, 10)
    assert not drained(0, 10, 9)


@given(
    now=st.floats(0, 1e6),
    drain=st.floats(0, handoff.MAX_DRAIN_S),
    after=st.floats(0, 100),
    later=st.floats(0, 1e3),
    second_drain=st.floats(0, handoff.MAX_DRAIN_S),
)
def test_deadlines_only_grow_and_refusal_ends(
    now: float, drain: float, after: float, later: float, second_drain: float
) -> None:
    h = begin(
        None,
        status=LEADER,
        term=7,
        requested_term=7,
        now=now,
        drain_s=drain,
        leader_hint="a",
        refuse_after_drain_s=after,
    )
    assert now <= h.drain_until <= h.refuse_until
    h2 = begin(
        h,
        status=LEADER,
        term=7,
        requested_term=7,
        now=now + later,
        drain_s=second_drain,
        leader_hint="b",
        refuse_after_drain_s=after,
    )
    assert h2.drain_until >= h.drain_until and h2.refuse_until >= h.refuse_until
    assert h2.stale_hint == "a"
    assert refuses_writes(h2, 7, h2.refuse_until - 1e-3) or h2.refuse_until - 1e-3 < now
    assert not refuses_writes(h2, 7, h2.refuse_until)


# -- the election's choice ------------------------------------------------------------------------


def test_prefer_wins_only_at_the_highest_head() -> None:
    heads = {"a": Head(2, 10), "b": Head(2, 10), "c": Head(2, 9)}
    ens = ["a", "b", "c"]
    assert choose_leader(heads, ens, {}, prefer="b") == "b"
    assert choose_leader(heads, ens, {}, prefer="c") == "a"  # c lags: never chosen


def test_avoid_steers_away_unless_no_one_else_has_the_head() -> None:
    heads = {"a": Head(2, 10), "b": Head(2, 10), "c": Head(2, 9)}
    ens = ["a", "b", "c"]
    assert choose_leader(heads, ens, {}, avoid={"a"}) == "b"
    assert choose_leader({"a": Head(2, 10), "c": Head(2, 9)}, ens, {}, avoid={"a"}) == "a"


@given(
    heads=st.dictionaries(
        st.sampled_from("abcde"),
        st.builds(Head, st.integers(-1, 3), st.integers(-1, 5)),
        min_size=1,
    ),
    prefer=st.none() | st.sampled_from("abcde"),
    avoid=st.sets(st.sampled_from("abcde")),
    counts=st.dictionaries(st.sampled_from("abcde"), st.integers(0, 5)),
)
def test_the_chosen_leader_always_has_the_highest_head(
    heads: dict[str, Head], prefer: str | None, avoid: set[str], counts: dict[str, int]
) -> None:
    ens = list("abcde")
    leader = choose_leader(heads, ens, counts, prefer=prefer, avoid=avoid)
    assert leader is not None
    assert heads[leader] == max(heads.values())
    top = {n for n, h in heads.items() if h == max(heads.values())}
    if prefer in top:
        assert leader == prefer
    elif top - avoid:
        assert leader not in avoid
