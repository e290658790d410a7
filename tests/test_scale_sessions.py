"""Sessions and notifications at scale, scaled down (issue 21 §3; the full-size harness is
benches/scale/sessions.py): on an in-process RF=3 cluster, 1,000 sessions expiring at once are
deleted (with their ephemeral records) in a few log entries (one per expiry round they spread
over) while 1,000 others live on; a keep-alive never touches the expiry heap; 50 notification
subscribers of one shard, 5 of which stop reading, are served while the slow ones are cut off
with a retryable status and resume from their last offset without a gap."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
import grpc
import pytest

from cluster import Cluster, Node, leader_controller
from pyxia.cli import main
from pyxia.cli.server_cmd import build_options
from pyxia.client.async_client import AsyncClient
from pyxia.client.streams import NotificationsFeed
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import ResourceUnavailable
from pyxia.metrics import ShardMetrics
from pyxia.proto import client_pb2
from pyxia.server.session_manager import MAX_EXPIRED_PER_ENTRY, SessionManager, expiry_batches
from servers import wait_until

SHARD = 0
SEND_TIMEOUT_S = 1.0


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    # Expiry rounds every second: sessions whose deadlines fall within a second expire together.
    return {"session_check_interval_s": 1.0, "notifications_send_timeout_s": SEND_TIMEOUT_S}


def _unary(c: Cluster, node: Node, method: str, resp: Any) -> Any:
    return c.channel(node.public).unary_unary(
        f"/io.oxia.proto.v1.OxiaClient/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp.FromString,
    )


async def _start(c: Cluster) -> Node:
    n0, n1, n2 = c.nodes
    await c.elect(SHARD, n0, [n0, n1, n2])
    await c.push_assignments({SHARD: n0})
    return n0


# -- sessions -------------------------------------------------------------------------------------


def test_expiry_batches_split_in_order() -> None:
    due: list[Any] = list(range(2_500))
    batches = expiry_batches(due, 1_000)
    assert [len(b) for b in batches] == [1_000, 1_000, 500]
    assert [x for b in batches for x in b] == due
    assert expiry_batches([]) == []
    with pytest.raises(ValueError, match="positive"):
        expiry_batches(due, 0)


class _Leader:
    shard = 0
    handing_off = False

    def __init__(self) -> None:
        self.metrics = ShardMetrics("default", 0)

    def propose_internal(self, build: Any, on_applied: Any = None) -> Any:
        raise AssertionError("not logged")


def test_keep_alive_is_constant_work() -> None:
    """A heartbeat refreshes a deadline in place: the expiry heap does not grow with the
    number of heartbeats, and a refreshed session is not due."""
    now = [100.0]
    sm = SessionManager(_Leader(), clock=lambda: now[0])
    sm.load({})
    for sid in range(1_000):
        sm._add(sid, 2_000, "c", now[0])
    for _ in range(20):
        now[0] += 1.0
        for sid in range(500):
            sm.keep_alive(sid)
    assert len(sm._heap) == 1_000
    due = sm.due(now[0])
    assert sorted(s.id for s in due) == list(range(500, 1_000))
    assert len(sm._heap) == 500  # the refreshed ones were re-queued at their deadlines


async def test_a_thousand_sessions_expire_in_a_few_entries(cluster: Cluster) -> None:
    n0 = await _start(cluster)
    lc = leader_controller(n0, SHARD)
    create = _unary(cluster, n0, "CreateSession", client_pb2.CreateSessionResponse)
    write = _unary(cluster, n0, "Write", client_pb2.WriteResponse)
    keep_alive = _unary(cluster, n0, "KeepAlive", client_pb2.KeepAliveResponse)

    async def sessions(n: int, timeout_ms: int) -> list[int]:
        out: list[int] = []
        for i in range(0, n, 250):
            reqs = [
                create(
                    client_pb2.CreateSessionRequest(
                        shard=SHARD, session_timeout_ms=timeout_ms, client_identity=f"c{j}"
                    ),
                    timeout=30,
                )
                for j in range(i, min(i + 250, n))
            ]
            out.extend(r.session_id for r in await asyncio.gather(*reqs))
        return out

    kept = await sessions(1_000, 60_000)
    doomed = await sessions(1_000, 2_000)
    for group, name in ((kept, "kept"), (doomed, "doomed")):
        for i in range(0, len(group), 500):
            puts = [
                client_pb2.PutRequest(key=f"/eph/{name}/{sid}", value=b"e", session_id=sid)
                for sid in group[i : i + 500]
            ]
            res = await write(client_pb2.WriteRequest(shard=SHARD, puts=puts), timeout=30)
            assert all(p.status == client_pb2.OK for p in res.puts)
    # One heartbeat each, all at once: their deadlines now fall within a short spread.
    beats_started = time.monotonic()
    await asyncio.gather(
        *(keep_alive(client_pb2.SessionHeartbeat(shard=SHARD, session_id=s)) for s in doomed)
    )
    spread = time.monotonic() - beats_started
    entries_before = lc.sessions.expiry_entries_total
    offset_before = lc.commit_offset
    started = time.monotonic()
    await wait_until(
        lambda: lc.sessions.expired_total >= 1_000, timeout=30, what="the doomed sessions expire"
    )
    # Applied (the deleted sessions leave the manager when their entry is applied).
    await wait_until(lambda: len(lc.sessions.sessions) == 1_000, what="the expiry is applied")
    assert lc.commit_offset > offset_before
    elapsed = time.monotonic() - started
    entries = lc.sessions.expiry_entries_total - entries_before
    assert lc.sessions.expired_total == 1_000
    # One entry per expiry round (every second here; up to MAX_EXPIRED_PER_ENTRY each) that
    # the deadlines spread over, not one per session.
    assert 1 <= entries <= min(10, int(spread) + 3), (entries, spread)
    assert MAX_EXPIRED_PER_ENTRY >= 1_000
    assert elapsed < 20
    # Every doomed ephemeral record is gone, every kept one is there, on the leader and
    # (once applied) on a follower.
    read = cluster.channel(n0.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/Read",
        request_serializer=client_pb2.ReadRequest.SerializeToString,
        response_deserializer=client_pb2.ReadResponse.FromString,
    )

    async def statuses(name: str, group: list[int]) -> set[int]:
        req = client_pb2.ReadRequest(
            shard=SHARD, gets=[client_pb2.GetRequest(key=f"/eph/{name}/{s}") for s in group]
        )
        out: set[int] = set()
        async for r in read(req, timeout=30):
            out.update(g.status for g in r.gets)
        return out

    assert await statuses("doomed", doomed) == {client_pb2.KEY_NOT_FOUND}
    assert await statuses("kept", kept) == {client_pb2.OK}
    follower = cluster.nodes[1].s.director.followers[SHARD]
    await wait_until(
        lambda: follower.storage.commit_offset >= lc.commit_offset, what="the follower applies"
    )
    db = follower.storage.db
    assert db.get(db.encoding.encode(f"/eph/doomed/{doomed[0]}")) is None
    assert db.get(db.encoding.encode(f"/eph/kept/{kept[0]}")) is not None


# -- notifications --------------------------------------------------------------------------------


async def _drain(call: Any, into: list[int]) -> grpc.aio.AioRpcError:
    """Reads a stream to its end, which must be an error; the offsets go to ``into``."""
    try:
        async for b in call:
            into.append(b.offset)
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the stream ended without an error")


async def test_slow_subscribers_are_cut_off_and_resume_without_gaps(cluster: Cluster) -> None:
    n0 = await _start(cluster)
    lc = leader_controller(n0, SHARD)
    service = n0.s.client_service
    assert service is not None
    write = _unary(cluster, n0, "Write", client_pb2.WriteResponse)
    # Slow subscribers on their own connection with small flow-control windows (no BDP
    # probing), so that a few hundred KB fill them.
    slow_channel = grpc.aio.insecure_channel(
        n0.public, options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)]
    )
    get_fast = cluster.channel(n0.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/GetNotifications",
        request_serializer=client_pb2.NotificationsRequest.SerializeToString,
        response_deserializer=client_pb2.NotificationBatch.FromString,
    )
    get_slow = slow_channel.unary_stream(
        "/io.oxia.proto.v1.OxiaClient/GetNotifications",
        request_serializer=client_pb2.NotificationsRequest.SerializeToString,
        response_deserializer=client_pb2.NotificationBatch.FromString,
    )
    start = lc.commit_offset
    req = client_pb2.NotificationsRequest(shard=SHARD, start_offset_exclusive=start)
    n_writes = 40
    written: list[int] = []
    fast_seen: list[list[int]] = [[] for _ in range(45)]

    async def fast(i: int) -> None:
        async for b in get_fast(req):
            fast_seen[i].append(b.offset)
            if len(fast_seen[i]) == n_writes:
                return

    fast_tasks = [asyncio.ensure_future(fast(i)) for i in range(45)]
    slow_calls = [get_slow(req) for _ in range(5)]
    # And a client whose application reads late: its feed holds 2 batches, then stops reading.
    async with AsyncClient(n0.public, request_timeout_s=20) as client:
        core = await client._ready()
        feed = NotificationsFeed(core, {SHARD: start}, max_buffered=2)
        try:
            for i in range(n_writes):
                puts = [
                    client_pb2.PutRequest(key=f"/n/{i}/{j}/" + "k" * 200, value=b"v")
                    for j in range(100)
                ]
                await write(client_pb2.WriteRequest(shard=SHARD, puts=puts), timeout=30)
                written.append(lc.commit_offset)
            # The fast ones got everything while the slow ones were stuck.
            await asyncio.wait_for(asyncio.gather(*fast_tasks), 60)
            notified = list(fast_seen[0])
            assert len(notified) == n_writes
            assert all(seen == notified for seen in fast_seen)
            await wait_until(
                lambda: service.slow_subscribers_cut_off >= 5,
                timeout=30,
                what="the slow subscribers are cut off",
            )
            # A slow subscriber reads what reached it, then the retryable status; it resumes
            # from the last offset it got and misses nothing.
            for call in slow_calls:
                got: list[int] = []
                status = await _drain(call, got)
                assert status.code() == grpc.StatusCode.UNAVAILABLE
                assert isinstance(error_from_rpc(status), ResourceUnavailable)
                assert "too slow" in (status.details() or "")
                assert got == notified[: len(got)] and len(got) < n_writes
                resumed = client_pb2.NotificationsRequest(
                    shard=SHARD, start_offset_exclusive=got[-1] if got else start
                )
                async for b in get_slow(resumed):
                    got.append(b.offset)
                    if len(got) == n_writes:
                        break
                assert got == notified
            # The client's feed (2 batches buffered, the rest held back by flow control while
            # its application did not read) delivers every batch in order once read.
            delivered: list[int] = []
            while len(delivered) < n_writes:
                b = await asyncio.wait_for(feed.next(), 30)
                delivered.append(b.offset)
            assert delivered == notified
        finally:
            await feed.close()
            await slow_channel.close()
            for t in fast_tasks:
                t.cancel()
    # The server kept serving: a new subscriber gets the newest batch.
    tail = client_pb2.NotificationsRequest(shard=SHARD, start_offset_exclusive=notified[-2])
    async for b in get_fast(tail):
        assert b.offset == notified[-1]
        break


@pytest.mark.parametrize("command", ["server", "standalone"])
def test_notifications_send_timeout_flag(command: str) -> None:
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None
    ctx = cmd.make_context(command, ["--notifications-send-timeout", "2s"])
    assert ctx.params["notifications_send_timeout"] == 2.0
    assert cmd.make_context(command, []).params["notifications_send_timeout"] == 30.0
    for bad in ("0", "0s"):
        with pytest.raises(click.BadParameter, match="more than zero"):
            cmd.make_context(command, ["--notifications-send-timeout", bad])
    if command == "server":
        assert build_options(ctx.params).notifications_send_timeout_s == 2.0
