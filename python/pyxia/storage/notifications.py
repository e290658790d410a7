"""The notifications of one applied log entry (pure code).

Oxia semantics: at most one notification per key per entry (the last
operation on a key wins), internal keys are never notified, created vs
modified is decided by the modifications count, a delete-range yields one
KEY_RANGE_DELETED notification keyed by its start. The sealed batch lists
entries sorted by key so its bytes are deterministic on every replica.

This runs once per put, so entries are kept as tuples and the batch is
encoded to protobuf wire format directly (it is a plain, stable message:
``NotificationBatch{shard=1, offset=2, timestamp=3 (fixed64),
notifications=4: {key=1, value=2: Notification{type=1, version_id=2,
key_range_last=3}}}``); ``seal`` parses it back for callers that want the
message.
"""

from __future__ import annotations

import struct

from pyxia._native import encode_notification_batch
from pyxia.common.keys import INTERNAL_KEY_PREFIX
from pyxia.proto import client_pb2

KEY_CREATED = client_pb2.KEY_CREATED
KEY_MODIFIED = client_pb2.KEY_MODIFIED
KEY_DELETED = client_pb2.KEY_DELETED
KEY_RANGE_DELETED = client_pb2.KEY_RANGE_DELETED

_U64 = struct.Struct("<Q").pack
_MASK64 = (1 << 64) - 1


def varint(v: int) -> bytes:
    """Protobuf varint (negative int64 as its 10-byte two's complement)."""
    v &= _MASK64
    if v < 0x80:
        return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field_bytes(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + varint(len(data)) + data


class Notifications:
    """Collects the notifications of one entry at ``offset``."""

    __slots__ = ("_entries", "offset", "shard", "timestamp")

    def __init__(self, shard: int, offset: int, timestamp: int) -> None:
        self.shard = shard
        self.offset = offset
        self.timestamp = timestamp
        # key -> (type, version_id or None, key_range_last or None)
        self._entries: dict[str, tuple[int, int | None, str | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def modified(self, key: str, version_id: int, modifications_count: int) -> None:
        if key.startswith(INTERNAL_KEY_PREFIX):
            return
        kind = KEY_CREATED if modifications_count == 0 else KEY_MODIFIED
        self._entries[key] = (kind, version_id, None)

    def deleted(self, key: str) -> None:
        if key.startswith(INTERNAL_KEY_PREFIX):
            return
        self._entries[key] = (KEY_DELETED, None, None)

    def deleted_range(self, start_inclusive: str, end_exclusive: str) -> None:
        # Oxia: a range that starts at an internal key is not notified.
        if start_inclusive.startswith(INTERNAL_KEY_PREFIX):
            return
        self._entries[start_inclusive] = (KEY_RANGE_DELETED, None, end_exclusive)

    def seal_bytes(self) -> bytes:
        """The serialized ``NotificationBatch``, entries sorted by key (UTF-8
        byte order), encoded natively."""
        return encode_notification_batch(
            self.shard, self.offset, self.timestamp, list(self._entries.items())
        )

    def seal_bytes_reference(self) -> bytes:
        """Pure-Python encoding of :meth:`seal_bytes` (the reference the
        native encoder is tested against)."""
        head = bytearray()
        if self.shard:
            head += b"\x08" + varint(self.shard)
        if self.offset:
            head += b"\x10" + varint(self.offset)
        if self.timestamp:
            head += b"\x19" + _U64(self.timestamp & _MASK64)
        entries = self._entries
        for key in sorted(entries):
            kind, version_id, range_last = entries[key]
            n = b"\x08" + varint(kind) if kind else b""
            if version_id is not None:
                n += b"\x10" + varint(version_id)
            if range_last is not None:
                n += _field_bytes(0x1A, range_last.encode())
            entry = _field_bytes(0x0A, key.encode()) + _field_bytes(0x12, n)
            head += _field_bytes(0x22, entry)
        return bytes(head)

    def seal(self) -> client_pb2.NotificationBatch:
        return client_pb2.NotificationBatch.FromString(self.seal_bytes())
