"""The internal port: ``replication.OxiaCoordination`` (coordinator → data
server) and ``replication.OxiaLogReplication`` (leader → follower), plus
pyxia's ``ShardEvents`` (failures of this server's replicas, for the coordinator).

Every request is checked before it touches state, in this order:

1. **identity** — every method except Handshake must carry the ``instance-id`` header equal
   to the cluster id the first Handshake bound (Oxia's rule: before any Handshake the call is
   NOT_INITIALIZED, without the header UNAUTHENTICATED, with another cluster's id
   PERMISSION_DENIED). A server coordinated in-process (standalone) refuses them all, and
   refuses Handshake: it has no peers and no outside coordinator.
2. **decoding** — handlers receive the raw bytes and decode them here: a malformed message
   is INVALID_ARGUMENT (gRPC's own deserializer would answer UNKNOWN), including each message
   of the PushShardAssignments, Replicate and SendSnapshot streams.
3. **content** — namespaces, shard ids, terms, offsets, replication factors, addresses and
   assignment maps follow :mod:`pyxia.common.validation` (INVALID_ARGUMENT otherwise). A bad
   assignment map is refused whole: the previous one stays.

Shard split: AddFollower with ``observer`` attaches a split observer (its target shard and hash
range are required and checked), RemoveObserver detaches one, FreezeShard freezes or thaws a
leader. A Replicate or SendSnapshot stream with the split hash-range headers is taken only by a
replica of a shard the pushed assignments list as the pending child of a split.

What a valid request may create is bounded by the shards director (a replica only for a shard
the pushed assignments know, at most ``--max-shards`` open).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from pyxia.common import grpc_errors
from pyxia.common.instance_id import INSTANCE_ID_HEADER
from pyxia.common.keys import encoding_for_key_sorting
from pyxia.common.validation import (
    check_address,
    check_entry_id,
    check_follower_map,
    check_hash_range,
    check_instance_id,
    check_key_sorting,
    check_namespace,
    check_replication_factor,
    check_shard_assignments,
    check_shard_id,
    check_term,
)
from pyxia.errors import (
    InvalidArgument,
    NodeIsNotMember,
    NotInitialized,
    PermissionDenied,
    PyxiaError,
    Unauthenticated,
)
from pyxia.proto import admin_pb2, client_pb2, replication_pb2
from pyxia.server.follower_controller import FollowerController
from pyxia.server.follower_cursor import SPLIT_MAX_HEADER, SPLIT_MIN_HEADER
from pyxia.server.leader_controller import LeaderController
from pyxia.server.manifest import Manifest
from pyxia.server.public_rpc import Ctx, _serialize, _streaming, _unary
from pyxia.server.shards_director import ShardsDirector
from pyxia.storage.db import TermOptions

__all__ = [
    "COORDINATION",
    "REPLICATION",
    "SHARD_EVENTS",
    "InternalService",
    "Manifest",
    "health_handler",
]

log = logging.getLogger("pyxia.internal")

COORDINATION = "replication.OxiaCoordination"
REPLICATION = "replication.OxiaLogReplication"
SHARD_EVENTS = "pyxia.admin.v1.ShardEvents"
FEATURES: list[replication_pb2.Feature.ValueType] = []  # none negotiated yet
FREEZE_DRAIN_S = 5.0
"""How long a FreezeShard waits for the writes already logged to commit."""

M = TypeVar("M", bound=Message)


def term_options(opts: replication_pb2.NewTermOptions) -> TermOptions:
    enc = encoding_for_key_sorting(opts.key_sorting)
    return TermOptions(notifications_enabled=opts.enable_notifications, key_sorting=enc.name)


def decode(message_type: type[M], raw: bytes) -> M:
    """``raw`` as a ``message_type``; INVALID_ARGUMENT if it is not one."""
    try:
        return message_type.FromString(raw)
    except DecodeError as e:
        raise InvalidArgument(
            f"oxia: malformed {message_type.DESCRIPTOR.name} message: {e}"
        ) from None


def _header_values(context: Ctx, key: str) -> list[str]:
    out: list[str] = []
    for k, v in context.invocation_metadata() or ():
        if k == key:
            out.append(v if isinstance(v, str) else v.decode(errors="replace"))
    return out


def _one_header(context: Ctx, key: str) -> str | None:
    values = _header_values(context, key)
    if len(values) > 1:
        raise InvalidArgument(f"oxia: the {key} metadata header must be given once")
    return values[0] if values else None


class InternalService:
    def __init__(
        self,
        director: ShardsDirector,
        manifest: Manifest,
        on_assignments: Callable[[client_pb2.ShardAssignments], Any],
        *,
        coordinated: bool = True,
    ) -> None:
        self.director = director
        self.manifest = manifest
        self.on_assignments = on_assignments
        # False in standalone mode: an in-process coordinator drives the shards, so every
        # call from outside is refused.
        self.coordinated = coordinated

    # -- identity ---------------------------------------------------------------------------------

    def verify_caller(self, context: Ctx) -> None:
        """The call comes from this server's cluster (see the module docstring)."""
        if not self.coordinated:
            raise PermissionDenied(
                "oxia: this server runs standalone (coordinated in-process): it accepts no "
                "coordination or replication calls"
            )
        bound = self.manifest.instance_id()
        if bound is None:
            raise NotInitialized(
                "oxia: this data server is not bound to a cluster yet (no Handshake)"
            )
        given = _one_header(context, INSTANCE_ID_HEADER)
        if given is None:
            raise Unauthenticated("oxia: instance id not identified")
        if not given:
            raise InvalidArgument("oxia: instance id must not be empty")
        if not hmac.compare_digest(given.encode(), bound.encode()):
            raise PermissionDenied(f"oxia: unexpected instance id {given[:64]!r}")

    # -- coordination -----------------------------------------------------------------------------

    async def push_shard_assignments(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> replication_pb2.CoordinationShardAssignmentsResponse:
        try:
            self.verify_caller(context)
            async for raw in requests:
                a = decode(client_pb2.ShardAssignments, raw)
                check_shard_assignments(a)
                await self.on_assignments(a)
        except PyxiaError as e:
            if isinstance(e, InvalidArgument):
                log.warning("pushed shard assignments refused: %s", e)
            await grpc_errors.abort(context, e)
        return replication_pb2.CoordinationShardAssignmentsResponse()

    @_unary
    async def new_term(self, raw: bytes, context: Ctx) -> replication_pb2.NewTermResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.NewTermRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        check_key_sorting(req.options.key_sorting)
        opts = term_options(req.options)
        head = await self.director.new_term(
            req.namespace,
            req.shard,
            encoding_for_key_sorting(req.options.key_sorting),
            req.term,
            opts,
        )
        return replication_pb2.NewTermResponse(head_entry_id=head)

    @_unary
    async def become_leader(self, raw: bytes, context: Ctx) -> replication_pb2.BecomeLeaderResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.BecomeLeaderRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        check_replication_factor(req.replication_factor)
        followers = dict(check_follower_map(req.follower_maps, req.replication_factor))
        if not self.director.holds(req.namespace, req.shard):
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {req.shard}", shard=req.shard
            )
        lc = await self.director.as_leader(req.shard)
        await lc.become_leader(req.term, req.replication_factor, followers)
        return replication_pb2.BecomeLeaderResponse()

    @_unary
    async def add_follower(self, raw: bytes, context: Ctx) -> replication_pb2.AddFollowerResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.AddFollowerRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        check_address(req.follower_name, "follower")
        check_entry_id(req.follower_head_entry_id)
        split: tuple[int, int] | None = None
        if req.observer:
            if not req.HasField("target_shard") or not req.HasField("split_hash_range"):
                raise InvalidArgument(
                    "oxia: an observer follower (shard split) needs target_shard and "
                    "split_hash_range"
                )
            check_shard_id(req.target_shard, "target shard")
            if req.target_shard == req.shard:
                raise InvalidArgument("oxia: a split observer must target another shard")
            r = req.split_hash_range
            split = check_hash_range(r.min_hash_inclusive, r.max_hash_inclusive, "split range")
        elif req.HasField("target_shard") or req.HasField("split_hash_range"):
            raise InvalidArgument(
                "oxia: target_shard and split_hash_range are for observer followers only"
            )
        lc = self._leader_of(req.namespace, req.shard)
        if split is not None:
            await lc.add_observer(req.term, req.follower_name, req.target_shard, split)
        else:
            await lc.add_follower(req.term, req.follower_name, req.follower_head_entry_id)
        return replication_pb2.AddFollowerResponse()

    def _leader_of(self, namespace: str, shard: int) -> LeaderController:
        lc = self.director.leaders.get(shard)
        if lc is None or not self.director.holds(namespace, shard):
            raise NodeIsNotMember(f"oxia: node is not a member of shard {shard}", shard=shard)
        return lc

    @_unary
    async def remove_observer(
        self, raw: bytes, context: Ctx
    ) -> replication_pb2.RemoveObserverResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.RemoveObserverRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        check_address(req.follower_name, "follower")
        check_shard_id(req.target_shard, "target shard")
        await self._leader_of(req.namespace, req.shard).remove_observer(
            req.follower_name, req.target_shard
        )
        return replication_pb2.RemoveObserverResponse()

    @_unary
    async def freeze_shard(self, raw: bytes, context: Ctx) -> replication_pb2.FreezeShardResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.FreezeShardRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        lc = self._leader_of(req.namespace, req.shard)
        head = await lc.freeze(req.term, req.frozen, FREEZE_DRAIN_S)
        return replication_pb2.FreezeShardResponse(head_offset=head)

    @_unary
    async def get_status(self, raw: bytes, context: Ctx) -> replication_pb2.GetStatusResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.GetStatusRequest, raw)
        check_shard_id(req.shard)
        c = self.director.controller(req.shard)
        if c is None:
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {req.shard}", shard=req.shard
            )
        res = c.get_status()
        st = self.director._storages.get(req.shard)
        res.split_parent_term = -1
        if isinstance(c, LeaderController):
            # Since this process started (auto-split takes a rate between two samples).
            m = c.metrics
            res.shard_stats.read_ops_total = int(
                m.db_gets.value + m.db_lists.value + m.db_range_scans.value
            )
            res.shard_stats.write_ops_total = int(
                m.db_puts.value + m.db_deletes.value + m.db_delete_ranges.value
            )
        if st is not None:
            res.shard_stats.db_size_bytes = st.db.size_bytes()
            if st.split_filter is not None:
                res.split_parent_term = st.split_filter.parent_term
        return res

    @_unary
    async def delete_shard(self, raw: bytes, context: Ctx) -> replication_pb2.DeleteShardResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.DeleteShardRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        await self.director.delete_shard(req.namespace, req.shard, req.term)
        return replication_pb2.DeleteShardResponse()

    @_unary
    async def handshake(self, raw: bytes, context: Ctx) -> replication_pb2.HandshakeResponse:
        if not self.coordinated:
            raise PermissionDenied(
                "oxia: this server runs standalone (coordinated in-process): it joins no cluster"
            )
        req = decode(replication_pb2.HandshakeRequest, raw)
        if not req.instance_id:
            raise InvalidArgument("oxia: Handshake needs an instance id")
        check_instance_id(req.instance_id)
        current = self.manifest.instance_id()
        if current is None:
            self.manifest.bind(req.instance_id)
            log.info("bound to cluster %s", req.instance_id)
            status = replication_pb2.HANDSHAKE_STATUS_BOUND
        elif current == req.instance_id:
            status = replication_pb2.HANDSHAKE_STATUS_ALREADY_BOUND
        else:
            log.error(
                "handshake refused: this server belongs to cluster %s, not %s",
                current,
                req.instance_id,
            )
            status = replication_pb2.HANDSHAKE_STATUS_MISMATCH
        return replication_pb2.HandshakeResponse(status=status, features_supported=FEATURES)

    @_unary
    async def get_info(self, raw: bytes, context: Ctx) -> replication_pb2.GetInfoResponse:
        self.verify_caller(context)
        decode(replication_pb2.GetInfoRequest, raw)
        return replication_pb2.GetInfoResponse(features_supported=FEATURES)

    # -- log replication --------------------------------------------------------------------------

    def _stream_target(self, context: Ctx) -> tuple[str, int, int]:
        """The (namespace, shard, term) a replication stream names in its metadata."""
        namespace = _one_header(context, "namespace")
        shard = _one_header(context, "shard-id")
        term = _one_header(context, "term")
        if shard is None or term is None:
            raise InvalidArgument(
                "oxia: replication streams need namespace, shard-id and term metadata"
            )
        try:
            shard_id, term_value = int(shard), int(term)
        except ValueError:
            raise InvalidArgument(
                f"oxia: bad shard-id {shard[:32]!r} or term {term[:32]!r} metadata"
            ) from None
        namespace = check_namespace("default" if namespace is None else namespace)
        return namespace, check_shard_id(shard_id), check_term(term_value)

    def _split_range(self, context: Ctx, namespace: str, shard: int) -> tuple[int, int] | None:
        """The hash range a stream from a split parent carries (both headers or neither), for
        a replica of a pending split child only."""
        lo = _one_header(context, SPLIT_MIN_HEADER)
        hi = _one_header(context, SPLIT_MAX_HEADER)
        if lo is None and hi is None:
            return None
        if lo is None or hi is None:
            raise InvalidArgument(
                f"oxia: a split stream needs both {SPLIT_MIN_HEADER} and {SPLIT_MAX_HEADER}"
            )
        if not (lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit()):
            raise InvalidArgument(f"oxia: bad split hash range {lo[:16]!r}..{hi[:16]!r}")
        if len(lo) > 10 or len(hi) > 10:
            raise InvalidArgument("oxia: split hash range out of bounds")
        split = check_hash_range(int(lo), int(hi), "split range")
        if not self.director.assignments.is_pending_split(namespace, shard):
            raise InvalidArgument(
                f"oxia: shard {shard} is not the child of a split in progress", shard=shard
            )
        return split

    @_unary
    async def truncate(self, raw: bytes, context: Ctx) -> replication_pb2.TruncateResponse:
        self.verify_caller(context)
        req = decode(replication_pb2.TruncateRequest, raw)
        check_namespace(req.namespace)
        check_shard_id(req.shard)
        check_term(req.term)
        check_entry_id(req.head_entry_id)
        fc = await self.director.as_follower(req.namespace, req.shard, term=req.term)
        head = await fc.truncate(req.term, req.head_entry_id)
        return replication_pb2.TruncateResponse(head_entry_id=head)

    @_streaming
    async def replicate(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> AsyncIterator[replication_pb2.Ack]:
        self.verify_caller(context)
        namespace, shard, term = self._stream_target(context)
        split = self._split_range(context, namespace, shard)
        fc: FollowerController = await self.director.as_follower(namespace, shard, term=term)
        async for ack in fc.replicate(term, requests, split):
            yield ack

    @_unary
    async def send_snapshot(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> replication_pb2.SnapshotResponse:
        self.verify_caller(context)
        namespace, shard, term = self._stream_target(context)
        split = self._split_range(context, namespace, shard)
        fc = await self.director.as_follower(namespace, shard, create=True, term=term)
        ack = await fc.install_snapshot(term, requests, split)
        return replication_pb2.SnapshotResponse(ack_offset=ack)

    # -- shard events (pyxia) ------------------------------------------------------------------

    @_streaming
    async def watch_shard_events(
        self, raw: bytes, context: Ctx
    ) -> AsyncIterator[admin_pb2.ShardEvent]:
        """Failures of this server's replicas: the latest of each shard, then new ones."""
        self.verify_caller(context)
        decode(admin_pb2.WatchShardEventsRequest, raw)
        failures = self.director.failures
        seq = 0
        failures.watchers += 1
        try:
            while not failures.signal.closed:
                seen = failures.signal.generation
                seq, events = failures.since(seq)
                for e in events:
                    yield e
                await failures.signal.wait(seen)
        finally:
            failures.watchers -= 1

    # -- registration -----------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        """Every handler takes the request's raw bytes (decoded by the method, see above)."""
        ser = _serialize

        def unary(fn: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=ser
            )

        coordination = {
            "PushShardAssignments": grpc.stream_unary_rpc_method_handler(
                self.push_shard_assignments, request_deserializer=None, response_serializer=ser
            ),
            "NewTerm": unary(self.new_term),
            "BecomeLeader": unary(self.become_leader),
            "AddFollower": unary(self.add_follower),
            "GetStatus": unary(self.get_status),
            "DeleteShard": unary(self.delete_shard),
            "Handshake": unary(self.handshake),
            "GetInfo": unary(self.get_info),
            "RemoveObserver": unary(self.remove_observer),
            "FreezeShard": unary(self.freeze_shard),
        }
        replication = {
            "Truncate": unary(self.truncate),
            "Replicate": grpc.stream_stream_rpc_method_handler(
                self.replicate, request_deserializer=None, response_serializer=ser
            ),
            "SendSnapshot": grpc.stream_unary_rpc_method_handler(
                self.send_snapshot, request_deserializer=None, response_serializer=ser
            ),
        }
        events: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.watch_shard_events, request_deserializer=None, response_serializer=ser
            )
        }
        return [
            grpc.method_handlers_generic_handler(COORDINATION, coordination),
            grpc.method_handlers_generic_handler(REPLICATION, replication),
            grpc.method_handlers_generic_handler(SHARD_EVENTS, events),
        ]


def health_handler(servicer: health_aio.HealthServicer) -> grpc.GenericRpcHandler:
    """``grpc.health.v1.Health`` (Check, Watch) over ``servicer``, decoding requests here so a
    malformed one is INVALID_ARGUMENT as on every other internal method (gRPC's generated
    registration would answer UNKNOWN). Health needs no instance id (Oxia: the coordinator
    probes before the Handshake)."""

    async def check(raw: bytes, context: Ctx) -> health_pb2.HealthCheckResponse:
        try:
            req = decode(health_pb2.HealthCheckRequest, raw)
        except InvalidArgument as e:
            await grpc_errors.abort(context, e)
            raise  # unreachable: abort raises
        res: health_pb2.HealthCheckResponse = await servicer.Check(req, context)
        return res

    async def watch(raw: bytes, context: Ctx) -> None:
        try:
            req = decode(health_pb2.HealthCheckRequest, raw)
        except InvalidArgument as e:
            await grpc_errors.abort(context, e)
            return
        await servicer.Watch(req, context)

    ser = health_pb2.HealthCheckResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=ser
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=None, response_serializer=ser
            ),
        },
    )
