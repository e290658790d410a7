"""Read-only inspection of write-ahead log directories, for operators and startup messages.

A WAL dir holds one log per shard replica: ``<wal-dir>/<namespace>/shard-<id>/`` with segment
files ``<base offset>.txnx`` (records) and ``.idxx`` (index). Nothing here opens a log through
:class:`pyxia._native.Wal` (whose recovery repairs a torn tail in place): segments are read as
files with :func:`pyxia._native.scan_segment`, so inspecting a damaged log, or the log of a
running node, changes nothing.

:func:`scan_shard` walks a shard's segments in order and finds where its valid prefix ends:
at the first damaged record, at a segment that does not continue the previous one's offsets,
or at a broken CRC chain between segments. :func:`read_entries` then reads entries of that
prefix (a record is ``u32 len | u32 previous_crc | u32 crc | payload``, the payload a
``replication.LogEntry``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyxia import _native
from pyxia.proto import replication_pb2

HEADER_LEN = 12
_SHARD = re.compile(r"^shard-(\d+)$")
_SEGMENT = re.compile(r"^(\d{20})\.txnx$")


@dataclass(frozen=True)
class Record:
    position: int
    offset: int
    term: int
    size: int
    crc: int
    previous_crc: int
    timestamp: int


@dataclass
class SegmentScan:
    path: Path
    base: int
    records: list[Record]
    error: str | None  # damage inside the segment
    has_index: bool

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class ShardScan:
    """A shard's log as found on disk, and where its valid prefix ends."""

    path: Path
    segments: list[SegmentScan] = field(default_factory=list)
    # The first damage: (segment file, description); None when the whole log is valid.
    damage: tuple[Path, str] | None = None
    last_valid: int = -1  # offset of the last entry of the valid prefix, -1 if none

    @property
    def first_offset(self) -> int:
        for s in self.segments:
            if s.records:
                return s.records[0].offset
        return -1

    @property
    def last_offset(self) -> int:
        """The last entry on disk, valid or not (past a damage, segments may still hold some)."""
        for s in reversed(self.segments):
            if s.records:
                return s.records[-1].offset
        return -1

    @property
    def entries(self) -> int:
        return sum(len(s.records) for s in self.segments)


def shard_log_dir(wal_dir: Path, namespace: str, shard: int) -> Path:
    return wal_dir / namespace / f"shard-{shard}"


def list_shards(wal_dir: Path) -> list[tuple[str, int, Path]]:
    """The (namespace, shard, path) of every shard log in a top-level WAL dir."""
    out: list[tuple[str, int, Path]] = []
    try:
        namespaces = sorted(os.listdir(wal_dir))
    except OSError:
        return out
    for ns in namespaces:
        ns_dir = wal_dir / ns
        if ns.startswith(".") or not ns_dir.is_dir():
            continue
        for child in os.listdir(ns_dir):
            m = _SHARD.match(child)
            if m is not None and (ns_dir / child).is_dir():
                out.append((ns, int(m.group(1)), ns_dir / child))
    return sorted(out, key=lambda t: (t[0], t[1]))


def segment_files(path: Path) -> list[tuple[int, Path]]:
    out = []
    for name in os.listdir(path):
        m = _SEGMENT.match(name)
        if m is not None:
            out.append((int(m.group(1)), path / name))
    return sorted(out)


def scan_shard(path: Path) -> ShardScan:
    """Scans every segment of the shard log in ``path`` (read-only)."""
    out = ShardScan(path)
    expected_offset: int | None = None
    previous_crc: int | None = None
    for base, seg in segment_files(path):
        raw, error = _native.scan_segment(seg)
        records = [Record(*r) for r in raw]
        s = SegmentScan(seg, base, records, error, seg.with_suffix(".idxx").exists())
        out.segments.append(s)
        if out.damage is not None:
            continue
        if records and expected_offset is not None and records[0].offset != expected_offset:
            out.damage = (seg, f"gap in the log: expected entry {expected_offset} here")
            continue
        if records and previous_crc is not None and records[0].previous_crc != previous_crc:
            out.damage = (
                seg,
                f"the CRC chain breaks at entry {records[0].offset} (it does not continue "
                "the previous segment)",
            )
            continue
        if records:
            out.last_valid = records[-1].offset
            expected_offset = records[-1].offset + 1
            previous_crc = records[-1].crc
        if error is not None:
            out.damage = (seg, error)
    return out


def read_entries(
    scan: ShardScan, first: int | None = None, last: int | None = None
) -> Iterator[replication_pb2.LogEntry]:
    """The entries of the valid prefix between ``first`` and ``last`` (inclusive)."""
    for s in scan.segments:
        if not s.records or s.records[0].offset > scan.last_valid:
            return
        if last is not None and s.records[0].offset > last:
            return
        if first is not None and s.records[-1].offset < first:
            continue
        data = s.path.read_bytes()
        for r in s.records:
            if r.offset > scan.last_valid or (last is not None and r.offset > last):
                return
            if first is not None and r.offset < first:
                continue
            start = r.position + HEADER_LEN
            yield replication_pb2.LogEntry.FromString(data[start : start + r.size])


def repair_hint(wal_dir: Path, namespace: str, shard: int) -> str:
    """How to inspect a damaged shard log, and (when its valid prefix is known) where to cut
    it, as the commands to type."""
    where = f"--wal-dir {wal_dir} --namespace {namespace} --shard {shard}"
    hint = f"inspect it with `pyxia wal scan {where}`"
    try:
        scan = scan_shard(shard_log_dir(wal_dir, namespace, shard))
    except (OSError, _native.WalError):
        return hint
    if scan.damage is not None:
        hint += f", then cut it with `pyxia wal truncate {where} --offset {scan.last_valid}`"
    return hint
