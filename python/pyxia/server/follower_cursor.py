"""The leader's side of replication to one follower.

A cursor streams WAL entries from the follower's ack offset over a Replicate
stream (one ``Append`` per log entry, carrying the leader's commit offset and
the entry's previous CRC, so the follower checks the CRC chain), feeds the
follower's cumulative acks back, and retries with exponential backoff. When the
leader says the follower needs a snapshot (it is empty and the leader's log no
longer starts at 0, or it is behind the first retained WAL entry, or it lost its
data) it sends one first (RocksDB checkpoint, 1 MiB chunks); a stream whose
next entry is trimmed meanwhile (retention, see ``retention.py``) ends, and
the snapshot follows. A follower that answers NODE_IS_NOT_MEMBER lost its data
(wiped and restarted): the leader starts it over and the cursor sends a full
snapshot.

The cursor sees its leader only through :class:`ReplicationSource`, one leadership's narrow
interface (what to send next; acks, heartbeat answers, snapshots and follower statuses in):
the decisions (what an ack commits, when a snapshot is needed, what a status answer means)
are the replica state machine's (``replica.py``). A cursor whose leadership is over stops.

An *observer* cursor (shard split) feeds a replica of a child shard from the parent's leader:
its source's streams name the child shard (``stream_shard``) and carry the child's hash range
in the metadata (``split-hash-range-min``/``-max``, as Oxia's); the machine starts it with a
snapshot (a child replica may hold a tail of an earlier parent term that this leader's log does
not), and its acks never count towards the parent's quorum nor answer its leadership
confirmations.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import grpc

from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.common.instance_id import CallMetadata
from pyxia.common.signals import Signal
from pyxia.errors import NodeIsNotMember
from pyxia.metrics import ShardMetrics
from pyxia.proto import replication_pb2

log = logging.getLogger("pyxia.cursor")

REPLICATE = "/replication.OxiaLogReplication/Replicate"
SEND_SNAPSHOT = "/replication.OxiaLogReplication/SendSnapshot"
GET_STATUS = "/replication.OxiaCoordination/GetStatus"
SPLIT_MIN_HEADER = "split-hash-range-min"
SPLIT_MAX_HEADER = "split-hash-range-max"
SNAPSHOT_CHUNK = 1024 * 1024
READ_BATCH = 256
COMMIT_NOTICE_S = 0.05
"""A stream idle this long whose follower was not told that its last entries committed sends
it the commit offset alone (a round-0 heartbeat): a follower otherwise learns it only with the
next entry or confirmation round, and applies (and trims) nothing past what it was told."""


def _ident(b: bytes) -> bytes:
    return b


class ReplicationSource(Protocol):
    """One leadership as its follower cursors see it (``leader_controller.TenureSource``)."""

    @property
    def shard(self) -> int:
        """The leader's shard."""

    @property
    def stream_shard(self) -> int:
        """The shard the follower's replica is of (a split observer's: a child shard)."""

    @property
    def metrics(self) -> ShardMetrics: ...

    @property
    def term(self) -> int:
        """The leadership's term: every message of its streams carries it."""

    @property
    def leads(self) -> bool:
        """The leadership is still on (no new term, no close): the cursor goes on."""

    @property
    def appended(self) -> Signal:
        """Bumped when there is something new to send (an entry, a confirmation round)."""

    @property
    def commit_offset(self) -> int: ...

    def stream_metadata(self) -> CallMetadata:
        """The headers of a stream to a follower (namespace, shard, term, the cluster's proof)."""

    def call_metadata(self) -> CallMetadata:
        """The cluster's proof alone (a GetStatus call)."""

    def ack_offset(self, follower: str) -> int:
        """What ``follower`` acknowledged (-1: nothing)."""

    def needs_snapshot(self, follower: str) -> bool: ...

    def heartbeat_due(self, last_sent: int, follower: str | None = None) -> tuple[int, int] | None:
        """The confirmation round ``follower``'s stream, which last carried ``last_sent``,
        should carry now, with the commit offset to send along; None: none due."""

    def appends_from(self, offset: int, max_entries: int) -> list[bytes] | None:
        """Up to ``max_entries`` log entries from ``offset``, each as one serialized ``Append``
        of this term carrying the commit offset and the entry's previous CRC (empty: none
        yet); None: the retention trimmed ``offset`` away (the follower needs a snapshot)."""

    def create_snapshot(self) -> Path: ...

    def on_ack(self, follower: str, offset: int) -> None: ...

    def on_heartbeat(self, follower: str, round_id: int, lease_s: float = 0.0) -> None: ...

    def on_snapshot_sent(self, follower: str, ack_offset: int) -> None: ...

    def on_lost_data(self, follower: str) -> None:
        """``follower`` answered NODE_IS_NOT_MEMBER on a stream: it holds nothing."""

    def on_follower_status(self, follower: str, status: int | None, head_offset: int) -> None:
        """``follower``'s GetStatus answer after a failed stream (None: NODE_IS_NOT_MEMBER)."""


class FollowerCursor:
    """Replicates one shard's log to one follower, for one leadership."""

    def __init__(
        self,
        leader: ReplicationSource,
        follower: str,
        channels: ChannelPool,
        *,
        initial_backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        self.leader = leader
        self.follower = follower
        self._channels = channels
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.snapshots_sent = 0
        self.errors = 0

    @property
    def ack_offset(self) -> int:
        """What the follower acknowledged (as the leader counts it)."""
        return self.leader.ack_offset(self.follower)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"cursor-{self.leader.shard}-{self.follower}"
        )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _going(self) -> bool:
        return not self._closed and self.leader.leads

    async def _run(self) -> None:
        backoff = self._initial_backoff
        while self._going():
            try:
                if self.leader.needs_snapshot(self.follower):
                    await self._send_snapshot()
                await self._replicate()
                backoff = self._initial_backoff
            except asyncio.CancelledError:
                raise
            except NodeIsNotMember:
                # The follower lost its data: start over with a full snapshot.
                self.leader.on_lost_data(self.follower)
                continue
            except Exception as e:
                self.errors += 1
                log.info(
                    "shard %s: replication to %s interrupted: %s",
                    self.leader.shard,
                    self.follower,
                    e,
                )
                await self._check_follower()
            if not self._going():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _check_follower(self) -> None:
        """After a failed stream, asks the follower what it holds (the error that ended the
        stream may not have reached us: a server that ends a stream while we are still sending
        shows up as INTERNAL here); the leader decides what the answer means."""
        try:
            call = self._channels.get(self.follower).unary_unary(
                GET_STATUS,
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )
            st = await call(
                replication_pb2.GetStatusRequest(shard=self.leader.stream_shard),
                timeout=5,
                metadata=self.leader.call_metadata(),
            )
        except grpc.aio.AioRpcError as e:
            if isinstance(error_from_rpc(e), NodeIsNotMember):
                self.leader.on_follower_status(self.follower, None, -1)
            return
        self.leader.on_follower_status(self.follower, st.status, st.head_offset)

    # -- log shipping -----------------------------------------------------------------------------

    async def _replicate(self) -> None:
        leader = self.leader
        ch = self._channels.get(self.follower)
        call = ch.stream_stream(
            REPLICATE,
            request_serializer=_ident,
            response_deserializer=replication_pb2.Ack.FromString,
        )(self._appends(), metadata=leader.stream_metadata())
        try:
            async for ack in call:
                if ack.offset > leader.ack_offset(self.follower):
                    leader.on_ack(self.follower, ack.offset)
                if ack.heartbeat:
                    leader.on_heartbeat(self.follower, ack.heartbeat, ack.lease_ms / 1000.0)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        finally:
            call.cancel()

    async def _appends(self) -> AsyncIterator[bytes]:
        leader = self.leader
        term = leader.term
        nxt = self.ack_offset + 1
        heartbeat = 0  # the newest confirmation round sent on this stream
        commit_sent = -1  # the newest commit offset this stream carried
        observer = leader.stream_shard != leader.shard  # (carries the parent's offsets)
        idle = False  # the last wait timed out: nothing new for COMMIT_NOTICE_S
        while self._going():
            seen = leader.appended.generation
            due = leader.heartbeat_due(heartbeat, self.follower)
            if due is not None:
                heartbeat, commit = due
                commit_sent = max(commit_sent, commit)
                yield replication_pb2.Append(
                    term=term, commit_offset=commit, heartbeat=heartbeat
                ).SerializeToString()
            elif idle and not observer and leader.commit_offset > commit_sent:
                commit_sent = leader.commit_offset
                notice = replication_pb2.Append(term=term, commit_offset=commit_sent)
                yield notice.SerializeToString()
            idle = False
            frames = leader.appends_from(nxt, READ_BATCH)
            if frames is None:
                # The retention trimmed what this follower needs next: end the stream; the
                # cursor sends a snapshot before it reconnects.
                log.info(
                    "shard %s: follower %s needs offset %d, the WAL no longer holds it",
                    leader.shard,
                    self.follower,
                    nxt,
                )
                return
            if frames:
                # Offsets are contiguous: the frames carry entries nxt, nxt + 1, ...
                commit_sent = max(commit_sent, leader.commit_offset)  # (built with it, just now)
                for frame in frames:
                    yield frame
                    nxt += 1
                continue
            if not observer and commit_sent < nxt - 1:
                idle = not await leader.appended.wait(seen, COMMIT_NOTICE_S)
            else:
                await leader.appended.wait(seen)

    # -- snapshots --------------------------------------------------------------------------------

    async def _send_snapshot(self) -> None:
        leader = self.leader
        m = leader.metrics
        m.snapshots_started.inc()
        started = time.perf_counter()
        try:
            resp = await self._transfer_snapshot()
        except BaseException:
            m.snapshots_failed.inc()
            raise
        m.snapshots_completed.inc()
        m.snapshots_transfer_time.observe((time.perf_counter() - started) * 1000.0)
        self.snapshots_sent += 1
        leader.on_snapshot_sent(self.follower, resp.ack_offset)

    async def _transfer_snapshot(self) -> replication_pb2.SnapshotResponse:
        leader = self.leader
        snap = leader.create_snapshot()
        try:
            ch = self._channels.get(self.follower)
            call = ch.stream_unary(
                SEND_SNAPSHOT,
                request_serializer=_ident,
                response_deserializer=replication_pb2.SnapshotResponse.FromString,
            )
            try:
                resp: replication_pb2.SnapshotResponse = await call(
                    self._chunks(snap), metadata=leader.stream_metadata()
                )
            except grpc.aio.AioRpcError as e:
                raise error_from_rpc(e) from e
        finally:
            shutil.rmtree(snap, ignore_errors=True)
        return resp

    async def _chunks(self, snap_dir: Path) -> AsyncIterator[bytes]:
        term = self.leader.term
        for f, size in await asyncio.to_thread(_list_files, snap_dir):
            count = max(1, -(-size // SNAPSHOT_CHUNK))
            for i in range(count):
                content = await asyncio.to_thread(_read_chunk, f, i * SNAPSHOT_CHUNK)
                self.leader.metrics.snapshots_sent_bytes.inc(len(content))
                yield replication_pb2.SnapshotChunk(
                    term=term, name=f.name, content=content, chunk_index=i, chunk_count=count
                ).SerializeToString()


def _list_files(d: Path) -> list[tuple[Path, int]]:
    return sorted((p, p.stat().st_size) for p in d.iterdir() if p.is_file())


def _read_chunk(path: Path, at: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(at)
        return f.read(SNAPSHOT_CHUNK)
