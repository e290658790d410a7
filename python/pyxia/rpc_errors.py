"""gRPC statuses back into domain errors (the client-side translation
point, used by pyxia's internal clients: follower cursors, the
coordinator, tools). The server side is ``pyxia.server.grpc_errors``."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from pyxia.errors import (
    ERROR_DOMAIN,
    Cancelled,
    PyxiaError,
    ResourceUnavailable,
    from_legacy_code,
    from_reason,
)

DETAILS_KEY = "grpc-status-details-bin"


def _error_info(trailers: Any) -> error_details_pb2.ErrorInfo | None:
    for key, value in trailers or ():
        if key != DETAILS_KEY:
            continue
        st = status_pb2.Status.FromString(value)
        for d in st.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None


def error_from_status(code: grpc.StatusCode, details: str | None, trailers: Any) -> Exception:
    """The domain error a status stands for; transport failures become
    ResourceUnavailable (retryable), anything else a plain PyxiaError."""
    message = details or ""
    info = _error_info(trailers)
    if info is not None:
        return from_reason(info.reason, message, dict(info.metadata))
    legacy = from_legacy_code(code.value[0] if isinstance(code.value, tuple) else -1, message)
    if legacy is not None:
        return legacy
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ResourceUnavailable(message or code.name)
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(message or "cancelled")
    err = PyxiaError(f"{code.name}: {message}")
    return err


def error_from_rpc(e: grpc.RpcError) -> Exception:
    if isinstance(e, grpc.aio.AioRpcError):
        return error_from_status(e.code(), e.details(), e.trailing_metadata())
    if isinstance(e, grpc.Call):
        return error_from_status(e.code(), e.details(), e.trailing_metadata())
    return ResourceUnavailable(str(e))
