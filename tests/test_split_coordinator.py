"""Shard split driven by the coordinator, in-process: three data servers and a coordinator in
one event loop, pyxia's client writing all along. A split under load loses no acknowledged
write and fails none; one that cannot finish in time aborts and the parent serves on; a
coordinator replaced mid-split (before and after the point of no return) resumes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster import Cluster
from pyxia import failpoints
from pyxia.client.async_client import AsyncClient
from pyxia.common.sharding import MAX_HASH, routing_hash
from pyxia.config import NamespaceConfig
from pyxia.coordinator.metadata.file import FileMetadataProvider
from pyxia.coordinator.model import STEADY, shards
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from pyxia.errors import InvalidArgument, ResourceUnavailable
from servers import wait_until
from test_coordinator import FAST, Env, make_config, steady


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cluster = await Cluster.start(tmp_path, 3)
    cfg = [make_config(cluster.nodes, (NamespaceConfig("default", 1, 3),))]
    metadata_dir = tmp_path / "metadata"
    server = new_server(metadata_dir, cfg)
    await server.start()
    e = Env(cluster, server, cfg)
    e.metadata_dir = metadata_dir  # type: ignore[attr-defined]
    try:
        await server.wait_leading()
        await wait_until(lambda: steady(e), what="steady")
        yield e
    finally:
        failpoints.disarm()
        await e.server.close()
        await cluster.close()


def new_server(metadata_dir: Path, cfg: list) -> CoordinatorServer:  # type: ignore[type-arg]
    """A coordinator on file metadata: another one on the same directory takes over."""
    return CoordinatorServer(
        FileMetadataProvider(metadata_dir),
        lambda: cfg[0],
        CoordinatorServerOptions(internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST),
    )


def only_shard(env: Env) -> int:
    (shard,) = env.coordinator.status.namespaces["default"].shards
    return int(shard)


class Writers:
    """Client writers putting fresh keys as fast as they are answered; every answer kept."""

    def __init__(self, client: AsyncClient, n: int = 4) -> None:
        self.client = client
        self.acked: dict[str, int] = {}
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(n)]

    async def _run(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{w}/k{i}"
            i += 1
            try:
                res = await self.client.put(key, key.encode())
                self.acked[key] = res.version.version_id
            except Exception as e:
                self.failures.append(e)
                await asyncio.sleep(0)  # a put that fails at once must not starve the loop

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_split_under_client_load_loses_and_fails_nothing(env: Env) -> None:
    c = env.coordinator
    parent = only_shard(env)
    async with AsyncClient(env.cluster.nodes[0].public, request_timeout_s=20) as client:
        writers = Writers(client)
        await wait_until(lambda: len(writers.acked) > 50, what="some writes")
        left, right = await c.split_shard("default", parent)
        assert await c.wait_split(parent, timeout=60) == "done"
        before = len(writers.acked)
        await wait_until(lambda: len(writers.acked) > before + 50, what="writes after the split")
        await writers.stop()
        assert writers.failures == []
        # Every acknowledged write is there, with the version it was answered with.
        for key, version in writers.acked.items():
            got = await client.get(key)
            assert got.version.version_id == version, key
    await wait_until(lambda: parent not in c.status.namespaces["default"].shards, what="deleted")
    ns = c.status.namespaces["default"]
    assert sorted(ns.shards) == [left, right]
    lo, hi = ns.shards[left].int32_hash_range, ns.shards[right].int32_hash_range
    assert (lo.min, lo.max, hi.min, hi.max) == (0, MAX_HASH // 2, MAX_HASH // 2 + 1, MAX_HASH)
    assert all(m.status == STEADY and not m.HasField("split") for m in ns.shards.values())
    # The parent's replicas are gone from the data servers; each child holds only its keys.
    for node in env.cluster.nodes:
        await wait_until(
            lambda n=node: parent not in n.s.director._storages, what="parent replica deleted"
        )
    for child, meta in ns.shards.items():
        leader = next(n for n in env.cluster.nodes if n.internal == meta.leader.internal)
        st = leader.s.director._storages[child]
        enc = st.db.encoding
        for ekey, _ in st.db.scan(None, enc.internal_region[0]):
            h = routing_hash(enc.decode(ekey))
            assert meta.int32_hash_range.min <= h <= meta.int32_hash_range.max
    split = c.splits_ended[parent]
    assert set(split.phase_seconds) == {"Bootstrap", "CatchUp", "Cutover"}
    assert split.frozen_seconds is not None


async def test_bad_split_requests_are_refused(env: Env) -> None:
    c = env.coordinator
    parent = only_shard(env)
    with pytest.raises(InvalidArgument, match="no shard"):
        await c.split_shard("default", parent + 100)
    with pytest.raises(InvalidArgument, match="no shard"):
        await c.split_shard("other", parent)
    with pytest.raises(InvalidArgument, match="outside"):
        await c.split_shard("default", parent, MAX_HASH)
    with pytest.raises(InvalidArgument, match="not a uint32"):
        await c.split_shard("default", parent, -1)
    failpoints.arm("split.after_bootstrap", "sleep(2000)")
    await c.split_shard("default", parent)
    with pytest.raises(ResourceUnavailable, match="already has a split"):
        await c.split_shard("default", parent)


async def test_a_split_that_cannot_finish_in_time_aborts_and_the_parent_serves_on(
    env: Env,
) -> None:
    c = env.coordinator
    parent = only_shard(env)
    failpoints.arm("split.after_catch_up", "sleep(5000)")
    async with AsyncClient(env.cluster.nodes[0].public, request_timeout_s=20) as client:
        await client.put("before", b"x")
        left, right = await c.split_shard("default", parent, timeout=1.5)
        assert await c.wait_split(parent, timeout=30) == "aborted"
        assert sorted(c.status.namespaces["default"].shards) == [parent]
        assert not c.status.namespaces["default"].shards[parent].HasField("split")
        await client.put("after", b"y")
        assert (await client.get("before")).value == b"x"
    for node in env.cluster.nodes:
        for child in (left, right):
            assert child not in node.s.director._storages
        lc = node.s.director.leaders.get(parent)
        if lc is not None:
            assert not lc.frozen and not lc.observers


@pytest.mark.parametrize("stop_at", ["split.after_catch_up", "split.after_fence"])
async def test_a_new_coordinator_resumes_a_split(env: Env, stop_at: str) -> None:
    c = env.coordinator
    parent = only_shard(env)
    failpoints.arm(stop_at, "sleep(60000)")
    async with AsyncClient(env.cluster.nodes[0].public, request_timeout_s=30) as client:
        writers = Writers(client, 2)
        await wait_until(lambda: len(writers.acked) > 20, what="some writes")
        left, right = await c.split_shard("default", parent)
        await wait_until(lambda: failpoints.hits(stop_at) > 0, what=f"the split at {stop_at}")
        # The coordinator goes away mid-split; another takes over from the same metadata.
        await env.server.close()
        failpoints.disarm()
        env.server = new_server(env.metadata_dir, env.config)  # type: ignore[attr-defined]
        await env.server.start()
        c2 = await env.server.wait_leading()
        assert await c2.wait_split(parent, timeout=60) == "done"
        await writers.stop()
        assert writers.failures == []
        for key, version in writers.acked.items():
            assert (await client.get(key)).version.version_id == version
    await wait_until(
        lambda: sorted(c2.status.namespaces["default"].shards) == [left, right], what="children"
    )
    with contextlib.suppress(KeyError):
        assert all(m.status == STEADY for _, _, m in shards(c2.status))


async def test_guarantees_across_a_split(env: Env) -> None:
    """What a split keeps, as docs/operations.md defines it:

    - notifications: a feed that followed the parent goes on from the parent's offset on each
      child; every change is delivered exactly once;
    - sequence keys: a sequence (one partition key, so one side) goes on from the parent's
      last key, strictly increasing;
    - secondary indexes: every record is found through its index exactly once, on its side;
    - versions: a record keeps the version the parent gave it; conditional writes on it work;
    - sessions: a session lived on the parent; its ephemeral records survive the cutover and
      are deleted once the session times out (its keep-alives named the parent), so none
      lingers."""
    c = env.coordinator
    parent = only_shard(env)
    async with AsyncClient(
        env.cluster.nodes[0].public, request_timeout_s=20, session_timeout_s=2.0
    ) as client:
        feed = await client.get_notifications()
        await feed.wait_connected()
        seq_before = [
            (await client.put("seq", b"", partition_key="p", sequence_key_deltas=[1])).key
            for _ in range(5)
        ]
        before = [f"n{i}" for i in range(30)]
        versions = {}
        for k in before:
            r = await client.put(k, k.encode(), secondary_indexes={"by-value": f"v-{k}"})
            versions[k] = r.version.version_id
        await client.put("eph", b"e", ephemeral=True)
        await c.split_shard("default", parent)
        assert await c.wait_split(parent, timeout=60) == "done"
        after = [f"m{i}" for i in range(30)]
        for k in after:
            await client.put(k, k.encode(), secondary_indexes={"by-value": f"v-{k}"})
        seq_after = [
            (await client.put("seq", b"", partition_key="p", sequence_key_deltas=[1])).key
            for _ in range(5)
        ]
        # Versions and conditional writes.
        for k in before:
            assert (await client.get(k)).version.version_id == versions[k]
        await client.put(
            before[0],
            b"again",
            expected_version_id=versions[before[0]],
            secondary_indexes={"by-value": f"v-{before[0]}"},
        )
        # Sequence keys go on increasing, none repeated.
        seq = seq_before + seq_after
        assert seq == sorted(seq) and len(set(seq)) == len(seq)
        # Secondary indexes: every record found once.
        found = await client.list("v-", "v-~", use_index="by-value")
        assert sorted(found) == sorted(before + after)
        # Notifications: every key created exactly once, across the parent and the children.
        created: dict[str, int] = {}
        wanted = set(before + after)
        deadline = asyncio.get_running_loop().time() + 30
        while not wanted <= set(created):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"missing notifications: {sorted(wanted - set(created))[:5]}"
            b = await feed.get(timeout=left)
            if b is None:
                continue
            for n in b:
                if n.key in wanted and n.type.name == "KEY_CREATED":
                    created[n.key] = created.get(n.key, 0) + 1
        assert all(v == 1 for v in created.values())
        await feed.close()
        # The ephemeral record is still there right after the cutover, and goes with its
        # session's timeout (its keep-alives named the parent, which is gone).
        await wait_until(
            lambda: _absent(client, "eph"), timeout=20, what="the ephemeral record expired"
        )


async def _absent(client: AsyncClient, key: str) -> bool:
    from pyxia.client.errors import KeyNotFound

    try:
        await client.get(key)
    except KeyNotFound:
        return True
    return False
