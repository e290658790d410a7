"""The one place where domain errors become gRPC statuses (Oxia 0.17 form:
standard code + ``google.rpc.ErrorInfo{domain: "oxia.io", reason, metadata}``
in the ``grpc-status-details-bin`` trailer)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from pyxia.errors import ERROR_DOMAIN, PyxiaError

DETAILS_KEY = "grpc-status-details-bin"


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


async def abort(context: grpc.aio.ServicerContext[object, object], err: PyxiaError) -> None:
    """Ends the RPC with the error's status. Never returns."""
    await context.abort(status_code(err), str(err), trailing_metadata=to_trailers(err))
