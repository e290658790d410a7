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

A round first goes only to as many followers as a majority needs (``required_acks``): the ones
that answered the newest round earliest, so one heartbeat and one answer per round at RF=3
instead of two of each (each is a gRPC message on both ends, the main cost of a read at RF=3).
Until that many followers have answered any round, and for every round up to ``escalated``, a
round goes to every follower: a read whose round is not confirmed soon (a preferred follower is
slow or gone) escalates it, and the followers that answer it become the preferred ones.
Which followers are asked never weakens the rule above: a round confirms only with a majority's
answers, each to a round sent after the read arrived (a follower answers the newest round it
was sent, and an answer to a newer round covers the older ones: it was sent later).

**Read lease.** A follower that answers a round also promises, for ``lease_s`` of its own
clock from its answer, not to answer a NewTerm for a newer term (it is fenced at once, it only
holds back its answer: ``read_lease.LeasePromises``), and says so in its answer. The coordinator
elects a new leader only with the answers of a majority of the ensemble, which shares a follower
with any majority that promised; so until the promises of a majority lapse no newer leader can
exist, let alone commit. The leader therefore serves a read at once, with no round, while
``now < lease_until()``: the time it first sent the answered round (before the follower could
answer it) plus the promised ``lease_s`` times ``LEASE_SAFETY`` (clock rates differ), the
``required_acks``-th latest such expiry over its followers. Reads renew the lease in the
background when less than half of it is left (one round per half-lease under read load, not
one per burst of reads); a read that finds no lease waits for a round as above. A follower that
promised nothing (an older version: ``lease_s`` 0) gives no lease, so mixed versions stay safe.
The clock is the caller's (``time.monotonic`` on the leader): this module reads none.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TypeVar

_N = TypeVar("_N", int, float)

LEASE_SAFETY = 0.9
"""The share of a follower's promised lease the leader counts on: the two clocks may run at
different rates (monotonic clocks differ by parts per million; this leaves 10 %)."""

SENT_TIMES_KEPT = 64
"""Rounds whose send time is remembered; an answer to an older round gives no lease."""


class LeadershipConfirmations:
    """Heartbeat rounds requested, sent and acknowledged for one leader term."""

    __slots__ = (
        "_acks",
        "_answered_at",
        "_answers",
        "_granted",
        "_lease_expiry",
        "_sent_at",
        "escalated",
        "requested",
        "required_acks",
        "sent",
    )

    def __init__(self, replication_factor: int) -> None:
        if replication_factor < 1:
            raise ValueError(f"replication factor must be >= 1, got {replication_factor}")
        # The leader counts as one of the majority, as for commits.
        self.required_acks = replication_factor // 2
        self.requested = 0
        """The newest round a read waits for."""
        self.sent = 0
        """The newest round any follower has been sent."""
        self.escalated = 0
        """Rounds up to this one go to every follower (their preferred ones were too slow)."""
        self._acks: dict[str, int] = {}
        self._answers = 0
        self._answered_at: dict[str, int] = {}
        """When (in answers counted) each follower answered its newest round."""
        self._sent_at: dict[int, float] = {}
        """When each recent round first went out (the caller's clock)."""
        self._lease_expiry: dict[str, float] = {}
        """Until when (the leader's clock) each follower's promise holds."""
        self._granted = 0.0
        """The newest lease length a follower promised (for the renewal threshold)."""

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

    def to_send(self, last_sent_to_follower: int, follower: str | None = None) -> int:
        """The round ``follower``'s stream should carry next, or 0 if it is up to date or the
        round goes to the preferred followers only and it is not one of them (None: any
        follower, no preference). A follower not yet sent the escalated round gets the newest
        one, which covers it."""
        r = self.requested
        if r <= last_sent_to_follower:
            return 0
        if follower is None or last_sent_to_follower < self.escalated:
            return r  # (an escalated round is covered by any newer one)
        preferred = self.preferred()
        return r if preferred is None or follower in preferred else 0

    def preferred(self) -> list[str] | None:
        """The followers a round goes to first: the ``required_acks`` that answered the newest
        round earliest; None (every follower) until that many have answered any round."""
        if len(self._acks) < self.required_acks:
            return None
        order = sorted(self._acks, key=lambda f: (-self._acks[f], self._answered_at[f]))
        return order[: self.required_acks]

    def escalate(self, round_id: int) -> bool:
        """Round ``round_id`` was not confirmed in time: it (and any newer one requested) goes
        to every follower. Whether that changes anything (the cursors must be woken)."""
        if round_id <= self.escalated or self.is_confirmed(round_id):
            return False
        self.escalated = round_id
        return True

    def on_sent(self, round_id: int, now: float = -math.inf) -> None:
        """Round ``round_id`` went to a follower at ``now`` (the caller's clock, read before
        the message left; without it the round's answers give no lease)."""
        if round_id > self.sent:
            self.sent = round_id
            if now > -math.inf:
                sent_at = self._sent_at
                sent_at[round_id] = now
                if len(sent_at) > SENT_TIMES_KEPT:
                    del sent_at[next(iter(sent_at))]  # (rounds go out in order)

    def ack(self, follower: str, round_id: int, lease_s: float = 0.0) -> None:
        """``follower`` answered round ``round_id`` at this term (rounds are cumulative),
        promising ``lease_s`` seconds of its clock from its answer (0: no promise)."""
        if round_id > self._acks.get(follower, 0):
            self._acks[follower] = round_id
            self._answers += 1
            self._answered_at[follower] = self._answers
            sent = self._sent_at.get(round_id)
            if lease_s > 0 and sent is not None:
                expiry = sent + lease_s * LEASE_SAFETY
                if expiry > self._lease_expiry.get(follower, -math.inf):
                    self._lease_expiry[follower] = expiry
                self._granted = lease_s

    def lease_until(self) -> float:
        """Until when (the leader's clock) no newer leader can be elected: the
        ``required_acks``-th latest promise (-inf: no lease; inf for RF=1)."""
        if self.required_acks == 0:
            return math.inf
        until = _kth_largest(self._lease_expiry.values(), self.required_acks)
        return -math.inf if until is None else until

    def leased(self, now: float) -> bool:
        """Whether a read arriving at ``now`` may be served without a round."""
        return now < self.lease_until()

    def renewal_due(self, now: float, until: float | None = None) -> bool:
        """Whether a read at ``now`` (served from the lease, which lasts ``until``: computed
        here if not given) should start a round to renew it: less than half of the lease is
        left and no round is on its way."""
        if self.requested > self.confirmed():
            return False  # a round is requested or in flight
        if until is None:
            until = self.lease_until()
        return until - now < self._granted * LEASE_SAFETY / 2

    def answered(self, follower: str) -> int:
        """The newest round ``follower`` answered (0: none)."""
        return self._acks.get(follower, 0)

    def remove_follower(self, follower: str) -> None:
        self._acks.pop(follower, None)
        self._answered_at.pop(follower, None)
        self._lease_expiry.pop(follower, None)

    def confirmed(self) -> int:
        """The newest round answered by a majority (the leader included)."""
        if self.required_acks == 0:
            return self.requested
        newest = _kth_largest(self._acks.values(), self.required_acks)
        return 0 if newest is None else newest

    def is_confirmed(self, round_id: int) -> bool:
        return self.confirmed() >= round_id


def _kth_largest(values: Collection[_N], k: int) -> _N | None:
    """The ``k``-th largest of ``values`` (k >= 1; None if there are fewer): what a majority of
    followers reached, the leader counting as the rest."""
    if len(values) < k:
        return None
    if k == 1:
        return max(values)
    return sorted(values, reverse=True)[k - 1]
