"""pyxia's client (both faces) against a real ``pyxia standalone`` with several shards and
against a real 3-server cluster (``pyxia server`` x3 + ``pyxia coordinator``, RF=3, the same 4
shards): every API, typed results and errors, merging across shards, batching under
concurrency. Every test runs on both deployments (``[standalone]`` / ``[cluster]``)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from proc_cluster import ProcCluster
from pyxia import (
    EXPECTED_RECORD_DOES_NOT_EXIST,
    AsyncClient,
    Client,
    ComparisonType,
    InvalidOptions,
    KeyNotFound,
    NotificationType,
    SessionState,
    UnexpectedVersion,
)
from pyxia.common.keys import HIERARCHICAL
from pyxia.errors import NamespaceNotFound
from servers import ServerProcess, standalone_args

CT = ComparisonType
SHARDS = 4  # in namespace "default", on both deployments


@dataclass(frozen=True)
class Deployment:
    """What the clients of a test need from a deployment: the service addresses of its servers
    (every server, a list; the client accepts a list or a comma-separated string)."""

    kind: str
    addresses: list[str]


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One deployment per module and param: pytest runs every test on the standalone, tears it
    down, then runs them all again on the cluster."""
    if request.param == "standalone":
        base = tmp_path_factory.mktemp("client")
        s = ServerProcess(standalone_args(base, "--shards", str(SHARDS)), base).start()
        try:
            yield Deployment("standalone", [s.public])
        finally:
            s.kill()
    else:
        base = tmp_path_factory.mktemp("client-cluster")
        c = ProcCluster.start(
            base,
            n=3,
            namespaces=[{"name": "default", "initialShardCount": SHARDS, "replicationFactor": 3}],
        )
        try:
            st = c.status()
            assert st is not None
            shards = st.status.namespaces["default"].shards
            assert len(shards) == SHARDS
            assert all(len(m.ensemble) == 3 for m in shards.values())  # RF=3
            yield Deployment("cluster", c.service_addresses)
        finally:
            c.close()


@pytest.fixture(scope="module")
def sync_client(deployment: Deployment) -> Iterator[Client]:
    with Client(deployment.addresses, request_timeout_s=10.0) as c:
        yield c


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(deployment.addresses, request_timeout_s=10.0) as c:
        yield c


@pytest.fixture
def p() -> str:
    return f"/c-{uuid.uuid4().hex[:8]}"


async def test_put_get_delete_versions(client: AsyncClient, p: str) -> None:
    r1 = await client.put(f"{p}/a", b"one")
    assert r1.key == f"{p}/a"
    assert r1.version.modifications_count == 0
    assert not r1.version.is_ephemeral
    g = await client.get(f"{p}/a")
    assert (g.key, g.value, g.version) == (f"{p}/a", b"one", r1.version)
    r2 = await client.put(f"{p}/a", "two")  # str values are UTF-8 encoded
    assert r2.version.version_id > r1.version.version_id
    assert r2.version.modifications_count == 1
    assert r2.version.created_timestamp == r1.version.created_timestamp
    assert (await client.get(f"{p}/a", include_value=False)).value is None
    assert await client.delete(f"{p}/a") is True
    assert await client.delete(f"{p}/a") is False
    with pytest.raises(KeyNotFound):
        await client.get(f"{p}/a")


async def test_conditional_writes(client: AsyncClient, p: str) -> None:
    r = await client.put(f"{p}/c", b"x", expected_version_id=EXPECTED_RECORD_DOES_NOT_EXIST)
    with pytest.raises(UnexpectedVersion):
        await client.put(f"{p}/c", b"y", expected_version_id=EXPECTED_RECORD_DOES_NOT_EXIST)
    with pytest.raises(UnexpectedVersion):
        await client.put(f"{p}/c", b"y", expected_version_id=r.version.version_id + 100)
    r2 = await client.put(f"{p}/c", b"y", expected_version_id=r.version.version_id)
    with pytest.raises(UnexpectedVersion):
        await client.delete(f"{p}/c", expected_version_id=r.version.version_id)
    assert await client.delete(f"{p}/c", expected_version_id=r2.version.version_id)


async def test_invalid_options_are_refused_before_sending(client: AsyncClient, p: str) -> None:
    with pytest.raises(InvalidOptions):
        await client.put("", b"x")
    with pytest.raises(InvalidOptions):
        await client.put("__oxia/term", b"x")
    with pytest.raises(InvalidOptions):
        await client.put(f"{p}/s", b"x", sequence_key_deltas=[1])  # no partition key
    with pytest.raises(InvalidOptions):
        await client.put(f"{p}/s", b"x", partition_key="pk", sequence_key_deltas=[0])
    with pytest.raises(InvalidOptions):
        await client.put(f"{p}/i", b"x", secondary_indexes={"a/b": "x"})
    # the shard's stream is still fine
    assert (await client.put(f"{p}/ok", b"1")).key == f"{p}/ok"


async def test_list_and_range_scan_merge_shards_in_hierarchical_order(
    client: AsyncClient, p: str
) -> None:
    keys = [f"{p}/k{i:03d}" for i in range(80)] + [f"{p}/k005/child", f"{p}/a/b/c"]
    await asyncio.gather(*(client.put(k, k.encode()) for k in keys))
    shards = {client.shard_for(k) for k in keys}
    assert len(shards) > 1  # the keys really are spread
    children = sorted((k for k in keys if k.count("/") == 2), key=HIERARCHICAL.encode)
    assert await client.list(f"{p}/", f"{p}//") == children
    scanned = [r async for r in client.range_scan(f"{p}/", f"{p}//")]
    assert [r.key for r in scanned] == children
    assert all(r.value == r.key.encode() for r in scanned)
    everything = await client.list(f"{p}/", "")
    assert everything == sorted(everything, key=HIERARCHICAL.encode)
    assert set(everything) >= set(keys)
    # streaming: stop early
    it = client.range_scan(f"{p}/", f"{p}//")
    first = [r.key async for r, _ in zip_async(it, range(3))]
    assert first == children[:3]


async def zip_async(it: AsyncIterator[object], r: range) -> AsyncIterator[tuple[object, int]]:
    n = iter(r)
    async for x in it:
        try:
            i = next(n)
        except StopIteration:
            break
        yield x, i
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def test_comparisons_across_shards(client: AsyncClient, p: str) -> None:
    for k in ("b", "d", "f"):
        await client.put(f"{p}/{k}", k.encode())

    async def g(key: str, ct: ComparisonType) -> str | None:
        try:
            found = (await client.get(f"{p}/{key}", comparison=ct)).key
        except KeyNotFound:
            return None
        return found if found.startswith(f"{p}/") else None

    assert await g("d", CT.EQUAL) == f"{p}/d"
    assert await g("c", CT.EQUAL) is None
    assert await g("c", CT.FLOOR) == f"{p}/b"
    assert await g("d", CT.FLOOR) == f"{p}/d"
    assert await g("e", CT.CEILING) == f"{p}/f"
    assert await g("d", CT.LOWER) == f"{p}/b"
    assert await g("d", CT.HIGHER) == f"{p}/f"
    assert await g("f", CT.HIGHER) is None
    assert await g("b", CT.LOWER) is None
    r = await client.get(f"{p}/e", comparison=CT.FLOOR, include_value=False)
    assert (r.key, r.value) == (f"{p}/d", None)


async def test_partition_keys_and_delete_range(client: AsyncClient, p: str) -> None:
    pk = f"{p}-group"
    for i in range(10):
        await client.put(f"{p}/g{i}", b"x", partition_key=pk)
    listed = await client.list(f"{p}/", f"{p}//", partition_key=pk)
    assert listed == [f"{p}/g{i}" for i in range(10)]
    got = await client.get(f"{p}/g3", partition_key=pk)
    assert got.value == b"x"
    # without the partition key the EQUAL get goes to the key's own shard
    shard_of_key = client.shard_for(f"{p}/g3")
    if shard_of_key != client.shard_for("", pk):
        with pytest.raises(KeyNotFound):
            await client.get(f"{p}/g3")
    await client.delete_range(f"{p}/g0", f"{p}/g5", partition_key=pk)
    assert await client.list(f"{p}/", f"{p}//", partition_key=pk) == [
        f"{p}/g{i}" for i in range(5, 10)
    ]
    # a delete_range without partition key reaches every shard
    await asyncio.gather(*(client.put(f"{p}/d/{i}", b"v") for i in range(30)))
    await client.delete_range(f"{p}/d/", f"{p}/d//")
    assert await client.list(f"{p}/d/", f"{p}/d//") == []


async def test_sequence_keys_and_updates(client: AsyncClient, p: str) -> None:
    pk = f"{p}-seq"
    updates = await client.get_sequence_updates(f"{p}/s", partition_key=pk)
    try:
        k1 = (await client.put(f"{p}/s", b"a", partition_key=pk, sequence_key_deltas=[1])).key
        k2 = (await client.put(f"{p}/s", b"b", partition_key=pk, sequence_key_deltas=[5])).key
        assert (k1, k2) == (f"{p}/s-{1:020d}", f"{p}/s-{6:020d}")
        seen = []
        while k2 not in seen:
            u = await updates.get(timeout=10)
            assert u is not None, seen
            seen.append(u)
        assert seen[-1] == k2
        assert seen == sorted(seen)
    finally:
        await updates.close()


async def test_secondary_indexes_across_shards(client: AsyncClient, p: str) -> None:
    idx = f"name{uuid.uuid4().hex[:6]}"
    names = {"u1": "alice", "u2": "bob", "u3": "carol", "u4": "bobby", "u5": "dave"}
    for u, n in names.items():
        await client.put(f"{p}/{u}", n.encode(), secondary_indexes={idx: n})
    assert await client.list("b", "c", use_index=idx) == [f"{p}/u2", f"{p}/u4"]
    scanned = [
        (r.key, r.secondary_index_key) async for r in client.range_scan("a", "d", use_index=idx)
    ]
    assert scanned == [
        (f"{p}/u1", "alice"),
        (f"{p}/u2", "bob"),
        (f"{p}/u4", "bobby"),
        (f"{p}/u3", "carol"),
    ]
    g = await client.get("bob", use_index=idx)
    assert (g.key, g.value, g.secondary_index_key) == (f"{p}/u2", b"bob", "bob")
    g = await client.get("bobz", use_index=idx, comparison=CT.FLOOR)
    assert g.secondary_index_key == "bobby"
    g = await client.get("c", use_index=idx, comparison=CT.CEILING)
    assert g.secondary_index_key == "carol"
    with pytest.raises(KeyNotFound):
        await client.get("zed", use_index=idx)


async def test_ephemeral_records_and_session_close(deployment: Deployment, p: str) -> None:
    events = []
    async with AsyncClient(deployment.addresses, session_timeout_s=3.0) as owner:
        owner.add_session_listener(events.append)
        r = await owner.put(f"{p}/eph", b"e", ephemeral=True)
        assert r.version.is_ephemeral
        assert r.version.client_identity == owner.options.identity
        sid = await owner.session_id(owner.shard_for(f"{p}/eph"))
        assert r.version.session_id == sid
        async with AsyncClient(deployment.addresses) as observer:
            assert (await observer.get(f"{p}/eph")).value == b"e"
            await owner.close()  # closes the session: the record goes
            with pytest.raises(KeyNotFound):
                await observer.get(f"{p}/eph")
    assert [e.state for e in events] == [SessionState.ACTIVE, SessionState.LOST]


async def test_notifications_async(client: AsyncClient, p: str) -> None:
    async with await client.get_notifications() as feed:
        await feed.wait_connected()
        await client.put(f"{p}/n", b"1")
        await client.put(f"{p}/n", b"2")
        await client.delete(f"{p}/n")
        await client.delete_range(f"{p}/r/", f"{p}/r//")
        seen = []
        while len(seen) < 3 + SHARDS:  # one range deletion per shard
            b = await feed.get(timeout=10)
            assert b is not None, seen
            assert b.offset == feed.position[b.shard]
            seen.extend((n.key, n.type) for n in b if n.key.startswith(p))
        assert seen[:3] == [
            (f"{p}/n", NotificationType.KEY_CREATED),
            (f"{p}/n", NotificationType.KEY_MODIFIED),
            (f"{p}/n", NotificationType.KEY_DELETED),
        ]
        assert seen.count((f"{p}/r/", NotificationType.KEY_RANGE_DELETED)) == SHARDS


async def test_notifications_resume_from_position(client: AsyncClient, p: str) -> None:
    feed = await client.get_notifications()
    await feed.wait_connected()
    await client.put(f"{p}/x1", b"1")
    b = await feed.get(timeout=10)
    assert b is not None
    position = feed.position
    await feed.close()
    await client.put(f"{p}/x2", b"2")  # while nobody listens
    async with await client.get_notifications(start_after=position) as again:
        b2 = await again.get(timeout=10)
        assert b2 is not None
        assert [n.key for n in b2] == [f"{p}/x2"]


async def test_batching_under_concurrency_keeps_per_key_order(client: AsyncClient, p: str) -> None:
    """Many concurrent writers on few keys: every key's versions follow the order in which its
    writes were issued, puts and deletes interleaved in the same batches."""
    n_keys, rounds = 8, 58
    results: dict[int, list[tuple[int, object]]] = {k: [] for k in range(n_keys)}

    async def writer(k: int) -> None:
        for i in range(rounds):
            key = f"{p}/o{k}"
            if i % 10 == 9:
                results[k].append((i, await client.delete(key)))
            else:
                r = await client.put(key, f"{i}".encode())
                results[k].append((i, r.version))

    # the writers of each key issue their ops one after the other, but all keys at once
    tasks = [asyncio.ensure_future(writer(k)) for k in range(n_keys)]
    # and many more independent puts in the same batches
    await asyncio.gather(*tasks, *(client.put(f"{p}/noise/{i}", b"n") for i in range(2000)))
    for k in range(n_keys):
        last_version = -1
        for i, r in results[k]:
            if i % 10 == 9:
                assert r is True
                last_version = -1
            else:
                assert r.version_id > last_version
                assert r.modifications_count == (i % 10)
                last_version = r.version_id
        assert (await client.get(f"{p}/o{k}")).value == f"{rounds - 1}".encode()


async def test_same_key_put_delete_put_in_one_turn(client: AsyncClient, p: str) -> None:
    """Issued in one event-loop turn, so they share a batcher: the delete must not be applied
    after the second put (a WriteRequest applies puts before deletes)."""
    k = f"{p}/pdp"
    a, b, c = await asyncio.gather(client.put(k, b"1"), client.delete(k), client.put(k, b"2"))
    assert a.version.modifications_count == 0
    assert b is True
    assert c.version.modifications_count == 0
    assert (await client.get(k)).value == b"2"


async def test_unknown_namespace(deployment: Deployment) -> None:
    with pytest.raises(NamespaceNotFound):
        async with AsyncClient(deployment.addresses, namespace="nope", request_timeout_s=5.0):
            pass


def test_sync_client_everything(sync_client: Client, p: str) -> None:
    c = sync_client
    r = c.put(f"{p}/a", b"1")
    assert c.get(f"{p}/a").version == r.version
    c.put(f"{p}/b", b"2", expected_version_id=EXPECTED_RECORD_DOES_NOT_EXIST)
    with pytest.raises(UnexpectedVersion):
        c.put(f"{p}/b", b"3", expected_version_id=EXPECTED_RECORD_DOES_NOT_EXIST)
    assert c.list(f"{p}/", f"{p}//") == [f"{p}/a", f"{p}/b"]
    with c.range_scan(f"{p}/", f"{p}//") as it:
        assert [(x.key, x.value) for x in it] == [(f"{p}/a", b"1"), (f"{p}/b", b"2")]
    assert c.get(f"{p}/aa", comparison=CT.LOWER).key == f"{p}/a"
    assert c.delete(f"{p}/a") is True
    c.delete_range(f"{p}/", f"{p}//")
    assert c.list(f"{p}/", f"{p}//") == []
    with pytest.raises(KeyNotFound):
        c.get(f"{p}/b")
    e = c.put(f"{p}/e", b"e", ephemeral=True)
    assert e.version.is_ephemeral


def test_sync_client_threads_and_notifications(sync_client: Client, p: str) -> None:
    c = sync_client
    with c.get_notifications() as feed:
        feed.wait_connected(10)
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(50):
                    c.put(f"{p}/t{t}/{i}", b"v")
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        created = set()
        while len(created) < 400:
            b = feed.get(timeout=10)
            assert b is not None, len(created)
            created.update(n.key for n in b if n.key.startswith(p))
        assert len(created) == 400
    assert sum(len(c.list(f"{p}/t{t}/", f"{p}/t{t}//")) for t in range(8)) == 400


def test_sync_sequence_updates(sync_client: Client, p: str) -> None:
    pk = f"{p}-pk"
    with sync_client.get_sequence_updates(f"{p}/q", partition_key=pk) as updates:
        k = sync_client.put(f"{p}/q", b"", partition_key=pk, sequence_key_deltas=[3, 1]).key
        assert k == f"{p}/q-{3:020d}-{1:020d}"
        got = None
        while got != k:
            got = updates.get(timeout=10)
            assert got is not None


def test_close_drains_pending_work(deployment: Deployment, p: str) -> None:
    """Writes submitted right before close() are sent and answered, not dropped."""

    async def run() -> list[object]:
        c = AsyncClient(deployment.addresses, batch_linger_s=0.5, max_inflight_batches=1)
        await c.start()
        futs = [asyncio.ensure_future(c.put(f"{p}/drain/{i}", b"x")) for i in range(200)]
        await asyncio.sleep(0)  # the puts are submitted, most of them still in a batch
        await c.close()
        return list(await asyncio.gather(*futs, return_exceptions=True))

    results = asyncio.run(run())
    assert all(not isinstance(r, BaseException) for r in results), results[:3]
    with Client(deployment.addresses) as c:
        assert len(c.list(f"{p}/drain/", f"{p}/drain//")) == 200


async def test_bootstrap_skips_unreachable_addresses(deployment: Deployment, p: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    # A comma-separated string, the dead address first, then one live server: on the cluster
    # that server tells the client where the other shards' leaders are.
    async with AsyncClient(f"{dead},{deployment.addresses[0]}", request_timeout_s=10.0) as c:
        assert (await c.put(f"{p}/boot", b"1")).key == f"{p}/boot"
        # and every shard is reachable (on the cluster, most are led by the other servers)
        keys = {c.shard_for(f"{p}/boot{i}"): f"{p}/boot{i}" for i in range(200)}
        assert len(keys) == SHARDS
        for k in keys.values():
            assert (await c.put(k, b"1")).key == k
