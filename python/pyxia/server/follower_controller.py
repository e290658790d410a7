"""A follower replica of one shard: the receiving end of replication, as an asyncio driver.

The rules (fencing, which stream may append what, when to acknowledge, when to truncate, what
the applier may apply, when a rebuilt replica is whole again) are the replica state machine's
(``replica.py``); this controller feeds it the RPCs, the stream's messages, the WAL's sync
rounds and the applier's progress, and carries out its effects: appending to and truncating the
WAL, storing the term, sending acks, applying, installing a snapshot.

Lifecycle rules (the lessons of Oxia's follower-controller refactor):

- the state (status, term, the open stream) lives in the machine, changed only by the
  event-loop thread, and every operation re-checks ``closed`` after each await;
- state-changing operations (NewTerm, Truncate, snapshot install, close) serialize on one lock
  and tell the machine they hold the replica (``BeginExclusive``/``EndExclusive``); appends
  never wait on it: while it is held they are refused (the leader reconnects);
- one Replicate stream at a time (a second one gets a conflict error); a stream the machine
  ended (a NewTerm, a snapshot, a close) stops reading and acknowledging at once;
- acknowledgements are sent only for durable entries, one cumulative ack per
  WAL sync round;
- committed entries are applied to the DB by a background applier woken by a
  :class:`Signal`, so a wake-up can never be lost; it applies in steps, a slice
  of loop time at a time (``storage/steps.py``), so a big entry cannot stall
  the other shards; whoever takes the lock first abandons an entry in
  progress (nothing of it was written; it is applied again afterwards), so the
  lock holder has the storage to itself;
- Truncate only while FENCED and with no stream; a snapshot's term is checked
  before anything is destroyed, and a failed install restores the old DB;
- a split child observing its parent (streams that carry the child's hash range) records the
  range and the parent's term before it takes anything (``storage/split.py``): the parent's
  data is kept whole until the child's own first term cuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from pyxia._native import CrcMismatch, InvalidNextOffset, WalError
from pyxia.common.signals import Signal
from pyxia.errors import InvalidArgument, InvalidTerm, PyxiaError, StorageFailure
from pyxia.failpoints import afailpoint
from pyxia.proto import replication_pb2
from pyxia.server import replica as rsm
from pyxia.server.read_lease import LeasePromises
from pyxia.server.replica import EntryId, Replica
from pyxia.server.replica_log import StorageLog
from pyxia.server.shard_storage import ShardStorage
from pyxia.storage.db import TermOptions
from pyxia.storage.split import SplitFilter
from pyxia.storage.steps import APPLY_SLICE_S, Abandoned, Steps, run_sliced

log = logging.getLogger("pyxia.follower")


class FollowerController(rsm.ReplicaView):
    """One shard replica following a leader."""

    def __init__(self, storage: ShardStorage, promises: LeasePromises | None = None) -> None:
        self.storage = storage
        # Read-lease promises given with heartbeat answers (None: none given).
        self.promises = promises
        self.namespace = storage.namespace
        self.shard = storage.shard
        term, options = storage.read_term()
        self.replica = Replica(storage.shard, StorageLog(storage), term, options)
        self._lock = asyncio.Lock()
        self.durable = Signal()  # a WAL sync round completed, or the stream has news
        self._apply_wanted = Signal()
        self._applying: Steps[int] | None = None  # the apply in progress, between two slices
        self.apply_slice_s = APPLY_SLICE_S
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(storage.wal.notify_fd, self._on_wal_round)
        self._applier_task = self._loop.create_task(
            self._apply_loop(), name=f"follower-applier-{self.shard}"
        )
        # Called (with the cause) on this replica's first failure: the director reports it.
        self.on_failure: Callable[[str], None] | None = None

    # -- status -----------------------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        return self.replica.failure

    @property
    def leader_commit_offset(self) -> int:
        return self.replica.leader_commit_offset

    @leader_commit_offset.setter
    def leader_commit_offset(self, offset: int) -> None:
        self.replica.leader_commit_offset = offset

    @property
    def busy(self) -> bool:
        """A NewTerm, Truncate or snapshot install is in progress (the storage may be in the
        middle of a change, in a thread)."""
        return self._lock.locked()

    def get_status(self) -> replication_pb2.GetStatusResponse:
        self._check_open()
        # After a snapshot the log is empty until the next entry: the replica holds up to the
        # snapshot's offset all the same (a split child seeded from a frozen parent stays so).
        return replication_pb2.GetStatusResponse(
            term=self.term,
            status=self.status,
            head_offset=max(self.storage.wal.last_offset, self.storage.commit_offset),
            commit_offset=self.storage.commit_offset,
        )

    def _check_open(self) -> None:
        self.replica.check_open()

    # -- carrying out the machine's effects -------------------------------------------------------

    def _carry_out(self, effects: rsm.Effects) -> None:
        """Carries out the effects that need no await (the callers handle the others)."""
        for e in effects:
            if isinstance(e, (rsm.WakeStream, rsm.StreamEnded)):
                self.durable.notify()
            elif isinstance(e, rsm.WakeApplier):
                self._apply_wanted.notify()
            elif isinstance(e, rsm.FinishRebuilding):
                self.storage.finish_rebuilding()
                log.info(
                    "shard %s/%s: rebuilt from the leader up to offset %d",
                    self.namespace,
                    self.shard,
                    self.storage.commit_offset,
                )
            elif isinstance(e, rsm.ReportFailure):
                if self.on_failure is not None:
                    self.on_failure(e.reason)
            elif not isinstance(e, (rsm.StopLeading, rsm.StopCursors)):  # a follower has neither
                raise AssertionError(f"shard {self.shard}: unexpected effect {e!r}")

    # -- coordination -----------------------------------------------------------------------------

    async def new_term(self, term: int, options: TermOptions) -> replication_pb2.EntryId:
        """Fences this replica (the machine's rules: lower terms are refused, the same term
        only while FENCED, a retried NewTerm). Returns the head, made durable first."""
        async with self._exclusive():
            for e in self.replica.step(rsm.NewTerm(term, options)):
                if isinstance(e, rsm.StoreTerm):
                    await self.storage.store_term(e.term, e.options)
                    self.replica.step(rsm.TermStored(e.term, e.options))
                elif isinstance(e, rsm.SyncLog):
                    # The head we report must be durable: the new leader counts it.
                    await asyncio.to_thread(self.storage.wal.sync)
                else:
                    self._carry_out((e,))
            self._check_open()
            return self.storage.election_head()

    async def truncate(self, term: int, head: replication_pb2.EntryId) -> replication_pb2.EntryId:
        """Drops the entries after ``head`` (the last one shared with the
        new leader). Only while FENCED in ``term`` and with no stream."""
        async with self._exclusive():
            for e in self.replica.step(rsm.Truncate(term, EntryId(head.term, head.offset))):
                assert isinstance(e, rsm.TruncateLog)
                try:
                    await asyncio.to_thread(self.storage.wal.truncate, e.offset)
                except WalError as err:
                    self._storage_failed(err)
                    raise StorageFailure(str(err), shard=self.shard) from err
            self._check_open()
            self.replica.step(rsm.LogTruncated())
            return self.storage.head_entry_id()

    # -- replication stream -----------------------------------------------------------------------

    def _observe_split(self, term: int, split: tuple[int, int] | None) -> None:
        """A stream from a split parent (``split``: the hash range this child keeps) at
        ``term``, the parent's: recorded before anything of the stream is taken."""
        if split is not None:
            self.storage.set_split_filter(SplitFilter(split[0], split[1], term))

    async def replicate(
        self,
        term: int,
        appends: AsyncIterator[bytes],
        split: tuple[int, int] | None = None,
    ) -> AsyncIterator[replication_pb2.Ack]:
        """Serves one Replicate stream: appends entries, yields cumulative
        acks of durable offsets. ``split``: the stream comes from a split parent."""
        (opened,) = self.replica.step(rsm.OpenStream(term))
        assert isinstance(opened, rsm.StreamOpened)
        stream = opened.stream
        try:
            self._observe_split(term, split)
        except BaseException:
            self.replica.step(rsm.StreamClosed(stream))
            raise
        failure: list[BaseException] = []

        async def pump() -> None:
            try:
                async for raw in appends:
                    try:
                        a = replication_pb2.Append.FromString(raw)
                    except DecodeError as e:
                        raise InvalidArgument(
                            f"oxia: malformed Append message: {e}", shard=self.shard
                        ) from None
                    for effect in self.replica.step(rsm.Received(stream, a)):
                        if isinstance(effect, rsm.AppendToLog):
                            self._append(raw, effect.append)
                        elif isinstance(effect, rsm.StaleStream):
                            return
                        else:
                            self._carry_out((effect,))
            except BaseException as e:
                failure.append(e)
            finally:
                self.durable.notify()

        task = self._loop.create_task(pump(), name=f"follower-pump-{self.shard}")
        poll = rsm.PollAcks(stream)
        acked = stream.acked
        promises = self.promises
        try:
            while True:
                seen = self.durable.generation
                if failure:
                    err = failure[0]
                    if isinstance(err, (PyxiaError, asyncio.CancelledError)):
                        raise err
                    raise StorageFailure(f"oxia: replication failed: {err}", shard=self.shard)
                acks = self.replica.step(poll)  # AlreadyClosed once the stream is over
                if acks:
                    (ack,) = acks
                    assert isinstance(ack, rsm.SendAck)
                    if ack.offset > acked:  # (else a heartbeat's answer alone)
                        acked = ack.offset
                        await afailpoint("follower.after_append_before_ack")
                    if ack.heartbeat:
                        # The promise is recorded before the answer leaves (read_lease.py).
                        lease_ms = 0 if promises is None else promises.grant(self.shard)
                        yield replication_pb2.Ack(
                            offset=ack.offset, heartbeat=ack.heartbeat, lease_ms=lease_ms
                        )
                    else:
                        yield replication_pb2.Ack(offset=ack.offset)
                    continue
                if task.done() and not failure:
                    return  # the leader closed its side
                await self.durable.wait(seen)
        finally:
            task.cancel()
            self.replica.step(rsm.StreamClosed(stream))

    def _append(self, raw: bytes, a: replication_pb2.Append) -> None:
        """Appends the entry the machine accepted (``a``, decoded from ``raw``) straight from
        the received bytes: the value is never copied out, and an entry in canonical form is
        stored byte for byte as it came (the WAL checks the CRC chain)."""
        e = a.entry
        wal = self.storage.wal
        m = self.storage.metrics
        started = time.perf_counter()
        try:
            size = wal.append_replicated(raw, e.term, e.offset)
        except (InvalidNextOffset, CrcMismatch) as err:
            raise InvalidArgument(f"oxia: {err}", shard=self.shard) from err
        except ValueError as err:
            raise InvalidArgument(f"oxia: {err}", shard=self.shard) from None
        except WalError as err:
            m.wal_write_errors.inc()
            self._storage_failed(err)
            raise StorageFailure(str(err), shard=self.shard) from err
        m.wal_appended(started, size)
        m.follower_write_latency.observe((time.perf_counter() - started) * 1000.0)
        wal.request_sync()

    def _on_wal_round(self) -> None:
        wal = self.storage.wal
        try:
            while os.read(wal.notify_fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        failure = wal.failure
        if failure is not None:
            self._storage_failed(RuntimeError(failure))
        self.storage.metrics.wal_synced()
        self._carry_out(self.replica.step(rsm.Synced(wal.last_synced_offset)))

    # -- applying committed entries ---------------------------------------------------------------

    async def _apply_loop(self) -> None:
        """Applies what the machine says is due: up to the leader's commit offset, never past
        what is durable here (the DB must never be ahead of the local WAL)."""
        due = rsm.ApplyDue()
        while not self.closed:
            seen = self._apply_wanted.generation
            effects = self.replica.step(due)
            if effects:
                (apply,) = effects
                assert isinstance(apply, rsm.ApplyUpTo)
                try:
                    await self._apply_to(apply.offset)
                    self._carry_out(self.replica.step(rsm.Applied()))
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
            self.replica.step(rsm.BeginExclusive())
            try:
                yield
            finally:
                self._carry_out(self.replica.step(rsm.EndExclusive()))

    def _abandon_apply(self) -> None:
        """Drops the apply in progress between two of its steps (nothing of the entry in
        progress was written), before the caller changes the storage."""
        steps, self._applying = self._applying, None
        if steps is not None:
            steps.close()

    # -- snapshots --------------------------------------------------------------------------------

    async def install_snapshot(
        self,
        term: int,
        chunks: AsyncIterator[bytes],
        split: tuple[int, int] | None = None,
    ) -> int:
        """Receives a DB snapshot and makes it this replica's state. Returns
        the snapshot's commit offset (the leader's next entry follows it). ``split``: the
        snapshot is a split parent's, of which this child keeps that hash range."""
        async with self._exclusive():
            # The term is checked before anything is destroyed.
            self._carry_out(self.replica.step(rsm.SnapshotBegin(term)))
            staged = self.storage.snapshot_staging_dir()
            try:
                await self._receive_chunks(term, chunks, staged)
                await afailpoint("snapshot.after_receive_before_install")
                self._check_open()
                flt = SplitFilter(split[0], split[1], term) if split is not None else None
                commit = await asyncio.to_thread(self.storage.install_snapshot, staged, term, flt)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            await afailpoint("snapshot.after_install_before_reply")
            stored, options = self.storage.read_term()
            effects = self.replica.step(rsm.SnapshotInstalled(stored, options, commit))
            log.info(
                "shard %s: installed a snapshot at offset %d, term %d", self.shard, commit, term
            )
            self._carry_out(effects)
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
        self._carry_out(self.replica.step(rsm.StorageFailed(str(cause))))

    async def close(self) -> None:
        """Stops following. Idempotent; storage stays open (the director owns it)."""
        if self.closed:
            return
        # Mark closed first: an in-flight NewTerm/Truncate/snapshot notices at
        # its next check; then wait for it to let go of the lock.
        self._carry_out(self.replica.step(rsm.Close()))
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
