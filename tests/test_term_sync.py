"""Term records of many shards made durable together (``server/term_sync.py`` and
``ShardDB.write_term``/``sync_term``), asserted by mechanism:

- ``sync_term`` fdatasyncs each of RocksDB's WAL files and fsyncs the DB directory;
- N shards whose terms are stored in one loop step share one round, and no ``store`` returns
  before its shard's WAL file was fdatasynced after its term was written;
- a sync that fails fails that shard's store alone; the others' stores return;
- N shards' terms stored through the group are all read back after the process is killed
  (-9) right after the stores returned;
- a standalone server's restart fences each shard through the group (a round carried many
  shards) and every shard leads in the next term.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from public_server import ServerThread
from pyxia.common import keys
from pyxia.server.term_sync import TermSyncGroup
from pyxia.storage.db import DbResources, ShardDB, TermOptions

ENCODING = keys.encoding_by_name("hierarchical")


def _dbs(tmp_path: Path, n: int) -> list[ShardDB]:
    res = DbResources()
    return [ShardDB(tmp_path / f"db{i}", ENCODING, res) for i in range(n)]


def _synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Records (call, path) of every fdatasync/fsync made through ``os``."""
    calls: list[tuple[str, str]] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_sync_term_syncs_rocksdb_wal_files_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (db,) = _dbs(tmp_path, 1)
    try:
        db.write_term(7, TermOptions(False, "natural"))
        assert db.read_term() == (7, TermOptions(False, "natural"))
        calls = _synced_paths(monkeypatch)
        db.sync_term()
        logs = sorted(str(p) for p in db.path.glob("*.log"))
        assert logs, "RocksDB keeps its WAL in the DB directory"
        assert sorted(p for c, p in calls if c == "fdatasync") == logs
        assert ("fsync", str(db.path)) in calls
    finally:
        db.close()


async def test_terms_stored_in_one_step_share_a_round_and_wait_for_their_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 40
    dbs = _dbs(tmp_path, n)
    try:
        calls = _synced_paths(monkeypatch)
        group = TermSyncGroup(asyncio.get_running_loop(), threads=4)
        order: list[tuple[str, int]] = []
        real_sync_term = ShardDB.sync_term

        def sync_term(self: ShardDB) -> None:
            real_sync_term(self)
            order.append(("synced", dbs.index(self)))

        monkeypatch.setattr(ShardDB, "sync_term", sync_term)

        async def store(i: int) -> None:
            await group.store(dbs[i], 10 + i, TermOptions())
            order.append(("returned", i))

        await asyncio.gather(*(store(i) for i in range(n)))
        assert group.rounds == 1 and group.synced == n
        for i in range(n):
            assert order.index(("synced", i)) < order.index(("returned", i))
            assert dbs[i].read_term()[0] == 10 + i
        synced_dirs = {p for c, p in calls if c == "fsync"}
        assert synced_dirs == {str(db.path) for db in dbs}
        # A store after the round ran goes in a round of its own.
        await group.store(dbs[0], 99, TermOptions())
        assert group.rounds == 2 and dbs[0].read_term()[0] == 99
    finally:
        for db in dbs:
            db.close()


async def test_a_failed_sync_fails_that_shards_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = _dbs(tmp_path, 5)
    try:
        real_sync_term = ShardDB.sync_term

        def sync_term(self: ShardDB) -> None:
            if self is dbs[2]:
                raise OSError(5, "Input/output error")
            real_sync_term(self)

        monkeypatch.setattr(ShardDB, "sync_term", sync_term)
        group = TermSyncGroup(asyncio.get_running_loop())
        results = await asyncio.gather(
            *(group.store(db, 3, TermOptions()) for db in dbs), return_exceptions=True
        )
        assert [isinstance(r, OSError) for r in results] == [False, False, True, False, False]
    finally:
        for db in dbs:
            db.close()


def test_stored_terms_survive_kill_9(tmp_path: Path) -> None:
    n = 30
    child = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pathlib import Path
        from pyxia.common import keys
        from pyxia.server.term_sync import TermSyncGroup
        from pyxia.storage.db import DbResources, ShardDB, TermOptions

        async def main():
            res = DbResources()
            enc = keys.encoding_by_name("hierarchical")
            dbs = [ShardDB(Path({str(tmp_path)!r}) / f"db{{i}}", enc, res) for i in range({n})]
            group = TermSyncGroup(asyncio.get_running_loop())
            await asyncio.gather(
                *(group.store(db, 100 + i, TermOptions(i % 2 == 0)) for i, db in enumerate(dbs))
            )
            assert group.rounds == 1, group.rounds
            print("stored", flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "stored", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(timeout=30)
    res = DbResources()
    for i in range(n):
        db = ShardDB(tmp_path / f"db{i}", ENCODING, res)
        try:
            assert db.read_term() == (100 + i, TermOptions(i % 2 == 0))
        finally:
            db.close()


def test_a_standalone_start_fences_its_shards_in_shared_rounds(tmp_path: Path) -> None:
    s = ServerThread(tmp_path, namespaces=(("default", 100),))
    try:
        group = TermSyncGroup.for_loop(s.loop)
        director = s.node.server.director
        assert group.synced >= 100
        assert group.rounds < 50, (group.rounds, group.synced)
        for shard in range(100):
            lc = director.leaders[shard]
            assert lc.term == lc.storage.read_term()[0] >= 0
    finally:
        s.close()
