"""The recipes (leader election, cache) and the client's deadlines and notification feeds
against a real standalone server that is restarted (kill -9), paused (SIGSTOP) or whose
sessions really expire."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pyxia import AsyncClient, Client, KeyNotFound, RequestTimeout, SessionState
from pyxia.client.recipes import LeaderElection, Lock, SyncCache, SyncLeaderElection
from pyxia.client.results import NotificationBatch, NotificationType
from restartable import Restartable
from servers import wait_for, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    s = Restartable(tmp_path_factory.mktemp("recipes")).start()
    yield s
    s.kill()


@pytest.fixture
def p() -> str:
    return f"/rc-{uuid.uuid4().hex[:8]}"


async def restart(server: Restartable) -> None:
    await asyncio.get_running_loop().run_in_executor(None, server.restart)


# -- leader election ----------------------------------------------------------------------------


async def test_leader_keeps_leadership_across_server_restart(server: Restartable, p: str) -> None:
    """kill -9 and restart while the leader's session (10 s) outlives the restart: the session is
    reloaded, the leader keeps its term (same record, same fencing token, ``on_lost`` not
    called) and the other candidate, still campaigning, does not take over; it does as soon as
    the leader stops."""
    key = f"{p}/leader"
    lost1: list[str] = []
    elected2: list[int] = []
    async with (
        AsyncClient(server.public, session_timeout_s=10.0, request_timeout_s=30.0) as c1,
        AsyncClient(server.public, request_timeout_s=30.0) as c2,
    ):
        events1: list[SessionState] = []
        c1.add_session_listener(lambda e: events1.append(e.state))
        e1 = LeaderElection(c1, key, b"one", on_lost=lambda: lost1.append("lost"))
        e1.start()
        await asyncio.wait_for(e1.elected.wait(), 10)
        token = e1.lock.fencing_token
        assert token is not None
        before = await c1.get(key)
        assert before.version.version_id == token

        # The second candidate campaigns: its create-if-absent put opens its session, is
        # refused, and it waits for the record to go.
        campaigning = asyncio.Event()
        c2.add_session_listener(
            lambda e: campaigning.set() if e.state is SessionState.ACTIVE else None
        )
        e2 = LeaderElection(c2, key, b"two", on_elected=elected2.append)
        e2.start()
        await asyncio.wait_for(campaigning.wait(), 10)
        assert await e2.leader() == b"one"

        await restart(server)
        restarted = time.monotonic()

        # The session survived on the restarted server: a new ephemeral record joins it, and
        # the restarted server answers its heartbeats.
        e = await c1.put(f"{p}/eph", b"x", ephemeral=True, partition_key=key)
        assert e.version.session_id == before.version.session_id
        session = c1.core.sessions.session(c1.shard_for(key))
        assert session is not None and session.session_id == before.version.session_id
        await wait_until(lambda: session.last_ok > restarted, 15, "a heartbeat answered")
        # The leader's record was neither deleted nor replaced (a new one has a new version).
        after = await c2.get(key)
        assert after.value == b"one"
        assert after.version.version_id == token
        assert after.version.session_id == before.version.session_id
        assert e1.is_leader and e1.elected.is_set()
        assert e1.terms == 1 and e1.lock.fencing_token == token
        assert not lost1
        assert SessionState.LOST not in events1
        assert not e2.is_leader and not e2.elected.is_set() and not elected2

        # The second candidate kept campaigning through the restart.
        await e1.stop()
        assert lost1 == ["lost"]  # stop() gives up the leadership it held: on_lost, once
        await asyncio.wait_for(e2.elected.wait(), 10)
        assert await e2.leader() == b"two"
        assert elected2 and elected2[0] > token
        await e2.stop()
        assert await e2.leader() is None


async def test_leader_election_failover_on_real_session_expiry(server: Restartable, p: str) -> None:
    """The leader's client heartbeats every 4 s for a 2 s session: the server expires the
    session (no CloseSession sent by hand), the record goes, ``on_lost`` fires and the other
    candidate becomes leader within the session timeout plus a grace period."""
    key = f"{p}/leader"
    timeout = 2.0
    grace = 10.0
    lost1 = asyncio.Event()
    async with (
        AsyncClient(server.public, session_timeout_s=timeout, session_keep_alive_s=4.0) as c1,
        AsyncClient(server.public) as c2,
    ):
        e1 = LeaderElection(c1, key, b"one", on_lost=lost1.set)
        e2 = LeaderElection(c2, key, b"two")
        try:
            e1.start()
            await asyncio.wait_for(e1.elected.wait(), 10)
            t0 = time.monotonic()
            token1 = e1.lock.fencing_token
            assert token1 is not None
            e2.start()
            await asyncio.wait_for(e2.elected.wait(), timeout + grace)
            took = time.monotonic() - t0
            assert took < timeout + grace
            # The old leader heard of its loss (the record deleted, or its heartbeat refused).
            await asyncio.wait_for(lost1.wait(), grace)
            assert e2.is_leader and await e2.leader() == b"two"
            token2 = e2.lock.fencing_token
            assert token2 is not None and token2 > token1  # the fencing token grows
            assert not e1.is_leader
        finally:
            await e1.stop()
            await e2.stop()


def test_sync_leader_election_resign_hands_over(server: Restartable, p: str) -> None:
    """``SyncLeaderElection``: the first candidate wins; when it resigns, ``on_lost`` is called
    and the other candidate takes over; the resigner keeps campaigning and wins back when the
    new leader resigns in turn."""
    key = f"{p}/leader"
    log: list[str] = []
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            log.append(what)

    with Client(server.public) as c1, Client(server.public) as c2:
        e1 = SyncLeaderElection(
            c1, key, b"one", on_elected=lambda t: note("1 elected"), on_lost=lambda: note("1 lost")
        )
        e2: SyncLeaderElection | None = None
        try:
            assert e1.wait_elected(10)
            assert e1.is_leader and e1.leader() == b"one"
            campaigning = threading.Event()
            c2.add_session_listener(
                lambda e: campaigning.set() if e.state is SessionState.ACTIVE else None
            )
            e2 = SyncLeaderElection(
                c2,
                key,
                b"two",
                on_elected=lambda t: note("2 elected"),
                on_lost=lambda: note("2 lost"),
            )
            # its create-if-absent put opened its session and was refused: it waits
            wait_for(lambda: campaigning.is_set(), 10, what="the second candidate's attempt")
            assert not e2.is_leader and e1.is_leader
            e1.resign()
            assert e2.wait_elected(10)
            assert e2.leader() == b"two"
            wait_for(lambda: "1 lost" in log, 10, what="on_lost of the resigner")
            assert not e1.is_leader
            e2.resign()
            assert e1.wait_elected(10)
            assert e1.leader() == b"one"
            wait_for(lambda: "2 lost" in log, 10, what="on_lost of the second resigner")
            assert [x for x in log if x[0] == "1"] == ["1 elected", "1 lost", "1 elected"]
            assert [x for x in log if x[0] == "2"] == ["2 elected", "2 lost"]
        finally:
            if e2 is not None:
                e2.stop()  # first: stopping e1 first would hand the leadership to e2
            e1.stop()
        # stop() gave up the leadership e1 held (on_lost once more), and e2 held none
        assert [x for x in log if x[0] == "1"] == ["1 elected", "1 lost", "1 elected", "1 lost"]
        assert [x for x in log if x[0] == "2"] == ["2 elected", "2 lost"]
        assert c1.list(f"{p}/", f"{p}//") == []


async def test_lone_candidate_regains_leadership_after_resigning(
    server: Restartable, p: str
) -> None:
    """With nobody else campaigning, a resigning leader (``on_lost`` called) steps aside for
    ``resign_wait_s`` and then wins a new term with a new fencing token."""
    key = f"{p}/leader"
    lost: list[int] = []
    elected: list[int] = []
    async with AsyncClient(server.public) as c:
        e = LeaderElection(
            c,
            key,
            b"one",
            on_elected=elected.append,
            on_lost=lambda: lost.append(len(elected)),
            resign_wait_s=0.3,
        )
        e.start()
        try:
            await asyncio.wait_for(e.elected.wait(), 10)
            await e.resign()
            await wait_until(lambda: e.terms == 2 and e.is_leader, 10, "a second term")
            assert lost == [1]  # called once, between the two terms
            assert len(elected) == 2 and elected[1] > elected[0]
            assert await e.leader() == b"one"
        finally:
            await e.stop()
        assert lost == [1, 2]  # stop() gave up the second term


async def test_cancelled_acquire_leaves_no_record_behind(
    server: Restartable, p: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acquire cancelled while its create is on the way (``acquire(timeout=)`` expiring,
    an election stopped) must not leave a record that names a holder nobody is: the record is
    deleted once the create's answer arrives, before ``release()`` or the next attempt returns.
    """
    key = f"{p}/lock"
    async with AsyncClient(server.public) as c:
        lock = Lock(c, key)
        real_put = c.put
        created: list[int] = []
        cancel: list[asyncio.Future[int]] = []

        async def put(*a: Any, **kw: Any) -> Any:
            r = await real_put(*a, **kw)
            created.append(r.version.version_id)
            if cancel:  # the server created the record; the caller is cancelled first
                cancel.pop().cancel()
                await asyncio.sleep(0)
            return r

        monkeypatch.setattr(c, "put", put)

        async def cancelled_acquire() -> None:
            task = asyncio.ensure_future(lock.acquire())
            cancel.append(task)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            assert not cancel and not lock.held

        # then release(): the record is gone when it returns
        await cancelled_acquire()
        await lock.release()
        with pytest.raises(KeyNotFound):
            await c.get(key)

        # then a new attempt at once: it does not adopt the record being undone
        await cancelled_acquire()
        token = await lock.acquire(timeout=10)
        assert token > created[-2]
        assert lock.held and (await c.get(key)).version.version_id == token
        await lock.release()
        with pytest.raises(KeyNotFound):
            await c.get(key)


def test_sync_cache_follows_changes(server: Restartable, p: str) -> None:
    with Client(server.public) as c:
        c.put(f"{p}/c/a", b"1")
        c.put(f"{p}/other", b"x")
        with SyncCache(c, f"{p}/c/", f"{p}/c//") as cache:
            assert cache.keys() == [f"{p}/c/a"]
            a = cache.get(f"{p}/c/a")
            assert a is not None and a.value == b"1"
            c.put(f"{p}/c/b", b"2")
            c.put(f"{p}/c/a", b"1b")
            c.put(f"{p}/c//out", b"out")  # past the range end
            assert cache.wait_for(
                lambda x: x.get(f"{p}/c/b") is not None and x.get(f"{p}/c/a").value == b"1b",
                10,
            )
            c.delete(f"{p}/c/a")
            assert cache.wait_for(lambda x: x.get(f"{p}/c/a") is None, 10)
            assert cache.keys() == [f"{p}/c/b"]


# -- deadlines ----------------------------------------------------------------------------------

REQUEST_TIMEOUT = 1.0
MARGIN = 8.0
"""Bounds a hang, not a speed: the sync client's own fallback (no answer from its loop) fires
at request_timeout + 10 s, so a bound below that tells the request's deadline fired."""


class Stopped:
    """SIGSTOPs the server; always SIGCONTs it on exit."""

    def __init__(self, server: Restartable) -> None:
        self.pid = server.pid

    def __enter__(self) -> Stopped:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def test_async_deadlines_against_a_stopped_server(server: Restartable, p: str) -> None:
    async with AsyncClient(server.public, request_timeout_s=REQUEST_TIMEOUT) as c:
        await c.put(f"{p}/k", b"1")  # connected, shard map known
        with Stopped(server):
            for name, call in (
                ("put", lambda: c.put(f"{p}/k", b"2")),
                ("get", lambda: c.get(f"{p}/k")),
            ):
                t0 = time.monotonic()
                with pytest.raises(RequestTimeout):
                    await asyncio.wait_for(call(), REQUEST_TIMEOUT + MARGIN + 5)
                took = time.monotonic() - t0
                assert took < REQUEST_TIMEOUT + MARGIN, (name, took)
        # the server answers again once resumed
        deadline = time.monotonic() + 20
        while True:
            try:
                await c.put(f"{p}/k", b"3")
                break
            except RequestTimeout:
                assert time.monotonic() < deadline
        assert (await c.get(f"{p}/k")).value == b"3"


def test_sync_deadlines_against_a_stopped_server(server: Restartable, p: str) -> None:
    with Client(server.public, request_timeout_s=REQUEST_TIMEOUT) as c:
        c.put(f"{p}/k", b"1")
        with Stopped(server):
            for name, call in (
                ("put", lambda: c.put(f"{p}/k", b"2")),
                ("get", lambda: c.get(f"{p}/k")),
            ):
                t0 = time.monotonic()
                with pytest.raises(RequestTimeout):
                    call()
                took = time.monotonic() - t0
                assert took < REQUEST_TIMEOUT + MARGIN, (name, took)

        def resumed() -> bool:
            try:
                c.put(f"{p}/k", b"3")
                return True
            except RequestTimeout:
                return False

        wait_for(resumed, 20, what="the resumed server")
        assert c.get(f"{p}/k").value == b"3"


# -- notifications ------------------------------------------------------------------------------


async def test_notifications_async_for(server: Restartable, p: str) -> None:
    """``async for`` over a feed yields every change once, in order per key, and ends when the
    feed is closed."""
    async with AsyncClient(server.public) as c:
        feed = await c.get_notifications()
        await feed.wait_connected()
        keys = [f"{p}/n{i}" for i in range(20)]
        await asyncio.gather(*(c.put(k, b"v") for k in keys))
        await c.delete(keys[0])
        want = {(k, NotificationType.KEY_CREATED) for k in keys} | {
            (keys[0], NotificationType.KEY_DELETED)
        }
        seen: list[tuple[str, NotificationType]] = []

        async def consume(it: AsyncIterator[NotificationBatch]) -> None:
            async for batch in it:
                assert batch.offset == feed.position[batch.shard]
                seen.extend((n.key, n.type) for n in batch if n.key.startswith(p))
                if want <= set(seen):
                    break

        await asyncio.wait_for(consume(feed), 15)
        assert sorted(seen) == sorted(want)  # each once
        assert seen.index((keys[0], NotificationType.KEY_DELETED)) > seen.index(
            (keys[0], NotificationType.KEY_CREATED)
        )

        # a consumer blocked in `async for` finishes when the feed is closed
        rest: list[Any] = []

        async def drain() -> None:
            async for batch in feed:
                rest.append(batch)

        task = asyncio.ensure_future(drain())
        await asyncio.sleep(0)
        assert not task.done()
        await feed.close()
        await asyncio.wait_for(task, 10)
        assert not [n for b in rest for n in b if n.key.startswith(p)]


def test_sync_notifications_resume_from_saved_position(server: Restartable, p: str) -> None:
    """A consumer saves its feed's ``position`` and goes away; changes are made while nobody
    listens; a new client resuming with ``start_after=position`` gets exactly the batches that
    followed, the same as a feed that never stopped: no loss, no repeat."""

    def ours(b: NotificationBatch) -> list[tuple[str, NotificationType]]:
        return [(n.key, n.type) for n in b if n.key.startswith(p)]

    def read_until(feed: Any, keys: set[str]) -> list[NotificationBatch]:
        out: list[NotificationBatch] = []
        got: set[str] = set()
        while not keys <= got:
            b = feed.get(timeout=10)
            assert b is not None, sorted(keys - got)[:5]
            out.append(b)
            got.update(k for k, _ in ours(b))
        return out

    with Client(server.public) as writer:
        shards = sorted(writer.core.shard_map.shards)  # type: ignore[union-attr]
        with writer.get_notifications() as reference:
            reference.wait_connected(10)
            first = [f"{p}/a{i}" for i in range(10)]
            with Client(server.public) as consumer, consumer.get_notifications() as feed:
                feed.wait_connected(10)
                for k in first:
                    writer.put(k, b"1")
                read_until(feed, set(first))
                saved = feed.position
            assert set(saved) == set(shards)

            # while nobody listens
            second = [f"{p}/b{i}" for i in range(10)]
            for k in second:
                writer.put(k, b"2")
            writer.delete(first[0])
            # one sentinel per shard closes the window
            sentinels: dict[int, str] = {}
            i = 0
            while len(sentinels) < len(shards):
                k = f"{p}/s{i}"
                sentinels.setdefault(writer.shard_for(k), k)
                i += 1
            for k in sentinels.values():
                writer.put(k, b"end")

            with (
                Client(server.public) as resumed,
                resumed.get_notifications(start_after=saved) as again,
            ):
                got = read_until(again, set(sentinels.values()))
            expected = [
                b
                for b in read_until(reference, set(first) | set(second) | set(sentinels.values()))
                if b.offset > saved[b.shard]
            ]

    def per_shard(batches: list[NotificationBatch]) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        for b in batches:
            out.setdefault(b.shard, []).append((b.offset, [(n.key, n.type) for n in b]))
        return out

    assert per_shard(got) == per_shard(expected)
    changes = [c for b in got for c in ours(b)]
    assert sorted(changes) == sorted(
        [(k, NotificationType.KEY_CREATED) for k in second]
        + [(first[0], NotificationType.KEY_DELETED)]
        + [(k, NotificationType.KEY_CREATED) for k in sentinels.values()]
    )
