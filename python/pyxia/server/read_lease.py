"""The follower's side of the read lease: promises not to help elect a newer leader too soon.

A follower that answers a leader's confirmation round (read_index.py) promises, for
``lease_s`` of its clock from that answer, not to answer a NewTerm for a newer term. It is
fenced at once all the same (it stops following the old leader and acknowledges nothing more
of its term); only its NewTerm answer waits until its promise lapsed. The coordinator elects
only with the answers of a majority of the ensemble, which shares a member with every
majority that promised, so while the promises of a majority hold, the leader they were given
to is the only one there can be: it serves reads from its DB without a round.

Promises live in memory. A server that restarts forgot what its previous process promised, so
until ``lease_s`` after this one started it answers no NewTerm at all (a restart takes longer
than that in practice, so this costs nothing outside tests that restart servers at once).
Promises are per shard and never dropped (one float per shard a server followed): a replica
deleted here and created again is still bound by what it promised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

READ_LEASE_S = 0.2
"""How long a follower's answer to a confirmation round promises not to answer a newer
NewTerm. Longer: fewer rounds under read load (one per half lease); shorter: a leader that
stops (killed or cut off) while serving reads delays the next election of its shards less.
The leader counts on 90 % of it (read_index.LEASE_SAFETY)."""

MAX_READ_LEASE_S = 5.0
"""Half the coordinator's RPC timeout: a NewTerm answer that waits out a promise still comes
in time."""


class LeasePromises:
    """One data server's read-lease promises, per shard (follower side)."""

    __slots__ = ("_clock", "_started", "_until", "lease_s")

    def __init__(
        self, lease_s: float = READ_LEASE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0.0 <= lease_s <= MAX_READ_LEASE_S:
            raise ValueError(
                f"a read lease must be within [0, {MAX_READ_LEASE_S:g}] seconds, got {lease_s}"
            )
        self.lease_s = lease_s
        self._clock = clock
        self._started = clock()
        self._until: dict[int, float] = {}

    @property
    def lease_ms(self) -> int:
        """What an answer promises, in the Ack's unit (0: leases are off)."""
        return round(self.lease_s * 1000)

    def grant(self, shard: int) -> int:
        """Records the promise of an answer about to be sent for ``shard``; returns it in
        milliseconds for the Ack. The clock is read before the answer leaves, so the promise
        covers the time the leader counts from (it sent the round before this answer)."""
        if self.lease_s <= 0.0:
            return 0
        until = self._clock() + self.lease_s
        if until > self._until.get(shard, 0.0):
            self._until[shard] = until
        return self.lease_ms

    def wait_s(self, shard: int) -> float:
        """How long a NewTerm answer for ``shard`` must still wait (0: none)."""
        if self.lease_s <= 0.0:
            return 0.0
        until = max(self._until.get(shard, 0.0), self._started + self.lease_s)
        return max(0.0, until - self._clock())
