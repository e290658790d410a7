"""A data server process: public gRPC port (client API + health), internal
port (coordination and replication; none when ``internal_addr`` is None, as in
standalone mode unless asked), Prometheus metrics, maintenance.

Security (docs/security.md): each port listens with TLS when its :class:`TlsOptions` is set
(``public_tls``, ``internal_tls``; mutual TLS with ``client_auth``), the connections this server
opens to its peers use ``peer_tls``, and with a ``cluster_secret`` every internal call, in and
out, carries a proof of cluster membership (the internal port refuses calls without one). All
None: plaintext and no proof (in-process tests, library users on a trusted loopback).

Shutdown (SIGTERM) is a planned change: before anything stops, the server asks the coordinator
(through its ``ShardEvents`` stream, events marked ``leaving``) to move every leadership it holds
in a replicated shard, as planned moves; whatever it still leads after ``shutdown_handoff_s``
(no coordinator listening, RF=1, or the coordinator chose it again) steps down in place (new
writes refused with a retryable NODE_IS_NOT_LEADER, logged ones finished while the followers
are still there); then it keeps answering for ``shutdown_linger_s`` so that clients still
routing here learn where the leader went, and only then stops. The whole shutdown takes at most
``shutdown_handoff_s + shutdown_linger_s + 2 * grace`` (10 + 1 + 2 * 2 s by default).

Services built on top of the data server (the timestamp oracle, ``pyxia.tso``) are
:class:`ServerExtension`s: this module never imports them; the composition root
(:mod:`pyxia.node`) builds a data server with the ones its options ask for. An extension is
served on the public port, started once the ports listen, closed before they stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_metrics import GrpcServerMetrics
from pyxia.common.grpc_options import grpc_server_options
from pyxia.dirs import NodeDirs
from pyxia.proto import client_pb2
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import ClusterAuthInterceptor
from pyxia.security.public import PublicAccess, PublicAuthOptions
from pyxia.security.tls import TlsOptions
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.handoff_rpc import HandoffService
from pyxia.server.internal_rpc import InternalService, health_handler
from pyxia.server.manifest import MANIFEST_FILE, Manifest
from pyxia.server.public_rpc import DEFAULT_NOTIFICATIONS_SEND_TIMEOUT_S, OxiaClientService
from pyxia.server.read_lease import READ_LEASE_S
from pyxia.server.retention import (
    DEFAULT_NOTIFICATIONS_RETENTION_TIME_S,
    DEFAULT_WAL_RETENTION_SIZE,
    DEFAULT_WAL_RETENTION_TIME_S,
    ReplicaTrim,
    RetentionKeeper,
    WalRetention,
    check_retention_size,
)
from pyxia.server.shard_storage import StorageOptions
from pyxia.server.shards_director import DEFAULT_MAX_SHARDS, ShardsDirector
from pyxia.storage.apply import DEFAULT_WRITE_LIMITS, WriteLimits
from pyxia.storage.db import DEFAULT_CACHE_SIZE_MB, DbResources, DbTuning
from pyxia.tso.options import TsoOptions

log = logging.getLogger("pyxia.server")

READINESS_SERVICE = "oxia-readiness"


@dataclass
class ServerOptions:
    public_addr: str = "0.0.0.0:6648"
    internal_addr: str | None = "0.0.0.0:6649"  # None: no internal port (standalone)
    metrics_addr: str | None = "0.0.0.0:8080"
    advertised_public_addr: str | None = None
    advertised_internal_addr: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("data/db"))
    wal_dir: Path = field(default_factory=lambda: Path("data/wal"))
    wal_sync_data: bool = True
    wal_segment_size: int = 64 * 1024 * 1024
    wal_retention_s: float = DEFAULT_WAL_RETENTION_TIME_S
    # Bound on each shard replica's WAL on disk (server/retention.py); >= 2 segments.
    wal_retention_size: int = DEFAULT_WAL_RETENTION_SIZE
    notifications_retention_s: float = DEFAULT_NOTIFICATIONS_RETENTION_TIME_S
    # The retention timer; None: a fraction of the retention (retention.check_interval_s).
    # Whatever it is, a WAL that closes a segment is checked at once.
    maintenance_interval_s: float | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    session_check_interval_s: float = 0.1
    # A notifications subscriber that accepts no batch for this long is cut off (it resumes
    # from its last offset): --notifications-send-timeout.
    notifications_send_timeout_s: float = DEFAULT_NOTIFICATIONS_SEND_TIMEOUT_S
    # Open shard replicas at most: creating one more is RESOURCE_EXHAUSTED (on-disk ones open).
    max_shards: int = DEFAULT_MAX_SHARDS
    # The read lease this server's followers promise (--read-lease; read_lease.py; 0: none).
    read_lease_s: float = READ_LEASE_S
    # False in standalone mode: the in-process coordinator drives the shards; the internal
    # port (if any) refuses Handshake and every coordination and replication call.
    coordinated: bool = True
    # The timestamp oracle (GetTs) over the TSO namespace ("tso" by default); None: off.
    tso: TsoOptions | None = field(default_factory=TsoOptions)
    # TLS of the public port (--tls-*), of the internal port (--internal-tls-*; client_auth:
    # mutual TLS) and of the connections to peers (--peer-tls-*); None: plaintext.
    public_tls: TlsOptions | None = None
    internal_tls: TlsOptions | None = None
    peer_tls: TlsOptions | None = None
    # Proof of cluster membership on every internal call (--cluster-secret-file); None: none.
    cluster_secret: ClusterSecret | None = None
    # Token authentication, authorization and privileged fields on the public port.
    public_auth: PublicAuthOptions = field(default_factory=PublicAuthOptions)
    # One block cache for every shard DB of the process (Oxia's --db-cache-size-mb).
    db_cache_size_mb: int = DEFAULT_CACHE_SIZE_MB
    # What one client write may hold (--max-key-size, --max-value-size, --max-write-operations).
    write_limits: WriteLimits = DEFAULT_WRITE_LIMITS
    # Shutdown: how long to wait for the coordinator to move this server's leaderships, then
    # how long to keep answering (retryable refusals naming the new leaders) before stopping.
    shutdown_handoff_s: float = 10.0
    shutdown_linger_s: float = 1.0

    def storage_options(self) -> StorageOptions:
        return StorageOptions(
            data_dir=self.data_dir,
            wal_dir=self.wal_dir,
            wal_sync_data=self.wal_sync_data,
            wal_segment_size=self.wal_segment_size,
            wal_retention_ms=int(self.wal_retention_s * 1000),
            notifications_retention_ms=int(self.notifications_retention_s * 1000),
            write_limits=self.write_limits,
            db=DbResources(DbTuning(cache_size_mb=self.db_cache_size_mb)),
        )


class ServerExtension(Protocol):
    """A service built on the data server and served on its public port."""

    def generic_handler(self) -> grpc.GenericRpcHandler: ...

    def start(self) -> None:
        """Called once the ports listen."""
        ...

    async def close(self) -> None:
        """Called before the ports stop. Idempotent."""
        ...


ExtensionFactory = Callable[["DataServer"], ServerExtension]
"""Builds an extension on a data server under construction (its director, assignments and
public access exist; nothing is started)."""


def _advertise(bind: str, port: int) -> str:
    host = bind.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "localhost"
    return f"{host}:{port}"


class DataServer:
    """Owns the gRPC servers, the shards director, background tasks and its extensions (a
    whole node with its timestamp oracle: :func:`pyxia.node.data_server`)."""

    def __init__(self, options: ServerOptions, extensions: Sequence[ExtensionFactory] = ()) -> None:
        self.options = options
        # "server" (a cluster member) or "standalone" (coordinated in-process): recorded in
        # the data dir's manifest; only a cluster member rebuilds a corrupt replica from its
        # peers.
        self.mode = "server" if options.coordinated else "standalone"
        self.dirs: NodeDirs | None = None
        self.assignments = AssignmentsDispatcher()
        peer_tls = options.peer_tls.client() if options.peer_tls is not None else None
        self.manifest = Manifest(options.data_dir / MANIFEST_FILE)
        self.director = ShardsDirector(
            options.storage_options(),
            self.assignments,
            session_check_interval=options.session_check_interval_s,
            channels=ChannelPool(peer_tls, options.cluster_secret),
            max_shards=options.max_shards,
            call_metadata=self.manifest.call_metadata,
            rebuild_corrupt=options.coordinated,
            read_lease_s=options.read_lease_s,
        )
        check_retention_size(options.wal_retention_size, options.wal_segment_size)
        self.retention = RetentionKeeper(
            self.director,
            WalRetention(int(options.wal_retention_s * 1000), options.wal_retention_size),
            int(options.notifications_retention_s * 1000),
            interval_s=options.maintenance_interval_s,
        )
        self.public_port = 0
        self.internal_port = 0
        self.metrics_port = 0
        self._public: grpc.aio.Server | None = None
        self.client_service: OxiaClientService | None = None
        self._internal: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._health = health_aio.HealthServicer()
        self.grpc_metrics = GrpcServerMetrics()  # first interceptor of both ports
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.extra_internal_handlers: list[grpc.GenericRpcHandler] = []
        self.extra_public_handlers: list[grpc.GenericRpcHandler] = []
        self.public_access = PublicAccess.from_options(options.public_auth)
        self.extensions: list[ServerExtension] = []
        for build in extensions:
            ext = build(self)
            self.extensions.append(ext)
            self.extra_public_handlers.append(ext.generic_handler())

    @property
    def public_address(self) -> str:
        return self.options.advertised_public_addr or _advertise(
            self.options.public_addr, self.public_port
        )

    @property
    def internal_address(self) -> str | None:
        """Where peers reach the internal port; None when there is none."""
        if self.options.internal_addr is None:
            return None
        return self.options.advertised_internal_addr or _advertise(
            self.options.internal_addr, self.internal_port
        )

    def open_dirs(self) -> NodeDirs:
        """Locks and checks the data and WAL dirs (``pyxia.dirs``), before anything is
        opened in them; held until :meth:`close`. Idempotent: the command line calls it
        before it tightens the directories' modes, :meth:`start` again."""
        if self.dirs is None:
            self.dirs = NodeDirs.open(self.options.data_dir, self.options.wal_dir, self.mode)
        return self.dirs

    def close_dirs(self) -> None:
        """Releases the directories' locks (nothing may be open in them). Idempotent."""
        dirs, self.dirs = self.dirs, None
        if dirs is not None:
            dirs.close()

    async def start(self) -> None:
        self.open_dirs()
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        opts = grpc_server_options(self.options.max_message_bytes)
        await self.public_access.start()
        self._public = grpc.aio.server(
            options=opts, interceptors=[self.grpc_metrics, *self.public_access.interceptors()]
        )
        client_service = OxiaClientService(
            self.director,
            self.assignments,
            self.public_access,
            notifications_send_timeout_s=self.options.notifications_send_timeout_s,
        )
        self.client_service = client_service
        self._public.add_generic_rpc_handlers(client_service.generic_handlers())
        for h in self.extra_public_handlers:
            self._public.add_generic_rpc_handlers([h])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._public)
        self.public_port = self._bind(
            self._public, self.options.public_addr, "public", self.options.public_tls
        )

        if self.options.internal_addr is not None:
            secret = self.options.cluster_secret
            interceptors: list[grpc.aio.ServerInterceptor] = [self.grpc_metrics]
            if secret is not None:
                interceptors.append(ClusterAuthInterceptor(secret))
            self._internal = grpc.aio.server(options=opts, interceptors=interceptors)
            internal = InternalService(
                self.director,
                self.manifest,
                self._on_pushed_assignments,
                coordinated=self.options.coordinated,
            )
            self._internal.add_generic_rpc_handlers(internal.generic_handlers())
            self._internal.add_generic_rpc_handlers(
                [HandoffService(self.director, internal.verify_caller).generic_handler()]
            )
            for h in self.extra_internal_handlers:
                self._internal.add_generic_rpc_handlers([h])
            self._internal.add_generic_rpc_handlers([health_handler(self._health)])
            self.internal_port = self._bind(
                self._internal, self.options.internal_addr, "internal", self.options.internal_tls
            )

        await self._public.start()
        if self._internal is not None:
            await self._internal.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(READINESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.options.metrics_addr:
            self._start_metrics(self.options.metrics_addr)
        for ext in self.extensions:
            ext.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._maintenance()))

    def _bind(
        self, server: grpc.aio.Server, addr: str, what: str, tls: TlsOptions | None = None
    ) -> int:
        """Listens on ``addr``: with TLS when ``tls`` is on (certificate files reloaded when
        they change), else in plaintext."""
        try:
            if tls is not None and tls.is_enabled:
                port = server.add_secure_port(addr, tls.server_credentials())
            else:
                port = server.add_insecure_port(addr)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {what} address {addr}: {e}") from e
        if port == 0:
            raise OSError(f"cannot listen on {what} address {addr} (in use?)")
        return port

    def _start_metrics(self, addr: str) -> None:
        from pyxia.common.metrics_http import MetricsServer

        self._metrics_server = MetricsServer(addr)  # /metrics only
        self.metrics_port = self._metrics_server.port

    async def _on_pushed_assignments(self, a: client_pb2.ShardAssignments) -> None:
        """The coordinator pushed the assignment map: re-serve it to clients."""
        first = not self.assignments.initialized
        self.assignments.update(a)
        self.director.update_leader_hints()
        if first:
            await self.set_ready()

    async def set_ready(self) -> None:
        await self._health.set(READINESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def _maintenance(self) -> None:
        """Retention of the WAL and notification batches of every replica, leaders and
        followers alike: on a timer of a fraction of the retention and whenever a WAL closes
        a segment (server/retention.py)."""
        await self.retention.run()

    def run_maintenance(self, now_ms: int | None = None) -> list[ReplicaTrim]:
        """One retention check of every replica now."""
        return self.retention.check(now_ms)

    async def hand_off_leaderships(self, drain_s: float) -> None:
        """The first step of a graceful shutdown (see the module docstring): leaderships of
        replicated shards are moved away by the coordinator if one listens, the rest step down
        here; then, if some moved, the server lingers while clients learn the new leaders."""
        await self._health.set(READINESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        director = self.director
        failures = director.failures
        deadline = time.monotonic() + self.options.shutdown_handoff_s
        reported: set[tuple[int, int]] = set()
        while failures.watchers > 0:
            seen = director.leadership.generation
            movable = [lc for lc in director.leading() if lc.replication_factor > 1]
            if not movable:
                break
            for lc in movable:
                if (lc.shard, lc.term) not in reported:
                    reported.add((lc.shard, lc.term))
                    failures.report(
                        lc.namespace,
                        lc.shard,
                        lc.term,
                        "leader",
                        "the server is shutting down",
                        leaving=True,
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await director.leadership.wait(seen, left)
        still = director.leading()
        if still:
            log.info(
                "shutting down: stepping down in place from shards %s",
                ", ".join(str(lc.shard) for lc in still),
            )
            await director.step_down_all(drain_s)
        moved = {shard for shard, _ in reported} - {lc.shard for lc in still}
        if moved:
            log.info(
                "shutting down: leaderships of shards %s moved away; answering for %.1fs more",
                ", ".join(str(s) for s in sorted(moved)),
                self.options.shutdown_linger_s,
            )
            await asyncio.sleep(self.options.shutdown_linger_s)

    async def close(self, grace: float = 2.0, *, hand_off: bool = True) -> None:
        """Hands the leaderships over (unless ``hand_off`` is False), stops accepting
        requests, closes every shard (flushing), stops. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        if hand_off:
            await self.hand_off_leaderships(grace)
        await self._health.enter_graceful_shutdown()
        self.assignments.close()
        for ext in self.extensions:
            await ext.close()
        servers = [s for s in (self._public, self._internal) if s is not None]
        # New RPCs are refused from now on; in-flight ones get `grace` seconds.
        stopping = asyncio.gather(*(s.stop(grace) for s in servers), return_exceptions=True)
        # Whatever leads here again (elected meanwhile) finishes its logged writes, then the
        # shards close: open streams end, the DBs are flushed.
        await self.director.step_down_all(grace)
        await self.director.close()
        await stopping
        await self.public_access.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.close_dirs()
