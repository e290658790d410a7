"""Dense per-key sequences (tsoracle's GetSeq / GetSeqBatch): the rules, pure and synchronous.

A sequence key (1 to 128 bytes of UTF-8) has a counter, 0 until its first block. A block of
``count`` ordinals is ``[start, start + count)`` with ``start`` the counter before the block;
the counter moves to ``start + count`` in the same replicated write that grants the block, so:

- blocks of one key never overlap and leave no gap between what the log holds (gap-free);
- a block is answered only once its write committed, and a committed counter never goes
  back, so no ordinal is ever handed out twice — across leader changes and restarts;
- a write that committed but whose answer was lost spends its block (never reused); a write
  whose outcome is unknown to the leader is answered "uncertain" (``SeqUncertain``).

:class:`SequenceTable` is one leader term's view of the counters: the value each key will have
once every write this leader logged is applied. The oracle seeds it from the shard's DB on
first use of a key in the term (the DB is authoritative then: the leader applied every entry of
earlier terms before leading, and every write of its own term to a counter went through this
table), plans a request (:meth:`SequenceTable.plan`, no mutation), logs the write, and applies
the plan (:meth:`SequenceTable.apply`) as soon as the write is in the log — the next plan builds
on it, committed or not. A new leader term starts from an empty table.

Invariants (property-tested in ``tests/test_tso_sequences.py``): for any sequence of plans,
the blocks of one key are contiguous and disjoint in plan order; a refused plan (a counter
past 2^64-1, the key cap) changes nothing; the number of keys never passes ``max_keys``.

Bounds: key length (:data:`MAX_SEQ_KEY_BYTES`), count per key and call
(``max_count``, 65,536 by default as in tsoracle), keys per batch (``max_batch_keys``, 128),
distinct keys in the namespace (``max_keys``, 10,000 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyxia.common import keys
from pyxia.errors import InvalidArgument
from pyxia.tso.errors import SeqKeysExhausted, SeqOverflow, TsoStateCorrupt

MAX_SEQ_KEY_BYTES = 128
DEFAULT_MAX_SEQ_COUNT = 65_536
DEFAULT_MAX_SEQ_BATCH_KEYS = 128
DEFAULT_MAX_SEQ_KEYS = 10_000
U64_MAX = (1 << 64) - 1

SEQ_COUNTER_PREFIX = keys.INTERNAL_KEY_PREFIX + "tso/seq/"
"""A key's counter lives at this prefix + the key's UTF-8 bytes in hex (ASCII decimal)."""
SEQ_KEY_COUNT_KEY = keys.INTERNAL_KEY_PREFIX + "tso/seq-keys"
"""How many distinct sequence keys exist (ASCII decimal), updated with every new key."""


@dataclass(frozen=True, slots=True)
class SeqEntry:
    key: str
    count: int


@dataclass(frozen=True, slots=True)
class SeqPlan:
    """What one GetSeq/GetSeqBatch will write: ``starts[i]`` for ``entries[i]``; the counters
    move to ``start + count``; ``keys_after`` is the key count once applied."""

    entries: tuple[SeqEntry, ...]
    starts: tuple[int, ...]
    new_keys: int
    keys_after: int

    def counters(self) -> list[tuple[str, int]]:
        """``(key, new counter)`` for every entry."""
        return [(e.key, s + e.count) for e, s in zip(self.entries, self.starts, strict=True)]


def check_key(key: str) -> None:
    n = len(key.encode())
    if not 1 <= n <= MAX_SEQ_KEY_BYTES:
        raise InvalidArgument(
            f"tso: a sequence key must be 1 to {MAX_SEQ_KEY_BYTES} bytes of UTF-8, got {n}"
        )


def check_entries(
    entries: Sequence[SeqEntry],
    *,
    max_count: int = DEFAULT_MAX_SEQ_COUNT,
    max_batch_keys: int = DEFAULT_MAX_SEQ_BATCH_KEYS,
) -> None:
    """A request's shape: 1 to ``max_batch_keys`` entries, distinct keys, valid keys, counts
    1 to ``max_count``. Raises InvalidArgument (nothing is advanced)."""
    if not entries:
        raise InvalidArgument("tso: a sequence batch needs at least one entry")
    if len(entries) > max_batch_keys:
        raise InvalidArgument(
            f"tso: the batch has {len(entries)} entries; the maximum is {max_batch_keys}"
        )
    seen: set[str] = set()
    for e in entries:
        check_key(e.key)
        if e.key in seen:
            raise InvalidArgument(f"tso: duplicate key in the batch: {e.key[:64]!r}")
        seen.add(e.key)
        if not 1 <= e.count <= max_count:
            raise InvalidArgument(
                f"tso: a sequence count must be between 1 and {max_count}, got {e.count}"
            )


def counter_key(key: str) -> str:
    """The internal key holding ``key``'s counter (hex: any UTF-8 key, one path segment)."""
    return SEQ_COUNTER_PREFIX + key.encode().hex()


def encode_counter(value: int) -> bytes:
    return str(value).encode()


def decode_counter(raw: bytes, what: str = "sequence counter") -> int:
    if not raw.isdigit() or len(raw) > 20 or int(raw) > U64_MAX:
        raise TsoStateCorrupt(f"tso: corrupt {what} record {raw[:40]!r}")
    return int(raw)


class SequenceTable:
    """One leader term's counters (see the module docstring)."""

    __slots__ = ("_counters", "_keys", "max_keys")

    def __init__(self, max_keys: int = DEFAULT_MAX_SEQ_KEYS) -> None:
        self.max_keys = max_keys
        # key -> counter after every logged write; None: the key does not exist yet
        self._counters: dict[str, int | None] = {}
        self._keys: int | None = None

    @property
    def key_count(self) -> int | None:
        """Distinct keys once every logged write is applied (None until seeded)."""
        return self._keys

    def needs(self, key: str) -> bool:
        """Whether ``key`` must be seeded from storage first."""
        return key not in self._counters

    def seed(self, key: str, stored: int | None) -> None:
        """The stored counter of a key not seen in this term (None: absent)."""
        if key not in self._counters:
            self._counters[key] = stored

    def seed_key_count(self, stored: int) -> None:
        if self._keys is None:
            self._keys = stored

    def counter(self, key: str) -> int | None:
        return self._counters.get(key)

    def plan(self, entries: Sequence[SeqEntry]) -> SeqPlan:
        """The blocks for ``entries`` (already checked, every key seeded); raises SeqOverflow or
        SeqKeysExhausted without changing anything."""
        keys_now = self._keys
        if keys_now is None:
            raise RuntimeError("the key count is not seeded")
        starts: list[int] = []
        new = 0
        for e in entries:
            if e.key not in self._counters:
                raise RuntimeError(f"sequence key {e.key!r} is not seeded")
            current = self._counters[e.key]
            if current is None:
                new += 1
                current = 0
            if current + e.count > U64_MAX:  # the counter itself is a u64
                raise SeqOverflow(
                    f"tso: the sequence {e.key[:64]!r} is at {current}: a block of {e.count} "
                    "would move its counter past 2^64-1"
                )
            starts.append(current)
        if new and keys_now + new > self.max_keys:
            raise SeqKeysExhausted(
                f"tso: {new} new sequence key(s) would pass the cap of {self.max_keys} keys"
            )
        return SeqPlan(tuple(entries), tuple(starts), new, keys_now + new)

    def apply(self, plan: SeqPlan) -> None:
        """The plan's write is in the log: later plans build on it."""
        for key, value in plan.counters():
            self._counters[key] = value
        self._keys = plan.keys_after
