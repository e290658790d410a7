"""The timestamp oracle's options (tsoracle's names and defaults where they exist): plain
configuration, with no dependency on the data server, so the server's options can carry them
and the composition root (:mod:`pyxia.node`) builds the oracle from them."""

from __future__ import annotations

from dataclasses import dataclass

from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.leases import DEFAULT_MAX_LEASES, DEFAULT_TTL_CEILING_MS, DEFAULT_TTL_FLOOR_MS
from pyxia.tso.sequences import (
    DEFAULT_MAX_SEQ_BATCH_KEYS,
    DEFAULT_MAX_SEQ_COUNT,
    DEFAULT_MAX_SEQ_KEYS,
)


@dataclass(frozen=True)
class TsoOptions:
    """The oracle's tuning (tsoracle's names and defaults where they exist)."""

    namespace: str = DEFAULT_NAMESPACE
    window_ahead_s: float = 3.0
    """How far ahead of the clock each high-water extension reaches (one write per window)."""
    failover_advance_s: float = 1.0
    """How far above ``max(previous high-water + 1, now)`` a new leader persists its first
    high-water (clock-skew headroom; the visible jump on failover)."""
    lease_s: float = 0.1
    """A leader's time lease (replication factor > 1): after an unplanned failure the new
    leader waits this long (plus a guard) before serving; a serving leader renews it with a
    high-water write every ``lease_s / 2`` while it has requests. See docs/tso.md."""
    persist_timeout_s: float = 2.0
    """A high-water write not committed by then is a transient failure."""
    grant_wait_s: float = 1.0
    """How long a call waits for a needed high-water or lease write before UNAVAILABLE."""
    fence_hold_s: float = 1.0
    """How long a call to a leader whose fence runs waits for it to serve."""
    max_seq_count: int = DEFAULT_MAX_SEQ_COUNT
    """The largest block one GetSeq entry may ask for."""
    max_seq_batch_keys: int = DEFAULT_MAX_SEQ_BATCH_KEYS
    """The most entries of one GetSeqBatch."""
    max_seq_keys: int = DEFAULT_MAX_SEQ_KEYS
    """The most distinct sequence keys (RESOURCE_EXHAUSTED past it)."""
    lease_ttl_floor_ms: int = DEFAULT_TTL_FLOOR_MS
    lease_ttl_ceiling_ms: int = DEFAULT_TTL_CEILING_MS
    max_leases: int = DEFAULT_MAX_LEASES
    """The most live stamping leases (RESOURCE_EXHAUSTED past it)."""
    native_addr: str | None = None
    """``IP:port`` of the TSO port: GetTs served natively (:mod:`pyxia.tso.native`), besides
    the public port; None: none."""
    native_workers: int = 2
    """The native server's threads."""

    @property
    def window_ahead_ms(self) -> int:
        return max(1, round(self.window_ahead_s * 1000))

    @property
    def failover_advance_ms(self) -> int:
        return max(0, round(self.failover_advance_s * 1000))


__all__ = ["TsoOptions"]
