"""One coordination call from the coordinator to a data server, and the options a NewTerm sends.

Shared by the shard controllers (elections, membership, deletion) and the split controllers.
Every call:

- handshakes the server first if it is not bound to this cluster (``ensure_bound``): a data
  server refuses coordination calls before its first Handshake;
- carries the cluster's instance-id header (``call_metadata``);
- holds one of the server's call slots (``call_slots``) while in flight, so a cold start or a
  server's death cannot put thousands of calls on one connection at once;
- turns a gRPC error into pyxia's error; ``NotInitialized`` (the server restarted unbound) also
  forgets the binding, so the next call handshakes again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc

from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.common.instance_id import CallMetadata
from pyxia.config import NamespaceConfig
from pyxia.errors import NotInitialized
from pyxia.proto import replication_pb2

COORD = "/replication.OxiaCoordination/"
"""The coordination service's method prefix."""
RPC_TIMEOUT_S = 10.0


class CallContext(Protocol):
    """What a coordination call needs of the coordinator."""

    channels: ChannelPool

    def call_metadata(self) -> CallMetadata: ...

    def call_slots(self, node: str) -> asyncio.Semaphore:
        """Bounds the coordination calls in flight to ``node``."""
        ...

    async def ensure_bound(self, node: str) -> None:
        """Handshakes ``node`` (the cluster's instance id) unless it already is."""
        ...

    def forget_binding(self, node: str) -> None: ...


def _serialize(m: Any) -> bytes:
    out: bytes = m.SerializeToString()
    return out


async def coordination_call(
    c: CallContext,
    node: str,
    method: str,
    req: object,
    resp_type: Any,
    timeout: float = RPC_TIMEOUT_S,
) -> Any:
    """Calls ``method`` (a name of the coordination service, or a full ``/service/method``
    path) on ``node``; returns the ``resp_type`` answer or raises pyxia's error."""
    await c.ensure_bound(node)
    call: grpc.aio.UnaryUnaryMultiCallable[object, object] = c.channels.get(node).unary_unary(
        method if method.startswith("/") else COORD + method,
        request_serializer=_serialize,
        response_deserializer=resp_type.FromString,
    )
    try:
        async with c.call_slots(node):
            return await call(req, timeout=timeout, metadata=c.call_metadata())
    except grpc.aio.AioRpcError as e:
        err = error_from_rpc(e)
        if isinstance(err, NotInitialized):
            c.forget_binding(node)  # restarted unbound: the next call handshakes
        raise err from e


def term_options(ns: NamespaceConfig | None) -> replication_pb2.NewTermOptions:
    """The replica options a NewTerm carries for a shard of namespace ``ns`` (notifications,
    key sorting; Oxia's defaults when the namespace is not configured)."""
    sorting = (
        replication_pb2.NATURAL
        if ns and ns.key_sorting == "natural"
        else replication_pb2.HIERARCHICAL
    )
    return replication_pb2.NewTermOptions(
        enable_notifications=ns.notifications_enabled if ns else True, key_sorting=sorting
    )
