"""Quorum commit rule (pure code, no I/O, no clock).

An entry is committed when the leader holds it durably and ``rf // 2``
followers have acknowledged it (the leader's own copy counts as one of the
majority): RF=1 commits on the local sync, RF=3 needs one follower, RF=5 two.
Acks are cumulative (an ack for offset N covers every offset up to N for that
follower), so the commit offset is always contiguous. It never goes back.
"""

from __future__ import annotations


class QuorumAckTracker:
    """Tracks the leader head, per-follower acks and the commit offset."""

    __slots__ = ("_acks", "commit_offset", "head_offset", "required_acks")

    def __init__(self, replication_factor: int, head_offset: int, commit_offset: int) -> None:
        if replication_factor < 1:
            raise ValueError(f"replication factor must be >= 1, got {replication_factor}")
        self.required_acks = replication_factor // 2
        self.head_offset = head_offset
        self.commit_offset = min(commit_offset, head_offset)
        self._acks: dict[str, int] = {}

    @property
    def followers(self) -> dict[str, int]:
        return dict(self._acks)

    def add_follower(self, name: str, ack_offset: int) -> int:
        """Registers a follower with what it already (durably) holds.
        Returns the commit offset."""
        self._acks[name] = max(ack_offset, self._acks.get(name, -1))
        return self._recompute()

    def remove_follower(self, name: str) -> None:
        self._acks.pop(name, None)

    def reset_follower(self, name: str, ack_offset: int) -> None:
        """A follower lost its data (or was truncated): its ack restarts lower.
        The commit offset stays: what was committed stays committed."""
        if name in self._acks:
            self._acks[name] = ack_offset

    def advance_head(self, offset: int) -> int:
        """The leader made ``offset`` durable. Returns the commit offset."""
        if offset > self.head_offset:
            self.head_offset = offset
        return self._recompute()

    def ack(self, name: str, offset: int) -> int:
        """Follower ``name`` holds every entry up to ``offset``. Returns the
        commit offset."""
        if name not in self._acks:
            return self.commit_offset
        if offset > self._acks[name]:
            self._acks[name] = offset
        return self._recompute()

    def quorum_offset(self) -> int:
        """The highest offset held by the leader and ``required_acks`` followers."""
        if self.required_acks == 0:
            return self.head_offset
        acked = sorted(self._acks.values(), reverse=True)
        if len(acked) < self.required_acks:
            return -1
        return min(self.head_offset, acked[self.required_acks - 1])

    def _recompute(self) -> int:
        q = self.quorum_offset()
        if q > self.commit_offset:
            self.commit_offset = q
        return self.commit_offset
