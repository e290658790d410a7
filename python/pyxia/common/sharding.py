"""Shard routing: which shard of a namespace owns a key.

A key (or its partition key, when the request has one) is hashed to a uint32 with the low 32 bits
of XXH3-64 (seed 0) of its UTF-8 bytes (Oxia ``common/hash/hash.go``: ``uint32(xxh3.HashString)``;
router ``XXHASH3`` in ``ShardKeyRouter``). Each shard owns a range of hashes with both ends
inclusive (``Int32HashRange``), and a namespace's initial shards split ``0..2^32-1`` as Oxia's
``oxiad/common/sharding/shards.go`` does.

Note: the official ``oxia`` Python client 0.2.1 hashes with XXH64, not XXH3 (its
``service_discovery.py``), so with more than one shard it routes keys to other shards than the Go
client and Oxia's servers expect.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import xxhash

__all__ = [
    "MAX_HASH",
    "HashRange",
    "NoShardForHash",
    "ShardRouter",
    "generate_shards",
    "route",
    "routing_hash",
    "xxh3_32",
]

MAX_HASH: Final = 0xFFFFFFFF
"""The largest key hash (hashes are uint32)."""


def xxh3_32(key: str) -> int:
    """The key hash Oxia routes by: the low 32 bits of XXH3-64 of the UTF-8 key."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) & MAX_HASH


def routing_hash(key: str, partition_key: str | None = None) -> int:
    """The hash a request routes by: the partition key's when one is set (even empty, as in the
    Go client, where it is a non-nil pointer), else the key's."""
    return xxh3_32(key if partition_key is None else partition_key)


@dataclass(frozen=True, slots=True, order=True)
class HashRange:
    """The hashes ``min_inclusive..max_inclusive`` (both ends inclusive, like Oxia's
    ``Int32HashRange``)."""

    min_inclusive: int
    max_inclusive: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_inclusive <= self.max_inclusive <= MAX_HASH:
            raise ValueError(f"invalid hash range [{self.min_inclusive}, {self.max_inclusive}]")

    def contains(self, key_hash: int) -> bool:
        return self.min_inclusive <= key_hash <= self.max_inclusive

    @property
    def size(self) -> int:
        """How many hashes the range holds."""
        return self.max_inclusive - self.min_inclusive + 1

    def __str__(self) -> str:
        return f"{self.min_inclusive:#010x}-{self.max_inclusive:#010x}"


# From 65537 shards on, Oxia's uint32 arithmetic no longer always yields a partition of the hash
# space (the last lower bound wraps to 0 and overlaps everything); pyxia refuses such counts
# instead of reproducing that.
_MAX_GENERATED_SHARDS: Final = 1 << 16


def generate_shards(n: int) -> list[HashRange]:
    """The initial hash ranges of a namespace with ``n`` shards, in shard order (shard ids are
    assigned consecutively from a base id). Every range but the last holds
    ``(2^32 - 1) // n + 1`` hashes; the last one ends at ``2^32 - 1`` and so holds the
    remainder, which is never more than the others."""
    if not 1 <= n <= _MAX_GENERATED_SHARDS:
        raise ValueError(f"shard count must be in [1, {_MAX_GENERATED_SHARDS}]: {n}")
    bucket = MAX_HASH // n + 1
    ranges = [HashRange(i * bucket, i * bucket + bucket - 1) for i in range(n - 1)]
    ranges.append(HashRange((n - 1) * bucket, MAX_HASH))
    return ranges


class NoShardForHash(LookupError):
    """No range contains the hash (the assignments do not cover the hash space)."""


def route(key_hash: int, ranges: Sequence[HashRange]) -> int:
    """The index in ``ranges`` of the first range containing ``key_hash`` (a linear scan; use
    :class:`ShardRouter` for many lookups)."""
    for i, r in enumerate(ranges):
        if r.contains(key_hash):
            return i
    raise NoShardForHash(f"no shard owns hash {key_hash:#010x}")


class ShardRouter:
    """Routes hashes and keys to shard ids by binary search over non-overlapping ranges."""

    __slots__ = ("_maxes", "_mins", "_shards")

    def __init__(self, assignments: Mapping[int, HashRange] | Iterable[tuple[int, HashRange]]):
        items = assignments.items() if isinstance(assignments, Mapping) else assignments
        ordered = sorted(((r, shard) for shard, r in items), key=lambda e: e[0])
        for (prev, prev_shard), (cur, cur_shard) in itertools.pairwise(ordered):
            if cur.min_inclusive <= prev.max_inclusive:
                raise ValueError(
                    f"hash ranges of shards {prev_shard} ({prev}) and {cur_shard} ({cur}) overlap"
                )
        self._mins = [r.min_inclusive for r, _ in ordered]
        self._maxes = [r.max_inclusive for r, _ in ordered]
        self._shards = [shard for _, shard in ordered]

    def ranges(self) -> dict[int, HashRange]:
        """Every shard's hash range."""
        return {
            shard: HashRange(lo, hi)
            for shard, lo, hi in zip(self._shards, self._mins, self._maxes, strict=True)
        }

    def shard_for_hash(self, key_hash: int) -> int:
        i = bisect.bisect_right(self._mins, key_hash) - 1
        if i < 0 or key_hash > self._maxes[i]:
            raise NoShardForHash(f"no shard owns hash {key_hash:#010x}")
        return self._shards[i]

    def shard_for_key(self, key: str, partition_key: str | None = None) -> int:
        return self.shard_for_hash(routing_hash(key, partition_key))

    @property
    def shards(self) -> list[int]:
        """The shard ids, in hash order."""
        return list(self._shards)

    def __len__(self) -> int:
        return len(self._shards)
