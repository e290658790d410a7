"""Test-side gRPC stubs and servicers, built from the services' proto descriptors.

The package ships no generated ``*_pb2_grpc`` modules: pyxia registers its services with
generic handlers and calls its peers through channel methods. Tests and benchmarks that want a
plain stub (raw protocol calls, malformed requests) or a toy server use this module instead.

- :func:`bind_stub` gives an object with one multi-callable per method of a service, named as
  the ``.proto`` names it (``stub.Write(...)``, ``stub.WriteStream(iter(...))``), with the
  method's path and its request/response (de)serializers — what a generated stub holds. It works
  on ``grpc`` and ``grpc.aio`` channels alike.
- :func:`servicer_handler` registers an object's methods (same names) as a service on a
  ``grpc.server``; a method the object lacks is simply not served (the caller gets
  UNIMPLEMENTED from gRPC itself).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from pyxia.proto import client_compat_pb2, client_pb2, replication_pb2

OXIA_CLIENT = client_pb2.DESCRIPTOR.services_by_name["OxiaClient"]
OXIA_CLIENT_COMPAT = client_compat_pb2.DESCRIPTOR.services_by_name["OxiaClient"]
OXIA_COORDINATION = replication_pb2.DESCRIPTOR.services_by_name["OxiaCoordination"]


def _kind(m: MethodDescriptor) -> str:
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``."""
    return (
        ("stream" if m.client_streaming else "unary")
        + "_"
        + ("stream" if m.server_streaming else "unary")
    )


def bind_stub(channel: Any, service: ServiceDescriptor) -> Any:
    """An object with a multi-callable attribute per method of ``service`` on ``channel``."""
    stub = type(service.name + "Stub", (), {})()
    for m in service.methods:
        make = getattr(channel, _kind(m))
        setattr(
            stub,
            m.name,
            make(
                f"/{service.full_name}/{m.name}",
                request_serializer=GetMessageClass(m.input_type).SerializeToString,
                response_deserializer=GetMessageClass(m.output_type).FromString,
            ),
        )
    return stub


class OxiaClientStub:
    """Oxia's public client service (``io.streamnative.oxia.proto.OxiaClient``) on a channel."""

    def __init__(self, channel: Any) -> None:
        self.__dict__.update(vars(bind_stub(channel, OXIA_CLIENT)))

    def __getattr__(self, name: str) -> Any:  # for type checkers: every method is bound above
        raise AttributeError(name)


class OxiaCoordinationStub:
    """pyxia's internal coordination service (coordinator -> data server) on a channel."""

    def __init__(self, channel: Any) -> None:
        self.__dict__.update(vars(bind_stub(channel, OXIA_COORDINATION)))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def servicer_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """A generic handler serving ``servicer``'s methods named like ``service``'s."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for m in service.methods:
        behaviour = getattr(servicer, m.name, None)
        if behaviour is None:
            continue
        make = getattr(grpc, f"{_kind(m)}_rpc_method_handler")
        handlers[m.name] = make(
            behaviour,
            request_deserializer=GetMessageClass(m.input_type).FromString,
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
