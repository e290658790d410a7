"""The coordinator in-process: three data servers and a coordinator server
in one event loop on loopback ports chosen at runtime."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

from cluster import Cluster, Node
from pyxia.config import ClusterConfig, LoadBalancerConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator.coordinator import CoordinatorOptions
from pyxia.coordinator.dataserver_controller import LivenessOptions
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.model import STEADY, shards
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from pyxia.proto import client_pb2
from servers import wait_until

FAST = CoordinatorOptions(
    liveness=LivenessOptions(probe_interval=0.2, probe_timeout=1.0, failures=2),
    config_poll_interval=0.1,
    balance=False,
)


@dataclass
class Env:
    cluster: Cluster
    server: CoordinatorServer
    config: list[ClusterConfig] = field(default_factory=list)

    @property
    def coordinator(self):  # type: ignore[no-untyped-def]
        assert self.server.coordinator is not None
        return self.server.coordinator

    def set_config(self, cfg: ClusterConfig) -> None:
        self.config[0] = cfg


def make_config(nodes: list[Node], namespaces: tuple[NamespaceConfig, ...]) -> ClusterConfig:
    return ClusterConfig(
        namespaces=namespaces,
        servers=tuple(ServerAddress(n.public, n.internal) for n in nodes),
        load_balancer=LoadBalancerConfig(schedule_interval=0.2, quarantine_time=0.0),
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cluster = await Cluster.start(tmp_path, 3)
    cfg = [make_config(cluster.nodes, (NamespaceConfig("default", 3, 3),))]
    server = CoordinatorServer(
        MemoryMetadataProvider(),
        lambda: cfg[0],
        CoordinatorServerOptions(internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST),
    )
    await server.start()
    e = Env(cluster, server, cfg)
    try:
        await server.wait_leading()
        yield e
    finally:
        await server.close()
        await cluster.close()


def steady(env: Env, namespace: str = "default") -> bool:
    st = env.coordinator.status
    ns = st.namespaces.get(namespace)
    return (
        ns is not None
        and bool(ns.shards)
        and all(m.status == STEADY and m.HasField("leader") for m in ns.shards.values())
    )


def leader_of(env: Env, shard: int) -> Node:
    for _, s, meta in shards(env.coordinator.status):
        if s == shard:
            for n in env.cluster.nodes:
                if n.internal == meta.leader.internal:
                    return n
            raise LookupError(f"shard {shard} has no leader among the nodes: {meta}")
    raise KeyError(shard)


async def write(env: Env, node: Node, shard: int, key: str, timeout: float = 5) -> None:
    stub = env.cluster.channel(node.public).unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    res = await stub(
        client_pb2.WriteRequest(
            shard=shard, puts=[client_pb2.PutRequest(key=key, value=key.encode())]
        ),
        timeout=timeout,
    )
    assert res.puts[0].status == client_pb2.OK


async def read_ok(env: Env, node: Node, shard: int, keys: list[str]) -> bool:
    stub = env.cluster.channel(node.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/Read",
        request_serializer=client_pb2.ReadRequest.SerializeToString,
        response_deserializer=client_pb2.ReadResponse.FromString,
    )
    got = []
    async for r in stub(
        client_pb2.ReadRequest(shard=shard, gets=[client_pb2.GetRequest(key=k) for k in keys]),
        timeout=5,
    ):
        got.extend(r.gets)
    return all(g.status == client_pb2.OK for g in got)


async def test_bootstrap_elects_every_shard_and_pushes_assignments(env: Env) -> None:
    await wait_until(lambda: steady(env), what="every shard elected")
    st = env.coordinator.status
    assert st.instance_id
    assert len(st.namespaces["default"].shards) == 3
    for _, shard, meta in shards(st):
        assert len(meta.ensemble) == 3
        assert meta.term >= 0
        await write(env, leader_of(env, shard), shard, f"/boot{shard}")
    # every data server re-serves the assignments with the leaders
    for node in env.cluster.nodes:
        await wait_until(
            lambda n=node: (
                n.s.assignments.current is not None
                and all(a.leader for a in n.s.assignments.current.namespaces["default"].assignments)
            ),
            what="assignments pushed",
        )
    # leaders spread over the servers
    leaders = {leader_of(env, s).internal for s in range(3)}
    assert len(leaders) >= 2


async def test_dead_leader_is_replaced_and_returns_as_follower(env: Env) -> None:
    await wait_until(lambda: steady(env), what="every shard elected")
    shard = 0
    old = leader_of(env, shard)
    old_term = env.coordinator.status.namespaces["default"].shards[shard].term
    acked = []
    for i in range(20):
        k = f"/fo{i}"
        await write(env, old, shard, k)
        acked.append(k)
    await old.stop()  # the leader dies
    await wait_until(
        lambda: (
            steady(env)
            and leader_of(env, shard) is not old
            and env.coordinator.status.namespaces["default"].shards[shard].term > old_term
        ),
        timeout=20,
        what="a new leader",
    )
    new = leader_of(env, shard)
    assert await read_ok(env, new, shard, acked)
    await write(env, new, shard, "/after-failover")
    # the old leader comes back and is re-added as a follower
    await old.start()
    await wait_until(lambda: env.coordinator.is_available(old.internal), what="old leader back")

    async def following() -> bool:
        try:
            env.cluster.instance_id = env.coordinator.status.instance_id
            st = await env.cluster.status(old, shard)
        except grpc.aio.AioRpcError:
            return False  # not opened yet
        term = env.coordinator.status.namespaces["default"].shards[shard].term
        return st.status == 2 and st.term == term  # FOLLOWER

    await wait_until(following, timeout=20, what="old leader following")


async def test_leader_storage_failure_is_reported_and_a_new_leader_elected(env: Env) -> None:
    """A leader whose storage fails (disk full) stops leading while its process stays healthy;
    the data server reports it on ShardEvents/Watch and the coordinator elects at once, not at
    its periodic check of the shard (60 s)."""
    from cluster import leader_controller

    await wait_until(lambda: steady(env), what="every shard elected")
    shard = 1
    old = leader_of(env, shard)
    old_term = env.coordinator.status.namespaces["default"].shards[shard].term
    await write(env, old, shard, "/before")
    leader_controller(old, shard)._storage_failed(OSError(28, "No space left on device"))
    await wait_until(
        lambda: (
            steady(env)
            and env.coordinator.status.namespaces["default"].shards[shard].term > old_term
        ),
        timeout=10,
        what="an election after the leader's storage failure",
    )
    new = leader_of(env, shard)
    assert await read_ok(env, new, shard, ["/before"])
    await write(env, new, shard, "/after")


async def test_config_changes_without_restart(env: Env) -> None:
    await wait_until(lambda: steady(env), what="every shard elected")
    # a new namespace appears
    env.set_config(
        replace(
            env.config[0],
            namespaces=(NamespaceConfig("default", 3, 3), NamespaceConfig("extra", 2, 2)),
        )
    )
    await wait_until(lambda: steady(env, "extra"), timeout=20, what="new namespace elected")
    extra = env.coordinator.status.namespaces["extra"]
    assert len(extra.shards) == 2
    for shard_id, meta in extra.shards.items():
        assert len(meta.ensemble) == 2
        node = next(n for n in env.cluster.nodes if n.internal == meta.leader.internal)
        await write(env, node, shard_id, "/in-extra")
    # and is removed again: its shards are deleted on the servers
    env.set_config(replace(env.config[0], namespaces=(NamespaceConfig("default", 3, 3),)))
    await wait_until(
        lambda: "extra" not in env.coordinator.status.namespaces,
        timeout=20,
        what="namespace deleted",
    )
    for node in env.cluster.nodes:
        assert not (node.base / "db" / "extra").exists() or not any(
            (node.base / "db" / "extra").iterdir()
        )


async def test_removed_server_is_evacuated(tmp_path: Path) -> None:
    cluster = await Cluster.start(tmp_path, 4)
    n0, n1, n2, n3 = cluster.nodes
    cfg = [make_config([n0, n1, n2], (NamespaceConfig("default", 2, 3),))]
    server = CoordinatorServer(
        MemoryMetadataProvider(),
        lambda: cfg[0],
        CoordinatorServerOptions(internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST),
    )
    await server.start()
    env = Env(cluster, server, cfg)
    try:
        await server.wait_leading()
        await wait_until(lambda: steady(env), what="elected")
        for s in range(2):
            await write(env, leader_of(env, s), s, f"/ev{s}")
        # n2 leaves the cluster, n3 joins: every replica on n2 moves to n3
        terms = {s: meta.term for _, s, meta in shards(env.coordinator.status)}
        cfg[0] = make_config([n0, n1, n3], (NamespaceConfig("default", 2, 3),))

        def moved() -> bool:
            # the ensemble changes first, then the planned election ends in a new term
            return steady(env) and all(
                {m.internal for m in meta.ensemble} == {n0.internal, n1.internal, n3.internal}
                and meta.term > terms[s]
                for _, s, meta in shards(env.coordinator.status)
            )

        await wait_until(moved, timeout=30, what="replicas moved off the removed server")
        for s in range(2):
            assert await read_ok(env, leader_of(env, s), s, [f"/ev{s}"])
            await write(env, leader_of(env, s), s, f"/ev-after{s}")
    finally:
        await server.close()
        await cluster.close()


async def test_lost_compare_and_set_rebuilds_without_exiting(env: Env) -> None:
    """Another writer bumps the version: the coordinator's next store loses
    the compare-and-set, it steps down and a fresh coordinator is built from
    the metadata as it is now; shards keep serving."""
    await wait_until(lambda: steady(env), what="elected")
    provider = env.server.provider
    status, version = await provider.get()
    assert status is not None
    await provider.store(status, version)  # someone else wrote
    first = env.server.coordinator
    # the next election needs a store: it fails with a bad version
    shard = 1
    old = leader_of(env, shard)
    await old.stop()
    rebuilt = await env.server.wait_leading(generation=2)
    assert rebuilt is not first
    assert first is not None and first.failed.is_set()
    await wait_until(
        lambda: steady(env) and leader_of(env, shard) is not old,
        timeout=20,
        what="the rebuilt coordinator to elect",
    )
    await write(env, leader_of(env, shard), shard, "/after-rebuild")
    await old.start()


async def test_admin_status_and_health_cli(env: Env) -> None:
    await wait_until(lambda: steady(env), what="elected")
    port = env.server.port

    def run_cli() -> tuple[int, str]:
        from click.testing import CliRunner

        from pyxia.cli import main

        r = CliRunner().invoke(main, ["admin", "status", "--coordinator", f"127.0.0.1:{port}"])
        return r.exit_code, r.output

    code, out = await asyncio.to_thread(run_cli)
    assert code == 0, out
    assert "namespace default (replication factor 3)" in out
    assert out.count("SteadyState") == 3
    for n in env.cluster.nodes:
        assert n.internal in out

    def health(addr: str) -> tuple[int, str]:
        from click.testing import CliRunner

        from pyxia.cli import main

        r = CliRunner().invoke(main, ["health", "--address", addr])
        return r.exit_code, r.output

    code, out = await asyncio.to_thread(health, env.cluster.nodes[0].public)
    assert code == 0 and "SERVING" in out
    code, out = await asyncio.to_thread(health, f"127.0.0.1:{port}")
    assert code == 0
    with pytest.raises(grpc.RpcError):
        grpc.insecure_channel("127.0.0.1:1").unary_unary("/x/y")(b"", timeout=0.5)


async def test_load_balancer_moves_replicas_to_a_new_server(tmp_path: Path) -> None:
    cluster = await Cluster.start(tmp_path, 4)
    n0, n1, n2, n3 = cluster.nodes
    cfg = [make_config([n0, n1, n2], (NamespaceConfig("default", 4, 2),))]
    server = CoordinatorServer(
        MemoryMetadataProvider(),
        lambda: cfg[0],
        CoordinatorServerOptions(internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST),
    )
    await server.start()
    env = Env(cluster, server, cfg)
    try:
        await server.wait_leading()
        await wait_until(lambda: steady(env), what="elected")
        for s in range(4):
            await write(env, leader_of(env, s), s, f"/lb{s}")
        cfg[0] = make_config([n0, n1, n2, n3], (NamespaceConfig("default", 4, 2),))
        await wait_until(
            lambda: (
                n3.internal in env.coordinator.servers and env.coordinator.is_available(n3.internal)
            ),
            what="n3 known",
        )

        async def balanced() -> bool:
            if not steady(env) or await env.coordinator.balance_once():
                return False  # a move is under way: look again later
            load = Counter(
                m.internal for _, _, meta in shards(env.coordinator.status) for m in meta.ensemble
            )
            spread = max(load.values()) - min(load[n.internal] for n in cluster.nodes)
            return load[n3.internal] >= 1 and spread <= 1

        await wait_until(balanced, timeout=60, what="replicas balanced onto n3")
        await wait_until(lambda: steady(env), what="steady after balancing")

        async def readable(shard: int) -> bool:
            # A leader move the balancer asked for may still be under way (the status is
            # steady until its election starts): the old leader answers NodeIsNotLeader, or
            # the election is running (no leader in the status yet; with read leases its
            # NewTerm answers can wait a lease).
            try:
                leader = leader_of(env, shard)
            except LookupError:
                return False
            try:
                return await read_ok(env, leader, shard, [f"/lb{shard}"])
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                    return False
                raise

        for s in range(4):
            await wait_until(lambda s=s: readable(s), what=f"shard {s} readable")
    finally:
        await server.close()
        await cluster.close()
