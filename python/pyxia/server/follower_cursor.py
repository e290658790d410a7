"""The leader's side of replication to one follower.

A cursor streams WAL entries from the follower's ack offset over a Replicate
stream (one ``Append`` per log entry, carrying the leader's commit offset and
the entry's previous CRC, so the follower checks the CRC chain), feeds the
follower's cumulative acks into the quorum tracker, and retries with
exponential backoff. When the follower is empty and the leader's log no
longer starts at 0, or the follower is behind the first retained WAL entry,
it sends a snapshot first (RocksDB checkpoint, 1 MiB chunks); a stream whose
next entry is trimmed meanwhile (retention, see ``retention.py``) ends, and
the snapshot follows. A follower that
answers NODE_IS_NOT_MEMBER lost its data (wiped and restarted): the cursor
resets its ack offset and sends a full snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from pyxia._native import EntryNotFound
from pyxia.errors import NodeIsNotMember
from pyxia.proto import replication_pb2
from pyxia.rpc_errors import error_from_rpc
from pyxia.server.rpc_clients import ChannelPool

if TYPE_CHECKING:
    from pyxia.server.leader_controller import LeaderController

log = logging.getLogger("pyxia.cursor")

REPLICATE = "/replication.OxiaLogReplication/Replicate"
SEND_SNAPSHOT = "/replication.OxiaLogReplication/SendSnapshot"
GET_STATUS = "/replication.OxiaCoordination/GetStatus"
SNAPSHOT_CHUNK = 1024 * 1024
READ_BATCH = 256


def _ident(b: bytes) -> bytes:
    return b


class FollowerCursor:
    """Replicates one shard's log to one follower."""

    def __init__(
        self,
        leader: LeaderController,
        follower: str,
        ack_offset: int,
        channels: ChannelPool,
        *,
        initial_backoff: float = 0.05,
        max_backoff: float = 2.0,
        force_snapshot: bool = False,
    ) -> None:
        self.leader = leader
        self.follower = follower
        self.ack_offset = ack_offset
        self._channels = channels
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.snapshots_sent = 0
        self.errors = 0
        # Set when the follower reported it has no data for the shard.
        self._force_snapshot = force_snapshot
        # The follower's last GetStatus answered NODE_IS_NOT_MEMBER (see _check_follower).
        self._not_member_once = False

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

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("namespace", self.leader.namespace),
            ("shard-id", str(self.leader.shard)),
            ("term", str(self.leader.term)),
            *self.leader.call_metadata(),
        )

    async def _run(self) -> None:
        backoff = self._initial_backoff
        while not self._closed and not self.leader.closed:
            try:
                if self._needs_snapshot():
                    await self._send_snapshot()
                await self._replicate()
                backoff = self._initial_backoff
            except asyncio.CancelledError:
                raise
            except NodeIsNotMember:
                # The follower lost its data: start over with a full snapshot.
                log.warning(
                    "shard %s: follower %s has no data, sending a snapshot",
                    self.leader.shard,
                    self.follower,
                )
                self._reset(-1)
                self._force_snapshot = True
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
            if self._closed or self.leader.closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _check_follower(self) -> None:
        """After a failed stream, asks the follower what it holds: the error that ended the
        stream may not have reached us (a server that ends a stream while we are still sending
        shows up as INTERNAL here). A follower that is NOT_MEMBER (its storage failed) or that
        holds less than it acknowledged (it lost its data) gets a snapshot. A follower with no
        controller for the shard answers NODE_IS_NOT_MEMBER whether it lost its data or just
        restarted and has not opened the shard yet (a Replicate stream opens it from disk):
        only a second such answer, after another stream attempt, means the data is gone."""
        try:
            call = self._channels.get(self.follower).unary_unary(
                GET_STATUS,
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )
            st = await call(
                replication_pb2.GetStatusRequest(shard=self.leader.shard),
                timeout=5,
                metadata=self.leader.call_metadata(),
            )
        except grpc.aio.AioRpcError as e:
            if isinstance(error_from_rpc(e), NodeIsNotMember):
                if self._not_member_once:
                    self._not_member_once = False
                    self._reset(-1)
                    self._force_snapshot = True
                else:
                    self._not_member_once = True
            return
        self._not_member_once = False
        if st.status == replication_pb2.NOT_MEMBER or st.head_offset < self.ack_offset:
            log.warning(
                "shard %s: follower %s holds up to %d (status %s), acknowledged %d: "
                "sending a snapshot",
                self.leader.shard,
                self.follower,
                st.head_offset,
                replication_pb2.ServingStatus.Name(st.status),
                self.ack_offset,
            )
            self._reset(-1)
            self._force_snapshot = True

    def _reset(self, ack_offset: int) -> None:
        self.ack_offset = ack_offset
        tracker = self.leader.tracker
        if tracker is not None:
            tracker.reset_follower(self.follower, ack_offset)

    def _needs_snapshot(self) -> bool:
        if self._force_snapshot:
            return True
        wal = self.leader.wal
        first = wal.first_offset
        if self.ack_offset < 0:
            # An empty follower: the WAL alone can rebuild it only if it
            # still starts at offset 0.
            return self.leader.commit_offset >= 0 and first != 0
        return first < 0 or self.ack_offset + 1 < first

    # -- log shipping -----------------------------------------------------------------------------

    async def _replicate(self) -> None:
        ch = self._channels.get(self.follower)
        call = ch.stream_stream(
            REPLICATE,
            request_serializer=_ident,
            response_deserializer=replication_pb2.Ack.FromString,
        )(self._appends(), metadata=self._metadata())
        try:
            async for ack in call:
                if ack.offset > self.ack_offset:
                    self.ack_offset = ack.offset
                    self.leader.on_follower_ack(self.follower, ack.offset)
                if ack.heartbeat:
                    self.leader.on_follower_heartbeat(self.follower, ack.heartbeat)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        finally:
            call.cancel()

    async def _appends(self) -> AsyncIterator[bytes]:
        leader = self.leader
        wal = leader.wal
        term = leader.term
        nxt = self.ack_offset + 1
        heartbeat = 0  # the newest confirmation round sent on this stream
        while not self._closed and not leader.closed and leader.term == term:
            seen = leader.appended.generation
            rc = leader.confirmations
            if rc is not None and rc.to_send(heartbeat):
                heartbeat = rc.requested
                rc.on_sent(heartbeat)
                yield replication_pb2.Append(
                    term=term, commit_offset=leader.commit_offset, heartbeat=heartbeat
                ).SerializeToString()
            if nxt <= wal.last_offset:
                try:
                    entries = wal.read_batch(nxt, max_entries=READ_BATCH)
                except EntryNotFound:
                    if nxt >= wal.first_offset:
                        raise
                    # The retention trimmed what this follower needs next: end the stream;
                    # the cursor sends a snapshot before it reconnects.
                    log.info(
                        "shard %s: follower %s needs offset %d, the WAL now starts at %d",
                        leader.shard,
                        self.follower,
                        nxt,
                        wal.first_offset,
                    )
                    return
                commit = leader.commit_offset
                for e in entries:
                    yield replication_pb2.Append(
                        term=term,
                        entry=replication_pb2.LogEntry(
                            term=e.term, offset=e.offset, value=e.value, timestamp=e.timestamp
                        ),
                        commit_offset=commit,
                        previous_entry_crc=e.previous_crc,
                        cumulative_acks_supported=True,
                    ).SerializeToString()
                    nxt = e.offset + 1
                continue
            await leader.appended.wait(seen)

    # -- snapshots --------------------------------------------------------------------------------

    async def _send_snapshot(self) -> None:
        leader = self.leader
        snap = leader.storage.create_snapshot()
        try:
            ch = self._channels.get(self.follower)
            call = ch.stream_unary(
                SEND_SNAPSHOT,
                request_serializer=_ident,
                response_deserializer=replication_pb2.SnapshotResponse.FromString,
            )
            try:
                resp = await call(self._chunks(snap), metadata=self._metadata())
            except grpc.aio.AioRpcError as e:
                raise error_from_rpc(e) from e
        finally:
            shutil.rmtree(snap, ignore_errors=True)
        self.snapshots_sent += 1
        self._force_snapshot = False
        log.info(
            "shard %s: snapshot sent to %s (offset %d)",
            leader.shard,
            self.follower,
            resp.ack_offset,
        )
        self.ack_offset = resp.ack_offset
        tracker = leader.tracker
        if tracker is not None:
            tracker.reset_follower(self.follower, resp.ack_offset)
            leader.on_follower_ack(self.follower, resp.ack_offset)

    async def _chunks(self, snap_dir: Path) -> AsyncIterator[bytes]:
        term = self.leader.term
        for f, size in await asyncio.to_thread(_list_files, snap_dir):
            count = max(1, -(-size // SNAPSHOT_CHUNK))
            for i in range(count):
                content = await asyncio.to_thread(_read_chunk, f, i * SNAPSHOT_CHUNK)
                yield replication_pb2.SnapshotChunk(
                    term=term, name=f.name, content=content, chunk_index=i, chunk_count=count
                ).SerializeToString()


def _list_files(d: Path) -> list[tuple[Path, int]]:
    return sorted((p, p.stat().st_size) for p in d.iterdir() if p.is_file())


def _read_chunk(path: Path, at: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(at)
        return f.read(SNAPSHOT_CHUNK)
