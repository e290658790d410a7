"""A split child's copy of its parent's data, cut down to the child's hash range (pure code
over a DB handle: no I/O of its own, no clock).

A child replica of a shard split is seeded from the parent as an *observer*: it gets the
parent's snapshot and log tail unfiltered, with the parent's offsets, and applies them whole,
exactly as a parent replica would. So every record keeps the version id, modification count
and sequence key the parent gave it (filtering entry by entry, as Oxia does, would renumber
the shard-wide version counter and hand out different sequence keys than the parent answered).

The cut happens once, at a defined point of the log: before the first entry of a term after
the parent's (the child's own first term, from the cutover on), and before a child replica
leads. Until then the replica holds a :class:`SplitFilter` record (``__oxia/split-filter``,
written from the observer stream's validated metadata); the cut deletes it in its last batch,
so it runs again (idempotently) after a crash halfway.

What the cut keeps (the child owns hash range ``[min, max]``; a record's hash is its partition
key's when it was written with one, else its key's — how clients route it):

- user records whose hash is in the range;
- session records (``__oxia/session/<id>``) in both children: a session may own ephemeral
  records on either side;
- a session's shadow keys and secondary index entries only where their record stayed;
- notification batches filtered entry by entry: a key notification stays where its record
  stayed (when the record is in neither DB any more, where the key alone hashes), a range
  deletion stays in both; an emptied batch is deleted; every kept batch names the child (a
  subscriber that followed the parent goes on from the parent's offset on each child);
- every other internal record (commit offset, version counter, term, features);
- the DB checksum is deleted (it no longer describes the data).

Invariants: deletes are written in batches of at most :data:`CHUNK` keys; a record is read
before the batch that deletes it is written, never after; a user record's kept/deleted
decision depends on the record alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError
from rocksdict import WriteBatch

from pyxia.common import keys
from pyxia.common.sharding import MAX_HASH, routing_hash
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage.db import ShardDB
from pyxia.storage.steps import Steps

SPLIT_FILTER_KEY = keys.INTERNAL_KEY_PREFIX + "split-filter"
"""Present on a split child replica until its copy of the parent's data is cut down."""

CHUNK = 1000
"""Keys deleted (or rewritten) per DB batch while cutting."""


@dataclass(frozen=True, slots=True)
class SplitFilter:
    """The hash range a split child keeps, and the parent's term it observed (entries of a
    later term are the child's own: the cut comes before the first of them)."""

    min_hash: int
    max_hash: int
    parent_term: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_hash <= self.max_hash <= MAX_HASH:
            raise ValueError(f"invalid split hash range {self.min_hash}..{self.max_hash}")
        if self.parent_term < 0:
            raise ValueError(f"invalid parent term {self.parent_term}")

    def owns(self, h: int) -> bool:
        return self.min_hash <= h <= self.max_hash

    def to_bytes(self) -> bytes:
        value = b"%d %d %d" % (self.min_hash, self.max_hash, self.parent_term)
        return storage_pb2.StorageEntry(value=value, version_id=-1).SerializeToString()

    @staticmethod
    def from_bytes(raw: bytes) -> SplitFilter:
        parts = storage_pb2.StorageEntry.FromString(raw).value.split()
        if len(parts) != 3:
            raise ValueError(f"malformed split filter record {raw[:64]!r}")
        lo, hi, term = (int(p) for p in parts)
        return SplitFilter(lo, hi, term)


def read_filter(db: ShardDB) -> SplitFilter | None:
    raw = db.get(db.encoding.encode(SPLIT_FILTER_KEY))
    return SplitFilter.from_bytes(raw) if raw is not None else None


def write_filter(db: ShardDB, flt: SplitFilter) -> None:
    """Records (durably) that this replica is a split child still holding the parent's data."""
    b = db.new_batch()
    b.put(db.encoding.encode(SPLIT_FILTER_KEY), flt.to_bytes())
    db.write(b)
    db.flush()


def record_hash(key: str, raw: bytes) -> int:
    """The routing hash of a stored user record: its partition key's if it has one."""
    try:
        se = storage_pb2.StorageEntry.FromString(raw)
    except DecodeError:
        return routing_hash(key)
    return routing_hash(key, se.partition_key if se.HasField("partition_key") else None)


class _Writer:
    """Deletes and rewrites, written in batches of at most CHUNK keys."""

    def __init__(self, db: ShardDB) -> None:
        self.db = db
        self.batch: WriteBatch = db.new_batch()
        self.pending = 0
        self.deleted = 0

    def delete(self, ekey: bytes) -> None:
        self.batch.delete(ekey)
        self.deleted += 1
        self._count()

    def put(self, ekey: bytes, value: bytes) -> None:
        self.batch.put(ekey, value)
        self._count()

    def _count(self) -> None:
        self.pending += 1
        if self.pending >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.db.write(self.batch)
            self.batch = self.db.new_batch()
            self.pending = 0


def cut_steps(db: ShardDB, flt: SplitFilter, shard: int) -> Steps[int]:
    """Cuts the DB down to ``flt``'s range (see the module docstring), a step per chunk of
    keys looked at; the filter record goes in the last batch. ``shard``: the child's id, which
    the kept notification batches take. Returns the keys deleted."""
    enc = db.encoding
    decode = enc.decode
    w = _Writer(db)
    start, end = enc.internal_region
    # Pass 1: user records (everything outside the internal region).
    n = 0
    for lower, upper in ((None, start), (end, None)) if end is not None else ((None, start),):
        for ekey, raw in db.scan(lower, upper):
            if not flt.owns(record_hash(decode(ekey), raw)):
                w.delete(ekey)
            n += 1
            if n % CHUNK == 0:
                yield
    w.flush()
    yield
    # Pass 2: internal records, which refer to user records (now cut).
    for ekey, raw in db.scan(start, end):
        key = decode(ekey)
        if key.startswith(keys.SESSIONS_LIST_START) and not keys.is_session_key(key):
            _cut_shadow(db, w, ekey, key)
        elif key.startswith(keys.INDEX_PREFIX + "/"):
            _cut_index_entry(db, w, ekey, key)
        elif key.startswith(keys.NOTIFICATIONS_PREFIX + "/"):
            _cut_notifications(db, w, flt, shard, ekey, raw)
        elif key == keys.CHECKSUM_KEY:
            w.delete(ekey)
        n += 1
        if n % CHUNK == 0:
            yield
    w.batch.delete(enc.encode(SPLIT_FILTER_KEY))
    w.pending += 1
    w.flush()
    return w.deleted


def _cut_shadow(db: ShardDB, w: _Writer, ekey: bytes, key: str) -> None:
    try:
        session_id, user_key = keys.parse_session_shadow_key(key)
    except keys.KeyFormatError:
        return  # not ours to judge: kept
    raw = db.get(db.encoding.encode(user_key))
    if raw is None:
        w.delete(ekey)
        return
    se = storage_pb2.StorageEntry.FromString(raw)
    if not (se.HasField("session_id") and se.session_id == session_id):
        w.delete(ekey)


def _cut_index_entry(db: ShardDB, w: _Writer, ekey: bytes, key: str) -> None:
    try:
        entry = keys.parse_index_entry_key(key)
    except keys.KeyFormatError:
        return
    if db.get(db.encoding.encode(entry.primary_key)) is None:
        w.delete(ekey)


def _cut_notifications(
    db: ShardDB, w: _Writer, flt: SplitFilter, shard: int, ekey: bytes, raw: bytes
) -> None:
    try:
        nb = client_pb2.NotificationBatch.FromString(raw)
    except DecodeError:
        return
    kept = []
    for entry in nb.notifications:
        if entry.value.type != client_pb2.KEY_RANGE_DELETED:  # a range concerns both children
            record = db.get(db.encoding.encode(entry.key))
            h = record_hash(entry.key, record) if record is not None else routing_hash(entry.key)
            if not flt.owns(h):
                continue
        kept.append(entry)
    if len(kept) == len(nb.notifications) and nb.shard == shard:
        return
    if not kept:
        w.delete(ekey)
        return
    out = client_pb2.NotificationBatch(shard=shard, offset=nb.offset, timestamp=nb.timestamp)
    out.notifications.extend(kept)
    w.put(ekey, out.SerializeToString())
