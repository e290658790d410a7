"""One shard replica's rules, as a pure state machine (no I/O, no clock, no asyncio).

In the style of etcd's raft package: the controllers (``leader_controller.py``,
``follower_controller.py``, thin asyncio drivers) feed :meth:`Replica.step` the inputs — the
coordinator's requests, the replication messages, the completions of the I/O the machine asked
for, the time as a field of the inputs that need it — and carry out the effects it returns, in
order. A refused input raises the domain error that answers it and changes nothing. The machine
reads the replica's log and DB through a read-only view (:class:`ReplicaLog`, as etcd's raft
reads its ``Storage``); it never writes them, and it keeps no per-entry state: one input and at
most a couple of effects per log entry, one effect per sync round or acknowledgement.

It owns the status, the term, the fencing, the truncation decisions, the quorum and the
read-index confirmation of one replica:

Status (Oxia's)::

    NOT_MEMBER ──NewTerm──▶ FENCED ──BecomeLeader … Replayed──▶ LEADER
                              │  └──Truncate / an entry / a snapshot──▶ FOLLOWER
                              ◀──────────── NewTerm (any status) ─────────────┘
    any ──StorageFailed──▶ NOT_MEMBER

- **Fencing.** A term never goes back (:func:`~pyxia.common.validation.accepts_term`: except to
  re-base a term forged above ``MAX_TERM``); the same term again only while FENCED (a retried
  NewTerm is idempotent, Oxia #887). A NewTerm ends the leadership (writes logged but not
  committed answer WRITE_INDETERMINATE: a new leader may still commit them) and the replication
  stream, then asks the driver to store the term (:class:`StoreTerm`); the status and term
  change once it is stored (:class:`TermStored`), so a failed store leaves them as they were.
- **Leading.** BecomeLeader (FENCED, same term, not rebuilding) starts a :class:`Tenure`: the
  quorum tracker from the log end, the read-index rounds, one :class:`FollowerProgress` per
  follower. Each follower's log is kept if its head is in ours, else cut back (Oxia's rule,
  :func:`follower_truncation`). The leader serves once everything up to its head at election is
  committed (:meth:`Replica.caught_up`) and replayed (:class:`Replayed`).
- **Writes.** :class:`Propose` gives the next offset and a timestamp that never goes back along
  the log; :class:`Synced` and :class:`FollowerAck` advance the quorum; :class:`Committed` asks
  the driver to apply up to the new commit offset.
- **Reads.** :class:`ReadIndex` is served at once while a majority's read-lease promises hold
  (renewing them when half is left), else asks for a heartbeat round a majority must answer at
  this term after the read arrived (``read_index.py``); a round goes first to a majority's
  worth of followers only, and to every follower once a read escalates it
  (:class:`EscalateRound`).
- **Planned step-down.** :class:`StepDown` (``handoff.py``'s rules): the hooks run, then new
  writes are refused with a retryable NODE_IS_NOT_LEADER until the NewTerm.
- **Following.** One Replicate stream at a time, never while a NewTerm, Truncate or snapshot
  holds the replica (``busy``) nor while it leads or is being elected; entries are checked
  (term, bounds, no hole after the log's end; an empty log continues the DB, else
  NODE_IS_NOT_MEMBER: the follower needs a snapshot, Oxia #929); acks are cumulative and
  only for durable entries; a heartbeat is answered only at the stream's own term (with the
  durable ack in one message when both are due); the applier
  goes up to the leader's commit offset, never past what is durable here. Truncate only while
  FENCED, with no stream, never below what is applied. A snapshot's term is checked before
  anything is destroyed.
- **Shard split** (the parent's side): :class:`AddObserver` attaches a split observer, a
  follower of another shard (a child's replica) that gets this shard's snapshot and log; it
  starts with a snapshot (a child replica may hold a tail of an earlier parent term that this
  log does not), never counts towards the quorum and never answers a confirmation round.
  :class:`Freeze` refuses new writes (a retryable NODE_IS_NOT_LEADER) without fencing, so the
  observers keep streaming, until it is thawed or the leadership ends (never by itself: the
  coordinator fences the parent right after the children hold its final head).
- **Follower progress** (on the leader): what each follower acknowledged, whether it needs a
  snapshot (it lost its data, or needs entries the WAL no longer holds), what its GetStatus
  answers mean (NODE_IS_NOT_MEMBER twice: its data is gone).

Effects that belong to a leadership carry its :class:`Tenure`; completions and follower messages
carry it back, and the machine drops those of a tenure that is over (a deposed leader's late
acks, a cursor of an older term).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

from pyxia.common.validation import accepts_term, check_storable_term
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidStatus,
    InvalidTerm,
    LeaderAlreadyConnected,
    NodeIsNotLeader,
    NodeIsNotMember,
    PyxiaError,
    StorageFailure,
    WriteIndeterminate,
)
from pyxia.proto import replication_pb2
from pyxia.server import handoff
from pyxia.server.handoff import Handoff
from pyxia.server.quorum import QuorumAckTracker
from pyxia.server.read_index import LeadershipConfirmations

if TYPE_CHECKING:
    from pyxia.storage.db import TermOptions

log = logging.getLogger("pyxia.replica")

NOT_MEMBER = replication_pb2.NOT_MEMBER
FENCED = replication_pb2.FENCED
FOLLOWER = replication_pb2.FOLLOWER
LEADER = replication_pb2.LEADER

Status: TypeAlias = replication_pb2.ServingStatus.ValueType


def status_name(status: Status) -> str:
    return str(replication_pb2.ServingStatus.Name(status))


class EntryId(NamedTuple):
    """A log position: the entry's term and offset (``(-1, -1)``: none)."""

    term: int
    offset: int


NO_ENTRY = EntryId(-1, -1)


class ReplicaLog(Protocol):
    """What the machine reads of the replica's storage (never writes)."""

    @property
    def last_offset(self) -> int:
        """The WAL's last entry (-1: empty)."""

    @property
    def first_offset(self) -> int:
        """The WAL's first entry (-1: empty)."""

    @property
    def synced_offset(self) -> int:
        """Every entry up to this one is durable."""

    @property
    def applied_offset(self) -> int:
        """The DB's commit offset: every entry up to it is applied."""

    @property
    def rebuilding(self) -> bool:
        """The replica is being rebuilt after corruption (it may not lead)."""

    def head(self) -> EntryId:
        """The last entry of the WAL, or :data:`NO_ENTRY`."""

    def term_at(self, offset: int) -> int | None:
        """The term of the entry at ``offset`` (None: not in the WAL)."""

    def last_entry_with_term_at_most(self, term: int) -> EntryId | None:
        """The newest entry whose term is at most ``term``."""

    def clock(self) -> int:
        """The newest timestamp in the log (ms): its head entry's, or after a snapshot its
        newest notification batch's."""


def follower_truncation(name: str, head: EntryId, log: ReplicaLog, shard: int) -> EntryId | None:
    """Oxia's rule for a follower whose log ends at ``head``: None if its head is in the
    leader's log (it keeps everything), else the entry to cut it back to (the last one whose
    term is at most its head's term; :data:`NO_ENTRY` for all of it). A follower with a newer
    term than the leader's log is refused."""
    if head.offset < 0:
        return None
    own = log.head()
    if head.term == own.term and head.offset <= own.offset:
        return None
    if head.term > own.term:
        raise InvalidTerm(
            f"oxia: follower {name} has term {head.term}, newer than the leader's {own.term}",
            shard=shard,
        )
    safe = log.last_entry_with_term_at_most(head.term)
    if safe is not None and head.offset <= safe.offset and log.term_at(head.offset) == head.term:
        return None
    return safe or NO_ENTRY


# -- the state of a leadership and of a stream ----------------------------------------------------


@dataclass(slots=True)
class FollowerProgress:
    """A follower as its leader sees it (its acknowledged offset is in the quorum tracker)."""

    snapshot: bool = False
    """Its next connection starts with a snapshot (it lost its data)."""
    not_member_once: bool = False
    """Its last GetStatus answered NODE_IS_NOT_MEMBER (a second time means its data is gone)."""


@dataclass(slots=True)
class ObserverProgress:
    """A split observer as its leader sees it: it keeps ``split_range`` of this shard's hashes
    on its replica of another shard; its acknowledged offset never counts towards the quorum."""

    split_range: tuple[int, int]
    ack: int = -1
    snapshot: bool = True
    """Its next connection starts with a snapshot (always its first one)."""
    not_member_once: bool = False


ObserverKey = tuple[str, int]
"""A split observer: (follower, child shard)."""

MAX_OBSERVERS = 16
"""Split observers one leader feeds at most (two children times their replication factor)."""


@dataclass(eq=False, slots=True)
class Tenure:
    """One leadership: from BecomeLeader until the replica stops leading (compared by
    identity: a retried election at the same term is another tenure)."""

    term: int
    replication_factor: int
    elected_head: int
    """The log end when elected: a quorum holds it all before the leader serves."""
    tracker: QuorumAckTracker
    confirmations: LeadershipConfirmations
    next_offset: int
    followers: dict[str, FollowerProgress] = field(default_factory=dict)
    observers: dict[ObserverKey, ObserverProgress] = field(default_factory=dict)
    serving: bool = False
    handoff: Handoff | None = None
    frozen: bool = False
    """Frozen for a split's cutover: new writes are refused (see :class:`Freeze`)."""


@dataclass(eq=False, slots=True)
class Stream:
    """One Replicate stream on a follower (compared by identity)."""

    term: int
    received: int = -1
    """The newest entry appended (or found already held) from this stream."""
    heartbeat: int = 0
    """The newest leadership-confirmation round received."""
    acked: int = -1
    answered: int = 0


# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewTerm:
    term: int
    options: TermOptions


@dataclass(frozen=True, slots=True)
class TermStored:
    """The driver stored the term of a :class:`StoreTerm`."""

    term: int
    options: TermOptions


@dataclass(frozen=True, slots=True)
class BecomeLeader:
    term: int
    replication_factor: int
    followers: Mapping[str, EntryId] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FollowerTruncated:
    """The follower of a :class:`TruncateFollower` now ends at ``head``."""

    tenure: Tenure
    follower: str
    head: EntryId
    snapshot: bool


@dataclass(frozen=True, slots=True)
class Replayed:
    """The driver applied every committed entry of the log: the leader serves."""

    tenure: Tenure


@dataclass(frozen=True, slots=True)
class AddFollower:
    term: int
    follower: str
    head: EntryId


@dataclass(frozen=True, slots=True)
class Propose:
    """A write to log. ``now`` (monotonic s) for the step-down deadlines, ``now_ms`` (wall
    clock) for the entry's timestamp."""

    now: float
    now_ms: int


@dataclass(frozen=True, slots=True)
class Synced:
    """A WAL sync round: every entry up to ``offset`` is durable."""

    offset: int


@dataclass(frozen=True, slots=True)
class FollowerAck:
    """``follower`` acknowledged ``offset`` (``target_shard``: a split observer's ack, for
    its replica of that shard; the same for every follower input below)."""

    tenure: Tenure
    follower: str
    offset: int
    target_shard: int | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """``follower`` answered confirmation round ``round_id`` at the tenure's term, promising
    ``lease_s`` seconds of its clock (0: none; see read_index.py)."""

    tenure: Tenure
    follower: str
    round_id: int
    target_shard: int | None = None
    lease_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    """A follower's stream may carry a confirmation round: it last carried ``last_sent``."""

    tenure: Tenure
    last_sent: int
    target_shard: int | None = None
    follower: str | None = None
    """The stream's follower (None: any, a round goes to every follower)."""
    now: float = -math.inf
    """The leader's clock before the round leaves (-inf: unknown, its answers give no lease)."""


@dataclass(frozen=True, slots=True)
class EscalateRound:
    """A read's round ``round_id`` was not confirmed soon: it goes to every follower."""

    tenure: Tenure
    round_id: int


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """A read arrived at ``now`` (the leader's clock; inf: unknown, no lease): it is served at
    once under a read lease, else it waits for a round of confirmations that starts after it."""

    now: float = math.inf


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    tenure: Tenure
    follower: str
    ack_offset: int
    target_shard: int | None = None


@dataclass(frozen=True, slots=True)
class FollowerLostData:
    """A follower's stream answered NODE_IS_NOT_MEMBER: it holds nothing of the shard."""

    tenure: Tenure
    follower: str
    target_shard: int | None = None


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    """A follower's GetStatus answer after a failed stream (``status`` None: it answered
    NODE_IS_NOT_MEMBER, it has no replica of the shard open)."""

    tenure: Tenure
    follower: str
    status: Status | None
    head_offset: int = -1
    target_shard: int | None = None


@dataclass(frozen=True, slots=True)
class AddObserver:
    """Attach a split observer: ``follower``'s replica of ``target_shard`` keeps
    ``split_range`` of this shard's hashes."""

    term: int
    follower: str
    target_shard: int
    split_range: tuple[int, int]


@dataclass(frozen=True, slots=True)
class RemoveObserver:
    follower: str
    target_shard: int


@dataclass(frozen=True, slots=True)
class Freeze:
    """Freeze (``frozen``) or thaw the shard for a split's cutover."""

    term: int
    frozen: bool


@dataclass(frozen=True, slots=True)
class StepDown:
    term: int
    drain_s: float
    now: float


@dataclass(frozen=True, slots=True)
class HandoffStarted:
    """The step-down hooks ran: new writes are refused from now on."""

    handoff: Handoff


@dataclass(frozen=True, slots=True)
class StepDownAnswered:
    term: int
    now: float


@dataclass(frozen=True, slots=True)
class StorageFailed:
    cause: str


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Truncate:
    term: int
    head: EntryId


@dataclass(frozen=True, slots=True)
class LogTruncated:
    pass


@dataclass(frozen=True, slots=True)
class OpenStream:
    term: int


@dataclass(frozen=True, slots=True)
class Received:
    """One message of a Replicate stream (an entry, or a heartbeat)."""

    stream: Stream
    append: replication_pb2.Append


@dataclass(frozen=True, slots=True)
class PollAcks:
    """The stream may acknowledge what became durable, or answer a heartbeat."""

    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamClosed:
    stream: Stream


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    term: int


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    term: int
    options: TermOptions
    commit_offset: int


@dataclass(frozen=True, slots=True)
class BeginExclusive:
    """A NewTerm, Truncate, snapshot install or close holds the follower replica."""


@dataclass(frozen=True, slots=True)
class EndExclusive:
    pass


@dataclass(frozen=True, slots=True)
class ApplyDue:
    """The follower's applier looks for committed entries to apply."""


@dataclass(frozen=True, slots=True)
class Applied:
    """The follower's applier applied up to the DB's commit offset."""


Input = (
    NewTerm
    | TermStored
    | BecomeLeader
    | FollowerTruncated
    | Replayed
    | AddFollower
    | Propose
    | Synced
    | FollowerAck
    | HeartbeatAck
    | HeartbeatDue
    | EscalateRound
    | ReadIndex
    | SnapshotSent
    | FollowerLostData
    | FollowerStatus
    | AddObserver
    | RemoveObserver
    | Freeze
    | StepDown
    | HandoffStarted
    | StepDownAnswered
    | StorageFailed
    | Close
    | Truncate
    | LogTruncated
    | OpenStream
    | Received
    | PollAcks
    | StreamClosed
    | SnapshotBegin
    | SnapshotInstalled
    | BeginExclusive
    | EndExclusive
    | ApplyDue
    | Applied
)

# -- effects --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopLeading:
    """The leadership is over: abandon the apply in progress, stop the sessions, fail every
    write not yet applied with ``pending_error``, wake whoever waits on the leadership. (The
    cursors stop on their own: their tenure is over.)"""

    pending_error: PyxiaError


@dataclass(frozen=True, slots=True)
class StopCursors:
    """Close every follower cursor (and wait for them)."""


@dataclass(frozen=True, slots=True)
class StoreTerm:
    """Persist the term with its options, then feed :class:`TermStored`."""

    term: int
    options: TermOptions


@dataclass(frozen=True, slots=True)
class SyncLog:
    """Make the whole WAL durable (the head a NewTerm answers must be)."""


@dataclass(frozen=True, slots=True)
class StartTenure:
    """Watch the WAL's sync rounds for this leadership."""

    tenure: Tenure


@dataclass(frozen=True, slots=True)
class TruncateFollower:
    """Ask ``follower`` to cut its log back to ``head``, then feed :class:`FollowerTruncated`."""

    tenure: Tenure
    follower: str
    head: EntryId
    snapshot: bool


@dataclass(frozen=True, slots=True)
class StartCursor:
    tenure: Tenure
    follower: str


@dataclass(frozen=True, slots=True)
class StopCursor:
    follower: str


@dataclass(frozen=True, slots=True)
class StartObserver:
    """Start a cursor that feeds split observer ``follower``'s replica of ``target_shard``."""

    tenure: Tenure
    follower: str
    target_shard: int
    split_range: tuple[int, int]


@dataclass(frozen=True, slots=True)
class StopObserver:
    follower: str
    target_shard: int


@dataclass(frozen=True, slots=True)
class Committed:
    """Apply the pending writes up to ``commit_offset`` and answer them."""

    commit_offset: int


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """A quorum holds the elected head: the election may replay and serve."""


@dataclass(frozen=True, slots=True)
class StartServing:
    """Reload the sessions and start expiring them; the leadership is there."""


@dataclass(frozen=True, slots=True)
class LeadershipChanged:
    pass


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A follower answered a confirmation round: wake the waiting reads."""


@dataclass(frozen=True, slots=True)
class WakeCursors:
    """A confirmation round is to be sent: wake the cursors."""


@dataclass(frozen=True, slots=True)
class Append:
    """Log an entry at ``offset`` with ``timestamp`` in ``term``."""

    term: int
    offset: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class ReadNow:
    """The read needs no confirmation (no other replica can be elected)."""


@dataclass(frozen=True, slots=True)
class AwaitRound:
    """The read waits until round ``round_id`` of ``tenure`` is confirmed."""

    tenure: Tenure
    round_id: int


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    round_id: int
    commit_offset: int


@dataclass(frozen=True, slots=True)
class RunStepDownHooks:
    """Run the step-down hooks (they may still log), then feed :class:`HandoffStarted`."""

    handoff: Handoff


@dataclass(frozen=True, slots=True)
class ReportFailure:
    reason: str


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The stream is over (a state change took the replica): wake its ack loop."""


@dataclass(frozen=True, slots=True)
class StaleStream:
    """The message belongs to a stream that is over: stop reading it."""


@dataclass(frozen=True, slots=True)
class TruncateLog:
    """Drop the WAL entries after ``offset``, then feed :class:`LogTruncated`."""

    offset: int


@dataclass(frozen=True, slots=True)
class AppendToLog:
    """Append the message's entry (checking its CRC chain) and request a sync."""

    append: replication_pb2.Append


@dataclass(frozen=True, slots=True)
class WakeStream:
    pass


@dataclass(frozen=True, slots=True)
class WakeApplier:
    pass


@dataclass(frozen=True, slots=True)
class ApplyUpTo:
    offset: int


@dataclass(frozen=True, slots=True)
class FinishRebuilding:
    """The replica rebuilt after corruption holds what was committed when it rejoined."""


@dataclass(frozen=True, slots=True)
class SendAck:
    offset: int
    heartbeat: int = 0


Effect = (
    StopLeading
    | StopCursors
    | StoreTerm
    | SyncLog
    | StartTenure
    | TruncateFollower
    | StartCursor
    | StopCursor
    | StartObserver
    | StopObserver
    | Committed
    | CaughtUp
    | StartServing
    | LeadershipChanged
    | Confirmed
    | WakeCursors
    | Append
    | ReadNow
    | AwaitRound
    | SendHeartbeat
    | RunStepDownHooks
    | ReportFailure
    | StreamOpened
    | StreamEnded
    | StaleStream
    | TruncateLog
    | AppendToLog
    | WakeStream
    | WakeApplier
    | ApplyUpTo
    | FinishRebuilding
    | SendAck
)
Effects = tuple[Effect, ...]

NONE: Effects = ()
STOP_CURSORS = StopCursors()
SYNC_LOG = SyncLog()
CAUGHT_UP = CaughtUp()
START_SERVING = StartServing()
LEADERSHIP_CHANGED = LeadershipChanged()
CONFIRMED = Confirmed()
WAKE_CURSORS = WakeCursors()
READ_NOW = ReadNow()
STREAM_ENDED = StreamEnded()
STALE_STREAM = StaleStream()
WAKE_STREAM = WakeStream()
WAKE_APPLIER = WakeApplier()
FINISH_REBUILDING = FinishRebuilding()


# -- the machine ----------------------------------------------------------------------------------


class Replica:
    """The state of one shard replica and its rules (see the module docstring)."""

    def __init__(self, shard: int, log: ReplicaLog, term: int, options: TermOptions) -> None:
        self.shard = shard
        self.log = log
        self.term = term
        self.options = options
        self.status: Status = NOT_MEMBER if term < 0 else FENCED
        self.closed = False
        self.leader_hint: str | None = None
        """The leader the pushed assignments name (given to clients this replica refuses)."""
        self.failure: str | None = None
        """Why the storage failed, until a new term is stored (a failure is reported once)."""
        # Leading
        self.tenure: Tenure | None = None
        self.last_timestamp = 0
        """The newest entry timestamp this replica gave (timestamps never go back)."""
        # Following
        self.leader_commit_offset = -1
        self.rebuild_target: int | None = None
        """While rebuilding: the leader's commit offset when this replica rejoined."""
        self.stream: Stream | None = None
        self.busy = 0
        self._handlers: dict[type[Any], Callable[[Any], Effects]] = {
            NewTerm: self._new_term,
            TermStored: self._term_stored,
            BecomeLeader: self._become_leader,
            FollowerTruncated: self._follower_truncated,
            Replayed: self._replayed,
            AddFollower: self._add_follower,
            Propose: self._propose,
            Synced: self._synced,
            FollowerAck: self._follower_ack,
            HeartbeatAck: self._heartbeat_ack,
            HeartbeatDue: self._heartbeat_due,
            EscalateRound: self._escalate_round,
            ReadIndex: self._read_index,
            SnapshotSent: self._snapshot_sent,
            FollowerLostData: self._follower_lost_data,
            FollowerStatus: self._follower_status,
            AddObserver: self._add_observer,
            RemoveObserver: self._remove_observer,
            Freeze: self._freeze,
            StepDown: self._step_down,
            HandoffStarted: self._handoff_started,
            StepDownAnswered: self._step_down_answered,
            StorageFailed: self._storage_failed,
            Close: self._close,
            Truncate: self._truncate,
            LogTruncated: self._log_truncated,
            OpenStream: self._open_stream,
            Received: self._received,
            PollAcks: self._poll_acks,
            StreamClosed: self._stream_closed,
            SnapshotBegin: self._snapshot_begin,
            SnapshotInstalled: self._snapshot_installed,
            BeginExclusive: self._begin_exclusive,
            EndExclusive: self._end_exclusive,
            ApplyDue: self._apply_due,
            Applied: self._applied,
        }

    def step(self, message: Input) -> Effects:
        """Feeds one input; returns the effects to carry out, in order. Raises the domain error
        that answers a refused input (nothing changed then)."""
        return self._handlers[type(message)](message)

    # -- queries ----------------------------------------------------------------------------------

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    @property
    def commit_offset(self) -> int:
        t = self.tenure
        return t.tracker.commit_offset if t is not None else self.log.applied_offset

    @property
    def handoff(self) -> Handoff | None:
        t = self.tenure
        return t.handoff if t is not None else None

    @property
    def confirmations(self) -> LeadershipConfirmations | None:
        t = self.tenure
        return t.confirmations if t is not None else None

    @property
    def next_offset(self) -> int:
        """The offset the next write will have (-1: this replica does not lead)."""
        t = self.tenure
        return t.next_offset if t is not None else -1

    @property
    def replication_factor(self) -> int:
        t = self.tenure
        return t.replication_factor if t is not None else 1

    def check_open(self) -> None:
        if self.closed:
            raise AlreadyClosed(f"oxia: shard {self.shard} replica is closed", shard=self.shard)

    def check_leader(self) -> None:
        """Raises NodeIsNotLeader (with the assignments' hint) unless this replica leads."""
        if self.closed or self.status != LEADER:
            raise NodeIsNotLeader(
                f"oxia: node is not leader for shard {self.shard}",
                shard=self.shard,
                leader_hint=self.leader_hint,
            )

    def check_writable(self, now: float) -> None:
        """Raises NodeIsNotLeader unless this replica leads and takes new writes (a leader
        stepping down refuses them, naming the new leader once the assignments do). A handoff
        whose refusals ended without a NewTerm is dropped: the leader takes writes again."""
        self.check_leader()
        t = self.tenure
        assert t is not None
        if t.frozen:
            raise NodeIsNotLeader(
                f"oxia: shard {self.shard} is being split: its writes move to its children",
                shard=self.shard,
            )
        h = t.handoff
        if h is None:
            return
        if handoff.refuses_writes(h, self.term, now):
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
        t.handoff = None

    def handing_off(self, now: float) -> bool:
        """Whether this leader refuses new writes now (it is stepping down)."""
        return handoff.refuses_writes(self.handoff, self.term, now)

    def leads(self, tenure: Tenure) -> bool:
        """Whether ``tenure`` is this replica's current leadership."""
        return tenure is self.tenure and not self.closed

    def check_tenure(self, tenure: Tenure) -> None:
        """Raises AlreadyClosed if ``tenure`` is over (an election overtaken by a new term)."""
        if tenure is not self.tenure or self.closed:
            raise AlreadyClosed(shard=self.shard)

    def caught_up(self, tenure: Tenure) -> bool:
        """Whether a quorum holds the whole log ``tenure`` was elected with (raises
        AlreadyClosed if the tenure is over)."""
        self.check_tenure(tenure)
        return tenure.tracker.commit_offset >= tenure.elected_head

    def read_confirmed(self, tenure: Tenure, round_id: int) -> bool:
        """Whether round ``round_id`` of a read is confirmed; raises NodeIsNotLeader if this
        replica stopped leading, or leads another tenure, meanwhile."""
        self.check_leader()
        if tenure is not self.tenure:
            raise NodeIsNotLeader(
                f"oxia: shard {self.shard} changed term during a read", shard=self.shard
            )
        return tenure.confirmations.is_confirmed(round_id)

    def drained(self, pending: int) -> bool:
        """Every logged write is committed, applied and answered (``pending`` writes are not)."""
        return handoff.drained(pending, self.log.last_offset, self.commit_offset)

    @property
    def frozen(self) -> bool:
        t = self.tenure
        return t is not None and t.frozen

    def follower_ack(self, tenure: Tenure, follower: str, target_shard: int | None = None) -> int:
        """What ``follower`` (with ``target_shard``: that split observer) acknowledged (-1:
        nothing, or not a follower of ``tenure``)."""
        if target_shard is not None:
            o = tenure.observers.get((follower, target_shard))
            return o.ack if o is not None else -1
        return tenure.tracker.followers.get(follower, -1)

    def observer_acks(self) -> dict[ObserverKey, int]:
        """What each split observer acknowledged, by (follower, child shard)."""
        t = self.tenure
        return {} if t is None else {k: o.ack for k, o in t.observers.items()}

    def _progress(
        self, tenure: Tenure, follower: str, target_shard: int | None
    ) -> FollowerProgress | ObserverProgress | None:
        if target_shard is not None:
            return tenure.observers.get((follower, target_shard))
        return tenure.followers.get(follower)

    def needs_snapshot(
        self, tenure: Tenure, follower: str, target_shard: int | None = None
    ) -> bool:
        """Whether ``follower``'s next connection starts with a snapshot: it lost its data (or
        is a split observer that got none yet), or the WAL no longer holds the entries after
        what it acknowledged (for an empty follower: the WAL no longer starts at 0 and something
        was committed)."""
        p = self._progress(tenure, follower, target_shard)
        if p is None:
            return False
        if p.snapshot:
            return True
        ack = self.follower_ack(tenure, follower, target_shard)
        first = self.log.first_offset
        if ack < 0:
            return self.commit_offset >= 0 and first != 0
        return first < 0 or ack + 1 < first

    def check_may_lead(self) -> None:
        """A replica being rebuilt after corruption may not hold what was committed: it may
        not lead before it caught up."""
        if self.log.rebuilding:
            raise InvalidStatus(
                f"oxia: shard {self.shard} is being rebuilt here after corruption: it cannot "
                "lead before it has caught up",
                shard=self.shard,
            )

    def _check_not_leading(self, what: str) -> None:
        """A replica that leads (or is being elected) is never a follower too: the director
        hands replication to a follower controller, whose replica has no tenure."""
        if self.tenure is not None:
            raise InvalidStatus(
                f"oxia: {what} on shard {self.shard} while it leads term {self.term}",
                shard=self.shard,
            )

    def check_may_follow(self, term: int) -> None:
        """A leader is never demoted by a stream of its own term or an older one (a deposed
        leader's late stream)."""
        if self.status == LEADER and term <= self.term:
            raise InvalidTerm(
                f"oxia: shard {self.shard} is led here at term {self.term}, not following "
                f"term {term}",
                shard=self.shard,
            )

    # -- fencing ----------------------------------------------------------------------------------

    def _new_term(self, m: NewTerm) -> Effects:
        check_storable_term(m.term)
        self.check_open()
        if not accepts_term(m.term, self.term, self.log.head().term):
            raise InvalidTerm(
                f"oxia: invalid term {m.term}, the shard is at term {self.term}", shard=self.shard
            )
        if m.term == self.term and self.status != FENCED:
            raise InvalidStatus(
                f"oxia: NewTerm for the current term {m.term} while {self.status_name}",
                shard=self.shard,
            )
        if m.term < self.term:
            log.warning(
                "shard %s: term %d is beyond the largest valid term; re-based to %d",
                self.shard,
                self.term,
                m.term,
            )
        stopped = self._stop_leading(
            NodeIsNotLeader(f"oxia: shard {self.shard} is changing term", shard=self.shard)
        )
        return (*stopped, *self._end_stream(), StoreTerm(m.term, m.options), STOP_CURSORS, SYNC_LOG)

    def _term_stored(self, m: TermStored) -> Effects:
        self.term = m.term
        self.options = m.options
        self.status = FENCED
        self.failure = None
        return NONE

    def _stop_leading(self, cause: PyxiaError) -> Effects:
        t = self.tenure
        if t is None:
            return NONE
        self.tenure = None
        if self.status == LEADER:
            self.status = FENCED
        return (
            StopLeading(
                WriteIndeterminate(
                    f"{cause}; the write was logged but not committed here, a new leader may "
                    "still commit it",
                    shard=self.shard,
                )
            ),
        )

    def _storage_failed(self, m: StorageFailed) -> Effects:
        report: Effects = NONE
        if self.failure is None:
            log.error("shard %s: storage failure, stopping: %s", self.shard, m.cause)
            self.failure = m.cause
            report = (ReportFailure(f"storage failure: {m.cause}"),)
        stopped = self._stop_leading(
            StorageFailure(f"oxia: storage failure: {m.cause}", shard=self.shard)
        )
        self.status = NOT_MEMBER
        return (*report, *stopped, *self._end_stream())

    def _close(self, m: Close) -> Effects:
        if self.closed:
            return NONE
        self.closed = True
        stopped = self._stop_leading(
            NodeIsNotLeader(f"oxia: shard {self.shard} is closing", shard=self.shard)
        )
        return (*stopped, *self._end_stream(), STOP_CURSORS)

    # -- leading ----------------------------------------------------------------------------------

    def _become_leader(self, m: BecomeLeader) -> Effects:
        self.check_open()
        if m.term != self.term:
            raise InvalidTerm(
                f"oxia: BecomeLeader for term {m.term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self.status != FENCED:
            raise InvalidStatus(f"oxia: BecomeLeader while {self.status_name}", shard=self.shard)
        self.check_may_lead()
        decisions = [
            (name, head, follower_truncation(name, head, self.log, self.shard))
            for name, head in m.followers.items()
        ]
        log_ = self.log
        head = max(log_.last_offset, log_.applied_offset)
        tracker = QuorumAckTracker(m.replication_factor, head, log_.applied_offset)
        tenure = Tenure(
            m.term,
            m.replication_factor,
            head,
            tracker,
            LeadershipConfirmations(m.replication_factor),
            head + 1,
        )
        clock = log_.clock()
        # Nothing was changed above: a refused election leaves the replica as it was.
        replaced: Effects = NONE
        if self.tenure is not None:  # a retried election: the earlier one is over
            replaced = (*self._stop_leading(AlreadyClosed(shard=self.shard)), STOP_CURSORS)
        self.tenure = tenure
        # Entry timestamps never go back along the log, across terms too: the notification
        # retention window is computed from them on every replica (server/retention.py).
        self.last_timestamp = max(self.last_timestamp, clock)
        tracker.advance_head(log_.synced_offset)
        effects: list[Effect] = [*replaced, *self._end_stream(), StartTenure(tenure)]
        if tracker.commit_offset >= head:
            effects.append(CAUGHT_UP)  # else a follower's ack brings it (see _committed)
        for name, fhead, target in decisions:
            if target is None:
                effects += self._register(tenure, name, max(fhead.offset, -1), False)
            else:
                effects.append(self._truncate_follower(tenure, name, fhead, target, False))
        return tuple(effects)

    def _truncate_follower(
        self, tenure: Tenure, name: str, head: EntryId, target: EntryId, snapshot: bool
    ) -> TruncateFollower:
        log.info(
            "shard %s: truncating follower %s from %d/%d to %d/%d",
            self.shard,
            name,
            head.term,
            head.offset,
            target.term,
            target.offset,
        )
        return TruncateFollower(tenure, name, target, snapshot)

    def _register(self, tenure: Tenure, name: str, ack: int, snapshot: bool) -> Effects:
        """Counts ``name`` in the quorum with what it holds, and starts its cursor."""
        tracker = tenure.tracker
        before = tracker.commit_offset
        commit = tracker.add_follower(name, ack)
        tenure.followers[name] = FollowerProgress(snapshot=snapshot)
        return (*self._committed(tenure, before, commit), StartCursor(tenure, name))

    def _committed(self, tenure: Tenure, before: int, commit: int) -> Effects:
        if commit <= before:
            return NONE
        if not tenure.serving and before < tenure.elected_head <= commit:
            return (Committed(commit), CAUGHT_UP)
        return (Committed(commit),)

    def _follower_truncated(self, m: FollowerTruncated) -> Effects:
        self.check_tenure(m.tenure)
        return self._register(m.tenure, m.follower, max(m.head.offset, -1), m.snapshot)

    def _replayed(self, m: Replayed) -> Effects:
        self.check_tenure(m.tenure)
        m.tenure.serving = True
        self.status = LEADER
        return (START_SERVING, LEADERSHIP_CHANGED)

    def _add_follower(self, m: AddFollower) -> Effects:
        self.check_open()
        if m.term != self.term:
            raise InvalidTerm(
                f"oxia: AddFollower for term {m.term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self.status != LEADER:
            raise InvalidStatus(f"oxia: AddFollower while {self.status_name}", shard=self.shard)
        t = self.tenure
        assert t is not None
        name, head = m.follower, m.head
        restart: Effects = NONE
        if name in t.followers:
            acked = self.follower_ack(t, name)
            if head.offset >= acked:
                return NONE
            target = follower_truncation(name, head, self.log, self.shard)
            # It holds less than it acknowledged: it lost its data (a wiped disk, a replica
            # rebuilt after corruption). Its cursor would wait for the next write before finding
            # out; start it over with a snapshot, as when a follower says it has no data.
            log.warning(
                "shard %s: follower %s holds up to %d but acknowledged %d: starting it over",
                self.shard,
                name,
                head.offset,
                acked,
            )
            del t.followers[name]
            t.tracker.reset_follower(name, -1)
            restart = (StopCursor(name),)
            snapshot = True
        else:
            if len(t.followers) >= t.replication_factor - 1:
                raise InvalidArgument(
                    f"oxia: shard {self.shard} already has {len(t.followers)} followers "
                    f"(replication factor {t.replication_factor})",
                    shard=self.shard,
                )
            target = follower_truncation(name, head, self.log, self.shard)
            snapshot = False
        if target is None:
            return (*restart, *self._register(t, name, max(head.offset, -1), snapshot))
        return (*restart, self._truncate_follower(t, name, head, target, snapshot))

    # -- the write path ---------------------------------------------------------------------------

    def _propose(self, m: Propose) -> Effects:
        self.check_writable(m.now)
        t = self.tenure
        assert t is not None
        offset = t.next_offset
        t.next_offset = offset + 1
        ts = m.now_ms if m.now_ms > self.last_timestamp else self.last_timestamp
        self.last_timestamp = ts
        return (Append(self.term, offset, ts),)

    def _synced(self, m: Synced) -> Effects:
        t = self.tenure
        if t is not None:
            before = t.tracker.commit_offset
            return self._committed(t, before, t.tracker.advance_head(m.offset))
        if self.stream is None:
            return (WAKE_APPLIER,) if self._apply_target() > self.log.applied_offset else NONE
        if self._apply_target() > self.log.applied_offset:
            return (WAKE_STREAM, WAKE_APPLIER)
        return (WAKE_STREAM,)

    def _follower_ack(self, m: FollowerAck) -> Effects:
        t = m.tenure
        if t is not self.tenure:
            return NONE
        if m.target_shard is not None:  # a split observer: never part of the quorum
            o = t.observers.get((m.follower, m.target_shard))
            if o is not None and m.offset > o.ack:
                o.ack = m.offset
            return NONE
        before = t.tracker.commit_offset
        return self._committed(t, before, t.tracker.ack(m.follower, m.offset))

    # -- reads ------------------------------------------------------------------------------------

    def _read_index(self, m: ReadIndex) -> Effects:
        self.check_leader()
        t = self.tenure
        assert t is not None
        rc = t.confirmations
        if not rc.needed:
            return (READ_NOW,)
        until = rc.lease_until()
        if m.now < until:
            if rc.renewal_due(m.now, until):
                rc.request()
                return (WAKE_CURSORS, READ_NOW)
            return (READ_NOW,)
        round_id = rc.request()
        if rc.sent < round_id:
            return (WAKE_CURSORS, AwaitRound(t, round_id))
        return (AwaitRound(t, round_id),)

    def _heartbeat_due(self, m: HeartbeatDue) -> Effects:
        t = m.tenure
        if t is not self.tenure or m.target_shard is not None:
            return NONE  # (a split observer never confirms this leadership)
        rc = t.confirmations
        if not rc.to_send(m.last_sent, m.follower):
            return NONE
        round_id = rc.requested
        rc.on_sent(round_id, m.now)
        return (SendHeartbeat(round_id, t.tracker.commit_offset),)

    def _escalate_round(self, m: EscalateRound) -> Effects:
        t = m.tenure
        if t is not self.tenure or not t.confirmations.escalate(m.round_id):
            return NONE
        return (WAKE_CURSORS,)

    def _heartbeat_ack(self, m: HeartbeatAck) -> Effects:
        t = m.tenure
        if t is not self.tenure or m.target_shard is not None:
            return NONE
        t.confirmations.ack(m.follower, m.round_id, m.lease_s)
        return (CONFIRMED,)

    # -- follower progress (on the leader) --------------------------------------------------------

    def _snapshot_sent(self, m: SnapshotSent) -> Effects:
        t = m.tenure
        if t is not self.tenure:
            return NONE
        p = self._progress(t, m.follower, m.target_shard)
        if p is not None:
            p.snapshot = False
        log.info(
            "shard %s: snapshot sent to %s%s (offset %d)",
            self.shard,
            m.follower,
            "" if m.target_shard is None else f" for split child {m.target_shard}",
            m.ack_offset,
        )
        if isinstance(p, ObserverProgress):
            p.ack = m.ack_offset
            return NONE
        if m.target_shard is not None:
            return NONE
        tracker = t.tracker
        tracker.reset_follower(m.follower, m.ack_offset)
        before = tracker.commit_offset
        return self._committed(t, before, tracker.ack(m.follower, m.ack_offset))

    def _start_over(self, t: Tenure, follower: str, target_shard: int | None = None) -> None:
        """``follower`` lost its data: it holds nothing, its next connection sends a snapshot."""
        p = self._progress(t, follower, target_shard)
        if isinstance(p, ObserverProgress):
            p.ack = -1
        elif target_shard is None:
            t.tracker.reset_follower(follower, -1)
        if p is not None:
            p.snapshot = True

    def _follower_lost_data(self, m: FollowerLostData) -> Effects:
        t = m.tenure
        if t is not self.tenure:
            return NONE
        log.warning("shard %s: follower %s has no data, sending a snapshot", self.shard, m.follower)
        self._start_over(t, m.follower, m.target_shard)
        return NONE

    def _follower_status(self, m: FollowerStatus) -> Effects:
        """After a failed stream: the error that ended it may not have reached the leader (a
        server that ends a stream while the leader still sends shows up as INTERNAL). A follower
        that is NOT_MEMBER (its storage failed) or holds less than it acknowledged (it lost its
        data) gets a snapshot. One with no replica of the shard open answers NODE_IS_NOT_MEMBER
        whether it lost its data or just restarted and has not opened the shard yet (a stream
        opens it from disk): only a second such answer, after another stream, means the data
        is gone."""
        t = m.tenure
        p = self._progress(t, m.follower, m.target_shard)
        if t is not self.tenure or p is None:
            return NONE
        if m.status is None:
            if p.not_member_once:
                p.not_member_once = False
                self._start_over(t, m.follower, m.target_shard)
            else:
                p.not_member_once = True
            return NONE
        p.not_member_once = False
        acked = self.follower_ack(t, m.follower, m.target_shard)
        if m.status == NOT_MEMBER or m.head_offset < acked:
            log.warning(
                "shard %s: follower %s holds up to %d (status %s), acknowledged %d: "
                "sending a snapshot",
                self.shard,
                m.follower,
                m.head_offset,
                status_name(m.status),
                acked,
            )
            self._start_over(t, m.follower, m.target_shard)
        return NONE

    # -- shard split (the parent's side) ----------------------------------------------------------

    def _check_leads_term(self, what: str, term: int) -> Tenure:
        self.check_open()
        if term != self.term:
            raise InvalidTerm(
                f"oxia: {what} for term {term}, the shard is at {self.term}", shard=self.shard
            )
        if self.status != LEADER:
            raise InvalidStatus(f"oxia: {what} while {self.status_name}", shard=self.shard)
        t = self.tenure
        assert t is not None
        return t

    def _add_observer(self, m: AddObserver) -> Effects:
        t = self._check_leads_term("AddFollower (observer)", m.term)
        if m.target_shard == self.shard:
            raise InvalidArgument(
                f"oxia: a split observer of shard {self.shard} must target another shard",
                shard=self.shard,
            )
        key = (m.follower, m.target_shard)
        existing = t.observers.get(key)
        if existing is not None and existing.split_range == m.split_range:
            return NONE  # a retried AddFollower
        if existing is None and len(t.observers) >= MAX_OBSERVERS:
            raise InvalidArgument(
                f"oxia: shard {self.shard} already feeds {len(t.observers)} split observers",
                shard=self.shard,
            )
        log.info(
            "shard %s: feeding split child %d on %s (hashes %d..%d)",
            self.shard,
            m.target_shard,
            m.follower,
            *m.split_range,
        )
        t.observers[key] = ObserverProgress(m.split_range)
        start = StartObserver(t, m.follower, m.target_shard, m.split_range)
        if existing is not None:  # another range: the old cursor goes first
            return (StopObserver(m.follower, m.target_shard), start)
        return (start,)

    def _remove_observer(self, m: RemoveObserver) -> Effects:
        self.check_open()
        t = self.tenure
        if t is None or t.observers.pop((m.follower, m.target_shard), None) is None:
            return NONE
        return (StopObserver(m.follower, m.target_shard),)

    def _freeze(self, m: Freeze) -> Effects:
        t = self._check_leads_term("FreezeShard", m.term)
        if m.frozen and not t.frozen:
            log.info("shard %s: frozen for a split: new writes refused", self.shard)
        elif not m.frozen and t.frozen:
            log.info("shard %s: thawed (the split did not cut over)", self.shard)
        t.frozen = m.frozen
        return NONE

    # -- planned step-down ------------------------------------------------------------------------

    def _step_down(self, m: StepDown) -> Effects:
        self.check_open()
        t = self.tenure
        h = handoff.begin(
            t.handoff if t is not None else None,
            status=self.status,
            term=self.term,
            requested_term=m.term,
            now=m.now,
            drain_s=m.drain_s,
            leader_hint=self.leader_hint,
        )
        assert t is not None  # begin() refuses a replica that does not lead
        if t.handoff is None:
            return (RunStepDownHooks(h),)
        t.handoff = h
        return NONE

    def _handoff_started(self, m: HandoffStarted) -> Effects:
        t = self.tenure
        if t is None or self.status != LEADER or m.handoff.term != self.term:
            return NONE
        t.handoff = m.handoff
        return (LEADERSHIP_CHANGED,)  # a leader handing over no longer leads for the TSO

    def _step_down_answered(self, m: StepDownAnswered) -> Effects:
        t = self.tenure
        if t is not None and t.handoff is not None and t.handoff.term == m.term:
            t.handoff = handoff.answered(t.handoff, m.now)
        return NONE

    # -- following --------------------------------------------------------------------------------

    def _end_stream(self) -> Effects:
        if self.stream is None:
            return NONE
        self.stream = None
        return (STREAM_ENDED,)

    def _truncate(self, m: Truncate) -> Effects:
        self.check_open()
        if m.term != self.term:
            raise InvalidTerm(
                f"oxia: Truncate for term {m.term}, the shard is at {self.term}", shard=self.shard
            )
        if self.status != FENCED:
            raise InvalidStatus(f"oxia: Truncate while {self.status_name}", shard=self.shard)
        self._check_not_leading("Truncate")
        if self.stream is not None:
            raise InvalidStatus("oxia: Truncate with a replication stream open", shard=self.shard)
        applied = self.log.applied_offset
        if 0 <= m.head.offset < applied:
            raise InvalidArgument(
                f"oxia: refusing to truncate to {m.head.offset}: entries up to "
                f"{applied} are applied (committed)",
                shard=self.shard,
            )
        return (TruncateLog(m.head.offset),)

    def _log_truncated(self, m: LogTruncated) -> Effects:
        self.check_open()
        if self.status == FENCED:
            self.status = FOLLOWER
        return NONE

    def _open_stream(self, m: OpenStream) -> Effects:
        self.check_open()
        if self.status == NOT_MEMBER:
            raise NodeIsNotMember(
                f"oxia: node is not a member of shard {self.shard}", shard=self.shard
            )
        if m.term != self.term:
            raise InvalidTerm(
                f"oxia: replication for term {m.term}, the shard is at {self.term}",
                shard=self.shard,
            )
        if self.stream is not None:
            raise LeaderAlreadyConnected(
                f"oxia: shard {self.shard} already has a replication stream", shard=self.shard
            )
        if self.busy:
            raise InvalidStatus(f"oxia: shard {self.shard} is busy", shard=self.shard)
        self._check_not_leading("a replication stream")
        s = self.stream = Stream(m.term)
        return (StreamOpened(s),)

    def _stream_closed(self, m: StreamClosed) -> Effects:
        if self.stream is m.stream:
            self.stream = None
        return NONE

    def _check_append_term(self, stream: Stream, a: replication_pb2.Append) -> None:
        if a.term != self.term or stream.term != self.term:
            raise InvalidTerm(
                f"oxia: append for term {a.term}, the shard is at {self.term}", shard=self.shard
            )

    def _received(self, m: Received) -> Effects:
        s = m.stream
        if self.closed or s is not self.stream:
            return (STALE_STREAM,)
        a = m.append
        if not a.HasField("entry"):
            # A heartbeat (round 0: none, just the leader's commit offset).
            self._check_append_term(s, a)
            if a.heartbeat > s.heartbeat:
                s.heartbeat = a.heartbeat
            return (*self._follow_commit(a.commit_offset), WAKE_STREAM)
        self._check_append_term(s, a)
        if self.busy:
            raise InvalidStatus(f"oxia: shard {self.shard} is busy", shard=self.shard)
        e = a.entry
        offset = e.offset
        if not 0 <= e.term <= s.term or offset < 0:
            raise InvalidArgument(
                f"oxia: append of entry {e.term}/{offset} at term {s.term}", shard=self.shard
            )
        last = self.log.last_offset
        if last < 0 and offset != self.log.applied_offset + 1:
            # An empty log must continue the DB (entry 0, or the one after a snapshot): this
            # replica lost its data, it needs a snapshot, not a log with a hole.
            raise NodeIsNotMember(
                f"oxia: shard {self.shard} holds nothing before offset {offset} "
                f"(its data ends at {self.log.applied_offset})",
                shard=self.shard,
            )
        if last >= 0 and offset > last + 1:
            raise InvalidArgument(
                f"oxia: append of entry {offset} after {last}: the log would have a hole",
                shard=self.shard,
            )
        if self.status == FENCED:
            self.status = FOLLOWER
        if offset > s.received:
            s.received = offset
        follow = self._follow_commit(a.commit_offset)
        if last >= 0 and offset <= last:
            return follow  # a duplicate: already held, acknowledged again
        if follow:
            return (AppendToLog(a), *follow)
        return (AppendToLog(a),)

    def _follow_commit(self, commit_offset: int) -> Effects:
        rebuilt: Effects = NONE
        if self.log.rebuilding and self.rebuild_target is None:
            self.rebuild_target = commit_offset
            rebuilt = self._check_rebuilt()
        if commit_offset > self.leader_commit_offset:
            self.leader_commit_offset = commit_offset
            return (*rebuilt, WAKE_APPLIER)
        return rebuilt

    def _check_rebuilt(self) -> Effects:
        target = self.rebuild_target
        if self.log.rebuilding and target is not None and self.log.applied_offset >= target:
            return (FINISH_REBUILDING,)
        return NONE

    def _poll_acks(self, m: PollAcks) -> Effects:
        s = m.stream
        if self.closed or s is not self.stream:
            raise AlreadyClosed(f"oxia: shard {self.shard} stream ended", shard=self.shard)
        durable = min(self.log.synced_offset, s.received)
        answer = 0
        if s.heartbeat > s.answered and s.term == self.term:
            s.answered = answer = s.heartbeat
        if durable > s.acked:
            s.acked = durable
            return (SendAck(durable, answer),)
        if answer:
            return (SendAck(s.acked, answer),)
        return NONE

    def _snapshot_begin(self, m: SnapshotBegin) -> Effects:
        self.check_open()
        # The term is checked before anything is destroyed.
        if m.term < self.term:
            raise InvalidTerm(
                f"oxia: snapshot for term {m.term}, the shard is at {self.term}", shard=self.shard
            )
        self._check_not_leading("a snapshot")
        return self._end_stream()

    def _snapshot_installed(self, m: SnapshotInstalled) -> Effects:
        self.check_open()
        self.term = m.term
        self.options = m.options
        self.status = FOLLOWER
        self.leader_commit_offset = m.commit_offset
        if self.log.rebuilding:
            self.rebuild_target = m.commit_offset  # the leader's state when it sent it
            return self._check_rebuilt()
        return NONE

    def _begin_exclusive(self, m: BeginExclusive) -> Effects:
        self.busy += 1
        return NONE

    def _end_exclusive(self, m: EndExclusive) -> Effects:
        self.busy -= 1
        # The applier stood aside while the replica was held, and nothing else may wake it.
        return (WAKE_APPLIER,)

    def _apply_target(self) -> int:
        """Up to the leader's commit offset, never past what is durable here (the DB must
        never be ahead of the local WAL)."""
        return min(self.leader_commit_offset, self.log.synced_offset)

    def _apply_due(self, m: ApplyDue) -> Effects:
        if self.closed or self.busy:
            return NONE
        target = self._apply_target()
        if target > self.log.applied_offset:
            return (ApplyUpTo(target),)
        return NONE

    def _applied(self, m: Applied) -> Effects:
        return self._check_rebuilt()


class ReplicaView:
    """The replica's state as the rest of the server reads it, for the drivers that own a
    :class:`Replica` (the leader and follower controllers): read-only views, no rules."""

    replica: Replica

    @property
    def term(self) -> int:
        return self.replica.term

    @property
    def term_options(self) -> TermOptions:
        return self.replica.options

    @property
    def status(self) -> Status:
        return self.replica.status

    @property
    def status_name(self) -> str:
        return self.replica.status_name

    @property
    def closed(self) -> bool:
        return self.replica.closed
