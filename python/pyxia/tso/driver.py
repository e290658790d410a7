"""The consensus side of the oracle, over pyxia's own replicated log.

tsoracle's ``ConsensusDriver`` has three methods; here they are:

- **leadership events** (:class:`DirectorLeadership`): level-triggered (a leader stepping down
  for a planned move counts as not leading). The data server's
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

The oracle's other state lives in the same shard, written through the same log by the leader
of the term only (``propose_internal`` refuses anyone else): sequence counters
(:mod:`~pyxia.tso.sequences`), lease records (:mod:`~pyxia.tso.leases`), and the **release
marker** ``__oxia/tso/released``. A leader stepping down for a planned move stops granting and
then logs the marker (:meth:`ShardDriver.release`); every high-water write deletes it (one
atomic write). So the marker is present, in the state a new leader loads, exactly when the last
leader that could have held a time lease gave it up before the marker was logged — the new
leader need not wait the lease out (see ``fence.py``). :meth:`ShardDriver.released` reads it.

Reads of that state (:meth:`ShardDriver.read`, :meth:`ShardDriver.scan`) come from the leader's
DB: authoritative for a key this leader has not written in its term, for the reason the
high-water load is linearized. Writes (:meth:`ShardDriver.log`) are appended synchronously
(raising at once for a non-leader: nothing was logged) and return the commit future.

The epoch of a grant is the TSO shard's term + 1 on the wire (``service.wire_epoch``): terms grow
with every election, so epochs grow with every leader change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyxia.common import keys
from pyxia.common.signals import Signal
from pyxia.errors import NodeIsNotLeader, PyxiaError
from pyxia.proto import client_pb2
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.leader_controller import LEADER, LeaderController
from pyxia.server.shards_director import ShardsDirector
from pyxia.storage import reads
from pyxia.storage.apply import ApplyResult
from pyxia.tso.errors import HighWaterCorrupt, TsoUnavailable

HIGH_WATER_KEY = keys.INTERNAL_KEY_PREFIX + "tso/high-water"
"""The TSO shard's persisted high-water: physical milliseconds, inclusive (ASCII decimal)."""
HANDOFF_RECHECK_S = 0.5
"""How often the oracle looks at a leader handing over (its refusal period may be shortened
when its StepDown answers; no event says so)."""
RELEASED_KEY = keys.INTERNAL_KEY_PREFIX + "tso/released"
"""Present (the releasing term, ASCII decimal) when the last leader that could hold a time lease
gave it up; deleted by every high-water write."""


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
    """This node does not lead the TSO shard (it may not even hold a replica); the leader
    and its epoch (term) as the pushed assignments name them, when known."""

    leader_endpoint: str | None = None
    leader_epoch: int | None = None
    recheck_s: float | None = None
    """Look again after this long even without an event (a leader handing its leadership
    over takes writes again if no new term comes)."""


LeaderState = Leading | Following


class Leadership(Protocol):
    """Where leadership events come from (level-triggered)."""

    @property
    def signal(self) -> Signal: ...

    def current(self) -> LeaderState: ...


Puts = Sequence[tuple[str, bytes]]


class HighWaterDriver(Protocol):
    async def load_high_water(self, target: Leading) -> int: ...

    async def persist_high_water(
        self, target: Leading, at_least: int, puts: Puts = (), deletes: Sequence[str] = ()
    ) -> int: ...

    def planned_high_water(self, at_least: int) -> int: ...

    def log_high_water(
        self, target: Leading, value: int, puts: Puts = (), deletes: Sequence[str] = ()
    ) -> asyncio.Future[ApplyResult]: ...

    async def wait(self, fut: asyncio.Future[ApplyResult], what: str) -> None: ...

    def released(self, target: Leading) -> bool: ...

    def release(self, target: Leading) -> asyncio.Future[ApplyResult] | None: ...

    def read(self, target: Leading, key: str) -> bytes | None: ...

    def scan(self, target: Leading, start: str, end: str) -> list[tuple[str, bytes]]: ...

    def log(
        self, target: Leading, puts: Puts, deletes: Sequence[str] = ()
    ) -> asyncio.Future[ApplyResult]: ...


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
            h = lc.handoff
            if h is not None and lc.handing_off:
                # Stepping down for a planned move: not leading for the oracle (the new
                # leader is not known yet) until the new term, or until the refusals end.
                left = h.refuse_until - time.monotonic()
                return Following(recheck_s=min(HANDOFF_RECHECK_S, max(0.01, left)))
            return Leading(lc.term, lc, lc.replication_factor > 1)
        return Following(*self.assigned())

    def assigned(self) -> tuple[str | None, int | None]:
        """The TSO shard's leader in the pushed assignments (its public address) and the term
        it leads (None when the map does not say)."""
        current = self.assignments.current
        if current is None:
            return None, None
        ns = current.namespaces.get(self.namespace)
        if ns is None:
            return None, None
        for a in ns.assignments:
            if a.leader:
                return str(a.leader), (int(a.leader_term) or None)
        return None, None


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
        raw = self.read(target, HIGH_WATER_KEY)
        stored = decode_high_water(raw) if raw is not None else -1
        return max(stored, self._max_proposed)

    async def persist_high_water(
        self, target: Leading, at_least: int, puts: Puts = (), deletes: Sequence[str] = ()
    ) -> int:
        """Makes ``max(at_least, anything proposed before)`` durable at ``target.epoch``, in
        one write with ``puts`` and ``deletes`` (lease records) and the release marker's
        deletion; returns the value made durable."""
        value = self.planned_high_water(at_least)
        fut = self.log_high_water(target, value, puts, deletes)
        await self.wait(fut, "high-water")
        return value

    def planned_high_water(self, at_least: int) -> int:
        """The value a high-water write asked for ``at_least`` would write: never below
        anything proposed before (a monotonic max even if an abandoned write commits late)."""
        return max(at_least, self._max_proposed)

    def log_high_water(
        self, target: Leading, value: int, puts: Puts = (), deletes: Sequence[str] = ()
    ) -> asyncio.Future[ApplyResult]:
        """Appends the high-water ``value`` (at least :meth:`planned_high_water`) with ``puts``
        and ``deletes`` and the release marker's deletion, as one write."""
        if value < self._max_proposed:
            raise ValueError(f"high-water {value} is below {self._max_proposed}, proposed before")
        fut = self.log(
            target,
            [(HIGH_WATER_KEY, encode_high_water(value)), *puts],
            [RELEASED_KEY, *deletes],
        )
        self._max_proposed = value
        return fut

    async def wait(self, fut: asyncio.Future[ApplyResult], what: str) -> None:
        """Waits for a logged write to commit (TsoUnavailable after ``persist_timeout_s``; the
        write may still commit later)."""
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.persist_timeout_s)
        except TimeoutError:
            raise TsoUnavailable(
                f"tso: the {what} write was not committed within {self.persist_timeout_s}s"
            ) from None
        if res.error is not None:
            raise res.error

    def log(
        self, target: Leading, puts: Puts, deletes: Sequence[str] = ()
    ) -> asyncio.Future[ApplyResult]:
        """Appends one atomic write at ``target.epoch`` (raises at once if this node does not
        lead it: nothing was logged); the future resolves once it committed and applied."""
        lc = _controller(target)
        req = client_pb2.WriteRequest(
            puts=[client_pb2.PutRequest(key=k, value=v) for k, v in puts],
            deletes=[client_pb2.DeleteRequest(key=k) for k in deletes],
        )
        fut = lc.propose_internal(_constant(req))
        # If nobody waits for it (timeout, cancel), the outcome is still collected.
        fut.add_done_callback(_collect)
        return fut

    def released(self, target: Leading) -> bool:
        """Whether the release marker is in the leader's state (see the module docstring)."""
        return self.read(target, RELEASED_KEY) is not None

    def release(self, target: Leading) -> asyncio.Future[ApplyResult] | None:
        """Logs the release marker (the caller stopped granting first); None if this node does
        not lead ``target`` any more."""
        try:
            return self.log(target, [(RELEASED_KEY, str(target.epoch).encode())])
        except PyxiaError:
            return None

    def read(self, target: Leading, key: str) -> bytes | None:
        lc = _controller(target)
        res = reads.get(lc.storage.db, client_pb2.GetRequest(key=key, include_value=True))
        return res.value if res.status == client_pb2.OK else None

    def scan(self, target: Leading, start: str, end: str) -> list[tuple[str, bytes]]:
        """Every internal record with ``start <= key < end`` (one path depth)."""
        lc = _controller(target)
        req = client_pb2.RangeScanRequest(
            start_inclusive=start, end_exclusive=end, include_internal_keys=True
        )
        return [(r.key, r.value) for r in reads.range_scan(lc.storage.db, req)]


def _collect(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _constant(req: client_pb2.WriteRequest) -> Callable[[int], client_pb2.WriteRequest]:
    return lambda _offset: req
