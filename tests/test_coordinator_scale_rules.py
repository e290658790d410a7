"""What keeps the coordinator linear in its shards (issue 21): batched status writes, the
leadership tally, the balancer's many moves per step, ensembles chosen without a walk over
every shard per shard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.common.channels import ChannelPool
from pyxia.common.signals import Signal
from pyxia.config import ClusterConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator.dataserver_controller import DataServerController
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.metadata.provider import NOT_EXISTS, Version
from pyxia.coordinator.model import PendingLeaders, leader_counts, reconcile, shards
from pyxia.coordinator.placement import plan_rebalance, plan_rebalance_moves
from pyxia.coordinator.status_store import StatusStore
from pyxia.errors import MetadataBadVersion
from pyxia.proto import metadata_pb2

STEADY = metadata_pb2.SteadyState
ELECTION = metadata_pb2.Election


def servers(n: int) -> tuple[ServerAddress, ...]:
    return tuple(ServerAddress(f"h{i}:1", f"h{i}:2") for i in range(n))


def status_with(shard_count: int, server_count: int = 5) -> metadata_pb2.ClusterStatus:
    st = metadata_pb2.ClusterStatus(instance_id="test")
    reconcile(
        st,
        ClusterConfig(
            namespaces=(NamespaceConfig("default", shard_count, 3),),
            servers=servers(server_count),
        ),
    )
    return st


class CountingProvider(MemoryMetadataProvider):
    def __init__(self) -> None:
        super().__init__()
        self.stores = 0

    async def store(self, status: metadata_pb2.ClusterStatus, expected: Version) -> Version:
        self.stores += 1
        await asyncio.sleep(0.01)  # a write takes time: edits queue up meanwhile
        return await super().store(status, expected)


async def store_of(shard_count: int) -> tuple[StatusStore, CountingProvider, list[str]]:
    provider = CountingProvider()
    st = status_with(shard_count)
    version = await MemoryMetadataProvider.store(provider, st, NOT_EXISTS)
    lost: list[str] = []
    return StatusStore(provider, st, version, lambda: lost.append("lost")), provider, lost


def set_term(term: int):  # type: ignore[no-untyped-def]
    def edit(m: metadata_pb2.ShardMetadata) -> None:
        m.term = term
        m.status = ELECTION

    return edit


async def test_concurrent_shard_edits_share_writes() -> None:
    store, provider, _ = await store_of(200)
    await asyncio.gather(*(store.update_shard("default", s, set_term(s + 1)) for s in range(200)))
    assert provider.stores <= 2  # one write for all (two if the first raced ahead)
    assert store.edits_written == 200
    stored, _ = await provider.get()
    assert stored is not None
    assert [m.term for _, _, m in shards(stored)] == list(range(1, 201))
    assert stored == store.status


async def test_a_failing_edit_is_refused_alone() -> None:
    store, _, _ = await store_of(3)

    def bad(m: metadata_pb2.ShardMetadata) -> None:
        m.term = 99  # applied to a copy: dropped with the error
        raise ValueError("refused")

    results = await asyncio.gather(
        store.update_shard("default", 0, set_term(5)),
        store.update_shard("default", 1, bad),
        store.update_shard("default", 7, set_term(5)),  # no such shard
        store.update_shard("default", 2, set_term(6)),
        return_exceptions=True,
    )
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], KeyError)
    terms = {s: m.term for _, s, m in shards(store.status)}
    assert terms == {0: 5, 1: -1, 2: 6}


async def test_edits_of_one_shard_apply_in_order() -> None:
    store, _, _ = await store_of(1)
    await asyncio.gather(*(store.update_shard("default", 0, set_term(t)) for t in range(1, 50)))
    assert store.status.namespaces["default"].shards[0].term == 49


async def test_a_lost_compare_and_set_fails_every_queued_edit_and_steps_down() -> None:
    store, provider, lost = await store_of(10)
    other = metadata_pb2.ClusterStatus()
    other.CopyFrom(store.status)
    await MemoryMetadataProvider.store(provider, other, store.version)  # a newer leader wrote
    results = await asyncio.gather(
        *(store.update_shard("default", s, set_term(1)) for s in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(r, MetadataBadVersion) for r in results)
    assert lost == ["lost"]
    with pytest.raises(MetadataBadVersion):
        await store.update_shard("default", 0, set_term(2))


def led(status: metadata_pb2.ClusterStatus, shard: int, node: str) -> None:
    meta = status.namespaces["default"].shards[shard]
    meta.status = STEADY
    meta.leader.internal = node


def test_pending_leaders_count_like_a_walk_over_the_status() -> None:
    st = status_with(6)
    for s, n in [(0, "a"), (1, "a"), (2, "b")]:
        led(st, s, n)
    p = PendingLeaders()
    assert p.counts(st) == {"a": 2, "b": 1}
    p[3] = "b"  # an election chose b
    p[1] = "c"  # shard 1 is led by a in the status, c was chosen: counted once, for c
    assert p.counts(st) == {"a": 1, "b": 2, "c": 1}
    # The status persisted shard 3's leader: the pending entry is not counted twice.
    st2 = metadata_pb2.ClusterStatus()
    st2.CopyFrom(st)
    led(st2, 3, "b")
    assert p.counts(st2) == {"a": 1, "b": 2, "c": 1}
    p.pop(3)
    p.pop(1)
    assert p.pop(1) is None and len(p) == 0
    assert p.counts(st2) == dict(leader_counts(st2))


def test_creating_many_shards_is_not_quadratic() -> None:
    started = time.monotonic()
    st = status_with(3000, 30)
    assert time.monotonic() - started < 5  # it took 3.8 s for 1,000 shards
    load = Counter(m.internal for _, _, meta in shards(st) for m in meta.ensemble)
    assert max(load.values()) - min(load.values()) <= 1


replica_maps = st.dictionaries(
    st.integers(0, 60),
    st.lists(st.sampled_from([f"n{i}" for i in range(8)]), min_size=1, max_size=3, unique=True),
    max_size=60,
)


@given(replica_maps, st.integers(2, 8), st.sets(st.integers(0, 60)))
def test_balancing_moves_are_safe_and_narrow_the_gap(
    replicas: dict[int, list[str]], n: int, quarantined: set[int]
) -> None:
    servers = [f"n{i}" for i in range(n)]
    moves = plan_rebalance_moves(replicas, servers, quarantined)
    first = plan_rebalance(replicas, servers, quarantined)
    if first is not None:
        assert moves and moves[0] == first
    if not moves:
        return
    sources = [m.source for m in moves]
    assert len(sources) == len(set(sources))  # one replica off each server per step
    assert not set(sources) & {m.target for m in moves}  # a server gives or takes
    assert len({m.shard for m in moves}) == len(moves)  # one replica of a shard per step
    for m in moves:
        assert m.shard not in quarantined
        assert m.source in replicas[m.shard] and m.target not in replicas[m.shard]


def test_new_servers_fill_up_in_parallel() -> None:
    replicas = {s: [f"n{s % 8}", f"n{(s + 1) % 8}", f"n{(s + 2) % 8}"] for s in range(240)}
    servers = [f"n{i}" for i in range(10)]  # n8 and n9 are new, empty
    moves = plan_rebalance_moves(replicas, servers)
    assert {m.target for m in moves} == {"n8", "n9"}
    assert len(moves) == 8  # one off each loaded server, in one step
    assert plan_rebalance_moves({0: ["n0", "n1"], 1: ["n1", "n0"]}, ["n0", "n1"]) == []


async def test_closing_fails_waiting_edits_and_refuses_new_ones() -> None:
    store, _, _ = await store_of(3)
    waiting = asyncio.ensure_future(store.update_shard("default", 0, set_term(1)))
    await asyncio.sleep(0)  # queued; the writer is storing it (the store takes 10 ms)
    await store.close()
    with pytest.raises(MetadataBadVersion):
        await waiting
    with pytest.raises(MetadataBadVersion):
        await store.update_shard("default", 1, set_term(1))


# -- assignment pushes: one per server per burst of changes ----------------------------------


class _Maps:
    """What a coordinator hands a data server controller: the current map, its change signal."""

    def __init__(self) -> None:
        self.current: bytes | None = b"map-0"
        self.changed = Signal()

    def publish(self, payload: bytes) -> None:
        self.current = payload
        self.changed.notify()


def _controller(
    maps: _Maps, linger: float, leaderless: Callable[[], bool] = lambda: False
) -> DataServerController:
    async def on_change(node: str, available: bool) -> None:
        return None

    return DataServerController(
        ServerAddress("h0:1", "h0:2"),
        ChannelPool(),
        "instance",
        lambda: maps.current,
        maps.changed,
        on_change,
        push_linger=linger,
        assignments_leaderless=leaderless,
    )


async def test_a_burst_of_map_changes_is_one_push_and_an_unchanged_map_is_not_resent() -> None:
    linger = 0.3
    loop = asyncio.get_running_loop()
    maps = _Maps()
    dc = _controller(maps, linger=linger)
    stream = dc._stream()
    try:
        # The stream's first map goes at once.
        assert await asyncio.wait_for(anext(stream), 1) == b"map-0"
        # A burst of changes within the linger: one push, of the latest map.
        nxt = asyncio.ensure_future(anext(stream))
        started = loop.time()
        for i in range(1, 20):
            maps.publish(f"map-{i}".encode())
            await asyncio.sleep(0)
        assert await asyncio.wait_for(nxt, 5) == b"map-19"
        assert loop.time() - started >= linger * 0.99  # held, to gather the burst
        # A change that leaves the map as it was is not pushed (an election's first write);
        # the next real one is.
        nxt = asyncio.ensure_future(anext(stream))
        maps.publish(b"map-19")
        done, _ = await asyncio.wait([nxt], timeout=linger + 0.3)
        assert not done, "an unchanged map was pushed again"
        maps.publish(b"map-20")
        assert await asyncio.wait_for(nxt, 5) == b"map-20"
    finally:
        await stream.aclose()
        await dc.close()


async def test_without_a_linger_every_change_is_pushed_as_it_comes() -> None:
    maps = _Maps()
    dc = _controller(maps, linger=0.0)
    stream = dc._stream()
    try:
        assert await asyncio.wait_for(anext(stream), 1) == b"map-0"
        for i in range(1, 4):
            maps.publish(f"map-{i}".encode())
            assert await asyncio.wait_for(anext(stream), 1) == f"map-{i}".encode()
    finally:
        await stream.aclose()
        await dc.close()


async def test_a_map_naming_a_shards_first_leader_is_not_held_back() -> None:
    """After a map that names no leader for some shard (new, not elected yet), the next map
    goes at once: clients cannot use the shard meanwhile (Oxia's Go client dials "")."""
    linger = 5.0  # far longer than the waits below: a held push would time them out
    maps = _Maps()
    leaderless = {b"map-0": True, b"map-1": False, b"map-2": False}

    dc = _controller(maps, linger, lambda: leaderless[maps.current or b""])
    stream = dc._stream()
    try:
        assert await asyncio.wait_for(anext(stream), 1) == b"map-0"  # a shard without leader
        maps.publish(b"map-1")  # its election is done
        assert await asyncio.wait_for(anext(stream), 1) == b"map-1"
        # every shard has a leader now: the next change lingers again
        nxt = asyncio.ensure_future(anext(stream))
        maps.publish(b"map-2")
        done, _ = await asyncio.wait([nxt], timeout=0.5)
        assert not done, "a change after a complete map was not held for the linger"
        nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nxt
    finally:
        await stream.aclose()
        await dc.close()
