"""The internal port: ``replication.OxiaCoordination`` (coordinator → data
server) and ``replication.OxiaLogReplication`` (leader → follower)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from pyxia.dirs import manifest as dirs_manifest
from pyxia.errors import InvalidArgument, NodeIsNotMember, PyxiaError
from pyxia.proto import admin_pb2, client_pb2, replication_pb2
from pyxia.server import grpc_errors
from pyxia.server.follower_controller import FollowerController
from pyxia.server.public_rpc import Ctx, _metadata, _serialize, _streaming, _unary
from pyxia.server.shards_director import ShardsDirector
from pyxia.storage.db import TermOptions
from pyxia.storage.keys import encoding_for_key_sorting

log = logging.getLogger("pyxia.internal")

COORDINATION = "replication.OxiaCoordination"
REPLICATION = "replication.OxiaLogReplication"
SHARD_EVENTS = "pyxia.admin.v1.ShardEvents"
FEATURES: list[replication_pb2.Feature.ValueType] = []  # none negotiated yet


def term_options(opts: replication_pb2.NewTermOptions) -> TermOptions:
    enc = encoding_for_key_sorting(opts.key_sorting)
    return TermOptions(notifications_enabled=opts.enable_notifications, key_sorting=enc.name)


class Manifest:
    """Which cluster the data server belongs to: the ``instance_id`` field of the data dir's
    manifest (``pyxia.dirs.manifest``; its other fields are kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def instance_id(self) -> str | None:
        d = dirs_manifest.read_raw(self.path.parent)
        v = d.get("instance_id") if d is not None else None
        return v if isinstance(v, str) and v else None

    def bind(self, instance_id: str) -> None:
        dirs_manifest.update_fields(self.path.parent, instance_id=instance_id)


class InternalService:
    def __init__(
        self,
        director: ShardsDirector,
        manifest: Manifest,
        on_assignments: Callable[[client_pb2.ShardAssignments], Any],
    ) -> None:
        self.director = director
        self.manifest = manifest
        self.on_assignments = on_assignments

    # -- coordination -----------------------------------------------------------------------------

    async def push_shard_assignments(
        self, requests: AsyncIterator[client_pb2.ShardAssignments], context: Ctx
    ) -> replication_pb2.CoordinationShardAssignmentsResponse:
        try:
            async for a in requests:
                await self.on_assignments(a)
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
        return replication_pb2.CoordinationShardAssignmentsResponse()

    @_unary
    async def new_term(
        self, req: replication_pb2.NewTermRequest, context: Ctx
    ) -> replication_pb2.NewTermResponse:
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
    async def become_leader(
        self, req: replication_pb2.BecomeLeaderRequest, context: Ctx
    ) -> replication_pb2.BecomeLeaderResponse:
        lc = await self.director.as_leader(req.shard)
        followers = {name: head for name, head in req.follower_maps.items()}
        await lc.become_leader(req.term, max(1, req.replication_factor), followers)
        return replication_pb2.BecomeLeaderResponse()

    @_unary
    async def add_follower(
        self, req: replication_pb2.AddFollowerRequest, context: Ctx
    ) -> replication_pb2.AddFollowerResponse:
        if req.observer:
            raise InvalidArgument("oxia: observer followers (shard split) are not supported")
        lc = self.director.leaders.get(req.shard)
        if lc is None:
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {req.shard}", shard=req.shard
            )
        await lc.add_follower(req.term, req.follower_name, req.follower_head_entry_id)
        return replication_pb2.AddFollowerResponse()

    @_unary
    async def get_status(
        self, req: replication_pb2.GetStatusRequest, context: Ctx
    ) -> replication_pb2.GetStatusResponse:
        c = self.director.controller(req.shard)
        if c is None:
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {req.shard}", shard=req.shard
            )
        res = c.get_status()
        st = self.director._storages.get(req.shard)
        if st is not None:
            res.shard_stats.db_size_bytes = st.db.size_bytes()
        return res

    @_unary
    async def delete_shard(
        self, req: replication_pb2.DeleteShardRequest, context: Ctx
    ) -> replication_pb2.DeleteShardResponse:
        await self.director.delete_shard(req.namespace, req.shard, req.term)
        return replication_pb2.DeleteShardResponse()

    @_unary
    async def handshake(
        self, req: replication_pb2.HandshakeRequest, context: Ctx
    ) -> replication_pb2.HandshakeResponse:
        if not req.instance_id:
            raise InvalidArgument("oxia: Handshake needs an instance id")
        current = self.manifest.instance_id()
        if current is None:
            self.manifest.bind(req.instance_id)
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
    async def get_info(
        self, req: replication_pb2.GetInfoRequest, context: Ctx
    ) -> replication_pb2.GetInfoResponse:
        return replication_pb2.GetInfoResponse(features_supported=FEATURES)

    # -- log replication --------------------------------------------------------------------------

    def _stream_target(self, context: Ctx) -> tuple[str, int, int]:
        md = _metadata(context)
        try:
            return md.get("namespace", "default"), int(md["shard-id"]), int(md["term"])
        except (KeyError, ValueError):
            raise InvalidArgument(
                "oxia: replication streams need namespace, shard-id and term metadata"
            ) from None

    @_unary
    async def truncate(
        self, req: replication_pb2.TruncateRequest, context: Ctx
    ) -> replication_pb2.TruncateResponse:
        fc = await self.director.as_follower(req.namespace, req.shard, term=req.term)
        head = await fc.truncate(req.term, req.head_entry_id)
        return replication_pb2.TruncateResponse(head_entry_id=head)

    @_streaming
    async def replicate(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> AsyncIterator[replication_pb2.Ack]:
        namespace, shard, term = self._stream_target(context)
        fc: FollowerController = await self.director.as_follower(namespace, shard, term=term)
        async for ack in fc.replicate(term, requests):
            yield ack

    @_unary
    async def send_snapshot(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> replication_pb2.SnapshotResponse:
        namespace, shard, term = self._stream_target(context)
        fc = await self.director.as_follower(namespace, shard, create=True, term=term)
        ack = await fc.install_snapshot(term, requests)
        return replication_pb2.SnapshotResponse(ack_offset=ack)

    # -- shard events (pyxia) ------------------------------------------------------------------

    async def watch_shard_events(
        self, req: admin_pb2.WatchShardEventsRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.ShardEvent]:
        """Failures of this server's replicas: the latest of each shard, then new ones."""
        failures = self.director.failures
        seq = 0
        while not failures.signal.closed:
            seen = failures.signal.generation
            seq, events = failures.since(seq)
            for e in events:
                yield e
            await failures.signal.wait(seen)

    # -- registration -----------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        r = replication_pb2
        ser = _serialize

        def unary(fn: Any, req: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=ser
            )

        coordination = {
            "PushShardAssignments": grpc.stream_unary_rpc_method_handler(
                self.push_shard_assignments,
                request_deserializer=client_pb2.ShardAssignments.FromString,
                response_serializer=ser,
            ),
            "NewTerm": unary(self.new_term, r.NewTermRequest),
            "BecomeLeader": unary(self.become_leader, r.BecomeLeaderRequest),
            "AddFollower": unary(self.add_follower, r.AddFollowerRequest),
            "GetStatus": unary(self.get_status, r.GetStatusRequest),
            "DeleteShard": unary(self.delete_shard, r.DeleteShardRequest),
            "Handshake": unary(self.handshake, r.HandshakeRequest),
            "GetInfo": unary(self.get_info, r.GetInfoRequest),
        }
        replication = {
            "Truncate": unary(self.truncate, r.TruncateRequest),
            "Replicate": grpc.stream_stream_rpc_method_handler(
                self.replicate, request_deserializer=None, response_serializer=ser
            ),
            "SendSnapshot": grpc.stream_unary_rpc_method_handler(
                self.send_snapshot, request_deserializer=None, response_serializer=ser
            ),
        }
        events = {
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.watch_shard_events,
                request_deserializer=admin_pb2.WatchShardEventsRequest.FromString,
                response_serializer=ser,
            )
        }
        return [
            grpc.method_handlers_generic_handler(COORDINATION, coordination),
            grpc.method_handlers_generic_handler(REPLICATION, replication),
            grpc.method_handlers_generic_handler(SHARD_EVENTS, events),
        ]
