"""Applying log entries to a shard DB (pyxia.storage.apply), against Oxia's semantics: versions,
conditional ops, op order, sessions and ephemerals, secondary indexes, notifications, sequential
keys, rejected writes, commit offsets, and a randomized comparison with a dict model."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.common import keys
from pyxia.common.keys import HIERARCHICAL, NATURAL, KeyEncoding, ScanBounds
from pyxia.errors import InvalidArgument
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage.apply import (
    ApplyResult,
    RejectedWrite,
    StateApplier,
    WriteLimits,
    _Stage,
    validate_write_request,
)
from pyxia.storage.db import ShardDB
from pyxia.storage.steps import run_steps

ENCODINGS = [HIERARCHICAL, NATURAL]
SHARD = 7

OK = client_pb2.OK
KEY_NOT_FOUND = client_pb2.KEY_NOT_FOUND
UNEXPECTED = client_pb2.UNEXPECTED_VERSION_ID
NO_SESSION = client_pb2.SESSION_DOES_NOT_EXIST

CREATED = client_pb2.KEY_CREATED
MODIFIED = client_pb2.KEY_MODIFIED
DELETED = client_pb2.KEY_DELETED
RANGE_DELETED = client_pb2.KEY_RANGE_DELETED


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def put(key: str, value: bytes = b"v", **kw: Any) -> client_pb2.PutRequest:
    indexes = kw.pop("indexes", ())
    return client_pb2.PutRequest(
        key=key,
        value=value,
        secondary_indexes=[
            client_pb2.SecondaryIndex(index_name=n, secondary_key=s) for n, s in indexes
        ],
        **kw,
    )


def delete(key: str, **kw: Any) -> client_pb2.DeleteRequest:
    return client_pb2.DeleteRequest(key=key, **kw)


def delete_range(start: str, end: str) -> client_pb2.DeleteRangeRequest:
    return client_pb2.DeleteRangeRequest(start_inclusive=start, end_exclusive=end)


def session_record(timeout_ms: int = 5000, identity: str = "me") -> bytes:
    return storage_pb2.SessionMetadata(timeout_ms=timeout_ms, identity=identity).SerializeToString()


class Shard:
    """A real ShardDB with its StateApplier; entries get consecutive offsets."""

    def __init__(self, path: Path, encoding: KeyEncoding, *, notifications: bool = True) -> None:
        self.path = path
        self.encoding = encoding
        self.notifications = notifications
        self.db = ShardDB(path, encoding)
        self.applier = StateApplier(self.db, SHARD, notifications_enabled=notifications)

    def reopen(self) -> None:
        self.db.close()
        self.db = ShardDB(self.path, self.encoding)
        self.applier = StateApplier(self.db, SHARD, notifications_enabled=self.notifications)

    def close(self) -> None:
        self.db.close()

    @property
    def next_offset(self) -> int:
        return self.applier.commit_offset + 1

    def write(
        self,
        puts: Sequence[client_pb2.PutRequest] = (),
        deletes: Sequence[client_pb2.DeleteRequest] = (),
        ranges: Sequence[client_pb2.DeleteRangeRequest] = (),
        *,
        ts: int = 1000,
    ) -> ApplyResult:
        req = client_pb2.WriteRequest(puts=puts, deletes=deletes, delete_ranges=ranges)
        return self.applier.apply_write(req, self.next_offset, ts)

    def ok_put(
        self, key: str, value: bytes = b"v", *, ts: int = 1000, **kw: Any
    ) -> client_pb2.PutResponse:
        res = self.write([put(key, value, **kw)], ts=ts)
        assert res.error is None and res.response is not None
        pr = res.response.puts[0]
        assert pr.status == OK, pr
        return pr

    def open_session(self, session_id: int) -> None:
        res = self.write([put(keys.session_key(session_id), session_record())])
        assert res.response is not None and res.response.puts[0].status == OK

    def entry(self, key: str) -> storage_pb2.StorageEntry | None:
        raw = self.db.get(self.encoding.encode(key))
        return None if raw is None else storage_pb2.StorageEntry.FromString(raw)

    def all_keys(self) -> list[str]:
        return [self.encoding.decode(k) for k, _ in self.db.scan(None, None)]

    def user_keys(self) -> list[str]:
        return [k for k in self.all_keys() if not keys.is_internal_key(k)]

    def internal_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.all_keys() if k.startswith(prefix))

    def batch(self, offset: int) -> client_pb2.NotificationBatch | None:
        raw = self.db.get(self.encoding.encode(keys.notification_key(offset)))
        return None if raw is None else client_pb2.NotificationBatch.FromString(raw)

    def notes(self, offset: int) -> list[tuple[str, int]]:
        b = self.batch(offset)
        assert b is not None
        return [(e.key, e.value.type) for e in b.notifications]


@pytest.fixture(params=ENCODINGS, ids=lambda e: e.name)
def encoding(request: pytest.FixtureRequest) -> KeyEncoding:
    enc: KeyEncoding = request.param
    return enc


@pytest.fixture
def shard(tmp_path: Path, encoding: KeyEncoding) -> Iterator[Shard]:
    s = Shard(tmp_path / "db", encoding)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


def test_version_ids_are_a_persisted_shard_wide_counter(shard: Shard) -> None:
    assert shard.applier.last_version_id == -1
    assert [shard.ok_put(k).version.version_id for k in ("a", "b", "a", "/x/y")] == [0, 1, 2, 3]
    assert shard.db.last_version_id() == 3
    shard.reopen()
    assert shard.applier.last_version_id == 3
    assert shard.ok_put("c").version.version_id == 4
    # A put in a multi-op request takes the next ids in order.
    res = shard.write([put("d"), put("e")])
    assert res.response is not None
    assert [p.version.version_id for p in res.response.puts] == [5, 6]
    assert shard.db.last_version_id() == 6


def test_modifications_count_and_timestamps(shard: Shard) -> None:
    v = shard.ok_put("k", b"1", ts=100).version
    assert (v.modifications_count, v.created_timestamp, v.modified_timestamp) == (0, 100, 100)
    v = shard.ok_put("k", b"2", ts=200).version
    assert (v.modifications_count, v.created_timestamp, v.modified_timestamp) == (1, 100, 200)
    v = shard.ok_put("k", b"3", ts=300).version
    assert (v.modifications_count, v.created_timestamp, v.modified_timestamp) == (2, 100, 300)
    se = shard.entry("k")
    assert se is not None
    assert (se.value, se.version_id, se.modifications_count) == (b"3", 2, 2)
    assert (se.creation_timestamp, se.modification_timestamp) == (100, 300)
    # Delete and recreate: everything starts over but the version counter.
    res = shard.write(deletes=[delete("k")], ts=400)
    assert res.response is not None and res.response.deletes[0].status == OK
    assert shard.entry("k") is None
    v = shard.ok_put("k", b"4", ts=500).version
    assert (v.version_id, v.modifications_count, v.created_timestamp, v.modified_timestamp) == (
        3,
        0,
        500,
        500,
    )


def test_put_fields_are_stored_and_returned(shard: Shard) -> None:
    pr = shard.ok_put("k", b"x", client_identity="alice", partition_key="p")
    assert pr.version.client_identity == "alice"
    assert not pr.version.HasField("session_id")
    assert not pr.HasField("key")
    se = shard.entry("k")
    assert se is not None
    assert (se.client_identity, se.partition_key) == ("alice", "p")
    # An overwrite without those fields clears them (Oxia replaces every field).
    shard.ok_put("k", b"y")
    se = shard.entry("k")
    assert se is not None
    assert not se.HasField("client_identity") and not se.HasField("partition_key")


def test_override_version_and_modifications_count(shard: Shard) -> None:
    pr = shard.ok_put("k", override_version_id=100, override_modifications_count=7)
    assert (pr.version.version_id, pr.version.modifications_count) == (100, 7)
    se = shard.entry("k")
    assert se is not None and (se.version_id, se.modifications_count) == (100, 7)
    # The counter did not move.
    assert shard.db.last_version_id() == -1
    pr = shard.ok_put("k")
    assert (pr.version.version_id, pr.version.modifications_count) == (0, 8)
    # The expected version is checked against the stored (overridden) id.
    shard.ok_put("j", override_version_id=50)
    res = shard.write([put("j", expected_version_id=50)])
    assert res.response is not None and res.response.puts[0].status == OK


# ---------------------------------------------------------------------------------------------
# Conditional operations
# ---------------------------------------------------------------------------------------------


def test_put_expected_version(shard: Shard) -> None:
    def status(p: client_pb2.PutRequest) -> int:
        res = shard.write([p])
        assert res.response is not None
        return res.response.puts[0].status

    assert status(put("k", expected_version_id=3)) == UNEXPECTED  # missing key, explicit version
    assert status(put("k", expected_version_id=-1)) == OK  # must not exist: it does not
    assert shard.db.last_version_id() == 0  # the failed put took no version id
    assert status(put("k", expected_version_id=-1)) == UNEXPECTED  # now it exists
    assert status(put("k", expected_version_id=1)) == UNEXPECTED
    assert status(put("k", b"new", expected_version_id=0)) == OK
    se = shard.entry("k")
    assert se is not None and (se.value, se.version_id, se.modifications_count) == (b"new", 1, 1)
    assert shard.db.last_version_id() == 1


def test_delete_expected_version(shard: Shard) -> None:
    def status(d: client_pb2.DeleteRequest) -> int:
        res = shard.write(deletes=[d])
        assert res.response is not None
        return res.response.deletes[0].status

    assert status(delete("k")) == KEY_NOT_FOUND
    assert status(delete("k", expected_version_id=-1)) == KEY_NOT_FOUND
    assert status(delete("k", expected_version_id=4)) == UNEXPECTED
    shard.ok_put("k")
    assert status(delete("k", expected_version_id=-1)) == UNEXPECTED
    assert status(delete("k", expected_version_id=1)) == UNEXPECTED
    assert shard.entry("k") is not None
    assert status(delete("k", expected_version_id=0)) == OK
    assert shard.entry("k") is None
    assert status(delete("k", expected_version_id=0)) == UNEXPECTED


def test_puts_then_deletes_then_delete_ranges(shard: Shard) -> None:
    shard.ok_put("c")
    # The request lists its ops by kind: puts always come first, then deletes, then ranges.
    res = shard.write(
        puts=[put("a", b"1"), put("b", b"2"), put("a", b"3", expected_version_id=9)],
        deletes=[delete("a"), delete("zz"), delete("b", expected_version_id=2)],
        ranges=[delete_range("b", "c"), delete_range("x", "y")],
        ts=2000,
    )
    assert res.error is None and res.response is not None
    assert [p.status for p in res.response.puts] == [OK, OK, UNEXPECTED]
    # The deletes see the puts of the same request ("b" got version 2).
    assert [d.status for d in res.response.deletes] == [OK, KEY_NOT_FOUND, OK]
    assert [r.status for r in res.response.delete_ranges] == [OK, OK]
    assert shard.user_keys() == ["c"]
    off = shard.applier.commit_offset
    # One notification per key, the last op on a key winning, sorted by key.
    assert shard.notes(off) == [
        ("a", DELETED),
        ("b", RANGE_DELETED),
        ("x", RANGE_DELETED),
    ]


def test_two_puts_to_one_key_in_one_request(shard: Shard) -> None:
    res = shard.write([put("k", b"1"), put("k", b"2", expected_version_id=0)], ts=50)
    assert res.response is not None
    p1, p2 = res.response.puts
    assert (p1.status, p1.version.version_id, p1.version.modifications_count) == (OK, 0, 0)
    assert (p2.status, p2.version.version_id, p2.version.modifications_count) == (OK, 1, 1)
    assert p2.version.created_timestamp == 50
    se = shard.entry("k")
    assert se is not None and (se.value, se.version_id) == (b"2", 1)
    # The second put modified a key the same entry created: the last notification wins.
    assert shard.notes(shard.applier.commit_offset) == [("k", MODIFIED)]


def test_delete_range_orders_and_encodings(shard: Shard) -> None:
    for k in ("/a", "/a/b", "/a/c", "/a/b/c", "/b", "a", "b", "c"):
        shard.ok_put(k)
    shard.open_session(1)
    shard.write([put("e", session_id=1, indexes=[("i", "x")])])
    internal_before = {k for k in shard.all_keys() if keys.is_internal_key(k)}
    hierarchical = shard.encoding is HIERARCHICAL
    # Hierarchical: exactly the children of /a. Natural: the keys from "/a/" to "/a//", i.e.
    # none of these ('b' sorts after '/').
    shard.write(ranges=[delete_range("/a/", "/a//")])
    if hierarchical:
        assert sorted(shard.user_keys()) == ["/a", "/a/b/c", "/b", "a", "b", "c", "e"]
    else:
        assert sorted(shard.user_keys()) == [
            "/a",
            "/a/b",
            "/a/b/c",
            "/a/c",
            "/b",
            "a",
            "b",
            "c",
            "e",
        ]
    # An empty end: hierarchical encodes it to the smallest key (nothing deleted), natural has
    # no upper bound (every user key from the start on).
    shard.write(ranges=[delete_range("b", "")])
    if hierarchical:
        assert sorted(shard.user_keys()) == ["/a", "/a/b/c", "/b", "a", "b", "c", "e"]
    else:
        assert sorted(shard.user_keys()) == ["/a", "/a/b", "/a/b/c", "/a/c", "/b", "a"]
    shard.write(ranges=[delete_range("", "~")])
    if hierarchical:
        # "" .. "~": the keys without '/' only (depth 0)
        assert sorted(shard.user_keys()) == ["/a", "/a/b/c", "/b"]
    else:
        assert shard.user_keys() == []
    internal_after = {k for k in shard.all_keys() if keys.is_internal_key(k)}
    # Internal keys are never touched by a range, except the ones that belong to a deleted
    # record: the ephemeral "e" went with its shadow key and index entry.
    assert internal_before - internal_after == {
        keys.session_shadow_key(1, "e"),
        keys.index_entry_key("i", "x", "e"),
    }
    assert keys.session_key(1) in internal_after


def test_delete_range_never_reaches_internal_keys(shard: Shard) -> None:
    shard.ok_put("a")
    shard.open_session(3)
    before = shard.internal_keys(keys.SESSION_PREFIX)
    res = shard.write(ranges=[delete_range("__oxia/", "__oxia/~"), delete_range("", "")])
    assert res.response is not None
    assert [r.status for r in res.response.delete_ranges] == [OK, OK]
    assert shard.internal_keys(keys.SESSION_PREFIX) == before
    # A range starting at an internal key is not notified (Oxia); ("", "") is.
    assert shard.notes(shard.applier.commit_offset) == [("", RANGE_DELETED)]


# ---------------------------------------------------------------------------------------------
# Sessions and ephemeral records
# ---------------------------------------------------------------------------------------------


def test_ephemeral_put_needs_its_session(shard: Shard) -> None:
    res = shard.write([put("e", session_id=5), put("f")])
    assert res.response is not None
    assert [p.status for p in res.response.puts] == [NO_SESSION, OK]
    assert shard.user_keys() == ["f"]
    assert shard.internal_keys(keys.SESSION_PREFIX) == []
    assert shard.db.last_version_id() == 0  # only "f" took a version id
    # The version check comes first (Oxia's order).
    res = shard.write([put("f", session_id=5, expected_version_id=9)])
    assert res.response is not None and res.response.puts[0].status == UNEXPECTED


def test_ephemeral_records_live_and_die_with_their_session(shard: Shard) -> None:
    shard.open_session(1)
    shard.open_session(2)
    pr = shard.ok_put("e1", session_id=1, indexes=[("idx", "s1")])
    assert pr.version.session_id == 1
    shard.ok_put("e 2/x", session_id=1)
    shard.ok_put("e3", session_id=2)
    shard.ok_put("plain")
    assert shard.internal_keys(keys.session_key(1) + "/") == sorted(
        [keys.session_shadow_key(1, "e1"), keys.session_shadow_key(1, "e 2/x")]
    )
    assert keys.session_shadow_key(1, "e 2/x").endswith("/e%202%2Fx")
    se = shard.entry("e1")
    assert se is not None and se.session_id == 1

    # Deleting the session record (as the leader does on close/expiry) deletes its ephemerals,
    # their shadow keys and index entries, in the same entry, with KEY_DELETED notifications.
    res = shard.write(deletes=[delete(keys.session_key(1))])
    assert res.response is not None and res.response.deletes[0].status == OK
    assert sorted(shard.user_keys()) == ["e3", "plain"]
    assert shard.internal_keys(keys.session_key(1)) == []
    assert shard.internal_keys(keys.INDEX_PREFIX) == []
    assert shard.internal_keys(keys.SESSION_PREFIX) == [
        keys.session_key(2),
        keys.session_shadow_key(2, "e3"),
    ]
    assert shard.notes(shard.applier.commit_offset) == [
        ("e 2/x", DELETED),
        ("e1", DELETED),
    ]


def test_ephemeral_overwrites_move_or_drop_the_shadow(shard: Shard) -> None:
    shard.open_session(1)
    shard.open_session(2)
    shard.ok_put("e", session_id=1)
    # Another session takes the record over: the shadow moves.
    shard.ok_put("e", session_id=2)
    assert shard.internal_keys(keys.SESSION_PREFIX) == [
        keys.session_key(1),
        keys.session_key(2),
        keys.session_shadow_key(2, "e"),
    ]
    # Closing the first session leaves the record alone.
    shard.write(deletes=[delete(keys.session_key(1))])
    assert shard.user_keys() == ["e"]
    # A non-session put makes it a regular record: the shadow goes.
    shard.ok_put("e", b"plain")
    se = shard.entry("e")
    assert se is not None and not se.HasField("session_id")
    assert shard.internal_keys(keys.SESSION_PREFIX) == [keys.session_key(2)]
    shard.write(deletes=[delete(keys.session_key(2))])
    assert shard.user_keys() == ["e"]
    # Deleting an ephemeral record deletes its shadow.
    shard.open_session(3)
    shard.ok_put("f", session_id=3)
    shard.write(deletes=[delete("f")])
    assert shard.internal_keys(keys.SESSION_PREFIX) == [keys.session_key(3)]


def test_negative_session_id_names_no_session(shard: Shard) -> None:
    res = shard.write([put("e", session_id=-5)])
    assert res.response is not None and res.response.puts[0].status == NO_SESSION
    assert shard.user_keys() == []


def test_ephemeral_put_and_session_close_in_one_request(shard: Shard) -> None:
    shard.open_session(4)
    shard.ok_put("old", session_id=4)
    # Puts come first: the new ephemeral record is already there when the session goes.
    res = shard.write([put("new", session_id=4)], deletes=[delete(keys.session_key(4))])
    assert res.response is not None
    assert res.response.puts[0].status == OK and res.response.deletes[0].status == OK
    assert shard.user_keys() == []
    assert shard.internal_keys(keys.SESSION_PREFIX) == []
    assert shard.notes(shard.applier.commit_offset) == [("new", DELETED), ("old", DELETED)]


def test_session_records_are_not_notified(shard: Shard) -> None:
    shard.open_session(1)
    assert shard.batch(shard.applier.commit_offset) is None
    shard.write(deletes=[delete(keys.session_key(1))])
    assert shard.batch(shard.applier.commit_offset) is None


# ---------------------------------------------------------------------------------------------
# Secondary indexes
# ---------------------------------------------------------------------------------------------


def test_secondary_index_entries_follow_the_record(shard: Shard) -> None:
    def entries() -> list[str]:
        return shard.internal_keys(keys.INDEX_PREFIX + "/")

    shard.ok_put("k/1", indexes=[("x", "1"), ("y", "a/b"), ("x", "2")])
    assert entries() == sorted(
        [
            keys.index_entry_key("x", "1", "k/1"),
            keys.index_entry_key("x", "2", "k/1"),
            keys.index_entry_key("y", "a/b", "k/1"),
        ]
    )
    assert keys.index_entry_key("x", "1", "k/1") == "__oxia/idx/x/1\x01k%2F1"
    # Index entries have empty values.
    raw = shard.db.get(shard.encoding.encode(keys.index_entry_key("x", "1", "k/1")))
    assert raw == b""
    se = shard.entry("k/1")
    assert se is not None
    assert [(s.index_name, s.secondary_key) for s in se.secondary_indexes] == [
        ("x", "1"),
        ("y", "a/b"),
        ("x", "2"),
    ]
    # Overwrite: the old entries go, the new ones come.
    shard.ok_put("k/1", indexes=[("x", "3")])
    assert entries() == [keys.index_entry_key("x", "3", "k/1")]
    shard.ok_put("k/2", indexes=[("x", "3")])
    # An overwrite without indexes drops them.
    shard.ok_put("k/1")
    assert entries() == [keys.index_entry_key("x", "3", "k/2")]
    shard.ok_put("k/1", indexes=[("z", "q")])
    # Delete and delete-range drop them too.
    shard.write(deletes=[delete("k/1")])
    assert entries() == [keys.index_entry_key("x", "3", "k/2")]
    shard.write(ranges=[delete_range("k/", "k/~")])
    assert entries() == []
    assert shard.user_keys() == []


def test_failed_put_leaves_indexes_alone(shard: Shard) -> None:
    shard.ok_put("k", indexes=[("x", "1")])
    res = shard.write([put("k", indexes=[("x", "2")], expected_version_id=5)])
    assert res.response is not None and res.response.puts[0].status == UNEXPECTED
    assert shard.internal_keys(keys.INDEX_PREFIX) == [keys.index_entry_key("x", "1", "k")]


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------


def test_notification_batch_of_an_entry(shard: Shard) -> None:
    shard.ok_put("b")
    shard.ok_put("c")
    shard.ok_put("d/1")
    off = shard.next_offset
    res = shard.write(
        puts=[put("b"), put("a")],
        deletes=[delete("c"), delete("missing")],
        ranges=[delete_range("d/", "d//")],
        ts=12345,
    )
    assert res.notified
    assert shard.applier.commit_offset == off
    batch = shard.batch(off)
    assert batch is not None
    assert (batch.shard, batch.offset, batch.timestamp) == (SHARD, off, 12345)
    got = [(e.key, e.value.type, e.value.HasField("version_id")) for e in batch.notifications]
    assert got == [
        ("a", CREATED, True),
        ("b", MODIFIED, True),
        ("c", DELETED, False),
        ("d/", RANGE_DELETED, False),
    ]
    by_key = {e.key: e.value for e in batch.notifications}
    assert by_key["a"].version_id == 4 and by_key["b"].version_id == 3
    assert by_key["d/"].key_range_last == "d//"
    # Entries sorted by key: deterministic bytes on every replica.
    assert [e.key for e in batch.notifications] == sorted(e.key for e in batch.notifications)


def test_no_batch_for_an_entry_without_notifications(shard: Shard) -> None:
    shard.ok_put("k")
    res = shard.write([put("k", expected_version_id=7)], deletes=[delete("nope")])
    assert not res.notified
    assert shard.batch(shard.applier.commit_offset) is None
    shard.applier.apply_noop(shard.next_offset)
    assert shard.batch(shard.applier.commit_offset) is None
    batches = shard.internal_keys(keys.NOTIFICATIONS_PREFIX)
    assert batches == [keys.notification_key(0)]


def test_notifications_disabled(tmp_path: Path, encoding: KeyEncoding) -> None:
    s = Shard(tmp_path / "db", encoding, notifications=False)
    try:
        res = s.write([put("a")], deletes=[], ranges=[delete_range("x", "y")])
        assert not res.notified
        assert s.internal_keys(keys.NOTIFICATIONS_PREFIX) == []
        assert s.user_keys() == ["a"]
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# Sequential keys
# ---------------------------------------------------------------------------------------------


def seq_put(prefix: str, *deltas: int, **kw: Any) -> client_pb2.PutRequest:
    kw.setdefault("partition_key", "p")
    return put(prefix, sequence_key_delta=list(deltas), **kw)


def test_sequential_keys(shard: Shard) -> None:
    res = shard.write([seq_put("s", 1)])
    assert res.response is not None
    pr = res.response.puts[0]
    assert pr.status == OK and pr.key == "s-00000000000000000001"
    assert res.sequence_updates == [("s", "s-00000000000000000001")]
    assert (
        shard.ok_put("s", sequence_key_delta=[3], partition_key="p").key == "s-00000000000000000004"
    )
    # More deltas than parts: the missing parts count from 0.
    res = shard.write([seq_put("s", 2, 5), seq_put("s", 1, 1)])
    assert res.response is not None
    assert [p.key for p in res.response.puts] == [
        "s-00000000000000000006-00000000000000000005",
        "s-00000000000000000007-00000000000000000006",
    ]
    assert res.sequence_updates == [
        ("s", "s-00000000000000000006-00000000000000000005"),
        ("s", "s-00000000000000000007-00000000000000000006"),
    ]
    se = shard.entry("s-00000000000000000007-00000000000000000006")
    assert se is not None and se.partition_key == "p" and se.modifications_count == 0
    # Other prefixes are separate sequences.
    assert shard.ok_put("s-x", sequence_key_delta=[1], partition_key="p").key == (
        "s-x-00000000000000000001"
    )
    # A sequential put with an expected version gets UNEXPECTED_VERSION_ID (not a rejection).
    res = shard.write([seq_put("s", 1, 1, expected_version_id=1)])
    assert res.error is None and res.response is not None
    assert res.response.puts[0].status == UNEXPECTED
    assert res.sequence_updates == []


@pytest.mark.parametrize(
    ("request_puts", "message"),
    [
        ([put("a"), seq_put("s", 1)], "missing some sequence deltas"),  # "s" has two parts
        ([put("a"), seq_put("s", 0, 1)], "requires first delta do be > 0"),
        ([put("a"), seq_put("s", (1 << 64) - 1, 1)], "overflows the sequence"),
        ([put("a"), put("s", sequence_key_delta=[1])], "requires partition key"),
    ],
)
def test_rejected_sequential_write_has_no_effect(
    shard: Shard, request_puts: list[client_pb2.PutRequest], message: str
) -> None:
    shard.write([seq_put("s", 1, 1)])
    keys_before = shard.all_keys()
    version_before = shard.db.last_version_id()
    off = shard.next_offset
    res = shard.applier.apply_write(
        client_pb2.WriteRequest(puts=request_puts, deletes=[delete("s-00000000000000000001")]),
        off,
        999,
    )
    assert res.response is None
    assert isinstance(res.error, RejectedWrite)
    assert isinstance(res.error, InvalidArgument)
    assert res.sequence_updates == []
    assert not res.notified
    # Nothing changed but the commit offset.
    assert shard.all_keys() == keys_before
    assert shard.db.last_version_id() == version_before == shard.applier.last_version_id
    assert shard.db.commit_offset() == off == shard.applier.commit_offset
    assert shard.batch(off) is None
    # The next write goes on from the same version id.
    assert shard.ok_put("b").version.version_id == version_before + 1
    assert f"oxia: sequential key operation {message}" in str(res.error)


MAX_SEQ = keys.MAX_SEQUENCE_VALUE


def test_sequence_at_the_uint64_limit_is_rejected_not_reused(shard: Shard) -> None:
    top = f"s-{MAX_SEQ:020d}"
    assert shard.ok_put("s", sequence_key_delta=[MAX_SEQ - 1], partition_key="p").key == (
        f"s-{MAX_SEQ - 1:020d}"
    )
    first = shard.ok_put("s", b"first", sequence_key_delta=[1], partition_key="p")
    assert first.key == top
    # The next key would be 2^64: rejected, and neither the top key (Oxia's lookup below
    # "s-<2^64-1>" misses it) is written again, nor a lower one.
    for deltas in ([1], [MAX_SEQ], [1, 5]):
        keys_before = shard.all_keys()
        res = shard.write([seq_put("s", *deltas, value=b"again")])
        assert isinstance(res.error, RejectedWrite)
        assert isinstance(res.error.__cause__, keys.SequenceOverflow)
        assert "overflows the sequence 's'" in str(res.error)
        assert shard.all_keys() == keys_before
        se = shard.entry(top)
        assert se is not None and se.value == b"first" and se.modifications_count == 0
    # A key whose first part is at the limit with more parts counts the same.
    res = shard.write([seq_put("t", MAX_SEQ, 1)])
    assert res.error is None
    assert isinstance(shard.write([seq_put("t", 1, 1)]).error, RejectedWrite)
    # Other sequences, and a sequence whose later part is at the limit, go on.
    assert shard.ok_put("s-x", sequence_key_delta=[1], partition_key="p").key == (f"s-x-{1:020d}")
    assert shard.ok_put("u", sequence_key_delta=[1, MAX_SEQ], partition_key="p").key == (
        f"u-{1:020d}-{MAX_SEQ:020d}"
    )
    assert shard.ok_put("u", sequence_key_delta=[1, 0], partition_key="p").key == (
        f"u-{2:020d}-{MAX_SEQ:020d}"
    )


def test_sequence_limit_within_one_request(shard: Shard) -> None:
    """The key at the limit, written earlier in the same request, is seen too."""
    res = shard.write([seq_put("s", MAX_SEQ), seq_put("s", 1)])
    assert isinstance(res.error, RejectedWrite)
    assert shard.user_keys() == []


_delta = st.one_of(st.integers(1, 3), st.integers(MAX_SEQ - 3, MAX_SEQ))


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    puts=st.lists(
        st.tuples(_delta, st.lists(st.integers(0, MAX_SEQ), max_size=1)), min_size=1, max_size=6
    ),
)
def test_sequence_keys_only_grow_or_are_rejected(
    encoding: KeyEncoding, puts: list[tuple[int, list[int]]]
) -> None:
    """Around the uint64 limit a sequential put either creates a key after every key of the
    sequence (never one that exists) or is rejected without an effect."""
    with tempfile.TemporaryDirectory() as d:
        s = Shard(Path(d) / "db", encoding)
        try:
            created: list[str] = []
            for first, rest in puts:
                before = s.all_keys()
                res = s.write([seq_put("s", first, *rest)])
                if res.error is not None:
                    assert isinstance(res.error, RejectedWrite)
                    assert isinstance(
                        res.error.__cause__, (keys.SequenceOverflow, keys.MissingSequenceDeltas)
                    )
                    assert s.all_keys() == before
                    continue
                assert res.response is not None
                key = res.response.puts[0].key
                assert key not in before
                assert all(encoding.compare(key, k) > 0 for k in created)
                created.append(key)
            assert sorted(s.user_keys()) == sorted(created)
        finally:
            s.close()


def test_invalid_sequence_key_is_rejected(shard: Shard) -> None:
    shard.ok_put("s-0abc")  # not a sequence key, but it is the last key below the search key
    res = shard.write([seq_put("s", 1)])
    assert isinstance(res.error, RejectedWrite)
    assert shard.user_keys() == ["s-0abc"]


# ---------------------------------------------------------------------------------------------
# Commit offset, log entry values
# ---------------------------------------------------------------------------------------------


def test_commit_offset_is_written_with_every_entry(shard: Shard) -> None:
    assert shard.applier.commit_offset == -1 and shard.db.commit_offset() == -1
    shard.ok_put("a")
    assert shard.db.commit_offset() == 0
    shard.write([put("a", expected_version_id=5)])  # no effect at all
    assert shard.db.commit_offset() == 1
    shard.write([seq_put("s", 0)])  # rejected
    assert shard.db.commit_offset() == 2
    shard.applier.apply_noop(10)
    assert shard.db.commit_offset() == 10
    shard.reopen()
    assert shard.applier.commit_offset == 10
    assert shard.applier.last_version_id == 0
    assert shard.ok_put("b").version.version_id == 1
    assert shard.db.commit_offset() == 11


def test_failed_apply_leaves_the_version_counter(shard: Shard) -> None:
    shard.ok_put("a")
    # A damaged record: the put over it cannot read the existing entry.
    b = shard.db.new_batch()
    b.put(shard.encoding.encode("z"), b"\xff\xff\xff")
    shard.db.write(b)
    with pytest.raises(Exception, match=r"(?i)pars|decod"):
        shard.write([put("b"), put("z")])
    assert shard.applier.last_version_id == 0 == shard.db.last_version_id()
    assert shard.applier.commit_offset == 0 == shard.db.commit_offset()
    assert "b" not in shard.user_keys()
    assert shard.ok_put("c").version.version_id == 1


def test_apply_log_entry_value(shard: Shard) -> None:
    lev = storage_pb2.LogEntryValue(
        requests=storage_pb2.WriteRequests(
            writes=[
                client_pb2.WriteRequest(puts=[put("a", b"1")]),
                client_pb2.WriteRequest(puts=[put("a", b"2")], deletes=[delete("x")]),
            ]
        )
    )
    results = shard.applier.apply_log_entry_value(4, 777, lev.SerializeToString())
    assert len(results) == 2
    assert results[0].response is not None and results[1].response is not None
    assert results[0].response.puts[0].version.version_id == 0
    assert results[1].response.puts[0].version.modifications_count == 1
    assert results[1].response.deletes[0].status == KEY_NOT_FOUND
    assert shard.db.commit_offset() == 4
    se = shard.entry("a")
    assert se is not None and (se.value, se.modification_timestamp) == (b"2", 777)
    # Each write of the entry stores its batch at the entry's offset, as Oxia's
    # ProcessWrite does: the last one is what stays.
    assert shard.notes(4) == [("a", MODIFIED)]

    single = storage_pb2.LogEntryValue(
        requests=storage_pb2.WriteRequests(writes=[client_pb2.WriteRequest(deletes=[delete("a")])])
    )
    (r,) = shard.applier.apply_log_entry_value(5, 778, single.SerializeToString())
    assert r.response is not None and r.response.deletes[0].status == OK

    control = storage_pb2.LogEntryValue(
        control_request=storage_pb2.ControlRequest(
            record_checksum=storage_pb2.RecordChecksumRequest()
        )
    )
    assert shard.applier.apply_log_entry_value(6, 779, control.SerializeToString()) == []
    assert shard.db.commit_offset() == 6
    assert shard.user_keys() == []


# ---------------------------------------------------------------------------------------------
# Request validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        client_pb2.WriteRequest(puts=[put("")]),
        client_pb2.WriteRequest(puts=[put("__oxia/x")]),
        client_pb2.WriteRequest(puts=[put(keys.session_key(1))]),
        client_pb2.WriteRequest(puts=[put("k", indexes=[("", "a")])]),
        client_pb2.WriteRequest(puts=[put("k", indexes=[("a/b", "a")])]),
        client_pb2.WriteRequest(puts=[put("k", sequence_key_delta=[1])]),
        client_pb2.WriteRequest(puts=[put("", sequence_key_delta=[1], partition_key="p")]),
        client_pb2.WriteRequest(puts=[put("k", sequence_key_delta=[0, 1], partition_key="p")]),
        client_pb2.WriteRequest(puts=[put("__oxia/s", sequence_key_delta=[1], partition_key="p")]),
        client_pb2.WriteRequest(deletes=[delete("")]),
        client_pb2.WriteRequest(deletes=[delete(keys.session_key(1))]),
        client_pb2.WriteRequest(puts=[put("ok")], deletes=[delete("__oxia/term")]),
    ],
)
def test_validate_write_request_rejects(req: client_pb2.WriteRequest) -> None:
    with pytest.raises(InvalidArgument):
        validate_write_request(req)


@pytest.mark.parametrize(
    "req",
    [
        client_pb2.WriteRequest(),
        client_pb2.WriteRequest(
            puts=[put("k", indexes=[("i", ""), ("i", "a/b")]), put("__oxia")],
            deletes=[delete("/__oxia/x")],
            delete_ranges=[delete_range("", ""), delete_range("__oxia/", "__oxia0")],
        ),
        client_pb2.WriteRequest(puts=[put("s", sequence_key_delta=[1, 0], partition_key="")]),
    ],
)
def test_validate_write_request_accepts(req: client_pb2.WriteRequest) -> None:
    validate_write_request(req)


SMALL = WriteLimits(max_key_size=16, max_value_size=32, max_operations=3)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (client_pb2.WriteRequest(puts=[put("k" * 17)]), "put: the key is 17 bytes"),
        (client_pb2.WriteRequest(puts=[put("é" * 9)]), "put: the key is 18 bytes"),  # UTF-8
        (client_pb2.WriteRequest(puts=[put("k", b"v" * 33)]), "the value is 33 bytes"),
        (client_pb2.WriteRequest(puts=[put("k", partition_key="p" * 17)]), "the partition key"),
        (client_pb2.WriteRequest(puts=[put("k", indexes=[("i", "s" * 17)])]), "secondary key"),
        (client_pb2.WriteRequest(puts=[put("k", indexes=[("i" * 17, "s")])]), "index name"),
        (
            client_pb2.WriteRequest(
                puts=[put("s" * 17, sequence_key_delta=[1], partition_key="p")]
            ),
            "put: the key",
        ),
        (client_pb2.WriteRequest(deletes=[delete("k" * 17)]), "delete: the key is 17 bytes"),
        (client_pb2.WriteRequest(delete_ranges=[delete_range("a", "z" * 17)]), "the end key"),
        (client_pb2.WriteRequest(delete_ranges=[delete_range("a" * 17, "z")]), "the start key"),
        (
            client_pb2.WriteRequest(puts=[put("a"), put("b")], deletes=[delete("c"), delete("d")]),
            "the write has 4 operations, more than the maximum of 3",
        ),
    ],
)
def test_write_limits(req: client_pb2.WriteRequest, message: str) -> None:
    with pytest.raises(InvalidArgument, match="maximum") as err:
        validate_write_request(req, SMALL)
    assert message in str(err.value)
    # The serialized size passed by the leader gives the same answer.
    with pytest.raises(InvalidArgument):
        validate_write_request(req, SMALL, req.ByteSize())


def test_write_limits_are_inclusive() -> None:
    req = client_pb2.WriteRequest(
        puts=[put("k" * 16, b"v" * 32, partition_key="p" * 16, indexes=[("i" * 16, "s" * 16)])],
        deletes=[delete("é" * 8)],
        delete_ranges=[delete_range("a" * 16, "z" * 16)],
    )
    validate_write_request(req, SMALL)
    validate_write_request(req, SMALL, req.ByteSize())


def test_write_limits_defaults() -> None:
    d = WriteLimits()
    assert (d.max_key_size, d.max_value_size, d.max_operations) == (64 * 1024, 8 << 20, 10_000)
    validate_write_request(
        client_pb2.WriteRequest(puts=[put("k" * (64 * 1024), b"v" * (8 << 20))] * 2)
    )
    with pytest.raises(InvalidArgument):
        validate_write_request(client_pb2.WriteRequest(puts=[put("k", b"v" * ((8 << 20) + 1))]))
    with pytest.raises(InvalidArgument):
        validate_write_request(client_pb2.WriteRequest(puts=[put("k")] * 10_001))
    with pytest.raises(ValueError, match="positive"):
        WriteLimits(max_operations=0)


# ---------------------------------------------------------------------------------------------
# Randomized: the applier against a dict model
# ---------------------------------------------------------------------------------------------

MODEL_KEYS = ["a", "b", "a/b", "a/c", "/a", "/a/b", "b/a/x", "c"]
_key = st.sampled_from(MODEL_KEYS)
_range_bound = st.sampled_from(["", "a", "a/", "a//", "b", "/", "/a/", "c", "~", "zz"])
_expected = st.one_of(st.none(), st.just(-1), st.integers(0, 12))


@dataclass
class Rec:
    value: bytes
    version_id: int
    mod_count: int
    created: int
    modified: int


_op = st.one_of(
    st.tuples(st.just("put"), _key, st.binary(max_size=3), _expected),
    st.tuples(st.just("delete"), _key, _expected),
    st.tuples(st.just("range"), _range_bound, _range_bound),
)


@settings(max_examples=40, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    requests=st.lists(st.lists(_op, min_size=1, max_size=4), min_size=1, max_size=12),
)
def test_applier_matches_dict_model(
    encoding: KeyEncoding, requests: list[list[tuple[Any, ...]]]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = Shard(Path(d) / "db", encoding)
        try:
            model: dict[str, Rec] = {}
            counter = -1
            for i, ops in enumerate(requests):
                ts = 1000 + i
                puts = [op for op in ops if op[0] == "put"]
                dels = [op for op in ops if op[0] == "delete"]
                ranges = [op for op in ops if op[0] == "range"]
                res = s.write(
                    [
                        put(k, v) if ev is None else put(k, v, expected_version_id=ev)
                        for _, k, v, ev in puts
                    ],
                    [
                        delete(k) if ev is None else delete(k, expected_version_id=ev)
                        for _, k, ev in dels
                    ],
                    [delete_range(a, b) for _, a, b in ranges],
                    ts=ts,
                )
                assert res.error is None and res.response is not None
                # The model, in Oxia's order.
                for (_, k, v, ev), pr in zip(puts, res.response.puts, strict=True):
                    cur = model.get(k)
                    if ev is not None and (
                        (cur is None and ev != -1) or (cur is not None and cur.version_id != ev)
                    ):
                        assert pr.status == UNEXPECTED
                        continue
                    counter += 1
                    if cur is None:
                        model[k] = Rec(v, counter, 0, ts, ts)
                    else:
                        model[k] = Rec(v, counter, cur.mod_count + 1, cur.created, ts)
                    assert pr.status == OK
                    assert pr.version.version_id == counter
                    assert pr.version.modifications_count == model[k].mod_count
                for (_, k, ev), dr in zip(dels, res.response.deletes, strict=True):
                    cur = model.get(k)
                    if cur is None:
                        want = UNEXPECTED if ev is not None and ev != -1 else KEY_NOT_FOUND
                    elif ev is not None and cur.version_id != ev:
                        want = UNEXPECTED
                    else:
                        want = OK
                        del model[k]
                    assert dr.status == want
                for _, a, b in ranges:
                    bounds = keys.delete_range_bounds(a, b, encoding)
                    for k in [k for k in model if bounds.contains(encoding.encode(k))]:
                        del model[k]
            for phase in ("live", "reopened"):
                assert sorted(s.user_keys()) == sorted(model), phase
                for k, rec in model.items():
                    se = s.entry(k)
                    assert se is not None
                    assert (
                        se.value,
                        se.version_id,
                        se.modifications_count,
                        se.creation_timestamp,
                        se.modification_timestamp,
                    ) == (rec.value, rec.version_id, rec.mod_count, rec.created, rec.modified)
                assert s.db.last_version_id() == counter
                assert s.db.commit_offset() == len(requests) - 1
                s.reopen()
                assert s.applier.last_version_id == counter
        finally:
            s.close()


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.one_of(
            st.tuples(st.sampled_from([0, 1]), st.integers(0, 2**62), st.none()),
            st.tuples(st.just(2), st.none(), st.none()),
            st.tuples(st.just(3), st.none(), st.text(max_size=8)),
        ),
        max_size=12,
    ),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, 2**63),
)
def test_native_notification_encoding_matches_reference(
    entries: dict[str, tuple[int, int | None, str | None]], shard: int, offset: int, ts: int
) -> None:
    from pyxia.storage.notifications import Notifications

    n = Notifications(shard, offset, ts)
    n._entries.update(entries)
    assert n.seal_bytes() == n.seal_bytes_reference()
    batch = n.seal()
    assert [e.key for e in batch.notifications] == sorted(entries, key=lambda s: s.encode())


# ---------------------------------------------------------------------------------------------
# Applying in steps
# ---------------------------------------------------------------------------------------------


def db_contents(s: Shard) -> list[tuple[bytes, bytes]]:
    return list(s.db.scan(None, None))


def test_abandoned_session_close_leaves_no_trace(tmp_path: Path, encoding: KeyEncoding) -> None:
    """Closing a session with many ephemeral records takes many steps; abandoned halfway, it
    wrote nothing, and applied again it does all of it."""
    s = Shard(tmp_path / "db", encoding)
    try:
        s.open_session(0)
        s.write([put(f"e{i}", session_id=0) for i in range(50)])
        before = db_contents(s)
        version = s.applier.last_version_id
        req = client_pb2.WriteRequest(deletes=[delete(keys.session_key(0))])
        steps = s.applier.apply_write_steps(req, s.next_offset, 2000)
        for _ in range(20):
            next(steps)
        steps.close()
        assert db_contents(s) == before
        assert s.applier.last_version_id == version
        assert s.applier.commit_offset == s.db.commit_offset() == 1
        res = run_steps(s.applier.apply_write_steps(req, s.next_offset, 2000))
        assert res.response is not None and res.response.deletes[0].status == OK
        assert s.user_keys() == []
    finally:
        s.close()


@settings(max_examples=30, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    requests=st.lists(st.lists(_op, min_size=1, max_size=6), min_size=1, max_size=6),
    stops=st.lists(st.integers(0, 12), min_size=6, max_size=6),
)
def test_abandoned_steps_leave_no_trace(
    encoding: KeyEncoding, requests: list[list[tuple[Any, ...]]], stops: list[int]
) -> None:
    """Each request is started, abandoned after some steps, then applied in full: the DB ends
    exactly as if each had been applied once, in one go."""
    with tempfile.TemporaryDirectory() as d:
        a = Shard(Path(d) / "a", encoding)
        b = Shard(Path(d) / "b", encoding)
        try:
            for i, (ops, stop) in enumerate(zip(requests, stops, strict=False)):
                req = client_pb2.WriteRequest(
                    puts=[
                        put(k, v) if ev is None else put(k, v, expected_version_id=ev)
                        for kind, k, v, ev in (op for op in ops if op[0] == "put")
                    ],
                    deletes=[
                        delete(k) if ev is None else delete(k, expected_version_id=ev)
                        for kind, k, ev in (op for op in ops if op[0] == "delete")
                    ],
                    delete_ranges=[
                        delete_range(x, y) for kind, x, y in (op for op in ops if op[0] == "range")
                    ],
                )
                expected = b.applier.apply_write(req, i, 1000 + i)
                before = db_contents(a)
                version = a.applier.last_version_id
                steps = a.applier.apply_write_steps(req, i, 1000 + i)
                try:
                    for _ in range(stop):
                        next(steps)
                except StopIteration:
                    pass  # finished within `stop` steps: nothing left to abandon
                else:
                    steps.close()
                    assert db_contents(a) == before
                    assert a.applier.last_version_id == version
                    assert a.applier.commit_offset == i - 1
                    got = a.applier.apply_write(req, i, 1000 + i)
                    assert got.response == expected.response
                assert db_contents(a) == db_contents(b)
            assert a.applier.last_version_id == b.applier.last_version_id
        finally:
            a.close()
            b.close()


_STAGE_KEYS = st.text(alphabet="abc", min_size=1, max_size=3).map(str.encode)


@settings(max_examples=60, deadline=None)
@given(
    stored=st.dictionaries(_STAGE_KEYS, st.binary(max_size=2), max_size=12),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "delete", "scan", "rscan"]),
            _STAGE_KEYS,
            _STAGE_KEYS,
            st.booleans(),
        ),
        max_size=40,
    ),
)
def test_stage_scan_merges_the_overlay_like_a_model(
    stored: dict[bytes, bytes], ops: list[tuple[str, bytes, bytes, bool]]
) -> None:
    """The entry's staged view (DB + overlay, the overlay's keys kept in a lazily sorted list)
    scans as a dict model does, whatever the interleaving of puts, deletes and scans, with
    and without a skipped region."""
    with tempfile.TemporaryDirectory() as d:
        db = ShardDB(Path(d) / "db", NATURAL)
        try:
            batch = db.new_batch()
            for k, v in stored.items():
                batch.put(k, v)
            db.write(batch)
            stage = _Stage(db)
            model: dict[bytes, bytes] = dict(stored)
            for op, a, b, skip in ops:
                if op == "put":
                    stage.put(a, b"v" + b)
                    model[a] = b"v" + b
                elif op == "delete":
                    stage.delete(a)
                    model.pop(a, None)
                else:
                    lo, hi = min(a, b), max(a, b)
                    bounds = ScanBounds(lo, hi, (b"b", b"c") if skip else None)
                    want = sorted(
                        ((k, v) for k, v in model.items() if bounds.contains(k)),
                        reverse=op == "rscan",
                    )
                    assert list(stage.scan(bounds, reverse=op == "rscan")) == want
        finally:
            db.close()
