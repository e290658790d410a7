"""One client's data cannot stall the node (issue 15 §6): a batch next to a large value keeps
the other shards and the health service answering; keys, values and operations per write are
bounded before anything is logged; applying (and the WAL replay) goes in slices of event-loop
time and is abandoned without a trace by a step-down, a follower's lock holder or a close."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rocksdict import Options, Rdict

from cluster import Cluster, leader_controller
from pyxia.common.keys import HIERARCHICAL
from pyxia.common.ports import free_port
from pyxia.errors import AlreadyClosed, WriteIndeterminate
from pyxia.proto import client_pb2, storage_pb2
from pyxia.server.data_server import ServerOptions
from pyxia.server.follower_controller import FollowerController
from pyxia.server.leader_controller import LeaderController, log_entry_value
from pyxia.server.shard_storage import ShardStorage, StorageOptions
from pyxia.storage.apply import SPLICED_VALUE_SIZE, WriteLimits, storage_entry_bytes
from pyxia.storage.db import DbResources, ShardDB, TermOptions
from servers import ServerProcess, standalone_args, wait_for, wait_until
from stall_probe import MIB, StallResult, batch_next_to_large_value, store_large_value

SHARD = 0
STALL_BOUND_S = 0.1


# ---------------------------------------------------------------------------------------------
# The audit's scenario, on a real server
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_next_to_a_large_value_stalls_no_other_shard(tmp_path: Path) -> None:
    """16 MiB on shard 0, in a table file (the restart flushes it), then 1,000 puts next to it:
    writes to shard 1 and health checks keep answering within 100 ms. (Before the RocksDB
    tuning every put read the 16 MiB block: the batch took ~4 s and stopped everything.)

    This machine is shared: a process may wait for a core for longer than 100 ms whatever it
    runs (measured: wall-clock gaps of 0.2-0.4 s holding ~10 ms of CPU). So a second batch,
    next to the same value, is measured when the first one misses the bound: a stall of this
    code's making misses it both times."""
    args = standalone_args(tmp_path, "--shards", "2", "--max-value-size", str(32 * MIB))
    s = ServerProcess(args, tmp_path).start()
    results: list[StallResult] = []
    try:
        store_large_value(s.public, 16 * MIB)
        assert s.terminate() == 0
        s = ServerProcess(args, tmp_path).start()
        for attempt in range(2):
            r = batch_next_to_large_value(s.public, 1000, first=attempt * 1000)
            results.append(r)
            assert not r.errors
            assert r.other_shard_writes >= 5 and r.health_checks >= 5, r
            if max(r.worst_other_shard_write, r.worst_health_check, r.longest_silence) < (
                STALL_BOUND_S
            ):
                return
    finally:
        s.kill()
    raise AssertionError(f"other shards or the health service stalled: {results}")


# ---------------------------------------------------------------------------------------------
# RocksDB options
# ---------------------------------------------------------------------------------------------


def test_a_db_written_with_other_options_opens_and_takes_the_new_ones(tmp_path: Path) -> None:
    """A DB created with rocksdict's defaults (pyxia before the tuning) opens with the tuned
    options (rocksdict would otherwise reopen it with the options saved in it): its data reads
    back, and a large value written now goes to a blob file."""
    path = tmp_path / "db"
    old = Options(raw_mode=True)
    old.create_if_missing(True)
    db = Rdict(str(path), old)
    db[b"small"] = b"s" * 100
    db[b"large"] = b"l" * 100_000
    db.close()
    shard = ShardDB(path, HIERARCHICAL)
    try:
        assert not list(path.glob("*.blob"))
        assert shard.get(b"small") == b"s" * 100 and shard.get(b"large") == b"l" * 100_000
        shard.db[b"new-large"] = os.urandom(100_000)
        shard.flush()
        assert list(path.glob("*.blob"))
        shard.db.compact_range(None, None)
        assert shard.get(b"large") == b"l" * 100_000
    finally:
        shard.close()
    reopened = ShardDB(path, HIERARCHICAL)
    try:
        assert reopened.get(b"small") == b"s" * 100
        assert len(reopened.get(b"new-large") or b"") == 100_000
    finally:
        reopened.close()


def test_one_block_cache_for_every_shard_of_a_server(tmp_path: Path) -> None:
    opts = ServerOptions(data_dir=tmp_path / "db", wal_dir=tmp_path / "wal", db_cache_size_mb=7)
    storage_options = opts.storage_options()
    shards = [ShardStorage("default", i, storage_options, HIERARCHICAL) for i in range(2)]
    try:
        a, b = (st.db.resources for st in shards)
        assert a is b is storage_options.db
        assert a.tuning.cache_size_mb == 7
        for st in shards:  # index and filter blocks of the table files are charged to it
            st.db.db[b"k"] = b"v"
            st.db.flush()
            assert st.db.get(b"k") == b"v"
        assert a.cache_usage_bytes() > 0
    finally:
        for st in shards:
            st.close()
    with pytest.raises(ValueError, match="at least 1 MB"):
        DbResources(type(a.tuning)(cache_size_mb=0))


def test_a_snapshot_carries_the_blob_files(tmp_path: Path) -> None:
    """Large values live in blob files: a snapshot (RocksDB checkpoint) holds them, and the
    replica that installs it reads them."""
    src = ShardStorage("default", 0, StorageOptions(tmp_path / "a", tmp_path / "aw"), HIERARCHICAL)
    dst = ShardStorage("default", 0, StorageOptions(tmp_path / "b", tmp_path / "bw"), HIERARCHICAL)
    try:
        value = os.urandom(200_000)
        src.update_term(1, TermOptions())
        src.applier.apply_write(client_pb2.WriteRequest(puts=[put("large", value)]), 0, 1)
        snap = src.create_snapshot()
        assert list(snap.glob("*.blob"))
        staged = dst.snapshot_staging_dir()
        for f in snap.iterdir():
            shutil.copy(f, staged / f.name)
        shutil.rmtree(snap)
        assert dst.install_snapshot(staged, 1) == 0
        raw = dst.db.get(HIERARCHICAL.encode("large"))
        assert raw is not None and storage_pb2.StorageEntry.FromString(raw).value == value
    finally:
        src.close()
        dst.close()


def test_storage_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyxia.cli.server_cmd import standalone

    seen: list[ServerOptions] = []

    class Stop(Exception):
        pass

    def capture(options: ServerOptions, namespaces: object, **kw: object) -> None:
        seen.append(options)
        raise Stop

    monkeypatch.setattr("pyxia.node.standalone", capture)
    args = ["--db-cache-size-mb", "33", "--max-key-size", "100", "--max-value-size", "200"]
    res = CliRunner().invoke(standalone, [*args, "--max-write-operations", "300"])
    assert isinstance(res.exception, Stop), res.output
    (o,) = seen
    assert o.db_cache_size_mb == 33
    assert o.write_limits == WriteLimits(max_key_size=100, max_value_size=200, max_operations=300)
    assert o.storage_options().write_limits == o.write_limits
    assert o.storage_options().db.tuning.cache_size_mb == 33
    res = CliRunner().invoke(standalone, ["--max-value-size", "0"])
    assert res.exit_code == 2 and "--max-value-size" in res.output


@pytest.mark.parametrize(
    "size", [0, 5, SPLICED_VALUE_SIZE - 1, SPLICED_VALUE_SIZE, 3 * SPLICED_VALUE_SIZE]
)
def test_large_values_are_spliced_into_the_same_bytes(size: int) -> None:
    value = os.urandom(size)
    fields = {
        "version_id": 7,
        "modifications_count": 3,
        "creation_timestamp": 5,
        "modification_timestamp": 9,
        "session_id": 4,
        "client_identity": "c",
        "partition_key": "p",
    }
    whole = storage_pb2.StorageEntry(value=value, **fields)  # type: ignore[arg-type]
    whole.secondary_indexes.add(index_name="i", secondary_key="s")
    bare = storage_pb2.StorageEntry(**fields)  # type: ignore[arg-type]
    bare.secondary_indexes.add(index_name="i", secondary_key="s")
    assert storage_entry_bytes(bare, value) == whole.SerializeToString(deterministic=True)
    raw = client_pb2.WriteRequest(puts=[put("k", value)]).SerializeToString()
    lev = storage_pb2.LogEntryValue(
        requests=storage_pb2.WriteRequests(writes=[client_pb2.WriteRequest.FromString(raw)])
    )
    assert log_entry_value(raw) == lev.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------
# Size limits, checked before anything is logged
# ---------------------------------------------------------------------------------------------

LIMITS = WriteLimits(max_key_size=1024, max_value_size=64 * 1024, max_operations=100)


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await Cluster.start(tmp_path, 1, write_limits=LIMITS)
    try:
        await c.elect(SHARD, c.nodes[0], c.nodes)
        await c.push_assignments({SHARD: c.nodes[0]})
        yield c
    finally:
        await c.close()


def put(key: str, value: bytes = b"v") -> client_pb2.PutRequest:
    return client_pb2.PutRequest(key=key, value=value)


async def test_oversized_writes_are_refused_before_logging(limited: Cluster) -> None:
    node = limited.nodes[0]
    wal = leader_controller(node, SHARD).wal
    ch = limited.channel(node.public)
    write = ch.unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    head = wal.last_offset
    # Unary: a clear INVALID_ARGUMENT.
    for req, message in [
        (client_pb2.WriteRequest(shard=SHARD, puts=[put("k" * 1025)]), "maximum key size"),
        (
            client_pb2.WriteRequest(shard=SHARD, puts=[put("k", b"v" * (64 * 1024 + 1))]),
            "maximum value size",
        ),
        (
            client_pb2.WriteRequest(shard=SHARD, puts=[put(f"k{i}") for i in range(101)]),
            "more than the maximum of 100 per write",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await write(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")
    assert wal.last_offset == head
    # WriteStream: the bad request is answered per operation, the stream goes on.
    stream = ch.stream_stream(
        "/io.oxia.proto.v1.OxiaClient/WriteStream",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    requests = [
        client_pb2.WriteRequest(puts=[put("ok1")]),
        client_pb2.WriteRequest(puts=[put("big", b"v" * (64 * 1024 + 1)), put("fine")]),
        client_pb2.WriteRequest(puts=[put("ok2", b"v" * (64 * 1024))]),
    ]
    call = stream(iter(requests), metadata=(("shard-id", str(SHARD)),), timeout=10)
    answers = [r async for r in call]
    bad = client_pb2.INVALID_ARGUMENT
    assert [[p.status for p in a.puts] for a in answers] == [
        [client_pb2.OK],
        [bad, bad],
        [client_pb2.OK],
    ]
    # Two entries logged (ok1, ok2), none for the refused request.
    assert wal.last_offset == head + 2
    read = ch.unary_stream(
        "/io.oxia.proto.v1.OxiaClient/Read",
        request_serializer=client_pb2.ReadRequest.SerializeToString,
        response_deserializer=client_pb2.ReadResponse.FromString,
    )
    got = [
        g.status
        async for r in read(
            client_pb2.ReadRequest(
                shard=SHARD, gets=[client_pb2.GetRequest(key=k) for k in ("big", "fine", "ok2")]
            ),
            timeout=10,
        )
        for g in r.gets
    ]
    assert got == [client_pb2.KEY_NOT_FOUND, client_pb2.KEY_NOT_FOUND, client_pb2.OK]


# ---------------------------------------------------------------------------------------------
# Applying in slices
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[ShardStorage]:
    st = ShardStorage(
        "default", SHARD, StorageOptions(tmp_path / "db", tmp_path / "wal"), HIERARCHICAL
    )
    try:
        yield st
    finally:
        st.close()


def batch(entry: int, n: int) -> client_pb2.WriteRequest:
    return client_pb2.WriteRequest(puts=[put(f"e{entry:03d}-{i:04d}") for i in range(n)])


def log_unapplied(st: ShardStorage, entries: int, puts: int) -> None:
    """Entries in the WAL (term 1) but not in the DB: what a kill -9 leaves behind."""
    st.update_term(1, TermOptions())
    for i in range(entries):
        st.wal.append(1, i, log_entry_value(batch(i, puts).SerializeToString()), 1000 + i)
    st.wal.sync()


def stored_versions(st: ShardStorage, entries: int, puts: int) -> list[int | None]:
    out: list[int | None] = []
    for e in range(entries):
        for i in range(puts):
            raw = st.db.get(HIERARCHICAL.encode(f"e{e:03d}-{i:04d}"))
            out.append(None if raw is None else storage_pb2.StorageEntry.FromString(raw).version_id)
    return out


class LoopWatch:
    """Measures the longest time the event loop did not run a 1 ms ticker, in CPU time of the
    loop's thread (what the loop itself spent elsewhere: on a machine shared with other work the
    wall-clock gaps also hold the time the process waited for a CPU, measured at up to 0.4 s
    with ~10 ms of CPU in them), and in wall-clock time."""

    def __init__(self) -> None:
        self.longest_cpu = 0.0
        self.longest_wall = 0.0
        self.ticks = 0
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        last, last_cpu = time.monotonic(), time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now, cpu = time.monotonic(), time.thread_time()
            self.longest_wall = max(self.longest_wall, now - last)
            self.longest_cpu = max(self.longest_cpu, cpu - last_cpu)
            self.ticks += 1
            last, last_cpu = now, cpu

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_replay_runs_in_slices(storage: ShardStorage) -> None:
    # The step machinery itself: the Python path (the native one applies an entry of plain puts
    # in one step, ~1 ms per 1,000 puts).
    storage.applier.native = False
    entries, puts = 100, 1000
    log_unapplied(storage, entries, puts)
    lc = LeaderController(storage)
    try:
        await lc.new_term(2, TermOptions())
        watch = LoopWatch()
        t0 = time.thread_time()
        await lc.become_leader(2, 1)
        replay = time.thread_time() - t0
        await watch.stop()
        # The replay of 100,000 puts (the better part of a second of CPU) let the loop run
        # many times and never held it for long: slices are 5 ms (in one block, the stall
        # would be the whole replay).
        assert watch.ticks >= 20, (replay, watch.ticks)
        assert watch.longest_cpu < min(STALL_BOUND_S, replay / 3), (replay, vars(watch))
        assert storage.commit_offset == entries - 1
        assert stored_versions(storage, entries, puts) == list(range(entries * puts))
    finally:
        await lc.close()


async def test_closing_abandons_the_replay_between_entries_steps(storage: ShardStorage) -> None:
    entries, puts = 20, 500
    log_unapplied(storage, entries, puts)
    lc = LeaderController(storage)
    lc.apply_slice_s = 0.0  # one step per slice
    await lc.new_term(2, TermOptions())
    becoming = asyncio.get_running_loop().create_task(lc.become_leader(2, 1))
    await wait_until(lambda: storage.commit_offset >= 2, timeout=30.0, interval=0.001)
    assert not becoming.done()
    await lc.close()
    with pytest.raises(AlreadyClosed):
        await becoming
    # A prefix of whole entries was applied, nothing of the next one.
    done = storage.commit_offset
    assert 2 <= done < entries - 1
    versions = stored_versions(storage, entries, puts)
    assert versions == [*range((done + 1) * puts), *[None] * ((entries - done - 1) * puts)]
    assert storage.applier.last_version_id == (done + 1) * puts - 1
    # The next leader replays the rest.
    lc = LeaderController(storage)
    try:
        await lc.new_term(3, TermOptions())
        await lc.become_leader(3, 1)
        assert stored_versions(storage, entries, puts) == list(range(entries * puts))
    finally:
        await lc.close()


async def test_stepping_down_abandons_an_entry_halfway(storage: ShardStorage) -> None:
    # The step machinery itself: the Python path (the native one applies an entry of plain puts
    # in one step, ~1 ms per 1,000 puts).
    storage.applier.native = False
    lc = LeaderController(storage)
    try:
        await lc.new_term(1, TermOptions())
        await lc.become_leader(1, 1)
        lc.apply_slice_s = 0.0
        first = await lc.propose(batch(0, 10))
        assert first.error is None
        fut = lc.propose(batch(1, 2000))
        await wait_until(lambda: lc._applying is not None, timeout=30.0, interval=0.001)
        assert not fut.done()
        await lc.new_term(2, TermOptions())
        with pytest.raises(WriteIndeterminate):
            await fut
        # Nothing of entry 1 was written; the counters are where entry 0 left them.
        assert storage.commit_offset == storage.db.commit_offset() == 0
        assert storage.applier.last_version_id == storage.db.last_version_id() == 9
        assert stored_versions(storage, 2, 10) == [*range(10), *[None] * 10]
        # It is in the WAL: the next leader applies it, once.
        lc.apply_slice_s = 0.005
        await lc.become_leader(2, 1)
        assert storage.commit_offset == 1
        assert stored_versions(storage, 2, 2000)[2000:] == list(range(10, 2010))
    finally:
        await lc.close()


async def test_follower_lock_holder_abandons_the_apply(storage: ShardStorage) -> None:
    entries, puts = 10, 500
    log_unapplied(storage, entries, puts)
    fc = FollowerController(storage)
    try:
        fc.apply_slice_s = 0.0
        fc.leader_commit_offset = entries - 1
        fc._apply_wanted.notify()
        await wait_until(lambda: storage.commit_offset >= 1, timeout=30.0, interval=0.001)
        assert storage.commit_offset < entries - 1
        # NewTerm takes the lock: the entry in progress is dropped, the term written, and the
        # applier goes on afterwards from the DB's commit offset.
        await fc.new_term(2, TermOptions())
        await wait_until(lambda: storage.commit_offset == entries - 1, timeout=30.0, interval=0.001)
        assert stored_versions(storage, entries, puts) == list(range(entries * puts))
        assert storage.read_term()[0] == 2
    finally:
        await fc.close()


# ---------------------------------------------------------------------------------------------
# kill -9, then a long replay: the node answers health checks and stops on SIGTERM at once
# ---------------------------------------------------------------------------------------------


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        res = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(res.status)


@pytest.mark.slow
def test_sigterm_during_the_replay_after_kill_9(tmp_path: Path) -> None:
    public = f"127.0.0.1:{free_port()}"
    args = standalone_args(tmp_path, public=public)
    s = ServerProcess(args, tmp_path).start()
    entries = 30
    try:
        with grpc.insecure_channel(s.public) as ch:
            write = ch.unary_unary(
                "/io.oxia.proto.v1.OxiaClient/Write",
                request_serializer=client_pb2.WriteRequest.SerializeToString,
                response_deserializer=client_pb2.WriteResponse.FromString,
            )
            for e in range(entries):
                req = batch(e, 10_000)
                req.shard = 0
                write(req, timeout=60)
    finally:
        s.kill()  # kill -9: the DB (RocksDB's WAL is off) lost everything not flushed
    # Restart: the whole log is replayed while the server already answers health checks.
    s = ServerProcess(args, tmp_path).start(wait_ready=False)
    try:
        wait_for(lambda: _serving(public), 60, what="the health service")
        assert health(public, "oxia-readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
        t0 = time.monotonic()
        code = s.terminate(30)
        stopped = time.monotonic() - t0
    finally:
        s.kill()
    assert code == 0, s.output()
    assert stopped < 5, f"SIGTERM took {stopped:.1f}s\n{s.output()}"
    assert "shutting down while starting" in s.output()
    # Everything is still there: the next start replays it to the end.
    s = ServerProcess(args, tmp_path).start(timeout=120)
    try:
        with grpc.insecure_channel(s.public) as ch:
            read = ch.unary_stream(
                "/io.oxia.proto.v1.OxiaClient/Read",
                request_serializer=client_pb2.ReadRequest.SerializeToString,
                response_deserializer=client_pb2.ReadResponse.FromString,
            )
            req = client_pb2.ReadRequest(
                shard=0, gets=[client_pb2.GetRequest(key=f"e{entries - 1:03d}-9999")]
            )
            assert [g.status for r in read(req, timeout=30) for g in r.gets] == [client_pb2.OK]
    finally:
        s.kill()


def _serving(address: str) -> bool:
    try:
        return health(address, "") == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
