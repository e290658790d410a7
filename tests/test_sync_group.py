"""Group commit across shards (``server/sync_group.py``) and what a server with many shards
does at startup (``ShardsDirector`` opens replicas in worker threads, ``Standalone`` elects
many at a time), asserted by their mechanism, not by timing:

- the native ``sync_many`` makes every WAL given durable and reports a closed one;
- a group round carries every leader that asked in the same loop step, and tells each only
  once its WAL is synced past what it appended;
- 100 shard leaders proposing in the same loop step share one or two sync rounds (the first
  may go inline), every write acknowledged, durable in its WAL;
- a standalone server with 100 shards opened several replicas at once;
- a leader without sessions does not wake up every check interval.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from public_server import ServerThread
from pyxia._native import Wal, sync_many
from pyxia.proto import client_pb2, storage_pb2
from pyxia.server.leader_controller import LeaderController
from pyxia.server.session_manager import SessionManager
from pyxia.server.shards_director import OPEN_CONCURRENCY
from pyxia.server.sync_group import SyncGroup
from servers import wait_until


def _wals(tmp_path: Path, n: int) -> list[Wal]:
    return [Wal(tmp_path / f"w{i}", sync_data=True) for i in range(n)]


def test_sync_many_syncs_every_wal_and_reports_a_closed_one(tmp_path: Path) -> None:
    wals = _wals(tmp_path, 20)
    try:
        for i, w in enumerate(wals):
            for off in range(i % 3 + 1):
                w.append(1, off, b"x" * 100, 0)
        wals[5].close()
        result = sync_many(wals, threads=4)
        assert len(result) == 20
        assert result[5] is not None and "closed" in result[5].lower()
        for i, (w, r) in enumerate(zip(wals, result, strict=True)):
            if i == 5:
                continue
            assert r is None
            assert w.last_synced_offset == w.last_offset == i % 3
    finally:
        for w in wals:
            w.close()


class _Member:
    def __init__(self, wal: Wal, appended: int) -> None:
        self.wal = wal
        self.appended = appended
        self.synced_when_told: list[int] = []

    def group_round_done(self) -> None:
        self.synced_when_told.append(self.wal.last_synced_offset)


def test_a_group_round_carries_the_members_of_one_loop_step(tmp_path: Path) -> None:
    wals = _wals(tmp_path, 50)

    async def scenario() -> SyncGroup:
        group = SyncGroup(asyncio.get_running_loop(), threads=4)
        members = []
        for w in wals:
            w.append(1, 0, b"y" * 64, 0)
            m = _Member(w, 0)
            members.append(m)
            group.request(m)
            group.request(m)  # asking twice in a round is one ask
        assert not group.idle
        await wait_until(lambda: all(m.synced_when_told for m in members), what="round")
        # Told once, and only after the WAL was synced past what was appended.
        assert all(m.synced_when_told == [0] for m in members)
        # A member that asks again while a round flushes goes in the next round.
        wals[0].append(1, 1, b"z", 0)
        group.request(members[0])
        await wait_until(lambda: len(members[0].synced_when_told) == 2, what="2nd round")
        assert members[0].synced_when_told[-1] == 1
        return group

    try:
        group = asyncio.run(scenario())
    finally:
        for w in wals:
            w.close()
    assert (group.rounds, group.synced) == (2, 51)
    assert group.idle


@pytest.fixture
def hundred_shards(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = ServerThread(tmp_path, namespaces=(("default", 100),))
    try:
        yield s
    finally:
        s.close()


def test_many_leaders_share_sync_rounds_and_opened_together(hundred_shards: ServerThread) -> None:
    s = hundred_shards
    director = s.node.server.director
    # Startup: several replicas were opening at once (in the director's worker threads).
    assert director.max_concurrent_opens == OPEN_CONCURRENCY
    leaders: list[LeaderController] = [director.leaders[i] for i in range(100)]

    async def write_all() -> tuple[int, int, int, list[client_pb2.WriteResponse]]:
        group = SyncGroup.for_loop(asyncio.get_running_loop())
        await wait_until(lambda: group.idle, what="idle group")  # the startup's rounds
        rounds, synced = group.rounds, group.synced
        inline = sum(lc.sync_policy.inline for lc in leaders if lc.sync_policy)
        # One write per shard, all proposed in the same loop step.
        futures = [
            lc.propose(
                client_pb2.WriteRequest(
                    shard=lc.shard, puts=[client_pb2.PutRequest(key=f"/k{lc.shard}", value=b"v")]
                )
            )
            for lc in leaders
        ]
        results = await asyncio.gather(*futures)
        inline = sum(lc.sync_policy.inline for lc in leaders if lc.sync_policy) - inline
        responses = [LeaderController.result_to_response(r) for r in results]
        return group.rounds - rounds, group.synced - synced, inline, responses

    rounds, synced, inline, responses = s.run(write_all())
    assert all(r.puts[0].status == client_pb2.OK for r in responses)
    # 100 writes on 100 shards: one group round (the first write may have gone inline while
    # the process was idle), not one round per write.
    assert rounds == 1, (rounds, synced, inline)
    assert synced + inline == 100
    for lc in leaders:
        assert lc.wal.last_synced_offset == lc.wal.last_offset


class _Leader:
    shard = 7
    handing_off = False

    class metrics:  # the attribute names of ShardMetrics
        class _Gauge:
            def set(self, _v: float) -> None:
                return None

        sessions_active = _Gauge()


def test_a_leader_without_sessions_sleeps_until_one_is_added() -> None:
    async def scenario() -> tuple[int, int]:
        m = SessionManager(_Leader(), check_interval=0.005)  # type: ignore[arg-type]
        m.start()
        # Twenty intervals without sessions: no check ran (it waits for a session).
        await asyncio.sleep(0.1)
        idle_checks = m.checks
        m.load({1: storage_pb2.SessionMetadata(timeout_ms=60_000, identity="a")})
        await wait_until(lambda: m.checks >= 3, what="session checks")
        checks = m.checks
        await m.close()
        return idle_checks, checks

    idle_checks, checks = asyncio.run(scenario())
    assert idle_checks == 0
    assert checks >= 3
