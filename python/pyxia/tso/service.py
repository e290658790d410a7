"""``tsoracle.v1.TsoService`` on a data server's public port: every RPC of tsoracle-proto 1.3.x.

Every data server registers it; only the leader of the TSO shard serves (once its fence is
done: a call that reaches it during the fence waits for it, up to ``fence_hold_s``). Anyone
else answers the leader-only calls (GetTs, GetSeq, GetSeqBatch, AcquireLease,
RenewLease, ReleaseLease) with ``FAILED_PRECONDITION`` and the ``tsoracle-leader-hint-bin``
trailer: a protobuf ``LeaderHint`` naming the leader's public address (scheme-less
``host:port``) and its epoch when known — this node itself while its fence runs, else the
leader and term in the pushed shard assignments (nothing while the map names this node, which
does not serve: it is handing over). The two reads (GetCurrentMaxSafe, GetSafeFrontier) answer
0 with a zero epoch instead, as tsoracle's followers do.

Errors (tsoracle's codes; the ``oxia.io`` ErrorInfo detail travels along):

- ``INVALID_ARGUMENT``: an undecodable request, a count, key, holder or TTL out of bounds, an
  empty or oversized batch, a duplicate key;
- ``RESOURCE_EXHAUSTED``: a new sequence key or lease past its cap (nothing changed);
- ``FAILED_PRECONDITION`` *without* a hint trailer: a sequence counter would pass 2^64-1, a
  lower holder epoch, an expired or superseded lease (definite answers);
- ``NOT_FOUND``: RenewLease of an unknown lease;
- ``UNAVAILABLE``: a transient failure; for GetSeq/GetSeqBatch after the write was logged, an
  unknown outcome (the block may be spent: tsoracle's client reports it as ``SeqUncertain``);
- ``INTERNAL``: the oracle stopped on this node after a permanent error.

With authentication on the public port, the caller needs ``write`` in the TSO namespace
(``PERMISSION_DENIED`` otherwise); the token itself is checked by the port's interceptor.

With a TSO port (``TsoOptions.native_addr``, ``--tso-addr``; :mod:`pyxia.tso.native`), GetTs
is also served natively there from the same allocator; what the native side does not answer at
once comes to :meth:`TsoService.answer_get_ts`, which answers exactly as the public port would.

Failpoint: ``service.before_allocate`` (in the GetTs handler, before the allocator is asked; not
on the TSO port's native grants).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pyxia.common import grpc_errors
from pyxia.errors import InvalidArgument, PyxiaError
from pyxia.failpoints import FailpointError, afailpoint
from pyxia.proto import tso_pb2
from pyxia.security.policy import WRITE
from pyxia.security.public import PublicAccess
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.data_server import DataServer
from pyxia.server.leader_controller import LeaderController
from pyxia.server.shards_director import ShardsDirector
from pyxia.tso import metrics as m
from pyxia.tso.allocator import MAX_COUNT
from pyxia.tso.driver import DirectorLeadership, ShardDriver, controller_leads
from pyxia.tso.errors import TsoNotLeader, TsoUnavailable
from pyxia.tso.fence import LeaderWatch
from pyxia.tso.native import NativeAllocator, NativeTransport, Outcome, TsoAddress
from pyxia.tso.options import TsoOptions
from pyxia.tso.oracle import Oracle
from pyxia.tso.sequences import SeqEntry

SERVICE_NAME = "tsoracle.v1.TsoService"
LEADER_HINT_KEY = "tsoracle-leader-hint-bin"
_U64 = (1 << 64) - 1

Ctx = grpc.aio.ServicerContext[Any, Any]
M = TypeVar("M", bound=Message)


def wire_epoch(term: int | None) -> int:
    """The epoch on the wire for the TSO shard's ``term``: ``term + 1``, so that 0 (the first
    term of a fresh shard is 0) keeps tsoracle's meaning of "no epoch" (a follower's reads)."""
    return 0 if term is None else term + 1


def epoch_halves(term: int | None) -> tuple[int, int]:
    """The 128-bit wire epoch of ``term`` as ``(hi, lo)``."""
    epoch = wire_epoch(term)
    return (epoch >> 64) & _U64, epoch & _U64


def epoch_message(term: int) -> tso_pb2.EpochWire:
    hi, lo = epoch_halves(term)
    return tso_pb2.EpochWire(hi=hi, lo=lo)


def leader_hint_bytes(endpoint: str | None, term: int | None) -> bytes:
    hint = tso_pb2.LeaderHint()
    if endpoint:
        hint.leader_endpoint = endpoint
    if term is not None:
        hint.leader_epoch.CopyFrom(epoch_message(term))
    return hint.SerializeToString()


def error_trailers(err: PyxiaError) -> tuple[tuple[str, bytes], ...]:
    trailers = grpc_errors.to_trailers(err)
    if isinstance(err, TsoNotLeader):
        hint = leader_hint_bytes(err.leader_endpoint, err.leader_epoch)
        trailers = (*trailers, (LEADER_HINT_KEY, hint))
    return trailers


def _decode(cls: type[M], raw: bytes) -> M:
    try:
        return cls.FromString(raw)
    except DecodeError:
        raise InvalidArgument(f"tso: undecodable {cls.DESCRIPTOR.name}") from None


class TsoService:
    """The oracle of one node: the RPC handlers, the :class:`Oracle` and the
    :class:`LeaderWatch` that fences it. ``start``/``close``; closing twice is safe."""

    def __init__(self, oracle: Oracle, watch: LeaderWatch) -> None:
        self.oracle = oracle
        self.watch = watch
        self.transport: NativeTransport | None = None
        """The native TSO port (``options.native_addr``), started with the service."""
        native = oracle.allocator
        addr = oracle.options.native_addr
        if addr and isinstance(native, NativeAllocator):
            self.transport = NativeTransport(
                native, TsoAddress.parse(addr), self.answer_get_ts, oracle.options.native_workers
            )
        self.access: PublicAccess | None = None
        """Every call needs ``write`` in the TSO namespace (:meth:`on_data_server`: the
        server's)."""

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
            leader_hint=leadership.assigned,
            still_leading=controller_leads,
            allocator=NativeAllocator(options.window_ahead_ms) if options.native_addr else None,
        )

        def before_step_down(lc: LeaderController) -> None:
            if lc.namespace == options.namespace:
                oracle.release_for_handoff(lc, lc.term)

        director.before_step_down.append(before_step_down)
        return cls(oracle, LeaderWatch(oracle, leadership))

    @classmethod
    def on_data_server(cls, server: DataServer, options: TsoOptions) -> TsoService:
        """The oracle of ``server`` (a :data:`~pyxia.server.data_server.ExtensionFactory`
        once ``options`` are bound: see :func:`pyxia.node.data_server`), answering calls
        authorized by the server's public access."""
        svc = cls.for_data_server(
            server.director, server.assignments, lambda: server.public_address, options
        )
        svc.access = server.public_access
        return svc

    @classmethod
    def of(cls, server: DataServer) -> TsoService | None:
        """The oracle serving on ``server``, if it has one."""
        return next((e for e in server.extensions if isinstance(e, cls)), None)

    def start(self) -> None:
        """Starts the fence's watch and the TSO port (raises TransportError if it cannot
        listen)."""
        if self.transport is not None:
            self.transport.start()
        self.watch.start()

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()
        await self.watch.close()
        await self.oracle.close()

    def _check_access(self) -> None:
        if self.access is not None:
            self.access.check(self.oracle.options.namespace, WRITE)

    async def _serve(self, context: Ctx, rpc: str, call: Callable[[], Awaitable[bytes]]) -> bytes:
        """Runs a handler; a domain error ends the call with its status (and hint)."""
        try:
            self._check_access()
            out = await call()
        except PyxiaError as e:
            await self._abort(context, e)
            raise  # unreachable: abort raises
        except FailpointError as e:
            await self._abort(context, TsoUnavailable(f"tso: {e}"))
            raise
        m.CALLS.labels(rpc).inc()
        return out

    # -- GetTs ------------------------------------------------------------------------------------

    async def get_ts(self, raw: bytes, context: Ctx) -> bytes:
        try:
            return await self._get_ts(raw)
        except PyxiaError as e:
            await self._abort(context, e)
            raise  # unreachable: abort raises
        except FailpointError as e:
            await self._abort(context, TsoUnavailable(f"tso: {e}"))
            raise

    async def answer_get_ts(self, raw: bytes) -> Outcome:
        """A GetTs handed over by the native TSO port: the public port's answer as
        ``(code, message, response, trailers)``."""
        try:
            return 0, "", await self._get_ts(raw), ()
        except FailpointError as e:
            err: PyxiaError = TsoUnavailable(f"tso: {e}")
        except PyxiaError as e:
            err = e
        self._count_error(err)
        return grpc_errors.status_code(err).value[0], str(err), b"", error_trailers(err)

    async def _get_ts(self, raw: bytes) -> bytes:
        """The GetTs response for ``raw``; raises PyxiaError (or a FailpointError)."""
        count = _decode(tso_pb2.GetTsRequest, raw).count
        self._check_access()
        if not 1 <= count <= MAX_COUNT:
            raise InvalidArgument(f"tso: count must be between 1 and {MAX_COUNT}, got {count}")
        await afailpoint("service.before_allocate")
        oracle = self.oracle
        try:
            g = oracle.try_grant(count)
        except TsoNotLeader:
            if oracle.fencing is None:
                raise
            g = None  # this node leads and fences: hold the call until it serves
        if g is None:
            g = await oracle.grant(count)
        m.GRANTS.inc()
        m.TIMESTAMPS.inc(count)
        hi, lo = epoch_halves(g.epoch)
        return tso_pb2.GetTsResponse(
            physical_ms=g.physical_ms,
            logical_start=g.logical_start,
            count=count,
            epoch_hi=hi,
            epoch_lo=lo,
        ).SerializeToString()

    # -- the reads --------------------------------------------------------------------------------

    async def get_current_max_safe(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            _decode(tso_pb2.GetCurrentMaxSafeRequest, raw)
            value, epoch = await self.oracle.current_max_safe()
            hi, lo = epoch_halves(epoch)
            return tso_pb2.GetCurrentMaxSafeResponse(
                max_safe_physical_ms=value, epoch_hi=hi, epoch_lo=lo
            ).SerializeToString()

        return await self._serve(context, "GetCurrentMaxSafe", call)

    async def get_safe_frontier(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            _decode(tso_pb2.GetSafeFrontierRequest, raw)
            value, epoch = await self.oracle.safe_frontier()
            hi, lo = epoch_halves(epoch)
            return tso_pb2.GetSafeFrontierResponse(
                frontier_physical_ms=value, epoch_hi=hi, epoch_lo=lo
            ).SerializeToString()

        return await self._serve(context, "GetSafeFrontier", call)

    # -- dense sequences --------------------------------------------------------------------------

    async def get_seq(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            req = _decode(tso_pb2.GetSeqRequest, raw)
            (start,), epoch = await self.oracle.get_seq([SeqEntry(req.key, req.count)])
            return tso_pb2.GetSeqResponse(
                key=req.key, start=start, count=req.count, epoch=epoch_message(epoch)
            ).SerializeToString()

        return await self._serve(context, "GetSeq", call)

    async def get_seq_batch(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            req = _decode(tso_pb2.GetSeqBatchRequest, raw)
            entries = [SeqEntry(e.key, e.count) for e in req.entries]
            starts, epoch = await self.oracle.get_seq(entries)
            return tso_pb2.GetSeqBatchResponse(
                grants=[
                    tso_pb2.SeqGrantEntry(key=e.key, start=s, count=e.count)
                    for e, s in zip(entries, starts, strict=True)
                ],
                epoch=epoch_message(epoch),
            ).SerializeToString()

        return await self._serve(context, "GetSeqBatch", call)

    # -- stamping leases --------------------------------------------------------------------------

    async def acquire_lease(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            req = _decode(tso_pb2.AcquireLeaseRequest, raw)
            r, epoch = await self.oracle.acquire_lease(req.holder, req.holder_epoch, req.ttl_ms)
            return tso_pb2.AcquireLeaseResponse(
                lease_id=r.lease_id,
                ts_upper_bound=r.ts_upper_bound,
                expires_at_ms=r.expires_at_ms,
                epoch=epoch_message(epoch),
            ).SerializeToString()

        return await self._serve(context, "AcquireLease", call)

    async def renew_lease(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            req = _decode(tso_pb2.RenewLeaseRequest, raw)
            r, epoch = await self.oracle.renew_lease(req.lease_id)
            return tso_pb2.RenewLeaseResponse(
                ts_upper_bound=r.ts_upper_bound,
                expires_at_ms=r.expires_at_ms,
                epoch=epoch_message(epoch),
            ).SerializeToString()

        return await self._serve(context, "RenewLease", call)

    async def release_lease(self, raw: bytes, context: Ctx) -> bytes:
        async def call() -> bytes:
            req = _decode(tso_pb2.ReleaseLeaseRequest, raw)
            await self.oracle.release_lease(req.lease_id)
            return tso_pb2.ReleaseLeaseResponse().SerializeToString()

        return await self._serve(context, "ReleaseLease", call)

    # -- plumbing ---------------------------------------------------------------------------------

    def _count_error(self, err: PyxiaError) -> None:
        if isinstance(err, TsoNotLeader):
            m.NOT_LEADER.inc()
        elif not isinstance(err, TsoUnavailable):
            m.ERRORS.labels("invalid" if isinstance(err, InvalidArgument) else "internal").inc()

    async def _abort(self, context: Ctx, err: PyxiaError) -> None:
        self._count_error(err)
        await context.abort(
            grpc_errors.status_code(err), str(err), trailing_metadata=error_trailers(err)
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, Callable[[bytes, Ctx], Awaitable[bytes]]] = {
            "GetTs": self.get_ts,
            "GetCurrentMaxSafe": self.get_current_max_safe,
            "GetSeq": self.get_seq,
            "GetSeqBatch": self.get_seq_batch,
            "AcquireLease": self.acquire_lease,
            "RenewLease": self.renew_lease,
            "ReleaseLease": self.release_lease,
            "GetSafeFrontier": self.get_safe_frontier,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    h, request_deserializer=None, response_serializer=None
                )
                for name, h in handlers.items()
            },
        )
