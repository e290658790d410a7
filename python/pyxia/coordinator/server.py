"""The coordinator process: waits to lead, builds a Coordinator from the
metadata it reads then, and rebuilds it after losing leadership — without
exiting.

It serves gRPC health, pyxia's admin service (``pyxia.admin.v1.PyxiaAdmin``) and Oxia's
(``io.oxia.proto.v1.OxiaAdmin``, :mod:`pyxia.coordinator.admin_service`) on its gRPC port
(``--internal-addr``) and on its admin port (``--admin-addr``, Oxia's 6651), both with the
same TLS (``--tls-*``) and the same rule for changes (:class:`AdminAccess`).

Each coordinator records its admin address (``--admin-advertised-address``) in the cluster
status when it begins to lead; one that does not lead reads it back (at most once per
``LEADER_HINT_TTL``) and answers admin calls as Oxia's does: NODE_IS_NOT_LEADER with that
address as the ``coordinator-leader`` hint, NOT_INITIALIZED while no other leader is known.

Leadership loss is graceful (the lesson of Oxia's panic on a version
conflict): the current coordinator is closed (every controller stopped, no
stray task), the server waits to become leader again, and a fresh
coordinator starts from what the metadata says at that moment. Closing the
server closes the provider, which unblocks a pending wait; nothing is
recreated during shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from pyxia.common import grpc_errors
from pyxia.common.grpc_metrics import GrpcServerMetrics
from pyxia.common.grpc_options import grpc_server_options
from pyxia.common.validation import check_namespace, check_shard_id
from pyxia.config import ClusterConfig
from pyxia.coordinator.admin_service import AdminAccess, OxiaAdminService
from pyxia.coordinator.coordinator import Coordinator, CoordinatorOptions
from pyxia.coordinator.metadata.provider import LeadershipLost, MetadataProvider
from pyxia.coordinator.metrics import instrument_provider
from pyxia.errors import (
    AlreadyClosed,
    CoordinatorIsNotLeader,
    InvalidArgument,
    NotInitialized,
    PyxiaError,
)
from pyxia.proto import admin_pb2, metadata_pb2
from pyxia.security.tls import TlsOptions

log = logging.getLogger("pyxia.coordinator.server")

MAX_MOVE_TIMEOUT_MS = 600_000
MAX_SPLIT_TIMEOUT_MS = 3_600_000


@dataclass
class CoordinatorServerOptions:
    internal_addr: str = "0.0.0.0:6649"
    metrics_addr: str | None = "0.0.0.0:8080"
    coordinator: CoordinatorOptions | None = None
    # TLS of this process's gRPC and admin ports (--tls-*; client_auth: mutual TLS); None:
    # plaintext.
    tls: TlsOptions | None = None
    # The admin port (Oxia's OxiaAdmin, also on internal_addr); None: no admin port.
    admin_addr: str | None = None
    # Admit admin changes from this host without proof (--admin-trust-loopback).
    admin_trust_loopback: bool = False
    # Where admin clients reach this coordinator (--admin-advertised-address), which the others
    # point them at while it leads; None: the admin port's bind address (this host's name for
    # an unspecified host such as 0.0.0.0) with the port it got.
    admin_advertised_address: str | None = None


LEADER_HINT_TTL = 1.0
"""Seconds a non-leader reuses the leader it read from the metadata (bounds the reads that
admin calls to a standby cause)."""


def advertised_address(bind: str, port: int) -> str:
    """The address to give clients for a listener bound to ``bind`` that got ``port``."""
    host = bind.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CoordinatorServer:
    def __init__(
        self,
        provider: MetadataProvider,
        load_config: Callable[[], ClusterConfig],
        options: CoordinatorServerOptions | None = None,
    ) -> None:
        self.provider = provider
        instrument_provider(provider)  # Oxia's oxia_coordinator_metadata_* metrics
        self._load_config = load_config
        self.options = options or CoordinatorServerOptions()
        self.coordinator: Coordinator | None = None
        self.generation = 0  # coordinators built so far
        self.port = 0
        self.admin_port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        opts = self.options.coordinator or CoordinatorOptions()
        tls = self.options.tls
        self.access = AdminAccess(
            secret=opts.cluster_secret,
            mutual_tls=tls is not None and tls.is_enabled and tls.client_auth,
            trust_loopback=self.options.admin_trust_loopback,
            unsecured=opts.cluster_secret is None and opts.peer_tls is None,
        )
        self.oxia_admin = OxiaAdminService(
            lambda: self.coordinator, self.access, opts.config_source, self.not_leading
        )
        self._coordinator_options = opts
        self.admin_advertised = ""  # set once listening
        self._hint: tuple[float, str | None] = (float("-inf"), None)
        self._hint_lock = asyncio.Lock()
        self._metrics: Any = None
        self._health = health_aio.HealthServicer()
        self._main: asyncio.Task[None] | None = None
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.coordinator is not None

    async def start(self) -> None:
        load_config = self._load_config
        load_config()  # fail fast on a bad config
        self._server, self.port = self._listen(self.options.internal_addr)
        if self.options.admin_addr:
            self._admin_server, self.admin_port = self._listen(self.options.admin_addr)
        self.admin_advertised = self.options.admin_advertised_address or (
            advertised_address(self.options.admin_addr, self.admin_port)
            if self.options.admin_addr
            else advertised_address(self.options.internal_addr, self.port)
        )
        self._coordinator_options = dataclasses.replace(
            self._coordinator_options,
            leader_info=metadata_pb2.CoordinatorInfo(
                identity=f"{socket.gethostname()}/{os.getpid()}",
                public_address=self.admin_advertised,
            ),
        )
        await self._server.start()
        if self._admin_server is not None:
            await self._admin_server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.options.metrics_addr:
            from pyxia.common.metrics_http import MetricsServer

            self._metrics = MetricsServer(self.options.metrics_addr)  # /metrics only
            self.metrics_port = self._metrics.port
        await self.provider.start()
        self._main = asyncio.get_running_loop().create_task(self._run(), name="coordinator-main")

    def _listen(self, addr: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            options=grpc_server_options(64 * 1024 * 1024), interceptors=[GrpcServerMetrics()]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_generic_rpc_handlers([self._admin_handlers(), self.oxia_admin.handler()])
        tls = self.options.tls
        if tls is not None and tls.is_enabled:
            port = server.add_secure_port(addr, tls.server_credentials())
        else:
            port = server.add_insecure_port(addr)
        if port == 0:
            raise OSError(f"cannot listen on {addr}")
        return server, port

    async def _run(self) -> None:
        while not self._closed:
            try:
                lost = await self.provider.wait_to_become_leader()
            except AlreadyClosed:
                return
            if self._closed:
                return
            status, version = await self.provider.get()
            coordinator = Coordinator(self.provider, self._load_config, self._coordinator_options)
            try:
                await coordinator.start(status, version)
            except Exception as e:
                log.warning("could not start the coordinator: %s", e)
                await coordinator.close()
                await asyncio.sleep(0.2)
                continue
            self.coordinator = coordinator
            self.generation += 1
            self._changed.set()
            log.info("this coordinator leads (generation %d)", self.generation)
            reason = await self._until_lost(coordinator, lost)
            log.warning("leadership lost (%s): closing the coordinator", reason)
            self.coordinator = None
            await coordinator.close()
            self._changed.set()

    async def _until_lost(self, coordinator: Coordinator, lost: LeadershipLost | None) -> str:
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(coordinator.failed.wait()),
        ]
        if lost is not None:
            waits.append(asyncio.ensure_future(lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if lost is not None and lost.fired:
            return lost.reason or "lease lost"
        return "compare-and-set lost"

    async def wait_leading(self, generation: int = 1, timeout: float = 30.0) -> Coordinator:
        """Test helper: waits until the ``generation``-th coordinator leads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.generation < generation or self.coordinator is None:
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("this coordinator did not become leader")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return self.coordinator

    async def close(self) -> None:
        """Closes the provider (unblocking any wait), the coordinator and the
        server. Idempotent; nothing is recreated meanwhile."""
        if self._closed:
            return
        self._closed = True
        await self.provider.close()
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except (asyncio.CancelledError, Exception):
                pass
        if self.coordinator is not None:
            await self.coordinator.close()
            self.coordinator = None
        if self._server is not None:
            await self._server.stop(0.5)
        if self._admin_server is not None:
            await self._admin_server.stop(0.5)
        if self._metrics is not None:
            self._metrics.close()

    # -- admin API --------------------------------------------------------------------------------

    async def leader_hint(self) -> str | None:
        """The admin address the leading coordinator recorded in the status (read from the
        metadata provider at most once per LEADER_HINT_TTL); None if none can be read."""
        async with self._hint_lock:
            now = asyncio.get_running_loop().time()
            read_at, hint = self._hint
            if now - read_at >= LEADER_HINT_TTL:
                try:
                    status, _ = await self.provider.get()
                except Exception as e:  # the backing store is down: no hint, say why in the log
                    log.debug("no coordinator leader hint: %s", e)
                    status = None
                hint = (status.leader_coordinator.public_address or None) if status else None
                self._hint = (now, hint)
            return hint

    async def not_leading(self) -> PyxiaError:
        """The answer of a coordinator that does not lead (Oxia's): NODE_IS_NOT_LEADER with the
        leader's admin address ("coordinator-leader"), which Oxia's admin client follows, or
        NOT_INITIALIZED while no other coordinator is known to lead."""
        hint = await self.leader_hint()
        if hint and hint != self.admin_advertised:
            return CoordinatorIsNotLeader(
                f"oxia: this coordinator does not lead: the leading one is at {hint}",
                leader_hint=hint,
            )
        return NotInitialized("oxia: this coordinator does not lead (no leader is known yet)")

    async def _get_status(
        self, req: admin_pb2.GetClusterStatusRequest, context: Any
    ) -> admin_pb2.GetClusterStatusResponse:
        c = self.coordinator
        res = admin_pb2.GetClusterStatusResponse(leader=c is not None)
        if c is not None:
            res.status.CopyFrom(c.status)
            for s in c.config.servers:
                res.servers.add(
                    internal=s.internal, public=s.public, available=c.is_available(s.internal)
                )
        return res

    async def _move_leader(
        self, req: admin_pb2.MoveLeaderRequest, context: Any
    ) -> admin_pb2.MoveLeaderResponse:
        try:
            self.access.check(context, "/pyxia.admin.v1.PyxiaAdmin/MoveLeader")
            c = self.coordinator
            if c is None:
                raise await self.not_leading()
            if not 0 <= req.timeout_ms <= MAX_MOVE_TIMEOUT_MS:
                raise InvalidArgument(
                    f"oxia: MoveLeader timeout {req.timeout_ms} ms is out of "
                    f"[0, {MAX_MOVE_TIMEOUT_MS}]"
                )
            leader, term = await c.move_leader(
                req.namespace or "default",
                req.shard,
                req.to,
                (req.timeout_ms or 30_000) / 1000.0,
            )
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
            raise  # unreachable: abort raises
        return admin_pb2.MoveLeaderResponse(leader=leader, term=term)

    async def _split_shard(
        self, req: admin_pb2.SplitShardRequest, context: Any
    ) -> admin_pb2.SplitShardResponse:
        res = admin_pb2.SplitShardResponse()
        try:
            self.access.check(context, "/pyxia.admin.v1.PyxiaAdmin/SplitShard")
            c = self.coordinator
            if c is None:
                raise NotInitialized("oxia: this coordinator does not lead")
            namespace = check_namespace(req.namespace or "default")
            check_shard_id(req.shard)
            if not 0 <= req.timeout_ms <= MAX_SPLIT_TIMEOUT_MS:
                raise InvalidArgument(
                    f"oxia: SplitShard timeout {req.timeout_ms} ms is out of "
                    f"[0, {MAX_SPLIT_TIMEOUT_MS}]"
                )
            timeout = req.timeout_ms / 1000.0 if req.timeout_ms else None
            left, right = await c.split_shard(
                namespace,
                req.shard,
                req.split_point if req.HasField("split_point") else None,
                timeout=timeout,
            )
            res.left_shard, res.right_shard = left, right
            if req.wait:
                budget = (timeout or c.options.split_timeout) + 120.0
                res.outcome = await c.wait_split(req.shard, budget)
                ended = c.splits_ended.get(req.shard)
                if ended is not None:
                    for name, seconds in ended.phase_seconds.items():
                        res.phase_ms[name] = seconds * 1000.0
                    if ended.frozen_seconds is not None:
                        res.frozen_ms = ended.frozen_seconds * 1000.0
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
            raise  # unreachable: abort raises
        return res

    def _admin_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "pyxia.admin.v1.PyxiaAdmin",
            {
                "GetClusterStatus": grpc.unary_unary_rpc_method_handler(
                    self._get_status,
                    request_deserializer=admin_pb2.GetClusterStatusRequest.FromString,
                    response_serializer=admin_pb2.GetClusterStatusResponse.SerializeToString,
                ),
                "MoveLeader": grpc.unary_unary_rpc_method_handler(
                    self._move_leader,
                    request_deserializer=admin_pb2.MoveLeaderRequest.FromString,
                    response_serializer=admin_pb2.MoveLeaderResponse.SerializeToString,
                ),
                "SplitShard": grpc.unary_unary_rpc_method_handler(
                    self._split_shard,
                    request_deserializer=admin_pb2.SplitShardRequest.FromString,
                    response_serializer=admin_pb2.SplitShardResponse.SerializeToString,
                ),
            },
        )
