"""pyxia: a sharded, replicated metadata store and coordination service.

pyxia speaks Oxia's client protocol; its write-ahead log is written in Rust
(``pyxia._native``). The client (``pyxia.Client``, ``pyxia.AsyncClient`` and their result
and error types) is imported on first use, so server processes do not load it; so are the
timestamp oracle's clients (``pyxia.TsoClient``, ``pyxia.AsyncTsoClient``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyxia.version import __version__

if TYPE_CHECKING:
    from pyxia.client import (
        EXPECTED_RECORD_DOES_NOT_EXIST,
        AsyncClient,
        Client,
        ClientClosed,
        ClientOptions,
        ComparisonType,
        GetResult,
        InvalidOptions,
        KeyNotFound,
        Notification,
        NotificationBatch,
        NotificationType,
        PermissionDenied,
        PutResult,
        RequestIndeterminate,
        RequestTimeout,
        SessionEvent,
        SessionNotFound,
        SessionState,
        TlsOptions,
        Unauthenticated,
        Unavailable,
        UnexpectedVersion,
        UnexpectedVersionId,
        Version,
    )
    from pyxia.tso.client import AsyncTsoClient, TimestampFallback, TsoClient

_TSO_NAMES = frozenset({"AsyncTsoClient", "TimestampFallback", "TsoClient"})

_CLIENT_NAMES = frozenset(
    {
        "EXPECTED_RECORD_DOES_NOT_EXIST",
        "AsyncClient",
        "Client",
        "ClientClosed",
        "ClientOptions",
        "ComparisonType",
        "GetResult",
        "InvalidOptions",
        "KeyNotFound",
        "Notification",
        "NotificationBatch",
        "NotificationType",
        "PermissionDenied",
        "PutResult",
        "RequestIndeterminate",
        "RequestTimeout",
        "SessionEvent",
        "SessionNotFound",
        "SessionState",
        "TlsOptions",
        "Unauthenticated",
        "Unavailable",
        "UnexpectedVersion",
        "UnexpectedVersionId",
        "Version",
    }
)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import pyxia.client

        return getattr(pyxia.client, name)
    if name in _TSO_NAMES:
        import pyxia.tso.client

        return getattr(pyxia.tso.client, name)
    raise AttributeError(f"module 'pyxia' has no attribute {name!r}")


__all__ = [
    "EXPECTED_RECORD_DOES_NOT_EXIST",
    "AsyncClient",
    "AsyncTsoClient",
    "Client",
    "ClientClosed",
    "ClientOptions",
    "ComparisonType",
    "GetResult",
    "InvalidOptions",
    "KeyNotFound",
    "Notification",
    "NotificationBatch",
    "NotificationType",
    "PermissionDenied",
    "PutResult",
    "RequestIndeterminate",
    "RequestTimeout",
    "SessionEvent",
    "SessionNotFound",
    "SessionState",
    "TimestampFallback",
    "TlsOptions",
    "TsoClient",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedVersion",
    "UnexpectedVersionId",
    "Version",
    "__version__",
]
