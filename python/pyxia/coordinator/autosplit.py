"""Auto-split (Oxia 0.17's ``autoSplit``): the coordinator samples every steady shard's leader
(GetStatus shard stats) each ``collectionInterval`` and splits the shard that overshoots its
limits the most, once it has overshot for ``stabilizationPeriod``.

The rules (pure, in :class:`ShardTracker` and :func:`pick`), as Oxia's monitor has them:

- a shard's *overshoot* is the larger of its DB size over ``maxShardSizeMb`` and its operation
  rate (reads + writes per second, between two samples of the same leader) over
  ``maxThroughputOps``; a new leader (or counters that went back: a restart) gives no rate
  until its second sample;
- it must stay above 1 for the whole stabilization period (any sample at or below 1 restarts
  the clock);
- at most one split is started per ``cooldownPeriod``, none while any split is in progress, none
  in a namespace that has ``maxShardsPerNamespace`` shards already, none in the TSO namespace;
- the most overloaded candidate goes first; if its split is refused the next is tried.

The loop (:class:`AutoSplitter`) is the I/O around them; it does nothing while disabled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc

from pyxia.common.channels import ChannelPool
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.common.instance_id import CallMetadata
from pyxia.config import AutoSplitConfig, ClusterConfig, NamespaceConfig
from pyxia.coordinator.model import DELETING, STEADY, shards
from pyxia.errors import MetadataBadVersion, PyxiaError
from pyxia.proto import metadata_pb2, replication_pb2

log = logging.getLogger("pyxia.coordinator.autosplit")


class AutoSplitCoordinator(Protocol):
    """What the auto-splitter uses of the coordinator that owns it
    (:class:`pyxia.coordinator.coordinator.Coordinator` satisfies it; this module never imports
    that one, which builds the auto-splitter)."""

    status: metadata_pb2.ClusterStatus
    config: ClusterConfig
    channels: ChannelPool

    @property
    def split_controllers(self) -> Mapping[int, object]: ...

    def call_metadata(self) -> CallMetadata: ...

    async def ensure_bound(self, node: str) -> None: ...

    def namespace_config(self, name: str) -> NamespaceConfig | None: ...

    async def split_shard(
        self,
        namespace: str,
        shard: int,
        split_point: int | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, int]: ...


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    leader: str
    db_size_bytes: int
    ops_total: int
    at: float  # seconds, any monotonic clock


@dataclass(slots=True)
class ShardTracker:
    """What the monitor remembers of one shard between samples."""

    last: Sample | None = None
    ops_per_s: float = 0.0
    exceeding_since: float | None = None

    def observe(self, s: Sample, cfg: AutoSplitConfig) -> float:
        """Takes a sample; returns the shard's overshoot ratio once it has lasted the
        stabilization period (else 0)."""
        last = self.last
        if last is None or last.leader != s.leader or s.ops_total < last.ops_total:
            self.ops_per_s = 0.0
        elif s.at > last.at:
            self.ops_per_s = (s.ops_total - last.ops_total) / (s.at - last.at)
        self.last = s
        size_ratio = (s.db_size_bytes / MIB) / cfg.max_shard_size_mb
        rate_ratio = self.ops_per_s / cfg.max_throughput_ops
        overshoot = max(size_ratio, rate_ratio)
        if overshoot <= 1.0:
            self.exceeding_since = None
            return 0.0
        if self.exceeding_since is None:
            self.exceeding_since = s.at
        if s.at - self.exceeding_since < cfg.stabilization_period:
            return 0.0
        return overshoot


def pick(overshoots: Mapping[tuple[str, int], float]) -> list[tuple[str, int]]:
    """The candidates (overshoot > 1), most overloaded first (then by shard id)."""
    over = [(k, r) for k, r in overshoots.items() if r > 1.0]
    return [k for k, _ in sorted(over, key=lambda kr: (-kr[1], kr[0][1]))]


class AutoSplitter:
    """The monitor loop of one coordinator (see the module docstring)."""

    def __init__(self, coordinator: AutoSplitCoordinator) -> None:
        self.c = coordinator
        self.trackers: dict[tuple[str, int], ShardTracker] = {}
        self.last_split_at: float | None = None
        self.splits_started = 0
        self.evaluations = 0

    async def run(self) -> None:
        while True:
            cfg = self.c.config.auto_split
            await asyncio.sleep(cfg.collection_interval)
            try:
                await self.evaluate(time.monotonic())
            except MetadataBadVersion:
                return
            except Exception:
                log.exception("auto-split evaluation failed")

    async def evaluate(self, now: float) -> tuple[str, int] | None:
        """One evaluation; returns the shard whose split it started, if any."""
        cfg = self.c.config.auto_split
        if not cfg.enabled:
            self.trackers.clear()
            return None
        self.evaluations += 1
        if self.c.split_controllers:
            return None
        if self.last_split_at is not None and now - self.last_split_at < cfg.cooldown_period:
            return None
        overshoots: dict[tuple[str, int], float] = {}
        live: set[tuple[str, int]] = set()
        counts: dict[str, int] = {}
        for ns, shard, meta in shards(self.c.status):
            live.add((ns, shard))
            if meta.status != DELETING:
                counts[ns] = counts.get(ns, 0) + 1
        for ns, shard, meta in shards(self.c.status):
            ns_cfg = self.c.namespace_config(ns)
            if ns_cfg is not None and ns_cfg.tso:
                continue
            if counts.get(ns, 0) >= cfg.max_shards_per_namespace:
                continue
            if (
                meta.status != STEADY
                or not meta.HasField("leader")
                or meta.HasField("split")
                or meta.pending_delete_shard_nodes
                or meta.int32_hash_range.max - meta.int32_hash_range.min < 1
            ):
                continue
            sample = await self._sample(meta.leader.internal, shard, now)
            if sample is None:
                continue
            tracker = self.trackers.setdefault((ns, shard), ShardTracker())
            overshoots[(ns, shard)] = tracker.observe(sample, cfg)
        for key in set(self.trackers) - live:
            del self.trackers[key]
        for ns, shard in pick(overshoots):
            try:
                left, right = await self.c.split_shard(ns, shard)
            except MetadataBadVersion:
                raise
            except PyxiaError as e:
                log.warning("auto-split of shard %d refused: %s; trying the next", shard, e)
                continue
            self.last_split_at = now
            self.splits_started += 1
            log.info(
                "auto-split of shard %d (overshoot %.2f) into %d and %d",
                shard,
                overshoots[(ns, shard)],
                left,
                right,
            )
            return ns, shard
        return None

    async def _sample(self, leader: str, shard: int, now: float) -> Sample | None:
        try:
            await self.c.ensure_bound(leader)
            call = self.c.channels.get(leader).unary_unary(
                "/replication.OxiaCoordination/GetStatus",
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )
            st = await call(
                replication_pb2.GetStatusRequest(shard=shard),
                timeout=5,
                metadata=self.c.call_metadata(),
            )
        except grpc.aio.AioRpcError as e:
            log.debug("auto-split: no stats of shard %d: %s", shard, error_from_rpc(e))
            return None
        except PyxiaError as e:
            log.debug("auto-split: no stats of shard %d: %s", shard, e)
            return None
        stats = st.shard_stats
        return Sample(
            leader, stats.db_size_bytes, stats.read_ops_total + stats.write_ops_total, now
        )
