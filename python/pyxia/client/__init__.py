"""pyxia's Oxia client: :class:`AsyncClient` (asyncio) and :class:`Client` (threads), one core.

from pyxia import Client

with Client("localhost:6648") as client:
    result = client.put("/a", b"hello")
    print(client.get("/a").value, result.version.version_id)
"""

from pyxia.client.async_client import AsyncClient, Notifications, SequenceUpdates
from pyxia.client.errors import (
    ClientClosed,
    InvalidOptions,
    KeyNotFound,
    RequestIndeterminate,
    RequestTimeout,
    Unavailable,
    UnexpectedVersion,
    UnexpectedVersionId,
)
from pyxia.client.options import ClientOptions
from pyxia.client.results import (
    EXPECTED_RECORD_DOES_NOT_EXIST,
    ComparisonType,
    GetResult,
    Notification,
    NotificationBatch,
    NotificationType,
    PutResult,
    SessionEvent,
    SessionState,
    Version,
)
from pyxia.client.sync_client import Client, SyncNotifications, SyncSequenceUpdates
from pyxia.errors import (
    InvalidArgument,
    NamespaceNotFound,
    NodeIsNotLeader,
    NotificationsNotEnabled,
    PermissionDenied,
    PyxiaError,
    SessionNotFound,
    Unauthenticated,
)
from pyxia.security.tls import TlsOptions

__all__ = [
    "EXPECTED_RECORD_DOES_NOT_EXIST",
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ClientOptions",
    "ComparisonType",
    "GetResult",
    "InvalidArgument",
    "InvalidOptions",
    "KeyNotFound",
    "NamespaceNotFound",
    "NodeIsNotLeader",
    "Notification",
    "NotificationBatch",
    "NotificationType",
    "Notifications",
    "NotificationsNotEnabled",
    "PermissionDenied",
    "PutResult",
    "PyxiaError",
    "RequestIndeterminate",
    "RequestTimeout",
    "SequenceUpdates",
    "SessionEvent",
    "SessionNotFound",
    "SessionState",
    "SyncNotifications",
    "SyncSequenceUpdates",
    "TlsOptions",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedVersion",
    "UnexpectedVersionId",
    "Version",
]
