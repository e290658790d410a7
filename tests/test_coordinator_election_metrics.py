"""The coordinator's election metrics per shard (Oxia's labels) or per namespace
(``--no-per-shard-election-metrics``: at 10,000 shards the per-shard histograms made a 70 MB
exposition); the term gauge is per shard either way."""

from __future__ import annotations

from prometheus_client import REGISTRY

from pyxia.coordinator.metrics import ShardElectionMetrics

LATENCY = "oxia_coordinator_leader_election_latency_milliseconds_count"
TERM = "oxia_coordinator_term"


def count(namespace: str, shard: str) -> float | None:
    return REGISTRY.get_sample_value(LATENCY, {"oxia_namespace": namespace, "shard": shard})


def test_per_namespace_election_metrics_aggregate_the_shards() -> None:
    shards = [ShardElectionMetrics("m-agg", s, per_shard=False) for s in (1, 2, 3)]
    for i, m in enumerate(shards):
        m.latency.observe(5.0)
        m.term.set(10 + i)
    assert count("m-agg", "") == 3
    assert count("m-agg", "1") is None
    assert REGISTRY.get_sample_value(TERM, {"oxia_namespace": "m-agg", "shard": "2"}) == 11
    for m in shards:
        m.close()


def test_per_shard_election_metrics_by_default() -> None:
    m = ShardElectionMetrics("m-per", 7)
    m.latency.observe(5.0)
    m.failed.inc()
    assert count("m-per", "7") == 1
    assert count("m-per", "") is None
    m.close()
