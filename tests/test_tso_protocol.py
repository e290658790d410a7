"""Every RPC of tsoracle's TsoService besides GetTs, on real data servers (in-process, loopback
gRPC, driven through their coordination RPCs): dense sequences (blocks, batches, bounds, the
key cap, overflow, continuity across leader changes), stamping leases (acquire, idempotent
re-acquire, supersede, refusals, renew, release, bounds, the cap, leases surviving a leader
change), the safe point and the safe frontier (leader vs followers), hints with the leader's
epoch, and the planned handoff (the old leader releases its time lease, the new one serves
without waiting it out)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from cluster import Cluster, Node, leader_controller
from pyxia import failpoints
from pyxia.node import tso_of
from pyxia.proto import tso_pb2
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.client import decode_leader_hint
from pyxia.tso.driver import RELEASED_KEY, Leading
from pyxia.tso.options import TsoOptions
from pyxia.tso.sequences import U64_MAX, counter_key, encode_counter
from servers import wait_until

OPTIONS = TsoOptions(lease_s=0.2, max_seq_keys=20, max_leases=4, window_ahead_s=0.2)
SVC = "/tsoracle.v1.TsoService/"
HINT = "tsoracle-leader-hint-bin"
R = TypeVar("R", bound=Message)


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"tso": OPTIONS, "namespace": DEFAULT_NAMESPACE}


async def rpc(c: Cluster, node: Node, method: str, req: Message, out: type[R]) -> R:
    raw = await c.channel(node.public).unary_unary(SVC + method)(
        req.SerializeToString(), timeout=10
    )
    return out.FromString(raw)


async def rpc_error(c: Cluster, node: Node, method: str, req: Message) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await c.channel(node.public).unary_unary(SVC + method)(req.SerializeToString(), timeout=10)
    return info.value


def hint(e: grpc.aio.AioRpcError) -> tuple[str | None, int | None] | None:
    for k, v in e.trailing_metadata() or ():
        if k == HINT:
            assert isinstance(v, bytes)
            h = decode_leader_hint(v)
            assert h is not None
            return h.endpoint, h.epoch
    return None


async def seq(c: Cluster, node: Node, key: str, count: int) -> tso_pb2.GetSeqResponse:
    return await rpc(
        c, node, "GetSeq", tso_pb2.GetSeqRequest(key=key, count=count), tso_pb2.GetSeqResponse
    )


async def batch(
    c: Cluster, node: Node, entries: list[tuple[str, int]]
) -> tso_pb2.GetSeqBatchResponse:
    req = tso_pb2.GetSeqBatchRequest(
        entries=[tso_pb2.SeqRequestEntry(key=k, count=n) for k, n in entries]
    )
    return await rpc(c, node, "GetSeqBatch", req, tso_pb2.GetSeqBatchResponse)


async def acquire(
    c: Cluster, node: Node, holder: bytes, epoch: int, ttl_ms: int = 5000
) -> tso_pb2.AcquireLeaseResponse:
    req = tso_pb2.AcquireLeaseRequest(holder=holder, holder_epoch=epoch, ttl_ms=ttl_ms)
    return await rpc(c, node, "AcquireLease", req, tso_pb2.AcquireLeaseResponse)


async def renew(c: Cluster, node: Node, lease_id: int) -> tso_pb2.RenewLeaseResponse:
    req = tso_pb2.RenewLeaseRequest(lease_id=lease_id)
    return await rpc(c, node, "RenewLease", req, tso_pb2.RenewLeaseResponse)


async def release(c: Cluster, node: Node, lease_id: int) -> None:
    req = tso_pb2.ReleaseLeaseRequest(lease_id=lease_id)
    await rpc(c, node, "ReleaseLease", req, tso_pb2.ReleaseLeaseResponse)


async def max_safe(c: Cluster, node: Node) -> tso_pb2.GetCurrentMaxSafeResponse:
    req = tso_pb2.GetCurrentMaxSafeRequest()
    return await rpc(c, node, "GetCurrentMaxSafe", req, tso_pb2.GetCurrentMaxSafeResponse)


async def frontier(c: Cluster, node: Node) -> tso_pb2.GetSafeFrontierResponse:
    req = tso_pb2.GetSafeFrontierRequest()
    return await rpc(c, node, "GetSafeFrontier", req, tso_pb2.GetSafeFrontierResponse)


async def serves(c: Cluster, node: Node) -> bool:
    try:
        await rpc(c, node, "GetTs", tso_pb2.GetTsRequest(count=1), tso_pb2.GetTsResponse)
        return True
    except grpc.aio.AioRpcError:
        return False


async def elect(c: Cluster, leader: Node) -> int:
    """Elects ``leader``; returns its epoch on the wire (its term + 1)."""
    term = await c.elect(0, leader, c.nodes)
    await c.push_assignments({0: leader})
    await wait_until(lambda: serves(c, leader), what="the leader to serve")
    return term + 1


def epoch(w: tso_pb2.EpochWire) -> int:
    return (w.hi << 64) | w.lo


# -- dense sequences ------------------------------------------------------------------------------


async def test_blocks_are_contiguous_per_key(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    term = await elect(cluster, n0)
    a = await seq(cluster, n0, "orders", 10)
    b = await seq(cluster, n0, "orders", 5)
    c = await seq(cluster, n0, "users", 3)
    assert (a.key, a.start, a.count, epoch(a.epoch)) == ("orders", 0, 10, term)
    assert (b.start, b.count) == (10, 5)
    assert (c.start, c.count) == (0, 3)
    r = await batch(cluster, n0, [("users", 2), ("orders", 1), ("new", 7)])
    assert [(g.key, g.start, g.count) for g in r.grants] == [
        ("users", 3, 2),
        ("orders", 15, 1),
        ("new", 0, 7),
    ]
    assert epoch(r.epoch) == term
    # A key of 128 bytes of UTF-8 (64 two-byte characters) is fine; any UTF-8 is.
    assert (await seq(cluster, n0, "é" * 64, 1)).start == 0
    assert (await seq(cluster, n0, "a/b c\u2603", 1)).start == 0


async def test_concurrent_blocks_never_overlap_and_leave_no_gap(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    counts = [1 + (i * 7) % 13 for i in range(60)]
    res = await asyncio.gather(*(seq(cluster, n0, "hot", n) for n in counts))
    blocks = sorted((r.start, r.start + r.count) for r in res)
    assert blocks[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    assert blocks[-1][1] == sum(counts)


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("", 1)], "1 to 128 bytes"),
        ([("x" * 129, 1)], "1 to 128 bytes"),
        ([("é" * 65, 1)], "1 to 128 bytes"),
        ([("k", 0)], "between 1 and"),
        ([("k", 65_537)], "between 1 and"),
        ([], "at least one entry"),
        ([("k", 1), ("k", 2)], "duplicate"),
        ([(f"k{i}", 1) for i in range(129)], "maximum is 128"),
    ],
)
async def test_bad_sequence_requests_are_invalid_argument(
    cluster: Cluster, entries: list[tuple[str, int]], why: str
) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    req = tso_pb2.GetSeqBatchRequest(
        entries=[tso_pb2.SeqRequestEntry(key=k, count=n) for k, n in entries]
    )
    e = await rpc_error(cluster, n0, "GetSeqBatch", req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and why in (e.details() or "")
    if len(entries) == 1:
        k, n = entries[0]
        e = await rpc_error(cluster, n0, "GetSeq", tso_pb2.GetSeqRequest(key=k, count=n))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing was advanced: the next block of "k" starts at 0.
    assert (await seq(cluster, n0, "k", 1)).start == 0
    e = await rpc_error(cluster, n0, "GetSeq", tso_pb2.GetTsRequest(count=3))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT  # count=3 as field 1: an undecodable key


async def test_the_key_cap_is_resource_exhausted_and_changes_nothing(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    for i in range(OPTIONS.max_seq_keys - 1):
        await seq(cluster, n0, f"k{i}", 1)
    e = await rpc_error(
        cluster,
        n0,
        "GetSeqBatch",
        tso_pb2.GetSeqBatchRequest(
            entries=[
                tso_pb2.SeqRequestEntry(key="k0", count=1),
                tso_pb2.SeqRequestEntry(key="new-a", count=1),
                tso_pb2.SeqRequestEntry(key="new-b", count=1),
            ]
        ),
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await seq(cluster, n0, "k0", 1)).start == 1  # the batch advanced nothing
    assert (await seq(cluster, n0, "last", 1)).start == 0  # one more key fits
    e = await rpc_error(cluster, n0, "GetSeq", tso_pb2.GetSeqRequest(key="one-too-many", count=1))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The count survives a leader change (it is in the shard, not in memory).
    await elect(cluster, cluster.nodes[1])
    e = await rpc_error(
        cluster, cluster.nodes[1], "GetSeq", tso_pb2.GetSeqRequest(key="again", count=1)
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await seq(cluster, cluster.nodes[1], "k5", 2)).start == 1


async def test_a_counter_never_passes_2_64(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    tso = tso_of(n0.s)
    assert tso is not None and isinstance(tso.oracle.serving, Leading)
    target = tso.oracle.serving
    await tso.oracle.driver.wait(
        tso.oracle.driver.log(target, [(counter_key("big"), encode_counter(U64_MAX - 3))]), "t"
    )
    await elect(cluster, cluster.nodes[1])  # a fresh term reads the stored counter
    n1 = cluster.nodes[1]
    e = await rpc_error(cluster, n1, "GetSeq", tso_pb2.GetSeqRequest(key="big", count=4))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e) is None  # a definite answer, not a redirect
    r = await seq(cluster, n1, "big", 3)
    assert (r.start, r.count) == (U64_MAX - 3, 3)


async def test_non_leaders_redirect_with_the_epoch(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    term = await elect(cluster, n1)
    for node in (n0, n2):
        for method, req in [
            ("GetSeq", tso_pb2.GetSeqRequest(key="k", count=1)),
            (
                "GetSeqBatch",
                tso_pb2.GetSeqBatchRequest(entries=[tso_pb2.SeqRequestEntry(key="k", count=1)]),
            ),
            ("AcquireLease", tso_pb2.AcquireLeaseRequest(holder=b"h", holder_epoch=1, ttl_ms=5000)),
            ("RenewLease", tso_pb2.RenewLeaseRequest(lease_id=1)),
            ("ReleaseLease", tso_pb2.ReleaseLeaseRequest(lease_id=1)),
        ]:
            e = await rpc_error(cluster, node, method, req)
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, method
            assert hint(e) == (n1.public, term), method
        assert (await max_safe(cluster, node)).max_safe_physical_ms == 0
        f = await frontier(cluster, node)
        assert (f.frontier_physical_ms, f.epoch_hi, f.epoch_lo) == (0, 0, 0)


async def test_sequences_continue_across_leader_changes(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    got: list[tuple[int, int]] = []
    for leader in (n0, n1, n2, n0):
        await elect(cluster, leader)
        for n in (3, 1, 4):
            r = await seq(cluster, leader, "s", n)
            got.append((r.start, r.start + r.count))
    assert got[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(got))


async def test_a_node_restart_keeps_the_counters(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    assert (await seq(cluster, n0, "r", 5)).start == 0
    for node in cluster.nodes:
        await node.stop()
    for node in cluster.nodes:
        await node.start(tso=OPTIONS)
    cluster._bound.clear()
    cluster._pushed.clear()
    await elect(cluster, n0)
    assert (await seq(cluster, n0, "r", 5)).start == 5


# -- stamping leases ------------------------------------------------------------------------------


async def test_acquire_is_idempotent_supersedes_and_refuses_older_epochs(
    cluster: Cluster,
) -> None:
    n0 = cluster.nodes[0]
    term = await elect(cluster, n0)
    before = time.time_ns() // 1_000_000
    a = await acquire(cluster, n0, b"group", 5)
    assert epoch(a.epoch) == term
    assert a.ts_upper_bound == a.expires_at_ms  # now + ttl
    assert before + 5000 <= a.expires_at_ms <= time.time_ns() // 1_000_000 + 5000
    again = await acquire(cluster, n0, b"group", 5, ttl_ms=60_000)
    assert again == a  # same holder and epoch: the live lease, unchanged
    e = await rpc_error(
        cluster,
        n0,
        "AcquireLease",
        tso_pb2.AcquireLeaseRequest(holder=b"group", holder_epoch=4, ttl_ms=5000),
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and hint(e) is None
    b = await acquire(cluster, n0, b"group", 6)
    assert b.lease_id > a.lease_id
    e = await rpc_error(cluster, n0, "RenewLease", tso_pb2.RenewLeaseRequest(lease_id=a.lease_id))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "superseded" in (e.details() or "")
    other = await acquire(cluster, n0, b"other", 1)
    assert other.lease_id > b.lease_id


async def test_renew_release_and_their_errors(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    a = await acquire(cluster, n0, b"g", 1, ttl_ms=5000)
    r = await renew(cluster, n0, a.lease_id)
    assert r.ts_upper_bound >= a.ts_upper_bound and r.expires_at_ms >= a.expires_at_ms
    e = await rpc_error(cluster, n0, "RenewLease", tso_pb2.RenewLeaseRequest(lease_id=12345))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    await release(cluster, n0, a.lease_id)
    await release(cluster, n0, a.lease_id)  # idempotent
    await release(cluster, n0, 999)  # unknown: fine
    e = await rpc_error(cluster, n0, "RenewLease", tso_pb2.RenewLeaseRequest(lease_id=a.lease_id))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    # Released, the holder gets a fresh lease at the same epoch.
    assert (await acquire(cluster, n0, b"g", 1)).lease_id > a.lease_id


@pytest.mark.parametrize(
    ("holder", "ttl_ms"),
    [(b"", 5000), (b"x" * 129, 5000), (b"h", 4999), (b"h", 300_001)],
)
async def test_bad_lease_requests_are_invalid_argument(
    cluster: Cluster, holder: bytes, ttl_ms: int
) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    e = await rpc_error(
        cluster,
        n0,
        "AcquireLease",
        tso_pb2.AcquireLeaseRequest(holder=holder, holder_epoch=1, ttl_ms=ttl_ms),
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_lease_cap_is_resource_exhausted(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    leases = [await acquire(cluster, n0, f"h{i}".encode(), 1) for i in range(OPTIONS.max_leases)]
    e = await rpc_error(
        cluster,
        n0,
        "AcquireLease",
        tso_pb2.AcquireLeaseRequest(holder=b"more", holder_epoch=1, ttl_ms=5000),
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # An idempotent re-acquire still answers; a release makes room.
    assert (await acquire(cluster, n0, b"h0", 1)).lease_id == leases[0].lease_id
    await release(cluster, n0, leases[1].lease_id)
    assert (await acquire(cluster, n0, b"more", 1)).lease_id > leases[-1].lease_id


async def test_leases_survive_a_leader_change(cluster: Cluster) -> None:
    n0, n1, _ = cluster.nodes
    await elect(cluster, n0)
    a = await acquire(cluster, n0, b"survivor", 3)
    sup = await acquire(cluster, n0, b"sup", 1)
    await acquire(cluster, n0, b"sup", 2)  # supersedes sup's lease
    term = await elect(cluster, n1)
    again = await acquire(cluster, n1, b"survivor", 3)
    assert again.lease_id == a.lease_id and epoch(again.epoch) == term
    r = await renew(cluster, n1, a.lease_id)
    assert r.ts_upper_bound >= a.ts_upper_bound
    e = await rpc_error(cluster, n1, "RenewLease", tso_pb2.RenewLeaseRequest(lease_id=sup.lease_id))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    e = await rpc_error(
        cluster,
        n1,
        "AcquireLease",
        tso_pb2.AcquireLeaseRequest(holder=b"survivor", holder_epoch=2, ttl_ms=5000),
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- the safe point and the frontier --------------------------------------------------------------


async def test_the_safe_point_and_the_frontier(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    term = await elect(cluster, n0)
    tso = tso_of(n0.s)
    assert tso is not None
    ms = await max_safe(cluster, n0)
    h = tso.oracle.allocator.high_water
    assert h is not None
    assert ms.max_safe_physical_ms == h - OPTIONS.window_ahead_ms - 1 and ms.epoch_lo == term
    f = await frontier(cluster, n0)
    assert (f.frontier_physical_ms, f.epoch_lo) == (tso.oracle.allocator.high_water, term)
    lease = await acquire(cluster, n0, b"stamper", 1)
    assert (await frontier(cluster, n0)).frontier_physical_ms == lease.ts_upper_bound
    # A longer lease moves the high-water far past the first one's bound: the frontier stays
    # at the smallest unexpired bound.
    longer = await acquire(cluster, n0, b"long", 1, ttl_ms=60_000)
    assert tso.oracle.allocator.high_water == longer.ts_upper_bound > lease.ts_upper_bound
    assert (await frontier(cluster, n0)).frontier_physical_ms == lease.ts_upper_bound
    await release(cluster, n0, longer.lease_id)
    assert (await frontier(cluster, n0)).frontier_physical_ms == lease.ts_upper_bound
    await release(cluster, n0, lease.lease_id)
    f = await frontier(cluster, n0)
    assert f.frontier_physical_ms == tso.oracle.allocator.high_water > lease.ts_upper_bound


# -- the planned handoff --------------------------------------------------------------------------


async def test_a_planned_step_down_releases_the_lease_and_the_next_leader_does_not_wait(
    cluster: Cluster,
) -> None:
    n0, n1, _ = cluster.nodes
    await elect(cluster, n0)
    first = await seq(cluster, n0, "handoff", 2)
    lc = leader_controller(n0, 0)
    _, drained = await lc.step_down(lc.term, 5.0)  # what the coordinator's StepDown does
    assert drained
    tso0 = tso_of(n0.s)
    assert tso0 is not None and tso0.oracle.releases == 1 and tso0.oracle.serving is None
    assert tso0.oracle.driver.read(Leading(lc.term, lc, True), RELEASED_KEY) is not None
    e = await rpc_error(cluster, n0, "GetTs", tso_pb2.GetTsRequest(count=1))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e) == (None, None)  # the map still names n0: no hint back to itself
    e = await rpc_error(cluster, n0, "GetSeq", tso_pb2.GetSeqRequest(key="handoff", count=1))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and hint(e) is not None
    tso1 = tso_of(n1.s)
    assert tso1 is not None
    t0 = time.monotonic()
    await cluster.elect(0, n1, cluster.nodes)
    await wait_until(lambda: serves(cluster, n1), what="n1 to serve")
    assert time.monotonic() - t0 < OPTIONS.lease_s  # no lease wait
    assert tso1.watch.released_fences == 1
    assert (await seq(cluster, n1, "handoff", 1)).start == first.start + first.count
    # The marker is gone with the new leader's first high-water write: a failure of n1 now
    # makes the next leader wait the lease out again.
    assert tso1.oracle.driver.read(tso1.oracle.serving, RELEASED_KEY) is None  # type: ignore[arg-type]


async def test_an_abandoned_step_down_serves_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StepDown with no new term after it (the coordinator died): once the refusals end,
    the same leader fences again (its own marker spares it the wait) and serves."""
    from pyxia.server import handoff

    answered = handoff.answered
    monkeypatch.setattr(handoff, "answered", lambda h, now: answered(h, now, 0.3))
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    lc = leader_controller(n0, 0)
    await lc.step_down(lc.term, 1.0)
    assert not await serves(cluster, n0)
    await wait_until(lambda: serves(cluster, n0), timeout=10, what="n0 to serve again")
    tso = tso_of(n0.s)
    assert tso is not None and tso.watch.released_fences == 1
