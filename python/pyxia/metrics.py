"""Prometheus metrics of the data servers (served on ``--metrics-addr`` at ``/metrics``).

Oxia's metric families, with Oxia's names, units and labels, wherever pyxia has the same
quantity, so that the Grafana dashboards in Oxia's ``deploy/dashboards`` read a pyxia cluster
unchanged (tests/test_metrics_dashboards.py checks every metric they query). Oxia exports
through OpenTelemetry: a latency histogram is in milliseconds with the ``_milliseconds``
suffix and Oxia's buckets, a byte quantity has ``_bytes``, a counter ``_total``; the
names here are the exposition names the dashboards query. Per-shard families carry Oxia's
``oxia_namespace`` and ``shard`` labels.

pyxia's own families (``pyxia_server_*``) remain only for what Oxia has no name for: reads
refused for want of a leadership quorum, internal calls refused, the WAL's size on disk and
the segments its retention deleted.

Invariants:
- The hot path pays a few increments per write request or batch, never a label lookup: a
  :class:`ShardMetrics` binds every child of its shard once, when the replica opens; the
  per-shard counters and histograms are ``pyxia.common.fast_metrics``'s (no lock, one bisect).
- What is cheaper to read than to count (WAL entries, RocksDB's sizes, cache hits and
  misses, leader offsets) is read at scrape time by :class:`ShardCollector`, from the replicas
  that are open at that moment; a closed replica's gauges disappear with it.
- Every metric is registered once, at import, in the default registry.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyxia.common.fast_metrics import FastCounter, FastHistogram

# A scrape carries the values, not a "_created" twin of every counter and histogram.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS_MS = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500,
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
)  # fmt: skip
"""Oxia's buckets for every latency histogram (milliseconds)."""

SIZE_BUCKETS_BYTES = tuple(float(1 << n) for n in range(4, 24))
"""Oxia's buckets for byte-size histograms: 16 B to 8 MiB, powers of two."""

COUNT_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 10_000, 20_000, 50_000, 100_000, 1_000_000)
"""Oxia's buckets for count histograms."""

SHARD = ("oxia_namespace", "shard")
"""Oxia's labels of a per-shard family."""


def _latency(name: str, doc: str, labels: tuple[str, ...] = SHARD) -> FastHistogram:
    return FastHistogram(name, doc, labels, buckets=LATENCY_BUCKETS_MS)


# -- leader and follower ----------------------------------------------------------------------

LEADER_WRITE_LATENCY = _latency(
    "oxia_server_leader_write_latency_milliseconds",
    "Latency for write operations in the leader: from the proposal to its answer (applied)",
)
FOLLOWER_WRITE_LATENCY = _latency(
    "oxia_server_follower_write_latency_milliseconds",
    "Latency for write operations in the follower: appending a replicated batch to its WAL",
)
LEADERS = Gauge("oxia_server_leaders_count", "The number of leader controllers in a dataserver")
FOLLOWERS = Gauge(
    "oxia_server_followers_count", "The number of follower controllers in a dataserver"
)
ASSIGNMENT_CLIENTS = Gauge(
    "oxia_server_shards_assignments_active_clients",
    "The number of clients currently connected for fetching the shards assignments updates",
)

# -- the shard DB (Oxia's "db" layer: operations) ---------------------------------------------

DB_PUTS = FastCounter("oxia_server_db_puts", "The total number of put operations", SHARD)
DB_DELETES = FastCounter("oxia_server_db_deletes", "The total number of delete operations", SHARD)
DB_DELETE_RANGES = FastCounter(
    "oxia_server_db_delete_ranges", "The total number of delete ranges operations", SHARD
)
DB_GETS = FastCounter("oxia_server_db_gets", "The total number of get operations", SHARD)
DB_LISTS = FastCounter("oxia_server_db_lists", "The total number of list operations", SHARD)
DB_RANGE_SCANS = FastCounter(
    "oxia_server_db_range_scans", "The total number of range-scan operations", SHARD
)
DB_GET_SEQUENCE_UPDATES = FastCounter(
    "oxia_server_db_get_sequence_updates",
    "The total number of get sequence updates operations",
    SHARD,
)
DB_BATCH_WRITE_LATENCY = _latency(
    "oxia_server_db_batch_write_latency_milliseconds",
    "The time it takes to apply a write request to the db (its operations and the batch)",
)
DB_GET_LATENCY = _latency(
    "oxia_server_db_get_latency_milliseconds", "The time it takes to get from the db"
)
DB_LIST_LATENCY = _latency(
    "oxia_server_db_list_latency_milliseconds", "The time it takes to read a list from the db"
)

# -- the key-value store (Oxia's "kv" layer: RocksDB here, Pebble in Oxia) --------------------

KV_BATCH_COMMIT_LATENCY = _latency(
    "oxia_server_kv_batch_commit_latency_milliseconds",
    "The latency for committing a batch into the database",
)
KV_BATCH_SIZE = FastHistogram(
    "oxia_server_kv_batch_size_bytes",
    "The size in bytes for a given batch",
    SHARD,
    buckets=SIZE_BUCKETS_BYTES,
)
KV_BATCH_COUNT = FastHistogram(
    "oxia_server_kv_batch_count",
    "The number of operations in a given batch",
    SHARD,
    buckets=COUNT_BUCKETS,
)
KV_MAX_CACHE_SIZE = Gauge(
    "oxia_server_kv_pebble_max_cache_size_bytes",
    "The max size configured for the block cache in bytes (--db-cache-size-mb)",
)
KV_WRITE_BYTES = FastCounter(
    "oxia_server_kv_write_bytes", "The amount of bytes written into the database", SHARD
)
KV_WRITE_OPS = FastCounter("oxia_server_kv_write_ops", "The amount of write operations", SHARD)
KV_WRITE_ERRORS = FastCounter(
    "oxia_server_kv_write_errors", "The count of write operations errors", SHARD
)
KV_READ_ERRORS = FastCounter(
    "oxia_server_kv_read_errors", "The count of read operations errors", SHARD
)

# -- the WAL -----------------------------------------------------------------------------------

WAL_APPEND_LATENCY = _latency(
    "oxia_server_wal_append_latency_milliseconds",
    "The time it takes to append entries to the WAL (written, not yet synced)",
)
WAL_APPEND_BYTES = FastCounter("oxia_server_wal_append_bytes", "Bytes appended to the WAL", SHARD)
WAL_SYNC_LATENCY = _latency(
    "oxia_server_wal_sync_latency_milliseconds",
    "The time it takes to fsync the wal data on disk: from the first append waiting for a "
    "sync to the round that made it durable",
)
WAL_READ_LATENCY = _latency(
    "oxia_server_wal_read_latency_milliseconds",
    "The time it takes to read entries from the WAL (a batch sent to a follower)",
)
WAL_READ_BYTES = FastCounter("oxia_server_wal_read_bytes", "Bytes read from the WAL", SHARD)
WAL_WRITE_ERRORS = FastCounter(
    "oxia_server_wal_write_errors", "The number of IO errors in the WAL write operations", SHARD
)
WAL_READ_ERRORS = FastCounter(
    "oxia_server_wal_read_errors", "The number of IO errors in the WAL read operations", SHARD
)

# -- sessions, notifications, snapshots ---------------------------------------------------------

SESSIONS_CREATED = FastCounter(
    "oxia_server_sessions_created", "The total number of sessions created", SHARD
)
SESSIONS_CLOSED = FastCounter(
    "oxia_server_sessions_closed", "The total number of sessions closed", SHARD
)
SESSIONS_EXPIRED = FastCounter(
    "oxia_server_sessions_expired", "The total number of sessions expired", SHARD
)
SESSIONS_ACTIVE = Gauge(
    "oxia_server_session_active", "The number of sessions currently active", SHARD
)
NOTIFICATIONS_READ = FastCounter(
    "oxia_server_notifications_read", "The total number of notifications", SHARD
)
NOTIFICATIONS_READ_BATCHES = FastCounter(
    "oxia_server_notifications_read_batches", "The total number of notification batches", SHARD
)
NOTIFICATIONS_READ_BYTES = FastCounter(
    "oxia_server_notifications_read_bytes",
    "The total size in bytes of notifications reads",
    SHARD,
)
SNAPSHOTS_STARTED = FastCounter(
    "oxia_server_snapshots_started", "The number of DB snapshots started", SHARD
)
SNAPSHOTS_COMPLETED = FastCounter(
    "oxia_server_snapshots_completed", "The number of DB snapshots completed", SHARD
)
SNAPSHOTS_FAILED = FastCounter(
    "oxia_server_snapshots_failed", "The number of DB snapshots failed", SHARD
)
SNAPSHOTS_SENT_BYTES = FastCounter(
    "oxia_server_snapshots_sent_bytes", "The amount of data sent as snapshot", SHARD
)
SNAPSHOTS_TRANSFER_TIME = _latency(
    "oxia_server_snapshots_transfer_time_milliseconds", "The time taken to transfer a full snapshot"
)

# -- pyxia's own ---------------------------------------------------------------------------------

READ_CONFIRM_TIMEOUTS = FastCounter(
    "pyxia_server_read_confirm_timeouts",
    "Reads refused: no majority confirmed the leader in time (a leader cut off?)",
    SHARD,
)
READ_LEASE_WAITS = Counter(
    "pyxia_server_read_lease_waits",
    "NewTerm answers held back until this server's read-lease promise to the previous leader "
    "lapsed (or until a lease after it started)",
)
READ_LEASE_WAIT_SECONDS = Counter(
    "pyxia_server_read_lease_wait_seconds",
    "Time NewTerm answers were held back for read-lease promises",
)
INTERNAL_CALLS_REFUSED = Counter(
    "pyxia_server_internal_calls_refused",
    "Internal-port calls refused for want of a valid proof of cluster membership",
    ["reason"],
)
WAL_SIZE_BYTES = Gauge(
    "pyxia_server_wal_size_bytes",
    "Bytes the shard replica's WAL segments take on disk (at the last retention check)",
    SHARD,
)
WAL_TRIMMED_SEGMENTS = FastCounter(
    "pyxia_server_wal_trimmed_segments", "WAL segments deleted by the retention", SHARD
)

COORDINATOR_STATUS_WRITES = Counter(
    "pyxia_coordinator_status_writes",
    "Cluster status writes to the metadata provider (shard edits are batched into them)",
)
COORDINATOR_STATUS_WRITE_BYTES = Counter(
    "pyxia_coordinator_status_write_bytes",
    "Bytes of the cluster statuses written (protobuf size; the provider's encoding may differ)",
)
COORDINATOR_ASSIGNMENT_PUSHES = Counter(
    "pyxia_coordinator_assignment_pushes",
    "Assignment maps pushed to data servers (one per server per burst of changes)",
)
COORDINATOR_ASSIGNMENT_PUSH_BYTES = Counter(
    "pyxia_coordinator_assignment_push_bytes",
    "Bytes of the assignment maps pushed to data servers",
)
COORDINATOR_STATUS_EDITS = Counter(
    "pyxia_coordinator_status_shard_edits",
    "Shard record edits persisted (elections started and finished, replicas forgotten)",
)


def ms_since(start: float) -> float:
    """Milliseconds from ``start`` (a ``time.perf_counter()``) to now."""
    return (time.perf_counter() - start) * 1000.0


class ShardMetrics:
    """The labeled children of one shard replica, bound once when it opens."""

    __slots__ = (
        "_sync_since",
        "db_batch_write_latency",
        "db_delete_ranges",
        "db_deletes",
        "db_get_latency",
        "db_get_sequence_updates",
        "db_gets",
        "db_list_latency",
        "db_lists",
        "db_puts",
        "db_range_scans",
        "follower_write_latency",
        "kv_batch_commit_latency",
        "kv_batch_count",
        "kv_batch_size",
        "kv_read_errors",
        "kv_write_bytes",
        "kv_write_errors",
        "kv_write_ops",
        "labels",
        "leader_write_latency",
        "notifications_read",
        "notifications_read_batches",
        "notifications_read_bytes",
        "read_confirm_timeouts",
        "sessions_active",
        "sessions_closed",
        "sessions_created",
        "sessions_expired",
        "snapshots_completed",
        "snapshots_failed",
        "snapshots_sent_bytes",
        "snapshots_started",
        "snapshots_transfer_time",
        "wal_append_bytes",
        "wal_append_latency",
        "wal_read_bytes",
        "wal_read_errors",
        "wal_read_latency",
        "wal_size_bytes",
        "wal_sync_latency",
        "wal_trimmed_segments",
        "wal_write_errors",
    )

    def __init__(self, namespace: str, shard: int) -> None:
        labels = self.labels = (namespace, str(shard))
        self.leader_write_latency = LEADER_WRITE_LATENCY.labels(*labels)
        self.follower_write_latency = FOLLOWER_WRITE_LATENCY.labels(*labels)
        self.db_puts = DB_PUTS.labels(*labels)
        self.db_deletes = DB_DELETES.labels(*labels)
        self.db_delete_ranges = DB_DELETE_RANGES.labels(*labels)
        self.db_gets = DB_GETS.labels(*labels)
        self.db_lists = DB_LISTS.labels(*labels)
        self.db_range_scans = DB_RANGE_SCANS.labels(*labels)
        self.db_get_sequence_updates = DB_GET_SEQUENCE_UPDATES.labels(*labels)
        self.db_batch_write_latency = DB_BATCH_WRITE_LATENCY.labels(*labels)
        self.db_get_latency = DB_GET_LATENCY.labels(*labels)
        self.db_list_latency = DB_LIST_LATENCY.labels(*labels)
        self.kv_batch_commit_latency = KV_BATCH_COMMIT_LATENCY.labels(*labels)
        self.kv_batch_size = KV_BATCH_SIZE.labels(*labels)
        self.kv_batch_count = KV_BATCH_COUNT.labels(*labels)
        self.kv_write_bytes = KV_WRITE_BYTES.labels(*labels)
        self.kv_write_ops = KV_WRITE_OPS.labels(*labels)
        self.kv_write_errors = KV_WRITE_ERRORS.labels(*labels)
        self.kv_read_errors = KV_READ_ERRORS.labels(*labels)
        self.wal_append_latency = WAL_APPEND_LATENCY.labels(*labels)
        self.wal_append_bytes = WAL_APPEND_BYTES.labels(*labels)
        self.wal_sync_latency = WAL_SYNC_LATENCY.labels(*labels)
        self.wal_read_latency = WAL_READ_LATENCY.labels(*labels)
        self.wal_read_bytes = WAL_READ_BYTES.labels(*labels)
        self.wal_write_errors = WAL_WRITE_ERRORS.labels(*labels)
        self.wal_read_errors = WAL_READ_ERRORS.labels(*labels)
        self.sessions_created = SESSIONS_CREATED.labels(*labels)
        self.sessions_closed = SESSIONS_CLOSED.labels(*labels)
        self.sessions_expired = SESSIONS_EXPIRED.labels(*labels)
        self.sessions_active = SESSIONS_ACTIVE.labels(*labels)
        self.notifications_read = NOTIFICATIONS_READ.labels(*labels)
        self.notifications_read_batches = NOTIFICATIONS_READ_BATCHES.labels(*labels)
        self.notifications_read_bytes = NOTIFICATIONS_READ_BYTES.labels(*labels)
        self.snapshots_started = SNAPSHOTS_STARTED.labels(*labels)
        self.snapshots_completed = SNAPSHOTS_COMPLETED.labels(*labels)
        self.snapshots_failed = SNAPSHOTS_FAILED.labels(*labels)
        self.snapshots_sent_bytes = SNAPSHOTS_SENT_BYTES.labels(*labels)
        self.snapshots_transfer_time = SNAPSHOTS_TRANSFER_TIME.labels(*labels)
        self.read_confirm_timeouts = READ_CONFIRM_TIMEOUTS.labels(*labels)
        self.wal_size_bytes = WAL_SIZE_BYTES.labels(*labels)
        self.wal_trimmed_segments = WAL_TRIMMED_SEGMENTS.labels(*labels)
        self._sync_since: float | None = None

    # -- the WAL's append and sync, shared by the leader and the follower ------------------------

    def wal_appended(self, started: float, nbytes: int) -> None:
        """An append that began at ``started`` (``perf_counter``) wrote ``nbytes``; the next
        sync round ends the sync latency that starts here if none is running."""
        self.wal_append_latency.observe((time.perf_counter() - started) * 1000.0)
        self.wal_append_bytes.inc(nbytes)
        if self._sync_since is None:
            self._sync_since = started

    def wal_synced(self) -> None:
        """A sync round completed (the WAL's notification)."""
        since = self._sync_since
        if since is not None:
            self._sync_since = None
            self.wal_sync_latency.observe((time.perf_counter() - since) * 1000.0)

    def db_applied(
        self, puts: int, deletes: int, delete_ranges: int, started: float, committed: float
    ) -> None:
        """A write request was applied: its operations counted from ``started`` (operations
        staged) through ``committed`` (just before the batch was written) to now."""
        now = time.perf_counter()
        self.db_batch_write_latency.observe((now - started) * 1000.0)
        self.kv_batch_commit_latency.observe((now - committed) * 1000.0)
        if puts:
            self.db_puts.inc(puts)
        if deletes:
            self.db_deletes.inc(deletes)
        if delete_ranges:
            self.db_delete_ranges.inc(delete_ranges)

    def kv_batch(self, size_bytes: int, count: int) -> None:
        """A batch of ``count`` operations, ``size_bytes`` long, was written to RocksDB."""
        self.kv_batch_size.observe(size_bytes)
        self.kv_batch_count.observe(count)
        self.kv_write_bytes.inc(size_bytes)
        self.kv_write_ops.inc(count)


# -- read at scrape time ----------------------------------------------------------------------


class ScrapedReplica(Protocol):
    """What :class:`ShardCollector` reads of an open shard replica (a ``ShardStorage``)."""

    namespace: str
    shard: int

    def scrape(self) -> ReplicaGauges | None:
        """The replica's gauges now; None once it is closed."""
        ...


class ReplicaGauges:
    """One replica's values read at scrape time."""

    __slots__ = (
        "block_cache_hits",
        "block_cache_misses",
        "block_cache_used_bytes",
        "compaction_debt_bytes",
        "compactions",
        "disk_space_bytes",
        "flush_bytes",
        "flushes",
        "memtable_size_bytes",
        "num_files",
        "read_bytes",
        "read_iterators",
        "wal_entries",
    )

    def __init__(self, **values: int) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name, 0))


_TICKER = re.compile(r"^(rocksdb\.[a-z0-9.\-]+) COUNT : (\d+)$", re.MULTILINE)
_HISTOGRAM_COUNT = re.compile(r"^(rocksdb\.[a-z0-9.\-]+) P50 .* COUNT : (\d+)", re.MULTILINE)


def rocksdb_statistics(text: str) -> dict[str, int]:
    """RocksDB's statistics dump (``Options.get_statistics()``) as ``{name: count}``: the
    tickers' counts and the histograms' sample counts."""
    out = {m.group(1): int(m.group(2)) for m in _TICKER.finditer(text)}
    for m in _HISTOGRAM_COUNT.finditer(text):
        out[m.group(1)] = int(m.group(2))
    return out


class ScrapedLeader(Protocol):
    """What the leader gauges read of a replica that may lead (a ``LeaderController``)."""

    namespace: str
    shard: int

    def leader_offsets(self) -> tuple[int, int, dict[str, int]] | None:
        """``(head offset, commit offset, {follower: acknowledged offset})`` while leading,
        else None."""
        ...


_PEBBLE_EQUIVALENTS: tuple[tuple[str, str, str], ...] = (
    (
        "oxia_server_kv_pebble_block_cache_used_bytes",
        "block_cache_used_bytes",
        "Bytes of the block cache used (RocksDB's rocksdb.block-cache-usage; the cache is "
        "shared by the process's shard DBs, so every shard reports the whole)",
    ),
    (
        "oxia_server_kv_pebble_block_cache_hits",
        "block_cache_hits",
        "The number of hits in the block cache (RocksDB's rocksdb.block.cache.hit)",
    ),
    (
        "oxia_server_kv_pebble_block_cache_misses",
        "block_cache_misses",
        "The number of misses in the block cache (RocksDB's rocksdb.block.cache.miss)",
    ),
    (
        "oxia_server_kv_pebble_read_iterators",
        "read_iterators",
        "The number of iterators open (RocksDB's iterators created minus deleted)",
    ),
    (
        "oxia_server_kv_pebble_compactions_total",
        "compactions",
        "The number of compactions operations (RocksDB's rocksdb.compaction.times.micros count)",
    ),
    (
        "oxia_server_kv_pebble_compaction_debt_bytes",
        "compaction_debt_bytes",
        "The estimated number of bytes that need to be compacted "
        "(rocksdb.estimate-pending-compaction-bytes)",
    ),
    (
        "oxia_server_kv_pebble_flush_total",
        "flushes",
        "The total number of db flushes (RocksDB's rocksdb.db.flush.micros count)",
    ),
    (
        "oxia_server_kv_pebble_flush_bytes",
        "flush_bytes",
        "The total amount of bytes flushed into the db (rocksdb.flush.write.bytes)",
    ),
    (
        "oxia_server_kv_pebble_memtable_size_bytes",
        "memtable_size_bytes",
        "The size of the memtable (rocksdb.cur-size-all-mem-tables)",
    ),
    (
        "oxia_server_kv_pebble_disk_space_bytes",
        "disk_space_bytes",
        "The total size of all the db files (table and blob files)",
    ),
    (
        "oxia_server_kv_pebble_num_files_total",
        "num_files",
        "The total number of files for the db (table files, every level)",
    ),
    (
        "oxia_server_kv_pebble_read_bytes",
        "read_bytes",
        "The total amount of bytes read from the db's table files",
    ),
    (
        "oxia_server_wal_entries",
        "wal_entries",
        "The number of active entries in the wal (last synced offset - first offset)",
    ),
)


class ShardCollector(Collector):
    """Gauges read at scrape time from the replicas open in this process (weakly held)."""

    def __init__(self) -> None:
        self._replicas: weakref.WeakSet[ScrapedReplica] = weakref.WeakSet()
        self._leaders: weakref.WeakSet[ScrapedLeader] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, replica: ScrapedReplica) -> None:
        with self._lock:
            self._replicas.add(replica)

    def remove(self, replica: ScrapedReplica) -> None:
        with self._lock:
            self._replicas.discard(replica)

    def add_leader(self, leader: ScrapedLeader) -> None:
        """``leader``'s offsets are exported whenever it leads, until :meth:`remove_leader`."""
        with self._lock:
            self._leaders.add(leader)

    def remove_leader(self, leader: ScrapedLeader) -> None:
        with self._lock:
            self._leaders.discard(leader)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        for name, _, doc in _PEBBLE_EQUIVALENTS:
            yield GaugeMetricFamily(name, doc, labels=SHARD)
        yield GaugeMetricFamily(
            "oxia_server_leader_head_offset", "The current head offset", labels=SHARD
        )
        yield GaugeMetricFamily(
            "oxia_server_leader_commit_offset", "The current commit offset", labels=SHARD
        )
        yield GaugeMetricFamily(
            "oxia_server_follower_ack_offset",
            "The offset each follower acknowledged to the leader",
            labels=(*SHARD, "follower"),
        )

    def collect(self) -> Iterable[Metric]:
        families = {f.name: f for f in self._families()}
        with self._lock:
            replicas = list(self._replicas)
            leaders = list(self._leaders)
        for replica in replicas:
            try:
                values = replica.scrape()
            except Exception:  # a replica closing under the scrape: skip it this time
                continue
            if values is None:
                continue
            labels = [replica.namespace, str(replica.shard)]
            for name, attr, _ in _PEBBLE_EQUIVALENTS:
                families[name].add_metric(labels, getattr(values, attr))
        for leader in leaders:
            try:
                offsets = leader.leader_offsets()
            except Exception:
                continue
            if offsets is None:
                continue
            head, commit, acks = offsets
            namespace, shard = leader.namespace, str(leader.shard)
            families["oxia_server_leader_head_offset"].add_metric([namespace, shard], head)
            families["oxia_server_leader_commit_offset"].add_metric([namespace, shard], commit)
            for follower, offset in acks.items():
                families["oxia_server_follower_ack_offset"].add_metric(
                    [namespace, shard, follower], offset
                )
        return list(families.values())


SHARDS = ShardCollector()
REGISTRY.register(SHARDS)


def count_controllers(leaders: Callable[[], int], followers: Callable[[], int]) -> None:
    """The process's leader and follower counts, read at scrape time."""
    LEADERS.set_function(lambda: float(leaders()))
    FOLLOWERS.set_function(lambda: float(followers()))


# -- the reference (docs/metrics.md is generated from it) ------------------------------------------

METRIC_MODULES = (
    "pyxia.metrics",
    "pyxia.common.grpc_metrics",
    "pyxia.coordinator.metrics",
    "pyxia.tso.metrics",
    "pyxia.security.public",
)
"""Every module that registers metrics (imported by :func:`metric_reference`)."""


def _unit(name: str) -> str:
    for suffix, unit in (("_milliseconds", "ms"), ("_bytes", "bytes"), ("_seconds", "s")):
        if name.endswith(suffix):
            return unit
    if name.endswith("_ms"):
        return "ms"
    return "-"


def metric_reference() -> list[tuple[str, str, str, tuple[str, ...], str]]:
    """``(exposition name, type, unit, labels, meaning)`` of every metric pyxia registers,
    sorted by name: the name a query uses (``_total`` for a counter; a histogram's
    ``_bucket``/``_sum``/``_count`` series share the name given)."""
    import importlib

    for module in METRIC_MODULES:
        importlib.import_module(module)
    rows: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        name = getattr(collector, "_name", None)
        if name is not None:  # a metric of prometheus_client
            kind = str(getattr(collector, "_type", "untyped"))
            labels = tuple(getattr(collector, "_labelnames", ()))
            doc = str(getattr(collector, "_documentation", ""))
            shown = name + ("_total" if kind == "counter" else "")
            rows[shown] = (shown, kind, _unit(name), labels, doc)
            continue
        describe = getattr(collector, "describe", None)
        if describe is None or not type(collector).__module__.startswith("pyxia"):
            continue
        for family in describe():
            labels = tuple(getattr(family, "_labelnames", ()))
            rows[family.name] = (
                family.name,
                family.type,
                _unit(family.name),
                labels,
                family.documentation,
            )
    return [rows[k] for k in sorted(rows)]
