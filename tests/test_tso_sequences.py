"""The pure rules of dense sequences (pyxia.tso.sequences): request checks, block planning
(contiguous, disjoint, gap-free per key), refusals that change nothing (overflow, key cap),
the key count, the storage encoding — properties with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.errors import InvalidArgument
from pyxia.tso.errors import SeqKeysExhausted, SeqOverflow, TsoStateCorrupt
from pyxia.tso.sequences import (
    MAX_SEQ_KEY_BYTES,
    SEQ_COUNTER_PREFIX,
    U64_MAX,
    SeqEntry,
    SequenceTable,
    check_entries,
    check_key,
    counter_key,
    decode_counter,
    encode_counter,
)


def seeded(max_keys: int = 100, stored: dict[str, int] | None = None) -> SequenceTable:
    t = SequenceTable(max_keys)
    t.seed_key_count(len(stored or {}))
    for k, v in (stored or {}).items():
        t.seed(k, v)
    return t


def plan(t: SequenceTable, *entries: tuple[str, int]) -> tuple[int, ...]:
    es = [SeqEntry(k, n) for k, n in entries]
    for e in es:
        t.seed(e.key, None)  # absent unless seeded before (seed never overwrites)
    p = t.plan(es)
    t.apply(p)
    return p.starts


def test_key_bounds_are_in_utf8_bytes() -> None:
    check_key("a" * MAX_SEQ_KEY_BYTES)
    check_key("é" * (MAX_SEQ_KEY_BYTES // 2))
    for bad in ("", "a" * (MAX_SEQ_KEY_BYTES + 1), "é" * (MAX_SEQ_KEY_BYTES // 2 + 1)):
        with pytest.raises(InvalidArgument):
            check_key(bad)


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [SeqEntry("k", 0)],
        [SeqEntry("k", 11)],
        [SeqEntry("k", 1), SeqEntry("k", 1)],
        [SeqEntry(f"k{i}", 1) for i in range(4)],
    ],
)
def test_bad_requests(entries: list[SeqEntry]) -> None:
    with pytest.raises(InvalidArgument):
        check_entries(entries, max_count=10, max_batch_keys=3)


def test_blocks_start_at_zero_and_follow_each_other() -> None:
    t = seeded()
    assert plan(t, ("a", 3)) == (0,)
    assert plan(t, ("a", 2), ("b", 4)) == (3, 0)
    assert plan(t, ("b", 1)) == (4,)
    assert t.counter("a") == 5 and t.counter("b") == 5 and t.key_count == 2


def test_stored_counters_are_continued() -> None:
    t = seeded(stored={"a": 41})
    assert plan(t, ("a", 1)) == (41,)


def test_overflow_changes_nothing() -> None:
    t = seeded(stored={"big": U64_MAX - 2})
    with pytest.raises(SeqOverflow):
        plan(t, ("small", 1), ("big", 3))
    assert t.counter("big") == U64_MAX - 2 and t.key_count == 1
    assert plan(t, ("big", 2)) == (U64_MAX - 2,)
    assert t.counter("big") == U64_MAX


def test_the_key_cap_counts_new_keys_only() -> None:
    t = seeded(max_keys=2, stored={"a": 1})
    assert plan(t, ("b", 1)) == (0,)
    with pytest.raises(SeqKeysExhausted):
        plan(t, ("a", 1), ("c", 1))
    assert t.counter("a") == 1 and t.key_count == 2  # nothing moved
    assert plan(t, ("a", 1), ("b", 1)) == (1, 1)


def test_encoding() -> None:
    assert counter_key("a/b") == SEQ_COUNTER_PREFIX + "612f62"
    assert decode_counter(encode_counter(U64_MAX)) == U64_MAX
    for bad in (b"", b"-1", b"1e3", str(U64_MAX + 1).encode(), b"12 "):
        with pytest.raises(TsoStateCorrupt):
            decode_counter(bad)


keys_st = st.sampled_from(["a", "b", "c", "d", "é"])


@given(
    st.lists(
        st.lists(st.tuples(keys_st, st.integers(1, 50)), min_size=1, max_size=4).map(
            lambda es: list(dict(es).items())  # distinct keys per request
        ),
        max_size=40,
    ),
    st.integers(1, 5),
)
def test_blocks_of_a_key_are_contiguous_disjoint_and_refusals_change_nothing(
    requests: list[list[tuple[str, int]]], max_keys: int
) -> None:
    t = seeded(max_keys=max_keys)
    given_out: dict[str, list[tuple[int, int]]] = {}
    for req in requests:
        before = {k: t.counter(k) for k, _ in req}
        count_before = t.key_count
        try:
            starts = plan(t, *req)
        except SeqKeysExhausted:
            assert {k: t.counter(k) for k, _ in req} == before and t.key_count == count_before
            continue
        for (k, n), s in zip(req, starts, strict=True):
            given_out.setdefault(k, []).append((s, s + n))
        assert t.key_count is not None and t.key_count <= max_keys
    for spans in given_out.values():
        assert spans[0][0] == 0
        for (_, e0), (s1, _) in itertools.pairwise(spans):
            assert s1 == e0  # contiguous, in plan order: gap-free and never overlapping
