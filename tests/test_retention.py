"""Retention on every replica, in-process: 3 data servers (RF=3) in one event loop, driven
through the coordination RPCs, under a sustained overwrite of 1,000 keys of 1 KiB.

- every replica's WAL directory and DB stay bounded, leaders and followers alike;
- every replica converges to the same notification window, and a follower that becomes
  leader serves it;
- a follower within the size window catches up from the log (the time rule waits for it), one
  further behind is trimmed past and brought back by a snapshot, and the cluster converges;
- a replica's storage never deletes what its DB has not applied and flushed, and refuses to
  open a log that starts after its DB (replaying it would skip entries).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, Node, leader_controller
from pyxia.common.keys import HIERARCHICAL
from pyxia.errors import ReplicaCorrupt
from pyxia.proto import client_pb2
from pyxia.server.leader_controller import LEADER, log_entry_value
from pyxia.server.retention import check_interval_s
from pyxia.server.shard_storage import ShardStorage, StorageOptions
from pyxia.storage import reads
from retention_load import VALUE, Samples, overwrite
from servers import wait_until

log = logging.getLogger("test.retention")

SHARD = 0
SEGMENT = 512 * 1024
RETENTION_SIZE = 4 * 1024 * 1024  # 8 segments
RETENTION_S = 2.0


def write_stub(c: Cluster, node: Node):  # type: ignore[no-untyped-def]
    stub = c.channel(node.public).unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )

    async def write(keys: list[str]) -> None:
        res = await stub(
            client_pb2.WriteRequest(
                shard=SHARD, puts=[client_pb2.PutRequest(key=k, value=VALUE) for k in keys]
            ),
            timeout=20,
        )
        assert all(p.status == client_pb2.OK for p in res.puts)

    return write


async def read(c: Cluster, node: Node, key: str) -> None:
    stub = c.channel(node.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/Read",
        request_serializer=client_pb2.ReadRequest.SerializeToString,
        response_deserializer=client_pb2.ReadResponse.FromString,
    )
    req = client_pb2.ReadRequest(shard=SHARD, gets=[client_pb2.GetRequest(key=key)])
    async for r in stub(req, timeout=10):
        assert all(g.status == client_pb2.OK for g in r.gets)


def storage(node: Node):  # type: ignore[no-untyped-def]
    return node.s.director._storages[SHARD]


def replica_dirs(c: Cluster) -> dict[str, tuple[Path, Path]]:
    return {
        f"n{n.index}": (n.base / "wal" / "default" / f"shard-{SHARD}", n.base / "db" / "default")
        for n in c.nodes
    }


def window(node: Node) -> list[int]:
    return [b.offset for b in reads.read_notifications(storage(node).db, -1, 10**6)]


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {
        "wal_segment_size": SEGMENT,
        "wal_retention_size": RETENTION_SIZE,
        "wal_retention_s": RETENTION_S,
        "notifications_retention_s": RETENTION_S,
        "maintenance_interval_s": None,
    }


async def test_every_replica_stays_bounded_and_serves_the_same_notification_window(
    cluster: Cluster,
) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await cluster.push_assignments({SHARD: n0})
    samples = Samples(replica_dirs(cluster))
    seconds = 5 * RETENTION_S
    writes = await overwrite(write_stub(cluster, n0), seconds, on_tick=samples.take)
    samples.take()
    log.info("%d writes of 20 x 1 KiB in %.0f s\n%s", writes, seconds, samples.table(1.0))
    wal_written = writes * 20 * 1024
    assert wal_written > 3 * RETENTION_SIZE, "the load must overwrite the bound several times"

    # The bound: the size bound plus the segments written while a trim runs (it flushes the
    # DB first, in a worker thread: two segments on a quiet machine, a third at a load average
    # of 28 in CI, so four are allowed) plus the index files; leaders and followers. Without
    # trimming a replica would hold everything written (over three times the size bound).
    wal_bound = RETENTION_SIZE + 4 * SEGMENT + 64 * 1024
    for name in samples.dirs:
        assert samples.max_wal(name) <= wal_bound, (name, samples.max_wal(name))
    # The DB: 1,000 live keys of 1 KiB, the notifications of the last 2 s and what RocksDB
    # has not compacted yet: bounded well below what was written.
    db_bound = 24 * 1024 * 1024
    for name in samples.dirs:
        assert samples.max_db(name) <= db_bound, (name, samples.max_db(name))
    for n in cluster.nodes:
        assert storage(n).wal.first_offset > 0, f"n{n.index}'s WAL was never trimmed"

    # Every replica has applied the same entries; after a check each holds the same
    # notification window, whenever it trims.
    lc = leader_controller(n0, SHARD)
    commit = lc.commit_offset
    await read(cluster, n0, "/k0000")  # its confirmation round carries the commit offset
    await wait_until(
        lambda: all(storage(n).commit_offset == commit for n in cluster.nodes),
        what="every replica applied the same entries",
    )
    for n in cluster.nodes:
        n.s.run_maintenance()
    before = window(n0)
    assert before and before[0] > 0, "the window moved"
    assert window(n1) == before and window(n2) == before
    newest = reads.last_notification_batch(storage(n0).db)
    assert newest is not None
    first_kept = reads.read_notifications(storage(n0).db, -1, 1)[0]
    assert first_kept.timestamp > newest[1] - RETENTION_S * 1000

    # A follower becomes leader: it serves the same window.
    await cluster.elect(SHARD, n1, [n0, n1, n2])
    await cluster.push_assignments({SHARD: n1})
    await wait_until(lambda: leader_controller(n1, SHARD).status == LEADER, what="n1 leads")
    n1.s.run_maintenance()
    assert window(n1) == before
    stub = cluster.channel(n1.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/GetNotifications",
        request_serializer=client_pb2.NotificationsRequest.SerializeToString,
        response_deserializer=client_pb2.NotificationBatch.FromString,
    )
    call = stub(client_pb2.NotificationsRequest(shard=SHARD, start_offset_exclusive=-1))
    served = []
    async for b in call:
        served.append(b.offset)
        if len(served) == len(before):
            break
    call.cancel()
    assert served == before


async def test_time_retention_on_every_replica(tmp_path: Path) -> None:
    """With a size bound that never binds, the time rule alone trims every replica: no closed
    segment outlives the retention by more than a check interval (and a slow loop)."""
    retention = 1.0
    c = await Cluster.start(
        tmp_path,
        3,
        wal_segment_size=64 * 1024,
        wal_retention_size=1024 * 1024 * 1024,
        wal_retention_s=retention,
        notifications_retention_s=retention,
        maintenance_interval_s=None,
    )
    try:
        n0, n1, n2 = c.nodes
        await c.elect(SHARD, n0, [n0, n1, n2])
        await c.push_assignments({SHARD: n0})
        ages: dict[int, float] = {n.index: 0.0 for n in c.nodes}

        def oldest_age() -> None:
            now_ms = int(time.time() * 1000)
            for n in c.nodes:
                closed = [s for s in storage(n).wal.segments() if s[4]]
                if closed:
                    ages[n.index] = max(ages[n.index], (now_ms - closed[0][3]) / 1000)

        await overwrite(write_stub(c, n0), 6 * retention, writers=2, batch=5, on_tick=oldest_age)
        slack = check_interval_s(retention) + 1.0  # a check interval plus a busy loop
        for idx, age in ages.items():
            assert age <= retention + slack, f"n{idx}: a closed segment {age:.2f} s old"
        for n in c.nodes:
            assert storage(n).wal.first_offset > 0, f"n{n.index} never trimmed"
    finally:
        await c.close()


async def test_lagging_followers_log_or_snapshot(tmp_path: Path) -> None:
    """A follower within the size window is waited for by the time rule and catches up from
    the log; one further behind is trimmed past and gets a snapshot; all converge."""
    c = await Cluster.start(
        tmp_path,
        3,
        wal_segment_size=64 * 1024,
        wal_retention_size=512 * 1024,
        wal_retention_s=0.2,
        notifications_retention_s=0.2,
        maintenance_interval_s=None,
    )
    try:
        n0, n1, n2 = c.nodes
        await c.elect(SHARD, n0, [n0, n1, n2])
        await c.push_assignments({SHARD: n0})
        write = write_stub(c, n0)
        await write(["/warm"])
        lc = leader_controller(n0, SHARD)
        await wait_until(
            lambda: all(cur.ack_offset == lc.commit_offset for cur in lc.cursors.values()),
            what="followers in sync",
        )

        # n1 goes away briefly: far less than the size bound is written, but much more than
        # the time retention passes. The leader keeps what n1 needs.
        await n1.stop()
        cursor1 = lc.cursors[n1.internal]
        acked = cursor1.ack_offset
        for i in range(60):  # ~120 KiB, 2 segments
            await write([f"/a{i}", f"/b{i}"])
        closed = [s for s in lc.wal.segments() if s[4]]
        assert closed, "the writes closed a segment"
        newest_closed = closed[-1][3]
        await wait_until(
            lambda: time.time() * 1000 > newest_closed + 0.2 * 1000 + 50,
            what="every closed segment to expire",
        )
        n0.s.run_maintenance()
        assert lc.wal.first_offset <= acked + 1, "the time rule trimmed what n1 needs"
        await n1.start(
            wal_segment_size=64 * 1024,
            wal_retention_size=512 * 1024,
            wal_retention_s=0.2,
            notifications_retention_s=0.2,
            maintenance_interval_s=None,
        )
        await wait_until(
            lambda: cursor1.ack_offset == lc.commit_offset, timeout=30, what="n1 caught up"
        )
        assert cursor1.snapshots_sent == 0, "n1 was within the size window: no snapshot"

        # n2 goes away for longer: several times the size bound is written. It is not waited
        # for: its entries are trimmed and a snapshot brings it back.
        await n2.stop()
        cursor2 = lc.cursors[n2.internal]
        acked2 = cursor2.ack_offset
        await overwrite(write, 3.0, writers=4, batch=20)
        await wait_until(
            lambda: lc.wal.first_offset > acked2 + 1, what="the leader trimmed past n2"
        )
        await n2.start(
            wal_segment_size=64 * 1024,
            wal_retention_size=512 * 1024,
            wal_retention_s=0.2,
            notifications_retention_s=0.2,
            maintenance_interval_s=None,
        )
        await wait_until(lambda: cursor2.snapshots_sent >= 1, timeout=30, what="n2 snapshot")
        await write(["/after"])
        commit = lc.commit_offset
        await read(c, n0, "/after")  # its confirmation round carries the commit offset
        await wait_until(
            lambda: all(storage(n).commit_offset >= commit for n in c.nodes),
            timeout=30,
            what="every replica applied everything",
        )

        # Same data everywhere.
        def dump(n: Node) -> dict[str, bytes]:
            db = storage(n).db
            return {
                db.encoding.decode(k): v
                for k, v in db.scan(None, None)
                if not db.encoding.decode(k).startswith("__oxia/")
            }

        d0 = dump(n0)
        assert "/after" in d0 and "/a59" in d0
        assert dump(n1) == d0
        assert dump(n2) == d0
    finally:
        await c.close()


def _storage_with_log(tmp_path: Path, entries: int) -> ShardStorage:
    opts = StorageOptions(data_dir=tmp_path / "db", wal_dir=tmp_path / "wal", wal_segment_size=4096)
    st = ShardStorage("default", SHARD, opts, HIERARCHICAL)
    for i in range(entries):
        req = client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key=f"/k{i}", value=b"v" * 100)])
        st.wal.append(1, i, log_entry_value(req.SerializeToString()), 1000 + i)
    st.wal.sync()
    return st


def test_flush_and_trim_never_deletes_what_the_db_has_not_applied(tmp_path: Path) -> None:
    st = _storage_with_log(tmp_path, 100)
    st.apply_up_to(50)
    first = st.flush_and_trim(90, 50, st.db)
    assert 0 < first <= 51
    st.close()
    st = ShardStorage("default", SHARD, st.options, HIERARCHICAL)
    try:
        assert st.commit_offset == 50 and st.wal.first_offset == first
        assert st.apply_up_to(99) == 49
    finally:
        st.close()
    # A replaced DB (a snapshot installed meanwhile) or a closed replica: nothing happens.
    assert st.flush_and_trim(90, 99, st.db) == -1


def test_a_log_that_starts_after_the_db_is_refused(tmp_path: Path) -> None:
    """What a trim without the flush could leave behind after a crash: a DB that applied up
    to 9 and a log that starts later. Replaying would skip entries: opening fails instead (a
    cluster server then sets the replica aside and rebuilds it from its peers)."""
    st = _storage_with_log(tmp_path, 100)
    st.apply_up_to(9)
    assert st.wal.trim(60, 99) > 10
    st.close()
    with pytest.raises(ReplicaCorrupt, match="committed entries are missing"):
        ShardStorage("default", SHARD, st.options, HIERARCHICAL)


async def test_a_closed_segment_triggers_the_check(tmp_path: Path) -> None:
    """With the timer out of the way (1 h), the size bound still holds: every segment the WAL
    closes wakes the keeper."""
    c = await Cluster.start(
        tmp_path,
        1,
        wal_segment_size=64 * 1024,
        wal_retention_size=256 * 1024,
        maintenance_interval_s=3600,
    )
    try:
        (n0,) = c.nodes
        await c.elect(SHARD, n0, [n0])
        write = write_stub(c, n0)
        checks = n0.s.retention.checks
        for i in range(100):  # ~400 KiB: more than the bound
            await write([f"/c{i}-{j}" for j in range(4)])
        await wait_until(
            lambda: sum(s[2] for s in storage(n0).wal.segments()) <= 256 * 1024,
            what="the WAL back under its size bound",
        )
        assert storage(n0).wal.first_offset > 0
        assert n0.s.retention.checks > checks
    finally:
        await c.close()
