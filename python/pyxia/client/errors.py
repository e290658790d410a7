"""The client's errors and the per-operation statuses of the client API.

Every class here is one of pyxia's domain errors (:mod:`pyxia.errors`), re-exported where the
client's users look for them; a failed call becomes one of them through the one translation
of statuses, :func:`pyxia.common.grpc_errors.error_from_rpc` (re-exported here). This module
adds what only the client has: :class:`InvalidOptions` and :func:`status_error`, the error of
a per-operation status inside a successful response."""

from __future__ import annotations

from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import (
    ClientClosed,
    InvalidArgument,
    KeyNotFound,
    PermissionDenied,
    PyxiaError,
    RequestIndeterminate,
    RequestTimeout,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    UnexpectedVersion,
    UnexpectedVersionId,
)
from pyxia.proto import client_pb2

__all__ = [
    "ClientClosed",
    "InvalidOptions",
    "KeyNotFound",
    "PermissionDenied",
    "RequestIndeterminate",
    "RequestTimeout",
    "SessionNotFound",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedVersion",
    "UnexpectedVersionId",
    "error_from_rpc",
    "status_error",
]


class InvalidOptions(InvalidArgument):
    """The call's options do not go together (raised before anything is sent)."""


def status_error(status: int, key: str) -> PyxiaError:
    """The error for a per-operation status other than OK."""
    if status == client_pb2.KEY_NOT_FOUND:
        return KeyNotFound(f"oxia: key not found: {key!r}")
    if status == client_pb2.UNEXPECTED_VERSION_ID:
        return UnexpectedVersion(f"oxia: unexpected version id for key {key!r}")
    if status == client_pb2.SESSION_DOES_NOT_EXIST:
        return SessionNotFound(f"oxia: session does not exist (key {key!r})")
    if status == client_pb2.INVALID_ARGUMENT:
        return InvalidArgument(f"oxia: invalid argument (key {key!r})")
    return PyxiaError(f"oxia: unknown status {status} for key {key!r}")
