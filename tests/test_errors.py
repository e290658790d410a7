"""The one translation of errors to gRPC statuses and back (pyxia.common.grpc_errors), and the
registry of reasons that error classes fill when they are defined (pyxia.errors)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

import pyxia.client.recipes.lock
import pyxia.tso.errors
from pyxia import errors
from pyxia.client import errors as client_errors
from pyxia.common.grpc_errors import (
    DETAILS_KEY,
    error_from_rpc,
    error_from_status,
    error_info,
    status_code,
    to_trailers,
)
from pyxia.errors import (
    InvalidArgument,
    NodeIsNotLeader,
    PermissionDenied,
    PyxiaError,
    RequestTimeout,
    RequestTooLarge,
    ShardNotFound,
    Unauthenticated,
    Unavailable,
    from_reason,
)
from pyxia.tso import client as tso_client
from pyxia.tso.errors import SeqOverflow, TsoNotLeader


def _all_error_classes() -> list[type[PyxiaError]]:
    out: list[type[PyxiaError]] = []
    todo = [PyxiaError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("pyxia."):
                out.append(sub)
                todo.append(sub)
    return out


def _registered() -> list[type[PyxiaError]]:
    """The classes that set their own reason (the others share their parent's on the wire)."""
    return [c for c in _all_error_classes() if "reason" in c.__dict__]


def _build(cls: type[PyxiaError]) -> PyxiaError:
    if cls is NodeIsNotLeader:
        return NodeIsNotLeader("not me", shard=7, leader_hint="host:6648")
    if cls is TsoNotLeader:
        return TsoNotLeader("not me", leader_endpoint="host:6648")
    return cls("boom", shard=3)


def test_every_module_with_errors_is_imported() -> None:
    """The classes below come from every module that defines errors (the registry is filled
    by definition, so a module nobody imported would be missing here)."""
    modules = {c.__module__ for c in _registered()}
    assert {"pyxia.errors", "pyxia.tso.errors", pyxia.client.recipes.lock.__name__} <= modules
    assert pyxia.tso.errors.TsoFailed in _registered()


@pytest.mark.parametrize("cls", _registered(), ids=lambda c: c.__name__)
def test_a_status_decodes_back_to_the_error_it_was_made_from(cls: type[PyxiaError]) -> None:
    err = _build(cls)
    back = error_from_status(status_code(err), str(err), to_trailers(err))
    assert type(back) is cls
    assert str(back) == str(err)
    assert back.metadata == err.metadata


def test_the_leader_hints_survive_the_round_trip() -> None:
    back = error_from_status(
        grpc.StatusCode.ABORTED, "x", to_trailers(NodeIsNotLeader("x", leader_hint="a:1"))
    )
    assert isinstance(back, NodeIsNotLeader) and back.leader_hint == "a:1"
    tso = error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "x",
        to_trailers(TsoNotLeader("x", leader_endpoint="b:2")),
    )
    assert isinstance(tso, TsoNotLeader) and tso.leader_endpoint == "b:2"


def test_the_client_errors_are_the_shared_ones() -> None:
    """The public client re-exports the vocabulary's classes: one class per reason."""
    for name in ("KeyNotFound", "UnexpectedVersion", "RequestTimeout", "Unavailable"):
        assert getattr(client_errors, name) is getattr(errors, name)
    assert client_errors.error_from_rpc is error_from_rpc
    assert isinstance(from_reason("KEY_NOT_FOUND", "k"), errors.KeyNotFound)
    assert isinstance(from_reason("TSO_SEQ_OVERFLOW"), SeqOverflow)


def test_legacy_codes_still_decode() -> None:
    """Oxia <= 0.16 custom codes (100+) without ErrorInfo, as a raw status code."""
    seen = 0
    for cls in _all_error_classes():
        code = cls.__dict__.get("legacy_code")
        if code is None:
            continue
        seen += 1
        err = error_from_status(code, "old server", ())  # type: ignore[arg-type]
        assert type(err) is cls
    assert seen == 13  # 100..112


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, RequestTimeout),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RequestTooLarge),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.CANCELLED, Unavailable),
        (grpc.StatusCode.INTERNAL, Unavailable),
    ],
)
def test_a_bare_code_is_a_transport_error(code: grpc.StatusCode, cls: type[PyxiaError]) -> None:
    err = error_from_status(code, "details", ())
    assert type(err) is cls
    assert "details" in str(err)


def test_the_tsoracle_codes_are_definite_refusals() -> None:
    """tsoracle's servers send bare codes: its client's table wins over the transport
    fallback; pyxia's servers add the ErrorInfo, which wins over both."""
    bare = error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION, "seq at max", (), tso_client._DEFINITE_CODES
    )
    assert type(bare) is PyxiaError and str(bare) == "tso: seq at max"
    exact = error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "seq at max",
        to_trailers(SeqOverflow("seq at max")),
        tso_client._DEFINITE_CODES,
    )
    assert type(exact) is SeqOverflow


def test_what_is_no_call_error_is_unavailable() -> None:
    assert isinstance(error_from_rpc(ConnectionResetError("gone")), Unavailable)
    own = ShardNotFound("x")
    assert error_from_rpc(own) is own


class _Call(grpc.RpcError):
    def __init__(self, trailers: Any) -> None:
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.ABORTED

    def details(self) -> str:
        return "d"

    def trailing_metadata(self) -> Any:
        return self._trailers


def test_a_call_error_is_decoded() -> None:
    err = error_from_rpc(_Call(to_trailers(NodeIsNotLeader("d", leader_hint="h:1"))))
    assert isinstance(err, NodeIsNotLeader) and err.leader_hint == "h:1"


@given(st.binary(max_size=64))
def test_malformed_details_are_ignored(raw: bytes) -> None:
    """A peer's status details are hostile bytes: garbage decodes as no details."""
    err = error_from_status(grpc.StatusCode.UNAVAILABLE, "x", ((DETAILS_KEY, raw),))
    assert isinstance(err, PyxiaError)


def test_only_the_oxia_domain_counts() -> None:
    info = error_details_pb2.ErrorInfo(reason="SHARD_NOT_FOUND", domain="example.com")
    st_ = status_pb2.Status(code=5, message="x")
    st_.details.add().Pack(info)
    trailers = ((DETAILS_KEY, st_.SerializeToString()),)
    assert error_info(trailers) is None
    assert isinstance(error_from_status(grpc.StatusCode.NOT_FOUND, "x", trailers), Unavailable)


def test_a_reason_belongs_to_one_class() -> None:
    with pytest.raises(TypeError, match="SHARD_NOT_FOUND"):

        class _Again(PyxiaError):
            reason = "SHARD_NOT_FOUND"

    with pytest.raises(TypeError, match="106"):

        class _Legacy(PyxiaError):
            reason = "SOMETHING_ELSE_ENTIRELY"
            legacy_code = 106

    # A subclass that keeps its parent's reason is not a second owner of it.
    class _Narrower(ShardNotFound):
        pass

    assert type(from_reason("SHARD_NOT_FOUND")) is ShardNotFound
