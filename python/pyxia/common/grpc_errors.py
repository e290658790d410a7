"""The one translation between domain errors (:mod:`pyxia.errors`) and gRPC statuses, both
ways.

Out (servers): a domain error becomes its standard gRPC code, its message, and a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer carrying
``google.rpc.ErrorInfo{domain: "oxia.io", reason, metadata}`` (Oxia 0.17's form).

In (every client: the public client, the TSO client, the coordinator's calls to data servers,
a leader's calls to its followers): a failed call becomes

1. the error its ErrorInfo reason names (any class registered by being defined, see
   :mod:`pyxia.errors`), with the metadata it carries (shard, leader hint);
2. else the error of an Oxia <= 0.16 custom status code (100 and up);
3. else the error the caller's protocol gives a bare standard code (``codes``; the default
   is Oxia's, :data:`OXIA_CODES`; tsoracle's servers send bare codes, see
   ``pyxia.tso.client``);
4. else :class:`~pyxia.errors.Unavailable`: the call failed in transport (connection broken,
   cancelled, an internal error of a peer that said nothing more).

Invariants: every failure becomes a :class:`~pyxia.errors.PyxiaError`; a status made by
:func:`to_trailers` decodes back to an error of the same class and metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from pyxia.errors import (
    ERROR_DOMAIN,
    InvalidArgument,
    PermissionDenied,
    PyxiaError,
    RequestTimeout,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
    from_legacy_code,
    from_reason,
)

DETAILS_KEY = "grpc-status-details-bin"

_LEGACY_CODES_FROM = 100

# -- out: domain error -> status ------------------------------------------------------------------


def status_code(err: PyxiaError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.grpc_code, grpc.StatusCode.UNKNOWN)


def to_trailers(err: PyxiaError) -> tuple[tuple[str, bytes], ...]:
    """The status-details trailer carrying the ErrorInfo."""
    info = error_details_pb2.ErrorInfo(
        reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    st = status_pb2.Status(code=status_code(err).value[0], message=str(err), details=[detail])
    return ((DETAILS_KEY, st.SerializeToString()),)


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: PyxiaError) -> None:
    """Ends the RPC with the error's status. Never returns."""
    await context.abort(status_code(err), str(err), trailing_metadata=to_trailers(err))


# -- in: status -> domain error -------------------------------------------------------------------

OXIA_CODES: Mapping[grpc.StatusCode, tuple[type[PyxiaError], str]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: (RequestTimeout, "oxia: deadline exceeded"),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidArgument, ""),
    grpc.StatusCode.UNAUTHENTICATED: (Unauthenticated, "oxia: unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDenied, "oxia: permission denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (RequestTooLarge, ""),
}
"""What a bare standard code means from an Oxia server (or from gRPC itself): the error class
and the prefix of its message ("": the status message alone)."""


def error_info(trailers: Any) -> error_details_pb2.ErrorInfo | None:
    """The ``oxia.io`` ErrorInfo in a call's trailing metadata, if any."""
    for item in trailers or ():
        key, value = item[0], item[1]
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            st = status_pb2.Status.FromString(value)
        except Exception:  # malformed details from a peer: as if there were none
            return None
        for d in st.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None


def coordinator_leader_hint(trailers: Any) -> str | None:
    """The leading coordinator's admin address that a coordinator which does not lead sends
    with NODE_IS_NOT_LEADER (Oxia's "coordinator-leader" ErrorInfo metadata), if any."""
    info = error_info(trailers)
    if info is None or info.reason != "NODE_IS_NOT_LEADER":
        return None
    return info.metadata.get("coordinator-leader") or None


def error_from_status(
    code: grpc.StatusCode,
    details: str | None,
    trailers: Any,
    codes: Mapping[grpc.StatusCode, tuple[type[PyxiaError], str]] = OXIA_CODES,
) -> PyxiaError:
    """The domain error a failed call's status stands for (see the module docstring)."""
    message = details or ""
    info = error_info(trailers)
    if info is not None:
        return from_reason(info.reason, message, dict(info.metadata))
    value = code.value[0] if isinstance(code, grpc.StatusCode) else code
    if isinstance(value, int) and value >= _LEGACY_CODES_FROM:
        legacy = from_legacy_code(value, message)
        if legacy is not None:
            return legacy
    known = codes.get(code)
    if known is not None:
        cls, prefix = known
        if not prefix:
            return cls(message)
        return cls(f"{prefix}: {message}" if message else prefix)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return Unavailable(f"oxia: {name}: {message}")


def error_from_rpc(
    e: BaseException, codes: Mapping[grpc.StatusCode, tuple[type[PyxiaError], str]] = OXIA_CODES
) -> PyxiaError:
    """The domain error a failed call carried; anything that is not a call's error (the
    channel broke before a status) is :class:`~pyxia.errors.Unavailable`."""
    if isinstance(e, PyxiaError):
        return e
    if not isinstance(e, grpc.RpcError):
        return Unavailable(f"oxia: {type(e).__name__}: {e}")
    call: Any = e  # grpc.aio.AioRpcError, or a grpc.Call of the sync API
    try:
        code, details, trailers = call.code(), call.details(), call.trailing_metadata()
    except Exception:  # an RpcError that is no call: it never got a status
        return Unavailable(f"oxia: {e}")
    return error_from_status(code, details, trailers, codes)


__all__ = [
    "DETAILS_KEY",
    "OXIA_CODES",
    "abort",
    "error_from_rpc",
    "error_from_status",
    "error_info",
    "status_code",
    "to_trailers",
]
