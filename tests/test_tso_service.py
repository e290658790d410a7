"""GetTs on real data servers (in-process, loopback gRPC, driven through their coordination
RPCs): grants from the TSO shard's leader, hints from everyone else, the fence failpoints
(transient error → the same leader recovers; not-leader → the new leader serves), a deposed
leader that was never told (the lease keeps it from overlapping its successor), and a
permanent error that stops the oracle but not the data server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from cluster import Cluster, Node, leader_controller
from pyxia import failpoints
from pyxia.config import ConfigError, NamespaceConfig, parse_cluster_config
from pyxia.node import standalone, tso_of
from pyxia.proto import client_pb2, tso_pb2
from pyxia.server.data_server import ServerOptions
from pyxia.server.standalone import with_tso_namespace
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso import metrics as tso_metrics
from pyxia.tso.checker import Record, check
from pyxia.tso.client import decode_leader_hint
from pyxia.tso.driver import HIGH_WATER_KEY, DirectorLeadership, Leading
from pyxia.tso.options import TsoOptions
from servers import wait_until

GET_TS = "/tsoracle.v1.TsoService/GetTs"
OPTIONS = TsoOptions(lease_s=0.1)


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"tso": OPTIONS, "namespace": DEFAULT_NAMESPACE}


def stub(c: Cluster, node: Node) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return c.channel(node.public).unary_unary(GET_TS)


async def get_ts(c: Cluster, node: Node, count: int = 1) -> tso_pb2.GetTsResponse:
    raw = await stub(c, node)(tso_pb2.GetTsRequest(count=count).SerializeToString(), timeout=5)
    return tso_pb2.GetTsResponse.FromString(raw)


async def get_ts_error(c: Cluster, node: Node, count: int = 1) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_ts(c, node, count)
    return info.value


def hint(e: grpc.aio.AioRpcError) -> tuple[str | None, int | None]:
    for k, v in e.trailing_metadata() or ():
        if k == "tsoracle-leader-hint-bin":
            assert isinstance(v, bytes)
            h = decode_leader_hint(v)
            assert h is not None
            return h.endpoint, h.epoch
    raise AssertionError("no leader hint trailer")


async def serves(c: Cluster, node: Node) -> bool:
    try:
        await get_ts(c, node)
        return True
    except grpc.aio.AioRpcError:
        return False


async def elect(c: Cluster, leader: Node, ensemble: list[Node] | None = None) -> int:
    term = await c.elect(0, leader, ensemble or c.nodes)
    await c.push_assignments({0: leader})
    return term


def first_ts(r: tso_pb2.GetTsResponse) -> int:
    return (r.physical_ms << 18) | r.logical_start


# -- grants and hints -----------------------------------------------------------------------------


async def test_the_leader_grants_and_the_others_hint_it(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    term = await elect(cluster, n1)
    await wait_until(lambda: serves(cluster, n1), what="the leader to serve")
    r1 = await get_ts(cluster, n1, 10)
    r2 = await get_ts(cluster, n1, 262_144)
    assert r1.count == 10 and r2.count == 262_144
    assert (r1.epoch_hi, r1.epoch_lo) == (0, term + 1)  # the wire epoch is term + 1
    assert first_ts(r2) > first_ts(r1) + 9
    assert r2.logical_start == 0  # a full millisecond: never split
    for other in (n0, n2):
        e = await get_ts_error(cluster, other)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert hint(e) == (n1.public, term + 1)  # the leader's epoch from the assignments


async def test_bad_requests_are_invalid_argument(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, n0))
    for count in (0, 262_145):
        e = await get_ts_error(cluster, n0, count)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(cluster, n0)(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_no_tso_namespace_means_no_hint(cluster: Cluster) -> None:
    cluster.namespace = "default"
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    e = await get_ts_error(cluster, n0)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e) == (None, None)


async def test_a_call_during_the_fence_is_held_until_the_leader_serves(cluster: Cluster) -> None:
    n2 = cluster.nodes[2]
    failpoints.arm("fence.after_load_before_persist", "1*sleep(300)")
    term = await elect(cluster, n2)
    t0 = time.monotonic()
    r = await get_ts(cluster, n2)  # sent while the fence sleeps: answered when it serves
    assert r.epoch_lo == term + 1 and time.monotonic() - t0 > 0.1


async def test_a_fence_longer_than_the_hold_hints_the_leader_itself(cluster: Cluster) -> None:
    n2 = cluster.nodes[2]
    failpoints.arm("fence.after_load_before_persist", "1*sleep(2000)")
    term = await elect(cluster, n2)
    e = await get_ts_error(cluster, n2)  # held for fence_hold_s (1 s), then redirected
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e) == (n2.public, term + 1)
    await wait_until(lambda: serves(cluster, n2), what="the fence to finish")


# -- failpoints in the fence ----------------------------------------------------------------------


async def test_transient_error_in_the_fence_the_same_leader_recovers(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    hits = failpoints.hits("fence.after_load_before_persist")
    failpoints.arm("fence.after_load_before_persist", "3*raise")
    term = await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, n0), what="the same leader to serve")
    tso = tso_of(n0.s)
    assert tso is not None
    assert tso.watch.transient_retries == 3
    assert failpoints.hits("fence.after_load_before_persist") == hits + 3
    assert (await get_ts(cluster, n0)).epoch_lo == term + 1
    assert leader_controller(n0, 0).term == term


async def test_not_leader_during_the_fence_the_new_leader_serves(cluster: Cluster) -> None:
    n0, n1, _ = cluster.nodes
    hits = failpoints.hits("fence.after_load_before_persist")
    failpoints.arm("fence.after_load_before_persist", "1*sleep(600)")
    await elect(cluster, n0)
    await wait_until(lambda: failpoints.hits("fence.after_load_before_persist") > hits)
    term = await elect(cluster, n1)  # n0 is fenced while its fence sleeps
    await wait_until(lambda: serves(cluster, n1), what="the new leader to serve")
    tso0 = tso_of(n0.s)
    assert tso0 is not None
    await wait_until(lambda: tso0.oracle.fencing is None, what="n0's fence to give up")
    assert tso0.watch.fences == 0 and tso0.oracle.serving is None
    e = await get_ts_error(cluster, n0)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e)[0] == n1.public
    assert (await get_ts(cluster, n1)).epoch_lo == term + 1


async def test_service_failpoint_before_allocate(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, n0))
    failpoints.arm("service.before_allocate", "1*raise")
    e = await get_ts_error(cluster, n0)
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert (await get_ts(cluster, n0)).count == 1


# -- a deposed leader that was never told ---------------------------------------------------------


@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease-control"])
async def test_deposed_unaware_leader_never_overlaps_its_successor(
    cluster: Cluster, lease: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n0 leads; n1 or n2 is elected by n1 and n2 alone (n0 is not told, as if it were paused or
    cut off). With the lease, n0 stops granting before its successor starts, so the history stays
    linearizable. The control run without the lease shows the checker catches the overlap."""
    if not lease:
        current = DirectorLeadership.current

        def no_lease(self: DirectorLeadership) -> object:
            s = current(self)
            return Leading(s.epoch, s.handle, False) if isinstance(s, Leading) else s

        monkeypatch.setattr(DirectorLeadership, "current", no_lease)
    n0, n1, n2 = cluster.nodes
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, n0))
    records: list[Record] = []
    stop = asyncio.Event()

    async def hammer(node: Node, client: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await get_ts(cluster, node)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.002)
                continue
            records.append(Record(client, t0, time.monotonic(), first_ts(r), first_ts(r)))

    def answered(client: int) -> int:
        return sum(1 for r in records if r.client == client)

    tasks = [asyncio.get_running_loop().create_task(hammer(n0, 0))]
    await wait_until(lambda: answered(0) >= 20, what="n0 to answer")
    # n0 keeps believing it leads. The freshest of n1 and n2 takes over: n0 may have committed
    # its latest entries with only one of them.
    successor = await cluster.elect_freshest(0, [n1, n2])
    tasks.append(asyncio.get_running_loop().create_task(hammer(successor, 1)))
    # Both hammer on while the successor serves: without the lease n0 goes on granting meanwhile.
    await wait_until(lambda: answered(1) >= 100, what="the successor to answer")
    stop.set()
    await asyncio.gather(*tasks)
    violations = check(records)
    if lease:
        assert violations == []
        last_old = max(r.received_at for r in records if r.client == 0)
        first_new = min(r.received_at for r in records if r.client == 1)
        assert last_old < first_new
        e = await get_ts_error(cluster, n0)
        assert e.code() == grpc.StatusCode.UNAVAILABLE  # its renewal cannot commit
    else:
        assert violations, "the control run should overlap"


# -- a permanent error ----------------------------------------------------------------------------


async def test_permanent_error_stops_the_oracle_not_the_server(tmp_path: Path) -> None:
    tso_metrics.FAILED.set(0)
    opts = ServerOptions(
        public_addr="127.0.0.1:0",
        internal_addr="127.0.0.1:0",
        metrics_addr=None,
        data_dir=tmp_path / "db",
        wal_dir=tmp_path / "wal",
    )
    node = standalone(opts, [NamespaceConfig("default", 1)])
    await node.start()
    try:
        server = node.server
        tso = tso_of(server)
        assert tso is not None
        addr = server.public_address
        async with grpc.aio.insecure_channel(addr) as ch:
            call = ch.unary_unary(GET_TS)
            req = tso_pb2.GetTsRequest(count=1).SerializeToString()

            async def ok() -> bool:
                try:
                    await call(req, timeout=5)
                    return True
                except grpc.aio.AioRpcError:
                    return False

            await wait_until(ok, what="serving")
            # The high-water record gets corrupted; the next fence cannot trust it.
            lc = server.director.leaders[1]
            assert lc.namespace == DEFAULT_NAMESPACE
            bad = client_pb2.WriteRequest(
                puts=[client_pb2.PutRequest(key=HIGH_WATER_KEY, value=b"not-a-number")]
            )
            await lc.propose_internal(lambda _offset: bad)
            term = lc.term + 1
            await lc.new_term(term, lc.term_options)
            await lc.become_leader(term, 1)
            await wait_until(lambda: tso.oracle.failed is not None, what="the oracle to stop")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(req, timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "permanent" in (info.value.details() or "")
            assert REGISTRY.get_sample_value("pyxia_tso_failed") == 1
            # The data server and its other shard keep going.
            write = ch.unary_unary(
                "/io.oxia.proto.v1.OxiaClient/Write",
                request_serializer=client_pb2.WriteRequest.SerializeToString,
                response_deserializer=client_pb2.WriteResponse.FromString,
            )
            res = await write(
                client_pb2.WriteRequest(
                    shard=0, puts=[client_pb2.PutRequest(key="/k", value=b"v")]
                ),
                timeout=5,
            )
            assert res.puts[0].status == client_pb2.OK
    finally:
        await node.close()
        tso_metrics.FAILED.set(0)


# -- where the oracle lives -----------------------------------------------------------------------


def _opts(tmp_path: Path) -> ServerOptions:
    return ServerOptions(metrics_addr=None, data_dir=tmp_path / "db", wal_dir=tmp_path / "wal")


def test_standalone_adds_the_tso_namespace_or_uses_the_marked_one(tmp_path: Path) -> None:
    opts = _opts(tmp_path)
    names = [n.name for n in with_tso_namespace(opts, [NamespaceConfig("default", 3)])]
    assert names == ["default", DEFAULT_NAMESPACE]
    opts = _opts(tmp_path)
    marked = [NamespaceConfig("default", 3), NamespaceConfig("clock", 1, tso=True)]
    assert with_tso_namespace(opts, marked) == marked
    assert opts.tso is not None and opts.tso.namespace == "clock"
    with pytest.raises(ValueError, match="one shard"):
        with_tso_namespace(_opts(tmp_path), [NamespaceConfig(DEFAULT_NAMESPACE, 2)])


def test_a_cluster_config_has_at_most_one_tso_namespace() -> None:
    raw = {
        "namespaces": [{"name": "a", "tso": True}, {"name": "b", "tso": True}],
        "servers": [{"public": "h:1", "internal": "h:2"}],
    }
    with pytest.raises(ConfigError, match="only one namespace may set tso"):
        parse_cluster_config(raw)
    with pytest.raises(ConfigError, match="exactly one shard"):
        parse_cluster_config(
            {**raw, "namespaces": [{"name": "a", "tso": True, "initialShardCount": 2}]}
        )
    cfg = parse_cluster_config({**raw, "namespaces": [{"name": "a", "tso": True}]})
    assert [n.tso for n in cfg.namespaces] == [True]
