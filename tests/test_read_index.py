"""Linearizable reads: a leader serves a read only after a majority of its ensemble confirmed,
after the read arrived, that it still leads its term (read_index.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster import Cluster, leader_controller
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.server.read_index import LeadershipConfirmations
from servers import wait_until
from test_replication import SHARD, read, write

# -- the pure rule ----------------------------------------------------------------------------


def test_rf1_needs_no_confirmation() -> None:
    rc = LeadershipConfirmations(1)
    assert not rc.needed
    assert rc.is_confirmed(rc.request())


def test_a_round_sent_before_a_read_arrived_does_not_confirm_it() -> None:
    rc = LeadershipConfirmations(3)
    first = rc.request()
    assert rc.to_send(0) == first
    rc.on_sent(first)
    late = rc.request()  # arrives after round `first` went out
    assert late > first
    rc.ack("f1", first)
    assert rc.is_confirmed(first) and not rc.is_confirmed(late)
    rc.ack("f2", late)
    assert rc.is_confirmed(late)


def test_reads_before_a_round_goes_out_share_it() -> None:
    rc = LeadershipConfirmations(5)
    a, b = rc.request(), rc.request()
    assert a == b
    rc.on_sent(a)
    rc.ack("f1", a)
    assert not rc.is_confirmed(a)  # RF=5: two followers besides the leader
    rc.ack("f2", a)
    assert rc.is_confirmed(a)


def test_a_round_goes_first_to_the_followers_that_answered_earliest() -> None:
    rc = LeadershipConfirmations(5)
    assert rc.preferred() is None  # nobody answered yet: every follower
    r1 = rc.request()
    assert all(rc.to_send(0, f) == r1 for f in ("f1", "f2", "f3", "f4"))
    rc.on_sent(r1)
    for f in ("f3", "f1", "f4"):
        rc.ack(f, r1)
    assert rc.preferred() == ["f3", "f1"]
    r2 = rc.request()
    assert [f for f in ("f1", "f2", "f3", "f4") if rc.to_send(r1, f)] == ["f1", "f3"]
    rc.on_sent(r2)
    rc.ack("f1", r2)
    assert not rc.is_confirmed(r2)
    assert rc.escalate(r2) and not rc.escalate(r2)
    assert rc.to_send(r1, "f4") == r2 and rc.to_send(0, "f2") == r2
    rc.ack("f4", r2)
    assert rc.is_confirmed(r2)
    assert rc.preferred() == ["f1", "f4"]
    rc.remove_follower("f1")
    assert rc.preferred() == ["f4", "f3"]


@given(
    st.integers(1, 7),
    st.lists(
        st.one_of(
            st.tuples(st.just("read")),
            st.tuples(st.just("send"), st.integers(0, 6)),
            st.tuples(st.just("ack"), st.integers(0, 6)),
            st.tuples(st.just("escalate")),
        ),
        max_size=80,
    ),
)
def test_a_confirmed_read_had_a_majority_answer_a_round_sent_after_it_arrived(
    rf: int, steps: list[tuple[object, ...]]
) -> None:
    """Model: each follower's stream carries rounds (to the preferred followers first, to every
    one once escalated); a follower answers the newest round it was sent. A read is confirmed
    only when rf//2 followers answered a round that was sent after the read arrived."""
    rc = LeadershipConfirmations(rf)
    followers = [f"f{i}" for i in range(rf - 1)]
    sent_to: dict[str, int] = dict.fromkeys(followers, 0)
    sent_at: dict[int, int] = {}  # round -> step at which it first went out
    reads: list[tuple[int, int]] = []  # (arrival step, round)
    for i, step in enumerate(steps):
        if step[0] == "read":
            reads.append((i, rc.request()))
        elif step[0] == "escalate":
            if reads:
                rc.escalate(reads[-1][1])
        elif followers:
            f = followers[int(step[1]) % len(followers)]  # type: ignore[call-overload]
            if step[0] == "send":
                r = rc.to_send(sent_to[f], f)
                if r:
                    sent_to[f] = r
                    rc.on_sent(r)
                    sent_at.setdefault(r, i)
            else:
                rc.ack(f, sent_to[f])
        for arrived, r in reads:
            if rc.is_confirmed(r) and rf > 1:
                assert r in sent_at and sent_at[r] > arrived


@given(st.integers(2, 7), st.data())
def test_an_escalated_read_is_confirmed_by_any_majority_of_followers(
    rf: int, data: st.DataObject
) -> None:
    """Liveness: whichever followers answer, once a read escalates, every follower is sent a
    round that covers it, so any rf//2 of them confirm it."""
    rc = LeadershipConfirmations(rf)
    followers = [f"f{i}" for i in range(rf - 1)]
    sent_to = dict.fromkeys(followers, 0)
    for _ in range(data.draw(st.integers(0, 5))):  # some history of preferences
        rc.request()
        for f in data.draw(st.permutations(followers)):
            r = rc.to_send(sent_to[f], f)
            if r:
                sent_to[f] = r
                rc.on_sent(r)
                if data.draw(st.booleans()):
                    rc.ack(f, r)
    read = rc.request()
    rc.escalate(read)
    answering = data.draw(st.permutations(followers))[: rf // 2]
    for f in answering:
        r = rc.to_send(sent_to[f], f) or sent_to[f]
        sent_to[f] = r
        rc.on_sent(r)
        rc.ack(f, r)
    assert rc.is_confirmed(read)


# -- in-process: 3 data servers driven through the coordination RPCs ----------------------------
# Without read leases (test_read_lease.py has them): every read waits for a round.


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"read_lease_s": 0.0}


async def test_a_fenced_majority_makes_the_old_leader_refuse_reads(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"])
    assert (await read(cluster, n0, ["/a"]))[0].value == b"v"
    lc = leader_controller(n0, SHARD)
    lc.read_confirm_timeout_s = 0.5
    # A coordinator fences the two followers at a newer term (n0 is not told: it is cut off).
    await cluster.new_term(n1, SHARD, 2)
    await cluster.new_term(n2, SHARD, 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(cluster, n0, ["/a"])
    e = error_from_rpc(err.value)
    assert e.reason == "NODE_IS_NOT_LEADER"  # type: ignore[attr-defined]


async def test_one_follower_down_still_confirms(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"])
    await n2.stop()
    got = await read(cluster, n0, ["/a"])  # the leader and n1 are a majority
    assert got[0].value == b"v"
    sent = leader_controller(n0, SHARD).confirmations
    assert sent is not None and sent.confirmed() >= 1


async def test_a_read_escalates_past_a_stopped_preferred_follower(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"])
    lc = leader_controller(n0, SHARD)
    await read(cluster, n0, ["/a"])  # round 1 goes to both followers
    rc = lc.confirmations
    assert rc is not None
    await wait_until(lambda: rc.answered(n1.internal) and rc.answered(n2.internal), 5, "answers")
    (first,) = rc.preferred() or []
    asked_first, other = (n1, n2) if first == n1.internal else (n2, n1)
    await asked_first.stop()
    # The round goes to the stopped follower alone, is escalated after read_escalate_s, and
    # the other follower's answer confirms it; that follower is asked first from then on.
    got = await read(cluster, n0, ["/a"])
    assert got[0].value == b"v"
    assert rc.escalated >= 2
    assert rc.preferred() == [other.internal]
    escalated = rc.escalated
    assert (await read(cluster, n0, ["/a"]))[0].value == b"v"
    assert rc.escalated == escalated  # no escalation needed any more
