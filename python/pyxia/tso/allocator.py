"""The timestamp allocator: pure, synchronous, no I/O and no clock of its own.

A timestamp is ``physical_ms << 18 | logical``: 46 bits of milliseconds since the Unix epoch
and an 18-bit logical counter (262,144 timestamps per millisecond), the layout of tsoracle and
TiKV PD. A grant is ``count`` consecutive logicals at one ``physical_ms``, whole or not at all.

Invariants (property-tested in ``tests/test_tso_allocator.py``):

- every grant starts strictly above the previous one's last timestamp, whatever the clock
  does (it may jump back and forth: the allocator keeps its own last physical and moves on by
  logicals, then by single milliseconds);
- no grant's physical part exceeds the committed high-water ``H`` (inclusive): the allocator
  only hands out timestamps under a bound that consensus has made durable;
- ``become_leader(floor, H, epoch)`` seeds it so the first grant is at or above ``floor``;
  the fence chooses ``floor`` strictly above every high-water any earlier leader persisted;
- a window extension is split in ``prepare`` (compute the target; the caller persists it
  without holding anything) and ``commit`` (apply the durable value), so grants go on from the
  current window while the extension is in flight; a commit from another epoch, or one that
  does not advance ``H``, is ignored.

State machine: NoEpoch --become_leader--> Serving --try_grant past H--> (WindowExhausted)
--prepare/commit--> Serving; any state --step_down--> NoEpoch.
"""

from __future__ import annotations

from dataclasses import dataclass

PHYSICAL_BITS = 46
LOGICAL_BITS = 18
MAX_PHYSICAL = (1 << PHYSICAL_BITS) - 1
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1
MAX_COUNT = LOGICAL_MAX + 1
"""A grant covers at most every logical of one millisecond."""


def pack(physical_ms: int, logical: int) -> int:
    """The 64-bit timestamp."""
    return (physical_ms << LOGICAL_BITS) | logical


def unpack(ts: int) -> tuple[int, int]:
    """``(physical_ms, logical)`` of a timestamp."""
    return ts >> LOGICAL_BITS, ts & LOGICAL_MAX


class AllocatorError(Exception):
    """Base of the allocator's refusals."""


class NotLeader(AllocatorError):
    """No epoch: this allocator is not serving (never elected, or stepped down)."""


class WindowExhausted(AllocatorError):
    """The grant would go past the committed high-water: extend the window first."""


class InvalidCount(AllocatorError, ValueError):
    """``count`` is outside ``[1, 262144]``."""


class AdvanceOutOfRange(AllocatorError):
    """The physical part would not fit in 46 bits (a clock far in the future)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """``count`` timestamps ``[first, last]``, all at ``physical_ms``, issued at ``epoch``."""

    physical_ms: int
    logical_start: int
    count: int
    epoch: int

    @property
    def first(self) -> int:
        return pack(self.physical_ms, self.logical_start)

    @property
    def last(self) -> int:
        return pack(self.physical_ms, self.logical_start + self.count - 1)


@dataclass(frozen=True, slots=True)
class Extension:
    """A prepared window extension: persist ``requested`` at ``epoch``, then commit."""

    epoch: int
    requested: int


def check_count(count: int) -> None:
    if not 1 <= count <= MAX_COUNT:
        raise InvalidCount(f"count must be between 1 and {MAX_COUNT}, got {count}")


class Allocator:
    """Grants timestamps under a committed high-water; see the module docstring."""

    __slots__ = ("_epoch", "_high_water", "_last_logical", "_last_physical", "window_ahead_ms")

    def __init__(self, window_ahead_ms: int = 3000) -> None:
        if window_ahead_ms < 1:
            raise ValueError("window_ahead_ms must be at least 1")
        self.window_ahead_ms = window_ahead_ms
        self._epoch: int | None = None
        self._high_water = -1
        # The last timestamp handed out (or, after become_leader, just below the floor).
        self._last_physical = -1
        self._last_logical = LOGICAL_MAX

    # -- leadership -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @property
    def high_water(self) -> int | None:
        """The committed high-water (inclusive), while serving."""
        return self._high_water if self._epoch is not None else None

    def become_leader(self, floor_ms: int, high_water_ms: int, epoch: int) -> None:
        """Starts serving at ``epoch``: grants from ``floor_ms`` (logical 0) up to the durable
        ``high_water_ms`` (inclusive)."""
        if not 0 < floor_ms <= high_water_ms:
            raise ValueError(f"need 0 < floor ({floor_ms}) <= high-water ({high_water_ms})")
        if high_water_ms > MAX_PHYSICAL:
            raise AdvanceOutOfRange(f"high-water {high_water_ms} does not fit in 46 bits")
        self._epoch = epoch
        self._high_water = high_water_ms
        self._last_physical = floor_ms - 1
        self._last_logical = LOGICAL_MAX

    def step_down(self) -> None:
        """Forgets the window: nothing is granted until the next ``become_leader``."""
        self._epoch = None
        self._high_water = -1

    # -- grants -----------------------------------------------------------------------------------

    def _next(self, count: int, now_ms: int) -> tuple[int, int]:
        """Where a grant of ``count`` taken at ``now_ms`` would start."""
        last = self._last_physical
        if now_ms > last:
            return now_ms, 0
        start = self._last_logical + 1
        if start + count - 1 > LOGICAL_MAX:
            return last + 1, 0
        return last, start

    def would_grant(self, count: int, now_ms: int) -> bool:
        """Whether ``try_grant(count, now_ms)`` would succeed without an extension."""
        if self._epoch is None:
            return False
        physical, _ = self._next(count, now_ms)
        return physical <= self._high_water

    def try_grant(self, count: int, now_ms: int) -> Grant:
        """``count`` consecutive timestamps, strictly above every earlier grant."""
        check_count(count)
        epoch = self._epoch
        if epoch is None:
            raise NotLeader("the allocator is not serving")
        physical, logical = self._next(count, now_ms)
        if physical > self._high_water:
            if physical > MAX_PHYSICAL:
                raise AdvanceOutOfRange(f"physical {physical} ms does not fit in 46 bits")
            raise WindowExhausted(f"physical {physical} is past the high-water {self._high_water}")
        self._last_physical = physical
        self._last_logical = logical + count - 1
        return Grant(physical, logical, count, epoch)

    # -- window extension -------------------------------------------------------------------------

    def prepare_window_extension(self, now_ms: int) -> Extension:
        """The next high-water to persist: ``max(H + 1, now, last + 1) + window_ahead``."""
        return self.prepare_extension(now_ms, self.window_ahead_ms)

    def prepare_extension(self, now_ms: int, ahead_ms: int) -> Extension:
        """A high-water ``max(H + 1, now, last + 1) + ahead_ms``: strictly above ``H``
        (a stamping lease's bound and id use this with the lease's TTL)."""
        epoch = self._epoch
        if epoch is None:
            raise NotLeader("the allocator is not serving")
        base = max(self._high_water + 1, now_ms, self._last_physical + 1)
        requested = base + ahead_ms
        if requested > MAX_PHYSICAL:
            raise AdvanceOutOfRange(f"high-water {requested} ms does not fit in 46 bits")
        return Extension(epoch, requested)

    def prepare_renewal(self, now_ms: int, min_ahead_ms: int) -> Extension:
        """A high-water write for a lease renewal: ``H`` itself while it stays at least
        ``min_ahead_ms`` ahead of the clock and of the last grant (re-persisting it proves
        leadership without moving the bound), else a window extension."""
        epoch = self._epoch
        if epoch is None:
            raise NotLeader("the allocator is not serving")
        if self._high_water >= max(now_ms, self._last_physical + 1) + min_ahead_ms:
            return Extension(epoch, self._high_water)
        return self.prepare_window_extension(now_ms)

    def commit_window_extension(self, ext: Extension, durable_ms: int) -> bool:
        """Applies a persisted high-water. False (ignored) if the epoch changed meanwhile or
        it does not advance the window."""
        if self._epoch is None or ext.epoch != self._epoch:
            return False
        if durable_ms <= self._high_water:
            return False
        if durable_ms > MAX_PHYSICAL:
            raise AdvanceOutOfRange(f"high-water {durable_ms} ms does not fit in 46 bits")
        self._high_water = durable_ms
        return True
