"""Found by the robustness suite: a data server that lost its disk and came back at the same
address was fenced again by the coordinator (NewTerm at the current term, then AddFollower,
which is idempotent by name: the leader kept its cursor). The cursor resumed from the old ack
offset, the follower's empty WAL accepted the append at that offset (an empty log may start
anywhere), so the replica held a log with a hole and a DB that never applied anything, yet
reported the leader's head: it could then win an election and lead the shard with no data.

A follower with an empty log now refuses an append that does not continue its DB (after a
snapshot the DB's commit offset + 1) with NODE_IS_NOT_MEMBER, and the leader sends it a
snapshot."""

from __future__ import annotations

import shutil

import grpc

from cluster import Cluster, leader_controller
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import InvalidStatus
from pyxia.proto import client_pb2, replication_pb2
from pyxia.storage import reads
from servers import wait_until

SHARD = 0


async def _write(c: Cluster, keys: list[str]) -> None:
    stub = c.channel(c.nodes[0].public).unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    req = client_pb2.WriteRequest(
        shard=SHARD, puts=[client_pb2.PutRequest(key=k, value=b"v") for k in keys]
    )
    res = await stub(req, timeout=10)
    assert all(p.status == client_pb2.OK for p in res.puts)


async def test_wiped_follower_fenced_again_gets_a_snapshot(cluster: Cluster) -> None:
    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    for i in range(30):
        await _write(cluster, [f"/before/{i}"])
    lc = leader_controller(n0, SHARD)
    await wait_until(lambda: lc.cursors[n2.internal].ack_offset >= 29, what="n2 in sync")
    await n2.stop()
    shutil.rmtree(n2.base)  # the disk is replaced
    await n2.start()
    # what the coordinator does when the server is back: fence it at the current term and add
    # it as a follower (the leader still has its cursor). The cursor may already have rebuilt
    # it by a snapshot: then NewTerm at its current term is refused (INVALID_STATUS) and, like
    # the coordinator, we take it as following.
    try:
        await cluster.add_follower(SHARD, n0, n2)
    except grpc.aio.AioRpcError as e:
        err = error_from_rpc(e)
        assert isinstance(err, InvalidStatus), err

        async def following() -> bool:
            st = await cluster.status(n2, SHARD)
            return st.status == replication_pb2.FOLLOWER

        await wait_until(following, what="n2 following after the leader's snapshot")
    for i in range(5):
        await _write(cluster, [f"/after/{i}"])

    def caught_up() -> bool:
        fc = n2.s.director.followers.get(SHARD)
        return fc is not None and fc.storage.commit_offset >= lc.commit_offset - 1

    await wait_until(caught_up, timeout=30, what="the wiped follower to apply the shard")
    fc = n2.s.director.followers[SHARD]
    got = reads.get(fc.storage.db, client_pb2.GetRequest(key="/before/0", include_value=True))
    assert got.status == client_pb2.OK
    # The follower installs the snapshot (and can apply entries after it) before the leader's
    # SendSnapshot call returns and the cursor counts the snapshot: wait for the count.
    await wait_until(
        lambda: lc.cursors[n2.internal].snapshots_sent >= 1, what="the cursor to count the snapshot"
    )


async def test_failed_follower_gets_a_snapshot_even_if_its_answer_is_lost(
    cluster: Cluster,
) -> None:
    """A follower whose storage failed answers NODE_IS_NOT_MEMBER, but when it ends the stream
    while the leader is still sending, gRPC reports INTERNAL to the leader (the status is
    lost). The leader's cursor asks the follower for its status after a failed stream."""
    from collections.abc import AsyncIterator as AI

    from pyxia.server.leader_controller import FOLLOWER

    n0, n1, n2 = cluster.nodes
    await cluster.elect(SHARD, n0, [n0, n1, n2])
    await _write(cluster, ["/a"])
    lc = leader_controller(n0, SHARD)
    fc = n2.s.director.followers[SHARD]
    fc._storage_failed(RuntimeError("disk full"))

    async def lost_status(term: int, appends: AI[bytes]) -> AI[object]:
        raise RuntimeError("the stream ended (status lost)")
        yield  # an async generator

    fc.replicate = lost_status  # type: ignore[assignment,method-assign]
    cursor = lc.cursors[n2.internal]
    before = cursor.snapshots_sent
    await _write(cluster, ["/b"])
    await wait_until(
        lambda: cursor.snapshots_sent > before and fc.status == FOLLOWER,
        timeout=20,
        what="a snapshot to the failed follower",
    )
