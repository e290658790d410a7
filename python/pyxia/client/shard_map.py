"""A namespace's shards as the client sees them: hash ranges, leaders, key order. Built from one
``ShardAssignments`` snapshot; immutable, so any thread may route with it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyxia.common import keys
from pyxia.common.keys import KeyEncoding
from pyxia.common.sharding import HashRange, ShardRouter, routing_hash
from pyxia.proto import client_pb2


class KeyOrder:
    """The order of keys in the namespace's shards, to pick and merge results across shards
    (Oxia ``oxia/key_order.go``): the namespace's encoding, or Oxia's legacy slash-aware order
    when the server does not say."""

    __slots__ = ("encoding", "sort_key")

    def __init__(self, key_sorting: int) -> None:
        self.encoding: KeyEncoding | None
        self.sort_key: Callable[[str], Any]
        if key_sorting == client_pb2.KEY_SORTING_NATURAL:
            self.encoding = keys.NATURAL
        elif key_sorting == client_pb2.KEY_SORTING_HIERARCHICAL:
            self.encoding = keys.HIERARCHICAL
        else:
            self.encoding = None
        if self.encoding is not None:
            self.sort_key = self.encoding.encode
        else:
            self.sort_key = functools.cmp_to_key(keys.compare_with_slash)

    def index_sort_key(self, index_name: str, secondary_key: str, primary_key: str) -> Any:
        """Where a secondary-index entry sits in a shard (its internal key's place)."""
        return self.sort_key(keys.index_entry_key(index_name, secondary_key, primary_key))

    def compare(self, a: str, b: str) -> int:
        ka, kb = self.sort_key(a), self.sort_key(b)
        return int(ka > kb) - int(ka < kb)


@dataclass(frozen=True)
class ShardMap:
    namespace: str
    router: ShardRouter
    leaders: dict[int, str]
    order: KeyOrder

    @classmethod
    def from_assignments(
        cls, namespace: str, assignments: client_pb2.ShardAssignments
    ) -> ShardMap | None:
        """The namespace's map, or None if the snapshot does not hold the namespace."""
        if namespace not in assignments.namespaces:
            return None
        nsa = assignments.namespaces[namespace]
        ranges: dict[int, HashRange] = {}
        leaders: dict[int, str] = {}
        for a in nsa.assignments:
            r = a.int32_hash_range
            ranges[a.shard] = HashRange(r.min_hash_inclusive, r.max_hash_inclusive)
            leaders[a.shard] = a.leader
        return cls(namespace, ShardRouter(ranges), leaders, KeyOrder(nsa.key_sorting))

    def shard_for(self, key: str, partition_key: str | None = None) -> int:
        return self.router.shard_for_hash(routing_hash(key, partition_key))

    @property
    def shards(self) -> list[int]:
        return self.router.shards

    def leader(self, shard: int) -> str | None:
        return self.leaders.get(shard) or None
