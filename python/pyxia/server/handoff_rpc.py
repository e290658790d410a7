"""``pyxia.admin.v1.Handoff`` on the internal port: the leader's side of a planned move.

The coordinator calls ``StepDown(namespace, shard, term, drain_timeout_ms)`` on the leader
before it starts the next term of a shard it moves on purpose; the leader refuses new writes
(retryable NODE_IS_NOT_LEADER), finishes what it logged, and answers with its head entry id
(see ``handoff.py`` for the rules). Nothing is created by this call: it only finds an existing
leader controller. Like every coordination call it is accepted only from this server's cluster
(the instance id bound by the Handshake, checked by ``InternalService``'s caller check, behind
the internal port's membership proof), and every field is checked before it is used; malformed
bytes are INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from pyxia.common.handoff_protocol import MAX_DRAIN_S, SERVICE
from pyxia.common.validation import check_namespace, check_shard_id, check_term
from pyxia.errors import InvalidArgument, NodeIsNotLeader, NodeIsNotMember
from pyxia.proto import admin_pb2
from pyxia.server.internal_rpc import decode
from pyxia.server.public_rpc import Ctx, _serialize, _unary
from pyxia.server.shards_director import ShardsDirector


def check_request(req: admin_pb2.StepDownRequest) -> float:
    """Validates a StepDown request; returns its drain in seconds."""
    check_namespace(req.namespace)
    check_shard_id(req.shard)
    check_term(req.term)
    if not 0 <= req.drain_timeout_ms <= MAX_DRAIN_S * 1000:
        raise InvalidArgument(
            f"oxia: StepDown drain of {req.drain_timeout_ms} ms is out of "
            f"[0, {int(MAX_DRAIN_S * 1000)}]"
        )
    return req.drain_timeout_ms / 1000.0


class HandoffService:
    def __init__(self, director: ShardsDirector, verify_caller: Callable[[Ctx], None]) -> None:
        self.director = director
        self.verify_caller = verify_caller

    @_unary
    async def step_down(self, raw: bytes, context: Ctx) -> admin_pb2.StepDownResponse:
        self.verify_caller(context)
        req = decode(admin_pb2.StepDownRequest, raw)
        drain_s = check_request(req)
        lc = self.director.leaders.get(req.shard)
        if lc is None:
            if req.shard in self.director.followers:
                raise NodeIsNotLeader(
                    f"oxia: node is not leader for shard {req.shard}", shard=req.shard
                )
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {req.shard}", shard=req.shard
            )
        if lc.namespace != req.namespace:
            raise InvalidArgument(
                f"oxia: shard {req.shard} belongs to namespace {lc.namespace!r}, "
                f"not {req.namespace!r}",
                shard=req.shard,
            )
        head, drained = await lc.step_down(req.term, drain_s)
        return admin_pb2.StepDownResponse(
            head_term=head.term, head_offset=head.offset, drained=drained
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "StepDown": grpc.unary_unary_rpc_method_handler(
                self.step_down,
                request_deserializer=None,
                response_serializer=_serialize,
            )
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)
