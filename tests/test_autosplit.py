"""Auto-split: the monitor's rules (pure: rates, stabilization, candidates) and, in-process, a
namespace under write load that is split once and no further than its shard limit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster import Cluster
from pyxia.client.async_client import AsyncClient
from pyxia.config import AutoSplitConfig, ConfigError, NamespaceConfig, parse_auto_split
from pyxia.coordinator.autosplit import MIB, Sample, ShardTracker, pick
from pyxia.coordinator.model import DELETING, STEADY
from servers import wait_until
from test_coordinator import Env, make_config, steady
from test_split_coordinator import Writers, new_server

CFG = AutoSplitConfig(
    enabled=True,
    max_shard_size_mb=100,
    max_throughput_ops=10,
    stabilization_period=5.0,
    cooldown_period=60.0,
)


def test_rate_needs_two_samples_of_the_same_leader() -> None:
    t = ShardTracker()
    assert t.observe(Sample("a", 0, 1000, 0.0), CFG) == 0.0
    assert t.ops_per_s == 0.0
    t.observe(Sample("a", 0, 1200, 10.0), CFG)
    assert t.ops_per_s == 20.0
    t.observe(Sample("b", 0, 5000, 20.0), CFG)  # a new leader: its counters are its own
    assert t.ops_per_s == 0.0
    t.observe(Sample("b", 0, 10, 30.0), CFG)  # went back: restarted
    assert t.ops_per_s == 0.0


def test_overshoot_counts_only_after_the_stabilization_period() -> None:
    t = ShardTracker()
    big = 300 * MIB  # 3x the size limit
    assert t.observe(Sample("a", big, 0, 0.0), CFG) == 0.0
    assert t.observe(Sample("a", big, 0, 4.0), CFG) == 0.0
    assert t.observe(Sample("a", big, 0, 5.0), CFG) == pytest.approx(3.0)
    # One sample under the limit restarts the clock.
    assert t.observe(Sample("a", MIB, 0, 6.0), CFG) == 0.0
    assert t.observe(Sample("a", big, 0, 7.0), CFG) == 0.0
    assert t.observe(Sample("a", big, 0, 12.0), CFG) == pytest.approx(3.0)


def test_the_larger_of_size_and_rate_counts() -> None:
    t = ShardTracker()
    cfg = dataclasses.replace(CFG, stabilization_period=0.0)
    t.observe(Sample("a", 150 * MIB, 0, 0.0), cfg)
    assert t.observe(Sample("a", 150 * MIB, 400, 10.0), cfg) == pytest.approx(4.0)


def test_candidates_most_overloaded_first() -> None:
    assert pick({("ns", 1): 1.5, ("ns", 2): 0.0, ("ns", 3): 4.0, ("x", 4): 1.5}) == [
        ("ns", 3),
        ("ns", 1),
        ("x", 4),
    ]


def test_config_keys_and_defaults() -> None:
    assert parse_auto_split({}) == AutoSplitConfig()
    cfg = parse_auto_split(
        {
            "enabled": True,
            "maxShardSizeMb": 10,
            "maxThroughputOps": 0,
            "stabilizationPeriod": "0s",
            "cooldownPeriod": "2m",
            "maxShardsPerNamespace": 8,
            "collectionInterval": "500ms",
        }
    )
    assert cfg == AutoSplitConfig(True, 10, 10000, 0.0, 120.0, 8, 0.5)
    with pytest.raises(ConfigError, match="unknown field"):
        parse_auto_split({"maxShardSize": 1})
    with pytest.raises(ConfigError, match="enabled"):
        parse_auto_split({"enabled": "yes"})
    with pytest.raises(ConfigError, match="collectionInterval"):
        parse_auto_split({"collectionInterval": "0s"})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cluster = await Cluster.start(tmp_path, 3)
    cfg = make_config(cluster.nodes, (NamespaceConfig("default", 1, 3),))
    auto = AutoSplitConfig(
        enabled=True,
        max_throughput_ops=5,
        stabilization_period=0.3,
        cooldown_period=0.0,
        max_shards_per_namespace=2,
        collection_interval=0.2,
    )
    box = [dataclasses.replace(cfg, auto_split=auto)]
    server = new_server(tmp_path / "metadata", box)
    await server.start()
    e = Env(cluster, server, box)
    try:
        await server.wait_leading()
        await wait_until(lambda: steady(e), what="steady")
        yield e
    finally:
        await server.close()
        await cluster.close()


async def test_a_busy_shard_is_split_up_to_the_namespace_limit(env: Env) -> None:
    c = env.coordinator
    async with AsyncClient(env.cluster.nodes[0].public, request_timeout_s=20) as client:
        writers = Writers(client, 2)

        def live() -> list[int]:
            ns = c.status.namespaces["default"]
            return sorted(s for s, m in ns.shards.items() if m.status != DELETING)

        await wait_until(
            lambda: (
                len(live()) == 2
                and all(c.status.namespaces["default"].shards[s].status == STEADY for s in live())
                and not c.split_controllers
            ),
            timeout=60,
            what="an auto-split",
        )
        evaluations = c.auto_splitter.evaluations
        await wait_until(
            lambda: c.auto_splitter.evaluations > evaluations + 5, what="more evaluations"
        )
        assert len(live()) == 2  # the limit: no further split
        assert c.auto_splitter.splits_started == 1
        await writers.stop()
        assert writers.failures == []
        for key, version in writers.acked.items():
            assert (await client.get(key)).version.version_id == version
