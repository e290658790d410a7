"""Retention on every replica, with real processes: 3 ``pyxia server`` (RF=3) and a
``pyxia coordinator``, a client overwriting 1,000 keys of 1 KiB for several retention periods
(2 s here) while the shard's leader is killed -9 (the coordinator elects another) and then a
follower is killed -9 — each restarted on its directories.

Every replica's WAL directory stays under the size bound plus a segment at every sample,
leader and followers alike, restarted ones included; the DBs stay bounded; every acknowledged
write is there at the end (a trim interrupted by kill -9 loses nothing and the WAL reopens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import pyxia
from proc_cluster import Member, ProcCluster
from pyxia.common import keys
from pyxia.common.keys import HIERARCHICAL
from pyxia.proto import storage_pb2
from pyxia.storage.db import ShardDB
from retention_load import KEYS, VALUE, Samples, overwrite
from servers import wait_for

log = logging.getLogger("test.retention")

SEGMENT = 512 * 1024
RETENTION_SIZE_MB = 4
RETENTION_S = 2.0
RETENTION_ARGS = (
    "--wal-segment-size",
    str(SEGMENT),
    "--wal-retention-time",
    str(RETENTION_S),
    "--wal-retention-size-mb",
    str(RETENTION_SIZE_MB),
    "--notifications-retention-time",
    str(RETENTION_S),
)
WAL_BOUND = RETENTION_SIZE_MB * 2**20 + 4 * SEGMENT + 64 * 1024
"""The size bound, the segments written while a trim runs (it flushes the DB first, in a
worker thread: two segments on a quiet machine, more at a CI's load, so four are allowed, as in
test_retention.py), the index files."""
FAULT_WAL_BOUND = 3 * RETENTION_SIZE_MB * 2**20
"""While a kill is being recovered from, entries not yet known committed stay (a replica never
trims past what it applied): the WAL may pass the size bound for that while, not without bound."""
DB_BOUND = 8 * 2**20
"""1,000 keys of 1 KiB, 2 s of notifications, what RocksDB has not compacted yet."""


def start_cluster(base: Path, server_args: tuple[str, ...]) -> ProcCluster:
    """One RF=3 shard on three servers started with ``server_args``."""
    return ProcCluster.start(
        base,
        namespaces=[{"name": "default", "initialShardCount": 1, "replicationFactor": 3}],
        server_args=server_args,
    )


def replica_dirs(c: ProcCluster) -> dict[str, tuple[Path, Path]]:
    return {
        m.base.name: (m.base / "wal" / "default" / "shard-0", m.base / "db" / "default")
        for m in c.members
    }


def kill_leader(c: ProcCluster) -> Member:
    """kill -9 the shard's leader; returns once another server leads at a higher term."""
    victim, term = c.shard_leader(0)
    assert victim is not None
    victim.kill()

    def new_leader() -> bool:
        member, t = c.shard_leader(0)
        return member is not None and member is not victim and t > term

    wait_for(new_leader, timeout=60, interval=0.05, what="a new leader")
    return victim


async def run_load(
    c: ProcCluster,
    server_args: tuple[str, ...],
    seconds: float,
    faults: bool,
    fault_windows: list[tuple[float, float]] | None = None,
) -> tuple[Samples, dict[str, int], int]:
    """The overwrite load, sampled every 0.2 s; with ``faults``, the leader and then a
    follower are killed -9 and restarted along the way (each kill's window, from the kill to
    its server serving again, in the samples' time, appended to ``fault_windows``). Returns the
    samples, the last acknowledged version of each key and how many batches of 20 puts were
    written."""
    samples = Samples(replica_dirs(c))
    acked: dict[str, int] = {}
    windows = fault_windows if fault_windows is not None else []

    def since_start() -> float:
        return time.monotonic() - samples.started

    async with pyxia.AsyncClient(c.service_addresses, request_timeout_s=30) as client:

        async def write(keys: list[str]) -> None:
            results = await asyncio.gather(
                *(client.put(k, VALUE) for k in keys), return_exceptions=True
            )
            for k, r in zip(keys, results, strict=True):
                if isinstance(r, BaseException):
                    continue  # a write caught in the leader change: not acknowledged
                acked[k] = max(acked.get(k, -1), r.version.version_id)

        async def faults_along() -> None:
            await asyncio.sleep(seconds / 4)
            t0 = since_start()
            victim = await asyncio.to_thread(kill_leader, c)
            await asyncio.to_thread(victim.start, *server_args)
            windows.append((t0, since_start()))
            await asyncio.sleep(seconds / 4)
            leader, _ = await asyncio.to_thread(c.shard_leader, 0)
            follower = next(m for m in c.members if m is not leader)
            t0 = since_start()
            follower.kill()
            await asyncio.to_thread(follower.start, *server_args)
            windows.append((t0, since_start()))

        tasks = [overwrite(write, seconds, writers=8, batch=20, on_tick=samples.take)]
        if faults:
            tasks.append(faults_along())
        writes = (await asyncio.gather(*tasks))[0]
        samples.take()
        # Every acknowledged write is there (at its version or a later one).
        for i in range(0, KEYS, 100):
            keys = [f"/k{j:04d}" for j in range(i, i + 100)]
            got = await asyncio.gather(*(client.get(k) for k in keys))
            for k, g in zip(keys, got, strict=True):
                if k in acked:
                    assert g.version.version_id >= acked[k], f"lost the acknowledged {k}"
    return samples, acked, writes


@pytest.fixture
def proc_cluster_options() -> dict[str, Any]:
    return {
        "namespaces": [{"name": "default", "initialShardCount": 1, "replicationFactor": 3}],
        "server_args": RETENTION_ARGS,
    }


async def test_every_replica_wal_stays_bounded_through_leader_and_follower_kills(
    proc_cluster: ProcCluster,
) -> None:
    seconds = 8 * RETENTION_S
    windows: list[tuple[float, float]] = []
    samples, acked, writes = await run_load(
        proc_cluster, RETENTION_ARGS, seconds, faults=True, fault_windows=windows
    )
    log.info(
        "%d x 20 puts of 1 KiB in %.0f s, kills recovered over %s; WAL and DB of each replica "
        "(MiB) over time:\n%s",
        writes,
        seconds,
        [(round(a, 1), round(b, 1)) for a, b in windows],
        samples.table(1.0),
    )
    assert len(acked) == KEYS
    assert len(windows) == 2

    def recovering(t: float) -> bool:
        # From the kill until one retention period after its server serves again (the
        # commit offset moves on and the next trims catch up).
        return any(a <= t <= b + RETENTION_S for a, b in windows)

    steady = [s for s in samples.rows if not recovering(s.t)]
    assert len(steady) >= 10, "the load must run well outside the kills too"
    for name in samples.dirs:
        worst = max(s.wal[name] for s in steady)
        assert worst <= WAL_BOUND, (name, worst)
        assert samples.max_wal(name) <= FAULT_WAL_BOUND, (name, samples.max_wal(name))
        assert samples.max_db(name) <= DB_BOUND, (name, samples.max_db(name))


def dump(db_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every user record of a (closed) shard DB, read offline: key -> (version, value)."""
    db = ShardDB(db_dir, HIERARCHICAL)
    try:
        out = {}
        for k, v in db.scan(None, None):
            key = db.encoding.decode(k)
            if not key.startswith(keys.INTERNAL_KEY_PREFIX):
                e = storage_pb2.StorageEntry.FromString(v)
                out[key] = (e.version_id, e.value)
        return out
    finally:
        db.close()


@pytest.mark.parametrize("point", ["retention.after_flush_before_trim", "retention.after_trim"])
async def test_kill_during_a_trim_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A replica killed -9 in the middle of a trim (its DB flushed, its segments being
    deleted) reopens its WAL, catches up and ends with exactly the others' data."""
    c = ProcCluster(
        tmp_path,
        [Member(tmp_path / f"s{i}") for i in range(3)],
        [{"name": "default", "initialShardCount": 1, "replicationFactor": 3}],
    )
    c.write_config()
    victim = c.members[1]
    try:
        for m in c.members:
            if m is victim:
                monkeypatch.setenv("PYXIA_FAILPOINTS", f"{point}=crash")
            m.start(*RETENTION_ARGS)
            monkeypatch.delenv("PYXIA_FAILPOINTS", raising=False)
        c.start_coordinator()
        c.wait_steady()
        acked: dict[str, int] = {}
        async with pyxia.AsyncClient(c.service_addresses, request_timeout_s=30) as client:

            async def write(batch: list[str]) -> None:
                results = await asyncio.gather(
                    *(client.put(k, VALUE) for k in batch), return_exceptions=True
                )
                for k, r in zip(batch, results, strict=True):
                    if not isinstance(r, BaseException):
                        acked[k] = max(acked.get(k, -1), r.version.version_id)

            loop = asyncio.get_running_loop()
            died = loop.create_future()

            def watch() -> None:
                if not victim.alive and not died.done():
                    died.set_result(None)

            load = asyncio.ensure_future(overwrite(write, 60, writers=4, on_tick=watch))
            await asyncio.wait_for(died, 45)  # the first trim on the victim kills it
            victim.start(*RETENTION_ARGS)  # no failpoint now
            await asyncio.sleep(3 * RETENTION_S)  # the load goes on: more trims everywhere
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            for k, version in list(acked.items()):
                got = await client.get(k)
                assert got.version.version_id >= version, f"lost the acknowledged {k}"

            # Every replica applies everything: a read's confirmation round carries the commit
            # offset to the followers.
            def converged() -> bool:
                leader, _ = c.shard_leader(0)
                if leader is None:
                    return False
                try:
                    commit = c.replica_status(leader, 0).commit_offset
                    return all(c.replica_status(m, 0).commit_offset == commit for m in c.members)
                except grpc.RpcError:
                    return False  # e.g. a replica that cannot open its shard

            async def settle() -> bool:
                await client.get("/k0000")
                return await asyncio.to_thread(converged)

            deadline = loop.time() + 60
            while not await settle():
                assert loop.time() < deadline, "the replicas did not converge"
                await asyncio.sleep(0.05)
        c.kill_coordinator()
        for m in c.members:
            assert m.proc is not None
            assert m.proc.terminate() == 0  # a clean close flushes the DBs
        # Nobody was found corrupt and rebuilt from its peers (which a trim that did not
        # flush the DB first would cause: the replica's log would start after its DB).
        aside = [p.name for m in c.members for p in m.base.glob("*/default/shard-0.corrupt-*")]
        assert not aside, aside
        dumps = [dump(m.base / "db" / "default" / "shard-0") for m in c.members]
        assert dumps[0] == dumps[1] == dumps[2]
        for k, version in acked.items():
            assert dumps[1][k][0] >= version, f"{victim.base.name} lost {k}"
    finally:
        c.close()
