"""The quorum commit rule: property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.server.quorum import QuorumAckTracker


def test_rf1_commits_on_local_sync() -> None:
    t = QuorumAckTracker(1, head_offset=-1, commit_offset=-1)
    assert t.advance_head(5) == 5


def test_rf3_needs_one_follower() -> None:
    t = QuorumAckTracker(3, head_offset=-1, commit_offset=-1)
    t.add_follower("a", -1)
    t.add_follower("b", -1)
    assert t.advance_head(10) == -1
    assert t.ack("a", 4) == 4
    assert t.ack("b", 12) == 10  # never past the leader's own head
    assert t.advance_head(12) == 12
    assert t.ack("zzz", 100) == 12  # unknown followers are ignored


def test_invalid_rf() -> None:
    with pytest.raises(ValueError, match="replication factor"):
        QuorumAckTracker(0, -1, -1)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("head"), st.integers(-1, 60)),
        st.tuples(st.sampled_from(["f0", "f1", "f2", "f3"]), st.integers(-1, 60)),
        st.tuples(st.just("reset"), st.sampled_from(["f0", "f1"])),
    ),
    max_size=60,
)


@given(rf=st.integers(1, 5), ops=ops)
def test_commit_is_held_by_a_quorum_and_never_goes_back(
    rf: int, ops: list[tuple[str, object]]
) -> None:
    followers = [f"f{i}" for i in range(rf - 1)]
    t = QuorumAckTracker(rf, head_offset=-1, commit_offset=-1)
    for f in followers:
        t.add_follower(f, -1)
    head = -1
    held: dict[str, int] = dict.fromkeys(followers, -1)  # what each follower really holds
    prev_commit = -1
    for kind, arg in ops:
        if kind == "head":
            assert isinstance(arg, int)
            head = max(head, arg)
            t.advance_head(arg)
        elif kind == "reset":
            assert isinstance(arg, str)
            if arg in held:
                held[arg] = -1  # the follower lost its data
                t.reset_follower(arg, -1)
        else:
            assert isinstance(arg, int)
            if kind in held:
                # a follower acks only what it holds; acks are cumulative
                held[kind] = max(held[kind], arg)
                t.ack(kind, arg)
        c = t.commit_offset
        assert c >= prev_commit, "commit offset went back"
        if c > prev_commit:
            # At the moment it advanced, a majority (leader included) held it.
            holders = 1 + sum(1 for v in held.values() if v >= c)
            assert c <= head
            assert holders >= rf // 2 + 1
        prev_commit = c
