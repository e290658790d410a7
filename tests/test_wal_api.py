"""The native WAL's Python API: offsets, reads, readers, errors, lifecycle."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pyxia import _native
from pyxia._native import (
    CrcMismatch,
    EntryNotFound,
    InvalidNextOffset,
    Wal,
    WalClosed,
    WalError,
)


def fill(wal: Wal, start: int, end: int, term: int = 1) -> None:
    wal.append_batch([(term, o, b"v%d" % o, 1000 + o) for o in range(start, end)])


def test_append_read_and_offsets(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        assert (wal.first_offset, wal.last_offset, wal.last_synced_offset) == (-1, -1, -1)
        crc = wal.append(3, 0, b"first", 42)
        assert wal.last_crc == crc
        fill(wal, 1, 300, term=4)
        assert wal.last_offset == 299
        assert wal.first_offset == 0
        e = wal.read(0)
        assert (e.term, e.offset, e.value, e.timestamp, e.previous_crc) == (3, 0, b"first", 42, 0)
        assert e.crc == crc
        assert wal.read(299).value == b"v299"
        wal.sync()
        assert wal.last_synced_offset == 299
        with pytest.raises(EntryNotFound):
            wal.read(300)
        with pytest.raises(EntryNotFound):
            wal.read(-5)
    assert wal.closed


def test_errors_are_typed(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 10, 12)
    with pytest.raises(InvalidNextOffset, match="expected 12, got 14"):
        wal.append(1, 14, b"x", 0)
    with pytest.raises(CrcMismatch):
        wal.append(1, 12, b"x", 0, previous_crc=wal.last_crc ^ 1)
    assert issubclass(InvalidNextOffset, WalError)
    with pytest.raises(ValueError, match="tuple"):
        wal.append_batch([(1, 12, b"x")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        wal.append(1, 12, "not bytes", 0)  # type: ignore[arg-type]
    wal.close()
    wal.close()  # idempotent
    for op in (
        lambda: wal.append(1, 12, b"x", 0),
        lambda: wal.read(10),
        wal.sync,
        lambda: wal.truncate(10),
    ):
        with pytest.raises(WalClosed):
            op()


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment size"):
        Wal(tmp_path, segment_size=10)
    with pytest.raises(ValueError, match="timeout"):
        Wal(tmp_path).wait_synced(0, timeout=-1)


def test_readers(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        fill(wal, 5, 205)
        r = wal.reader(100)
        assert [e.offset for e in r] == list(range(100, 205))
        fill(wal, 205, 207)
        assert [e.offset for e in r] == [205, 206]  # picks up new entries
        assert r.next_offset == 207
        assert [e.offset for e in wal.reverse_reader()] == list(range(206, 4, -1))
        batch = wal.read_batch(50, max_entries=10)
        assert [e.offset for e in batch] == list(range(50, 60))
        assert len(wal.read_batch(50, max_entries=100, max_bytes=1)) == 1
        assert wal.read_batch(500) == []


def test_empty_log_starts_anywhere_with_seeded_crc(tmp_path: Path) -> None:
    with Wal(tmp_path) as wal:
        wal.append(7, 1_000_000, b"after-snapshot", 0, previous_crc=0xDEADBEEF)
        assert wal.read(1_000_000).previous_crc == 0xDEADBEEF
        assert wal.first_offset == 1_000_000
    with Wal(tmp_path, commit_offset=1_000_000) as wal:
        assert wal.read(1_000_000).previous_crc == 0xDEADBEEF


def test_truncate_clear_trim(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        fill(wal, 0, 500)
        wal.sync()
        assert wal.truncate(1000) == 499  # nothing after: no-op
        assert wal.truncate(250) == 250
        assert wal.last_offset == 250
        with pytest.raises(EntryNotFound):
            wal.read(251)
        fill(wal, 251, 260, term=2)
        assert wal.read(251).term == 2
        first = wal.trim(200, commit_offset=259)
        assert 0 < first <= 200
        with pytest.raises(EntryNotFound):
            wal.read(first - 1)
        assert wal.trim(10_000, commit_offset=-1) == first  # never past commit
        assert wal.truncate(-1) == -1
        assert (wal.first_offset, wal.last_offset) == (-1, -1)
        fill(wal, 77, 80)
        wal.clear()
        assert wal.last_offset == -1
        assert not list(tmp_path.glob("*.txnx"))


def test_trim_expired_by_entry_timestamp(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096, retention_ms=1000) as wal:
        wal.append_batch([(1, o, b"x" * 80, 5_000) for o in range(100)])
        wal.append_batch([(1, o, b"x" * 80, 60_000) for o in range(100, 200)])
        wal.sync()
        assert wal.trim_expired(commit_offset=199, now_ms=5_500) == 0
        first = wal.trim_expired(commit_offset=199, now_ms=30_000)
        assert 0 < first <= 100
        assert wal.read(199).timestamp == 60_000


def test_segment_files_and_indexes(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        fill(wal, 0, 400)
    segs = sorted(tmp_path.glob("*.txnx"))
    assert len(segs) > 3
    assert segs[0].name == "00000000000000000000.txnx"
    for s in segs:
        assert s.with_suffix(".idxx").exists()
    records, error = _native.scan_segment(segs[0])
    assert error is None
    assert [r[1] for r in records] == list(range(len(records)))


def test_wait_synced_timeout_and_concurrent_waiters(tmp_path: Path) -> None:
    with Wal(tmp_path) as wal:
        assert wal.wait_synced(-1, timeout=0)  # nothing to wait for
        wal.append(1, 0, b"a", 0)
        # nobody asked for a sync yet, so nothing becomes durable
        assert wal.wait_synced(0, timeout=0.05) is False  # sync is demand-driven
        results: list[bool] = []

        def waiter() -> None:
            results.append(wal.wait_synced(0, timeout=10))

        threads = [threading.Thread(target=waiter) for _ in range(8)]
        for t in threads:
            t.start()
        wal.request_sync()
        for t in threads:
            t.join(10)
        assert results == [True] * 8
        rounds, samples = wal.sync_stats()
        assert rounds >= 1 and len(samples) >= 1


def test_close_wakes_blocked_waiters(tmp_path: Path) -> None:
    wal = Wal(tmp_path, sync_data=False)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            wal.wait_synced(10**9, timeout=30)
        except WalError as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    wal.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], WalClosed)


def test_delete_removes_directory(tmp_path: Path) -> None:
    d = tmp_path / "shard"
    wal = Wal(d)
    fill(wal, 0, 3)
    wal.delete()
    assert not d.exists()


def test_repr_and_entry_repr(tmp_path: Path) -> None:
    with Wal(tmp_path) as wal:
        wal.append(1, 0, b"abc", 0)
        assert "last_offset=0" in repr(wal)
        assert "offset=0" in repr(wal.read(0))


def test_a_new_log_starts_with_a_small_segment_and_grows_with_its_write_rate(
    tmp_path: Path,
) -> None:
    # Defaults: segments of at most 64 MiB, the first of 1 MiB (a thousand quiet shards must
    # not reserve 64 GiB).
    with Wal(tmp_path) as wal:
        assert (wal.segment_size, wal.min_segment_size) == (64 << 20, 1 << 20)
        fill(wal, 0, 10)
        wal.sync()
        assert [s[2] for s in wal.segments()] == [1 << 20]
    with Wal(tmp_path / "busy", segment_size=1 << 20, min_segment_size=64 << 10) as wal:
        value = b"x" * 1000
        offset = 0
        while len(wal.segments()) < 2:
            wal.append_batch([(1, o, value, 0) for o in range(offset, offset + 10)])
            offset += 10
        # 64 KiB filled within a minute: the next segment is sized for a minute of that rate.
        assert [s[2] for s in wal.segments()] == [64 << 10, 1 << 20]
    with pytest.raises(ValueError, match="minimum segment size"):
        Wal(tmp_path / "bad", min_segment_size=100)
    # Capped at the segment size: a log of small fixed segments stays one.
    with Wal(tmp_path / "fixed", segment_size=4096) as wal:
        assert wal.min_segment_size == 4096
