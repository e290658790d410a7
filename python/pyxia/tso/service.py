"""``tsoracle.v1.TsoService/GetTs`` on a data server's public port.

Every data server registers it; only the leader of the TSO shard grants (once its fence is
done). Anyone else answers ``FAILED_PRECONDITION`` with the ``tsoracle-leader-hint-bin``
trailer: a protobuf ``LeaderHint`` naming the leader's public address (scheme-less
``host:port``) when known — this node itself while its fence runs, else the leader in the
pushed shard assignments — and its epoch when this node knows it. Transient failures are
``UNAVAILABLE``; a node whose oracle stopped after a permanent error answers ``INTERNAL``.
With authentication on the public port, the caller needs ``write`` in the TSO namespace
(``PERMISSION_DENIED`` otherwise); the token itself is checked by the port's interceptor.

Failpoint: ``service.before_allocate`` (in the handler, before the allocator is asked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pyxia.errors import InvalidArgument, PyxiaError
from pyxia.failpoints import FailpointError, afailpoint
from pyxia.proto import tso_pb2
from pyxia.security.policy import WRITE
from pyxia.security.public import PublicAccess
from pyxia.server import grpc_errors
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.shards_director import ShardsDirector
from pyxia.tso import metrics as m
from pyxia.tso.allocator import MAX_COUNT
from pyxia.tso.driver import DirectorLeadership, ShardDriver, controller_leads
from pyxia.tso.errors import TsoNotLeader, TsoUnavailable
from pyxia.tso.fence import LeaderWatch
from pyxia.tso.oracle import Oracle, TsoOptions

SERVICE_NAME = "tsoracle.v1.TsoService"
LEADER_HINT_KEY = "tsoracle-leader-hint-bin"
_U64 = (1 << 64) - 1

Ctx = grpc.aio.ServicerContext[Any, Any]


def epoch_halves(epoch: int) -> tuple[int, int]:
    """The 128-bit epoch as ``(hi, lo)``."""
    return (epoch >> 64) & _U64, epoch & _U64


def leader_hint_bytes(endpoint: str | None, epoch: int | None) -> bytes:
    hint = tso_pb2.LeaderHint()
    if endpoint:
        hint.leader_endpoint = endpoint
    if epoch is not None:
        hi, lo = epoch_halves(epoch)
        hint.leader_epoch.hi = hi
        hint.leader_epoch.lo = lo
    return hint.SerializeToString()


def error_trailers(err: PyxiaError) -> tuple[tuple[str, bytes], ...]:
    trailers = grpc_errors.to_trailers(err)
    if isinstance(err, TsoNotLeader):
        hint = leader_hint_bytes(err.leader_endpoint, err.leader_epoch)
        trailers = (*trailers, (LEADER_HINT_KEY, hint))
    return trailers


class TsoService:
    """The oracle of one node: the GetTs handler, the :class:`Oracle` and the
    :class:`LeaderWatch` that fences it. ``start``/``close``; closing twice is safe."""

    def __init__(self, oracle: Oracle, watch: LeaderWatch) -> None:
        self.oracle = oracle
        self.watch = watch
        self.access: PublicAccess | None = None
        """Set by the data server: GetTs needs ``write`` in the TSO namespace."""

    @classmethod
    def for_data_server(
        cls,
        director: ShardsDirector,
        assignments: AssignmentsDispatcher,
        public_address: Callable[[], str],
        options: TsoOptions | None = None,
    ) -> TsoService:
        options = options or TsoOptions()
        leadership = DirectorLeadership(director, assignments, options.namespace)
        oracle = Oracle(
            ShardDriver(options.persist_timeout_s),
            options,
            self_endpoint=public_address,
            leader_hint=leadership.assigned_leader,
            still_leading=controller_leads,
        )
        return cls(oracle, LeaderWatch(oracle, leadership))

    def start(self) -> None:
        self.watch.start()

    async def close(self) -> None:
        await self.watch.close()
        await self.oracle.close()

    # -- GetTs ------------------------------------------------------------------------------------

    async def get_ts(self, raw: bytes, context: Ctx) -> bytes:
        try:
            try:
                count = tso_pb2.GetTsRequest.FromString(raw).count
            except DecodeError:
                raise InvalidArgument("tso: undecodable GetTsRequest") from None
            if self.access is not None:
                self.access.check(self.oracle.options.namespace, WRITE)
            if not 1 <= count <= MAX_COUNT:
                raise InvalidArgument(f"tso: count must be between 1 and {MAX_COUNT}, got {count}")
            await afailpoint("service.before_allocate")
            oracle = self.oracle
            g = oracle.try_grant(count)
            if g is None:
                g = await oracle.grant(count)
        except PyxiaError as e:
            await self._abort(context, e)
            raise  # unreachable: abort raises
        except FailpointError as e:
            await self._abort(context, TsoUnavailable(f"tso: {e}"))
            raise
        m.GRANTS.inc()
        m.TIMESTAMPS.inc(count)
        epoch = g.epoch
        return tso_pb2.GetTsResponse(
            physical_ms=g.physical_ms,
            logical_start=g.logical_start,
            count=count,
            epoch_hi=(epoch >> 64) & _U64,
            epoch_lo=epoch & _U64,
        ).SerializeToString()

    async def _abort(self, context: Ctx, err: PyxiaError) -> None:
        if isinstance(err, TsoNotLeader):
            m.NOT_LEADER.inc()
        elif not isinstance(err, TsoUnavailable):
            m.ERRORS.labels("invalid" if isinstance(err, InvalidArgument) else "internal").inc()
        await context.abort(
            grpc_errors.status_code(err), str(err), trailing_metadata=error_trailers(err)
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "GetTs": grpc.unary_unary_rpc_method_handler(
                    self.get_ts, request_deserializer=None, response_serializer=None
                )
            },
        )
