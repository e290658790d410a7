"""The leader of one shard: fencing, the write path, reads.

Write path (built for replication; RF=1 is the case with no follower):

    propose → WAL append (term, offset, LogEntryValue, timestamp)
            → local group-commit sync (one fsync for everything appended)
            → quorum ack tracker (leader head + follower acks)
            → apply committed entries in offset order, one DB batch each
            → resolve the proposal's future → reply

The WAL's sync thread wakes the event loop once per sync round through a
pipe; the leader then advances its head in the tracker and applies whatever
became committed. Follower cursors (replication) feed their acks into the
same tracker and trigger the same apply step.

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

import grpc

from pyxia._native import EntryNotFound, WalError
from pyxia.common.validation import accepts_term, check_storable_term
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidStatus,
    InvalidTerm,
    NodeIsNotLeader,
    NotificationsNotEnabled,
    PyxiaError,
    StorageFailure,
    WriteIndeterminate,
)
from pyxia.failpoints import failpoint
from pyxia.metrics import ShardMetrics
from pyxia.proto import client_pb2, replication_pb2
from pyxia.rpc_errors import error_from_rpc
from pyxia.server import handoff
from pyxia.server.follower_cursor import FollowerCursor
from pyxia.server.manifest import CallMetadata
from pyxia.server.quorum import QuorumAckTracker
from pyxia.server.read_index import LeadershipConfirmations
from pyxia.server.rpc_clients import ChannelPool
from pyxia.server.session_manager import SessionManager
from pyxia.server.shard_storage import ShardStorage
from pyxia.server.signals import Signal
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

log = logging.getLogger("pyxia.leader")

NOT_MEMBER = replication_pb2.NOT_MEMBER
FENCED = replication_pb2.FENCED
FOLLOWER = replication_pb2.FOLLOWER
LEADER = replication_pb2.LEADER

READ_CONFIRM_TIMEOUT_S = 3.0
"""How long a read waits for a majority to confirm this leader before it is refused."""


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


class LeaderController:
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
        self.term = term
        self.term_options = options
        self.status = NOT_MEMBER if term < 0 else FENCED
        self.replication_factor = 1
        self.tracker: QuorumAckTracker | None = None
        # Leadership confirmation rounds of the current term (reads); None while not leading.
        self.confirmations: LeadershipConfirmations | None = None
        self.confirmed = Signal()
        self.read_confirm_timeout_s = READ_CONFIRM_TIMEOUT_S
        self._pending: collections.deque[Proposal] = collections.deque()
        self._next_offset = self._log_end() + 1
        self._last_ts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_registered = False
        self.sync_policy: SyncPolicy | None = None
        self._closed = False
        # Bumped after every apply: notification and sequence streams wait on it.
        self.applied = Signal()
        self._sequence_watches: dict[str, list[SequenceWatch]] = {}
        self.metrics = ShardMetrics(self.shard)
        self.sessions = SessionManager(self, check_interval=session_check_interval)
        self.leader_hint: str | None = None
        # Bumped on every append: follower cursors wait on it.
        self.appended = Signal()
        self._channels = channels
        self.cursors: dict[str, FollowerCursor] = {}
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
        # Set while this leader steps down for a planned move (see handoff.py).
        self.handoff: handoff.Handoff | None = None
        # Called (synchronously) when a planned step-down begins, before new writes are
        # refused: a hook may still log its own last writes, which the drain then commits.
        self.before_step_down: list[Callable[[LeaderController], None]] = []

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def commit_offset(self) -> int:
        return self.tracker.commit_offset if self.tracker else self.storage.commit_offset

    @property
    def head_offset(self) -> int:
        return self.wal.last_offset

    def _log_end(self) -> int:
        """The offset the log continues from: its last entry, or, when it is empty (after a
        snapshot, or cut below the DB by ``pyxia wal truncate``), the DB's commit offset."""
        return max(self.wal.last_offset, self.storage.commit_offset)

    async def new_term(self, term: int, options: TermOptions) -> replication_pb2.EntryId:
        """Fences this replica at ``term``. Same term again is allowed only
        while FENCED (a retried NewTerm during an election). Returns the
        WAL head, made durable first (the new leader counts it as held)."""
        self._check_open()
        check_storable_term(term)
        if not accepts_term(term, self.term, self.storage.head_entry_id().term):
            raise InvalidTerm(
                f"oxia: invalid term {term}, the shard is at term {self.term}", shard=self.shard
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
        self._step_down(
            NodeIsNotLeader(f"oxia: shard {self.shard} is changing term", shard=self.shard)
        )
        self.handoff = None
        await self._stop_cursors()
        self.storage.update_term(term, options)
        self.term = term
        self.term_options = options
        self.status = FENCED
        await asyncio.to_thread(self.wal.sync)
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
        self._check_open()
        if term != self.term:
            raise InvalidTerm(
                f"oxia: BecomeLeader for term {term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self.status != FENCED:
            raise InvalidStatus(f"oxia: BecomeLeader while {self.status_name}", shard=self.shard)
        self._loop = asyncio.get_running_loop()
        head = self._log_end()
        self.replication_factor = replication_factor
        tracker = QuorumAckTracker(replication_factor, head, self.storage.commit_offset)
        self.tracker = tracker
        self.confirmations = LeadershipConfirmations(replication_factor)
        self._next_offset = head + 1
        # Entry timestamps never go back along the log, across terms too: the notification
        # retention window is computed from them on every replica (server/retention.py).
        self._last_ts = max(self._last_ts, self._log_clock())
        self._register_reader()
        # Only a leader that needs no follower waits on its own fsync: with followers
        # the loop must stay free to ship the entry while the sync thread flushes.
        self.sync_policy = SyncPolicy(
            self.wal,
            self._loop,
            self._on_wal_round,
            lambda: (
                self._reader_registered
                and self.status == LEADER
                and self.tracker is tracker
                and self.replication_factor == 1
            ),
        )
        tracker.advance_head(self.wal.last_synced_offset)
        for name, follower_head in (followers or {}).items():
            await self._add_follower(name, follower_head)
            if self._closed or self.term != term:
                raise AlreadyClosed(shard=self.shard)
        # Everything up to our head must be held by a quorum before we serve.
        while tracker.commit_offset < head:
            seen = self.applied.generation
            if self._closed or self.term != term or self.tracker is not tracker:
                raise AlreadyClosed(shard=self.shard)
            await self.applied.wait(seen, 1.0)
        if self._closed or self.term != term or self.tracker is not tracker:
            raise AlreadyClosed(shard=self.shard)
        replay = self._replay = self.storage.apply_steps(tracker.commit_offset)
        try:
            applied = await run_sliced(replay, self.apply_slice_s, lambda: self._replay is replay)
        except Abandoned:
            raise AlreadyClosed(shard=self.shard) from None
        finally:
            if self._replay is replay:
                self._replay = None
        if self._closed or self.term != term or self.tracker is not tracker:
            raise AlreadyClosed(shard=self.shard)
        if applied:
            log.info("shard %s: applied %d committed entries from the WAL", self.shard, applied)
        self.applier = self.storage.applier
        self.status = LEADER
        self.sessions.load(reads.load_sessions(self.storage.db))
        self.sessions.start()
        self.applied.notify()
        self.leadership.notify()

    def _log_clock(self) -> int:
        """The newest timestamp in this replica's log: its head entry's, or after a snapshot
        (an empty WAL) its newest notification batch's."""
        head = self.wal.last_offset
        ts = 0
        if head >= 0:
            try:
                ts = self.wal.read(head).timestamp
            except EntryNotFound:
                pass
        newest = reads.last_notification_batch(self.storage.db)
        return max(ts, newest[1] if newest is not None else 0)

    async def add_follower(self, term: int, name: str, head: replication_pb2.EntryId) -> None:
        """Attaches a follower (a straggler of the election, or a new
        ensemble member). Idempotent by name."""
        self._check_open()
        if term != self.term:
            raise InvalidTerm(
                f"oxia: AddFollower for term {term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self.status != LEADER:
            raise InvalidStatus(f"oxia: AddFollower while {self.status_name}", shard=self.shard)
        existing = self.cursors.get(name)
        if existing is not None:
            if head.offset >= existing.ack_offset:
                return
            # It holds less than it acknowledged: it lost its data (a wiped disk, a replica
            # rebuilt after corruption). Its cursor would wait for the next write before
            # finding out; start it over with a snapshot, as a cursor does when a follower
            # says it has no data.
            log.warning(
                "shard %s: follower %s holds up to %d but acknowledged %d: starting it over",
                self.shard,
                name,
                head.offset,
                existing.ack_offset,
            )
            del self.cursors[name]
            await existing.close()
            self._check_open()
            if self.tracker is not None:
                self.tracker.reset_follower(name, -1)
            await self._add_follower(name, head, force_snapshot=True)
            return
        if len(self.cursors) >= self.replication_factor - 1:
            raise InvalidArgument(
                f"oxia: shard {self.shard} already has {len(self.cursors)} followers "
                f"(replication factor {self.replication_factor})",
                shard=self.shard,
            )
        await self._add_follower(name, head)

    async def _add_follower(
        self, name: str, head: replication_pb2.EntryId, *, force_snapshot: bool = False
    ) -> None:
        if self._channels is None:
            raise InvalidArgument("oxia: this server cannot replicate (no channels)")
        ack = await self._truncate_follower_if_needed(name, head)
        if self._closed or self.tracker is None:
            raise AlreadyClosed(shard=self.shard)
        before = self.tracker.commit_offset
        commit = self.tracker.add_follower(name, ack)
        if commit > before:
            self.apply_committed(commit)
            self.applied.notify()
        cursor = FollowerCursor(self, name, ack, self._channels, force_snapshot=force_snapshot)
        self.cursors[name] = cursor
        cursor.start()

    async def _truncate_follower_if_needed(self, name: str, head: replication_pb2.EntryId) -> int:
        """Oxia's rule: a follower whose head is in the leader's log keeps
        its log; otherwise it is cut back to the last entry whose term is at
        most its head's term. Returns what the follower holds afterwards."""
        if head.offset < 0:
            return -1
        own = self.storage.head_entry_id()
        if head.term == own.term and head.offset <= own.offset:
            return int(head.offset)
        if head.term > own.term:
            raise InvalidTerm(
                f"oxia: follower {name} has term {head.term}, newer than the leader's {own.term}",
                shard=self.shard,
            )
        safe = self._last_entry_with_term_at_most(head.term)
        if safe is not None and head.offset <= safe.offset:
            try:
                if self.wal.read(head.offset).term == head.term:
                    return int(head.offset)
            except EntryNotFound:
                pass
        target = safe or replication_pb2.EntryId(term=-1, offset=-1)
        log.info(
            "shard %s: truncating follower %s from %d/%d to %d/%d",
            self.shard,
            name,
            head.term,
            head.offset,
            target.term,
            target.offset,
        )
        res = await self._call_truncate(name, target)
        return int(res.offset)

    def _last_entry_with_term_at_most(self, term: int) -> replication_pb2.EntryId | None:
        for e in self.wal.reverse_reader():
            if e.term <= term:
                return replication_pb2.EntryId(term=e.term, offset=e.offset)
        return None

    async def _call_truncate(
        self, name: str, head: replication_pb2.EntryId
    ) -> replication_pb2.EntryId:
        assert self._channels is not None
        call = self._channels.get(name).unary_unary(
            "/replication.OxiaLogReplication/Truncate",
            request_serializer=replication_pb2.TruncateRequest.SerializeToString,
            response_deserializer=replication_pb2.TruncateResponse.FromString,
        )
        req = replication_pb2.TruncateRequest(
            namespace=self.namespace, shard=self.shard, term=self.term, head_entry_id=head
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
        for c in cursors.values():
            await c.close()

    def get_status(self) -> replication_pb2.GetStatusResponse:
        self._check_open()
        return replication_pb2.GetStatusResponse(
            term=self.term,
            status=self.status,
            head_offset=self.wal.last_offset,
            commit_offset=self.commit_offset,
        )

    def _register_reader(self) -> None:
        if not self._reader_registered and self._loop is not None:
            self._loop.add_reader(self.wal.notify_fd, self._on_wal_round)
            self._reader_registered = True

    def _unregister_reader(self) -> None:
        if self._reader_registered and self._loop is not None:
            self._loop.remove_reader(self.wal.notify_fd)
            self._reader_registered = False

    def _step_down(self, reason: PyxiaError) -> None:
        """Stops leading: abandons the apply in progress, fails pending proposals, stops
        sessions."""
        self._abandon_apply()
        self.sessions.stop()
        self._fail_pending(reason)
        self.tracker = None
        self.confirmations = None
        self.confirmed.notify()
        if self.status == LEADER:
            self.status = FENCED
        self.applied.notify()
        self.leadership.notify()

    # -- planned handoff --------------------------------------------------------------------------

    async def step_down(self, term: int, drain_s: float) -> tuple[replication_pb2.EntryId, bool]:
        """Hands the leadership of ``term`` over (a planned move): from now on new writes are
        refused with a retryable NodeIsNotLeader; returns once every write already logged is
        committed, applied and answered (or at the ``drain_s`` deadline), with the head entry
        id and whether it drained. The leader stays this way until a NewTerm fences it (or,
        without one, until the handoff's refusal period ends)."""
        self._check_open()
        now = time.monotonic()
        h = handoff.begin(
            self.handoff,
            status=self.status,
            term=self.term,
            requested_term=term,
            now=now,
            drain_s=drain_s,
            leader_hint=self.leader_hint,
        )
        if self.handoff is None:
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
            self.handoff = h
            self.leadership.notify()  # a leader handing over no longer leads for the TSO
        self.handoff = h
        while not handoff.drained(len(self._pending), self.head_offset, self.commit_offset):
            seen = self.applied.generation
            if self._closed or self.term != term or self.status != LEADER:
                raise InvalidTerm(
                    f"oxia: shard {self.shard} left term {term} while stepping down",
                    shard=self.shard,
                )
            left = h.drain_until - time.monotonic()
            if left <= 0:
                break
            await self.applied.wait(seen, left)
        done = handoff.drained(len(self._pending), self.head_offset, self.commit_offset)
        if self.handoff is not None and self.handoff.term == term:
            self.handoff = handoff.answered(self.handoff, time.monotonic())
        if not done:
            log.warning(
                "shard %s: %d logged writes not committed within the %.1fs step-down drain",
                self.shard,
                len(self._pending),
                drain_s,
            )
        return self.storage.head_entry_id(), done

    @property
    def handing_off(self) -> bool:
        """Whether this leader refuses new writes now (it is stepping down)."""
        h = self.handoff
        return h is not None and handoff.refuses_writes(h, self.term, time.monotonic())

    def _check_writable(self) -> None:
        """Raises NodeIsNotLeader unless this replica leads and takes new writes."""
        self.check_leader()
        h = self.handoff
        if h is None:
            return
        if handoff.refuses_writes(h, self.term, time.monotonic()):
            raise NodeIsNotLeader(
                f"oxia: shard {self.shard} is handing its leadership over",
                shard=self.shard,
                leader_hint=handoff.hint_for_clients(h, self.leader_hint),
            )
        log.warning(
            "shard %s: no new term came after the step-down from term %d: taking writes again",
            self.shard,
            h.term,
        )
        self.handoff = None

    async def close(self) -> None:
        """Stops serving; fails in-flight writes. Idempotent. The storage is
        owned (and closed) by whoever created it."""
        if self._closed:
            return
        self._closed = True
        self._unregister_reader()
        self._step_down(NodeIsNotLeader(f"oxia: shard {self.shard} is closing", shard=self.shard))
        self.handoff = None
        self.appended.close()
        self.confirmed.close()
        await self._stop_cursors()
        await self.sessions.close()
        self.applied.close()
        for watches in self._sequence_watches.values():
            for w in watches:
                w.signal.close()

    @property
    def status_name(self) -> str:
        return str(replication_pb2.ServingStatus.Name(self.status))

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed(f"oxia: shard {self.shard} controller is closed", shard=self.shard)

    def check_leader(self) -> None:
        if self._closed or self.status != LEADER:
            raise NodeIsNotLeader(
                f"oxia: node is not leader for shard {self.shard}",
                shard=self.shard,
                leader_hint=self.leader_hint,
            )

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
        self._check_writable()
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
        self._check_writable()
        req = build(self._next_offset)
        return self._append(req, log_entry_value(req.SerializeToString()), on_applied)

    def _append(
        self,
        request: client_pb2.WriteRequest,
        value: bytes,
        on_applied: Callable[[ApplyResult], None] | None,
    ) -> asyncio.Future[ApplyResult]:
        assert self._loop is not None
        offset = self._next_offset
        now = int(time.time() * 1000)
        ts = now if now > self._last_ts else self._last_ts
        self._last_ts = ts
        try:
            self.wal.append(self.term, offset, value, ts)
        except WalError as e:
            self._storage_failed(e)
            raise StorageFailure(f"oxia: WAL append failed: {e}", shard=self.shard) from e
        self._next_offset = offset + 1
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
        if self.sync_policy is not None:
            self.sync_policy.round_done()
        if self.tracker is None:
            return
        commit = self.tracker.advance_head(self.wal.last_synced_offset)
        self.apply_committed(commit)

    def on_follower_ack(self, follower: str, offset: int) -> None:
        """A follower cursor received a (cumulative) ack."""
        if self.tracker is None:
            return
        before = self.tracker.commit_offset
        commit = self.tracker.ack(follower, offset)
        if commit > before:
            self.apply_committed(commit)

    def on_follower_heartbeat(self, follower: str, round_id: int) -> None:
        """A follower answered leadership-confirmation round ``round_id`` at this term."""
        rc = self.confirmations
        if rc is not None:
            rc.ack(follower, round_id)
            self.confirmed.notify()

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
        n_ops = 0
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
            req = p.request
            n_requests += 1
            n_ops += len(req.puts) + len(req.deletes) + len(req.delete_ranges)
            m.write_latency.observe(time.monotonic() - p.proposed_at)
        if n_requests:
            m.write_requests.inc(n_requests)
            m.write_ops.inc(n_ops)
            m.commit_offset.set(target)
            m.head_offset.set(self.wal.last_offset)
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

    def _fail_pending(self, cause: PyxiaError) -> None:
        """Fails the proposals not yet applied. They are in the WAL already (and maybe on
        followers), so a new leader may still commit them: their outcome is unknown, never
        "not taken" (a client that resent a conditional write would see a false conflict)."""
        if not self._pending:
            return
        err = WriteIndeterminate(
            f"{cause}; the write was logged but not committed here, a new leader may still "
            "commit it",
            shard=self.shard,
        )
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(err)

    def _storage_failed(self, cause: BaseException) -> None:
        log.error("shard %s: storage failure, stepping down: %s", self.shard, cause)
        if self.on_failure is not None and self.status != NOT_MEMBER:
            self.on_failure(f"storage failure: {cause}")
        self._fail_pending(StorageFailure(f"oxia: storage failure: {cause}", shard=self.shard))
        self._step_down(StorageFailure(str(cause), shard=self.shard))
        self.status = NOT_MEMBER

    # -- reads ------------------------------------------------------------------------------------

    async def confirm_leadership(self) -> None:
        """Returns once a majority of the ensemble has confirmed, after this call began, that
        this replica leads its term; raises NodeIsNotLeader if it stops leading or no majority
        answers within ``read_confirm_timeout_s`` (a leader cut off from its followers)."""
        self.check_leader()
        rc = self.confirmations
        if rc is None or not rc.needed:
            return
        round_id = rc.request()
        if rc.sent < round_id:
            self.appended.notify()  # wakes the cursors: they send the round
        if rc.is_confirmed(round_id):
            return
        deadline = time.monotonic() + self.read_confirm_timeout_s
        while True:
            seen = self.confirmed.generation
            self.check_leader()
            if self.confirmations is not rc:
                raise NodeIsNotLeader(
                    f"oxia: shard {self.shard} changed term during a read", shard=self.shard
                )
            if rc.is_confirmed(round_id):
                return
            left = deadline - time.monotonic()
            if left <= 0 or not await self.confirmed.wait(seen, left):
                self.metrics.read_confirm_timeouts.inc()
                raise NodeIsNotLeader(
                    f"oxia: shard {self.shard}: no majority confirmed this leader within "
                    f"{self.read_confirm_timeout_s:g}s; refusing a possibly stale read",
                    shard=self.shard,
                    leader_hint=self.leader_hint,
                )

    async def get(self, req: client_pb2.GetRequest) -> client_pb2.GetResponse:
        await self.confirm_leadership()
        self.metrics.read_ops.inc()
        return reads.get(self.storage.db, req)

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
