"""Replicas of this server that failed on their own, for the coordinator.

A leader whose WAL or DB fails (disk full, I/O error) stops leading; a follower that fails
stops following. Nothing the coordinator watches changes with it (the process stays healthy and
serves its other shards), so without a report the coordinator would only notice at its periodic
check of the shard. Each controller reports its failure here; the coordinator holds a
``ShardEvents/Watch`` stream to every data server and re-checks (re-elects) the shard at once.

A server shutting down gracefully reports its leaderships the same way, marked ``leaving``: the
coordinator moves them away as planned moves (``handoff.py``) before the process goes.
"""

from __future__ import annotations

from pyxia.common.signals import Signal
from pyxia.proto import admin_pb2


class ShardFailures:
    """The latest failure of each shard, in the order they happened."""

    def __init__(self) -> None:
        self._events: dict[int, tuple[int, admin_pb2.ShardEvent]] = {}
        self._seq = 0
        self.signal = Signal()
        self.watchers = 0
        """Open ``ShardEvents/Watch`` streams (a coordinator is listening when > 0)."""

    def report(
        self, namespace: str, shard: int, term: int, role: str, reason: str, leaving: bool = False
    ) -> None:
        self._seq += 1
        event = admin_pb2.ShardEvent(
            namespace=namespace, shard=shard, term=term, role=role, reason=reason, leaving=leaving
        )
        self._events[shard] = (self._seq, event)
        self.signal.notify()

    def since(self, seq: int) -> tuple[int, list[admin_pb2.ShardEvent]]:
        """The events after sequence number ``seq`` (0: all), and the newest sequence number."""
        newer = sorted((s, e) for s, e in self._events.values() if s > seq)
        return self._seq, [e for _, e in newer]

    def close(self) -> None:
        self.signal.close()
