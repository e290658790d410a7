"""asyncio durability waits: one wake-up per sync round, errors delivered."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Procs
from pyxia._native import Wal, WalClosed
from pyxia.wal import AsyncWal, DurabilityWatcher


async def test_many_waiters_resolved_by_group_commit(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    awal = AsyncWal(wal)
    offsets = iter(range(10**9))

    async def one() -> int:
        o = next(offsets)
        wal.append(1, o, b"x" * 100, 0)
        await awal.watcher.wait_durable(o)
        assert wal.last_synced_offset >= o
        return o

    done = await asyncio.gather(*(one() for _ in range(500)))
    assert sorted(done) == list(range(500))
    rounds, _ = wal.sync_stats()
    assert rounds < 500, "group commit should need far fewer sync rounds than entries"
    assert awal.watcher.pending == 0
    await awal.close()
    assert wal.closed


async def test_append_durable_and_already_durable(tmp_path: Path) -> None:
    awal = AsyncWal(Wal(tmp_path))
    crc = await awal.append_durable([(1, o, b"v", 0) for o in range(10)])
    assert crc == awal.wal.last_crc
    assert awal.wal.last_synced_offset == 9
    await awal.watcher.wait_durable(5)  # returns at once
    assert await awal.append_durable([]) == crc
    await awal.close()


async def test_close_fails_pending_waiters(tmp_path: Path) -> None:
    wal = Wal(tmp_path, sync_data=False)
    watcher = DurabilityWatcher(wal)
    task = asyncio.create_task(watcher.wait_durable(10**6))
    await asyncio.sleep(0)
    watcher.close()
    with pytest.raises(WalClosed):
        await task
    watcher.close()  # idempotent
    with pytest.raises(WalClosed):
        await watcher.wait_durable(10**6)
    wal.close()


async def test_wal_closed_under_watcher(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    watcher = DurabilityWatcher(wal)
    wal.append(1, 0, b"x", 0)
    wal.close()  # flushes: offset 0 is durable
    await watcher.wait_durable(0)
    with pytest.raises(WalClosed):
        await watcher.wait_durable(1)
    watcher.close()


CRASH_CHILD = r"""
import asyncio, sys
from pyxia._native import Wal
from pyxia.wal import AsyncWal

async def main():
    awal = AsyncWal(Wal(sys.argv[1]))
    await awal.append_durable([(1, 0, b"durable", 0)])
    print("durable", flush=True)
    await awal.append_durable([(1, 1, b"appended", 0)])  # failpoint kills us here
    print("unreachable", flush=True)

asyncio.run(main())
"""


def test_failpoint_after_append_before_sync_crashes(tmp_path: Path, procs: Procs) -> None:
    env = {"PYXIA_FAILPOINTS": "wal.after_append_before_sync=crash"}
    p = procs.python(
        CRASH_CHILD, str(tmp_path), stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -9
    # The failpoint fires on the first append_durable, before any sync.
    assert "durable" not in out
    with Wal(tmp_path, commit_offset=-1) as wal:
        # kill -9 keeps the page cache: the appended entry is readable, but
        # nothing was acknowledged, so either outcome is allowed by the WAL.
        assert wal.last_offset in (-1, 0)
