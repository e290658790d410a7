"""The leader's replication frames, built natively around the WAL's stored entries
(``Wal.read_appends``), are byte for byte the ``Append`` messages the Python path built before
(``replication_pb2.Append(..., entry=LogEntry(...)).SerializeToString()`` per entry read back),
across segment boundaries, read-only segments, empty values, term and offset 0, negative commit
offsets and large numbers; and they decode to the entries the WAL holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia._native import EntryNotFound, Wal
from pyxia.proto import replication_pb2

INT63 = 2**63 - 1

entries_st = st.lists(
    st.tuples(
        st.integers(0, 2**40),  # term
        st.binary(max_size=300),  # value
        st.one_of(st.just(0), st.integers(0, 2**64 - 1)),  # timestamp
    ),
    min_size=1,
    max_size=40,
)


def old_frames(wal: Wal, start: int, term: int, commit: int, max_entries: int) -> list[bytes]:
    """What the follower cursor sent before: each entry read back, rebuilt and serialized."""
    return [
        replication_pb2.Append(
            term=term,
            entry=replication_pb2.LogEntry(
                term=e.term, offset=e.offset, value=e.value, timestamp=e.timestamp
            ),
            commit_offset=commit,
            previous_entry_crc=e.previous_crc,
            cumulative_acks_supported=True,
        ).SerializeToString()
        for e in wal.read_batch(start, max_entries=max_entries)
    ]


@settings(max_examples=150, deadline=None)
@given(
    first=st.one_of(st.just(0), st.integers(0, 2**40)),
    entries=entries_st,
    term=st.one_of(st.just(0), st.integers(0, INT63)),
    commit=st.one_of(st.just(-1), st.just(0), st.integers(-1, INT63)),
    skip=st.integers(0, 45),
    max_entries=st.integers(1, 50),
    seed_crc=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_frames_are_byte_identical_to_the_old_path(
    first: int,
    entries: list[tuple[int, bytes, int]],
    term: int,
    commit: int,
    skip: int,
    max_entries: int,
    seed_crc: int | None,
) -> None:
    # Tiny segments: most reads cross segment boundaries and read-only segments.
    with (
        tempfile.TemporaryDirectory() as d,
        Wal(d, segment_size=4096, min_segment_size=4096) as wal,
    ):
        for i, (t, value, ts) in enumerate(entries):
            wal.append(t, first + i, value, ts, seed_crc if i == 0 else None)
        wal.sync()
        start = first + min(skip, len(entries) - 1)
        frames, value_bytes = wal.read_appends(start, term, commit, max_entries=max_entries)
        old = old_frames(wal, start, term, commit, max_entries)
        assert frames == old
        assert value_bytes == sum(
            len(e.value) for e in wal.read_batch(start, max_entries=max_entries)
        )
        for k, frame in enumerate(frames):
            a = replication_pb2.Append.FromString(frame)
            t, value, ts = entries[start - first + k]
            assert (a.entry.term, a.entry.offset, a.entry.value, a.entry.timestamp) == (
                t,
                start + k,
                value,
                ts,
            )
            assert a.term == term and a.commit_offset == commit
            assert a.previous_entry_crc == wal.read(start + k).previous_crc


def test_frames_honour_the_byte_limit_and_the_end_of_the_log(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096, min_segment_size=4096) as wal:
        for i in range(10):
            wal.append(1, i, b"x" * 1000, 5)
        frames, value_bytes = wal.read_appends(2, 1, 1, max_entries=100, max_bytes=2500)
        assert len(frames) == 3 and value_bytes == 3000  # stops once the limit is reached
        frames, _ = wal.read_appends(9, 1, 1)
        assert len(frames) == 1
        frames, value_bytes = wal.read_appends(10, 1, 1)
        assert frames == [] and value_bytes == 0
        wal.sync()
        wal.trim(5, 9)
        assert wal.first_offset > 0
        with pytest.raises(EntryNotFound):
            wal.read_appends(0, 1, 1)


@settings(max_examples=100, deadline=None)
@given(first=st.one_of(st.just(0), st.integers(0, 2**40)), entries=entries_st)
def test_a_follower_stores_what_the_leader_stores(
    first: int, entries: list[tuple[int, bytes, int]]
) -> None:
    """A follower appending the received frames as they are (``append_replicated``) ends up
    with the leader's log, CRC chain included, whether the frames came from the native framer
    or from the old Python path."""
    with (
        tempfile.TemporaryDirectory() as d,
        Wal(f"{d}/leader") as leader,
        Wal(f"{d}/native") as native,
        Wal(f"{d}/python") as python,
    ):
        for i, (t, value, ts) in enumerate(entries):
            leader.append(t, first + i, value, ts)
        term = max(t for t, _, _ in entries)
        frames, _ = leader.read_appends(first, term, first, max_entries=len(entries))
        old = old_frames(leader, first, term, first, len(entries))
        for k, (t, value, _) in enumerate(entries):
            assert native.append_replicated(frames[k], t, first + k) == len(value)
            assert python.append_replicated(old[k], t, first + k) == len(value)
        want = [(e.term, e.offset, e.value, e.timestamp, e.crc) for e in leader.reader(first)]
        for follower in (native, python):
            got = [(e.term, e.offset, e.value, e.timestamp, e.crc) for e in follower.reader(first)]
            assert got == want
            assert follower.last_crc == leader.last_crc


def test_a_follower_refuses_a_frame_it_did_not_check(tmp_path: Path) -> None:
    """The entry appended is the one the caller checked, or nothing is appended."""
    entry = replication_pb2.LogEntry(term=2, offset=0, value=b"v", timestamp=7)
    frame = replication_pb2.Append(term=2, entry=entry).SerializeToString()
    # Protobuf merges a second entry field into the first; the WAL refuses such a frame.
    merged = (
        frame + replication_pb2.Append(entry=replication_pb2.LogEntry(offset=5)).SerializeToString()
    )
    assert replication_pb2.Append.FromString(merged).entry.offset == 5
    heartbeat = replication_pb2.Append(term=2, heartbeat=3).SerializeToString()
    with Wal(tmp_path) as wal:
        for bad, term, offset in (
            (merged, 2, 5),
            (heartbeat, 2, 0),
            (frame[:-1], 2, 0),
            (frame, 2, 1),  # not the entry the caller checked
            (frame, 1, 0),
        ):
            with pytest.raises(ValueError, match=r"Append|entry"):
                wal.append_replicated(bad, term, offset)
        assert wal.last_offset == -1
        assert wal.append_replicated(frame, 2, 0) == 1
        assert wal.read(0).value == b"v"
