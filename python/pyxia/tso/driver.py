"""The consensus side of the oracle, over pyxia's own replicated log.

tsoracle's ``ConsensusDriver`` has three methods; here they are:

- **leadership events** (:class:`DirectorLeadership`): level-triggered. The data server's
  :class:`~pyxia.server.shards_director.ShardsDirector` owns a :class:`Signal` that every
  :class:`~pyxia.server.leader_controller.LeaderController` notifies when it becomes leader
  (after ``become_leader`` applied every committed entry) and when it stops leading (NewTerm,
  storage failure, close). :meth:`DirectorLeadership.current` reads the state of the TSO
  namespace's shard at any moment, so the first "event" is always available at once and a
  wake-up cannot be lost (the Signal is generation-counted).
- **load_high_water** (:meth:`ShardDriver.load_high_water`): a read of the internal key
  ``__oxia/tso/high-water`` from the leader's DB. It is linearized because a controller only
  reports LEADER once it has applied every entry committed in earlier terms (the election
  picks a replica holding all of them), and this leader is the key's only writer in its term.
- **persist_high_water** (:meth:`ShardDriver.persist_high_water`): a put of that key proposed
  through the leader's log (``propose_internal``) and awaited until a quorum committed it and
  it was applied. Fenced by term: it is refused unless the controller leads at exactly the
  epoch asked for, and a deposed leader's proposal can never commit (the new term fenced a
  quorum). It is a monotonic max: the value written is at least every value this process ever
  proposed, so the stored high-water never goes down even if an abandoned proposal commits
  late. It gives up after ``persist_timeout_s`` with :class:`TsoUnavailable` (transient).

The epoch of a grant is the TSO shard's term (``epoch_hi`` 0, ``epoch_lo`` term): terms grow
with every election, so epochs grow with every leader change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pyxia.errors import NodeIsNotLeader
from pyxia.proto import client_pb2
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.leader_controller import LEADER, LeaderController
from pyxia.server.shards_director import ShardsDirector
from pyxia.server.signals import Signal
from pyxia.storage import keys, reads
from pyxia.tso.errors import HighWaterCorrupt, TsoUnavailable

HIGH_WATER_KEY = keys.INTERNAL_KEY_PREFIX + "tso/high-water"
"""The TSO shard's persisted high-water: physical milliseconds, inclusive (ASCII decimal)."""


@dataclass(frozen=True, eq=False)
class Leading:
    """This node leads the TSO shard at ``epoch`` (its term) through ``handle``.

    ``lease`` is whether another replica could be elected while this one is paused
    (replication factor above one): then a leader serves under a lease (see ``oracle``)."""

    epoch: int
    handle: object
    lease: bool

    def same(self, other: object) -> bool:
        return (
            isinstance(other, Leading)
            and other.epoch == self.epoch
            and (other.handle is self.handle)
        )


@dataclass(frozen=True)
class Following:
    """This node does not lead the TSO shard (it may not even hold a replica)."""

    leader_endpoint: str | None = None


LeaderState = Leading | Following


class Leadership(Protocol):
    """Where leadership events come from (level-triggered)."""

    @property
    def signal(self) -> Signal: ...

    def current(self) -> LeaderState: ...


class HighWaterDriver(Protocol):
    async def load_high_water(self, target: Leading) -> int: ...

    async def persist_high_water(self, target: Leading, at_least: int) -> int: ...


def encode_high_water(ms: int) -> bytes:
    return str(ms).encode()


def decode_high_water(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise HighWaterCorrupt(f"tso: corrupt high-water record {raw[:40]!r}")
    return int(raw)


class DirectorLeadership:
    """The TSO namespace's leadership as seen by one data server."""

    def __init__(
        self, director: ShardsDirector, assignments: AssignmentsDispatcher, namespace: str
    ) -> None:
        self.director = director
        self.assignments = assignments
        self.namespace = namespace

    @property
    def signal(self) -> Signal:
        return self.director.leadership

    def controller(self) -> LeaderController | None:
        for lc in self.director.leaders.values():
            if lc.namespace == self.namespace:
                return lc
        return None

    def current(self) -> LeaderState:
        lc = self.controller()
        if lc is not None and lc.status == LEADER and not lc.closed:
            return Leading(lc.term, lc, lc.replication_factor > 1)
        return Following(self.assigned_leader())

    def assigned_leader(self) -> str | None:
        """The TSO shard's leader in the pushed assignments (its public address)."""
        current = self.assignments.current
        if current is None:
            return None
        ns = current.namespaces.get(self.namespace)
        if ns is None:
            return None
        for a in ns.assignments:
            if a.leader:
                return str(a.leader)
        return None


def controller_leads(target: Leading) -> bool:
    """Whether the target's controller still leads at its epoch (a few attribute reads: the
    grant path checks it on every call)."""
    lc = target.handle
    return isinstance(lc, LeaderController) and lc.status == LEADER and lc.term == target.epoch


def _controller(target: Leading) -> LeaderController:
    lc = target.handle
    assert isinstance(lc, LeaderController)
    if lc.closed or lc.status != LEADER or lc.term != target.epoch:
        raise NodeIsNotLeader(
            f"tso: no longer the leader of shard {lc.shard} at term {target.epoch}",
            shard=lc.shard,
            leader_hint=lc.leader_hint,
        )
    return lc


class ShardDriver:
    """The high-water through the TSO shard's log (see the module docstring)."""

    def __init__(self, persist_timeout_s: float = 2.0) -> None:
        self.persist_timeout_s = persist_timeout_s
        self._max_proposed = -1

    async def load_high_water(self, target: Leading) -> int:
        """The durable high-water (-1 if none was ever persisted), linearized."""
        lc = _controller(target)
        res = reads.get(
            lc.storage.db, client_pb2.GetRequest(key=HIGH_WATER_KEY, include_value=True)
        )
        stored = decode_high_water(res.value) if res.status == client_pb2.OK else -1
        return max(stored, self._max_proposed)

    async def persist_high_water(self, target: Leading, at_least: int) -> int:
        """Makes ``max(at_least, anything proposed before)`` durable at ``target.epoch``;
        returns the value made durable."""
        lc = _controller(target)
        value = max(at_least, self._max_proposed)
        put = client_pb2.WriteRequest(
            puts=[client_pb2.PutRequest(key=HIGH_WATER_KEY, value=encode_high_water(value))]
        )
        fut = lc.propose_internal(_constant(put))
        self._max_proposed = value
        # If we stop waiting (timeout, cancel), the outcome is still collected.
        fut.add_done_callback(_collect)
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.persist_timeout_s)
        except TimeoutError:
            raise TsoUnavailable(
                f"tso: the high-water write was not committed within {self.persist_timeout_s}s"
            ) from None
        if res.error is not None:
            raise res.error
        return value


def _collect(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _constant(req: client_pb2.WriteRequest) -> Callable[[int], client_pb2.WriteRequest]:
    return lambda _offset: req
