"""Prometheus metrics (served on ``--metrics-addr`` at ``/metrics``).

Counted per request or per batch, never per operation inside a loop that a
batch already covers, so the hot path pays a few increments per batch."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WRITE_REQUESTS = Counter(
    "pyxia_server_write_requests", "Write requests (one WAL entry each)", ["shard"]
)
WRITE_OPS = Counter("pyxia_server_write_ops", "Put/delete/delete-range operations", ["shard"])
READ_OPS = Counter("pyxia_server_read_ops", "Get operations", ["shard"])
READ_CONFIRM_TIMEOUTS = Counter(
    "pyxia_server_read_confirm_timeouts",
    "Reads refused: no majority confirmed the leader in time (a leader cut off?)",
    ["shard"],
)
WRITE_LATENCY = Histogram(
    "pyxia_server_write_latency_seconds",
    "From proposal to applied, per write request",
    ["shard"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
COMMIT_OFFSET = Gauge("pyxia_server_leader_commit_offset", "Leader commit offset", ["shard"])
HEAD_OFFSET = Gauge("pyxia_server_leader_head_offset", "Leader head offset", ["shard"])
SESSIONS_ACTIVE = Gauge("pyxia_server_sessions_active", "Live sessions", ["shard"])
SESSIONS_EXPIRED = Counter("pyxia_server_sessions_expired", "Expired sessions", ["shard"])
INTERNAL_CALLS_REFUSED = Counter(
    "pyxia_server_internal_calls_refused",
    "Internal-port calls refused for want of a valid proof of cluster membership",
    ["reason"],
)
WAL_SIZE_BYTES = Gauge(
    "pyxia_server_wal_size_bytes",
    "Bytes the shard replica's WAL segments take on disk (at the last retention check)",
    ["shard"],
)
WAL_TRIMMED_SEGMENTS = Counter(
    "pyxia_server_wal_trimmed_segments", "WAL segments deleted by the retention", ["shard"]
)

COORDINATOR_STATUS_WRITES = Counter(
    "pyxia_coordinator_status_writes",
    "Cluster status writes to the metadata provider (shard edits are batched into them)",
)
COORDINATOR_STATUS_WRITE_BYTES = Counter(
    "pyxia_coordinator_status_write_bytes",
    "Bytes of the cluster statuses written (protobuf size; the provider's encoding may differ)",
)
COORDINATOR_STATUS_EDITS = Counter(
    "pyxia_coordinator_status_shard_edits",
    "Shard record edits persisted (elections started and finished, replicas forgotten)",
)


class ShardMetrics:
    """The labeled children of one shard, looked up once."""

    __slots__ = (
        "commit_offset",
        "head_offset",
        "read_confirm_timeouts",
        "read_ops",
        "sessions_active",
        "sessions_expired",
        "write_latency",
        "write_ops",
        "write_requests",
    )

    def __init__(self, shard: int) -> None:
        label = str(shard)
        self.write_requests = WRITE_REQUESTS.labels(label)
        self.write_ops = WRITE_OPS.labels(label)
        self.read_ops = READ_OPS.labels(label)
        self.read_confirm_timeouts = READ_CONFIRM_TIMEOUTS.labels(label)
        self.write_latency = WRITE_LATENCY.labels(label)
        self.commit_offset = COMMIT_OFFSET.labels(label)
        self.head_offset = HEAD_OFFSET.labels(label)
        self.sessions_active = SESSIONS_ACTIVE.labels(label)
        self.sessions_expired = SESSIONS_EXPIRED.labels(label)
