"""Recovery from torn and corrupt tails: the valid prefix above the commit
offset, a clear error (naming file and byte) at or below it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyxia import _native
from pyxia._native import CorruptedLog, Wal

N = 30


def value(o: int) -> bytes:
    return (b"entry-%d-" % o) * 5


def build(d: Path) -> tuple[Path, list[int]]:
    """One segment with N entries; returns its path and each record's end."""
    with Wal(d, segment_size=1 << 16) as wal:
        wal.append_batch([(2, o, value(o), 7_000 + o) for o in range(N)])
        wal.sync()
    seg = d / "00000000000000000000.txnx"
    records, error = _native.scan_segment(seg)
    assert error is None and len(records) == N
    ends = [pos + 12 + size for pos, _o, _t, size, _c, _p, _ts in records]
    return seg, ends


def intact_prefix(pristine: bytes, damaged: bytes, ends: list[int]) -> int:
    """How many leading records are byte-identical after the damage."""
    n = 0
    start = 0
    for end in ends:
        if pristine[start:end] != damaged[start:end]:
            break
        n += 1
        start = end
    return n


def check_reopen(d: Path, seg: Path, damaged: bytes, ends: list[int], pristine: bytes) -> None:
    seg.write_bytes(damaged)
    (d / "00000000000000000000.idxx").unlink(missing_ok=True)
    valid = intact_prefix(pristine, damaged, ends)
    if valid < N:
        # Committed entries damaged: a clear error, the file left untouched.
        with pytest.raises(CorruptedLog, match=r"00000000000000000000\.txnx|committed"):
            Wal(d, segment_size=1 << 16, commit_offset=N - 1)
        assert seg.read_bytes() == damaged
    # Commit offset below the damage: exactly the valid prefix survives.
    with Wal(d, segment_size=1 << 16, commit_offset=valid - 1) as wal:
        assert wal.last_offset == valid - 1
        for o in range(valid):
            e = wal.read(o)
            assert (e.term, e.value, e.timestamp) == (2, value(o), 7_000 + o)
        # and the log goes on from there, cleanly
        wal.append_batch([(3, o, b"new-%d" % o, 0) for o in range(valid, valid + 5)])
        wal.sync()
    with Wal(d, segment_size=1 << 16, commit_offset=valid + 4) as wal:
        assert wal.last_offset == valid + 4
        assert wal.read(valid + 4).value == b"new-%d" % (valid + 4)


def test_torn_tail_zeroed_at_every_byte(tmp_path: Path) -> None:
    """A torn write: the bytes after some position never reached the disk."""
    seg, ends = build(tmp_path)
    pristine = seg.read_bytes()
    backup = tmp_path.parent / (tmp_path.name + ".bak")
    shutil.copytree(tmp_path, backup)
    for cut in range(ends[-4], ends[-1]):
        damaged = pristine[:cut] + bytes(len(pristine) - cut)
        check_reopen(tmp_path, seg, damaged, ends, pristine)
        shutil.rmtree(tmp_path)
        shutil.copytree(backup, tmp_path)


def test_file_cut_short_at_every_byte(tmp_path: Path) -> None:
    """The segment file itself shortened in the middle of the last records."""
    seg, ends = build(tmp_path)
    pristine = seg.read_bytes()
    backup = tmp_path.parent / (tmp_path.name + ".bak2")
    shutil.copytree(tmp_path, backup)
    for cut in range(ends[-3] - 13, ends[-1] + 1, 3):
        check_reopen(tmp_path, seg, pristine[:cut], ends, pristine)
        shutil.rmtree(tmp_path)
        shutil.copytree(backup, tmp_path)


@pytest.mark.parametrize(
    ("field", "delta"),
    [
        ("len", 0),
        ("len", 3),
        ("previous_crc", 4),
        ("previous_crc", 7),
        ("crc", 8),
        ("crc", 11),
        ("payload", 12),
        ("payload", 40),
    ],
)
def test_flipped_header_field(tmp_path: Path, field: str, delta: int) -> None:
    seg, ends = build(tmp_path)
    pristine = seg.read_bytes()
    victim = N - 3
    pos = ends[victim - 1] + delta
    damaged = bytearray(pristine)
    damaged[pos] ^= 0xA5
    seg.write_bytes(bytes(damaged))
    with pytest.raises(CorruptedLog) as err:
        Wal(tmp_path, segment_size=1 << 16, commit_offset=N - 1)
    assert f"byte {ends[victim - 1]}" in str(err.value), field
    assert "00000000000000000000.txnx" in str(err.value)
    check_reopen(tmp_path, seg, bytes(damaged), ends, pristine)


def test_stale_and_corrupt_index_files_are_rebuilt(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        wal.append_batch([(1, o, value(o), 0) for o in range(300)])
    idx = sorted(tmp_path.glob("*.idxx"))
    assert len(idx) >= 3
    idx[0].write_bytes(b"")  # empty
    idx[1].write_bytes(idx[1].read_bytes()[:-4])  # stale (and bad CRC)
    raw = bytearray(idx[2].read_bytes())
    raw[-1] ^= 1
    idx[2].write_bytes(bytes(raw))  # corrupt
    with Wal(tmp_path, segment_size=4096, commit_offset=299) as wal:
        assert [e.offset for e in wal.reader(0)] == list(range(300))
        assert all(e.value == value(e.offset) for e in wal.read_batch(0, 300))


def test_lost_rolled_segment_content(tmp_path: Path) -> None:
    """Power loss took the newest segment's content: nothing acknowledged
    lived there, so it is dropped and the log ends before it."""
    with Wal(tmp_path, segment_size=4096) as wal:
        wal.append_batch([(1, o, value(o), 0) for o in range(200)])
        wal.sync()
    segs = sorted(tmp_path.glob("*.txnx"))
    last = segs[-1]
    base = int(last.stem)
    last.write_bytes(bytes(last.stat().st_size))
    last.with_suffix(".idxx").unlink(missing_ok=True)
    with pytest.raises(CorruptedLog):
        Wal(tmp_path, segment_size=4096, commit_offset=199)
    with Wal(tmp_path, segment_size=4096, commit_offset=base - 1) as wal:
        assert wal.last_offset == base - 1
        assert not last.exists()


def test_scan_tool_reports_damage(tmp_path: Path) -> None:
    seg, ends = build(tmp_path)
    raw = bytearray(seg.read_bytes())
    raw[ends[10] + 20] ^= 0xFF
    seg.write_bytes(bytes(raw))
    records, error = _native.scan_segment(seg)
    assert len(records) == 11
    assert error is not None and error.startswith(f"byte {ends[10]}:")
