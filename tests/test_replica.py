"""The replica state machine (``server/replica.py``), driven directly: no I/O, no event loop.

Table-driven cases cover every input in every status it can meet (accepted: the effects and the
new state; refused: the error, and nothing changed); named cases replay the races Oxia's
follower-controller refactor fixed (#887, #893, #929) and a leader's end mid-write; a hypothesis
state machine drives random sequences of inputs through a model of the storage and checks the
invariants after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyxia.common.validation import MAX_TERM
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidStatus,
    InvalidTerm,
    LeaderAlreadyConnected,
    NodeIsNotLeader,
    NodeIsNotMember,
    PyxiaError,
    WriteIndeterminate,
)
from pyxia.proto import replication_pb2
from pyxia.server import replica as r
from pyxia.server.quorum import QuorumAckTracker
from pyxia.server.read_index import LeadershipConfirmations
from pyxia.server.replica import (
    FENCED,
    FOLLOWER,
    LEADER,
    NO_ENTRY,
    NOT_MEMBER,
    EntryId,
    Replica,
    Tenure,
    follower_truncation,
)
from pyxia.storage.db import TermOptions

OPTS = TermOptions()
SHARD = 7


@dataclass
class FakeLog:
    """A replica's WAL and DB as the machine sees them: ``entries[i]`` is (term, timestamp) of
    offset ``first + i``."""

    first: int = 0
    entries: list[tuple[int, int]] = field(default_factory=list)
    synced: int = -1
    applied: int = -1
    rebuilding_: bool = False
    notification_clock: int = 0

    @property
    def last_offset(self) -> int:
        return self.first + len(self.entries) - 1 if self.entries else -1

    @property
    def first_offset(self) -> int:
        return self.first if self.entries else -1

    @property
    def synced_offset(self) -> int:
        return min(self.synced, self.last_offset) if self.entries else self.synced

    @property
    def applied_offset(self) -> int:
        return self.applied

    @property
    def rebuilding(self) -> bool:
        return self.rebuilding_

    def head(self) -> EntryId:
        if not self.entries:
            return NO_ENTRY
        return EntryId(self.entries[-1][0], self.last_offset)

    def term_at(self, offset: int) -> int | None:
        i = offset - self.first
        if not self.entries or not 0 <= i < len(self.entries):
            return None
        return self.entries[i][0]

    def last_entry_with_term_at_most(self, term: int) -> EntryId | None:
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][0] <= term:
                return EntryId(self.entries[i][0], self.first + i)
        return None

    def clock(self) -> int:
        ts = self.entries[-1][1] if self.entries else 0
        return max(ts, self.notification_clock)

    # -- what a driver does -----------------------------------------------------------------------

    def append(self, term: int, offset: int, ts: int = 0) -> None:
        if not self.entries:
            self.first = offset
        assert offset == self.last_offset + 1, (offset, self.last_offset)
        self.entries.append((term, ts))

    def sync(self) -> None:
        self.synced = self.last_offset

    def truncate(self, offset: int) -> None:
        keep = max(0, offset - self.first + 1)
        del self.entries[keep:]
        self.synced = min(self.synced, self.last_offset)


def with_log(*terms: int, applied: int = -1, synced: bool = True) -> FakeLog:
    lg = FakeLog()
    for i, t in enumerate(terms):
        lg.append(t, i, 1000 + i)
    if synced:
        lg.sync()
    lg.applied = applied
    return lg


def machine(lg: FakeLog | None = None, term: int = 3) -> Replica:
    return Replica(SHARD, lg if lg is not None else with_log(), term, OPTS)


def fence(m: Replica, term: int) -> r.Effects:
    """A NewTerm carried out as the drivers do (StoreTerm feeds TermStored)."""
    effects = m.step(r.NewTerm(term, OPTS))
    for e in effects:
        if isinstance(e, r.StoreTerm):
            m.step(r.TermStored(e.term, e.options))
    return effects


def lead(m: Replica, rf: int = 1, followers: dict[str, EntryId] | None = None) -> Tenure:
    """BecomeLeader at the current term; serves once the caller's followers caught up (RF=1:
    at once)."""
    effects = m.step(r.BecomeLeader(m.term, rf, followers or {}))
    tenure = next(e.tenure for e in effects if isinstance(e, r.StartTenure))
    if r.CAUGHT_UP in effects:
        m.step(r.Replayed(tenure))
    return tenure


def kinds(effects: r.Effects) -> list[type[Any]]:
    return [type(e) for e in effects]


def snapshot(m: Replica) -> tuple[Any, ...]:
    """What a refused input must leave as it was."""
    t = m.tenure
    return (
        m.status,
        m.term,
        m.closed,
        t,
        m.stream,
        m.busy,
        m.leader_commit_offset,
        t.next_offset if t else None,
        t.tracker.commit_offset if t else None,
        dict(t.followers) if t else None,
        t.handoff if t else None,
        dict(t.observers) if t else None,
        t.frozen if t else None,
    )


def append_msg(term: int, entry_term: int, offset: int, commit: int = -1) -> replication_pb2.Append:
    return replication_pb2.Append(
        term=term,
        entry=replication_pb2.LogEntry(term=entry_term, offset=offset, value=b"v", timestamp=5),
        commit_offset=commit,
    )


def heartbeat_msg(term: int, round_id: int, commit: int = -1) -> replication_pb2.Append:
    return replication_pb2.Append(term=term, heartbeat=round_id, commit_offset=commit)


# -- status machine: the starting status ----------------------------------------------------------


def test_a_replica_with_no_term_is_not_a_member() -> None:
    assert machine(term=-1).status == NOT_MEMBER
    assert machine(term=0).status == FENCED


# -- NewTerm (fencing, written once for both roles) -----------------------------------------------


def _fenced() -> Replica:
    return machine(term=3)


def _leader() -> Replica:
    m = machine(with_log(1, 2, 3, applied=2), term=3)
    lead(m)
    return m


def _follower() -> Replica:
    m = machine(term=3)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    m.step(r.Received(s, append_msg(3, 3, 0)))
    assert m.status == FOLLOWER
    return m


def _not_member() -> Replica:
    return machine(term=-1)


def _failed() -> Replica:
    m = machine(term=3)
    m.step(r.StorageFailed("disk on fire"))
    return m


NEW_TERM_CASES: list[tuple[str, Callable[[], Replica], int, type[PyxiaError] | None]] = [
    ("not member, first term", _not_member, 0, None),
    ("fenced, newer term", _fenced, 4, None),
    ("fenced, same term (a retried NewTerm, Oxia #887)", _fenced, 3, None),
    ("fenced, older term", _fenced, 2, InvalidTerm),
    ("fenced, term beyond what the WAL holds", _fenced, 2**63, InvalidArgument),
    ("fenced, negative term", _fenced, -1, InvalidArgument),
    ("leader, newer term", _leader, 4, None),
    ("leader, same term", _leader, 3, InvalidStatus),
    ("leader, older term", _leader, 2, InvalidTerm),
    ("follower, newer term", _follower, 4, None),
    ("follower, same term", _follower, 3, InvalidStatus),
    ("storage failed, newer term", _failed, 4, None),
]


@pytest.mark.parametrize(
    ("start", "term", "error"),
    [c[1:] for c in NEW_TERM_CASES],
    ids=[c[0] for c in NEW_TERM_CASES],
)
def test_new_term(start: Callable[[], Replica], term: int, error: type[PyxiaError] | None) -> None:
    m = start()
    was_leading = m.tenure is not None
    had_stream = m.stream is not None
    before = snapshot(m)
    if error is not None:
        with pytest.raises(error):
            m.step(r.NewTerm(term, OPTS))
        assert snapshot(m) == before
        return
    effects = m.step(r.NewTerm(term, OPTS))
    # Nothing is fenced until the term is stored: a failed store changes nothing.
    assert m.term == before[1]
    expected: list[type[Any]] = []
    if was_leading:
        expected.append(r.StopLeading)
    if had_stream:
        expected.append(r.StreamEnded)
    expected += [r.StoreTerm, r.StopCursors, r.SyncLog]
    assert kinds(effects) == expected
    assert m.tenure is None and m.stream is None
    m.step(r.TermStored(term, OPTS))
    assert (m.status, m.term, m.failure) == (FENCED, term, None)


def test_new_term_re_bases_a_term_forged_above_the_bound() -> None:
    # A term stored above MAX_TERM (before the bound existed) may come back down to one that is
    # not older than anything in the log; never below the log's newest entry.
    m = machine(with_log(5, 5), term=MAX_TERM + 10)
    with pytest.raises(InvalidTerm):
        m.step(r.NewTerm(4, OPTS))
    fence(m, 6)
    assert (m.term, m.status) == (6, FENCED)


def test_new_term_while_leading_fails_pending_writes_as_indeterminate() -> None:
    # Leadership loss mid-write: a write logged but not committed may still be committed by
    # the next leader, so its caller hears "indeterminate", never "not done".
    m = _leader()
    m.step(r.Propose(now=0.0, now_ms=10))
    effects = fence(m, 4)
    stop = effects[0]
    assert isinstance(stop, r.StopLeading)
    assert isinstance(stop.pending_error, WriteIndeterminate)
    assert "changing term" in str(stop.pending_error)
    with pytest.raises(NodeIsNotLeader):
        m.step(r.Propose(now=0.0, now_ms=11))


def test_closed_replica_refuses_everything_and_closes_once() -> None:
    m = _leader()
    effects = m.step(r.Close())
    assert kinds(effects) == [r.StopLeading, r.StopCursors]
    assert m.step(r.Close()) == ()
    for message in (
        r.NewTerm(9, OPTS),
        r.BecomeLeader(3, 1),
        r.Truncate(3, NO_ENTRY),
        r.OpenStream(3),
        r.SnapshotBegin(3),
    ):
        with pytest.raises(AlreadyClosed):
            m.step(message)
    with pytest.raises(NodeIsNotLeader):
        m.step(r.Propose(0.0, 1))


# -- storage failure ------------------------------------------------------------------------------


def test_storage_failure_is_reported_once_until_a_new_term() -> None:
    m = _leader()
    effects = m.step(r.StorageFailed("wal: EIO"))
    assert kinds(effects) == [r.ReportFailure, r.StopLeading]
    stop = effects[1]
    assert isinstance(stop, r.StopLeading)
    assert isinstance(stop.pending_error, WriteIndeterminate)
    assert m.status == NOT_MEMBER and m.failure == "wal: EIO"
    assert m.step(r.StorageFailed("again")) == ()
    # A NOT_MEMBER replica refuses streams; the coordinator's NewTerm brings it back.
    with pytest.raises(NodeIsNotMember):
        m.step(r.OpenStream(3))
    fence(m, 4)
    assert m.failure is None and m.status == FENCED
    assert kinds(m.step(r.StorageFailed("later"))) == [r.ReportFailure]


def test_storage_failure_ends_the_stream() -> None:
    m = _follower()
    stream = m.stream
    assert stream is not None
    assert kinds(m.step(r.StorageFailed("x"))) == [r.ReportFailure, r.StreamEnded]
    assert m.stream is None
    assert m.step(r.Received(stream, append_msg(3, 3, 0))) == (r.STALE_STREAM,)


# -- BecomeLeader ---------------------------------------------------------------------------------


BECOME_LEADER_CASES: list[tuple[str, Callable[[], Replica], int, type[PyxiaError]]] = [
    ("wrong term", _fenced, 4, InvalidTerm),
    ("not fenced: leading", _leader, 3, InvalidStatus),
    ("not fenced: following", _follower, 3, InvalidStatus),
    ("not fenced: not a member", _not_member, -1, InvalidStatus),
    ("storage failed", _failed, 3, InvalidStatus),
]


@pytest.mark.parametrize(
    ("start", "term", "error"),
    [c[1:] for c in BECOME_LEADER_CASES],
    ids=[c[0] for c in BECOME_LEADER_CASES],
)
def test_become_leader_refused(
    start: Callable[[], Replica], term: int, error: type[PyxiaError]
) -> None:
    m = start()
    before = snapshot(m)
    with pytest.raises(error):
        m.step(r.BecomeLeader(term, 1))
    assert snapshot(m) == before


def test_a_rebuilding_replica_may_not_lead() -> None:
    lg = with_log()
    lg.rebuilding_ = True
    m = machine(lg)
    with pytest.raises(InvalidStatus, match="rebuilt"):
        m.step(r.BecomeLeader(3, 1))
    assert m.tenure is None


def test_rf1_leader_is_caught_up_at_once_and_serves_after_the_replay() -> None:
    m = machine(with_log(1, 2, 3, applied=0), term=3)
    effects = m.step(r.BecomeLeader(3, 1))
    assert kinds(effects) == [r.StartTenure, r.CaughtUp]
    t = effects[0].tenure  # type: ignore[union-attr]
    assert m.status == FENCED  # not before the committed entries are replayed
    with pytest.raises(NodeIsNotLeader):
        m.step(r.Propose(0.0, 1))
    assert m.caught_up(t)
    assert m.step(r.Replayed(t)) == (r.START_SERVING, r.LEADERSHIP_CHANGED)
    assert m.status == LEADER and m.commit_offset == 2
    a = m.step(r.Propose(0.0, 1))[0]
    assert a == r.Append(3, 3, 1002)  # the timestamp never goes back behind the log's


def test_the_head_at_election_counts_as_held() -> None:
    # The NewTerm before it made the log durable (SyncLog): an RF=1 leader is caught up at once.
    m = machine(with_log(1, 2, synced=False), term=3)
    effects = m.step(r.BecomeLeader(3, 1))
    assert kinds(effects) == [r.StartTenure, r.CaughtUp]


def test_rf3_election_waits_for_a_quorum_then_serves() -> None:
    m = machine(with_log(1, 1, 2), term=3)
    effects = m.step(r.BecomeLeader(3, 3, {"a": EntryId(2, 2), "b": EntryId(1, 0)}))
    t = effects[0].tenure  # type: ignore[union-attr]
    assert kinds(effects) == [r.StartTenure, r.Committed, r.CaughtUp, r.StartCursor, r.StartCursor]
    assert effects.count(r.CAUGHT_UP) == 1
    assert effects[1] == r.Committed(2)  # "a" holds the whole log
    assert m.follower_ack(t, "b") == 0
    assert m.caught_up(t)
    m.step(r.Replayed(t))
    assert m.status == LEADER


def test_election_truncates_a_diverging_follower() -> None:
    # The follower holds 1/0, 2/1, 2/2 (term 2 never committed); the leader holds 1/0, 1/1, 3/2.
    m = machine(with_log(1, 1, 3), term=4)
    effects = m.step(r.BecomeLeader(4, 3, {"f": EntryId(2, 2)}))
    t = effects[0].tenure  # type: ignore[union-attr]
    assert kinds(effects) == [r.StartTenure, r.TruncateFollower]
    assert effects[1] == r.TruncateFollower(t, "f", EntryId(1, 1), False)
    assert not m.caught_up(t)
    effects = m.step(r.FollowerTruncated(t, "f", EntryId(1, 1), False))
    assert kinds(effects) == [r.Committed, r.StartCursor]
    assert m.step(r.FollowerAck(t, "f", 2)) == (r.Committed(2), r.CAUGHT_UP)


def test_election_refuses_a_follower_with_a_newer_term_and_changes_nothing() -> None:
    m = machine(with_log(1, 2), term=3)
    before = snapshot(m)
    with pytest.raises(InvalidTerm, match="newer"):
        m.step(r.BecomeLeader(3, 3, {"f": EntryId(3, 5)}))
    assert snapshot(m) == before


def test_a_retried_election_ends_the_earlier_one() -> None:
    m = machine(with_log(1), term=3)
    first = m.step(r.BecomeLeader(3, 3))[0].tenure  # type: ignore[union-attr]
    effects = m.step(r.BecomeLeader(3, 3))
    assert kinds(effects) == [r.StopLeading, r.StopCursors, r.StartTenure]
    with pytest.raises(AlreadyClosed):
        m.caught_up(first)
    with pytest.raises(AlreadyClosed):
        m.step(r.Replayed(first))
    with pytest.raises(AlreadyClosed):
        m.step(r.FollowerTruncated(first, "f", NO_ENTRY, False))


CASES_TRUNCATION = [
    # (leader's log terms, follower head, expected cut: None keeps it all)
    ((1, 1, 2), EntryId(-1, -1), None),  # an empty follower: nothing to cut
    ((1, 1, 2), EntryId(2, 2), None),  # the same head
    ((1, 1, 2), EntryId(1, 1), None),  # a prefix
    ((1, 1, 2), EntryId(1, 5), EntryId(1, 1)),  # longer in an older term
    ((1, 1, 3), EntryId(2, 2), EntryId(1, 1)),  # an uncommitted term of its own
    ((2, 2), EntryId(1, 3), NO_ENTRY),  # nothing of its term in the leader's log
]


@pytest.mark.parametrize(("terms", "head", "cut"), CASES_TRUNCATION)
def test_follower_truncation(terms: tuple[int, ...], head: EntryId, cut: EntryId | None) -> None:
    assert follower_truncation("f", head, with_log(*terms), SHARD) == cut


def test_follower_truncation_refuses_a_newer_follower() -> None:
    with pytest.raises(InvalidTerm):
        follower_truncation("f", EntryId(5, 0), with_log(1, 2), SHARD)
    with pytest.raises(InvalidTerm):
        follower_truncation("f", EntryId(0, 0), with_log(), SHARD)


# -- the write path and the quorum ----------------------------------------------------------------


def test_propose_gives_consecutive_offsets_and_monotonic_timestamps() -> None:
    m = _leader()
    a1, a2, a3 = (m.step(r.Propose(0.0, ms))[0] for ms in (5000, 4000, 6000))
    assert (a1, a2, a3) == (r.Append(3, 3, 5000), r.Append(3, 4, 5000), r.Append(3, 5, 6000))


def test_timestamps_never_go_back_across_terms_after_a_snapshot() -> None:
    lg = with_log()
    lg.applied = 9
    lg.notification_clock = 7000
    m = machine(lg)
    lead(m)
    assert m.step(r.Propose(0.0, 10))[0] == r.Append(3, 10, 7000)


def test_rf3_commits_with_one_follower_and_drops_a_deposed_tenures_acks() -> None:
    m = machine(with_log(), term=3)
    t = lead(m, 3, {"a": NO_ENTRY, "b": NO_ENTRY})
    m.step(r.Replayed(t)) if m.status != LEADER else None
    assert m.status == LEADER
    for ms in range(3):
        m.step(r.Propose(0.0, ms))
    assert m.step(r.Synced(2)) == ()
    assert m.step(r.FollowerAck(t, "a", 1)) == (r.Committed(1),)
    assert m.step(r.FollowerAck(t, "b", 0)) == ()
    assert m.step(r.FollowerAck(t, "zzz", 2)) == ()  # not a follower
    fence(m, 4)
    # A deposed leader's late acks change nothing.
    assert m.step(r.FollowerAck(t, "a", 2)) == ()
    assert m.step(r.Synced(2)) == ()


def test_add_follower() -> None:
    m = machine(with_log(1, 1), term=3)
    t = lead(m, 3)
    m.step(r.Replayed(t))
    with pytest.raises(InvalidTerm):
        m.step(r.AddFollower(2, "a", NO_ENTRY))
    effects = m.step(r.AddFollower(3, "a", EntryId(1, 1)))
    assert kinds(effects) == [r.Committed, r.StartCursor]
    assert m.step(r.AddFollower(3, "a", EntryId(1, 1))) == ()  # idempotent
    m.step(r.AddFollower(3, "b", NO_ENTRY))
    with pytest.raises(InvalidArgument, match="replication factor"):
        m.step(r.AddFollower(3, "c", NO_ENTRY))
    # "a" comes back holding less than it acknowledged (a wiped disk): it starts over with a
    # snapshot.
    effects = m.step(r.AddFollower(3, "a", NO_ENTRY))
    assert kinds(effects) == [r.StopCursor, r.StartCursor]
    assert m.needs_snapshot(t, "a")
    with pytest.raises(InvalidStatus):
        machine(with_log(1), term=3).step(r.AddFollower(3, "a", NO_ENTRY))


# -- reads: leadership confirmation ---------------------------------------------------------------


def test_rf1_reads_need_no_confirmation() -> None:
    m = _leader()
    assert m.step(r.ReadIndex()) == (r.READ_NOW,)


def test_a_read_waits_for_a_round_a_majority_answers_at_this_term() -> None:
    m = machine(with_log(), term=3)
    t = lead(m, 3, {"a": NO_ENTRY, "b": NO_ENTRY})
    effects = m.step(r.ReadIndex())
    assert effects == (r.WAKE_CURSORS, r.AwaitRound(t, 1))
    assert m.step(r.ReadIndex()) == (r.WAKE_CURSORS, r.AwaitRound(t, 1))  # shares the round
    assert m.step(r.HeartbeatDue(t, 0)) == (r.SendHeartbeat(1, -1),)
    assert m.step(r.HeartbeatDue(t, 1)) == ()
    # Round 1 was sent: a read arriving now waits for a new one.
    assert m.step(r.ReadIndex()) == (r.WAKE_CURSORS, r.AwaitRound(t, 2))
    assert not m.read_confirmed(t, 1)
    assert m.step(r.HeartbeatAck(t, "a", 1)) == (r.CONFIRMED,)
    assert m.read_confirmed(t, 1) and not m.read_confirmed(t, 2)
    # A new term: the read is refused, never served from a deposed leader.
    fence(m, 4)
    with pytest.raises(NodeIsNotLeader):
        m.read_confirmed(t, 2)
    assert m.step(r.HeartbeatAck(t, "a", 2)) == ()
    assert m.step(r.HeartbeatDue(t, 1)) == ()
    with pytest.raises(NodeIsNotLeader):
        m.step(r.ReadIndex())


def test_a_round_goes_to_a_majority_first_and_to_everyone_once_escalated() -> None:
    m = machine(with_log(), term=3)
    t = lead(m, 3, {"a": NO_ENTRY, "b": NO_ENTRY})
    m.step(r.ReadIndex())
    # Nobody has answered yet: the first round goes to every follower.
    assert m.step(r.HeartbeatDue(t, 0, follower="a")) == (r.SendHeartbeat(1, -1),)
    assert m.step(r.HeartbeatDue(t, 0, follower="b")) == (r.SendHeartbeat(1, -1),)
    assert m.step(r.HeartbeatAck(t, "b", 1)) == (r.CONFIRMED,)
    assert m.step(r.HeartbeatAck(t, "a", 1)) == (r.CONFIRMED,)
    # "b" answered first: at RF=3 the next round goes to "b" alone.
    assert m.step(r.ReadIndex()) == (r.WAKE_CURSORS, r.AwaitRound(t, 2))
    assert m.step(r.HeartbeatDue(t, 1, follower="a")) == ()
    assert m.step(r.HeartbeatDue(t, 1, follower="b")) == (r.SendHeartbeat(2, -1),)
    # "b" does not answer in time: the read escalates, "a" is sent the newest round.
    assert m.step(r.EscalateRound(t, 2)) == (r.WAKE_CURSORS,)
    assert m.step(r.EscalateRound(t, 2)) == ()  # once
    assert not m.read_confirmed(t, 2)
    assert m.step(r.HeartbeatDue(t, 1, follower="a")) == (r.SendHeartbeat(2, -1),)
    assert m.step(r.HeartbeatAck(t, "a", 2)) == (r.CONFIRMED,)
    assert m.read_confirmed(t, 2)
    # "a" answered the newest round: it is the one asked first now.
    m.step(r.ReadIndex())
    assert m.step(r.HeartbeatDue(t, 2, follower="b")) == ()
    assert m.step(r.HeartbeatDue(t, 2, follower="a")) == (r.SendHeartbeat(3, -1),)
    # A confirmed round is not escalated.
    assert m.step(r.HeartbeatAck(t, "a", 3)) == (r.CONFIRMED,)
    assert m.step(r.EscalateRound(t, 3)) == ()


def test_an_escalated_round_reaches_a_follower_as_a_newer_round() -> None:
    m = machine(with_log(), term=3)
    t = lead(m, 3, {"a": NO_ENTRY, "b": NO_ENTRY})
    m.step(r.ReadIndex())
    m.step(r.HeartbeatDue(t, 0, follower="a"))
    m.step(r.HeartbeatDue(t, 0, follower="b"))
    m.step(r.HeartbeatAck(t, "a", 1))
    m.step(r.HeartbeatAck(t, "b", 1))
    m.step(r.ReadIndex())
    assert m.step(r.HeartbeatDue(t, 1, follower="a")) == (r.SendHeartbeat(2, -1),)
    m.step(r.ReadIndex())  # round 3, after round 2 went to "a"
    m.step(r.EscalateRound(t, 2))
    # "b" never got round 2: it gets round 3, whose answer confirms both reads.
    assert m.step(r.HeartbeatDue(t, 1, follower="b")) == (r.SendHeartbeat(3, -1),)
    m.step(r.HeartbeatAck(t, "b", 3))
    assert m.read_confirmed(t, 2) and m.read_confirmed(t, 3)


# -- follower progress on the leader --------------------------------------------------------------


def _leader_with_followers() -> tuple[Replica, Tenure]:
    lg = with_log(3, 3, 3)
    m = machine(lg)
    t = lead(m, 3, {"a": EntryId(3, 2), "b": EntryId(3, 1)})
    m.step(r.Replayed(t))
    return m, t


def test_a_follower_that_lost_its_data_gets_a_snapshot() -> None:
    # Oxia #929: a wiped follower answers NODE_IS_NOT_MEMBER; the cursor sends a snapshot.
    m, t = _leader_with_followers()
    assert not m.needs_snapshot(t, "a")
    assert m.step(r.FollowerLostData(t, "a")) == ()
    assert m.needs_snapshot(t, "a") and m.follower_ack(t, "a") == -1
    assert m.commit_offset == 2  # what was committed stays committed
    assert m.step(r.SnapshotSent(t, "a", 2)) == ()
    assert not m.needs_snapshot(t, "a") and m.follower_ack(t, "a") == 2


def test_a_follower_behind_the_retained_log_gets_a_snapshot() -> None:
    lg = with_log(3, 3, 3, 3)
    m = machine(lg)
    t = lead(m, 3, {"a": EntryId(3, 0), "b": NO_ENTRY})
    m.step(r.Replayed(t))
    assert not m.needs_snapshot(t, "a") and not m.needs_snapshot(t, "b")
    del lg.entries[:2]
    lg.first = 2  # the retention trimmed offsets 0 and 1
    assert m.needs_snapshot(t, "a")  # needs offset 1
    assert m.needs_snapshot(t, "b")  # empty, and the log no longer starts at 0
    assert not m.needs_snapshot(t, "nobody")


FOLLOWER_STATUS_CASES = [
    # (answers, expect a snapshot after the last one)
    ([None], False),  # one NODE_IS_NOT_MEMBER: maybe it has not opened the shard yet
    ([None, None], True),  # twice: its data is gone
    ([None, (FOLLOWER, 2), None], False),  # an answer in between resets the count
    ([(NOT_MEMBER, 2)], True),  # its storage failed
    ([(FOLLOWER, 1)], True),  # it holds less than it acknowledged
    ([(FOLLOWER, 2)], False),
]


@pytest.mark.parametrize(("answers", "snapshot_next"), FOLLOWER_STATUS_CASES)
def test_follower_status_after_a_failed_stream(
    answers: list[tuple[int, int] | None], snapshot_next: bool
) -> None:
    m, t = _leader_with_followers()
    for a in answers:
        if a is None:
            m.step(r.FollowerStatus(t, "a", None))
        else:
            m.step(r.FollowerStatus(t, "a", a[0], a[1]))  # type: ignore[arg-type]
    assert m.needs_snapshot(t, "a") is snapshot_next


def test_a_deposed_leaders_cursor_messages_change_nothing() -> None:
    m, t = _leader_with_followers()
    fence(m, 4)
    for message in (
        r.FollowerLostData(t, "a"),
        r.SnapshotSent(t, "a", 2),
        r.FollowerStatus(t, "a", None),
        r.HeartbeatDue(t, 0),
    ):
        assert m.step(message) == ()
    assert m.tenure is None


# -- planned step-down ----------------------------------------------------------------------------


def test_step_down_refuses_new_writes_until_the_new_term() -> None:
    m = _leader()
    m.leader_hint = "me:6648"
    with pytest.raises(InvalidTerm):
        m.step(r.StepDown(2, 1.0, now=0.0))
    effects = m.step(r.StepDown(3, 1.0, now=0.0))
    assert kinds(effects) == [r.RunStepDownHooks]
    # The hooks may still log (the TSO's release marker): writes go on until HandoffStarted.
    m.step(r.Propose(0.0, 1))
    h = effects[0].handoff  # type: ignore[union-attr]
    assert m.step(r.HandoffStarted(h)) == (r.LEADERSHIP_CHANGED,)
    assert m.handing_off(0.5)
    with pytest.raises(NodeIsNotLeader) as refused:
        m.step(r.Propose(0.5, 2))
    assert refused.value.leader_hint is None  # the assignments still name this server
    m.leader_hint = "next:6648"
    with pytest.raises(NodeIsNotLeader) as refused:
        m.step(r.Propose(0.5, 2))
    assert refused.value.leader_hint == "next:6648"
    assert m.step(r.StepDown(3, 1.0, now=0.6)) == ()  # a retried call: no hooks again
    assert m.step(r.StepDownAnswered(3, now=1.0)) == ()
    fence(m, 4)
    assert m.handoff is None and not m.handing_off(1.1)


def test_a_step_down_without_a_new_term_ends() -> None:
    m = _leader()
    h = m.step(r.StepDown(3, 0.0, now=0.0))[0].handoff  # type: ignore[union-attr]
    m.step(r.HandoffStarted(h))
    m.step(r.StepDownAnswered(3, now=0.0))
    with pytest.raises(NodeIsNotLeader):
        m.step(r.Propose(1.0, 1))
    assert kinds(m.step(r.Propose(100.0, 1))) == [r.Append]  # the coordinator never came
    assert m.handoff is None


def test_step_down_refused_when_not_leading() -> None:
    with pytest.raises(NodeIsNotLeader):
        _fenced().step(r.StepDown(3, 1.0, now=0.0))
    with pytest.raises(InvalidArgument):
        _leader().step(r.StepDown(3, 1000.0, now=0.0))


def test_drained() -> None:
    m = _leader()
    assert m.drained(0)
    m.step(r.Propose(0.0, 1))
    assert not m.drained(1)


# -- shard split (the parent's side) --------------------------------------------------------------


def test_a_split_observer_starts_with_a_snapshot_and_never_counts_towards_the_quorum() -> None:
    m, t = _leader_with_followers()
    effects = m.step(r.AddObserver(3, "c", 8, (0, 99)))
    assert effects == (r.StartObserver(t, "c", 8, (0, 99)),)
    assert m.needs_snapshot(t, "c", 8)  # always first: a child may hold an older parent tail
    assert not m.needs_snapshot(t, "c")  # not a follower of this shard
    assert m.step(r.SnapshotSent(t, "c", 2, 8)) == ()
    assert not m.needs_snapshot(t, "c", 8) and m.follower_ack(t, "c", 8) == 2
    # Its acks are its own: no commit, no quorum membership, no confirmation round.
    m.step(r.Propose(0.0, 1))
    m.step(r.Synced(3))
    assert m.step(r.FollowerAck(t, "c", 3, 8)) == ()
    assert m.commit_offset == 2 and "c" not in t.tracker.followers
    assert m.observer_acks() == {("c", 8): 3}
    assert m.step(r.HeartbeatDue(t, 0, 8)) == ()
    assert m.step(r.HeartbeatAck(t, "c", 1, 8)) == ()
    # A follower's ack still commits.
    assert m.step(r.FollowerAck(t, "a", 3)) == (r.Committed(3),)


def test_add_observer_is_idempotent_replaces_another_range_and_is_bounded() -> None:
    m, t = _leader_with_followers()
    m.step(r.AddObserver(3, "c", 8, (0, 99)))
    assert m.step(r.AddObserver(3, "c", 8, (0, 99))) == ()  # a retried call
    assert m.step(r.AddObserver(3, "c", 8, (0, 49))) == (
        r.StopObserver("c", 8),
        r.StartObserver(t, "c", 8, (0, 49)),
    )
    for i in range(r.MAX_OBSERVERS - 1):
        m.step(r.AddObserver(3, f"n{i}", 8, (0, 49)))
    before = snapshot(m)
    with pytest.raises(InvalidArgument):
        m.step(r.AddObserver(3, "one-too-many", 8, (0, 49)))
    assert snapshot(m) == before
    assert m.step(r.RemoveObserver("c", 8)) == (r.StopObserver("c", 8),)
    assert m.step(r.RemoveObserver("c", 8)) == ()  # nothing to do


@pytest.mark.parametrize(
    ("start", "message", "error"),
    [
        (_leader, r.AddObserver(2, "c", 8, (0, 9)), InvalidTerm),
        (_fenced, r.AddObserver(3, "c", 8, (0, 9)), InvalidStatus),
        (_leader, r.AddObserver(3, "c", SHARD, (0, 9)), InvalidArgument),
        (_leader, r.Freeze(4, True), InvalidTerm),
        (_follower, r.Freeze(3, True), InvalidStatus),
    ],
)
def test_split_inputs_refused(
    start: Callable[[], Replica], message: r.Input, error: type[PyxiaError]
) -> None:
    m = start()
    before = snapshot(m)
    with pytest.raises(error):
        m.step(message)
    assert snapshot(m) == before


def test_an_observers_lost_data_and_status_answers_restart_it_with_a_snapshot() -> None:
    m, t = _leader_with_followers()
    m.step(r.AddObserver(3, "c", 8, (0, 99)))
    m.step(r.SnapshotSent(t, "c", 2, 8))
    m.step(r.FollowerLostData(t, "c", 8))
    assert m.needs_snapshot(t, "c", 8) and m.follower_ack(t, "c", 8) == -1
    assert m.follower_ack(t, "a") == 2  # the follower of the same name is untouched
    m.step(r.SnapshotSent(t, "c", 2, 8))
    m.step(r.FollowerStatus(t, "c", FOLLOWER, 1, 8))  # holds less than it acknowledged
    assert m.needs_snapshot(t, "c", 8)


def test_freeze_refuses_new_writes_until_thawed_or_the_tenure_ends() -> None:
    m = _leader()
    m.step(r.Propose(0.0, 1))
    assert m.step(r.Freeze(3, True)) == ()
    assert m.frozen and not m.drained(1)  # the logged write still finishes
    with pytest.raises(NodeIsNotLeader, match="being split"):
        m.step(r.Propose(0.0, 2))
    m.step(r.Freeze(3, True))  # a retried freeze
    m.step(r.Freeze(3, False))
    assert not m.frozen and kinds(m.step(r.Propose(0.0, 3))) == [r.Append]
    m.step(r.Freeze(3, True))
    fence(m, 4)  # a new term ends the freeze with the leadership
    lead(m)
    assert not m.frozen and kinds(m.step(r.Propose(0.0, 4))) == [r.Append]


def test_a_new_term_stops_the_observers_with_the_cursors() -> None:
    m, t = _leader_with_followers()
    m.step(r.AddObserver(3, "c", 8, (0, 99)))
    assert r.STOP_CURSORS in fence(m, 4)
    assert m.observer_acks() == {}
    assert m.step(r.FollowerAck(t, "c", 5, 8)) == ()  # the deposed tenure's observer


# -- following: Replicate streams -----------------------------------------------------------------


OPEN_STREAM_CASES: list[tuple[str, Callable[[], Replica], int, type[PyxiaError]]] = [
    ("not a member (wiped)", _not_member, 3, NodeIsNotMember),
    ("storage failed", _failed, 3, NodeIsNotMember),
    ("older term (a deposed leader's late stream)", _fenced, 2, InvalidTerm),
    ("newer term (not fenced yet)", _fenced, 4, InvalidTerm),
    ("a stream already open", _follower, 3, LeaderAlreadyConnected),
]


@pytest.mark.parametrize(
    ("start", "term", "error"),
    [c[1:] for c in OPEN_STREAM_CASES],
    ids=[c[0] for c in OPEN_STREAM_CASES],
)
def test_open_stream_refused(
    start: Callable[[], Replica], term: int, error: type[PyxiaError]
) -> None:
    m = start()
    before = snapshot(m)
    with pytest.raises(error):
        m.step(r.OpenStream(term))
    assert snapshot(m) == before


def test_no_stream_while_the_replica_is_held() -> None:
    m = _fenced()
    m.step(r.BeginExclusive())
    with pytest.raises(InvalidStatus, match="busy"):
        m.step(r.OpenStream(3))
    assert m.step(r.EndExclusive()) == (r.WAKE_APPLIER,)
    assert kinds(m.step(r.OpenStream(3))) == [r.StreamOpened]


def test_entries_are_appended_acked_when_durable_and_applied_up_to_the_leaders_commit() -> None:
    lg = with_log()
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    assert m.step(r.PollAcks(s)) == ()
    effects = m.step(r.Received(s, append_msg(3, 3, 0)))
    assert kinds(effects) == [r.AppendToLog]
    assert m.status == FOLLOWER
    lg.append(3, 0)
    effects = m.step(r.Received(s, append_msg(3, 3, 1, commit=0)))
    assert kinds(effects) == [r.AppendToLog, r.WakeApplier]
    lg.append(3, 1)
    assert m.step(r.PollAcks(s)) == ()  # nothing durable yet
    assert m.step(r.ApplyDue()) == ()  # nor applicable: the DB never runs ahead of the WAL
    lg.synced = 0
    assert m.step(r.Synced(0)) == (r.WAKE_STREAM, r.WAKE_APPLIER)
    assert m.step(r.PollAcks(s)) == (r.SendAck(0),)
    assert m.step(r.PollAcks(s)) == ()
    assert m.step(r.ApplyDue()) == (r.ApplyUpTo(0),)
    lg.applied = 0
    assert m.step(r.Applied()) == ()
    # A duplicate is acknowledged again, never appended twice.
    assert m.step(r.Received(s, append_msg(3, 3, 0))) == ()
    lg.synced = 1
    assert m.step(r.PollAcks(s)) == (r.SendAck(1),)


def test_received_entry_checks() -> None:
    m = machine(with_log(3))
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    with pytest.raises(InvalidTerm):
        m.step(r.Received(s, append_msg(2, 2, 1)))  # the message's term is not the stream's
    with pytest.raises(InvalidArgument):
        m.step(r.Received(s, append_msg(3, 4, 1)))  # an entry from the future
    with pytest.raises(InvalidArgument):
        m.step(r.Received(s, append_msg(3, 3, -2)))
    m.step(r.BeginExclusive())
    with pytest.raises(InvalidStatus, match="busy"):
        m.step(r.Received(s, append_msg(3, 3, 1)))


def test_a_wiped_follower_answers_not_member_so_the_leader_sends_a_snapshot() -> None:
    # Oxia #929: a follower whose disk was wiped (and re-fenced) holds nothing; an entry that
    # does not continue its DB is a hole: NODE_IS_NOT_MEMBER, and the leader's cursor sends a
    # snapshot.
    m = machine(with_log())
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    with pytest.raises(NodeIsNotMember):
        m.step(r.Received(s, append_msg(3, 3, 5)))
    assert m.status == FENCED
    # After a snapshot the log is empty and the DB ends at the snapshot's offset: the entry
    # after it is the one that continues.
    lg = with_log(applied=4)
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    assert kinds(m.step(r.Received(s, append_msg(3, 3, 5)))) == [r.AppendToLog]


def test_heartbeats_are_answered_only_at_the_streams_own_term() -> None:
    lg = with_log()
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    assert m.step(r.Received(s, heartbeat_msg(3, 1, commit=-1))) == (r.WAKE_STREAM,)
    assert m.step(r.PollAcks(s)) == (r.SendAck(-1, 1),)
    assert m.step(r.PollAcks(s)) == ()
    with pytest.raises(InvalidTerm):
        m.step(r.Received(s, heartbeat_msg(2, 2)))
    m.step(r.Received(s, heartbeat_msg(3, 2)))
    # A new term arrives before the answer: the stream is over, the round is never answered.
    fence(m, 4)
    with pytest.raises(AlreadyClosed):
        m.step(r.PollAcks(s))


def test_a_durable_ack_carries_the_heartbeat_answer_due_with_it() -> None:
    lg = with_log()
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    m.step(r.Received(s, append_msg(3, 3, 0)))
    lg.append(3, 0)
    m.step(r.Received(s, heartbeat_msg(3, 1)))
    lg.synced = 0
    m.step(r.Synced(0))
    # One message answers both: the entry is durable and round 1 was received at this term.
    assert m.step(r.PollAcks(s)) == (r.SendAck(0, 1),)
    assert m.step(r.PollAcks(s)) == ()
    m.step(r.Received(s, heartbeat_msg(3, 2)))
    assert m.step(r.PollAcks(s)) == (r.SendAck(0, 2),)


def test_new_term_racing_a_replicate_stream() -> None:
    # Oxia #887/#893: a NewTerm while a stream is open ends it; its late messages are dropped
    # (the pump stops), its acks are never sent, and a stream of the new term may open.
    lg = with_log()
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    m.step(r.Received(s, append_msg(3, 3, 0)))
    lg.append(3, 0)
    m.step(r.BeginExclusive())
    effects = fence(m, 4)
    assert kinds(effects) == [r.StreamEnded, r.StoreTerm, r.StopCursors, r.SyncLog]
    assert m.step(r.Received(s, append_msg(3, 3, 1))) == (r.STALE_STREAM,)
    with pytest.raises(AlreadyClosed):
        m.step(r.PollAcks(s))
    with pytest.raises(InvalidStatus, match="busy"):
        m.step(r.OpenStream(4))
    m.step(r.EndExclusive())
    m.step(r.StreamClosed(s))  # the old stream's end changes nothing now
    s2 = m.step(r.OpenStream(4))[0].stream  # type: ignore[union-attr]
    assert m.stream is s2
    m.step(r.StreamClosed(s))
    assert m.stream is s2


def test_new_term_racing_a_snapshot_and_a_close() -> None:
    # A snapshot of an older term is refused before anything is destroyed; one of the current
    # term ends the stream; a close while a snapshot is being received refuses its install.
    m = _follower()
    with pytest.raises(InvalidTerm):
        m.step(r.SnapshotBegin(2))
    assert m.stream is not None
    assert m.step(r.SnapshotBegin(3)) == (r.STREAM_ENDED,)
    m.step(r.Close())
    with pytest.raises(AlreadyClosed):
        m.step(r.SnapshotInstalled(3, OPTS, 10))


def test_snapshot_install_makes_a_follower() -> None:
    lg = with_log()
    m = machine(lg, term=-1)
    assert m.step(r.SnapshotBegin(5)) == ()
    lg.applied = 10
    assert m.step(r.SnapshotInstalled(5, OPTS, 10)) == ()
    assert (m.status, m.term, m.leader_commit_offset) == (FOLLOWER, 5, 10)


def test_a_rebuilt_replica_finishes_rebuilding_once_it_holds_what_was_committed() -> None:
    lg = with_log()
    lg.rebuilding_ = True
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    assert m.step(r.Received(s, heartbeat_msg(3, 1, commit=1))) == (r.WAKE_APPLIER, r.WAKE_STREAM)
    assert m.rebuild_target == 1
    lg.applied = 1
    assert m.step(r.Applied()) == (r.FINISH_REBUILDING,)
    # A snapshot's commit offset is the target when it arrives first.
    m = machine(lg)
    m.step(r.SnapshotBegin(3))
    assert m.step(r.SnapshotInstalled(3, OPTS, 1)) == (r.FINISH_REBUILDING,)


TRUNCATE_CASES: list[tuple[str, Callable[[], Replica], int, int, type[PyxiaError] | None]] = [
    ("fenced, same term", _fenced, 3, 0, None),
    ("fenced, to nothing", _fenced, 3, -1, None),
    ("wrong term", _fenced, 4, 0, InvalidTerm),
    ("leading", _leader, 3, 0, InvalidStatus),
    ("a stream open", _follower, 3, 0, InvalidStatus),
    ("below what is applied", lambda: machine(with_log(3, 3, 3, applied=2)), 3, 1, InvalidArgument),
]


@pytest.mark.parametrize(
    ("start", "term", "offset", "error"),
    [c[1:] for c in TRUNCATE_CASES],
    ids=[c[0] for c in TRUNCATE_CASES],
)
def test_truncate(
    start: Callable[[], Replica], term: int, offset: int, error: type[PyxiaError] | None
) -> None:
    m = start()
    before = snapshot(m)
    if error is not None:
        with pytest.raises(error):
            m.step(r.Truncate(term, EntryId(3, offset)))
        assert snapshot(m) == before
        return
    assert m.step(r.Truncate(term, EntryId(3, offset))) == (r.TruncateLog(offset),)
    assert m.step(r.LogTruncated()) == ()
    assert m.status == FOLLOWER


def test_the_applier_stands_aside_while_the_replica_is_held() -> None:
    lg = with_log(3, 3)
    m = machine(lg)
    s = m.step(r.OpenStream(3))[0].stream  # type: ignore[union-attr]
    m.step(r.Received(s, heartbeat_msg(3, 0, commit=1)))  # round 0: the commit offset only
    m.step(r.BeginExclusive())
    assert m.step(r.ApplyDue()) == ()
    assert m.step(r.EndExclusive()) == (r.WAKE_APPLIER,)
    assert m.step(r.ApplyDue()) == (r.ApplyUpTo(1),)


def test_a_leader_is_never_demoted_by_a_stream_of_its_own_term_or_older() -> None:
    m = _leader()
    with pytest.raises(InvalidTerm):
        m.check_may_follow(3)
    with pytest.raises(InvalidTerm):
        m.check_may_follow(2)
    m.check_may_follow(4)
    _fenced().check_may_follow(3)


# -- every input in every status: a refused input changes nothing --------------------------------


STARTS: dict[str, Callable[[], Replica]] = {
    "not member": _not_member,
    "fenced": _fenced,
    "leader": _leader,
    "follower": _follower,
    "failed": _failed,
}


def _inputs(m: Replica) -> list[r.Input]:
    t = m.tenure or Tenure(3, 1, -1, QuorumAckTracker(1, -1, -1), LeadershipConfirmations(1), 0)
    s = m.stream or r.Stream(3)
    return [
        r.NewTerm(3, OPTS),
        r.NewTerm(5, OPTS),
        r.BecomeLeader(3, 3),
        r.Replayed(t),
        r.AddFollower(3, "x", NO_ENTRY),
        r.Propose(0.0, 1),
        r.Synced(5),
        r.FollowerAck(t, "x", 1),
        r.HeartbeatAck(t, "x", 1),
        r.HeartbeatDue(t, 0),
        r.ReadIndex(),
        r.SnapshotSent(t, "x", 1),
        r.FollowerLostData(t, "x"),
        r.FollowerStatus(t, "x", None),
        r.StepDown(3, 1.0, 0.0),
        r.StepDownAnswered(3, 0.0),
        r.AddObserver(3, "x", 9, (0, 99)),
        r.RemoveObserver("x", 9),
        r.Freeze(3, True),
        r.FollowerAck(t, "x", 1, 9),
        r.SnapshotSent(t, "x", 1, 9),
        r.Truncate(3, NO_ENTRY),
        r.OpenStream(3),
        r.Received(s, append_msg(3, 3, 0)),
        r.PollAcks(s),
        r.SnapshotBegin(2),
        r.ApplyDue(),
        r.Applied(),
    ]


@pytest.mark.parametrize("start", list(STARTS), ids=list(STARTS))
def test_every_input_in_every_status_either_acts_or_changes_nothing(start: str) -> None:
    count = len(_inputs(STARTS[start]()))
    for i in range(count):
        m = STARTS[start]()
        message = _inputs(m)[i]
        before = snapshot(m)
        try:
            effects = m.step(message)
        except PyxiaError:
            assert snapshot(m) == before, (start, message)
            continue
        assert isinstance(effects, tuple)


# -- hypothesis: random histories through a model of the storage ----------------------------------


class ReplicaHistory(RuleBasedStateMachine):
    """One replica driven by random inputs, with a driver that carries the effects out on a
    FakeLog. After every step: the term never goes back; the status agrees with the tenure;
    a leader's commit offset never goes back and never passes what a quorum holds; offsets given
    to writes are consecutive and their timestamps never go back; acks never name an entry
    that is not durable."""

    def __init__(self) -> None:
        super().__init__()
        self.log = FakeLog()
        self.m = Replica(SHARD, self.log, -1, OPTS)
        self.max_term = -1
        self.tenure: Tenure | None = None
        self.last_commit = -1
        self.last_ts = 0
        self.stream: r.Stream | None = None
        self.acked = -1
        self.follower_acks: dict[str, int] = {}

    def run(self, message: r.Input) -> r.Effects | None:
        before = snapshot(self.m)
        try:
            effects = self.m.step(message)
        except PyxiaError:
            assert snapshot(self.m) == before
            return None
        for e in effects:
            self.carry_out(e)
        return effects

    def carry_out(self, e: r.Effect) -> None:
        if isinstance(e, r.StoreTerm):
            self.run(r.TermStored(e.term, e.options))
        elif isinstance(e, r.SyncLog):
            self.log.sync()
        elif isinstance(e, r.Append):
            assert e.offset == self.log.last_offset + 1 or (
                not self.log.entries and e.offset == self.log.applied + 1
            )
            assert e.timestamp >= self.last_ts
            self.last_ts = e.timestamp
            self.log.append(e.term, e.offset, e.timestamp)
        elif isinstance(e, r.Committed):
            assert e.commit_offset <= self.log.synced_offset
            self.log.applied = max(self.log.applied, e.commit_offset)
        elif isinstance(e, r.StartTenure):
            self.tenure = e.tenure
            self.last_commit = e.tenure.tracker.commit_offset
            self.follower_acks = {}
        elif isinstance(e, r.TruncateFollower):
            self.run(r.FollowerTruncated(e.tenure, e.follower, e.head, e.snapshot))
        elif isinstance(e, r.StartCursor):
            self.follower_acks[e.follower] = self.m.follower_ack(e.tenure, e.follower)
        elif isinstance(e, r.StreamOpened):
            self.stream = e.stream
            self.acked = -1
        elif isinstance(e, r.AppendToLog):
            a = e.append.entry
            self.log.append(a.term, a.offset, a.timestamp)
        elif isinstance(e, r.TruncateLog):
            self.log.truncate(e.offset)
            self.run(r.LogTruncated())
        elif isinstance(e, r.ApplyUpTo):
            assert e.offset <= self.log.synced_offset
            self.log.applied = e.offset
            self.run(r.Applied())
        elif isinstance(e, r.SendAck):
            assert e.offset <= self.log.synced_offset
            assert e.offset >= self.acked
            self.acked = e.offset
        elif isinstance(e, r.CaughtUp) and self.tenure is not None:
            self.run(r.Replayed(self.tenure))

    # -- coordinator ------------------------------------------------------------------------------

    @rule(delta=st.integers(-1, 2))
    def new_term(self, delta: int) -> None:
        self.run(r.NewTerm(max(self.m.term + delta, 0), OPTS))

    @rule(rf=st.sampled_from([1, 3]), a=st.integers(-1, 8), b=st.integers(-1, 8))
    def become_leader(self, rf: int, a: int, b: int) -> None:
        followers = {}
        if rf == 3:
            head = self.log.head()
            followers = {
                "a": EntryId(head.term, min(a, head.offset)),
                "b": EntryId(head.term, min(b, head.offset)),
            }
        self.run(r.BecomeLeader(self.m.term, rf, followers))

    @rule()
    def close(self) -> None:
        self.run(r.Close())

    @rule()
    def storage_failed(self) -> None:
        self.run(r.StorageFailed("boom"))

    # -- leading ----------------------------------------------------------------------------------

    @rule(ms=st.integers(0, 100))
    def propose(self, ms: int) -> None:
        self.run(r.Propose(0.0, ms))

    @rule()
    def sync(self) -> None:
        self.log.sync()
        self.run(r.Synced(self.log.synced_offset))

    @precondition(lambda self: self.tenure is not None)
    @rule(name=st.sampled_from(["a", "b", "x"]), up=st.integers(0, 3))
    def follower_ack(self, name: str, up: int) -> None:
        assert self.tenure is not None
        offset = min(self.m.follower_ack(self.tenure, name) + up, self.log.last_offset)
        self.run(r.FollowerAck(self.tenure, name, offset))

    @precondition(lambda self: self.tenure is not None)
    @rule(name=st.sampled_from(["a", "b"]))
    def follower_lost_data(self, name: str) -> None:
        assert self.tenure is not None
        self.run(r.FollowerLostData(self.tenure, name))

    @rule()
    def read(self) -> None:
        effects = self.run(r.ReadIndex())
        if effects and self.tenure is not None:
            for e in effects:
                if isinstance(e, r.AwaitRound):
                    sent = self.run(r.HeartbeatDue(e.tenure, 0))
                    if sent:
                        self.run(r.HeartbeatAck(e.tenure, "a", e.round_id))
                        assert self.m.read_confirmed(e.tenure, e.round_id)

    # -- following --------------------------------------------------------------------------------

    @rule()
    def open_stream(self) -> None:
        self.run(r.OpenStream(self.m.term))

    @precondition(lambda self: self.stream is not None)
    @rule(skip=st.integers(0, 2), commit=st.integers(-1, 10), dup=st.booleans())
    def receive(self, skip: int, commit: int, dup: bool) -> None:
        assert self.stream is not None
        offset = self.log.last_offset if dup else self.log.last_offset + 1 + skip
        if self.log.last_offset < 0 and not dup:
            offset = self.log.applied + 1 + skip
        self.run(r.Received(self.stream, append_msg(self.stream.term, 0, offset, commit)))

    @precondition(lambda self: self.stream is not None)
    @rule()
    def poll(self) -> None:
        assert self.stream is not None
        self.run(r.PollAcks(self.stream))

    @precondition(lambda self: self.stream is not None)
    @rule()
    def stream_closed(self) -> None:
        assert self.stream is not None
        self.run(r.StreamClosed(self.stream))

    @rule(back=st.integers(0, 3))
    def truncate(self, back: int) -> None:
        self.run(r.Truncate(self.m.term, EntryId(0, self.log.last_offset - back)))

    @rule()
    def apply(self) -> None:
        self.run(r.ApplyDue())

    @rule()
    def exclusive(self) -> None:
        self.run(r.BeginExclusive())
        self.run(r.EndExclusive())

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def term_never_goes_back(self) -> None:
        assert self.m.term >= self.max_term
        self.max_term = self.m.term

    @invariant()
    def status_agrees_with_the_tenure(self) -> None:
        m = self.m
        if m.status == LEADER:
            assert m.tenure is not None and m.tenure.serving and not m.closed
        if m.tenure is not None:
            assert m.status in (FENCED, LEADER) and m.tenure.term == m.term
        if m.status == NOT_MEMBER:
            assert m.term < 0 or m.failure is not None
        if m.closed:
            assert m.tenure is None and m.stream is None
        assert m.busy == 0

    @invariant()
    def commit_never_goes_back_nor_passes_a_quorum(self) -> None:
        t = self.m.tenure
        if t is None or t is not self.tenure:
            return
        c = t.tracker.commit_offset
        assert c >= self.last_commit
        self.last_commit = c
        if c > t.elected_head:
            assert c <= self.log.synced_offset
            if t.replication_factor == 3:
                assert max(t.tracker.followers.values(), default=-1) >= c


TestReplicaHistory = ReplicaHistory.TestCase
TestReplicaHistory.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
