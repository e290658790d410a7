"""The read side of a shard (pyxia.storage.reads): Get with comparisons, List/RangeScan bounds,
secondary indexes, sequences, notifications and sessions, over a real ShardDB written through
the StateApplier, for both key encodings."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.common import keys
from pyxia.common.keys import HIERARCHICAL, NATURAL, KeyEncoding
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage import reads
from pyxia.storage.apply import StateApplier
from pyxia.storage.db import ShardDB

ENCODINGS = [HIERARCHICAL, NATURAL]

EQUAL = client_pb2.EQUAL
FLOOR = client_pb2.FLOOR
CEILING = client_pb2.CEILING
LOWER = client_pb2.LOWER
HIGHER = client_pb2.HIGHER
COMPARISONS = [EQUAL, FLOOR, CEILING, LOWER, HIGHER]
OK = client_pb2.OK
KEY_NOT_FOUND = client_pb2.KEY_NOT_FOUND


def put(key: str, value: bytes | None = None, **kw: Any) -> client_pb2.PutRequest:
    indexes = kw.pop("indexes", ())
    return client_pb2.PutRequest(
        key=key,
        value=key.encode() if value is None else value,
        secondary_indexes=[
            client_pb2.SecondaryIndex(index_name=n, secondary_key=s) for n, s in indexes
        ],
        **kw,
    )


class Shard:
    def __init__(self, path: Path, encoding: KeyEncoding) -> None:
        self.encoding = encoding
        self.db = ShardDB(path, encoding)
        self.applier = StateApplier(self.db, 3)

    def write(
        self,
        puts: Sequence[client_pb2.PutRequest] = (),
        deletes: Sequence[str] = (),
        *,
        ts: int = 1000,
    ) -> client_pb2.WriteResponse:
        req = client_pb2.WriteRequest(
            puts=puts, deletes=[client_pb2.DeleteRequest(key=k) for k in deletes]
        )
        res = self.applier.apply_write(req, self.applier.commit_offset + 1, ts)
        assert res.response is not None
        return res.response

    def put_keys(self, *ks: str) -> None:
        self.write([put(k) for k in ks])

    def open_session(self, session_id: int, timeout_ms: int = 5000) -> None:
        md = storage_pb2.SessionMetadata(timeout_ms=timeout_ms, identity=f"c{session_id}")
        self.write([put(keys.session_key(session_id), md.SerializeToString())])

    def get(
        self, key: str, ct: int = EQUAL, *, include_value: bool = True, index: str | None = None
    ) -> client_pb2.GetResponse:
        req = client_pb2.GetRequest(key=key, include_value=include_value, comparison_type=ct)
        if index is not None:
            req.secondary_index_name = index
        return reads.get(self.db, req)

    def found(self, key: str, ct: int, index: str | None = None) -> str | None:
        res = self.get(key, ct, index=index)
        if res.status == KEY_NOT_FOUND:
            assert not res.HasField("key")
            return None
        assert res.status == OK
        return res.key if res.HasField("key") else key

    def list(self, start: str, end: str, **kw: Any) -> list[str]:
        return list(
            reads.list_keys(
                self.db, client_pb2.ListRequest(start_inclusive=start, end_exclusive=end, **kw)
            )
        )

    def scan(self, start: str, end: str, **kw: Any) -> list[client_pb2.GetResponse]:
        return list(
            reads.range_scan(
                self.db,
                client_pb2.RangeScanRequest(start_inclusive=start, end_exclusive=end, **kw),
            )
        )

    def close(self) -> None:
        self.db.close()


@pytest.fixture(params=ENCODINGS, ids=lambda e: e.name)
def shard(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Shard]:
    s = Shard(tmp_path / "db", request.param)
    try:
        yield s
    finally:
        s.close()


def _with_internal_keys(s: Shard) -> None:
    """Internal keys of every kind: session records and shadows, index entries, notification
    batches, counters."""
    s.open_session(1)
    s.write([put("eph", session_id=1, indexes=[("i", "x")])])
    s.write([put("zz/top", indexes=[("j", "a/b")])])


def model_get(order: Sequence[str], key: str, ct: int, enc: KeyEncoding) -> str | None:
    """Oxia's comparisons over the user keys, in the encoding's order."""
    ek = enc.encode(key)
    encoded = sorted((enc.encode(k), k) for k in order)
    if ct == EQUAL:
        return key if key in order else None
    if ct == FLOOR:
        c = [k for e, k in encoded if e <= ek]
        return c[-1] if c else None
    if ct == LOWER:
        c = [k for e, k in encoded if e < ek]
        return c[-1] if c else None
    if ct == CEILING:
        c = [k for e, k in encoded if e >= ek]
        return c[0] if c else None
    c = [k for e, k in encoded if e > ek]
    return c[0] if c else None


# ---------------------------------------------------------------------------------------------
# Get
# ---------------------------------------------------------------------------------------------


def test_get_equal_and_version(shard: Shard) -> None:
    shard.open_session(9)
    shard.write([put("a", b"1", client_identity="alice")], ts=10)
    shard.write([put("a", b"2", client_identity="bob", session_id=9)], ts=20)
    res = shard.get("a")
    assert res.status == OK
    assert res.value == b"2"
    assert not res.HasField("key")  # EQUAL: Oxia does not echo the key
    assert not res.HasField("secondary_index_key")
    v = res.version
    assert (v.version_id, v.modifications_count) == (2, 1)
    assert (v.created_timestamp, v.modified_timestamp) == (10, 20)
    assert (v.session_id, v.client_identity) == (9, "bob")
    # Without the value.
    res = shard.get("a", include_value=False)
    assert res.status == OK and not res.HasField("value") and res.version.version_id == 2
    # A record without session/identity has neither in its version.
    shard.write([put("b", b"")])
    res = shard.get("b")
    assert res.status == OK and res.HasField("value") and res.value == b""
    assert not res.version.HasField("session_id")
    assert not res.version.HasField("client_identity")
    missing = shard.get("c")
    assert missing.status == KEY_NOT_FOUND
    assert not missing.HasField("version") and not missing.HasField("value")


def test_get_on_an_empty_db(shard: Shard) -> None:
    for ct in COMPARISONS:
        for key in ("", "a", "/a/b", "__oxia/x"):
            assert shard.get(key, ct).status == KEY_NOT_FOUND


HIER_KEYS = ["/a", "/a/b", "/a/b/c", "/a/c", "/b", "a", "a/b", "b", "\u00e9"]


@pytest.mark.parametrize(
    ("key", "ct", "hierarchical", "natural"),
    [
        ("/a/b", EQUAL, "/a/b", "/a/b"),
        ("/a/b", FLOOR, "/a/b", "/a/b"),
        ("/a/b", CEILING, "/a/b", "/a/b"),
        # Hierarchical: depth first. "/a/b" (depth 2) is followed by "/a/c", then "/a/b/c".
        ("/a/b", HIGHER, "/a/c", "/a/b/c"),
        ("/a/b", LOWER, "/b", "/a"),
        ("/a/b/c", LOWER, "/a/c", "/a/b"),
        ("/a/b/c", HIGHER, None, "/a/c"),
        ("/a/b/c", FLOOR, "/a/b/c", "/a/b/c"),
        ("/a/bb", FLOOR, "/a/b", "/a/b/c"),
        ("/a/bb", CEILING, "/a/c", "/a/c"),
        ("/z", CEILING, "/a/b", "a"),
        ("/z", FLOOR, "/b", "/b"),
        ("", FLOOR, None, None),
        ("", CEILING, "a", "/a"),
        ("", HIGHER, "a", "/a"),
        ("\u00e9", HIGHER, "a/b", None),
        ("zzz", LOWER, "b", "b"),
        ("zzz", HIGHER, "\u00e9", "\u00e9"),
        # Hierarchical: a depth-2 key that sorts before the other depth-2 keys.
        ("zzz/y/x", HIGHER, "/a/b", "\u00e9"),
        ("zzz/y/x", LOWER, "/b", "b"),
    ],
)
def test_get_comparisons(
    shard: Shard, key: str, ct: int, hierarchical: str | None, natural: str | None
) -> None:
    shard.put_keys(*HIER_KEYS)
    _with_internal_keys(shard)
    shard.write(deletes=["eph", "zz/top"])  # only the internal keys they leave stay
    want = hierarchical if shard.encoding is HIERARCHICAL else natural
    assert want == model_get(HIER_KEYS, key, ct, shard.encoding)
    assert shard.found(key, ct) == want
    res = shard.get(key, ct)
    if want is not None:
        assert res.value == want.encode()
        # The key is echoed for the non-EQUAL comparisons only.
        assert res.HasField("key") == (ct != EQUAL)


def test_get_never_lands_on_internal_keys(shard: Shard) -> None:
    shard.put_keys("a", "b/c")
    _with_internal_keys(shard)
    last = "zz/top"  # the last user key with both encodings
    # Past the last user key there are only internal keys: nothing is found.
    assert shard.found(last, HIGHER) is None
    assert shard.found("__oxia/", CEILING) is None
    assert shard.found("__oxia/", HIGHER) is None
    assert shard.found("__oxia/session/", CEILING) is None
    # Natural: nothing sorts after U+10FFFF but internal keys. Hierarchical: depth 1 does.
    assert shard.found("\U0010ffff", CEILING) == ("b/c" if shard.encoding is HIERARCHICAL else None)
    # Below an internal key name: the last user key.
    assert shard.found("__oxia/zzz", LOWER) == last
    assert shard.found("__oxia/zzz", FLOOR) == last
    assert shard.found("~~~~/~/~/~/~/~/~/~", FLOOR) == last
    # Oxia reads an exact key as named, internal or not (EQUAL, and FLOOR's exact probe).
    res = shard.get(keys.session_key(1))
    assert res.status == OK
    assert storage_pb2.SessionMetadata.FromString(res.value).identity == "c1"
    assert shard.found(keys.session_key(1), FLOOR) == keys.session_key(1)
    # A notification batch read as a record comes back raw, with an empty version.
    res = shard.get(keys.notification_key(2))
    assert res.status == OK and res.version == client_pb2.Version()
    assert client_pb2.NotificationBatch.FromString(res.value).offset == 2


_key_chars = st.sampled_from(["/", "/", "a", "b", "\x00", "~", "\u00e9", "_"])
_keys = st.text(alphabet=_key_chars, max_size=6)


@settings(max_examples=25, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    stored=st.lists(_keys.filter(bool), min_size=0, max_size=10, unique=True),
    probes=st.lists(_keys, min_size=1, max_size=6),
)
def test_get_matches_the_model(encoding: KeyEncoding, stored: list[str], probes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = Shard(Path(d) / "db", encoding)
        try:
            if stored:
                s.put_keys(*stored)
            s.open_session(1)  # and an internal key or two
            for probe in probes:
                if keys.is_internal_key(probe):
                    continue
                for ct in COMPARISONS:
                    assert s.found(probe, ct) == model_get(stored, probe, ct, encoding), (probe, ct)
        finally:
            s.close()


# ---------------------------------------------------------------------------------------------
# List / RangeScan
# ---------------------------------------------------------------------------------------------


def test_list_and_range_scan_bounds(shard: Shard) -> None:
    shard.put_keys(*HIER_KEYS)
    _with_internal_keys(shard)
    user = sorted([*HIER_KEYS, "eph", "zz/top"], key=shard.encoding.encode)
    # Empty start: no lower bound; empty end: no upper bound (Oxia's List, unlike DeleteRange).
    assert shard.list("", "") == user
    assert shard.list("b", "") == [k for k in user if shard.encoding.compare(k, "b") >= 0]
    assert shard.list("", "b") == [k for k in user if shard.encoding.compare(k, "b") < 0]
    assert shard.list("a", "b") == [
        k
        for k in user
        if shard.encoding.compare(k, "a") >= 0 and shard.encoding.compare(k, "b") < 0
    ]
    # A start that does not sort before the end: nothing.
    assert shard.list("b", "b") == []
    assert shard.list("b", "a") == []
    # The children of /a (hierarchical only).
    if shard.encoding is HIERARCHICAL:
        assert shard.list("/a/", "/a//") == ["/a/b", "/a/c"]
        assert shard.list("/", "//") == ["/a", "/b"]
    else:
        assert shard.list("/a/", "/a0") == ["/a/b", "/a/b/c", "/a/c"]
    # RangeScan: same keys, with records.
    records = shard.scan("", "")
    assert [r.key for r in records] == user
    for r in records:
        assert r.status == OK and r.HasField("key")
    by_key = {r.key: r for r in records}
    assert by_key["a"].value == b"a"
    assert by_key["eph"].version.session_id == 1
    assert shard.scan("b", "a") == []


def test_list_and_range_scan_with_internal_keys(shard: Shard) -> None:
    shard.put_keys("a", "b")
    _with_internal_keys(shard)
    internal = shard.list("__oxia/", "__oxia/~", include_internal_keys=True)
    assert internal  # never empty: counters, sessions, notifications
    assert all(keys.is_internal_key(k) for k in internal)
    assert shard.list("__oxia/", "__oxia/~") == []
    everything = shard.list("", "", include_internal_keys=True)
    assert set(everything) >= {
        "a",
        "b",
        keys.COMMIT_OFFSET_KEY,
        keys.LAST_VERSION_ID_KEY,
        keys.session_key(1),
        keys.session_shadow_key(1, "eph"),
        keys.index_entry_key("i", "x", "eph"),
        keys.notification_key(2),
    }
    # Internal keys sort after every user key, with both encodings.
    n_user = len(shard.list("", ""))
    assert not any(keys.is_internal_key(k) for k in everything[:n_user])
    assert all(keys.is_internal_key(k) for k in everything[n_user:])
    # RangeScan does not choke on values that are not StorageEntry (notification batches).
    records = shard.scan("", "", include_internal_keys=True)
    assert [r.key for r in records] == everything
    by_key = {r.key: r for r in records}
    batch = by_key[keys.notification_key(2)]
    assert batch.version == client_pb2.Version()
    assert client_pb2.NotificationBatch.FromString(batch.value).offset == 2
    session = by_key[keys.session_key(1)]
    assert storage_pb2.SessionMetadata.FromString(session.value).timeout_ms == 5000
    assert by_key[keys.COMMIT_OFFSET_KEY].value.isdigit()
    # The session records through List, the way Oxia's leader finds them.
    sessions = shard.list(
        keys.SESSIONS_LIST_START, keys.SESSIONS_LIST_END, include_internal_keys=True
    )
    assert [k for k in sessions if keys.is_session_key(k)] == [keys.session_key(1)]


# ---------------------------------------------------------------------------------------------
# Secondary indexes
# ---------------------------------------------------------------------------------------------


def _indexed(shard: Shard) -> None:
    shard.write(
        [
            put("k1", indexes=[("color", "red")]),
            put("k2", indexes=[("color", "blue")]),
            put("k3", indexes=[("color", "red"), ("color", "green")]),
            put("k/4", indexes=[("size", "red"), ("color", "yellow")]),
            put("k5"),
        ]
    )


def test_secondary_index_list_and_range_scan(shard: Shard) -> None:
    _indexed(shard)
    _with_internal_keys(shard)
    # By secondary key, then by (escaped) primary key; k3 comes once per secondary key.
    assert shard.list("a", "z", secondary_index_name="color") == ["k2", "k3", "k1", "k3", "k/4"]
    assert shard.list("blue", "red", secondary_index_name="color") == ["k2", "k3"]
    assert shard.list("c", "s", secondary_index_name="color") == ["k3", "k1", "k3"]
    assert shard.list("red", "red", secondary_index_name="color") == []
    assert shard.list("s", "a", secondary_index_name="color") == []
    assert shard.list("", "zzz", secondary_index_name="size") == ["k/4"]
    assert shard.list("a", "z", secondary_index_name="nope") == []
    # An empty end formats to the index prefix itself, which sorts before every entry (Oxia).
    assert shard.list("a", "", secondary_index_name="color") == []
    records = shard.scan("a", "z", secondary_index_name="color")
    assert [(r.key, r.secondary_index_key) for r in records] == [
        ("k2", "blue"),
        ("k3", "green"),
        ("k1", "red"),
        ("k3", "red"),
        ("k/4", "yellow"),
    ]
    for r in records:
        assert r.status == OK and r.value == r.key.encode()
    assert records[0].version.version_id == 1


def test_secondary_index_get(shard: Shard) -> None:
    _indexed(shard)
    _with_internal_keys(shard)

    def find(key: str, ct: int) -> tuple[str, str] | None:
        res = shard.get(key, ct, index="color")
        if res.status == KEY_NOT_FOUND:
            return None
        assert res.status == OK and res.value == res.key.encode()
        return res.key, res.secondary_index_key

    assert find("red", EQUAL) == ("k1", "red")  # the first entry of that secondary key
    assert find("re", EQUAL) is None
    assert find("red", FLOOR) == ("k1", "red")
    assert find("red", CEILING) == ("k1", "red")
    assert find("red", HIGHER) == ("k/4", "yellow")
    assert find("red", LOWER) == ("k3", "green")
    assert find("green", LOWER) == ("k2", "blue")
    assert find("h", FLOOR) == ("k3", "green")
    assert find("h", CEILING) == ("k1", "red")
    assert find("h", HIGHER) == ("k1", "red")
    assert find("yellow", HIGHER) is None
    assert find("zzz", FLOOR) == ("k/4", "yellow")
    assert find("zzz", CEILING) is None
    assert find("blue", LOWER) is None
    assert find("a", FLOOR) is None
    assert find("a", CEILING) == ("k2", "blue")
    assert find("a", LOWER) is None
    assert find("", LOWER) is None
    # Another index, unknown index.
    assert shard.get("red", EQUAL, index="size").key == "k/4"
    assert shard.get("red", EQUAL, index="nope").status == KEY_NOT_FOUND
    # include_value=False.
    res = shard.get("blue", EQUAL, include_value=False, index="color")
    assert res.status == OK and not res.HasField("value")
    assert (res.key, res.secondary_index_key) == ("k2", "blue")
    assert res.version.version_id == 1


def test_secondary_index_get_across_hierarchical_levels(shard: Shard) -> None:
    """Secondary keys with '/' live in other depth groups with the hierarchical encoding,
    between other internal keys: the walk must jump over them. The comparison is Oxia's
    compare_with_slash: a key without '/' sorts before one with."""
    shard.open_session(1)
    shard.write(
        [
            put("p1", indexes=[("i", "m")]),
            put("p2", indexes=[("i", "a/b/c")]),
            put("p3", indexes=[("h", "zz"), ("j", "a"), ("j", "b/c"), ("i", "q")]),
            put("p4", session_id=1, indexes=[("j", "z/z/z/z")]),
        ]
    )

    def find(key: str, ct: int) -> str | None:
        res = shard.get(key, ct, index="i")
        return None if res.status == KEY_NOT_FOUND else res.secondary_index_key

    assert find("a/b/c", EQUAL) == "a/b/c"
    assert find("q", EQUAL) == "q"
    assert find("a/b", EQUAL) is None
    if shard.encoding is HIERARCHICAL:
        # Entry order: m, q (depth 3), a/b/c (depth 5); the same as compare_with_slash here.
        assert find("n", CEILING) == "q"
        assert find("r", CEILING) == "a/b/c"
        assert find("r", HIGHER) == "a/b/c"
        assert find("q", HIGHER) == "a/b/c"
        assert find("a/b/c", LOWER) == "q"
        assert find("a/b/d", FLOOR) == "a/b/c"
        assert find("a/b/a", FLOOR) == "q"
        assert find("a/b/c/d", FLOOR) == "a/b/c"
        assert find("a/b/c", HIGHER) is None
        assert shard.list("", "zzz", secondary_index_name="i") == ["p1", "p3"]
        assert shard.list("a/", "a//", secondary_index_name="i") == []
        assert shard.list("a/b/", "a/b//", secondary_index_name="i") == ["p2"]
        assert shard.list("", "a/b/~", secondary_index_name="i") == ["p1", "p3", "p2"]
    else:
        # Natural entry order: a/b/c, m, q.
        assert find("n", CEILING) == "q"
        assert find("r", CEILING) is None  # Oxia steps back to "q" and finds it lower
        assert find("q", HIGHER) is None
        assert find("a/b/c", LOWER) is None  # "a/b/c" is the first entry
        # compare_with_slash puts "a/b/d" after "m" (a key with '/' sorts after one without).
        assert find("a/b/d", FLOOR) == "m"
        assert find("b", FLOOR) is None
        assert shard.list("", "zzz", secondary_index_name="i") == ["p2", "p1", "p3"]
        assert shard.list("a/", "a0", secondary_index_name="i") == ["p2"]
    # Through another index: hierarchical stops at the end's depth group.
    assert shard.list("", "zzz", secondary_index_name="j") == (
        ["p3"] if shard.encoding is HIERARCHICAL else ["p3", "p3", "p4"]
    )


_sk = st.text(alphabet=st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3)
_pk = st.text(alphabet=st.sampled_from(["x", "y", "%", " "]), min_size=1, max_size=2)


def model_index_get(entries: list[tuple[str, str]], key: str, ct: int) -> tuple[str, str] | None:
    """Oxia's index Get over slash-free secondary keys: entries ordered by (secondary key,
    escaped primary key); an exact match is the first entry of the key."""
    order = sorted(entries, key=lambda e: (e[1], keys.path_escape(e[0])))
    if ct == EQUAL:
        c = [e for e in order if e[1] == key]
        return c[0] if c else None
    if ct == CEILING:
        c = [e for e in order if e[1] >= key]
        return c[0] if c else None
    if ct == HIGHER:
        c = [e for e in order if e[1] > key]
        return c[0] if c else None
    if ct == LOWER:
        c = [e for e in order if e[1] < key]
        return c[-1] if c else None
    eq = [e for e in order if e[1] == key]
    if eq:
        return eq[0]
    c = [e for e in order if e[1] < key]
    return c[-1] if c else None


@settings(max_examples=25, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    records=st.dictionaries(_pk, st.lists(_sk, max_size=2, unique=True), max_size=6),
    probes=st.lists(_sk, min_size=1, max_size=4),
)
def test_secondary_index_get_matches_the_model(
    encoding: KeyEncoding, records: dict[str, list[str]], probes: list[str]
) -> None:
    entries = [(pk, sk) for pk, sks in records.items() for sk in sks]
    with tempfile.TemporaryDirectory() as d:
        s = Shard(Path(d) / "db", encoding)
        try:
            if records:
                s.write(
                    [put(pk, indexes=[("ix", sk) for sk in sks]) for pk, sks in records.items()]
                )
            s.write([put("other", indexes=[("ix0", "b"), ("iw", "b")])])
            for probe in probes:
                for ct in COMPARISONS:
                    res = s.get(probe, ct, index="ix")
                    got = (
                        None if res.status == KEY_NOT_FOUND else (res.key, res.secondary_index_key)
                    )
                    assert got == model_index_get(entries, probe, ct), (probe, ct)
            listed = s.list("", "~", secondary_index_name="ix")
            order = sorted(entries, key=lambda e: (e[1], keys.path_escape(e[0])))
            assert listed == [pk for pk, _ in order]
        finally:
            s.close()


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------


def test_last_sequence_key(shard: Shard) -> None:
    assert reads.last_sequence_key(shard.db, "s") is None
    shard.put_keys("s", "s+1", "s-x", "r-00000000000000000009", "t-00000000000000000001")
    assert reads.last_sequence_key(shard.db, "s") is None
    shard.write([put("s", sequence_key_delta=[5], partition_key="p")])
    assert reads.last_sequence_key(shard.db, "s") == "s-00000000000000000005"
    shard.write([put("s", sequence_key_delta=[1, 2], partition_key="p")])
    assert reads.last_sequence_key(shard.db, "s") == "s-00000000000000000006-00000000000000000002"
    shard.write([put("s-a", sequence_key_delta=[1], partition_key="p")])
    assert reads.last_sequence_key(shard.db, "s") == "s-00000000000000000006-00000000000000000002"
    assert reads.last_sequence_key(shard.db, "s-a") == "s-a-00000000000000000001"
    shard.open_session(1)
    assert reads.last_sequence_key(shard.db, "__oxia/session") is None
    assert reads.last_sequence_key(shard.db, "/x/s") is None
    shard.write([put("/x/s", sequence_key_delta=[2], partition_key="p")])
    assert reads.last_sequence_key(shard.db, "/x/s") == "/x/s-00000000000000000002"


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------


def test_read_notifications(shard: Shard) -> None:
    assert reads.read_notifications(shard.db, -1) == []
    assert reads.last_notification_offset(shard.db) == -1
    shard.write([put("a")], ts=100)  # 0
    shard.open_session(1)  # 1: no notifications (internal key only)
    shard.write([put("b"), put("a")], ts=300)  # 2
    shard.write(deletes=["missing"], ts=400)  # 3: nothing happened
    shard.applier.apply_noop(4)
    shard.write(deletes=["a"], ts=600)  # 5
    batches = reads.read_notifications(shard.db, -1)
    assert [b.offset for b in batches] == [0, 2, 5]
    assert [b.timestamp for b in batches] == [100, 300, 600]
    assert all(b.shard == 3 for b in batches)
    assert [(e.key, e.value.type) for e in batches[1].notifications] == [
        ("a", client_pb2.KEY_MODIFIED),
        ("b", client_pb2.KEY_CREATED),
    ]
    assert [b.offset for b in reads.read_notifications(shard.db, 0)] == [2, 5]
    assert [b.offset for b in reads.read_notifications(shard.db, 1)] == [2, 5]
    assert [b.offset for b in reads.read_notifications(shard.db, 2)] == [5]
    assert reads.read_notifications(shard.db, 5) == []
    assert [b.offset for b in reads.read_notifications(shard.db, -1, 2)] == [0, 2]
    assert reads.read_notifications(shard.db, -1, 0) == []
    assert reads.read_notifications(shard.db, (1 << 63) - 1) == []
    assert reads.last_notification_offset(shard.db) == 5


def test_read_notifications_bounded_by_bytes(shard: Shard) -> None:
    """A subscriber's read-ahead is bounded in bytes as well as in batches: past the first
    batch (always read, however large), no more than ``max_bytes`` of stored batches."""
    for i in range(10):
        shard.write([put(f"k{i}-{j}-" + "x" * 100) for j in range(10)], ts=100 + i)  # ~1.2 KB
    sizes = [b.ByteSize() for b in reads.read_notifications(shard.db, -1)]
    assert len(sizes) == 10
    three = sum(sizes[:3])
    got = reads.read_notifications(shard.db, -1, 100, max_bytes=three)
    assert [b.offset for b in got] == [0, 1, 2]
    assert [b.offset for b in reads.read_notifications(shard.db, -1, 100, max_bytes=1)] == [0]
    assert [b.offset for b in reads.read_notifications(shard.db, 7, 100, max_bytes=10**9)] == [
        8,
        9,
    ]


def test_trim_notifications(shard: Shard) -> None:
    assert reads.trim_notifications(shard.db, 10_000) == 0
    for i in range(10):
        shard.write([put(f"k{i}")], ts=1000 * (i + 1))  # offsets 0..9, ts 1000..10000
    assert reads.trim_notifications(shard.db, 999) == 0
    # A batch is trimmed once the cutoff is not before its timestamp (Oxia's rule).
    assert reads.trim_notifications(shard.db, 3000) == 3
    assert [b.offset for b in reads.read_notifications(shard.db, -1)] == list(range(3, 10))
    assert reads.trim_notifications(shard.db, 3000) == 0
    # Never past keep_after_offset.
    assert reads.trim_notifications(shard.db, 100_000, keep_after_offset=5) == 3
    assert [b.offset for b in reads.read_notifications(shard.db, -1)] == [6, 7, 8, 9]
    assert reads.trim_notifications(shard.db, 100_000, keep_after_offset=-1) == 0
    assert reads.last_notification_offset(shard.db) == 9
    assert reads.trim_notifications(shard.db, 100_000) == 4
    assert reads.read_notifications(shard.db, -1) == []
    assert reads.last_notification_offset(shard.db) == -1
    # The user data is untouched.
    assert len(shard.list("", "")) == 10


@pytest.mark.parametrize("cutoff", [0, 1500, 2000, 7777, 18_000, 40_000, 10**9])
def test_trim_notifications_with_gaps(tmp_path: Path, cutoff: int) -> None:
    s = Shard(tmp_path / "db", HIERARCHICAL)
    try:
        stamps = {}
        ts = 0
        for i in range(40):
            ts += 250 * (1 + i % 3)
            if i % 4 == 3:
                s.applier.apply_noop(s.applier.commit_offset + 1)  # no batch at this offset
                continue
            s.write([put(f"k{i}")], ts=ts)
            stamps[s.applier.commit_offset] = ts
        expired = [o for o, t in stamps.items() if t <= cutoff]
        assert reads.trim_notifications(s.db, cutoff) == len(expired)
        assert [b.offset for b in reads.read_notifications(s.db, -1)] == sorted(
            o for o in stamps if o not in expired
        )
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


def test_load_sessions(shard: Shard) -> None:
    assert reads.load_sessions(shard.db) == {}
    shard.open_session(1, timeout_ms=2000)
    shard.open_session(0x1F, timeout_ms=3000)
    shard.open_session(0xABC, timeout_ms=4000)
    shard.write([put("e1", session_id=1), put("e/2", session_id=0x1F)])
    shard.write([put("e3", session_id=0xABC, indexes=[("i", "x")])])
    shard.write(deletes=[keys.session_key(0xABC)])
    sessions = reads.load_sessions(shard.db)
    assert sorted(sessions) == [1, 0x1F]
    assert sessions[1] == storage_pb2.SessionMetadata(timeout_ms=2000, identity="c1")
    assert sessions[0x1F].timeout_ms == 3000


_index_names = st.sampled_from(["i", "i0", "ij", "h", ""])
_slashy = st.text(alphabet=st.sampled_from(["a", "/", "z", "\x02"]), max_size=4)


@settings(max_examples=30, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    records=st.lists(
        st.tuples(st.lists(st.tuples(_index_names, _slashy), max_size=3), st.booleans()),
        max_size=8,
    ),
    name=_index_names,
    positions=st.lists(st.tuples(_index_names, _slashy), max_size=4),
)
def test_index_walk_visits_exactly_the_entries_of_the_index(
    encoding: KeyEncoding,
    records: list[tuple[list[tuple[str, str]], bool]],
    name: str,
    positions: list[tuple[str, str]],
) -> None:
    """The walk over one index's entries (which jumps between the hierarchical depth groups)
    against a brute-force filter of every key in the DB."""
    with tempfile.TemporaryDirectory() as d:
        s = Shard(Path(d) / "db", encoding)
        try:
            s.open_session(1)
            s.write(
                [
                    put(f"p{i}/x", indexes=idx, **({"session_id": 1} if eph else {}))
                    for i, (idx, eph) in enumerate(records)
                ]
            )
            prefix = keys.index_search_key(name, "")
            every = [ek for ek, _ in s.db.scan(None, None)]
            want = [ek for ek in every if encoding.decode(ek).startswith(prefix)]
            entries = reads._IndexEntries(s.db, name)
            assert list(entries.forward(None)) == want
            assert list(entries.backward(None)) == want[::-1]
            for pos_name, pos_key in positions:
                pos = encoding.encode(keys.index_search_key(pos_name, pos_key))
                assert list(entries.forward(pos)) == [ek for ek in want if ek >= pos]
                assert list(entries.backward(pos)) == [ek for ek in want if ek < pos][::-1]
        finally:
            s.close()
