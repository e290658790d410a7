"""The read side of a shard: Get, List, RangeScan, sequences, notifications, sessions.

Pure functions over a :class:`~pyxia.storage.db.ShardDB` (no asyncio, no gRPC, no clock), with
Oxia's semantics (``oxiad/dataserver/database/{db.go,kvstore/kv_pebble.go,
notifications_tracker.go,notifications_trimmer.go}``,
``oxiad/dataserver/controller/lead/{secondary_indexes.go,session_manager.go}``):

* **Get** with a comparison (FLOOR/CEILING/LOWER/HIGHER) only ever lands on user keys; the
  internal keys (``__oxia/...``) sort after every user key with both encodings and are cut off.
  Like Oxia, an EQUAL Get (and the exact-match probe of a FLOOR Get) reads the key as named, so
  an internal record can be read by its exact name. The response ``key`` is set for the
  non-EQUAL comparisons only.
* **List/RangeScan** use :func:`keys.scan_bounds` (an empty end means no upper bound) and hide
  internal keys unless ``include_internal_keys``.
* **Secondary indexes**: List/RangeScan walk the index entries in
  :func:`keys.index_scan_range` and return the primary keys (a record indexed twice under one
  index comes twice). Get walks the entries of the index from
  ``__oxia/idx/<name>/<key>`` comparing the *secondary* keys with
  :func:`keys.compare_with_slash`, as Oxia 0.17's ``doSecondaryGet``. Deliberate difference:
  only the entries of the requested index are visited (Oxia 0.17 walked every key of the DB and
  could answer with an entry of another index, and its List/RangeScan could return, or panic
  on, keys of other indexes and session shadow keys when a range crosses hierarchical levels;
  later Oxia restricts both to the index's entries too). RangeScan through an index also sets
  ``secondary_index_key`` on each record, as later Oxia does (0.17 left it unset).
* Values are returned whenever asked for, even when empty (Oxia leaves an empty value unset on
  the wire; both decode to empty bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Final

from google.protobuf.message import DecodeError

from pyxia.common import keys
from pyxia.common.keys import KeyEncoding, ScanBounds
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage.db import ShardDB

__all__ = [
    "get",
    "last_notification_batch",
    "last_notification_offset",
    "last_sequence_key",
    "list_keys",
    "load_sessions",
    "range_scan",
    "read_notifications",
    "trim_notifications",
    "trim_notifications_window",
]

EQUAL: Final = client_pb2.EQUAL
FLOOR: Final = client_pb2.FLOOR
CEILING: Final = client_pb2.CEILING
LOWER: Final = client_pb2.LOWER
HIGHER: Final = client_pb2.HIGHER

_MAX_INT64: Final = (1 << 63) - 1
_NOTIFICATION_RECORD_PREFIX: Final = keys.NOTIFICATIONS_PREFIX
_MAX_HIERARCHICAL_DEPTH: Final = 0x7FFF

GetResponse = client_pb2.GetResponse
Version = client_pb2.Version
StorageEntry = storage_pb2.StorageEntry

Segment = tuple[bytes | None, bytes | None]
"""Encoded ``[lower, upper)`` of a scan (None = unbounded)."""


# ---------------------------------------------------------------------------------------------
# Scanning helpers
# ---------------------------------------------------------------------------------------------


def _segments(
    lower: bytes | None, upper: bytes | None, skip: tuple[bytes, bytes] | None
) -> list[Segment]:
    """``[lower, upper)`` without ``[skip[0], skip[1])``, as ordered non-empty segments."""
    if skip is None:
        candidates: list[Segment] = [(lower, upper)]
    else:
        start, end = skip
        candidates = [
            (lower, start if upper is None else min(upper, start)),
            (end if lower is None else max(lower, end), upper),
        ]
    return [(lo, hi) for lo, hi in candidates if lo is None or hi is None or lo < hi]


def _user_segments(
    encoding: KeyEncoding, lower: bytes | None, upper: bytes | None
) -> list[Segment]:
    """``[lower, upper)`` without the internal region."""
    start, end = encoding.internal_region
    if end is None:
        return _segments(lower, start if upper is None else min(upper, start), None)
    return _segments(lower, upper, (start, end))


def _scan_segments(
    db: ShardDB, segments: list[Segment], *, reverse: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    for lo, hi in reversed(segments) if reverse else segments:
        yield from db.scan(lo, hi, reverse=reverse)


def _scan_bounds(
    db: ShardDB, bounds: ScanBounds, *, reverse: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    if bounds.empty:
        return iter(())
    return _scan_segments(db, _segments(bounds.lower, bounds.upper, bounds.skip), reverse=reverse)


def _first(it: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
    for kv in it:
        return kv
    return None


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _version(se: storage_pb2.StorageEntry) -> client_pb2.Version:
    v = Version(
        version_id=se.version_id,
        modifications_count=se.modifications_count,
        created_timestamp=se.creation_timestamp,
        modified_timestamp=se.modification_timestamp,
    )
    if se.HasField("session_id"):
        v.session_id = se.session_id
    if se.HasField("client_identity"):
        v.client_identity = se.client_identity
    return v


def _record(key: str, raw: bytes) -> tuple[client_pb2.Version, bytes]:
    """Version and value of a stored record. A notification batch (or any internal value that is
    not a ``StorageEntry``) is returned as is with an empty version, as Oxia's RangeScan does."""
    if key.startswith(_NOTIFICATION_RECORD_PREFIX):
        return Version(), raw
    try:
        se = StorageEntry.FromString(raw)
    except DecodeError:
        return Version(), raw
    return _version(se), se.value


def _response(
    key: str, raw: bytes, *, include_value: bool, with_key: bool
) -> client_pb2.GetResponse:
    version, value = _record(key, raw)
    res = GetResponse(status=client_pb2.OK, version=version)
    if include_value:
        res.value = value
    if with_key:
        res.key = key
    return res


def _not_found() -> client_pb2.GetResponse:
    return GetResponse(status=client_pb2.KEY_NOT_FOUND)


# ---------------------------------------------------------------------------------------------
# Get
# ---------------------------------------------------------------------------------------------


def get_into(db: ShardDB, req: client_pb2.GetRequest, out: client_pb2.GetResponse) -> None:
    """:func:`get`, filling ``out`` in place: the Read RPC's hot path. An
    EQUAL get of a user record builds no intermediate message."""
    if req.comparison_type != EQUAL or req.HasField("secondary_index_name"):
        out.CopyFrom(get(db, req))
        return
    key = req.key
    raw = db.db.get(db.encoding.encode(key))
    if raw is None:
        out.status = client_pb2.KEY_NOT_FOUND
        return
    if key.startswith(_NOTIFICATION_RECORD_PREFIX):
        out.CopyFrom(_response(key, raw, include_value=req.include_value, with_key=False))
        return
    try:
        se = StorageEntry.FromString(raw)
    except DecodeError:
        out.CopyFrom(_response(key, raw, include_value=req.include_value, with_key=False))
        return
    v = out.version
    v.version_id = se.version_id
    v.modifications_count = se.modifications_count
    v.created_timestamp = se.creation_timestamp
    v.modified_timestamp = se.modification_timestamp
    if se.HasField("session_id"):
        v.session_id = se.session_id
    if se.HasField("client_identity"):
        v.client_identity = se.client_identity
    if req.include_value:
        out.value = se.value


def get(db: ShardDB, req: client_pb2.GetRequest) -> client_pb2.GetResponse:
    """Oxia's Get: EQUAL, FLOOR (highest <=), CEILING (lowest >=), LOWER (highest <), HIGHER
    (lowest >) in the shard's key order, or through a secondary index."""
    if req.HasField("secondary_index_name"):
        return _index_get(db, req)
    enc = db.encoding
    ekey = enc.encode(req.key)
    ct = req.comparison_type
    include_value = req.include_value
    if ct == EQUAL:
        raw = db.get(ekey)
        if raw is None:
            return _not_found()
        return _response(req.key, raw, include_value=include_value, with_key=False)

    found: tuple[bytes, bytes] | None
    if ct == FLOOR:
        # Oxia: an exact match first (whatever the key), then the highest user key below.
        raw = db.get(ekey)
        if raw is not None:
            return _response(req.key, raw, include_value=include_value, with_key=True)
        found = _first(_scan_segments(db, _user_segments(enc, None, ekey), reverse=True))
    elif ct == LOWER:
        found = _first(_scan_segments(db, _user_segments(enc, None, ekey), reverse=True))
    elif ct == CEILING:
        found = _first(_scan_segments(db, _user_segments(enc, ekey, None)))
    elif ct == HIGHER:
        found = None
        for kv in _scan_segments(db, _user_segments(enc, ekey, None)):
            if kv[0] != ekey:
                found = kv
                break
    else:
        raise ValueError(f"unknown comparison type {ct}")
    if found is None:
        return _not_found()
    return _response(enc.decode(found[0]), found[1], include_value=include_value, with_key=True)


# ---------------------------------------------------------------------------------------------
# Secondary indexes
# ---------------------------------------------------------------------------------------------


def _successor(prefix: bytes) -> bytes:
    """The smallest byte string after every string that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("no successor for a prefix of 0xFF bytes")
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _IndexEntries:
    """The entries of one secondary index, walked in the shard's key order.

    With the natural encoding they are contiguous. With the hierarchical encoding they are
    grouped by depth (the number of '/' in the secondary key), with other internal keys (other
    indexes, session shadow keys, ...) between the groups: the walk jumps from group to group."""

    __slots__ = ("db", "encoding", "hierarchical", "prefix", "prefix_end")

    def __init__(self, db: ShardDB, index_name: str) -> None:
        self.db = db
        self.encoding = db.encoding
        prefix = keys.index_search_key(index_name, "")  # "__oxia/idx/<name>/"
        self.hierarchical = self.encoding.name == "hierarchical"
        if self.hierarchical:
            # The encoded body of every entry starts with this (the depth header aside).
            body = prefix.encode().replace(b"/", b"\xff")
            self.prefix = body
            self.prefix_end = _successor(body)
        else:
            self.prefix = self.encoding.encode(prefix)
            self.prefix_end = _successor(self.prefix)

    # -- hierarchical groups ------------------------------------------------------------------

    def _group(self, depth: int) -> tuple[bytes, bytes]:
        header = (0x8000 | depth).to_bytes(2, "big")
        return header + self.prefix, header + self.prefix_end

    @staticmethod
    def _depth(ekey: bytes) -> int:
        return ((ekey[0] & 0x7F) << 8) | ekey[1]

    @property
    def _min_depth(self) -> int:
        return self.prefix.count(b"\xff")

    # -- walking ----------------------------------------------------------------------------

    def forward(self, start: bytes | None) -> Iterator[bytes]:
        """Entries ``>= start`` (every entry if None), ascending."""
        if not self.hierarchical:
            lower = self.prefix if start is None else max(start, self.prefix)
            for ek, _ in self.db.scan(lower, self.prefix_end):
                yield ek
            return
        lower = self._group(self._min_depth)[0]
        if start is not None:
            lower = max(lower, start)
        while True:
            jump: bytes | None = None
            for ek, _ in self.db.scan(lower, None):
                depth = self._depth(ek)
                if ek[0] & 0x80 == 0 or depth < self._min_depth:
                    jump = self._group(self._min_depth)[0]
                    break
                g_start, g_end = self._group(depth)
                if g_start <= ek < g_end:
                    yield ek
                    continue
                if ek < g_start:
                    jump = g_start
                elif depth < _MAX_HIERARCHICAL_DEPTH:
                    jump = self._group(depth + 1)[0]
                break
            if jump is None or jump <= lower:
                return
            lower = jump

    def backward(self, before: bytes | None) -> Iterator[bytes]:
        """Entries ``< before`` (every entry if None), descending."""
        if not self.hierarchical:
            end = self.prefix_end if before is None else min(before, self.prefix_end)
            for ek, _ in self.db.scan(self.prefix, end, reverse=True):
                yield ek
            return
        floor = self._group(self._min_depth)[0]
        upper = before
        while True:
            jump: bytes | None = None
            for ek, _ in self.db.scan(floor, upper, reverse=True):
                depth = self._depth(ek)
                g_start, g_end = self._group(depth)
                if g_start <= ek < g_end:
                    yield ek
                    continue
                if ek >= g_end:
                    jump = g_end
                elif depth > self._min_depth:
                    jump = self._group(depth - 1)[1]
                break
            if jump is None or (upper is not None and jump >= upper):
                return
            upper = jump

    def parse(self, ekey: bytes) -> tuple[str, str]:
        """``(primary key, secondary key)`` of an entry; ``("", "")`` if it does not parse (Oxia
        treats such a key as no match)."""
        try:
            entry = keys.parse_index_entry_key(self.encoding.decode(ekey))
        except (keys.KeyFormatError, UnicodeDecodeError):
            return "", ""
        return entry.primary_key, entry.secondary_key


def _index_get(db: ShardDB, req: client_pb2.GetRequest) -> client_pb2.GetResponse:
    found = _index_find(db, req)
    if found is None:
        return _not_found()
    primary_key, secondary_key = found
    res = get(
        db,
        client_pb2.GetRequest(
            key=primary_key, include_value=req.include_value, comparison_type=EQUAL
        ),
    )
    res.key = primary_key
    res.secondary_index_key = secondary_key
    return res


def _index_find(db: ShardDB, req: client_pb2.GetRequest) -> tuple[str, str] | None:
    """Oxia's ``doSecondaryGet``: position on ``__oxia/idx/<name>/<key>`` and walk the entries of
    the index, comparing ``key`` with each entry's secondary key by ``compare_with_slash``."""
    entries = _IndexEntries(db, req.secondary_index_name)
    key = req.key
    search = db.encoding.encode(keys.index_search_key(req.secondary_index_name, key))
    ct = req.comparison_type
    cmp = keys.compare_with_slash

    if ct == EQUAL:
        for ek in entries.forward(search):
            pk, sk = entries.parse(ek)
            return (pk, sk) if pk and cmp(key, sk) == 0 else None
        return None
    if ct == CEILING:
        first = next(entries.forward(search), None)
        if first is None:
            # Oxia steps back to the last entry and compares it too.
            first = next(entries.backward(None), None)
            if first is None:
                return None
        pk, sk = entries.parse(first)
        return (pk, sk) if pk and cmp(key, sk) <= 0 else None
    if ct == HIGHER:
        for ek in entries.forward(search):
            pk, sk = entries.parse(ek)
            if cmp(key, sk) >= 0:
                continue
            return (pk, sk) if pk else None
        return None
    if ct == LOWER:
        for ek in entries.backward(search):
            pk, sk = entries.parse(ek)
            if cmp(key, sk) <= 0:
                continue
            return (pk, sk) if pk else None
        return None
    if ct == FLOOR:
        first = next(entries.forward(search), None)
        # Nothing at or after the search key: Oxia steps back from the end.
        walk = entries.backward(None) if first is None else chain((first,), entries.backward(first))
        for ek in walk:
            pk, sk = entries.parse(ek)
            if not pk or cmp(key, sk) < 0:
                continue
            return pk, sk
        return None
    raise ValueError(f"unknown comparison type {ct}")


def _index_range(db: ShardDB, index_name: str, start: str, end: str) -> Iterator[tuple[str, str]]:
    """``(primary key, secondary key)`` of the index entries in :func:`keys.index_scan_range`."""
    entries = _IndexEntries(db, index_name)
    lo, hi = keys.index_scan_range(index_name, start, end)
    lower = db.encoding.encode(lo)
    upper = db.encoding.encode(hi)
    if lower >= upper:
        return
    for ek in entries.forward(lower):
        if ek >= upper:
            return
        pk, sk = entries.parse(ek)
        if pk:
            yield pk, sk


# ---------------------------------------------------------------------------------------------
# List / RangeScan
# ---------------------------------------------------------------------------------------------


def list_keys(db: ShardDB, req: client_pb2.ListRequest) -> Iterator[str]:
    """The keys of a List, in the shard's key order (primary keys, for a secondary index)."""
    if req.HasField("secondary_index_name"):
        for pk, _ in _index_range(
            db, req.secondary_index_name, req.start_inclusive, req.end_exclusive
        ):
            yield pk
        return
    bounds = keys.scan_bounds(
        req.start_inclusive,
        req.end_exclusive,
        db.encoding,
        include_internal_keys=req.include_internal_keys,
    )
    decode = db.encoding.decode
    for ek, _ in _scan_bounds(db, bounds):
        yield decode(ek)


def range_scan(db: ShardDB, req: client_pb2.RangeScanRequest) -> Iterator[client_pb2.GetResponse]:
    """The records of a RangeScan (``key`` and value always set). Through a secondary index,
    each primary record is loaded, with ``secondary_index_key`` set."""
    if req.HasField("secondary_index_name"):
        for pk, sk in _index_range(
            db, req.secondary_index_name, req.start_inclusive, req.end_exclusive
        ):
            res = get(db, client_pb2.GetRequest(key=pk, include_value=True, comparison_type=EQUAL))
            res.key = pk
            res.secondary_index_key = sk
            yield res
        return
    bounds = keys.scan_bounds(
        req.start_inclusive,
        req.end_exclusive,
        db.encoding,
        include_internal_keys=req.include_internal_keys,
    )
    decode = db.encoding.decode
    for ek, raw in _scan_bounds(db, bounds):
        yield _response(decode(ek), raw, include_value=True, with_key=True)


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------


def last_sequence_key(db: ShardDB, prefix: str) -> str | None:
    """The highest key of the sequence ``prefix`` (what GetSequenceUpdates reports first), or
    None: a reverse scan of :func:`keys.sequence_updates_range`, internal keys excluded."""
    start, end = keys.sequence_updates_range(prefix)
    found = _first(_scan_bounds(db, keys.scan_bounds(start, end, db.encoding), reverse=True))
    return None if found is None else db.encoding.decode(found[0])


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------


def _notification_range(db: ShardDB, start_offset: int) -> tuple[bytes, bytes] | None:
    """Encoded ``[notification_key(start_offset), LAST_NOTIFICATION_KEY)``, as Oxia scans it."""
    start_offset = max(start_offset, 0)
    if start_offset >= _MAX_INT64:
        return None
    enc = db.encoding.encode
    return enc(keys.notification_key(start_offset)), enc(keys.LAST_NOTIFICATION_KEY)


def read_notifications(
    db: ShardDB, after_offset: int, max_batches: int = 100, max_bytes: int | None = None
) -> list[client_pb2.NotificationBatch]:
    """The stored notification batches with ``offset > after_offset``, in offset order, at most
    ``max_batches`` and, once one is read, no more than ``max_bytes`` of stored batches (a
    subscriber's read-ahead stays bounded however large the batches). Entries without
    notifications (and control entries) have no batch."""
    rng = _notification_range(db, after_offset + 1)
    if rng is None or max_batches <= 0:
        return []
    out: list[client_pb2.NotificationBatch] = []
    size = 0
    for _, raw in db.scan(rng[0], rng[1]):
        if out and max_bytes is not None and size + len(raw) > max_bytes:
            break
        out.append(client_pb2.NotificationBatch.FromString(raw))
        size += len(raw)
        if len(out) >= max_batches:
            break
    return out


def last_notification_offset(db: ShardDB) -> int:
    """The offset of the last stored notification batch, -1 if there is none."""
    found = db.seek_le(db.encoding.encode(keys.LAST_NOTIFICATION_KEY))
    if found is None:
        return -1
    key = db.encoding.decode(found[0])
    if not key.startswith(keys.NOTIFICATIONS_PREFIX + "/"):
        return -1
    return keys.parse_notification_key(key)


def last_notification_batch(db: ShardDB) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the newest stored notification batch, None if there is none."""
    found = db.seek_le(db.encoding.encode(keys.LAST_NOTIFICATION_KEY))
    if found is None:
        return None
    key = db.encoding.decode(found[0])
    if not key.startswith(keys.NOTIFICATIONS_PREFIX + "/"):
        return None
    return keys.parse_notification_key(key), client_pb2.NotificationBatch.FromString(
        found[1]
    ).timestamp


def _batch_at_or_after(db: ShardDB, offset: int, upper: bytes) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the first batch at or after ``offset``, below ``upper``."""
    rng = _notification_range(db, offset)
    if rng is None:
        return None
    found = _first(db.scan(rng[0], min(rng[1], upper)))
    if found is None:
        return None
    batch = client_pb2.NotificationBatch.FromString(found[1])
    return keys.parse_notification_key(db.encoding.decode(found[0])), batch.timestamp


def trim_notifications(
    db: ShardDB, older_than_ms: int, keep_after_offset: int | None = None
) -> int:
    """Deletes the expired prefix of the notification batches: those whose timestamp is not
    after ``older_than_ms`` (Oxia's cutoff rule: a batch is kept while ``cutoff < timestamp``),
    never one with ``offset > keep_after_offset``. Returns how many batches were deleted.

    Like Oxia's trimmer, this is a binary search on the timestamps (which the leader stamps in
    non-decreasing order, across terms too) and a range delete. It does not go through the log
    and a crash may undo it (the DB's own WAL is off): the next trim redoes it. Called with a
    cutoff taken from the log (:func:`trim_notifications_window`), every replica converges to
    the same window."""
    rng = _notification_range(db, 0)
    assert rng is not None
    lower, upper = rng
    if keep_after_offset is not None:
        if keep_after_offset < 0:
            return 0
        if keep_after_offset < _MAX_INT64 - 1:
            upper = min(upper, db.encoding.encode(keys.notification_key(keep_after_offset + 1)))
    first = _batch_at_or_after(db, 0, upper)
    if first is None or first[1] > older_than_ms:
        return 0
    last = _first(db.scan(lower, upper, reverse=True))
    assert last is not None  # ``first`` is there
    lo = first[0]  # a batch known to be expired
    hi = keys.parse_notification_key(db.encoding.decode(last[0]))
    while lo < hi:
        # The batch at or after ``mid`` decides: expired -> the cut is at or after it.
        mid = (lo + hi + 1) // 2
        found = _batch_at_or_after(db, mid, upper)
        if found is not None and found[0] <= hi and found[1] <= older_than_ms:
            lo = found[0]
        else:
            hi = mid - 1
    end = db.encoding.encode(keys.notification_key(lo + 1)) if lo + 1 <= _MAX_INT64 else upper
    count = sum(1 for _ in db.scan(lower, end))
    if count:
        batch = db.new_batch()
        batch.delete_range(lower, end)
        db.write(batch)
    return count


def trim_notifications_window(db: ShardDB, retention_ms: int) -> int:
    """Trims the notification batches to the log's window: those whose timestamp is not after
    ``newest batch's timestamp - retention_ms`` are deleted. Returns how many were deleted.

    The cutoff comes from the log (the newest batch's timestamp, stamped by the leader), not
    from this replica's clock, so the window is a function of the applied entries only: every
    replica that has applied the same entries keeps the same batches, whenever it trims, and a
    follower that becomes leader serves the window its predecessor served. While no batch is
    written the window does not move (nor grow)."""
    newest = last_notification_batch(db)
    if newest is None:
        return 0
    return trim_notifications(db, newest[1] - retention_ms)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


def load_sessions(db: ShardDB) -> dict[int, storage_pb2.SessionMetadata]:
    """Every session record ``__oxia/session/<%016x id>`` (not the shadow keys under them), by
    session id. A record that does not parse is skipped, as Oxia's leader does."""
    enc = db.encoding
    lower = enc.encode(keys.SESSIONS_LIST_START)
    upper = enc.encode(keys.SESSIONS_LIST_END)
    sessions: dict[int, storage_pb2.SessionMetadata] = {}
    for ek, raw in db.scan(lower, upper):
        key = enc.decode(ek)
        if not keys.is_session_key(key):
            continue
        try:
            session_id = keys.parse_session_key(key)
            value = StorageEntry.FromString(raw).value
            sessions[session_id] = storage_pb2.SessionMetadata.FromString(value)
        except (keys.KeyFormatError, DecodeError):
            continue
    return sessions
