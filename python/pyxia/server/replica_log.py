"""The replica state machine's read-only view of a shard's storage (``replica.ReplicaLog``).

The machine (``replica.py``) decides from what the WAL and the DB hold but never touches them;
this adapter answers its questions from a :class:`ShardStorage`, reading the storage's current
WAL and applier on every call (a snapshot install replaces the DB under the same storage). It
writes nothing.
"""

from __future__ import annotations

from pyxia._native import EntryNotFound
from pyxia.server.replica import NO_ENTRY, EntryId
from pyxia.server.shard_storage import ShardStorage
from pyxia.storage import reads


class StorageLog:
    """A :class:`~pyxia.server.replica.ReplicaLog` over one shard's storage."""

    __slots__ = ("_storage",)

    def __init__(self, storage: ShardStorage) -> None:
        self._storage = storage

    @property
    def last_offset(self) -> int:
        return int(self._storage.wal.last_offset)

    @property
    def first_offset(self) -> int:
        return int(self._storage.wal.first_offset)

    @property
    def synced_offset(self) -> int:
        return int(self._storage.wal.last_synced_offset)

    @property
    def applied_offset(self) -> int:
        return self._storage.commit_offset

    @property
    def rebuilding(self) -> bool:
        return self._storage.rebuilding

    def head(self) -> EntryId:
        h = self._storage.head_entry_id()
        return NO_ENTRY if h.offset < 0 else EntryId(h.term, h.offset)

    def term_at(self, offset: int) -> int | None:
        try:
            return int(self._storage.wal.read(offset).term)
        except EntryNotFound:
            return None

    def last_entry_with_term_at_most(self, term: int) -> EntryId | None:
        for e in self._storage.wal.reverse_reader():
            if e.term <= term:
                return EntryId(e.term, e.offset)
        return None

    def clock(self) -> int:
        """The newest timestamp in this replica's log: its head entry's, or after a snapshot
        (an empty WAL) its newest notification batch's."""
        wal = self._storage.wal
        head = wal.last_offset
        ts = 0
        if head >= 0:
            try:
                ts = wal.read(head).timestamp
            except EntryNotFound:
                pass
        newest = reads.last_notification_batch(self._storage.db)
        return max(ts, newest[1] if newest is not None else 0)
