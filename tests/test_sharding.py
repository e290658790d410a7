"""Key hashing, initial shard ranges and routing (pyxia.common.sharding) against Go outputs and
Oxia's shards_test.go."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.common.sharding import (
    MAX_HASH,
    HashRange,
    NoShardForHash,
    ShardRouter,
    generate_shards,
    route,
    routing_hash,
    xxh3_32,
)

# uint32(xxh3.HashString(key)) as printed by github.com/zeebo/xxh3 v1.1.0 (what Oxia uses).
GO_XXH3_32 = {
    "": 953390274,
    "a": 513166879,
    "foo": 125730186,
    "/a/b/c": 2073594420,
    "hello world": 1088854155,
    "日本語": 2153795767,
    "key-0000000000": 2767456261,
    "__oxia/commit-offset": 2822987730,
    "a somewhat longer key that exceeds sixteen bytes": 324228632,
    "x-long-key" + "-padding" * 25: 2319996201,
}


@pytest.mark.parametrize(("key", "expected"), GO_XXH3_32.items())
def test_xxh3_32_matches_go(key: str, expected: int) -> None:
    assert xxh3_32(key) == expected


def test_official_python_client_hash_differs() -> None:
    # oxia==0.2.1 routes with xxh64 (low 32 bits), not xxh3: documented incompatibility.
    xxhash = pytest.importorskip("xxhash")
    assert xxhash.xxh64_intdigest(b"a") & MAX_HASH != xxh3_32("a")


def test_routing_hash_prefers_partition_key() -> None:
    assert routing_hash("k") == xxh3_32("k")
    assert routing_hash("k", "p") == xxh3_32("p")
    assert routing_hash("k", "") == xxh3_32("")


# From Oxia's shards_test.go
@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [(0, MAX_HASH)]),
        (2, [(0, 2147483647), (2147483648, MAX_HASH)]),
        (3, [(0, 1431655765), (1431655766, 2863311531), (2863311532, MAX_HASH)]),
        (
            4,
            [
                (0, 1073741823),
                (1073741824, 2147483647),
                (2147483648, 3221225471),
                (3221225472, MAX_HASH),
            ],
        ),
        # printed by Go with shards.go's arithmetic
        (
            10,
            [
                (0, 429496729),
                (429496730, 858993459),
                (858993460, 1288490189),
                (1288490190, 1717986919),
                (1717986920, 2147483649),
                (2147483650, 2576980379),
                (2576980380, 3006477109),
                (3006477110, 3435973839),
                (3435973840, 3865470569),
                (3865470570, MAX_HASH),
            ],
        ),
    ],
)
def test_generate_shards_matches_oxia(n: int, expected: list[tuple[int, int]]) -> None:
    assert [(r.min_inclusive, r.max_inclusive) for r in generate_shards(n)] == expected


def check_partition(n: int) -> None:
    ranges = generate_shards(n)
    assert len(ranges) == n
    assert ranges[0].min_inclusive == 0
    assert ranges[-1].max_inclusive == MAX_HASH
    for prev, cur in itertools.pairwise(ranges):
        assert cur.min_inclusive == prev.max_inclusive + 1
    assert sum(r.size for r in ranges) == MAX_HASH + 1
    # every range but the last has the same size; the last is not larger
    assert len({r.size for r in ranges[:-1]}) <= 1
    assert ranges[-1].size <= ranges[0].size


@given(st.integers(1, 64))
def test_generated_ranges_partition_the_hash_space(n: int) -> None:
    check_partition(n)


@pytest.mark.parametrize("n", [100, 1000, 4097, 65535, 65536])
def test_many_generated_ranges_partition_the_hash_space(n: int) -> None:
    check_partition(n)


@pytest.mark.parametrize("n", [0, -1, 65537])
def test_generate_shards_rejects_bad_counts(n: int) -> None:
    with pytest.raises(ValueError, match="shard count"):
        generate_shards(n)


@given(st.integers(1, 64), st.integers(0, MAX_HASH))
def test_route_picks_the_unique_containing_range(n: int, h: int) -> None:
    ranges = generate_shards(n)
    i = route(h, ranges)
    assert [j for j, r in enumerate(ranges) if r.contains(h)] == [i]
    router = ShardRouter({100 + j: r for j, r in enumerate(ranges)})
    assert router.shard_for_hash(h) == 100 + i


@given(st.integers(1, 16), st.text(max_size=10), st.none() | st.text(max_size=10))
def test_router_routes_keys_by_hash(n: int, key: str, partition_key: str | None) -> None:
    ranges = generate_shards(n)
    # shuffled, as assignments arrive keyed by shard id
    router = ShardRouter(reversed([(7 * j, r) for j, r in enumerate(ranges)]))
    shard = router.shard_for_key(key, partition_key)
    assert ranges[shard // 7].contains(routing_hash(key, partition_key))
    assert router.shards == [7 * j for j in range(n)]
    assert len(router) == n


def test_route_gaps_and_overlaps() -> None:
    ranges = [HashRange(0, 9), HashRange(20, MAX_HASH)]
    with pytest.raises(NoShardForHash):
        route(15, ranges)
    with pytest.raises(NoShardForHash):
        ShardRouter({1: ranges[0], 2: ranges[1]}).shard_for_hash(15)
    with pytest.raises(ValueError, match="overlap"):
        ShardRouter({1: HashRange(0, 10), 2: HashRange(10, 20)})
    with pytest.raises(NoShardForHash):
        ShardRouter({}).shard_for_hash(0)


@pytest.mark.parametrize(("lo", "hi"), [(-1, 5), (5, 4), (0, MAX_HASH + 1)])
def test_hash_range_validation(lo: int, hi: int) -> None:
    with pytest.raises(ValueError, match="invalid hash range"):
        HashRange(lo, hi)


def test_hash_range_str() -> None:
    assert str(HashRange(0, MAX_HASH)) == "0x00000000-0xffffffff"
