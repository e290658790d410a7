"""The leader of one shard: the write path and reads, as an asyncio driver of the replica state
machine (``replica.py``), which decides the status, the term, the fencing, the election, the
follower truncations, the quorum and the read-index rounds.

Write path (built for replication; RF=1 is the case with no follower):

    propose → the machine gives the offset and timestamp (Propose → Append)
            → WAL append (term, offset, LogEntryValue, timestamp)
            → local group-commit sync (one fsync for everything appended)
            → quorum ack tracker (leader head + follower acks; Synced / FollowerAck → Committed)
            → apply committed entries in offset order, one DB batch each
            → resolve the proposal's future → reply

The WAL's sync thread wakes the event loop once per sync round through a
pipe; the leader then feeds the machine the durable offset and applies whatever
became committed. Follower cursors (replication) see this leader through a
:class:`TenureSource`, one leadership's narrow interface (what to send next, acks in);
their acks go to the machine and trigger the same apply step.

Applying never holds the event loop for long (issue 15 §6: one shard's big
batch must not delay other shards or the health service): committed entries
are applied in offset order, in steps (``storage/steps.py``), for at most
``apply_slice_s`` of loop time at once; what is left goes on in a task that
lets the loop run between slices. An entry's DB batch (data and commit offset
together) is written in its last step, and its proposal is answered only
after it. Stepping down or closing abandons an entry halfway at once, before
anything else may touch the applier: nothing of it was written, it stays in
the WAL and is applied by whoever leads next (as is the WAL replay of
``become_leader``, also sliced).

Status machine (Oxia): NOT_MEMBER → FENCED (NewTerm) → LEADER (BecomeLeader). A leader asked to
step down for a planned move (``step_down``) refuses new writes with a retryable
NODE_IS_NOT_LEADER and finishes what it logged before the coordinator's NewTerm fences it; the
rules are in ``handoff.py``. Its ``before_step_down`` hooks run first and may still log their
last writes (the TSO's release marker), which the drain commits. A NewTerm that finds writes
still pending (an unplanned change) answers them WRITE_INDETERMINATE.

Shard split (the parent's side): ``add_observer`` attaches an observer cursor that seeds a
child shard's replica with this shard's snapshot and log (``follower_cursor.py``); the machine
never counts its acks towards this shard's quorum. ``freeze`` stops new writes (a retryable
NODE_IS_NOT_LEADER) without fencing, so the observers keep streaming, and answers once every
logged write is committed and answered: the head it returns is final, and no write is left in
flight. A freeze lasts until ``freeze(frozen=False)`` or a new term; it never lapses by itself
(the coordinator fences the parent right after the children hold that head: a write taken
after a lapse would be lost). A split child's replica cuts its copy of the parent's data down
to its own range before it leads (``storage/split.py``).

Reads are linearizable: before a read is served, a majority of the ensemble confirms (one
heartbeat round down the replication streams, shared by every read that arrived meanwhile)
that this replica still leads its term; see ``read_index.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pyxia._native import EntryNotFound, WalError
from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.common.instance_id import CallMetadata
from pyxia.common.signals import Signal
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidTerm,
    NodeIsNotLeader,
    NotificationsNotEnabled,
    ResourceUnavailable,
    StorageFailure,
)
from pyxia.failpoints import failpoint
from pyxia.metrics import SHARDS, ShardMetrics
from pyxia.proto import client_pb2, replication_pb2
from pyxia.server import replica as rsm
from pyxia.server.follower_cursor import SPLIT_MAX_HEADER, SPLIT_MIN_HEADER, FollowerCursor
from pyxia.server.handoff import Handoff
from pyxia.server.quorum import QuorumAckTracker
from pyxia.server.read_index import LeadershipConfirmations
from pyxia.server.replica import (
    FENCED,
    FOLLOWER,
    LEADER,
    MAX_OBSERVERS,
    NOT_MEMBER,
    EntryId,
    ObserverKey,
    Replica,
    Tenure,
)
from pyxia.server.replica_log import StorageLog
from pyxia.server.session_manager import SessionManager
from pyxia.server.shard_storage import ShardStorage
from pyxia.server.sync_group import SyncGroup
from pyxia.server.sync_policy import SyncPolicy
from pyxia.storage import reads
from pyxia.storage.apply import (
    ApplyResult,
    override_fields_used,
    validate_write_request,
    varint,
)
from pyxia.storage.db import TermOptions
from pyxia.storage.steps import APPLY_SLICE_S, Abandoned, Steps, advance, run_sliced

__all__ = [
    "FENCED",
    "FOLLOWER",
    "LEADER",
    "MAX_OBSERVERS",
    "NOT_MEMBER",
    "LeaderController",
    "Proposal",
    "SequenceWatch",
    "TenureSource",
    "log_entry_value",
]

log = logging.getLogger("pyxia.leader")

READ_CONFIRM_TIMEOUT_S = 3.0
"""How long a read waits for a majority to confirm this leader before it is refused."""

READ_ESCALATE_S = 0.05
"""How long a read waits for the followers its round went to first (a majority's worth)
before the round goes to every follower (read_index.py): the extra wait of the reads that
arrive while a preferred follower is failing, once."""


def log_entry_value(raw_write_request: bytes) -> bytes:
    """``LogEntryValue{requests: WriteRequests{writes: [<raw>]}}`` built from
    the request's wire bytes, without re-serializing it (one copy)."""
    n = len(raw_write_request)
    head = varint(n)
    return b"".join((b"\x0a", varint(1 + len(head) + n), b"\x0a", head, raw_write_request))


@dataclass(slots=True)
class Proposal:
    offset: int
    request: client_pb2.WriteRequest
    timestamp: int
    future: asyncio.Future[ApplyResult]
    on_applied: Callable[[ApplyResult], None] | None = None
    proposed_at: float = 0.0  # time.monotonic(), for the latency metric


@dataclass
class SequenceWatch:
    prefix: str
    signal: Signal = field(default_factory=Signal)
    last: str | None = None


class TenureSource:
    """One leadership as one follower cursor sees it (``follower_cursor.ReplicationSource``):
    what to send next, and the follower's acks, heartbeat answers, snapshots and statuses in,
    fed to the replica state machine. Once the leadership is over it answers ``leads`` False
    and its inputs change nothing. With ``split`` (a child shard and the hash range it keeps)
    it is a split observer's: its streams name the child shard and carry the range, and the
    machine keeps its acks out of the quorum."""

    __slots__ = ("_lc", "_split_headers", "_tenure", "metrics", "shard", "target_shard", "term")

    def __init__(
        self, lc: LeaderController, tenure: Tenure, split: tuple[int, tuple[int, int]] | None = None
    ) -> None:
        self._lc = lc
        self._tenure = tenure
        self.shard = lc.shard
        self.term = tenure.term
        self.metrics: ShardMetrics = lc.metrics
        self.target_shard: int | None = None
        self._split_headers: CallMetadata = ()
        if split is not None:
            self.target_shard, (lo, hi) = split
            self._split_headers = ((SPLIT_MIN_HEADER, str(lo)), (SPLIT_MAX_HEADER, str(hi)))

    @property
    def stream_shard(self) -> int:
        return self.shard if self.target_shard is None else self.target_shard

    @property
    def leads(self) -> bool:
        return self._lc.replica.leads(self._tenure)

    @property
    def appended(self) -> Signal:
        return self._lc.appended

    @property
    def commit_offset(self) -> int:
        return self._tenure.tracker.commit_offset

    def stream_metadata(self) -> CallMetadata:
        lc = self._lc
        return (
            ("namespace", lc.namespace),
            ("shard-id", str(self.stream_shard)),
            ("term", str(self.term)),
            *self._split_headers,
            *lc.call_metadata(),
        )

    def call_metadata(self) -> CallMetadata:
        return self._lc.call_metadata()

    def ack_offset(self, follower: str) -> int:
        return self._lc.replica.follower_ack(self._tenure, follower, self.target_shard)

    def needs_snapshot(self, follower: str) -> bool:
        return self._lc.replica.needs_snapshot(self._tenure, follower, self.target_shard)

    def heartbeat_due(self, last_sent: int, follower: str | None = None) -> tuple[int, int] | None:
        due = rsm.HeartbeatDue(
            self._tenure, last_sent, self.target_shard, follower, time.monotonic()
        )
        for e in self._lc.replica.step(due):
            if isinstance(e, rsm.SendHeartbeat):
                return e.round_id, e.commit_offset
        return None

    def appends_from(self, offset: int, max_entries: int) -> list[bytes] | None:
        """Up to ``max_entries`` log entries from ``offset`` as serialized ``Append`` messages
        of this term carrying the current commit offset, built natively around the WAL's
        stored entry bytes (empty: none yet); None: the retention trimmed ``offset`` away."""
        wal = self._lc.wal
        if offset > wal.last_offset:
            return []
        m = self.metrics
        started = time.perf_counter()
        try:
            frames, value_bytes = wal.read_appends(
                offset, self.term, self._tenure.tracker.commit_offset, max_entries=max_entries
            )
        except EntryNotFound:
            if offset >= wal.first_offset:
                raise
            return None
        except WalError:
            m.wal_read_errors.inc()
            raise
        m.wal_read_latency.observe((time.perf_counter() - started) * 1000.0)
        m.wal_read_bytes.inc(value_bytes)
        return frames

    def create_snapshot(self) -> Path:
        return self._lc.storage.create_snapshot()

    def _feed(self, message: rsm.Input) -> None:
        self._lc.carry_out(self._lc.replica.step(message))

    def on_ack(self, follower: str, offset: int) -> None:
        self._feed(rsm.FollowerAck(self._tenure, follower, offset, self.target_shard))

    def on_heartbeat(self, follower: str, round_id: int, lease_s: float = 0.0) -> None:
        self._feed(rsm.HeartbeatAck(self._tenure, follower, round_id, self.target_shard, lease_s))

    def on_snapshot_sent(self, follower: str, ack_offset: int) -> None:
        self._feed(rsm.SnapshotSent(self._tenure, follower, ack_offset, self.target_shard))

    def on_lost_data(self, follower: str) -> None:
        self._feed(rsm.FollowerLostData(self._tenure, follower, self.target_shard))

    def on_follower_status(self, follower: str, status: int | None, head_offset: int) -> None:
        st = None if status is None else replication_pb2.ServingStatus.ValueType(status)
        self._feed(rsm.FollowerStatus(self._tenure, follower, st, head_offset, self.target_shard))


class LeaderController(rsm.ReplicaView):
    """One shard replica acting as (or preparing to be) its leader."""

    def __init__(
        self,
        storage: ShardStorage,
        *,
        session_check_interval: float = 0.1,
        channels: ChannelPool | None = None,
        leadership: Signal | None = None,
    ) -> None:
        self.storage = storage
        self.namespace = storage.namespace
        self.shard = storage.shard
        self.wal = storage.wal
        self.applier = storage.applier
        term, options = storage.read_term()
        self.replica = Replica(storage.shard, StorageLog(storage), term, options)
        self.confirmed = Signal()
        self.read_confirm_timeout_s = READ_CONFIRM_TIMEOUT_S
        self.read_escalate_s = READ_ESCALATE_S
        self._pending: collections.deque[Proposal] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_registered = False
        self.sync_policy: SyncPolicy | None = None
        # Bumped after every apply: notification and sequence streams wait on it.
        self.applied = Signal()
        self._sequence_watches: dict[str, list[SequenceWatch]] = {}
        self.metrics = storage.metrics
        SHARDS.add_leader(self)  # its offsets are exported while it leads
        self.sessions = SessionManager(self, check_interval=session_check_interval)
        # Bumped on every append and confirmation round: follower cursors wait on it.
        self.appended = Signal()
        self._channels = channels
        self.cursors: dict[str, FollowerCursor] = {}
        # Split observers' cursors, by (follower, child shard).
        self.observers: dict[ObserverKey, FollowerCursor] = {}
        # Notified when this replica becomes leader and when it stops leading; the
        # director shares one among its controllers (the TSO's fence waits on it).
        self.leadership = leadership if leadership is not None else Signal()
        # Called (with the cause) when this replica fails on its own: the director reports it.
        self.on_failure: Callable[[str], None] | None = None
        # The header proving this server's cluster on its calls to followers (set by the
        # director from the server's manifest).
        self.call_metadata: Callable[[], CallMetadata] = lambda: ()
        # Applying committed proposals: the highest committed offset seen, the entry being
        # applied (suspended between slices), the task that goes on with it, the WAL replay.
        self.apply_slice_s = APPLY_SLICE_S
        self._apply_target = -1
        self._applying: tuple[Proposal, Steps[ApplyResult]] | None = None
        self._apply_task: asyncio.Task[None] | None = None
        self._replay: Steps[int] | None = None
        self.write_limits = storage.options.write_limits
        # Called (synchronously) when a planned step-down begins, before new writes are
        # refused: a hook may still log its own last writes, which the drain then commits.
        self.before_step_down: list[Callable[[LeaderController], None]] = []

    # -- the machine's state, as the rest of the server reads it ---------------------------------

    @property
    def leader_hint(self) -> str | None:
        """The leader the pushed assignments name (given to clients this replica refuses)."""
        return self.replica.leader_hint

    @leader_hint.setter
    def leader_hint(self, hint: str | None) -> None:
        self.replica.leader_hint = hint

    @property
    def replication_factor(self) -> int:
        return self.replica.replication_factor

    @property
    def tracker(self) -> QuorumAckTracker | None:
        t = self.replica.tenure
        return t.tracker if t is not None else None

    @property
    def confirmations(self) -> LeadershipConfirmations | None:
        """Leadership confirmation rounds of the current term (reads); None while not leading."""
        return self.replica.confirmations

    @property
    def handoff(self) -> Handoff | None:
        """Set while this leader steps down for a planned move (see handoff.py)."""
        return self.replica.handoff

    @property
    def commit_offset(self) -> int:
        return self.replica.commit_offset

    @property
    def head_offset(self) -> int:
        return self.wal.last_offset

    @property
    def frozen(self) -> bool:
        """Set while the shard is frozen for a split's cutover (see the module docstring)."""
        return self.replica.frozen

    @property
    def handing_off(self) -> bool:
        """Whether this leader refuses new writes now (it is stepping down)."""
        return self.replica.handing_off(time.monotonic())

    def leader_offsets(self) -> tuple[int, int, dict[str, int]] | None:
        """Head and commit offsets and the followers' acknowledged offsets while leading (the
        metrics read them at scrape time, from another thread: a snapshot of plain ints)."""
        tracker = self.tracker
        if self.status != LEADER or tracker is None:
            return None
        return tracker.head_offset, tracker.commit_offset, tracker.followers

    def _check_open(self) -> None:
        self.replica.check_open()

    def check_leader(self) -> None:
        self.replica.check_leader()

    def get_status(self) -> replication_pb2.GetStatusResponse:
        self._check_open()
        return replication_pb2.GetStatusResponse(
            term=self.term,
            status=self.status,
            head_offset=self.wal.last_offset,
            commit_offset=self.commit_offset,
        )

    # -- carrying out the machine's effects -------------------------------------------------------

    def carry_out(self, effects: rsm.Effects) -> None:
        """Carries out the effects that need no await (see :meth:`_carry_out_async`)."""
        for e in effects:
            if isinstance(e, rsm.Committed):
                self.apply_committed(e.commit_offset)
            elif isinstance(e, rsm.CaughtUp):
                self.applied.notify()  # an election waits for it
            elif isinstance(e, rsm.Confirmed):
                self.confirmed.notify()
            elif isinstance(e, rsm.WakeCursors):
                self.appended.notify()
            elif isinstance(e, rsm.StopLeading):
                self._stop_leading(e)
            elif isinstance(e, rsm.StartTenure):
                self._start_tenure(e.tenure)
            elif isinstance(e, rsm.StartCursor):
                self._start_cursor(e.tenure, e.follower)
            elif isinstance(e, rsm.StartObserver):
                self._start_observer(e)
            elif isinstance(e, rsm.StartServing):
                self.sessions.load(reads.load_sessions(self.storage.db))
                self.sessions.start()
            elif isinstance(e, rsm.LeadershipChanged):
                self.applied.notify()
                self.leadership.notify()
            elif isinstance(e, rsm.ReportFailure):
                if self.on_failure is not None:
                    self.on_failure(e.reason)
            elif not isinstance(e, (rsm.WakeApplier, rsm.WakeStream, rsm.StreamEnded)):
                # (a leader controller's replica never follows: those are no-ops here)
                raise AssertionError(f"shard {self.shard}: unexpected effect {e!r}")

    async def _carry_out_async(self, effects: rsm.Effects) -> None:
        """Carries out effects in order, awaiting those that take I/O."""
        for e in effects:
            if isinstance(e, rsm.StoreTerm):
                await self.storage.store_term(e.term, e.options)
                self.replica.step(rsm.TermStored(e.term, e.options))
            elif isinstance(e, rsm.StopCursors):
                await self._stop_cursors()
            elif isinstance(e, rsm.StopCursor):
                c = self.cursors.pop(e.follower, None)
                if c is not None:
                    await c.close()
            elif isinstance(e, rsm.StopObserver):
                c = self.observers.pop((e.follower, e.target_shard), None)
                if c is not None:
                    await c.close()
            elif isinstance(e, rsm.SyncLog):
                await asyncio.to_thread(self.wal.sync)
            elif isinstance(e, rsm.TruncateFollower):
                head = await self._call_truncate(e.follower, e.head)
                truncated = rsm.FollowerTruncated(
                    e.tenure, e.follower, EntryId(head.term, head.offset), e.snapshot
                )
                await self._carry_out_async(self.replica.step(truncated))
            else:
                self.carry_out((e,))

    def _stop_leading(self, e: rsm.StopLeading) -> None:
        """The leadership is over: abandons the apply in progress, stops the sessions, fails
        the writes not yet applied (indeterminate), wakes whoever waits on the leadership."""
        self._abandon_apply()
        self.sessions.stop()
        self._fail_pending(e)
        self.confirmed.notify()
        self.applied.notify()
        self.leadership.notify()

    def _start_tenure(self, tenure: Tenure) -> None:
        """Watches the WAL's sync rounds for ``tenure``."""
        loop = self._loop = asyncio.get_running_loop()
        self._register_reader()
        # Only a leader that needs no follower waits on its own fsync: with followers
        # the loop must stay free to ship the entry while the sync thread flushes.
        replica = self.replica
        self.sync_policy = SyncPolicy(
            self.wal,
            loop,
            self._on_wal_round,
            lambda: (
                self._reader_registered
                and replica.status == LEADER
                and replica.tenure is tenure
                and tenure.replication_factor == 1
            ),
            SyncGroup.for_loop(loop),
        )

    def _start_cursor(self, tenure: Tenure, follower: str) -> None:
        self.replica.check_tenure(tenure)  # a cursor only for the leadership that is on
        assert self._channels is not None
        cursor = FollowerCursor(TenureSource(self, tenure), follower, self._channels)
        self.cursors[follower] = cursor
        cursor.start()

    def _start_observer(self, e: rsm.StartObserver) -> None:
        self.replica.check_tenure(e.tenure)
        assert self._channels is not None
        source = TenureSource(self, e.tenure, (e.target_shard, e.split_range))
        cursor = FollowerCursor(source, e.follower, self._channels)
        self.observers[(e.follower, e.target_shard)] = cursor
        cursor.start()

    # -- coordination -----------------------------------------------------------------------------

    async def new_term(self, term: int, options: TermOptions) -> replication_pb2.EntryId:
        """Fences this replica at ``term`` (the machine's rules: a term never goes back, the
        same term again only while FENCED, a retried NewTerm). Returns the WAL head, made
        durable first (the new leader counts it as held)."""
        await self._carry_out_async(self.replica.step(rsm.NewTerm(term, options)))
        self._check_open()
        return self.storage.election_head()

    async def become_leader(
        self,
        term: int,
        replication_factor: int,
        followers: dict[str, replication_pb2.EntryId] | None = None,
    ) -> None:
        """Makes this fenced replica the leader of ``term``.

        Truncates each follower whose log diverges, starts one cursor per
        follower, waits until the leader's head is committed by a quorum,
        applies every committed entry after the DB's commit offset, reloads
        the sessions, then serves."""
        if followers and self._channels is None:
            self._check_open()
            raise InvalidArgument("oxia: this server cannot replicate (no channels)")
        heads = {name: EntryId(h.term, h.offset) for name, h in (followers or {}).items()}
        self._loop = asyncio.get_running_loop()
        effects = self.replica.step(rsm.BecomeLeader(term, replication_factor, heads))
        tenure = next(e.tenure for e in effects if isinstance(e, rsm.StartTenure))
        await self._carry_out_async(effects)
        # Everything up to our head must be held by a quorum before we serve.
        while True:
            seen = self.applied.generation
            if self.replica.caught_up(tenure):  # AlreadyClosed once the election is over
                break
            await self.applied.wait(seen, 1.0)
        replay = self._replay = self.storage.apply_steps(tenure.tracker.commit_offset)
        try:
            applied = await run_sliced(replay, self.apply_slice_s, lambda: self._replay is replay)
        except Abandoned:
            raise AlreadyClosed(shard=self.shard) from None
        finally:
            if self._replay is replay:
                self._replay = None
        self.replica.check_tenure(tenure)
        if applied:
            log.info("shard %s: applied %d committed entries from the WAL", self.shard, applied)
        flt = self.storage.split_filter
        if flt is not None and term > flt.parent_term:
            # A split child's first term: its copy of the parent's data is cut down first.
            cut = self._replay = self.storage.cut_steps()
            try:
                await run_sliced(cut, self.apply_slice_s, lambda: self._replay is cut)
            except Abandoned:
                raise AlreadyClosed(shard=self.shard) from None
            finally:
                if self._replay is cut:
                    self._replay = None
            self.replica.check_tenure(tenure)
        self.applier = self.storage.applier
        self.carry_out(self.replica.step(rsm.Replayed(tenure)))

    async def add_follower(self, term: int, name: str, head: replication_pb2.EntryId) -> None:
        """Attaches a follower (a straggler of the election, or a new
        ensemble member). Idempotent by name; a follower that comes back holding less than
        it acknowledged starts over with a snapshot."""
        if self._channels is None:
            self._check_open()
            raise InvalidArgument("oxia: this server cannot replicate (no channels)")
        effects = self.replica.step(rsm.AddFollower(term, name, EntryId(head.term, head.offset)))
        await self._carry_out_async(effects)

    async def _call_truncate(self, name: str, head: EntryId) -> replication_pb2.EntryId:
        assert self._channels is not None
        call = self._channels.get(name).unary_unary(
            "/replication.OxiaLogReplication/Truncate",
            request_serializer=replication_pb2.TruncateRequest.SerializeToString,
            response_deserializer=replication_pb2.TruncateResponse.FromString,
        )
        req = replication_pb2.TruncateRequest(
            namespace=self.namespace,
            shard=self.shard,
            term=self.term,
            head_entry_id=replication_pb2.EntryId(term=head.term, offset=head.offset),
        )
        try:
            res: replication_pb2.TruncateResponse = await call(
                req, timeout=30, metadata=self.call_metadata()
            )
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e
        return res.head_entry_id

    async def _stop_cursors(self) -> None:
        cursors, self.cursors = self.cursors, {}
        observers, self.observers = self.observers, {}
        for c in [*cursors.values(), *observers.values()]:
            await c.close()

    # -- shard split (parent side) ----------------------------------------------------------------

    async def add_observer(
        self, term: int, name: str, target_shard: int, split_range: tuple[int, int]
    ) -> None:
        """Attaches a split observer: ``name``'s replica of child ``target_shard`` gets this
        shard's snapshot and log, and keeps ``split_range``. Idempotent."""
        if self._channels is None:
            self._check_open()
            raise InvalidArgument("oxia: this server cannot replicate (no channels)")
        effects = self.replica.step(rsm.AddObserver(term, name, target_shard, split_range))
        await self._carry_out_async(effects)

    async def remove_observer(self, name: str, target_shard: int) -> None:
        """Detaches a split observer (nothing to do if there is none)."""
        await self._carry_out_async(self.replica.step(rsm.RemoveObserver(name, target_shard)))

    def observer_acks(self) -> dict[ObserverKey, int]:
        """What each split observer acknowledged, by (follower, child shard)."""
        return self.replica.observer_acks()

    async def freeze(self, term: int, frozen: bool, drain_s: float) -> int:
        """Freezes (or thaws) the shard for a split's cutover. Frozen, it refuses new writes
        with a retryable NODE_IS_NOT_LEADER and answers once every logged write is committed
        and answered: the returned head offset is then final. Raises ResourceUnavailable
        (still frozen) if the writes do not drain within ``drain_s``."""
        self.replica.step(rsm.Freeze(term, frozen))
        if not frozen:
            return self.head_offset
        deadline = time.monotonic() + drain_s
        while not self.replica.drained(len(self._pending)):
            seen = self.applied.generation
            if self.closed or self.term != term or self.status != LEADER:
                raise InvalidTerm(
                    f"oxia: shard {self.shard} left term {term} while freezing",
                    shard=self.shard,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResourceUnavailable(
                    f"oxia: shard {self.shard}: {len(self._pending)} logged writes not "
                    f"committed within {drain_s:g}s of the freeze",
                    shard=self.shard,
                )
            await self.applied.wait(seen, left)
        return self.head_offset

    def _register_reader(self) -> None:
        if not self._reader_registered and self._loop is not None:
            self._loop.add_reader(self.wal.notify_fd, self._on_wal_round)
            self._reader_registered = True

    def _unregister_reader(self) -> None:
        if self._reader_registered and self._loop is not None:
            self._loop.remove_reader(self.wal.notify_fd)
            self._reader_registered = False

    # -- planned handoff --------------------------------------------------------------------------

    async def step_down(self, term: int, drain_s: float) -> tuple[replication_pb2.EntryId, bool]:
        """Hands the leadership of ``term`` over (a planned move): from now on new writes are
        refused with a retryable NodeIsNotLeader; returns once every write already logged is
        committed, applied and answered (or at the ``drain_s`` deadline), with the head entry
        id and whether it drained. The leader stays this way until a NewTerm fences it (or,
        without one, until the handoff's refusal period ends)."""
        for e in self.replica.step(rsm.StepDown(term, drain_s, time.monotonic())):
            assert isinstance(e, rsm.RunStepDownHooks)
            for hook in self.before_step_down:
                try:
                    hook(self)
                except Exception:
                    log.exception("shard %s: a step-down hook failed", self.shard)
            log.info(
                "shard %s: stepping down from term %d: new writes refused, %d logged ones "
                "finishing",
                self.shard,
                term,
                len(self._pending),
            )
            self.carry_out(self.replica.step(rsm.HandoffStarted(e.handoff)))
        h = self.replica.handoff
        assert h is not None
        while not self.replica.drained(len(self._pending)):
            seen = self.applied.generation
            if self.closed or self.term != term or self.status != LEADER:
                raise InvalidTerm(
                    f"oxia: shard {self.shard} left term {term} while stepping down",
                    shard=self.shard,
                )
            left = h.drain_until - time.monotonic()
            if left <= 0:
                break
            await self.applied.wait(seen, left)
        done = self.replica.drained(len(self._pending))
        self.replica.step(rsm.StepDownAnswered(term, time.monotonic()))
        if not done:
            log.warning(
                "shard %s: %d logged writes not committed within the %.1fs step-down drain",
                self.shard,
                len(self._pending),
                drain_s,
            )
        return self.storage.head_entry_id(), done

    async def close(self) -> None:
        """Stops serving; fails in-flight writes. Idempotent. The storage is
        owned (and closed) by whoever created it."""
        if self.closed:
            return
        effects = self.replica.step(rsm.Close())
        SHARDS.remove_leader(self)
        self._unregister_reader()
        # StopLeading (if it led) fails the pending writes at once, before the cursors stop.
        await self._carry_out_async(effects)
        self._abandon_apply()
        self.appended.close()
        self.confirmed.close()
        await self.sessions.close()
        self.applied.close()
        for watches in self._sequence_watches.values():
            for w in watches:
                w.signal.close()

    # -- write path -------------------------------------------------------------------------------

    def propose(
        self,
        request: client_pb2.WriteRequest,
        raw: bytes | None = None,
        *,
        validate: bool = True,
        check_overrides: Callable[[str], None] | None = None,
    ) -> asyncio.Future[ApplyResult]:
        """Logs a client write; the future resolves once it is committed and
        applied. Raises at once for a non-leader (or one stepping down) or an invalid
        request.

        A put with a negative ``override_version_id``/``override_modifications_count`` is
        invalid; a put with either field calls ``check_overrides(namespace)`` first (the public
        API passes its authorization check, which raises PermissionDenied). Followers never
        check: what a leader logged was admitted."""
        self.replica.check_writable(time.monotonic())
        if raw is None:
            raw = request.SerializeToString()
        if validate:
            validate_write_request(request, self.write_limits, len(raw), raw)
            if override_fields_used(request, raw) and check_overrides is not None:
                check_overrides(self.namespace)
        return self._append(request, log_entry_value(raw), None)

    def propose_internal(
        self,
        build: Callable[[int], client_pb2.WriteRequest],
        on_applied: Callable[[ApplyResult], None] | None = None,
    ) -> asyncio.Future[ApplyResult]:
        """Logs a write the leader makes itself (sessions); ``build`` gets
        the offset the entry will have."""
        self.replica.check_writable(time.monotonic())
        req = build(self.replica.next_offset)
        return self._append(req, log_entry_value(req.SerializeToString()), on_applied)

    def _append(
        self,
        request: client_pb2.WriteRequest,
        value: bytes,
        on_applied: Callable[[ApplyResult], None] | None,
    ) -> asyncio.Future[ApplyResult]:
        assert self._loop is not None
        (a,) = self.replica.step(rsm.Propose(time.monotonic(), int(time.time() * 1000)))
        assert isinstance(a, rsm.Append)
        offset, ts = a.offset, a.timestamp
        started = time.perf_counter()
        try:
            self.wal.append(a.term, offset, value, ts)
        except WalError as e:
            self.metrics.wal_write_errors.inc()
            self._storage_failed(e)
            raise StorageFailure(f"oxia: WAL append failed: {e}", shard=self.shard) from e
        self.metrics.wal_appended(started, len(value))
        fut: asyncio.Future[ApplyResult] = self._loop.create_future()
        self._pending.append(Proposal(offset, request, ts, fut, on_applied, time.monotonic()))
        self.appended.notify()
        failpoint("wal.after_append_before_sync")
        policy = self.sync_policy
        if policy is not None:
            policy.after_append(offset)
        else:
            self.wal.request_sync()
        return fut

    async def write(self, request: client_pb2.WriteRequest) -> client_pb2.WriteResponse:
        res = await self.propose(request)
        return self.result_to_response(res)

    @staticmethod
    def result_to_response(res: ApplyResult) -> client_pb2.WriteResponse:
        if res.error is not None:
            raise res.error
        assert res.response is not None
        return res.response

    def _on_wal_round(self) -> None:
        """Called by the event loop once per WAL sync round."""
        try:
            while os.read(self.wal.notify_fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        failure = self.wal.failure
        if failure is not None:
            self._storage_failed(RuntimeError(failure))
            return
        self.metrics.wal_synced()
        if self.sync_policy is not None:
            self.sync_policy.round_done()
        self.carry_out(self.replica.step(rsm.Synced(self.wal.last_synced_offset)))

    def apply_committed(self, commit: int) -> None:
        """Applies pending proposals up to ``commit`` in offset order: for one slice of loop
        time now, the rest in the apply task."""
        if commit > self._apply_target:
            self._apply_target = commit
        if self._apply_task is not None:
            return  # it goes on from where it is, up to the new target
        if not self._apply_slice(time.monotonic() + self.apply_slice_s):
            assert self._loop is not None
            self._apply_task = self._loop.create_task(
                self._apply_in_slices(), name=f"leader-apply-{self.shard}"
            )

    async def _apply_in_slices(self) -> None:
        me = asyncio.current_task()
        try:
            while self._apply_task is me:
                await asyncio.sleep(0)  # the loop runs other shards, health checks, signals
                if self._apply_task is not me or self._apply_slice(
                    time.monotonic() + self.apply_slice_s
                ):
                    return
        finally:
            if self._apply_task is me:
                self._apply_task = None

    def _apply_slice(self, deadline: float) -> bool:
        """Applies committed proposals until none is left (True) or ``deadline`` passes
        (False: the entry in progress stays suspended in ``_applying``)."""
        pending = self._pending
        target = self._apply_target
        m = self.metrics
        n_requests = 0
        finished = True
        while True:
            current = self._applying
            if current is None:
                if not pending or pending[0].offset > target:
                    break
                p = pending[0]
                failpoint("leader.after_commit_before_apply")
                current = self._applying = (
                    p,
                    self.applier.apply_write_steps(p.request, p.offset, p.timestamp),
                )
            p, steps = current
            try:
                done = advance(steps, deadline)
            except Exception as e:  # the DB failed: this shard can't go on
                self._applying = None
                self._storage_failed(e)
                return True
            if done is None:
                finished = False
                break
            self._applying = None
            pending.popleft()
            res = done.value
            if res.sequence_updates:
                self._notify_sequences(res.sequence_updates)
            if p.on_applied is not None:
                p.on_applied(res)
            if not p.future.done():
                p.future.set_result(res)
            n_requests += 1
            m.leader_write_latency.observe((time.monotonic() - p.proposed_at) * 1000.0)
        if n_requests:
            self.applied.notify()
        return finished

    def _abandon_apply(self) -> None:
        """Drops the apply in progress (an entry, or the WAL replay) between two of its steps:
        nothing of it was written; its offset is applied again by whoever leads next."""
        self._apply_target = -1
        current, self._applying = self._applying, None
        if current is not None:
            current[1].close()
        replay, self._replay = self._replay, None
        if replay is not None:
            replay.close()
        task, self._apply_task = self._apply_task, None
        if task is not None:
            task.cancel()

    def _fail_pending(self, e: rsm.StopLeading) -> None:
        """Fails the proposals not yet applied. They are in the WAL already (and maybe on
        followers), so a new leader may still commit them: the machine's error says their
        outcome is unknown, never "not taken" (a client that resent a conditional write would
        see a false conflict)."""
        err = e.pending_error
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(err)

    def _storage_failed(self, cause: BaseException) -> None:
        self.carry_out(self.replica.step(rsm.StorageFailed(str(cause))))

    # -- reads ------------------------------------------------------------------------------------

    async def confirm_leadership(self) -> None:
        """Returns once a majority of the ensemble has confirmed, after this call began, that
        this replica leads its term; raises NodeIsNotLeader if it stops leading or no majority
        answers within ``read_confirm_timeout_s`` (a leader cut off from its followers)."""
        wait: rsm.AwaitRound | None = None
        for e in self.replica.step(rsm.ReadIndex(time.monotonic())):
            if isinstance(e, rsm.AwaitRound):
                wait = e
            elif isinstance(e, rsm.WakeCursors):
                self.appended.notify()  # the cursors send the round
        if wait is None:
            return  # no other replica can be elected, or a majority's lease holds
        tenure, round_id = wait.tenure, wait.round_id
        now = time.monotonic()
        deadline = now + self.read_confirm_timeout_s
        escalate_at: float | None = now + self.read_escalate_s
        while True:
            seen = self.confirmed.generation
            if self.replica.read_confirmed(tenure, round_id):  # NodeIsNotLeader once deposed
                return
            now = time.monotonic()
            if now >= deadline:
                self.metrics.read_confirm_timeouts.inc()
                raise NodeIsNotLeader(
                    f"oxia: shard {self.shard}: no majority confirmed this leader within "
                    f"{self.read_confirm_timeout_s:g}s; refusing a possibly stale read",
                    shard=self.shard,
                    leader_hint=self.leader_hint,
                )
            if escalate_at is not None and now >= escalate_at:
                # The followers asked first are slow or gone: ask every follower.
                escalate_at = None
                self.carry_out(self.replica.step(rsm.EscalateRound(tenure, round_id)))
                continue
            until = deadline if escalate_at is None else min(deadline, escalate_at)
            await self.confirmed.wait(seen, until - now)

    async def get(self, req: client_pb2.GetRequest) -> client_pb2.GetResponse:
        await self.confirm_leadership()
        m = self.metrics
        started = time.perf_counter()
        res = reads.get(self.storage.db, req)
        m.db_get_latency.observe((time.perf_counter() - started) * 1000.0)
        m.db_gets.inc()
        return res

    def notifications_enabled(self) -> bool:
        return self.term_options.notifications_enabled

    def check_notifications(self) -> None:
        self.check_leader()
        if not self.term_options.notifications_enabled:
            raise NotificationsNotEnabled(shard=self.shard)

    # -- sequence updates -------------------------------------------------------------------------

    def watch_sequence(self, prefix: str) -> SequenceWatch:
        w = SequenceWatch(prefix, last=reads.last_sequence_key(self.storage.db, prefix))
        self._sequence_watches.setdefault(prefix, []).append(w)
        return w

    def unwatch_sequence(self, w: SequenceWatch) -> None:
        ws = self._sequence_watches.get(w.prefix)
        if ws and w in ws:
            ws.remove(w)
            if not ws:
                del self._sequence_watches[w.prefix]

    def _notify_sequences(self, updates: list[tuple[str, str]]) -> None:
        for prefix, key in updates:
            for w in self._sequence_watches.get(prefix, ()):
                w.last = key
                w.signal.notify()
