"""A follower replica of one shard: the receiving end of replication.

Lifecycle rules (the lessons of Oxia's follower-controller refactor):

- the status is a single field changed only by the event-loop thread, and
  every operation re-checks ``closed`` after each await;
- state-changing operations (NewTerm, Truncate, snapshot install, close)
  serialize on one lock; appends never wait on it: while it is held they are
  refused (the leader reconnects);
- one Replicate stream at a time (a second one gets a conflict error);
- acknowledgements are sent only for durable entries, one cumulative ack per
  WAL sync round;
- committed entries are applied to the DB by a background applier woken by a
  :class:`Signal`, so a wake-up can never be lost; it applies in steps, a slice
  of loop time at a time (``storage/steps.py``), so a big entry cannot stall
  the other shards; whoever takes the lock first abandons an entry in
  progress (nothing of it was written; it is applied again afterwards), so the
  lock holder has the storage to itself;
- Truncate only while FENCED and with no stream; a snapshot's term is checked
  before anything is destroyed, and a failed install restores the old DB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from pyxia._native import CrcMismatch, InvalidNextOffset, WalError
from pyxia.common.validation import accepts_term, check_storable_term
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidStatus,
    InvalidTerm,
    LeaderAlreadyConnected,
    NodeIsNotMember,
    PyxiaError,
    StorageFailure,
)
from pyxia.failpoints import afailpoint
from pyxia.proto import replication_pb2
from pyxia.server.leader_controller import FENCED, FOLLOWER, NOT_MEMBER
from pyxia.server.shard_storage import ShardStorage
from pyxia.server.signals import Signal
from pyxia.storage.db import TermOptions
from pyxia.storage.steps import APPLY_SLICE_S, Abandoned, Steps, run_sliced

log = logging.getLogger("pyxia.follower")


class FollowerController:
    """One shard replica following a leader."""

    def __init__(self, storage: ShardStorage) -> None:
        self.storage = storage
        self.namespace = storage.namespace
        self.shard = storage.shard
        term, options = storage.read_term()
        self.term = term
        self.term_options = options
        self.status = NOT_MEMBER if term < 0 else FENCED
        self.leader_commit_offset = -1
        # While rebuilding after corruption: the leader's commit offset when this replica
        # rejoined (holding it all makes the replica whole again).
        self._rebuild_target: int | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._stream_active = False
        self._stream_generation = 0
        self.durable = Signal()  # a WAL sync round completed
        self._apply_wanted = Signal()
        self._applying: Steps[int] | None = None  # the apply in progress, between two slices
        self.apply_slice_s = APPLY_SLICE_S
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(storage.wal.notify_fd, self._on_wal_round)
        self._applier_task = self._loop.create_task(
            self._apply_loop(), name=f"follower-applier-{self.shard}"
        )
        self.failure: str | None = None
        # Called (with the cause) on this replica's first failure: the director reports it.
        self.on_failure: Callable[[str], None] | None = None

    # -- status -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """A NewTerm, Truncate or snapshot install is in progress (the storage may be in the
        middle of a change, in a thread)."""
        return self._lock.locked()

    @property
    def status_name(self) -> str:
        return str(replication_pb2.ServingStatus.Name(self.status))

    def get_status(self) -> replication_pb2.GetStatusResponse:
        self._check_open()
        return replication_pb2.GetStatusResponse(
            term=self.term,
            status=self.status,
            head_offset=self.storage.wal.last_offset,
            commit_offset=self.storage.commit_offset,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed(f"oxia: shard {self.shard} follower is closed", shard=self.shard)

    # -- coordination -----------------------------------------------------------------------------

    async def new_term(self, term: int, options: TermOptions) -> replication_pb2.EntryId:
        """Fences this replica. Same rules as the leader's: lower terms are
        refused, the same term only while FENCED (a retried NewTerm)."""
        check_storable_term(term)
        async with self._exclusive():
            self._check_open()
            if not accepts_term(term, self.term, self.storage.head_entry_id().term):
                raise InvalidTerm(
                    f"oxia: invalid term {term}, the shard is at term {self.term}",
                    shard=self.shard,
                )
            if term < self.term:
                log.warning(
                    "shard %s: term %d is beyond the largest valid term; re-based to %d",
                    self.shard,
                    self.term,
                    term,
                )
            if term == self.term and self.status != FENCED:
                raise InvalidStatus(
                    f"oxia: NewTerm for the current term {term} while {self.status_name}",
                    shard=self.shard,
                )
            self._end_stream()
            self.storage.update_term(term, options)
            self.term = term
            self.term_options = options
            self.status = FENCED
            # The head we report must be durable: the new leader counts it.
            await asyncio.to_thread(self.storage.wal.sync)
            self._check_open()
            return self.storage.election_head()

    async def truncate(self, term: int, head: replication_pb2.EntryId) -> replication_pb2.EntryId:
        """Drops the entries after ``head`` (the last one shared with the
        new leader). Only while FENCED in ``term`` and with no stream."""
        async with self._exclusive():
            self._check_open()
            if term != self.term:
                raise InvalidTerm(
                    f"oxia: Truncate for term {term}, the shard is at {self.term}",
                    shard=self.shard,
                )
            if self.status != FENCED:
                raise InvalidStatus(f"oxia: Truncate while {self.status_name}", shard=self.shard)
            if self._stream_active:
                raise InvalidStatus(
                    "oxia: Truncate with a replication stream open", shard=self.shard
                )
            if 0 <= head.offset < self.storage.commit_offset:
                raise InvalidArgument(
                    f"oxia: refusing to truncate to {head.offset}: entries up to "
                    f"{self.storage.commit_offset} are applied (committed)",
                    shard=self.shard,
                )
            try:
                await asyncio.to_thread(self.storage.wal.truncate, head.offset)
            except WalError as e:
                self._storage_failed(e)
                raise StorageFailure(str(e), shard=self.shard) from e
            self._check_open()
            self.status = FOLLOWER
            return self.storage.head_entry_id()

    # -- replication stream -----------------------------------------------------------------------

    async def replicate(
        self, term: int, appends: AsyncIterator[bytes]
    ) -> AsyncIterator[replication_pb2.Ack]:
        """Serves one Replicate stream: appends entries, yields cumulative
        acks of durable offsets."""
        self._check_open()
        if self.status == NOT_MEMBER:
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {self.shard}", shard=self.shard
            )
        if term != self.term:
            raise InvalidTerm(
                f"oxia: replication for term {term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self._stream_active:
            raise LeaderAlreadyConnected(
                f"oxia: shard {self.shard} already has a replication stream", shard=self.shard
            )
        if self._lock.locked():
            raise InvalidStatus(f"oxia: shard {self.shard} is busy", shard=self.shard)
        self._stream_active = True
        self._stream_generation += 1
        generation = self._stream_generation
        received = -1
        heartbeat = 0  # the newest leadership-confirmation round received at this term
        failure: list[BaseException] = []

        async def pump() -> None:
            nonlocal received, heartbeat
            try:
                async for raw in appends:
                    if self._closed or generation != self._stream_generation:
                        return
                    try:
                        a = replication_pb2.Append.FromString(raw)
                    except DecodeError as e:
                        raise InvalidArgument(
                            f"oxia: malformed Append message: {e}", shard=self.shard
                        ) from None
                    if a.heartbeat and not a.HasField("entry"):
                        self._check_append_term(term, a)
                        self._follow_commit(a)
                        heartbeat = max(heartbeat, a.heartbeat)
                        self.durable.notify()
                        continue
                    received = max(received, self._append(term, a))
            except BaseException as e:
                failure.append(e)
            finally:
                self.durable.notify()

        task = self._loop.create_task(pump(), name=f"follower-pump-{self.shard}")
        acked = -1
        answered = 0
        try:
            while True:
                seen = self.durable.generation
                if failure:
                    err = failure[0]
                    if isinstance(err, (PyxiaError, asyncio.CancelledError)):
                        raise err
                    raise StorageFailure(f"oxia: replication failed: {err}", shard=self.shard)
                if self._closed or generation != self._stream_generation:
                    raise AlreadyClosed(f"oxia: shard {self.shard} stream ended", shard=self.shard)
                durable = min(self.storage.wal.last_synced_offset, received)
                if durable > acked:
                    await afailpoint("follower.after_append_before_ack")
                    acked = durable
                    yield replication_pb2.Ack(offset=durable)
                    continue
                if heartbeat > answered and not self._closed and term == self.term:
                    answered = heartbeat
                    yield replication_pb2.Ack(offset=acked, heartbeat=answered)
                    continue
                if task.done() and not failure:
                    return  # the leader closed its side
                await self.durable.wait(seen)
        finally:
            task.cancel()
            if generation == self._stream_generation:
                self._stream_active = False

    def _check_append_term(self, term: int, a: replication_pb2.Append) -> None:
        if a.term != self.term or term != self.term:
            raise InvalidTerm(
                f"oxia: append for term {a.term}, the shard is at {self.term}", shard=self.shard
            )

    def _follow_commit(self, a: replication_pb2.Append) -> None:
        if self.storage.rebuilding and self._rebuild_target is None:
            self._rebuild_target = a.commit_offset
            self._check_rebuilt()
        if a.commit_offset > self.leader_commit_offset:
            self.leader_commit_offset = a.commit_offset
            self._apply_wanted.notify()

    def _check_rebuilt(self) -> None:
        """A replica rebuilt after corruption may lead again once it holds everything that
        was committed when it rejoined."""
        target = self._rebuild_target
        if self.storage.rebuilding and target is not None and self.storage.commit_offset >= target:
            self.storage.finish_rebuilding()
            log.info(
                "shard %s/%s: rebuilt from the leader up to offset %d",
                self.namespace,
                self.shard,
                self.storage.commit_offset,
            )

    def _append(self, term: int, a: replication_pb2.Append) -> int:
        """Appends one entry; returns its offset. Duplicates are skipped
        (they are re-acknowledged), gaps and CRC mismatches end the stream."""
        self._check_append_term(term, a)
        if self._lock.locked():
            raise InvalidStatus(f"oxia: shard {self.shard} is busy", shard=self.shard)
        e = a.entry
        if not 0 <= e.term <= term or e.offset < 0:
            raise InvalidArgument(
                f"oxia: append of entry {e.term}/{e.offset} at term {term}", shard=self.shard
            )
        wal = self.storage.wal
        last = wal.last_offset
        if last < 0 and e.offset != self.storage.commit_offset + 1:
            # An empty log must continue the DB (entry 0, or the one after a snapshot): this
            # replica lost its data, it needs a snapshot, not a log with a hole.
            raise NodeIsNotMember(
                f"oxia: shard {self.shard} holds nothing before offset {e.offset} "
                f"(its data ends at {self.storage.commit_offset})",
                shard=self.shard,
            )
        if self.status == FENCED:
            self.status = FOLLOWER
        if last >= 0 and e.offset <= last:
            pass  # duplicate: already held, re-acknowledged
        else:
            prev = a.previous_entry_crc if a.HasField("previous_entry_crc") else None
            try:
                wal.append(e.term, e.offset, e.value, e.timestamp, prev)
            except (InvalidNextOffset, CrcMismatch) as err:
                raise InvalidArgument(f"oxia: {err}", shard=self.shard) from err
            except WalError as err:
                self._storage_failed(err)
                raise StorageFailure(str(err), shard=self.shard) from err
            wal.request_sync()
        self._follow_commit(a)
        return int(e.offset)

    def _end_stream(self) -> None:
        self._stream_generation += 1
        self._stream_active = False
        self.durable.notify()

    def _on_wal_round(self) -> None:
        try:
            while os.read(self.storage.wal.notify_fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        failure = self.storage.wal.failure
        if failure is not None:
            self._storage_failed(RuntimeError(failure))
        self.durable.notify()
        self._apply_wanted.notify()

    # -- applying committed entries ---------------------------------------------------------------

    async def _apply_loop(self) -> None:
        """Applies entries up to the leader's commit offset, never past what
        is durable here (the DB must never be ahead of the local WAL)."""
        while not self._closed:
            seen = self._apply_wanted.generation
            target = min(self.leader_commit_offset, self.storage.wal.last_synced_offset)
            if target > self.storage.commit_offset and not self._lock.locked():
                try:
                    await self._apply_to(target)
                    self._check_rebuilt()
                except Abandoned:
                    continue  # a lock holder took over; look again once it is done
                except Exception as e:
                    self._storage_failed(e)
                    return
                await asyncio.sleep(0)
                continue
            await self._apply_wanted.wait(seen)

    async def _apply_to(self, target: int) -> None:
        steps = self._applying = self.storage.apply_steps(target)
        try:
            await run_sliced(steps, self.apply_slice_s, lambda: self._applying is steps)
        finally:
            if self._applying is steps:
                self._applying = None

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Holds the replica's lock (NewTerm, Truncate, snapshot install) with the apply in
        progress dropped; on release the applier is woken, so it goes on with what is committed
        (it stood aside while the lock was held and nothing else may wake it)."""
        async with self._lock:
            self._abandon_apply()
            try:
                yield
            finally:
                self._apply_wanted.notify()

    def _abandon_apply(self) -> None:
        """Drops the apply in progress between two of its steps (nothing of the entry in
        progress was written), before the caller changes the storage."""
        steps, self._applying = self._applying, None
        if steps is not None:
            steps.close()

    # -- snapshots --------------------------------------------------------------------------------

    async def install_snapshot(self, term: int, chunks: AsyncIterator[bytes]) -> int:
        """Receives a DB snapshot and makes it this replica's state. Returns
        the snapshot's commit offset (the leader's next entry follows it)."""
        async with self._exclusive():
            self._check_open()
            # The term is checked before anything is destroyed.
            if term < self.term:
                raise InvalidTerm(
                    f"oxia: snapshot for term {term}, the shard is at {self.term}",
                    shard=self.shard,
                )
            self._end_stream()
            staged = self.storage.snapshot_staging_dir()
            try:
                await self._receive_chunks(term, chunks, staged)
                await afailpoint("snapshot.after_receive_before_install")
                self._check_open()
                commit = await asyncio.to_thread(self.storage.install_snapshot, staged, term)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            await afailpoint("snapshot.after_install_before_reply")
            self._check_open()
            self.term, self.term_options = self.storage.read_term()
            self.status = FOLLOWER
            self.leader_commit_offset = commit
            log.info(
                "shard %s: installed a snapshot at offset %d, term %d", self.shard, commit, term
            )
            if self.storage.rebuilding:
                self._rebuild_target = commit  # the leader's state when it sent the snapshot
                self._check_rebuilt()
            return commit

    async def _receive_chunks(self, term: int, chunks: AsyncIterator[bytes], staged: Path) -> None:
        expected: dict[str, int] = {}
        received: dict[str, int] = {}
        async for raw in chunks:
            self._check_open()
            try:
                c = replication_pb2.SnapshotChunk.FromString(raw)
            except DecodeError as e:
                raise InvalidArgument(
                    f"oxia: malformed SnapshotChunk message: {e}", shard=self.shard
                ) from None
            if c.term != term:
                raise InvalidTerm(
                    f"oxia: snapshot chunk of term {c.term} in a term {term} snapshot",
                    shard=self.shard,
                )
            name = os.path.basename(c.name)
            if not name or name in (".", "..") or name != c.name:
                raise InvalidArgument(f"oxia: bad snapshot file name {c.name!r}", shard=self.shard)
            if received.get(name, 0) != c.chunk_index:
                raise InvalidArgument(
                    f"oxia: snapshot file {name}: chunk {c.chunk_index} out of order",
                    shard=self.shard,
                )
            await asyncio.to_thread(_append_to_file, staged / name, c.content)
            received[name] = c.chunk_index + 1
            expected[name] = c.chunk_count
        if not received:
            raise InvalidArgument("oxia: empty snapshot", shard=self.shard)
        for name, count in expected.items():
            if received[name] != count:
                raise InvalidArgument(
                    f"oxia: snapshot file {name}: got {received[name]} of {count} chunks",
                    shard=self.shard,
                )

    # -- lifecycle --------------------------------------------------------------------------------

    def _storage_failed(self, cause: BaseException) -> None:
        if self.failure is None:
            log.error("shard %s: storage failure: %s", self.shard, cause)
            self.failure = str(cause)
            if self.on_failure is not None:
                self.on_failure(f"storage failure: {cause}")
        self.status = NOT_MEMBER
        self._end_stream()

    async def close(self) -> None:
        """Stops following. Idempotent; storage stays open (the director owns it)."""
        if self._closed:
            return
        # Mark closed first: an in-flight NewTerm/Truncate/snapshot notices at
        # its next check; then wait for it to let go of the lock.
        self._closed = True
        self._end_stream()
        self._abandon_apply()
        async with self._lock:
            try:
                self._loop.remove_reader(self.storage.wal.notify_fd)
            except (ValueError, OSError):
                pass
            self._apply_wanted.close()
            self.durable.close()
        self._applier_task.cancel()
        try:
            await self._applier_task
        except asyncio.CancelledError:
            pass


def _append_to_file(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
