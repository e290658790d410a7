"""A split child's cut (pyxia.storage.split): what each child keeps of its parent's data, with
both key encodings, and that the two children together hold exactly the parent's records with
the versions the parent gave them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.common import keys
from pyxia.common.sharding import MAX_HASH, routing_hash
from pyxia.proto import client_pb2
from pyxia.storage.split import SPLIT_FILTER_KEY, SplitFilter, read_filter, write_filter
from pyxia.storage.steps import run_steps
from test_storage_apply import ENCODINGS, Shard, put

MID = MAX_HASH // 2
CHILD = 9
LEFT = SplitFilter(0, MID, 3)
RIGHT = SplitFilter(MID + 1, MAX_HASH, 3)


def keys_on(flt: SplitFilter, n: int, prefix: str = "k") -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        k = f"{prefix}{i}"
        if flt.owns(routing_hash(k)):
            out.append(k)
        i += 1
    return out


def cut(shard: Shard, flt: SplitFilter) -> int:
    write_filter(shard.db, flt)
    from pyxia.storage.split import cut_steps

    return run_steps(cut_steps(shard.db, flt, CHILD))


@pytest.fixture(params=ENCODINGS, ids=lambda e: e.name)
def shard(request: pytest.FixtureRequest, tmp_path: Path) -> Shard:
    return Shard(tmp_path / "db", request.param)


def test_filter_record_round_trips_and_refuses_bad_ranges(shard: Shard) -> None:
    assert read_filter(shard.db) is None
    write_filter(shard.db, LEFT)
    assert read_filter(shard.db) == LEFT
    with pytest.raises(ValueError, match="invalid split hash range"):
        SplitFilter(5, 4, 1)
    with pytest.raises(ValueError, match="invalid split hash range"):
        SplitFilter(0, MAX_HASH + 1, 1)
    with pytest.raises(ValueError, match="invalid parent term"):
        SplitFilter(0, 1, -1)
    shard.close()


def test_cut_keeps_the_range_with_the_parents_versions(shard: Shard) -> None:
    left, right = keys_on(LEFT, 20, "l"), keys_on(RIGHT, 20, "r")
    versions = {k: shard.ok_put(k).version.version_id for k in left + right}
    last_version = shard.applier.last_version_id
    deleted = cut(shard, LEFT)
    assert deleted >= len(right)
    assert sorted(shard.user_keys()) == sorted(left)
    for k in left:
        e = shard.entry(k)
        assert e is not None and e.version_id == versions[k]
    # The shard-wide counters are the parent's: the child goes on from them.
    assert shard.db.last_version_id() == last_version
    assert read_filter(shard.db) is None
    assert shard.entry(SPLIT_FILTER_KEY) is None
    shard.close()


def test_a_record_follows_its_partition_key(shard: Shard) -> None:
    pk_right = keys_on(RIGHT, 1, "pk")[0]
    key_left = keys_on(LEFT, 1, "x")[0]
    shard.ok_put(key_left, partition_key=pk_right)  # routed right although its key hashes left
    cut(shard, LEFT)
    assert shard.user_keys() == []
    shard.close()


def test_sessions_shadow_keys_and_index_entries(shard: Shard) -> None:
    sid = shard.next_offset
    shard.open_session(sid)
    (eph_left,) = keys_on(LEFT, 1, "e")
    (eph_right,) = keys_on(RIGHT, 1, "e")
    shard.ok_put(eph_left, session_id=sid)
    shard.ok_put(eph_right, session_id=sid)
    (idx_left,) = keys_on(LEFT, 1, "i")
    (idx_right,) = keys_on(RIGHT, 1, "i")
    for k in (idx_left, idx_right):
        shard.ok_put(k, indexes=[("by", "s")])
    cut(shard, LEFT)
    # The session record stays on both sides; the shadow key only where the record stayed.
    assert shard.entry(keys.session_key(sid)) is not None
    assert shard.internal_keys(keys.session_key(sid) + "/") == [
        keys.session_shadow_key(sid, eph_left)
    ]
    assert shard.internal_keys(keys.INDEX_PREFIX) == [keys.index_entry_key("by", "s", idx_left)]
    shard.close()


def test_notifications_are_cut_per_key_and_ranges_stay(shard: Shard) -> None:
    (a,) = keys_on(LEFT, 1, "n")
    (b,) = keys_on(RIGHT, 1, "n")
    both = shard.next_offset
    shard.write([put(a), put(b)])
    right_only = shard.next_offset
    shard.write([put(b)])
    ranged = shard.next_offset
    shard.write(ranges=[client_pb2.DeleteRangeRequest(start_inclusive="zz", end_exclusive="zzz")])
    cut(shard, LEFT)
    assert [k for k, _ in shard.notes(both)] == [a]
    batch = shard.batch(both)
    assert batch is not None and batch.shard == CHILD  # kept batches name the child
    assert shard.batch(right_only) is None
    assert shard.notes(ranged) == [("zz", client_pb2.KEY_RANGE_DELETED)]
    shard.close()


def test_cut_is_idempotent_after_a_crash_halfway(shard: Shard) -> None:
    from pyxia.storage.split import cut_steps

    left, right = keys_on(LEFT, 30, "l"), keys_on(RIGHT, 3000, "r")
    for i in range(0, len(right), 500):
        shard.write([put(k) for k in right[i : i + 500]])
    shard.write([put(k) for k in left])
    write_filter(shard.db, LEFT)
    steps = cut_steps(shard.db, LEFT, CHILD)
    next(steps)
    next(steps)  # a chunk or more written, then the process "dies"
    steps.close()
    assert read_filter(shard.db) == LEFT  # still to do
    shard.reopen()
    run_steps(cut_steps(shard.db, read_filter(shard.db) or LEFT, CHILD))
    assert sorted(shard.user_keys()) == sorted(left)
    shard.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=8), st.one_of(st.none(), st.text(max_size=4))),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=0, max_value=MAX_HASH - 1),
)
def test_the_two_children_partition_the_parent(
    records: list[tuple[str, str | None]], split_point: int
) -> None:
    """Property: cut at any split point, the left and right copies together hold every
    record of the parent exactly once, each with the parent's version, on the side its
    routing hash (partition key first) names."""
    left, right = SplitFilter(0, split_point, 1), SplitFilter(split_point + 1, MAX_HASH, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for enc in ENCODINGS:
            parent: dict[str, tuple[int, int]] = {}
            shards = [Shard(Path(tmp) / f"{enc.name}-{i}", enc) for i in range(2)]
            for key, pk in records:
                if keys.is_internal_key(key):
                    continue
                kw = {} if pk is None else {"partition_key": pk}
                for s in shards:
                    v = s.ok_put(key, **kw).version.version_id
                parent[key] = (v, routing_hash(key, pk))
            cut(shards[0], left)
            cut(shards[1], right)
            held = {}
            for s, flt in zip(shards, (left, right), strict=True):
                for k in s.user_keys():
                    assert k not in held
                    e = s.entry(k)
                    assert e is not None
                    held[k] = e.version_id
                    assert flt.owns(parent[k][1])
                s.close()
            assert held == {k: v for k, (v, _) in parent.items()}
