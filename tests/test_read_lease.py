"""Read leases (read_index.py, read_lease.py): a follower that answers a confirmation round
promises not to answer a newer NewTerm for a while, so the leader holding a majority's
promises serves linearizable reads without a round each.

The pure rule (the leader's lease never outlives a majority's promises; a follower's NewTerm
answer waits out its promise, also across a restart), then real data servers in-process: reads
under a lease take few rounds, and a leader deposed without being told never serves a stale
read while its followers' promises make the new election wait — the control run, where the
followers do not wait, shows the check catches the stale reads.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import click
import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster import Cluster, leader_controller
from pyxia.cli import main
from pyxia.server.leader_controller import LEADER
from pyxia.server.read_index import LEASE_SAFETY, LeadershipConfirmations
from pyxia.server.read_lease import READ_LEASE_S, LeasePromises
from servers import wait_until
from test_replication import SHARD, read, write

# -- the pure rule: the leader's side ---------------------------------------------------------


def test_a_majority_of_promises_gives_a_lease_until_the_kth_latest_expires() -> None:
    rc = LeadershipConfirmations(5)  # the leader and two followers
    r1 = rc.request()
    rc.on_sent(r1, now=10.0)
    rc.ack("f1", r1, lease_s=1.0)
    assert not rc.leased(10.1)  # one promise: not a majority
    r2 = rc.request()
    rc.on_sent(r2, now=10.5)
    rc.ack("f2", r2, lease_s=1.0)
    rc.ack("f3", r2, lease_s=1.0)
    # Expiries 10.9, 11.4, 11.4: the second latest counts.
    assert rc.lease_until() == pytest.approx(10.5 + LEASE_SAFETY)
    assert rc.leased(11.3) and not rc.leased(10.5 + LEASE_SAFETY)
    rc.remove_follower("f2")
    assert rc.lease_until() == pytest.approx(10.0 + LEASE_SAFETY)


def test_no_promise_no_lease() -> None:
    """A follower of an older version answers without a promise (lease 0): reads wait for
    rounds as before; so does a round whose send time is unknown."""
    rc = LeadershipConfirmations(3)
    r1 = rc.request()
    rc.on_sent(r1, now=1.0)
    rc.ack("old", r1, lease_s=0.0)
    assert rc.is_confirmed(r1) and not rc.leased(1.0)
    r2 = rc.request()
    rc.on_sent(r2)  # no clock
    rc.ack("new", r2, lease_s=1.0)
    assert rc.lease_until() == -math.inf
    assert LeadershipConfirmations(1).leased(1e12)  # RF=1: nobody else can be elected


def test_renewal_is_due_at_half_the_lease_with_no_round_in_flight() -> None:
    rc = LeadershipConfirmations(3)
    r1 = rc.request()
    rc.on_sent(r1, now=0.0)
    rc.ack("f1", r1, lease_s=1.0)
    half = LEASE_SAFETY / 2
    assert not rc.renewal_due(half - 0.01)
    assert rc.renewal_due(half + 0.01)
    rc.request()  # the renewal round: requested, not yet answered
    assert not rc.renewal_due(half + 0.01)


@dataclass
class _Follower:
    sent: int = 0  # newest round its stream carried
    answers: list[tuple[float, float]] = field(default_factory=list)  # (at, promised until)


@given(
    st.integers(2, 7),
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.floats(0.0, 0.5)),
            st.tuples(st.just("read")),
            st.tuples(st.just("send"), st.integers(0, 6)),
            st.tuples(st.just("ack"), st.integers(0, 6), st.sampled_from([0.0, 0.3, 1.0])),
        ),
        max_size=80,
    ),
)
def test_a_lease_never_outlives_a_majority_of_promises(
    rf: int, steps: list[tuple[Any, ...]]
) -> None:
    """Model: one clock; a follower answers the newest round its stream carried, at the time
    of the answer, promising ``lease`` from then. Whenever the leader says it holds a lease,
    ``rf // 2`` followers each promised past that moment (the leader counts itself)."""
    rc = LeadershipConfirmations(rf)
    followers = {f"f{i}": _Follower() for i in range(rf - 1)}
    names = sorted(followers)
    now = 0.0
    for step in steps:
        if step[0] == "tick":
            now += step[1]
        elif step[0] == "read":
            rc.request()
        else:
            name = names[step[1] % len(names)]
            f = followers[name]
            if step[0] == "send":
                r = rc.to_send(f.sent, name)
                if r:
                    f.sent = r
                    rc.on_sent(r, now)
            elif f.sent:
                rc.ack(name, f.sent, step[2])
                f.answers.append((now, now + step[2] if step[2] else -math.inf))
        if rc.leased(now):
            holding = sum(
                1
                for f in followers.values()
                if f.answers and max(until for _, until in f.answers) > now
            )
            assert holding >= rf // 2


# -- the pure rule: the follower's side -------------------------------------------------------


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_new_term_waits_out_the_promise_and_the_restart_grace() -> None:
    clock = _Clock(100.0)
    p = LeasePromises(0.2, clock)
    # Just started: a previous process may have promised; nothing is answered before 100.2.
    assert p.wait_s(7) == pytest.approx(0.2)
    clock.t = 100.3
    assert p.wait_s(7) == 0.0
    assert p.grant(7) == 200
    assert p.wait_s(7) == pytest.approx(0.2) and p.wait_s(8) == 0.0
    clock.t = 100.4
    assert p.wait_s(7) == pytest.approx(0.1)
    clock.t = 100.6
    assert p.wait_s(7) == 0.0


def test_a_zero_lease_promises_nothing_and_bounds_are_checked() -> None:
    clock = _Clock(0.0)
    off = LeasePromises(0.0, clock)
    assert off.grant(1) == 0 and off.wait_s(1) == 0.0
    with pytest.raises(ValueError, match="within"):
        LeasePromises(-1.0)
    with pytest.raises(ValueError, match="within"):
        LeasePromises(6.0)


# -- in-process: 3 data servers driven through the coordination RPCs ----------------------------

LEASE_S = 1.5  # long, so that the race below is wide open in the control run


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"read_lease_s": LEASE_S}


async def test_reads_under_a_lease_take_one_round_per_half_lease(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"])
    assert (await read(cluster, n0, ["/a"]))[0].value == b"v"  # round 1 brings the promises
    rc = leader_controller(n0, SHARD).confirmations
    assert rc is not None
    await wait_until(lambda: rc.leased(time.monotonic()), 5, "a lease")
    before, started = rc.sent, time.monotonic()
    reads = 0
    while reads < 200:
        assert (await read(cluster, n0, ["/a"]))[0].value == b"v"
        reads += 1
    elapsed = time.monotonic() - started
    rounds = rc.sent - before
    assert rounds <= 1 + elapsed / (LEASE_S * LEASE_SAFETY / 2), (rounds, elapsed)
    assert rc.leased(time.monotonic()) or rc.requested > rc.confirmed()


@pytest.mark.parametrize("followers_wait", [True, False], ids=["lease", "no-wait-control"])
async def test_a_deposed_unaware_leader_never_serves_a_stale_read(
    cluster: Cluster, followers_wait: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n0 leads and serves reads from its lease; n1 and n2 elect a successor among themselves
    (n0 is not told, as if it were cut off) which overwrites the key. A read of n0 that began
    after the overwrite was acknowledged must see it or fail, never the old value: the
    followers answered the NewTerm only once their promises to n0 lapsed, and n0 stopped
    serving before that. The control run (followers that do not wait) serves stale reads."""
    if not followers_wait:
        monkeypatch.setattr(LeasePromises, "wait_s", lambda self, shard: 0.0)
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"], b"old")
    lc = leader_controller(n0, SHARD)
    lc.read_confirm_timeout_s = 0.2  # n0's reads fail fast once its lease is gone
    rc = lc.confirmations
    assert rc is not None
    records: list[tuple[float, float, bytes | None]] = []  # (began, ended, value or failed)
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                value: bytes | None = (await read(cluster, n0, ["/a"]))[0].value
            except grpc.aio.AioRpcError:
                value = None
                await asyncio.sleep(0.002)
            records.append((began, time.monotonic(), value))

    task = asyncio.get_running_loop().create_task(reader())
    try:
        await wait_until(lambda: len(records) >= 20 and rc.leased(time.monotonic()), 10, "reads")
        fence_began = time.monotonic()
        heads = {n.internal: await cluster.new_term(n, SHARD, 2) for n in (n1, n2)}
        fenced = time.monotonic()
        best = max(heads, key=lambda k: (heads[k].term, heads[k].offset))
        successor = n1 if best == n1.internal else n2
        await cluster._become_leader(SHARD, successor, 2, 3, heads)
        await wait_until(
            lambda: leader_controller(successor, SHARD).status == LEADER, 10, "a new leader"
        )
        await write(cluster, successor, ["/a"], b"new")
        overwritten = time.monotonic()
        await wait_until(
            lambda: sum(1 for r in records if r[0] > overwritten) >= 5, 10, "later reads of n0"
        )
    finally:
        stop.set()
        await task
    stale = [r for r in records if r[0] > overwritten and r[2] == b"old"]
    if followers_wait:
        assert stale == []
        # The lease was exercised: n0 served reads while the NewTerm answers waited.
        assert any(fence_began < r[0] and r[2] == b"old" for r in records)
        assert fenced - fence_began >= 0.25 * LEASE_S
        assert n1.s.director.lease_waits + n2.s.director.lease_waits >= 1
    else:
        assert stale, "the control run should serve stale reads"


async def test_a_restarted_follower_answers_no_new_term_before_its_grace(
    cluster: Cluster,
) -> None:
    """A server restarted at once forgot its promises: its first NewTerm answer waits until a
    lease after it started."""
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await write(cluster, n0, ["/a"])
    assert (await read(cluster, n0, ["/a"]))[0].value == b"v"
    await n1.stop()
    await n1.start(read_lease_s=LEASE_S)
    started = n1.s.director.lease_promises._started
    await cluster.rejoin(n1)
    await cluster.new_term(n1, SHARD, 2)
    assert time.monotonic() - started >= LEASE_S
    assert n1.s.director.lease_waits == 1


def test_the_read_lease_flag() -> None:
    cmd = main.get_command(click.Context(main), "server")
    assert cmd is not None
    assert cmd.make_context("server", []).params["read_lease"] == pytest.approx(READ_LEASE_S)
    assert cmd.make_context("server", ["--read-lease", "0"]).params["read_lease"] == 0.0
    assert cmd.make_context("server", ["--read-lease", "1s"]).params["read_lease"] == 1.0
    for bad in ("6s", "5001ms"):
        with pytest.raises(click.BadParameter, match="within 0 and 5"):
            cmd.make_context("server", ["--read-lease", bad])
