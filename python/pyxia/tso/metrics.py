"""The oracle's Prometheus metrics (``pyxia_tso_*``), counted per RPC or per event, never per
timestamp inside a loop. Recorded after the safety state change they describe."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GRANTS = Counter("pyxia_tso_grants", "GetTs calls answered with a grant")
TIMESTAMPS = Counter("pyxia_tso_timestamps", "Timestamps granted")
NOT_LEADER = Counter("pyxia_tso_not_leader", "GetTs calls refused: not serving (hint sent)")
ERRORS = Counter("pyxia_tso_errors", "GetTs calls failed", ["kind"])
EXTENSIONS = Counter(
    "pyxia_tso_window_extensions", "High-water writes by the serving leader", ["why"]
)
EXTENSION_LATENCY = Histogram(
    "pyxia_tso_window_extension_latency_seconds",
    "From proposing a high-water write to its commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)
LEADER_TRANSITIONS = Counter("pyxia_tso_leader_transitions", "Fences completed (now serving)")
FENCE_LATENCY = Histogram(
    "pyxia_tso_fence_latency_seconds",
    "From observing leadership to serving (successful fences only)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FENCE_TRANSIENT_RETRIES = Counter(
    "pyxia_tso_fence_transient_retries", "Fence attempts retried after a transient error"
)
SERVING = Gauge("pyxia_tso_serving", "1 while this node serves timestamps")
FAILED = Gauge(
    "pyxia_tso_failed",
    "1 once the oracle stopped on this node after a permanent error (see the log)",
)
HIGH_WATER = Gauge("pyxia_tso_high_water_ms", "The committed high-water (ms) while serving")
SEQ_WRITES = Counter("pyxia_tso_seq_writes", "GetSeq/GetSeqBatch writes logged")
SEQ_VALUES = Counter("pyxia_tso_seq_values", "Dense sequence ordinals granted")
LEASE_CALLS = Counter("pyxia_tso_lease_calls", "Stamping-lease writes committed", ["call"])
RELEASES = Counter(
    "pyxia_tso_releases", "Planned step-downs that released the time lease (marker logged)"
)
CALLS = Counter("pyxia_tso_calls", "Calls answered, by RPC (GetTs is pyxia_tso_grants)", ["rpc"])
