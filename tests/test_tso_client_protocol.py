"""pyxia's TsoClient / AsyncTsoClient for every call of tsoracle's protocol, against real data
servers (in-process): sequence coalescing (many callers, few RPCs, contiguous slices),
batches, leases, the two reads, leader following across elections, definite errors raised at
once, and a planned handoff under load that no caller sees (GetTs, GetSeq, leases)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from cluster import Cluster, Node, leader_controller
from pyxia.errors import InvalidArgument
from pyxia.node import tso_of
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.client import AsyncTsoClient, SeqBlock, TsoClient
from pyxia.tso.errors import LeaseNotFound, LeaseRefused, SeqOverflow
from pyxia.tso.options import TsoOptions
from pyxia.tso.sequences import U64_MAX, counter_key, encode_counter
from servers import wait_until

OPTIONS = TsoOptions(lease_s=0.1)


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"tso": OPTIONS, "namespace": DEFAULT_NAMESPACE}


async def elect(c: Cluster, leader: Node) -> None:
    await c.elect(0, leader, c.nodes)
    await c.push_assignments({0: leader})
    tso = tso_of(leader.s)
    assert tso is not None
    await wait_until(lambda: tso.oracle.serving is not None, what="the leader to serve")


def eps(c: Cluster) -> list[str]:
    return [n.public for n in c.nodes]


def contiguous(blocks: list[SeqBlock]) -> bool:
    spans = sorted((b.start, b.start + b.count) for b in blocks)
    return spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))


async def test_sequence_calls_coalesce_and_slice(cluster: Cluster) -> None:
    await elect(cluster, cluster.nodes[1])
    async with AsyncTsoClient(eps(cluster)) as tso:
        first = await tso.get_seq("warm", 1)
        assert first.start == 0
        rpcs = tso.rpcs
        counts = [1 + i % 5 for i in range(200)]
        blocks = await asyncio.gather(
            *(tso.get_seq("a" if i % 2 else "b", n) for i, n in enumerate(counts))
        )
        assert tso.rpcs - rpcs < 50  # coalesced into a few GetSeq/GetSeqBatch calls
        for key in ("a", "b"):
            assert contiguous([b for b in blocks if b.key == key])
        mixed = await tso.get_seq_batch([("a", 3), ("c", 2)])
        assert [(b.key, b.count) for b in mixed] == [("a", 3), ("c", 2)]
        assert mixed[0].start == sum(n for i, n in enumerate(counts) if i % 2)
        assert mixed[1].start == 0
        with pytest.raises(InvalidArgument):
            await tso.get_seq("", 1)
        with pytest.raises(InvalidArgument):
            await tso.get_seq_batch([("x", 1), ("x", 2)])
        with pytest.raises(InvalidArgument):
            await tso.get_seq("too-many", 70_000)  # the server's cap; alone in its RPC
        assert (await tso.get_seq("too-many", 1)).start == 0


async def test_leases_and_reads_through_the_client(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    async with AsyncTsoClient(eps(cluster)[::-1]) as tso:
        lease = await tso.acquire_lease(b"writers", 1, ttl_s=5)
        assert (await tso.acquire_lease(b"writers", 1, ttl_s=5)) == lease
        renewed = await tso.renew_lease(lease.lease_id)
        assert renewed.ts_upper_bound >= lease.ts_upper_bound
        with pytest.raises(LeaseRefused):
            await tso.acquire_lease(b"writers", 0, ttl_s=5)
        with pytest.raises(LeaseNotFound):
            await tso.renew_lease(987654)
        with pytest.raises(InvalidArgument):
            await tso.acquire_lease(b"writers", 2, ttl_s=0.5)
        ms = await tso.get_current_max_safe()
        f = await tso.get_safe_frontier()
        assert ms.max_safe_physical_ms > 0 and ms.epoch == f.epoch == tso.epoch > 0
        assert f.frontier_physical_ms == renewed.ts_upper_bound
        reads = await asyncio.gather(*(tso.get_safe_frontier() for _ in range(20)))
        assert {r.epoch for r in reads} == {f.epoch}
        await tso.release_lease(lease.lease_id)
        await tso.release_lease(lease.lease_id)


async def test_a_counter_at_its_limit_is_a_definite_error(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    tso0 = tso_of(n0.s)
    assert tso0 is not None and tso0.oracle.serving is not None
    d = tso0.oracle.driver
    await d.wait(d.log(tso0.oracle.serving, [(counter_key("end"), encode_counter(U64_MAX))]), "t")
    await elect(cluster, cluster.nodes[2])
    async with AsyncTsoClient(eps(cluster)) as tso:
        with pytest.raises(SeqOverflow):
            await tso.get_seq("end", 1)


async def test_the_client_follows_leaders_across_elections(cluster: Cluster) -> None:
    async with AsyncTsoClient(eps(cluster)) as tso:
        seen: list[SeqBlock] = []
        for leader in (*cluster.nodes, cluster.nodes[0]):
            await elect(cluster, leader)
            seen.append(await tso.get_seq("follow", 2))
            await tso.get_ts()
            assert tso.leader == leader.public
        assert contiguous(seen)


async def test_a_planned_handoff_costs_callers_no_error(cluster: Cluster) -> None:
    """Callers hammer GetTs, GetSeq and leases while the TSO leader steps down (as the
    coordinator's StepDown does) and another is elected, twice: no caller sees an error, the
    sequence stays gap-free, and the gap between grants is short (no lease wait)."""
    n0, n1, n2 = cluster.nodes
    await elect(cluster, n0)
    stop = asyncio.Event()
    errors: list[str] = []
    grants: list[float] = []
    blocks: list[SeqBlock] = []
    async with AsyncTsoClient(eps(cluster), timeout_s=10) as tso:

        async def ts_loop() -> None:
            while not stop.is_set():
                try:
                    await tso.get_ts()
                    grants.append(time.monotonic())
                except Exception as e:
                    errors.append(f"get_ts: {type(e).__name__}: {e}")

        async def seq_loop() -> None:
            while not stop.is_set():
                try:
                    blocks.append(await tso.get_seq("planned", 3))
                except Exception as e:
                    errors.append(f"get_seq: {type(e).__name__}: {e}")

        async def lease_loop() -> None:
            epoch = 1
            while not stop.is_set():
                try:
                    await tso.acquire_lease(b"planned", epoch, ttl_s=5)
                    epoch += 1
                except Exception as e:
                    errors.append(f"lease: {type(e).__name__}: {e}")
                await asyncio.sleep(0.01)

        tasks = [
            asyncio.get_running_loop().create_task(f())
            for f in (ts_loop, ts_loop, seq_loop, lease_loop)
        ]
        gaps = []
        for old, new in ((n0, n1), (n1, n2)):
            n = len(grants)
            await wait_until(lambda n=n: len(grants) > n + 50, what="grants before the move")
            lc = leader_controller(old, 0)
            t0 = time.monotonic()
            await lc.step_down(lc.term, 5.0)
            await cluster.elect(0, new, cluster.nodes)
            await cluster.push_assignments({0: new})
            n = len(grants)
            await wait_until(lambda n=n: len(grants) > n + 10, what="grants after the move")
            gaps.append(max(b - a for a, b in itertools.pairwise([t0, *grants[n:]])))
        stop.set()
        await asyncio.gather(*tasks)
    print(f"\nplanned handoff in-process: longest gap {[round(g * 1000) for g in gaps]} ms")
    assert errors == []
    assert contiguous(blocks)
    assert max(gaps) < OPTIONS.lease_s * 5, gaps


async def test_sync_client_from_threads(cluster: Cluster) -> None:
    await elect(cluster, cluster.nodes[2])
    out: dict[str, object] = {}

    def work() -> None:
        with TsoClient(eps(cluster)) as tso:
            got: list[SeqBlock] = []

            def one() -> None:
                for _ in range(5):
                    got.append(tso.get_seq("sync", 2))

            threads = [threading.Thread(target=one) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out["seq"] = got
            out["batch"] = tso.get_seq_batch([("sync", 1), ("other", 4)])
            lease = tso.acquire_lease(b"sync", 1, 5)
            out["renew"] = tso.renew_lease(lease.lease_id)
            tso.release_lease(lease.lease_id)
            out["max_safe"] = tso.get_current_max_safe()
            out["frontier"] = tso.get_safe_frontier()
            out["ts"] = tso.get_ts()

    await asyncio.to_thread(work)
    got = out["seq"]
    assert isinstance(got, list) and contiguous(got) and len(got) == 20
    batch = out["batch"]
    assert isinstance(batch, list) and batch[0].start == 40 and batch[1].start == 0
    assert out["max_safe"].max_safe_physical_ms > 0  # type: ignore[attr-defined]
    assert out["frontier"].frontier_physical_ms > 0  # type: ignore[attr-defined]
