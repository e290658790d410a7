"""kill -9 of a standalone server with many shards in the middle of a write load spread over
all of them (so the group commit shares its sync rounds between shards): after a restart on
the same directories every acknowledged write is there, with its value."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

import pytest

from pyxia.client.async_client import AsyncClient
from servers import ServerProcess, standalone_args

pytestmark = pytest.mark.slow  # starts pyxia processes

SHARDS = 50
IN_FLIGHT = 200
KILL_AFTER_ACKS = 600


async def _load_until_killed(server: ServerProcess, acked: dict[str, bytes]) -> None:
    """Keeps IN_FLIGHT puts in flight over every shard; kills the server (-9) once
    KILL_AFTER_ACKS are acknowledged, with the rest still in flight."""
    killed = asyncio.Event()
    counter = itertools.count()

    async with AsyncClient(server.public, request_timeout_s=10.0) as c:

        async def worker() -> None:
            while not killed.is_set():
                i = next(counter)
                key, value = f"/crash/{i}", b"v%d" % i
                try:
                    await c.put(key, value)
                except Exception:
                    if killed.is_set():
                        return
                    raise
                if not killed.is_set():
                    acked[key] = value
                    if len(acked) >= KILL_AFTER_ACKS:
                        killed.set()
                        server.kill()

        tasks = [asyncio.create_task(worker()) for _ in range(IN_FLIGHT)]
        done, pending = await asyncio.wait(tasks, timeout=120)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for t in done:
            t.result()  # a failure before the kill fails the test
        assert killed.is_set(), "the load did not reach the kill point"


async def _read_back(address: str, acked: dict[str, bytes]) -> list[str]:
    async with AsyncClient(address, request_timeout_s=30.0) as c:
        got = await asyncio.gather(*(c.get(k) for k in acked))
    return [k for (k, v), g in zip(acked.items(), got, strict=True) if g.value != v]


def test_kill_dash_nine_across_many_shards_keeps_acknowledged_writes(tmp_path: Path) -> None:
    args = standalone_args(tmp_path, "--shards", str(SHARDS))
    acked: dict[str, bytes] = {}
    s = ServerProcess(args, tmp_path).start(timeout=120)
    try:
        asyncio.run(_load_until_killed(s, acked))
    finally:
        s.kill()
    s = ServerProcess(args, tmp_path).start(timeout=120)
    try:
        missing = asyncio.run(_read_back(s.public, acked))
    finally:
        s.kill()
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost"
