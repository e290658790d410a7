"""The client's errors, and the one place where the client turns gRPC statuses and per-operation
statuses back into domain errors (the server side is ``pyxia.server.grpc_errors``)."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from pyxia.errors import (
    ERROR_DOMAIN,
    InvalidArgument,
    PermissionDenied,
    PyxiaError,
    SessionNotFound,
    Unauthenticated,
    from_legacy_code,
    from_reason,
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
    "error_from_rpc",
    "status_error",
]

_DETAILS_KEY = "grpc-status-details-bin"


class KeyNotFound(PyxiaError):
    """No record has the key (or none matched the comparison)."""

    reason = "KEY_NOT_FOUND"
    grpc_code = "NOT_FOUND"


class UnexpectedVersion(PyxiaError):
    """The record's version is not the expected one (or it exists though it must not)."""

    reason = "UNEXPECTED_VERSION_ID"
    grpc_code = "FAILED_PRECONDITION"


UnexpectedVersionId = UnexpectedVersion


class InvalidOptions(InvalidArgument):
    """The call's options do not go together (raised before anything is sent)."""


class RequestTimeout(PyxiaError, TimeoutError):
    """The request did not complete within its deadline (``request_timeout_s``)."""

    reason = "DEADLINE_EXCEEDED"
    grpc_code = "DEADLINE_EXCEEDED"


class ClientClosed(PyxiaError):
    reason = "CLIENT_CLOSED"
    grpc_code = "CANCELLED"


class Unavailable(PyxiaError):
    """The server could not be reached, or the connection broke."""

    reason = "UNAVAILABLE"
    grpc_code = "UNAVAILABLE"
    retryable = True


class RequestIndeterminate(PyxiaError):
    """A conditional or sequential write was sent, then the connection broke before its answer:
    it may or may not have been applied. Read the key to find out (retrying could apply it
    twice or report a false conflict)."""

    reason = "INDETERMINATE"
    grpc_code = "UNAVAILABLE"


def error_from_rpc(e: BaseException) -> PyxiaError:
    """The domain error a failed RPC carried (Oxia 0.17 ErrorInfo, or an Oxia <= 0.16 custom
    code), else a transport error."""
    if not isinstance(e, grpc.RpcError):
        return Unavailable(f"oxia: {type(e).__name__}: {e}")
    call: Any = e
    try:
        code = call.code()
        details = call.details() or ""
        trailers = call.trailing_metadata() or ()
    except Exception:  # pragma: no cover - not a call
        return Unavailable(f"oxia: {e}")
    for item in trailers:
        k, v = item[0], item[1]
        if k != _DETAILS_KEY or not isinstance(v, bytes):
            continue
        st = status_pb2.Status.FromString(v)
        for d in st.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info) and info.domain == ERROR_DOMAIN:
                return from_reason(info.reason, details or st.message, dict(info.metadata))
    value = code.value[0] if isinstance(code, grpc.StatusCode) else code
    if isinstance(value, int) and value >= 100:
        legacy = from_legacy_code(value, details)
        if legacy is not None:
            return legacy
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RequestTimeout(f"oxia: deadline exceeded: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details or "oxia: invalid argument")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"oxia: unauthenticated: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"oxia: permission denied: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        from pyxia.errors import RequestTooLarge

        return RequestTooLarge(details or "oxia: request too large")
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return Unavailable(f"oxia: {name}: {details}")


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
