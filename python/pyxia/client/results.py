"""What the client returns: versions, records, notifications, session events."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from pyxia.proto import client_pb2

_tuple_new = tuple.__new__

EXPECTED_RECORD_DOES_NOT_EXIST = -1
"""``expected_version_id`` meaning "the key must not exist" (Oxia's ``ExpectedRecordNotExists``)."""


class ComparisonType(enum.IntEnum):
    """Which key a get returns (``KeyComparisonType``)."""

    EQUAL = client_pb2.EQUAL
    FLOOR = client_pb2.FLOOR
    """The highest key <= the given one."""
    CEILING = client_pb2.CEILING
    """The lowest key >= the given one."""
    LOWER = client_pb2.LOWER
    """The highest key < the given one."""
    HIGHER = client_pb2.HIGHER
    """The lowest key > the given one."""


class NotificationType(enum.IntEnum):
    KEY_CREATED = client_pb2.KEY_CREATED
    KEY_MODIFIED = client_pb2.KEY_MODIFIED
    KEY_DELETED = client_pb2.KEY_DELETED
    KEY_RANGE_DELETED = client_pb2.KEY_RANGE_DELETED


class Version(NamedTuple):
    """A record's version. ``version_id`` is unique and increasing within a shard (use it as a
    fencing token or for compare-and-set); ``modifications_count`` is 0 on creation."""

    version_id: int
    modifications_count: int
    created_timestamp: int
    """Milliseconds since the epoch (the leader's clock)."""
    modified_timestamp: int
    session_id: int | None = None
    client_identity: str | None = None

    @property
    def is_ephemeral(self) -> bool:
        return self.session_id is not None

    @classmethod
    def from_proto(cls, v: client_pb2.Version) -> Version:
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python-level wrapper around
        # it, and this runs once per operation answered.
        return _tuple_new(
            cls,
            (
                v.version_id,
                v.modifications_count,
                v.created_timestamp,
                v.modified_timestamp,
                v.session_id if v.HasField("session_id") else None,
                v.client_identity if v.HasField("client_identity") else None,
            ),
        )


class PutResult(NamedTuple):
    key: str
    """The key written (the generated one for a sequential put)."""
    version: Version


class GetResult(NamedTuple):
    key: str
    """The key found (differs from the one asked for with a comparison or an index)."""
    value: bytes | None
    """None when the get was made with ``include_value=False``."""
    version: Version
    secondary_index_key: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    type: NotificationType
    key: str
    version_id: int | None = None
    """The new version (created/modified)."""
    key_range_end: str | None = None
    """The exclusive end of a range deletion."""


@dataclass(frozen=True, slots=True)
class NotificationBatch:
    """The changes of one write batch of one shard (one log entry), in key order.

    ``(shard, offset)`` identifies the batch: resuming after it (``start_after``) neither loses
    nor repeats a batch."""

    shard: int
    offset: int
    timestamp: int
    notifications: tuple[Notification, ...]

    def __iter__(self) -> Iterator[Notification]:
        return iter(self.notifications)

    def __len__(self) -> int:
        return len(self.notifications)

    @classmethod
    def from_proto(cls, b: client_pb2.NotificationBatch) -> NotificationBatch:
        out = []
        for e in b.notifications:
            n = e.value
            out.append(
                Notification(
                    NotificationType(n.type),
                    e.key,
                    n.version_id if n.HasField("version_id") else None,
                    n.key_range_last if n.HasField("key_range_last") else None,
                )
            )
        return cls(b.shard, b.offset, b.timestamp, tuple(out))


class SessionState(enum.Enum):
    ACTIVE = "active"
    """Heartbeats are answered."""
    SUSPENDED = "suspended"
    """Heartbeats fail (server unreachable, leader changing); the session may still be alive."""
    LOST = "lost"
    """The server no longer has the session (its ephemeral records are gone), or no heartbeat
    was answered for a whole session timeout. Final: the next ephemeral put opens a new one."""


@dataclass(frozen=True, slots=True)
class SessionEvent:
    shard: int
    session_id: int
    state: SessionState
    reason: str = ""
