"""The notifications of one applied log entry (pure code).

Oxia semantics: at most one notification per key per entry (the last
operation on a key wins), internal keys are never notified, created vs
modified is decided by the modifications count, a delete-range yields one
KEY_RANGE_DELETED notification keyed by its start. The sealed batch lists
entries sorted by key so its bytes are deterministic on every replica.
"""

from __future__ import annotations

from pyxia.proto import client_pb2
from pyxia.storage.keys import is_internal_key

KEY_CREATED = client_pb2.KEY_CREATED
KEY_MODIFIED = client_pb2.KEY_MODIFIED
KEY_DELETED = client_pb2.KEY_DELETED
KEY_RANGE_DELETED = client_pb2.KEY_RANGE_DELETED


class Notifications:
    """Collects the notifications of one entry at ``offset``."""

    __slots__ = ("_entries", "offset", "shard", "timestamp")

    def __init__(self, shard: int, offset: int, timestamp: int) -> None:
        self.shard = shard
        self.offset = offset
        self.timestamp = timestamp
        self._entries: dict[str, client_pb2.Notification] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def modified(self, key: str, version_id: int, modifications_count: int) -> None:
        if is_internal_key(key):
            return
        kind = KEY_CREATED if modifications_count == 0 else KEY_MODIFIED
        self._entries[key] = client_pb2.Notification(type=kind, version_id=version_id)

    def deleted(self, key: str) -> None:
        if is_internal_key(key):
            return
        self._entries[key] = client_pb2.Notification(type=KEY_DELETED)

    def deleted_range(self, start_inclusive: str, end_exclusive: str) -> None:
        self._entries[start_inclusive] = client_pb2.Notification(
            type=KEY_RANGE_DELETED, key_range_last=end_exclusive
        )

    def seal(self) -> client_pb2.NotificationBatch:
        """The batch, entries sorted by key (code point order = UTF-8 byte order)."""
        return client_pb2.NotificationBatch(
            shard=self.shard,
            offset=self.offset,
            timestamp=self.timestamp,
            notifications=[
                client_pb2.NotificationEntry(key=k, value=self._entries[k])
                for k in sorted(self._entries)
            ],
        )
