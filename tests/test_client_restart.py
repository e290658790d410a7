"""The client across server restarts (kill -9, restart on the same directories and ports),
session expiry, leader hints, and the recipes under both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyxia import AsyncClient, Client, KeyNotFound, SessionState
from pyxia.client.recipes import Cache, LeaderElection, Lock, SyncLock
from pyxia.common import grpc_errors
from pyxia.errors import NodeIsNotLeader
from pyxia.proto import client_pb2
from restartable import Restartable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    s = Restartable(tmp_path_factory.mktemp("restart")).start()
    yield s
    s.kill()


@pytest.fixture
async def client(server: Restartable) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.public, request_timeout_s=30.0) as c:
        yield c


@pytest.fixture
def p() -> str:
    return f"/r-{uuid.uuid4().hex[:8]}"


async def restart(server: Restartable) -> None:
    await asyncio.get_running_loop().run_in_executor(None, server.restart)


async def test_notifications_continue_across_restart_without_loss_or_duplicate(
    client: AsyncClient, server: Restartable, p: str
) -> None:
    feed = await client.get_notifications()
    await feed.wait_connected()
    start = feed.position
    seen: list[tuple[int, int]] = []
    keys: set[str] = set()

    async def collect(until: set[str]) -> None:
        while not until <= keys:
            b = await feed.get(timeout=30)
            assert b is not None, sorted(until - keys)[:5]
            seen.append((b.shard, b.offset))
            keys.update(n.key for n in b if n.key.startswith(p))

    first = {f"{p}/a{i}" for i in range(50)}
    await asyncio.gather(*(client.put(k, b"1") for k in first))
    await collect(first)
    # kill -9 with writes in flight, restart on the same ports
    writing = asyncio.gather(*(client.put(f"{p}/b{i}", b"2") for i in range(200)))
    await restart(server)
    await writing  # unconditional puts are resent after the restart
    second = {f"{p}/b{i}" for i in range(200)} | {f"{p}/c"}
    await client.put(f"{p}/c", b"3")
    await collect(second)
    await feed.close()
    # no batch twice, in order per shard
    for shard in {s for s, _ in seen}:
        offsets = [o for s, o in seen if s == shard]
        assert offsets == sorted(set(offsets))
    # the same batches as a fresh feed reading the log from where the first one started
    expected: list[tuple[int, int]] = []
    last = {s: max(o for sh, o in seen if sh == s) for s, _ in seen}
    async with await client.get_notifications(start_after=start) as fresh:
        while any(fresh.position.get(s, -1) < o for s, o in last.items()):
            b = await fresh.get(timeout=30)
            assert b is not None
            if b.offset <= last.get(b.shard, -1):
                expected.append((b.shard, b.offset))
    assert sorted(seen) == sorted(expected)


def test_sync_client_writes_through_restart(server: Restartable, p: str) -> None:
    with Client(server.public, request_timeout_s=30.0) as c:
        c.put(f"{p}/before", b"1")
        server.restart()
        r = c.put(f"{p}/after", b"2")  # reconnects by itself
        assert c.get(f"{p}/before").value == b"1"
        assert c.get(f"{p}/after").version == r.version


async def test_session_survives_restart_and_lock_is_kept(
    client: AsyncClient, server: Restartable, p: str
) -> None:
    events: list[SessionState] = []
    client.add_session_listener(lambda e: events.append(e.state))
    lost: list[Lock] = []
    lock = Lock(client, f"{p}/lock", on_lost=lost.append)
    token = await lock.acquire(timeout=10)
    await restart(server)
    # the record and the session are still there (a restarted leader reloads sessions)
    g = await client.get(f"{p}/lock")
    assert g.version.version_id == token
    assert lock.held and not lost

    # the session is still valid on the restarted server: a new ephemeral record joins it
    e = await client.put(f"{p}/eph", b"x", ephemeral=True, partition_key=f"{p}/lock")
    assert e.version.session_id == g.version.session_id
    assert lock.held and not lost
    assert SessionState.LOST not in events
    await lock.release()
    with pytest.raises(KeyNotFound):
        await client.get(f"{p}/lock")


async def test_session_expiry_is_reported(server: Restartable, p: str) -> None:
    """Heartbeats slower than the timeout: the server expires the session, the client says
    LOST, the lock is lost, and a new ephemeral put opens a new session."""
    async with AsyncClient(server.public, session_timeout_s=2.0, session_keep_alive_s=4.0) as c:
        events: list[Any] = []
        session_lost = asyncio.Event()

        def on_event(e: Any) -> None:
            events.append(e)
            if e.state is SessionState.LOST:
                session_lost.set()

        c.add_session_listener(on_event)
        lost = asyncio.Event()
        lock = Lock(c, f"{p}/l", on_lost=lambda _l: lost.set())
        t1 = await lock.acquire(timeout=10)
        await asyncio.wait_for(lost.wait(), 15)
        assert not lock.held
        await asyncio.wait_for(session_lost.wait(), 15)  # the next heartbeat is refused
        with pytest.raises(KeyNotFound):
            await c.get(f"{p}/l")
        await lock.release()
        lock2 = Lock(c, f"{p}/l")
        assert await lock2.acquire(timeout=10) > t1  # the fencing token grows
        assert events[-1].state is SessionState.ACTIVE
        assert events[-1].session_id != events[0].session_id


HOLDER = r"""
import sys
sys.path.insert(0, sys.argv[3])
from pyxia import Client
from pyxia.client.recipes import SyncLock
c = Client(sys.argv[1], session_timeout_s=2.0)
lock = SyncLock(c, sys.argv[2])
print(lock.acquire(timeout=10), flush=True)
import time
time.sleep(600)
"""


def test_lock_passes_on_when_holder_dies(server: Restartable, p: str) -> None:
    key = f"{p}/lock"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, server.public, key, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        token = int(child.stdout.readline())
        with Client(server.public) as c:
            lock = SyncLock(c, key)
            assert not lock.try_acquire()
            child.kill()  # no more heartbeats: the session expires within 2 s
            child.wait(10)
            t2 = lock.acquire(timeout=15)
            assert t2 > token
            assert c.get(key).version.session_id is not None
            lock.release()
    finally:
        child.kill()
        child.wait(10)


async def test_lock_mutual_exclusion_and_tokens(
    client: AsyncClient, server: Restartable, p: str
) -> None:
    async with AsyncClient(server.public) as other:
        a = Lock(client, f"{p}/m")
        b = Lock(other, f"{p}/m")
        ta = await a.acquire(timeout=10)
        assert not await b.try_acquire()
        waiting = asyncio.ensure_future(b.acquire(timeout=15))
        await asyncio.sleep(0)
        assert not waiting.done()
        await a.release()
        tb = await waiting
        assert tb > ta
        assert b.held and not a.held
        await b.release()


async def test_leader_election_failover_on_session_loss(server: Restartable, p: str) -> None:
    log: list[str] = []
    key = f"{p}/leader"
    async with (
        AsyncClient(server.public, session_timeout_s=2.0) as c1,
        AsyncClient(server.public, session_timeout_s=2.0) as c2,
    ):
        e1 = LeaderElection(
            c1,
            key,
            b"one",
            on_elected=lambda t: log.append("1 elected"),
            on_lost=lambda: log.append("1 lost"),
        )
        e1.start()
        await asyncio.wait_for(e1.elected.wait(), 10)
        e2 = LeaderElection(c2, key, b"two", on_elected=lambda t: log.append("2 elected"))
        e2.start()
        assert await e2.leader() == b"one"
        # c1's session disappears on the server (as on expiry)
        sid = await c1.session_id(c1.shard_for(key))
        async with grpc.aio.insecure_channel(server.public) as ch:
            stub: Any = ch.unary_unary(
                "/io.oxia.proto.v1.OxiaClient/CloseSession",
                request_serializer=client_pb2.CloseSessionRequest.SerializeToString,
                response_deserializer=client_pb2.CloseSessionResponse.FromString,
            )
            await stub(client_pb2.CloseSessionRequest(shard=c1.shard_for(key), session_id=sid))
        await asyncio.wait_for(e2.elected.wait(), 15)
        assert await e2.leader() == b"two"
        assert log[:3] == ["1 elected", "1 lost", "2 elected"] or log[:3] == [
            "1 elected",
            "2 elected",
            "1 lost",
        ]
        await e1.stop()
        await e2.stop()
        assert await e2.leader() is None


async def test_cache_follows_changes_restart_and_session_expiry(
    client: AsyncClient, server: Restartable, p: str
) -> None:
    await client.put(f"{p}/c/a", b"1")
    async with Cache(client, f"{p}/c/", f"{p}/c//") as cache:
        assert cache.keys() == [f"{p}/c/a"]
        await client.put(f"{p}/c/b", b"2")
        await client.put(f"{p}/c/a", b"1b")
        assert await cache.wait_for(
            lambda c: c.get(f"{p}/c/b") is not None and c.get(f"{p}/c/a").value == b"1b", 10
        )
        await restart(server)
        await client.put(f"{p}/c/d", b"4")
        await client.delete(f"{p}/c/b")
        assert await cache.wait_for(lambda c: c.keys() == [f"{p}/c/a", f"{p}/c/d"], 20)
        # an ephemeral record of a client whose session expires leaves the cache
        async with AsyncClient(
            server.public, session_timeout_s=2.0, session_keep_alive_s=4.0
        ) as short:
            await short.put(f"{p}/c/e", b"5", ephemeral=True)
            assert await cache.wait_for(lambda c: c.get(f"{p}/c/e") is not None, 10)
            assert await cache.wait_for(lambda c: c.get(f"{p}/c/e") is None, 15)


# -- leader hints ----------------------------------------------------------------------------


class Redirector:
    """A fake node that says it leads every shard, then answers each data request with
    NODE_IS_NOT_LEADER and a leader hint naming the real server."""

    def __init__(self, real: str) -> None:
        self.real = real
        self.redirected = 0
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        real_stub = grpc.aio.insecure_channel(self.real)
        get_assignments = real_stub.unary_stream(
            "/io.oxia.proto.v1.OxiaClient/GetShardAssignments",
            request_serializer=client_pb2.ShardAssignmentsRequest.SerializeToString,
            response_deserializer=client_pb2.ShardAssignments.FromString,
        )
        me = self

        async def assignments(req: Any, ctx: Any) -> AsyncIterator[Any]:
            async for a in get_assignments(req):
                for ns in a.namespaces.values():
                    for sa in ns.assignments:
                        sa.leader = me.address
                yield a

        async def not_leader(req: Any, ctx: Any) -> None:
            me.redirected += 1
            await grpc_errors.abort(ctx, NodeIsNotLeader("not me", leader_hint=me.real))

        async def not_leader_stream(req: Any, ctx: Any) -> AsyncIterator[Any]:
            me.redirected += 1
            await grpc_errors.abort(ctx, NodeIsNotLeader("not me", leader_hint=me.real))
            yield None  # pragma: no cover

        ser = lambda m: m.SerializeToString()  # noqa: E731
        handlers = {
            "GetShardAssignments": grpc.unary_stream_rpc_method_handler(
                assignments,
                request_deserializer=client_pb2.ShardAssignmentsRequest.FromString,
                response_serializer=ser,
            ),
            "WriteStream": grpc.stream_stream_rpc_method_handler(
                not_leader_stream, request_deserializer=None, response_serializer=ser
            ),
            "Read": grpc.unary_stream_rpc_method_handler(
                not_leader_stream, request_deserializer=None, response_serializer=ser
            ),
            "CreateSession": grpc.unary_unary_rpc_method_handler(
                not_leader, request_deserializer=None, response_serializer=ser
            ),
        }
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("io.oxia.proto.v1.OxiaClient", handlers)]
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


async def test_leader_hints_are_followed(server: Restartable, p: str) -> None:
    red = Redirector(server.public)
    await red.start()
    try:
        async with AsyncClient(red.address, request_timeout_s=10.0) as c:
            r = await c.put(f"{p}/h", b"hinted")
            assert (await c.get(f"{p}/h")).version == r.version
            e = await c.put(f"{p}/he", b"e", ephemeral=True)
            assert e.version.is_ephemeral
            assert red.redirected >= 1
            # the hint now routes the shard to the real leader, past the fake one
            shard = c.shard_for(f"{p}/h")
            assert c.core.shard_map is not None
            assert c.core.shard_map.leader(shard) == red.address
            assert c.core.leader_of(shard) == server.public
    finally:
        await red.stop()
