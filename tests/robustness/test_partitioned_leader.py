"""Found by the robustness suite: a shard leader cut off from the other servers and the
coordinator while clients still reach it (the ``partition-leader`` fault).

1. Fixed: a client with a write stream open to the old leader kept sending its writes there
   after the assignments named the new leader (the stream only moved when it broke), so every
   write of the shard timed out for as long as the partition lasted. The writer now leaves a
   stream whose server is no longer the shard's leader.
2. Fixed: the old leader kept serving reads from its DB (Oxia does the same), so a client that
   still followed it (its assignments come from the isolated server) read values older than
   writes already acknowledged by the new leader: not linearizable. A leader now has a
   majority of its ensemble confirm its term before it serves a read (read_index.py); cut off,
   it refuses the read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import pyxia
from pyxia.robustness.cluster import Cluster, ClusterSpec, Node
from pyxia.test_hooks import set_dial_map

pytestmark = pytest.mark.slow  # the robustness cluster: real processes behind proxies


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path / "c", ClusterSpec(shards=1))
    await c.start()
    try:
        assert await c.wait_steady(60)
        set_dial_map(c.client_dial_map)
        yield c
    finally:
        set_dial_map({})
        await c.close()


async def _isolate_leader(c: Cluster) -> tuple[Node, Node, list[Node]]:
    """Cuts the leader of shard 0 off from the servers and the coordinator (clients still reach
    it); returns (old leader, new leader, the others)."""
    leaders = await c.leaders()
    old = leaders[0][0]
    assert old is not None
    links = [x for x in c.links if old.name in x.split("->") and not x.startswith("client")]
    await c.proxies.set(links, "refuse")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = (await c.leaders()).get(0, (None, 0))[0]
        if new is not None and new is not old:
            return old, new, [n for n in c.servers if n is not old]
        await asyncio.sleep(0.1)
    raise AssertionError("no new leader for shard 0")


async def _wait_leader(client: pyxia.AsyncClient, leader: Node) -> None:
    """Until the client's assignments name ``leader`` for shard 0 (they are pushed)."""
    changed = asyncio.Event()
    remove = client.core.add_map_listener(lambda m: changed.set())
    try:
        async with asyncio.timeout(10):
            while client.core.leader_of(0) != leader.public:
                changed.clear()
                await changed.wait()
    finally:
        remove()


def _following(first: Node, rest: list[Node]) -> pyxia.AsyncClient:
    """A client that takes its assignments from ``first``."""
    return pyxia.AsyncClient([first.public, *(n.public for n in rest)], request_timeout_s=10)


async def test_writes_move_to_the_new_leader(cluster: Cluster) -> None:
    old = (await cluster.leaders())[0][0]
    assert old is not None
    others = [n for n in cluster.servers if n is not old]
    async with _following(others[0], [old, others[1]]) as client:
        await client.put("/k", b"before")  # opens a write stream to the old leader
        _, new, _ = await _isolate_leader(cluster)

        await _wait_leader(client, new)
        t = time.monotonic()
        await client.put("/k", b"after")
        assert time.monotonic() - t < 5, "the write waited on the old leader's stream"


async def test_no_stale_read_from_an_isolated_leader(cluster: Cluster) -> None:
    old = (await cluster.leaders())[0][0]
    assert old is not None
    others = [n for n in cluster.servers if n is not old]
    async with (
        _following(old, others) as stale,
        _following(others[0], [others[1], old]) as fresh,
    ):
        await fresh.put("/k", b"v1")
        _, new, _ = await _isolate_leader(cluster)
        await _wait_leader(fresh, new)
        await fresh.put("/k", b"v2")  # acknowledged by the new leader
        try:
            got = (await stale.get("/k")).value  # invoked after v2 was acknowledged
        except pyxia.RequestTimeout:
            return  # refusing to answer would be fine
        assert got == b"v2"
