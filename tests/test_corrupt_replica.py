"""A replica found corrupt when its server restarts (issue 15 §4), on a 3-server RF=3 cluster
of processes: the server's other shards keep serving, the damaged files are kept aside, and the
replica is rebuilt from its peers (it cannot lead meanwhile), holding every key afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

import pyxia
from proc_cluster import Member, ProcCluster
from pyxia.common.keys import encoding_by_name
from pyxia.common.sharding import routing_hash
from pyxia.proto import client_pb2, replication_pb2
from pyxia.server.shard_storage import ENCODING_MARKER
from pyxia.storage import reads
from pyxia.storage.db import ShardDB
from pyxia.wal_inspect import scan_shard
from servers import wait_for

SHARDS = 3


@pytest.fixture
def proc_cluster_options() -> dict[str, Any]:
    return {
        "namespaces": [{"name": "default", "initialShardCount": SHARDS, "replicationFactor": 3}]
    }


def status(c: ProcCluster, m: Member, shard: int) -> replication_pb2.GetStatusResponse | None:
    try:
        return c.replica_status(m, shard)
    except grpc.RpcError:
        return None


def test_a_corrupt_replica_is_set_aside_and_rebuilt(proc_cluster: ProcCluster) -> None:
    c = proc_cluster
    keys = [f"/key-{i:03d}" for i in range(90)]
    with pyxia.Client(c.service_addresses) as client:
        for k in keys:
            client.put(k, k.encode())
    # A replica of some shard that follows (its leader is elsewhere).
    victim = c.members[2]
    shard = next(s for s in range(SHARDS) if c.shard_leader(s)[0] is not victim)
    leader = c.shard_leader(shard)[0]
    assert leader is not None

    def applied() -> bool:
        f = status(c, victim, shard)
        return f is not None and f.commit_offset >= 5

    wait_for(applied, timeout=30, what="the follower to apply entries")
    assert victim.proc is not None and victim.proc.terminate() == 0  # DBs flushed
    log_dir = victim.base / "wal" / "default" / f"shard-{shard}"
    scan = scan_shard(log_dir)
    seg, rec = scan.segments[0], scan.segments[0].records[0]
    raw = bytearray(seg.path.read_bytes())
    raw[rec.position + 12 + 2] ^= 0xFF  # entry 0: below the DB's commit offset
    seg.path.write_bytes(bytes(raw))

    with pyxia.Client(c.service_addresses) as client:
        for k in keys[:10]:
            client.put(k, b"while-down")  # the shard moves on without the victim
    victim.start()
    assert victim.proc is not None

    # Its other shards come back at once.
    others = [s for s in range(SHARDS) if s != shard]

    def others_back() -> bool:
        for s in others:
            st = status(c, victim, s)
            if st is None or st.status not in (replication_pb2.FOLLOWER, replication_pb2.LEADER):
                return False
        return True

    wait_for(others_back, timeout=60, what="the victim's other shards to serve")

    # The damaged files are kept aside, the replica is rebuilt and no longer marked.
    db_ns, wal_ns = victim.base / "db" / "default", victim.base / "wal" / "default"
    wait_for(
        lambda: list(wal_ns.glob(f"shard-{shard}.corrupt-*")),
        timeout=60,
        what="the damaged log set aside",
    )
    kept_log = next(wal_ns.glob(f"shard-{shard}.corrupt-*"))
    assert next(db_ns.glob(f"shard-{shard}.corrupt-*")).is_dir()
    assert scan_shard(kept_log).damage is not None  # kept as found, for inspection

    def rebuilt() -> bool:
        f, lead = status(c, victim, shard), status(c, leader, shard)
        return (
            f is not None
            and lead is not None
            and f.status == replication_pb2.FOLLOWER
            and f.commit_offset >= lead.commit_offset
            and not (db_ns / f"shard-{shard}.rebuilding").exists()
        )

    wait_for(rebuilt, timeout=60, what="the replica rebuilt from its peers")
    proc = victim.proc
    log_text = wait_for(
        lambda: (out := proc.output()) and f"shard default/{shard}: rebuilt" in out and out,
        what="the rebuild in the server's log",
    )
    assert f"shard default/{shard}: the write-ahead log {log_dir} is damaged" in log_text
    assert "the replica is rebuilt from its peers" in log_text
    # The leader's cursor resumed where the replica used to be; its empty log cannot continue
    # there, so the leader sent a snapshot (the wiped-follower path).
    assert f"shard {shard}: installed a snapshot" in log_text
    assert f"shard default/{shard}: rebuilt from the leader" in log_text
    c.wait_steady()

    # Every key is still served, and the rebuilt replica holds its shard's keys itself.
    with pyxia.Client(c.service_addresses) as client:
        got = [client.get(k).value for k in keys]
    expected = dict(zip(keys, [b"while-down"] * 10 + [k.encode() for k in keys[10:]], strict=True))
    assert got == list(expected.values())
    st = c.status()
    assert st is not None
    r = st.status.namespaces["default"].shards[shard].int32_hash_range
    in_shard = [k for k in keys if r.min <= routing_hash(k) <= r.max]
    assert in_shard
    assert victim.proc.terminate() == 0
    path = db_ns / f"shard-{shard}"
    db = ShardDB(path, encoding_by_name((path / ENCODING_MARKER).read_text().strip()))
    try:
        held = {
            k: reads.get(db, client_pb2.GetRequest(key=k, include_value=True)).value
            for k in in_shard
        }
    finally:
        db.close()
    assert held == {k: expected[k] for k in in_shard}


async def test_a_rebuilding_replica_ranks_last_and_refuses_to_lead(tmp_path: Path) -> None:
    """In process: a replica whose DB is junk is set aside when a NewTerm opens it, reports the
    failure, answers NewTerm with a head below an empty replica's, refuses BecomeLeader, and
    takes both back once it holds what the leader had committed."""
    from cluster import Cluster, leader_controller
    from pyxia.common.grpc_errors import error_from_rpc
    from pyxia.errors import InvalidStatus
    from servers import wait_until as until

    c = await Cluster.start(tmp_path, 3)
    try:
        n0, n1, n2 = c.nodes
        await c.elect(0, n0, [n0, n1, n2])
        write = c.channel(n0.public).unary_unary(
            "/io.oxia.proto.v1.OxiaClient/Write",
            request_serializer=client_pb2.WriteRequest.SerializeToString,
            response_deserializer=client_pb2.WriteResponse.FromString,
        )
        for i in range(10):
            await write(
                client_pb2.WriteRequest(
                    shard=0, puts=[client_pb2.PutRequest(key=f"/k{i}", value=b"v")]
                ),
                timeout=10,
            )
        lc = leader_controller(n0, 0)
        await until(lambda: lc.cursors[n2.internal].ack_offset >= 9, what="n2 in sync")
        await n2.stop()
        db = n2.base / "db" / "default" / "shard-0"
        (db / "CURRENT").write_text("junk")
        # The coordinator's next election: n0 and n1 fenced at a new term first, so no leader's
        # cursor can reach n2 (and rebuild it) before its own NewTerm does.
        term = c.terms[0] + 1
        c.terms[0] = term
        heads = {n.internal: await c.new_term(n, 0, term) for n in (n0, n1)}
        await n2.start()
        head = await c.new_term(n2, 0, term)
        assert (head.term, head.offset) == (-1, -2)  # below an empty replica's (-1, -1)
        _, events = n2.s.director.failures.since(0)
        assert [(e.shard, e.role) for e in events] == [(0, "replica")]
        assert "corrupt db" in events[0].reason
        assert list(db.parent.glob("shard-0.corrupt-*"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.coordination(  # type: ignore[misc]
                n2,
                "BecomeLeader",
                replication_pb2.BecomeLeaderRequest(
                    namespace="default", shard=0, term=c.terms[0], replication_factor=3
                ),
                replication_pb2.BecomeLeaderResponse,
            )
        assert isinstance(error_from_rpc(err.value), InvalidStatus)
        # n0 leads the new term with n1 and the rebuilding n2 (its head below any other's).
        await c.coordination(  # type: ignore[misc]
            n0,
            "BecomeLeader",
            replication_pb2.BecomeLeaderRequest(
                namespace="default",
                shard=0,
                term=term,
                replication_factor=3,
                follower_maps={n1.internal: heads[n1.internal], n2.internal: head},
            ),
            replication_pb2.BecomeLeaderResponse,
        )
        lc = leader_controller(n0, 0)
        marker = db.parent / "shard-0.rebuilding"
        await until(lambda: not marker.exists(), timeout=30, what="n2 rebuilt")
        fc = n2.s.director.followers[0]
        assert fc.storage.commit_offset >= 9
        # the leader counts it caught up (from its log, which holds every entry from 0; a
        # leader whose log does not reach back sends a snapshot: test_replica's wiped-follower
        # cases)
        await until(lambda: lc.cursors[n2.internal].ack_offset >= 9, what="n2 caught up")
        # whole again: once it holds log entries too, it may lead the next term
        await write(
            client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="/z", value=b"v")]),
            timeout=10,
        )
        await until(lambda: fc.storage.wal.last_offset >= 10, what="n2 to log the next entry")
        await c.elect(0, n2, [n0, n1, n2])
    finally:
        await c.close()
