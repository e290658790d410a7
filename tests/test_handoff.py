"""Planned leader moves in-process: three data servers and a coordinator in one event loop.

A leader with writes in flight is moved (``Coordinator.move_leader``): every write is
acknowledged or retried by the client to success, none is WRITE_INDETERMINATE or failed. The
step-down itself, the leader's refusals, the fallback when no NewTerm comes, and a data
server's graceful shutdown (its leaderships moved away first) are checked through the real
RPCs."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cluster import Cluster, Node
from pyxia.client import AsyncClient
from pyxia.config import NamespaceConfig
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.model import ELECTION, shards
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from pyxia.errors import InvalidTerm, NodeIsNotLeader
from pyxia.proto import admin_pb2, client_pb2
from pyxia.server import handoff
from pyxia.server.leader_controller import LEADER
from servers import wait_until
from test_coordinator import FAST, Env, leader_of, make_config, steady

SHARDS = 2


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cluster = await Cluster.start(tmp_path, 3)
    cfg = [make_config(cluster.nodes, (NamespaceConfig("default", SHARDS, 3),))]
    server = CoordinatorServer(
        MemoryMetadataProvider(),
        lambda: cfg[0],
        CoordinatorServerOptions(internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST),
    )
    await server.start()
    e = Env(cluster, server, cfg)
    try:
        await server.wait_leading()
        await wait_until(lambda: steady(e), what="elected")
        yield e
    finally:
        await server.close()
        await cluster.close()


class Load:
    """``workers`` tasks putting unique keys (half of them create-only) until stopped."""

    def __init__(self, client: AsyncClient, prefix: str, workers: int = 16) -> None:
        self.client = client
        self.prefix = prefix
        self.acks: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = False
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def _worker(self, w: int) -> None:
        i = 0
        while not self._stop:
            key = f"{self.prefix}/{w:02d}-{i:06d}"
            try:
                r = await self.client.put(key, key, expected_version_id=-1 if i % 2 else None)
            except Exception as e:
                self.failures.append(f"{key}: {type(e).__name__}: {e}")
            else:
                self.acks[key] = r.version.version_id
            i += 1

    async def grows(self, by: int = 30, timeout: float = 20) -> None:
        n = len(self.acks)
        await wait_until(lambda: len(self.acks) >= n + by, timeout=timeout, what="writes going on")

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


async def check_stored(client: AsyncClient, acks: dict[str, int], prefix: str) -> None:
    found = {
        g.key: g.version.version_id async for g in client.range_scan(prefix + "/", prefix + "//")
    }
    missing = [k for k in acks if k not in found]
    assert not missing, f"{len(missing)} acknowledged writes missing: {missing[:5]}"
    wrong = [(k, v, found[k]) for k, v in acks.items() if found[k] != v]
    assert not wrong, f"versions differ (key, acked, stored): {wrong[:5]}"


def node_of(env: Env, internal: str) -> Node:
    return next(n for n in env.cluster.nodes if n.internal == internal)


async def test_moving_leaders_under_load_fails_no_write(env: Env) -> None:
    addresses = [n.public for n in env.cluster.nodes]
    async with AsyncClient(addresses, request_timeout_s=30) as client:
        load = Load(client, "/mv")
        try:
            await load.grows()
            for i in range(6):
                shard = i % SHARDS
                before = leader_of(env, shard)
                term = env.coordinator.status.namespaces["default"].shards[shard].term
                leader, new_term = await env.coordinator.move_leader("default", shard)
                assert new_term == term + 1 and leader != before.internal
                await load.grows()
        finally:
            await load.stop()
        assert not load.failures, load.failures[:10]
        assert len(load.acks) > 100
        await check_stored(client, load.acks, "/mv")
    # every move was a drained handoff
    for sc in env.coordinator.shard_controllers.values():
        assert sc.handoffs == sc.handoffs_drained


async def test_moving_to_a_named_member(env: Env) -> None:
    shard = 0
    meta = env.coordinator.status.namespaces["default"].shards[shard]
    target = next(m.internal for m in meta.ensemble if m.internal != meta.leader.internal)
    leader, term = await env.coordinator.move_leader("default", shard, target)
    assert leader == target and term == meta.term + 1
    # the admin RPC does the same
    other = next(m.internal for m in meta.ensemble if m.internal != target)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.server.port}") as ch:
        res = await ch.unary_unary(
            "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
            request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
            response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
        )(admin_pb2.MoveLeaderRequest(namespace="default", shard=shard, to=other), timeout=30)
        assert res.leader == other and res.term == term + 1
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary(
                "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
                request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
                response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
            )(admin_pb2.MoveLeaderRequest(namespace="default", shard=shard, to="nowhere:1"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stepping_down_leader_refuses_writes_and_finishes_logged_ones(env: Env) -> None:
    shard = 0
    node = leader_of(env, shard)
    lc = node.s.director.leaders[shard]
    # The assignments naming this server as the leader have reached it (a StepDown comes for a
    # leadership the clients know; what a refusal names depends on it).
    await wait_until(lambda: lc.leader_hint is not None, what="the assignments to reach the leader")
    # writes logged, not yet committed (nothing has run since they were appended)
    futs = [
        lc.propose(client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key=f"/p{i}", value=b"v")]))
        for i in range(20)
    ]
    assert lc.commit_offset < lc.head_offset
    head, drained = await lc.step_down(lc.term, 5.0)
    assert drained and head.offset == lc.head_offset
    results = await asyncio.gather(*futs)
    assert all(r.error is None and r.response.puts[0].status == client_pb2.OK for r in results)
    with pytest.raises(NodeIsNotLeader) as refused:
        lc.propose(client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key="/late", value=b"v")]))
    assert refused.value.leader_hint is None  # the assignments still name this server
    assert lc.status == LEADER and lc.handing_off
    # reads are still served (the leader still leads its term)
    assert (await lc.get(client_pb2.GetRequest(key="/p0"))).status == client_pb2.OK
    # a StepDown for another term is refused
    with pytest.raises(InvalidTerm):
        await lc.step_down(lc.term + 1, 1.0)


async def test_without_a_new_term_the_leader_takes_writes_again(env: Env) -> None:
    shard = 1
    node = leader_of(env, shard)
    lc = node.s.director.leaders[shard]
    now = time.monotonic()
    put = client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key="/x", value=b"v")])
    tenure = lc.replica.tenure
    assert tenure is not None
    tenure.handoff = handoff.Handoff(lc.term, now, now + 3600, lc.leader_hint)
    with pytest.raises(NodeIsNotLeader):
        lc.propose(put)
    # the refusal period is over and no NewTerm came (the coordinator died in between)
    tenure.handoff = handoff.Handoff(lc.term, now - 2, now - 1, lc.leader_hint)
    res = await lc.propose(put)
    assert res.error is None and lc.handoff is None


async def test_a_server_shutting_down_hands_its_leaderships_over(env: Env) -> None:
    addresses = [n.public for n in env.cluster.nodes]
    # a server that leads a shard, not the one the client was given first
    victim = leader_of(env, 0)
    async with AsyncClient(addresses, request_timeout_s=30) as client:
        load = Load(client, "/sd")
        try:
            await load.grows()
            led = [
                s
                for _, s, m in shards(env.coordinator.status)
                if m.leader.internal == victim.internal
            ]
            await victim.stop(graceful=True)
            for s in led:
                assert leader_of(env, s) is not victim
            await load.grows()
            await victim.start()
            await wait_until(lambda: steady(env) and env.coordinator.is_available(victim.internal))
            await load.grows()
        finally:
            await load.stop()
        assert not load.failures, load.failures[:10]
        await check_stored(client, load.acks, "/sd")
    assert victim.internal not in env.coordinator.leaving


async def test_the_balancers_leader_moves_are_planned(env: Env) -> None:
    """Both leaderships on one server: the balancer moves one away, under load, as a planned
    move (a drained handoff), and no write fails."""
    target = leader_of(env, 0)
    await env.coordinator.move_leader("default", 1, target.internal)
    assert leader_of(env, 0) is target and leader_of(env, 1) is target
    before = sum(sc.handoffs_drained for sc in env.coordinator.shard_controllers.values())
    addresses = [n.public for n in env.cluster.nodes]
    async with AsyncClient(addresses, request_timeout_s=30) as client:
        load = Load(client, "/lb")
        try:
            await load.grows()
            assert await env.coordinator.balance_once()

            def balanced() -> bool:
                return steady(env) and len({leader_of(env, s).internal for s in (0, 1)}) == 2

            await wait_until(balanced, what="the leaderships spread")
            await load.grows()
        finally:
            await load.stop()
        assert not load.failures, load.failures[:10]
        await check_stored(client, load.acks, "/lb")
    after = sum(sc.handoffs_drained for sc in env.coordinator.shard_controllers.values())
    assert after == before + 1


async def test_a_shard_being_elected_keeps_its_last_published_leader(env: Env) -> None:
    """An empty leader in the map would make Oxia's Go client dial "" and fail the write; the
    last leader answers a retryable NODE_IS_NOT_LEADER instead."""
    c = env.coordinator
    published = {a.shard: a.leader for a in c.assignments().namespaces["default"].assignments}
    saved = c.status
    electing = copy.deepcopy(saved)
    meta = electing.namespaces["default"].shards[0]
    meta.status = ELECTION
    meta.ClearField("leader")
    try:
        c.status = electing
        c._recompute_assignments()
        now = {a.shard: a.leader for a in c.assignments().namespaces["default"].assignments}
        assert now == published and now[0]
    finally:
        c.status = saved
        c._recompute_assignments()
