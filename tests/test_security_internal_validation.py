"""The internal port under attack (issue 16): each finding of the audit as a test that failed
before the fix. Every internal request is checked before it touches state — the caller's
cluster identity, the bytes, the fields — and what a valid request may create is bounded.

In-process data servers (``tests/cluster.py``: the test plays the coordinator) and, for the
standalone findings, real ``pyxia standalone`` processes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cluster import Cluster, Node, leader_controller
from pyxia.common.instance_id import INSTANCE_ID_HEADER
from pyxia.common.keys import HIERARCHICAL
from pyxia.common.validation import INT64_MAX, MAX_TERM
from pyxia.config import NamespaceConfig
from pyxia.node import standalone as standalone_node
from pyxia.proto import client_pb2, replication_pb2
from pyxia.server import shards_director
from pyxia.server.data_server import ServerOptions
from pyxia.server.leader_controller import FOLLOWER, LEADER
from pyxia.server.shard_storage import ENCODING_MARKER
from pyxia.server.standalone import Standalone
from pyxia.storage.db import ShardDB
from servers import ServerProcess, standalone_args

COORD = "/replication.OxiaCoordination/"
REPL = "/replication.OxiaLogReplication/"
EVENTS = "/pyxia.admin.v1.ShardEvents/"
GARBAGE = b"\xff\xff\xff\xff"  # not a protobuf message of any type
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"nodes": 2}


# -- raw calls (an attacker's view: bytes and headers) --------------------------------------------


async def unary(
    c: Cluster, node: Node, method: str, raw: bytes, md: Metadata = ()
) -> tuple[grpc.StatusCode, str, bytes]:
    call = c.channel(node.internal).unary_unary(method)
    try:
        res = await call(raw, metadata=md, timeout=30)
        return grpc.StatusCode.OK, "", res
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or "", b""


async def stream_in(
    c: Cluster, node: Node, method: str, messages: Iterable[bytes], md: Metadata = ()
) -> tuple[grpc.StatusCode, str]:
    call = c.channel(node.internal).stream_unary(method)
    try:
        await call(iter(messages), metadata=md, timeout=30)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""


async def stream_both(
    c: Cluster, node: Node, method: str, messages: Iterable[bytes], md: Metadata = ()
) -> tuple[grpc.StatusCode, str]:
    call = c.channel(node.internal).stream_stream(method)(iter(messages), metadata=md, timeout=30)
    try:
        async for _ in call:
            pass
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""


def new_term_req(namespace: str, shard: int, term: int) -> bytes:
    return replication_pb2.NewTermRequest(
        namespace=namespace,
        shard=shard,
        term=term,
        options=replication_pb2.NewTermOptions(
            enable_notifications=True, key_sorting=replication_pb2.HIERARCHICAL
        ),
    ).SerializeToString()


def stream_md(namespace: str, shard: int, term: int, identity: Metadata) -> Metadata:
    return (("namespace", namespace), ("shard-id", str(shard)), ("term", str(term)), *identity)


async def write(c: Cluster, node: Node, key: str, shard: int = 0) -> client_pb2.WriteResponse:
    stub = c.channel(node.public).unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    req = client_pb2.WriteRequest(shard=shard, puts=[client_pb2.PutRequest(key=key, value=b"v")])
    res: client_pb2.WriteResponse = await stub(req, timeout=10)
    assert res.puts[0].status == client_pb2.OK
    return res


def tree(root: Path, skip: Iterable[Path] = ()) -> set[str]:
    """Every path under ``root`` (except under ``skip``), relative."""
    skipped = [str(s) for s in skip]
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skipped):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- names that become paths ----------------------------------------------------------------------


async def test_path_traversal_namespaces_are_refused_and_touch_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    n0 = cluster.nodes[0]
    await cluster.bind(n0)
    md = cluster.metadata  # the right identity: content is checked on its own
    # Directories an attacker would create or remove: <abs>/shard-7 and <data-dir>/../../x.
    absolute = tmp_path / "victim"
    relative = tmp_path / "escaped"
    for d in (absolute / "shard-7", relative / "shard-7"):
        d.mkdir(parents=True)
        (d / "keep").write_text("precious")
    namespaces = [str(absolute), "../../escaped", "..", "a/../../..", "x\\..\\y", "."]
    before = tree(tmp_path, skip=[n0.base])
    before_node = tree(n0.base)
    head = replication_pb2.EntryId(term=-1, offset=-1)
    for ns in namespaces:
        chunk = replication_pb2.SnapshotChunk(
            term=1, name="CURRENT", content=b"x", chunk_index=0, chunk_count=1
        ).SerializeToString()
        answers = {
            "NewTerm": await unary(cluster, n0, COORD + "NewTerm", new_term_req(ns, 7, 1), md),
            "DeleteShard": await unary(
                cluster,
                n0,
                COORD + "DeleteShard",
                replication_pb2.DeleteShardRequest(
                    namespace=ns, shard=7, term=5
                ).SerializeToString(),
                md,
            ),
            "Truncate": await unary(
                cluster,
                n0,
                REPL + "Truncate",
                replication_pb2.TruncateRequest(
                    namespace=ns, shard=7, term=1, head_entry_id=head
                ).SerializeToString(),
                md,
            ),
            "Replicate": await stream_both(
                cluster, n0, REPL + "Replicate", [], stream_md(ns, 7, 1, md)
            ),
            "SendSnapshot": await stream_in(
                cluster, n0, REPL + "SendSnapshot", [chunk], stream_md(ns, 7, 1, md)
            ),
        }
        for method, answer in answers.items():
            assert answer[0] == grpc.StatusCode.INVALID_ARGUMENT, (ns, method, answer)
    assert tree(tmp_path, skip=[n0.base]) == before  # nothing created or removed outside
    assert tree(n0.base) == before_node  # nor inside the node's directories
    for d in (absolute / "shard-7", relative / "shard-7"):
        assert (d / "keep").read_text() == "precious"
    assert n0.s.director._storages == {}


async def test_delete_shard_removes_only_a_replica_held_here(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await cluster.elect(0, n0, [n0])
    await cluster.push_assignments({0: n0})
    await write(cluster, n0, "/kept")
    data = n0.base / "db"
    # Shards this server does not hold: nothing to do, nothing removed.
    (data / "default" / "shard-9").mkdir(parents=True)
    (data / "default" / "shard-9" / "stray").write_text("another shard's directory")
    for ns, shard in (("default", 12345), ("other", 4321)):
        code, _, _ = await unary(
            cluster,
            n0,
            COORD + "DeleteShard",
            replication_pb2.DeleteShardRequest(
                namespace=ns, shard=shard, term=9
            ).SerializeToString(),
            cluster.metadata,
        )
        assert code == grpc.StatusCode.OK, (ns, shard)
    assert (data / "default" / "shard-0" / ENCODING_MARKER).exists()
    await write(cluster, n0, "/still-serving")
    # The held shard under another namespace's name: refused, kept.
    assert 0 in n0.s.director._storages  # open
    (data / "other").mkdir()
    (data / "other" / "shard-0").mkdir()
    code, details, _ = await unary(
        cluster,
        n0,
        COORD + "DeleteShard",
        replication_pb2.DeleteShardRequest(namespace="other", shard=0, term=9).SerializeToString(),
        cluster.metadata,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "held here in namespace" in details
    await write(cluster, n0, "/still-serving-2")
    # The real one: deleted, and only its two directories.
    code, _, _ = await unary(
        cluster,
        n0,
        COORD + "DeleteShard",
        replication_pb2.DeleteShardRequest(
            namespace="default", shard=0, term=9
        ).SerializeToString(),
        cluster.metadata,
    )
    assert code == grpc.StatusCode.OK
    assert not (data / "default" / "shard-0").exists()
    assert not (n0.base / "wal" / "default" / "shard-0").exists()
    assert (data / "default" / "shard-9" / "stray").exists()
    assert (data / "other" / "shard-0").exists()
    # A half-created replica (a directory of it, no marker yet) is this server's to delete.
    code, _, _ = await unary(
        cluster,
        n0,
        COORD + "DeleteShard",
        replication_pb2.DeleteShardRequest(
            namespace="default", shard=9, term=9
        ).SerializeToString(),
        cluster.metadata,
    )
    assert code == grpc.StatusCode.OK
    assert not (data / "default" / "shard-9").exists()


# -- terms at the bound ---------------------------------------------------------------------------


async def test_new_term_at_the_int64_limit_is_refused_and_the_shard_keeps_serving(
    cluster: Cluster,
) -> None:
    n0 = cluster.nodes[0]
    term = await cluster.elect(0, n0, [n0])
    await cluster.push_assignments({0: n0})
    await write(cluster, n0, "/before")
    for forged in (INT64_MAX, MAX_TERM + 1):
        code, details, _ = await unary(
            cluster, n0, COORD + "NewTerm", new_term_req("default", 0, forged), cluster.metadata
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details
        lc = leader_controller(n0, 0)
        assert lc.term == term and lc.status == LEADER
        await write(cluster, n0, f"/after-{forged}")
    # Not fenced for good: the next real election works.
    assert await cluster.elect(0, n0, [n0]) == term + 1
    await write(cluster, n0, "/after-election")


async def test_a_forged_stored_term_is_re_based_by_the_next_valid_new_term(
    cluster: Cluster,
) -> None:
    """A replica whose stored term was forged (by the code before terms were bounded) is not
    bricked: a valid NewTerm re-bases it, as long as nothing in its log is newer."""
    n0 = cluster.nodes[0]
    term = await cluster.elect(0, n0, [n0])
    await cluster.push_assignments({0: n0})
    await write(cluster, n0, "/kept")
    await n0.stop()
    db = ShardDB(n0.base / "db" / "default" / "shard-0", HIERARCHICAL)
    options = db.read_term()[1]
    db.update_term(INT64_MAX, options)  # what NewTerm(2^63-1) left behind
    db.close()
    await n0.start()
    assert await cluster.elect(0, n0, [n0], term=term + 1) == term + 1
    await cluster.push_assignments({0: n0})
    res = await write(cluster, n0, "/after")
    assert res.puts[0].status == client_pb2.OK
    lc = leader_controller(n0, 0)
    assert lc.term == term + 1 and lc.storage.read_term()[0] == term + 1
    # A replica whose log holds entries of a forged term keeps refusing a lower term.
    await lc.new_term(INT64_MAX, lc.term_options)  # as a forged NewTerm did before
    await lc.become_leader(INT64_MAX, 1)
    await cluster.push_assignments({0: n0})
    await write(cluster, n0, "/forged-leader-write")
    code, details, _ = await unary(
        cluster, n0, COORD + "NewTerm", new_term_req("default", 0, term + 2), cluster.metadata
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "invalid term" in details


async def test_standalone_restarts_on_a_forged_term_in_its_log(tmp_path: Path) -> None:
    """The worst case the old code allowed on standalone: NewTerm(2^63-1) + BecomeLeader + a
    write, so the log itself holds an entry at 2^63-1. The restart used to lead in 2^63 and
    every write failed INTERNAL; now it re-leads in the same term and serves."""

    def options() -> ServerOptions:
        return ServerOptions(
            public_addr="127.0.0.1:0",
            internal_addr=None,
            metrics_addr=None,
            data_dir=tmp_path / "db",
            wal_dir=tmp_path / "wal",
            tso=None,
        )

    async def put(node: Standalone, key: str) -> None:
        async with grpc.aio.insecure_channel(node.server.public_address) as ch:
            res = await ch.unary_unary(
                "/io.oxia.proto.v1.OxiaClient/Write",
                request_serializer=client_pb2.WriteRequest.SerializeToString,
                response_deserializer=client_pb2.WriteResponse.FromString,
            )(
                client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key=key, value=b"v")]),
                timeout=10,
            )
            assert res.puts[0].status == client_pb2.OK

    node = standalone_node(options(), [NamespaceConfig("default", 1)])
    await node.start()
    try:
        lc = node.server.director.leaders[0]
        await lc.new_term(INT64_MAX, lc.term_options)  # the forged NewTerm the old code took
        await lc.become_leader(INT64_MAX, 1)
        await put(node, "/at-forged-term")
        assert lc.storage.head_entry_id().term == INT64_MAX
    finally:
        await node.close()
    for _ in range(2):  # and again: it must not creep upwards
        node = standalone_node(options(), [NamespaceConfig("default", 1)])
        await node.start()
        try:
            lc = node.server.director.leaders[0]
            assert lc.term == INT64_MAX and lc.status == LEADER
            await put(node, "/after-restart")
        finally:
            await node.close()


def _put_sync(address: str, key: str) -> client_pb2.WriteResponse:
    with grpc.insecure_channel(address) as ch:
        res: client_pb2.WriteResponse = ch.unary_unary(
            "/io.oxia.proto.v1.OxiaClient/Write",
            request_serializer=client_pb2.WriteRequest.SerializeToString,
            response_deserializer=client_pb2.WriteResponse.FromString,
        )(
            client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key=key, value=b"v")]),
            timeout=10,
        )
    return res


@pytest.mark.parametrize("forged", [INT64_MAX, 2**63, MAX_TERM])
def test_standalone_process_restarts_near_the_term_bound(tmp_path: Path, forged: int) -> None:
    """``pyxia standalone`` over a shard whose stored term is at the bound (2^62), at
    2^63-1 (a forged NewTerm) or at 2^63 (what the old code's restart then wrote): it starts,
    logs the re-base naming the shard, and serves reads and writes."""
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        assert _put_sync(s.public, "/before").puts[0].status == client_pb2.OK
    finally:
        assert s.terminate() == 0
    db = ShardDB(tmp_path / "db" / "default" / "shard-0", HIERARCHICAL)
    db.update_term(forged, db.read_term()[1])
    db.close()
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        assert _put_sync(s.public, "/after").puts[0].status == client_pb2.OK
        assert "shard default/0: stored term" in s.output() and "re-based" in s.output()
    finally:
        assert s.terminate() == 0


# -- identity -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (((INSTANCE_ID_HEADER, "another-cluster"),), grpc.StatusCode.PERMISSION_DENIED),
        (((INSTANCE_ID_HEADER, ""),), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["no-id", "foreign-id", "empty-id"],
)
async def test_no_second_leader_from_a_caller_without_the_cluster_id(
    cluster: Cluster, identity: Metadata, expected: grpc.StatusCode
) -> None:
    n0, n1 = cluster.nodes
    term = await cluster.elect(0, n0, [n0, n1])
    await cluster.push_assignments({0: n0})
    await write(cluster, n0, "/x")
    code, _, _ = await unary(
        cluster, n1, COORD + "NewTerm", new_term_req("default", 0, term + 1), identity
    )
    assert code == expected
    code, _, _ = await unary(
        cluster,
        n1,
        COORD + "BecomeLeader",
        replication_pb2.BecomeLeaderRequest(
            namespace="default", shard=0, term=term + 1, replication_factor=1
        ).SerializeToString(),
        identity,
    )
    assert code == expected
    assert 0 not in n1.s.director.leaders
    fc = n1.s.director.followers[0]
    assert fc.term == term and fc.status == FOLLOWER
    assert leader_controller(n0, 0).term == term
    await write(cluster, n0, "/still-the-only-leader")
    # Replication with a foreign id is refused too (a leader of another cluster).
    code, _ = await stream_both(
        cluster,
        n1,
        REPL + "Replicate",
        [],
        stream_md("default", 0, term, ((INSTANCE_ID_HEADER, "another-cluster"),)),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_handshake_with_a_foreign_id_leaves_the_binding(cluster: Cluster) -> None:
    n0, fresh = cluster.nodes
    # Before any Handshake, coordination calls are refused whatever they carry.
    for md in ((), ((INSTANCE_ID_HEADER, "anything"),)):
        code, _, _ = await unary(
            cluster, fresh, COORD + "NewTerm", new_term_req("default", 0, 1), md
        )
        assert code == grpc.StatusCode.UNAVAILABLE  # NOT_INITIALIZED
    assert fresh.s.director._storages == {}
    await cluster.bind(n0)
    res = replication_pb2.HandshakeResponse.FromString(
        (
            await unary(
                cluster,
                n0,
                COORD + "Handshake",
                replication_pb2.HandshakeRequest(instance_id="foreign").SerializeToString(),
            )
        )[2]
    )
    assert res.status == replication_pb2.HANDSHAKE_STATUS_MISMATCH
    assert n0.s.manifest.instance_id() == cluster.instance_id
    assert cluster.instance_id in (n0.base / "db" / "MANIFEST.json").read_text()
    # The foreign cluster cannot act on it; the real one still can.
    code, _, _ = await unary(
        cluster,
        n0,
        COORD + "GetStatus",
        replication_pb2.GetStatusRequest(shard=0).SerializeToString(),
        ((INSTANCE_ID_HEADER, "foreign"),),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    await cluster.elect(0, n0, [n0])
    # A malformed instance id does not bind a fresh server either.
    code, _, _ = await unary(
        cluster,
        fresh,
        COORD + "Handshake",
        replication_pb2.HandshakeRequest(instance_id="x" * 500).SerializeToString(),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fresh.s.manifest.instance_id() is None


# -- resources ------------------------------------------------------------------------------------


async def test_new_terms_for_unknown_shards_allocate_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shards_director, "ASSIGNMENT_WAIT_S", 0.2)
    n0 = cluster.nodes[0]
    await cluster.elect(0, n0, [n0])  # a real shard, known to the assignments
    await cluster.push_assignments({0: n0})
    ns_dir = n0.base / "db" / "default"
    dirs_before = set(os.listdir(ns_dir))
    await unary(cluster, n0, COORD + "GetInfo", b"", cluster.metadata)  # the channel is up
    fds, threads = open_fds(), threading.active_count()
    codes: dict[grpc.StatusCode, int] = {}
    ids = list(range(1000, 6000))
    for i in range(0, len(ids), 500):
        answers = await asyncio.gather(
            *(
                unary(
                    cluster, n0, COORD + "NewTerm", new_term_req("default", s, 1), cluster.metadata
                )
                for s in ids[i : i + 500]
            )
        )
        for code, _, _ in answers:
            codes[code] = codes.get(code, 0) + 1
    assert codes == {grpc.StatusCode.NOT_FOUND: len(ids)}  # SHARD_NOT_FOUND
    assert open_fds() <= fds + 4, (fds, open_fds())
    assert threading.active_count() <= threads + 1
    assert set(os.listdir(ns_dir)) == dirs_before
    assert set(n0.s.director._storages) == {0}
    assert len(n0.s.director._locks) <= 1
    await write(cluster, n0, "/still-serving")


async def test_open_replicas_are_capped_and_replicas_on_disk_still_open(tmp_path: Path) -> None:
    c = await Cluster.start(tmp_path, 1, max_shards=2)
    try:
        n0 = c.nodes[0]
        for shard in range(5):
            c.assigned[shard] = ""
        await c.rejoin(n0)
        for shard in (0, 1):
            await c.new_term(n0, shard, 1)
        fds = open_fds()
        code, details, _ = await unary(
            c, n0, COORD + "NewTerm", new_term_req("default", 2, 1), c.metadata
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-shards 2" in details
        assert open_fds() <= fds + 1
        assert not (n0.base / "db" / "default" / "shard-2").exists()
        assert not (n0.base / "wal" / "default" / "shard-2").exists()
        # After a restart with a smaller cap, the replicas on disk are still this server's.
        await n0.stop()
        await n0.start(max_shards=1)
        await c.rejoin(n0)
        for shard in (0, 1):
            await c.new_term(n0, shard, 2)
        assert set(n0.s.director._storages) == {0, 1}
    finally:
        await c.close()


async def test_replication_to_an_unknown_shard_creates_nothing(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await cluster.rejoin(n0)
    md = cluster.metadata
    chunk = replication_pb2.SnapshotChunk(
        term=1, name="CURRENT", content=b"x", chunk_index=0, chunk_count=1
    ).SerializeToString()
    answers = [
        await unary(
            cluster,
            n0,
            REPL + "Truncate",
            replication_pb2.TruncateRequest(
                namespace="default", shard=77, term=1, head_entry_id=replication_pb2.EntryId()
            ).SerializeToString(),
            md,
        ),
        (*await stream_both(cluster, n0, REPL + "Replicate", [], stream_md("default", 77, 1, md)),),
        (
            *await stream_in(
                cluster, n0, REPL + "SendSnapshot", [chunk], stream_md("default", 77, 1, md)
            ),
        ),
    ]
    for answer in answers:
        assert answer[0] == grpc.StatusCode.ABORTED, answer  # NODE_IS_NOT_MEMBER
    assert not (n0.base / "db" / "default").exists()
    assert not (n0.base / "wal" / "default").exists()


# -- pushed assignments ---------------------------------------------------------------------------


async def test_a_bad_assignment_map_is_refused_and_the_previous_one_stays(
    cluster: Cluster,
) -> None:
    n0 = cluster.nodes[0]
    await cluster.elect(0, n0, [n0])
    await cluster.push_assignments({0: n0})
    good = n0.s.assignments.current
    assert good is not None
    bad_maps = []
    a = cluster.assignments()
    a.namespaces["../../x"].CopyFrom(a.namespaces["default"])
    bad_maps.append(a)
    a = cluster.assignments()
    a.namespaces["default"].assignments[0].leader = "evil host:1"
    bad_maps.append(a)
    a = cluster.assignments()
    r = a.namespaces["default"].assignments[0].int32_hash_range
    r.min_hash_inclusive, r.max_hash_inclusive = 10, 5
    bad_maps.append(a)
    for bad in bad_maps:
        code, details = await stream_in(
            cluster,
            n0,
            COORD + "PushShardAssignments",
            [bad.SerializeToString()],
            cluster.metadata,
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert n0.s.assignments.current is good
    code, _ = await stream_in(
        cluster, n0, COORD + "PushShardAssignments", [GARBAGE], cluster.metadata
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert n0.s.assignments.current is good


# -- malformed bytes ------------------------------------------------------------------------------


async def test_malformed_bytes_are_invalid_argument_on_every_internal_method(
    cluster: Cluster,
) -> None:
    n0, n1 = cluster.nodes
    term = await cluster.elect(0, n0, [n0])
    await cluster.push_assignments({0: n0})
    await cluster.new_term(n1, 1, 1)  # a fenced replica with no stream: streams reach parsing
    md = cluster.metadata
    unary_methods = [
        COORD + m
        for m in (
            "NewTerm",
            "BecomeLeader",
            "AddFollower",
            "GetStatus",
            "DeleteShard",
            "Handshake",
            "GetInfo",
        )
    ] + [REPL + "Truncate"]
    for method in unary_methods:
        code, details, _ = await unary(cluster, n1, method, GARBAGE, md)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert "malformed" in details, details
    code, details = await stream_in(cluster, n1, COORD + "PushShardAssignments", [GARBAGE], md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details
    code, details = await stream_both(
        cluster, n1, REPL + "Replicate", [GARBAGE], stream_md("default", 1, 1, md)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details, details
    code, details = await stream_in(
        cluster, n1, REPL + "SendSnapshot", [GARBAGE], stream_md("default", 1, 1, md)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details, details
    call = cluster.channel(n1.internal).unary_stream(EVENTS + "Watch")(
        GARBAGE, metadata=md, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    code, _, _ = await unary(cluster, n1, "/grpc.health.v1.Health/Check", GARBAGE)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    watch = cluster.channel(n1.internal).unary_stream("/grpc.health.v1.Health/Watch")(
        GARBAGE, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in watch:
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Bad stream metadata is INVALID_ARGUMENT too.
    bad_md = (("namespace", "default"), ("shard-id", "one"), ("term", "1"), *md)
    code, _ = await stream_both(cluster, n1, REPL + "Replicate", [], bad_md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Both servers still serve.
    st = await cluster.status(n1, 1)
    assert st.term == 1
    await write(cluster, n0, "/still-serving")
    assert leader_controller(n0, 0).term == term


# -- standalone -----------------------------------------------------------------------------------


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc: its socket inodes in LISTEN)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        yield s
    finally:
        s.kill()


def test_standalone_opens_no_internal_port_by_default(standalone: ServerProcess) -> None:
    assert standalone.internal == "off"
    public = int(standalone.public.rsplit(":", 1)[1])
    assert listening_ports(standalone.pid) == {public, standalone.metrics_port}
    assert _put_sync(standalone.public, "/x").puts[0].status == client_pb2.OK


def test_standalone_internal_port_when_asked_accepts_no_coordinator(tmp_path: Path) -> None:
    s = ServerProcess(standalone_args(tmp_path, internal="127.0.0.1:0"), tmp_path).start()
    try:
        assert s.internal != "off"
        with grpc.insecure_channel(s.internal) as ch:
            for method, req in (
                ("Handshake", replication_pb2.HandshakeRequest(instance_id="intruder")),
                ("NewTerm", replication_pb2.NewTermRequest(namespace="default", shard=0, term=9)),
            ):
                with pytest.raises(grpc.RpcError) as e:
                    ch.unary_unary(COORD + method)(
                        req.SerializeToString(),
                        metadata=((INSTANCE_ID_HEADER, "intruder"),),
                        timeout=10,
                    )
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # the data dir's manifest says what it is, and binds it to no cluster
        manifest = json.loads((tmp_path / "db" / "MANIFEST.json").read_text())
        assert manifest["mode"] == "standalone" and "instance_id" not in manifest
        assert _put_sync(s.public, "/x").puts[0].status == client_pb2.OK
    finally:
        s.kill()


def test_standalone_refuses_a_bad_namespace_name_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "pyxia", *standalone_args(tmp_path, "-n", "../../outside")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "namespace name '../../outside'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "outside").exists()
