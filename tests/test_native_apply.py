"""The native hot paths against the Python ones. Puts (``pyxia._native.apply_puts``): the
same writes over the same stored records leave the same DB contents, version counter,
responses and notification batches, byte for byte, in both key encodings; writes it does not
cover (sessions, sequences, indexes, deletes, replaced records with bookkeeping) go the Python
way. The validation short cut (``write_request_shape``) refuses what the full checks refuse.
Reads (``read_gets``): the same bytes as the Read RPC's Python path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia._native import apply_puts, read_gets, write_request_shape
from pyxia.common.keys import HIERARCHICAL, NATURAL, KeyEncoding
from pyxia.errors import InvalidArgument
from pyxia.metrics import ShardMetrics
from pyxia.proto import client_pb2
from pyxia.storage import reads
from pyxia.storage.apply import (
    StateApplier,
    WriteLimits,
    override_fields_used,
    validate_write_request,
)
from pyxia.storage.db import ShardDB

SHARD = 3
KEYS = ["a", "b", "/x/y", "/x/y//", "/x/z", "é/ü", "k" * 40]

puts = st.builds(
    lambda key, value, ev, ident, pk, ov, om, index: client_pb2.PutRequest(
        key=key,
        value=value,
        **({} if ev is None else {"expected_version_id": ev}),
        **({} if ident is None else {"client_identity": ident}),
        **({} if pk is None else {"partition_key": pk}),
        **({} if ov is None else {"override_version_id": ov}),
        **({} if om is None else {"override_modifications_count": om}),
        secondary_indexes=(
            [client_pb2.SecondaryIndex(index_name="idx", secondary_key=index)] if index else []
        ),
    ),
    st.sampled_from(KEYS),
    st.binary(max_size=20),
    st.one_of(st.none(), st.just(-1), st.integers(0, 12)),
    st.one_of(st.none(), st.sampled_from(["", "me"])),
    st.one_of(st.none(), st.sampled_from(["", "p"])),
    st.one_of(st.none(), st.integers(0, 2**40)),
    st.one_of(st.none(), st.integers(0, 5)),
    st.one_of(st.none(), st.sampled_from(["s1", "s2"])),
)
writes = st.lists(
    st.builds(lambda ps: client_pb2.WriteRequest(shard=SHARD, puts=ps), st.lists(puts, max_size=6)),
    min_size=1,
    max_size=6,
)


def contents(db: ShardDB) -> list[tuple[bytes, bytes]]:
    return list(db.scan(None, None))


@settings(max_examples=80, deadline=None)
@given(
    encoding=st.sampled_from([HIERARCHICAL, NATURAL]),
    history=writes,
    notifications=st.booleans(),
)
def test_native_and_python_appliers_agree(
    encoding: KeyEncoding, history: list[client_pb2.WriteRequest], notifications: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dbs = [ShardDB(Path(tmp) / str(i), encoding) for i in range(2)]
        try:
            native, python = (
                StateApplier(db, SHARD, notifications_enabled=notifications, native=n)
                for db, n in zip(dbs, (True, False), strict=True)
            )
            for offset, req in enumerate(history):
                a = native.apply_write(req, offset, 1_000 + offset)
                b = python.apply_write(req, offset, 1_000 + offset)
                assert a.response == b.response
                assert a.response_bytes() == b.response_bytes()
                assert (a.error, a.notified) == (b.error, b.notified)
                assert native.last_version_id == python.last_version_id
                assert contents(dbs[0]) == contents(dbs[1])
        finally:
            for db in dbs:
                db.close()


@pytest.fixture
def db(tmp_path: Path) -> ShardDB:
    d = ShardDB(tmp_path / "db", HIERARCHICAL)
    yield d
    d.close()


def serialized(*ps: client_pb2.PutRequest, **kw: object) -> bytes:
    return client_pb2.WriteRequest(shard=SHARD, puts=list(ps), **kw).SerializeToString()


def test_plain_puts_are_applied_natively(db: ShardDB) -> None:
    applier = StateApplier(db, SHARD)
    req = client_pb2.WriteRequest(
        puts=[
            client_pb2.PutRequest(key="/a/b", value=b"1", client_identity="me"),
            client_pb2.PutRequest(key="/a/b", value=b"2", expected_version_id=0),
            client_pb2.PutRequest(key="c", value=b"3", expected_version_id=5),
            client_pb2.PutRequest(key="d", override_version_id=40, partition_key="p"),
        ]
    )
    res = applier.apply_write(req, 0, 1_000)
    assert res.wire is not None  # the native path answered
    assert res.response is not None
    statuses = [p.status for p in res.response.puts]
    assert statuses == [
        client_pb2.OK,
        client_pb2.OK,
        client_pb2.UNEXPECTED_VERSION_ID,
        client_pb2.OK,
    ]
    first, second, _, override = res.response.puts
    assert (first.version.version_id, first.version.client_identity) == (0, "me")
    assert (second.version.version_id, second.version.modifications_count) == (1, 1)
    assert override.version.version_id == 40
    assert applier.last_version_id == 1
    assert res.notified


def test_the_native_path_is_counted_as_the_python_path(tmp_path: Path) -> None:
    # The shard's write metrics feed GetStatus's write_ops_total (auto-split) and the
    # dashboards: a write must count the same whichever path applied it.
    req = client_pb2.WriteRequest(
        puts=[client_pb2.PutRequest(key=f"/k/{i}", value=b"v" * i) for i in range(5)]
    )
    counted = []
    for native in (True, False):
        db = ShardDB(tmp_path / str(native), HIERARCHICAL)
        try:
            m = ShardMetrics("test-native-metrics", int(native))
            applier = StateApplier(db, SHARD, metrics=m, native=native)
            res = applier.apply_write(req, 0, 1_000)
            assert (res.wire is not None) == native
            counted.append(
                (
                    m.db_puts.value,
                    m.kv_write_ops.value,
                    m.kv_write_bytes.value,
                    sum(m.kv_batch_size.counts),
                    sum(m.kv_batch_count.counts),
                    sum(m.db_batch_write_latency.counts),
                    sum(m.kv_batch_commit_latency.counts),
                    m.kv_write_errors.value,
                )
            )
        finally:
            db.close()
    assert counted[0] == counted[1]
    assert counted[0][0] == 5 and counted[0][3] == 1


def test_only_plain_puts_take_the_native_path(db: ShardDB) -> None:
    get = db.db.get
    plain = serialized(client_pb2.PutRequest(key="k", value=b"v"))
    assert apply_puts(plain, True, get, 0, 5) is not None
    for declined in (
        serialized(client_pb2.PutRequest(key="k", value=b"v", session_id=1)),
        serialized(client_pb2.PutRequest(key="k", partition_key="p", sequence_key_delta=[1])),
        serialized(
            client_pb2.PutRequest(
                key="k", secondary_indexes=[client_pb2.SecondaryIndex(index_name="i")]
            )
        ),
        serialized(client_pb2.PutRequest(key="k"), deletes=[client_pb2.DeleteRequest(key="x")]),
        serialized(),
        b"\x12\x05\x0a",  # truncated: the Python decoder judges it
    ):
        assert apply_puts(declined, True, get, 0, 5) is None


def test_a_record_with_secondary_indexes_is_replaced_the_python_way(db: ShardDB) -> None:
    applier = StateApplier(db, SHARD)
    indexed = client_pb2.PutRequest(
        key="k", value=b"1", secondary_indexes=[client_pb2.SecondaryIndex(index_name="i")]
    )
    applier.apply_write(client_pb2.WriteRequest(puts=[indexed]), 0, 1)
    plain = serialized(client_pb2.PutRequest(key="k", value=b"2"))
    assert apply_puts(plain, True, db.db.get, applier.last_version_id, 2) is None
    res = applier.apply_write(client_pb2.WriteRequest.FromString(plain), 1, 2)
    assert res.response is not None and res.response.puts[0].status == client_pb2.OK
    # the index entry of the replaced record is gone
    assert [k for k, _ in db.scan(None, None) if b"idx" in k or b"/i/" in k] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(puts, max_size=5), st.lists(st.sampled_from(["", "a", "__oxia/x"]), max_size=2))
def test_the_validation_short_cut_refuses_what_the_full_checks_refuse(
    ps: list[client_pb2.PutRequest], deletes: list[str]
) -> None:
    extra = [client_pb2.PutRequest(key=k) for k in ("", "__oxia/y")]
    for candidates in (ps, ps + extra[:1], ps + extra[1:]):
        req = client_pb2.WriteRequest(
            puts=candidates, deletes=[client_pb2.DeleteRequest(key=k) for k in deletes]
        )
        raw = req.SerializeToString()
        outcomes = []
        for r in (raw, None):
            try:
                validate_write_request(req, WriteLimits(), len(raw), r)
                outcomes.append(None)
            except InvalidArgument as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]
        assert override_fields_used(req, raw) == override_fields_used(req)
        plain, overrides = write_request_shape(raw)
        if plain:
            assert outcomes[1] is None  # "plain": no per-operation check can fail
        assert overrides == any(
            p.HasField("override_version_id") or p.HasField("override_modifications_count")
            for p in candidates
        )


def test_a_negative_override_is_refused_with_the_short_cut() -> None:
    req = client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key="k", override_version_id=-2)])
    with pytest.raises(InvalidArgument, match="override_version_id must be >= 0"):
        override_fields_used(req, req.SerializeToString())


def python_read(db: ShardDB, req: client_pb2.ReadRequest) -> bytes:
    """The Read RPC's Python path (``reads.get_into`` per get)."""
    resp = client_pb2.ReadResponse()
    for g in req.gets:
        reads.get_into(db, g, resp.gets.add())
    return resp.SerializeToString()


gets = st.lists(
    st.builds(
        lambda key, include: client_pb2.GetRequest(key=key, include_value=include),
        st.sampled_from([*KEYS, "missing", "/x"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from([HIERARCHICAL, NATURAL]), history=writes, batch=gets)
def test_native_reads_answer_like_the_python_path(
    encoding: KeyEncoding,
    history: list[client_pb2.WriteRequest],
    batch: list[client_pb2.GetRequest],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = ShardDB(Path(tmp) / "db", encoding)
        try:
            applier = StateApplier(db, SHARD)
            for offset, req in enumerate(history):
                applier.apply_write(req, offset, 1_000 + offset)
            read = client_pb2.ReadRequest(shard=SHARD, gets=batch)
            native = read_gets(read.SerializeToString(), encoding.name == "hierarchical", db.db.get)
            assert native == python_read(db, read)
        finally:
            db.close()


def test_reads_the_native_path_does_not_cover(db: ShardDB) -> None:
    get = db.db.get
    for declined in (
        client_pb2.ReadRequest(gets=[client_pb2.GetRequest(key="a", comparison_type=1)]),
        client_pb2.ReadRequest(gets=[client_pb2.GetRequest(key="a", secondary_index_name="i")]),
        client_pb2.ReadRequest(gets=[client_pb2.GetRequest(key="__oxia/commit-offset")]),
        client_pb2.ReadRequest(),
    ):
        assert read_gets(declined.SerializeToString(), True, get) is None
    # a record that does not decode is left to the Python path
    db.db[db.encoding.encode("bad")] = b"\x10"
    bad = client_pb2.ReadRequest(gets=[client_pb2.GetRequest(key="bad")])
    assert read_gets(bad.SerializeToString(), True, get) is None
