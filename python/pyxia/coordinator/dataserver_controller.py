"""The coordinator's view of one data server: liveness and assignments.

Liveness (Oxia: gRPC health ``Watch`` plus periodic ``Check`` probes):

- an explicit NOT_SERVING, or a watch stream that breaks and is followed by
  a probe that fails, marks the server unavailable at once (a killed
  process refuses connections: no reason to wait);
- a server that stops answering (paused, partitioned) is marked
  unavailable after ``failures`` consecutive probe timeouts;
- it is available again once a probe or the watch says SERVING and the
  Handshake (binding it to this cluster's instance id) succeeded.

Identity: every call the coordinator makes to a data server except Handshake and the health
checks carries the cluster's ``instance-id`` header, and the server refuses calls before its
first Handshake. So the Handshake comes first: :meth:`DataServerController.ensure_bound` runs
it (once, under a lock) before the assignment push and the event stream open, and shard
controllers call it before their first coordination call. A watch stream that breaks (the
server may have restarted with a wiped data directory) makes the next probe handshake again.

It also keeps a ``PushShardAssignments`` stream to the server, re-sending the full
assignment map whenever it changes: the stream's first map at once, then, after a change, the
latest map once ``push_linger`` passed, so the changes of a burst (elections finishing one
status write after another) go out as one push; the coordinator serializes it once for every
stream. No linger after a map that named no leader for some shard (a new shard, not elected
yet): clients cannot use such a shard (Oxia's Go client dials the empty address), so the map
that names its first leader goes at once. A map equal to the last one sent on the stream is
not sent again (an election's first status write leaves the published map as it was). And a
``ShardEvents/Watch`` stream from it: replicas of the server that failed on their own (a leader
whose disk filled up), handed to the coordinator so it re-elects at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from pyxia.common.channels import ChannelPool
from pyxia.common.instance_id import INSTANCE_ID_HEADER, CallMetadata
from pyxia.common.signals import Signal
from pyxia.config import ServerAddress
from pyxia.coordinator.metrics import NodeMetrics
from pyxia.metrics import COORDINATOR_ASSIGNMENT_PUSH_BYTES, COORDINATOR_ASSIGNMENT_PUSHES
from pyxia.proto import admin_pb2, replication_pb2

log = logging.getLogger("pyxia.coordinator.dataserver")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
HANDSHAKE = "/replication.OxiaCoordination/Handshake"
PUSH_ASSIGNMENTS = "/replication.OxiaCoordination/PushShardAssignments"
WATCH_SHARD_EVENTS = "/pyxia.admin.v1.ShardEvents/Watch"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class LivenessOptions:
    probe_interval: float = 2.0
    probe_timeout: float = 5.0
    failures: int = 3
    reconnect_backoff: float = 0.1


class DataServerController:
    """Watches one data server and pushes assignments to it."""

    def __init__(
        self,
        server: ServerAddress,
        channels: ChannelPool,
        instance_id: str,
        assignments: Callable[[], bytes | None],
        assignments_changed: Signal,
        on_change: Callable[[str, bool], Awaitable[None]],
        options: LivenessOptions | None = None,
        on_shard_event: Callable[[str, admin_pb2.ShardEvent], None] | None = None,
        on_reconnected: Callable[[str], None] | None = None,
        push_linger: float = 0.0,
        assignments_leaderless: Callable[[], bool] = lambda: False,
    ) -> None:
        self.server = server
        self.internal = server.internal
        self._channels = channels
        self._instance_id = instance_id
        self.call_metadata: CallMetadata = ((INSTANCE_ID_HEADER, instance_id),)
        self._handshake_lock = asyncio.Lock()
        self._assignments = assignments
        self._assignments_changed = assignments_changed
        self._push_linger = push_linger
        self._assignments_leaderless = assignments_leaderless
        self._on_change = on_change
        self._on_shard_event = on_shard_event
        self._on_reconnected = on_reconnected
        self.options = options or LivenessOptions()
        self.available = False
        self.bound = False
        self._consecutive_failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.metrics = NodeMetrics(self.internal)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_loop(), name=f"ds-watch-{self.internal}"),
            loop.create_task(self._probe_loop(), name=f"ds-probe-{self.internal}"),
            loop.create_task(self._push_loop(), name=f"ds-push-{self.internal}"),
            loop.create_task(self._events_loop(), name=f"ds-events-{self.internal}"),
        ]

    async def close(self) -> None:
        self._closed = True
        self.metrics.close()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    # -- liveness ---------------------------------------------------------------------------------

    async def _set(self, available: bool, why: str) -> None:
        if available == self.available or self._closed:
            return
        self.available = available
        self.metrics.running.set(1 if available else 0)
        log.info(
            "data server %s is %s (%s)",
            self.internal,
            "available" if available else "unavailable",
            why,
        )
        await self._on_change(self.internal, available)

    async def ensure_bound(self) -> bool:
        """Handshakes unless already bound; False if the server cannot be bound now
        (unreachable, or another cluster's)."""
        if self.bound:
            return True
        async with self._handshake_lock:
            if self.bound:
                return True
            try:
                return await self._handshake()
            except grpc.aio.AioRpcError:
                return False

    async def _handshake(self) -> bool:
        ch = self._channels.get(self.internal)
        call = ch.unary_unary(
            HANDSHAKE,
            request_serializer=replication_pb2.HandshakeRequest.SerializeToString,
            response_deserializer=replication_pb2.HandshakeResponse.FromString,
        )
        res = await call(
            replication_pb2.HandshakeRequest(instance_id=self._instance_id),
            timeout=self.options.probe_timeout,
        )
        if res.status == replication_pb2.HANDSHAKE_STATUS_MISMATCH:
            log.error("data server %s belongs to another cluster: refusing it", self.internal)
            return False
        self.bound = True
        return True

    async def _check(self) -> bool:
        ch = self._channels.get(self.internal)
        call = ch.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        res = await call(
            health_pb2.HealthCheckRequest(service=""), timeout=self.options.probe_timeout
        )
        return bool(res.status == SERVING)

    async def _healthy(self) -> bool:
        """One probe, handshaking first if needed."""
        try:
            if not await self.ensure_bound():
                return False
            return await self._check()
        except grpc.aio.AioRpcError:
            return False

    async def _watch_loop(self) -> None:
        while not self._closed:
            ch = self._channels.get(self.internal)
            call = ch.unary_stream(
                HEALTH_WATCH,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(health_pb2.HealthCheckRequest(service=""))
            watched = False  # the stream answered SERVING before it broke
            try:
                async for res in call:
                    if res.status == SERVING:
                        if self.bound or await self._healthy():
                            watched = True
                            self._consecutive_failures = 0
                            await self._set(True, "health watch")
                    else:
                        await self._set(False, "NOT_SERVING")
            except grpc.aio.AioRpcError:
                pass
            finally:
                call.cancel()
            if self._closed:
                return
            # The stream broke: the server may come back wiped (unbound), so the next probe
            # handshakes again. A dead process refuses the probe at once.
            self.bound = False
            if not await self._healthy():
                await self._set(False, "health watch broken and probe failed")
            elif watched and self.available and self._on_reconnected is not None:
                # Broken, yet the probe answers: the server may have restarted in between,
                # too fast to be seen unavailable, and a restarted server's replicas are
                # fenced until the coordinator adds them back. Its shards check them now (a
                # rolling restart waited a minute for the periodic check).
                log.info(
                    "data server %s: health watch broken, reachable: checking its shards",
                    self.internal,
                )
                self._on_reconnected(self.internal)
            await asyncio.sleep(self.options.reconnect_backoff)

    async def _probe_loop(self) -> None:
        while not self._closed:
            if await self._healthy():
                self._consecutive_failures = 0
                await self._set(True, "probe")
            else:
                self.metrics.failed_checks.inc()
                self._consecutive_failures += 1
                if self._consecutive_failures >= self.options.failures:
                    await self._set(False, f"{self._consecutive_failures} failed probes")
            await asyncio.sleep(self.options.probe_interval)

    # -- replica failures -------------------------------------------------------------------------

    async def _events_loop(self) -> None:
        backoff = self.options.reconnect_backoff
        while not self._closed:
            if not await self.ensure_bound():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            call = self._channels.get(self.internal).unary_stream(
                WATCH_SHARD_EVENTS,
                request_serializer=admin_pb2.WatchShardEventsRequest.SerializeToString,
                response_deserializer=admin_pb2.ShardEvent.FromString,
            )(admin_pb2.WatchShardEventsRequest(), metadata=self.call_metadata)
            try:
                async for ev in call:
                    backoff = self.options.reconnect_backoff
                    if self._on_shard_event is not None and not self._closed:
                        self._on_shard_event(self.internal, ev)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("data server %s does not report shard events", self.internal)
                    return
            finally:
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # -- assignments ------------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        backoff = self.options.reconnect_backoff
        while not self._closed:
            if not await self.ensure_bound():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            ch = self._channels.get(self.internal)
            call = ch.stream_unary(
                PUSH_ASSIGNMENTS,
                request_serializer=None,  # serialized already (bytes)
                response_deserializer=replication_pb2.CoordinationShardAssignmentsResponse.FromString,
            )
            try:
                await call(self._stream(), metadata=self.call_metadata)
            except grpc.aio.AioRpcError:
                self.bound = False  # it may have restarted unbound: handshake again first
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _stream(self) -> AsyncIterator[bytes]:
        sent = -1  # the generation of the map last sent
        last: bytes | None = None  # the map last sent on this stream
        last_leaderless = False  # it named no leader for some shard (a new one)
        while not self._closed:
            seen = self._assignments_changed.generation
            if last is not None and seen != sent and self._push_linger > 0 and not last_leaderless:
                # A change: the rest of its burst joins it (the stream's first map goes at once).
                await asyncio.sleep(self._push_linger)
                if self._closed:
                    return
                seen = self._assignments_changed.generation
            current = self._assignments()
            if current is not None and seen != sent:
                sent = seen
                if current != last:
                    COORDINATOR_ASSIGNMENT_PUSHES.inc()
                    COORDINATOR_ASSIGNMENT_PUSH_BYTES.inc(len(current))
                    last = current
                    last_leaderless = self._assignments_leaderless()  # of ``current``: no await
                    yield current
            await self._assignments_changed.wait(seen)
