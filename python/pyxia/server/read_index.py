"""Leadership confirmation for linearizable reads (pure code, no I/O, no clock).

A leader cut off from the cluster keeps its DB and, without this, keeps answering reads while
a new leader (elected by a coordinator that fenced a majority of the ensemble) commits newer
writes: stale reads. Before serving a read the leader therefore confirms that a majority of the
ensemble still follows its term *after* the read arrived: it sends a numbered heartbeat down
every follower's replication stream, and a follower answers it only while it is at the
leader's term (a fenced follower refuses the stream). Any majority that fenced this leader for
a new term and any majority that confirmed a heartbeat share a follower, so a confirmed round
proves that no newer term had taken over when that follower answered.

Rounds are numbered; a read waits for a round that no follower had been sent when it arrived.
Reads that arrive together share a round, and a cursor sends only the newest round, so the
cost is about one message per follower per burst of reads, never one per read.
"""

from __future__ import annotations


class LeadershipConfirmations:
    """Heartbeat rounds requested, sent and acknowledged for one leader term."""

    __slots__ = ("_acks", "requested", "required_acks", "sent")

    def __init__(self, replication_factor: int) -> None:
        if replication_factor < 1:
            raise ValueError(f"replication factor must be >= 1, got {replication_factor}")
        # The leader counts as one of the majority, as for commits.
        self.required_acks = replication_factor // 2
        self.requested = 0
        """The newest round a read waits for."""
        self.sent = 0
        """The newest round any follower has been sent."""
        self._acks: dict[str, int] = {}

    @property
    def needed(self) -> bool:
        """Whether reads need confirmation at all (not for RF=1: no one else can be elected)."""
        return self.required_acks > 0

    def request(self) -> int:
        """A read arrived: the round it must wait for (a round no follower has been sent yet;
        reads arriving before that round goes out share it)."""
        if self.requested <= self.sent:
            self.requested = self.sent + 1
        return self.requested

    def to_send(self, last_sent_to_follower: int) -> int:
        """The round a follower's stream should carry next, or 0 if it is up to date."""
        return self.requested if self.requested > last_sent_to_follower else 0

    def on_sent(self, round_id: int) -> None:
        if round_id > self.sent:
            self.sent = round_id

    def ack(self, follower: str, round_id: int) -> None:
        """``follower`` answered round ``round_id`` at this term (rounds are cumulative)."""
        if round_id > self._acks.get(follower, 0):
            self._acks[follower] = round_id

    def remove_follower(self, follower: str) -> None:
        self._acks.pop(follower, None)

    def confirmed(self) -> int:
        """The newest round answered by a majority (the leader included)."""
        if self.required_acks == 0:
            return self.requested
        acked = sorted(self._acks.values(), reverse=True)
        if len(acked) < self.required_acks:
            return 0
        return acked[self.required_acks - 1]

    def is_confirmed(self, round_id: int) -> bool:
        return self.confirmed() >= round_id
