"""The coordinator's Prometheus metrics, with Oxia's names, units and labels (what Oxia's
``oxia-coordinator`` dashboard reads): elections per shard (``oxia_namespace``, ``shard``),
the data servers' liveness per ``node``, and the metadata provider's reads, writes and size.

Invariants:
- Counted per election, per probe or per metadata call: never on a data path.
- Per shard, each election histogram is 23 series: at 10,000 shards the three of them made a
  70 MB exposition that took the coordinator most of a minute to write, holding the GIL, at
  every scrape. ``per_shard=False`` (``--no-per-shard-election-metrics``) observes a shard's
  election latencies and failures under ``shard=""``, one set per namespace; the term gauge
  stays per shard (one series each).
- A shard's or node's gauges leave the exposition when its controller closes (a deleted shard,
  a removed server, a coordinator that lost its leadership), so only the leading coordinator
  reports cluster state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from pyxia.metrics import LATENCY_BUCKETS_MS, SHARD

LEADER_ELECTION_LATENCY = Histogram(
    "oxia_coordinator_leader_election_latency_milliseconds",
    "The time it takes to elect a leader for the shard",
    SHARD,
    buckets=LATENCY_BUCKETS_MS,
)
LEADER_ELECTION_FAILED = Counter(
    "oxia_coordinator_leader_election_failed", "The number of failed leader elections", SHARD
)
NEW_TERM_QUORUM_LATENCY = Histogram(
    "oxia_coordinator_new_term_quorum_latency_milliseconds",
    "The time it takes to take the ensemble of data servers to a new term",
    SHARD,
    buckets=LATENCY_BUCKETS_MS,
)
BECOME_LEADER_LATENCY = Histogram(
    "oxia_coordinator_become_leader_latency_milliseconds",
    "The time it takes for the new elected leader to start",
    SHARD,
    buckets=LATENCY_BUCKETS_MS,
)
TERM = Gauge("oxia_coordinator_term", "The term of the shard", SHARD)
NODE_RUNNING = Gauge(
    "oxia_coordinator_node_running",
    "Whether the dataServer is considered to be running by the coordinator",
    ["node"],
)
NODE_HEALTH_CHECKS_FAILED = Counter(
    "oxia_coordinator_node_health_checks_failed",
    "The number of failed health checks to a dataServer",
    ["node"],
)
METADATA_GET_LATENCY = Histogram(
    "oxia_coordinator_metadata_get_latency_milliseconds",
    "Latency for reading coordinator metadata",
    buckets=LATENCY_BUCKETS_MS,
)
METADATA_STORE_LATENCY = Histogram(
    "oxia_coordinator_metadata_store_latency_milliseconds",
    "Latency for storing coordinator metadata",
    buckets=LATENCY_BUCKETS_MS,
)
METADATA_SIZE = Gauge(
    "oxia_coordinator_metadata_size_bytes",
    "The size of the coordinator metadata (the cluster status, serialized)",
)


class ShardElectionMetrics:
    """One shard's children, bound when its controller starts."""

    __slots__ = ("become_leader", "failed", "labels", "latency", "new_term_quorum", "term")

    def __init__(self, namespace: str, shard: int, *, per_shard: bool = True) -> None:
        self.labels = (namespace, str(shard))
        elections = self.labels if per_shard else (namespace, "")
        self.latency = LEADER_ELECTION_LATENCY.labels(*elections)
        self.failed = LEADER_ELECTION_FAILED.labels(*elections)
        self.new_term_quorum = NEW_TERM_QUORUM_LATENCY.labels(*elections)
        self.become_leader = BECOME_LEADER_LATENCY.labels(*elections)
        self.term = TERM.labels(*self.labels)

    def close(self) -> None:
        """The shard's term leaves the exposition (its controller is gone)."""
        try:
            TERM.remove(*self.labels)
        except KeyError:
            pass


class NodeMetrics:
    """One data server's liveness children."""

    __slots__ = ("failed_checks", "node", "running")

    def __init__(self, node: str) -> None:
        self.node = node
        self.running = NODE_RUNNING.labels(node)
        self.running.set(0)
        self.failed_checks = NODE_HEALTH_CHECKS_FAILED.labels(node)

    def close(self) -> None:
        try:
            NODE_RUNNING.remove(self.node)
        except KeyError:
            pass


def instrument_provider(provider: Any) -> None:
    """Times the metadata provider's ``get`` and ``store`` and records the size of what it
    stores (Oxia's ``oxia_coordinator_metadata_*``): its bound methods are wrapped in place,
    once."""
    if getattr(provider, "_pyxia_metrics", False):
        return
    get: Callable[[], Awaitable[Any]] = provider.get
    store: Callable[..., Awaitable[Any]] = provider.store

    async def timed_get() -> Any:
        started = time.perf_counter()
        try:
            return await get()
        finally:
            METADATA_GET_LATENCY.observe((time.perf_counter() - started) * 1000.0)

    async def timed_store(status: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            version = await store(status, *args, **kwargs)
        finally:
            METADATA_STORE_LATENCY.observe((time.perf_counter() - started) * 1000.0)
        METADATA_SIZE.set(status.ByteSize())
        return version

    provider.get = timed_get
    provider.store = timed_store
    provider._pyxia_metrics = True
