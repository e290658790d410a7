"""Stamping leases (tsoracle's AcquireLease / RenewLease / ReleaseLease) and the safe frontier:
the rules, pure and synchronous (the clock is an argument).

A lease lets an opaque ``holder`` (1 to 128 bytes) stamp timestamps with a physical part up to
``ts_upper_bound`` until ``expires_at_ms`` (server wall clock, ``now >= expires_at_ms`` is
expired). ``holder_epoch`` orders leases of one holder: an acquire at the live lease's epoch
returns it unchanged (idempotent), a strictly higher one supersedes it (the old one stops
advancing but counts toward the frontier until it expires), a lower one is refused.

The bound of a lease is ``now + ttl`` at acquire (at renew ``max(old bound, now + ttl)``), and
the high-water is raised to at least the bound in the same replicated write as the lease
record: every timestamp the oracle grants after a failover is above every bound a holder was
given. (tsoracle takes ``max(H + 1, now) + ttl`` and uses it as the id too; that moves the
high-water ``ttl`` further with every lease call — a high-water running ahead of the clock, and
with it the next failover's floor. pyxia keeps ids apart instead.) ``lease_id`` comes from a
counter persisted in the same write (``__oxia/tso/lease-id``), never reused, across leaders
too. Every mutation writes the records it changes and deletes the expired ones, so the shard
holds the live set; a new leader loads it (records expired by then are dropped) — leases
survive failovers.

Invariants (property-tested in ``tests/test_tso_leases.py``): at any time a holder has at most
one live lease that is not superseded; a renewal never lowers a lease's bound; the live count
never passes ``max_leases``; a refused request changes nothing.

The **safe frontier** is ``min(H, every unexpired lease's bound)`` (0 when not serving) and the
**safe point** ``max(0, H - window_ahead - 1)``: :func:`safe_frontier`, :func:`max_safe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pyxia.common import keys
from pyxia.errors import InvalidArgument
from pyxia.tso.errors import LeaseNotFound, LeaseRefused, LeasesExhausted, TsoStateCorrupt

MAX_HOLDER_BYTES = 128
DEFAULT_TTL_FLOOR_MS = 5_000
DEFAULT_TTL_CEILING_MS = 300_000
DEFAULT_MAX_LEASES = 1_000
U64_MAX = (1 << 64) - 1

LEASE_PREFIX = keys.INTERNAL_KEY_PREFIX + "tso/lease/"
"""A lease record lives at this prefix + its id (20 decimal digits), as JSON."""
LEASE_SCAN_END = keys.INTERNAL_KEY_PREFIX + "tso/lease/a"
"""The end (exclusive) of a scan over every lease record (ids are digits)."""
LAST_LEASE_ID_KEY = keys.INTERNAL_KEY_PREFIX + "tso/lease-id"
"""The last lease id handed out (ASCII decimal)."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    lease_id: int
    holder: bytes
    holder_epoch: int
    ttl_ms: int
    ts_upper_bound: int
    expires_at_ms: int
    superseded: bool = False

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms


@dataclass(frozen=True, slots=True)
class Mutation:
    """One lease write: a record to put (new or renewed), one to mark superseded, one to
    remove; plus the expired records it deletes."""

    upsert: LeaseRecord | None = None
    supersede: int | None = None
    remove: int | None = None


def check_acquire(holder: bytes, ttl_ms: int, floor_ms: int, ceiling_ms: int) -> None:
    if not 1 <= len(holder) <= MAX_HOLDER_BYTES:
        raise InvalidArgument(
            f"tso: a lease holder must be 1 to {MAX_HOLDER_BYTES} bytes, got {len(holder)}"
        )
    if not floor_ms <= ttl_ms <= ceiling_ms:
        raise InvalidArgument(
            f"tso: ttl_ms {ttl_ms} is outside the server's bounds [{floor_ms}, {ceiling_ms}]"
        )


def record_key(lease_id: int) -> str:
    return f"{LEASE_PREFIX}{lease_id:020d}"


def encode_record(r: LeaseRecord) -> bytes:
    return json.dumps(
        {
            "holder": r.holder.hex(),
            "holder_epoch": r.holder_epoch,
            "ttl_ms": r.ttl_ms,
            "bound": r.ts_upper_bound,
            "expires_at_ms": r.expires_at_ms,
            "superseded": r.superseded,
        },
        separators=(",", ":"),
    ).encode()


def _u64(d: dict[str, object], name: str) -> int:
    v = d.get(name)
    if type(v) is not int or not 0 <= v <= U64_MAX:
        raise ValueError(name)
    return v


def decode_record(key: str, raw: bytes) -> LeaseRecord:
    """The record stored at ``key``; TsoStateCorrupt if it is not one pyxia wrote."""
    try:
        suffix = key[len(LEASE_PREFIX) :]
        if not key.startswith(LEASE_PREFIX) or len(suffix) != 20 or not suffix.isdigit():
            raise ValueError("key")
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("record")
        holder = bytes.fromhex(str(d.get("holder")))
        superseded = d.get("superseded")
        if not 1 <= len(holder) <= MAX_HOLDER_BYTES or not isinstance(superseded, bool):
            raise ValueError("holder")
        return LeaseRecord(
            int(suffix),
            holder,
            _u64(d, "holder_epoch"),
            _u64(d, "ttl_ms"),
            _u64(d, "bound"),
            _u64(d, "expires_at_ms"),
            superseded,
        )
    except ValueError as e:
        raise TsoStateCorrupt(f"tso: corrupt lease record {key[:80]!r} ({e})") from None


class LeaseTable:
    """One leader term's leases by id (see the module docstring)."""

    __slots__ = ("_records", "last_id", "max_leases")

    def __init__(self, max_leases: int = DEFAULT_MAX_LEASES) -> None:
        self.max_leases = max_leases
        self._records: dict[int, LeaseRecord] = {}
        self.last_id = 0

    def seed(self, records: Iterable[LeaseRecord], now_ms: int, last_id: int = 0) -> None:
        """The stored records (expired ones are dropped: they never count again) and the last
        id handed out."""
        recs = list(records)
        self._records = {r.lease_id: r for r in recs if not r.expired(now_ms)}
        self.last_id = max([last_id, *(r.lease_id for r in recs)])

    def new_record(self, holder: bytes, holder_epoch: int, ttl_ms: int, now_ms: int) -> LeaseRecord:
        """A fresh lease (the next id; bound ``now + ttl``), not yet in the table."""
        end = now_ms + ttl_ms
        return LeaseRecord(self.last_id + 1, holder, holder_epoch, ttl_ms, end, end)

    @staticmethod
    def renewed(r: LeaseRecord, now_ms: int) -> LeaseRecord:
        """``r`` renewed at ``now_ms``: its TTL again, a bound that never goes down."""
        end = now_ms + r.ttl_ms
        return replace(r, ts_upper_bound=max(r.ts_upper_bound, end), expires_at_ms=end)

    def records(self) -> list[LeaseRecord]:
        return sorted(self._records.values(), key=lambda r: r.lease_id)

    def get(self, lease_id: int) -> LeaseRecord | None:
        return self._records.get(lease_id)

    def live(self, now_ms: int) -> list[LeaseRecord]:
        return [r for r in self.records() if not r.expired(now_ms)]

    def active_for(self, holder: bytes, now_ms: int) -> LeaseRecord | None:
        for r in self._records.values():
            if r.holder == holder and not r.superseded and not r.expired(now_ms):
                return r
        return None

    # -- decisions (no mutation) ------------------------------------------------------------------

    def prepare_acquire(
        self, holder: bytes, holder_epoch: int, now_ms: int
    ) -> LeaseRecord | int | None:
        """The live lease to return as is (same epoch), or the id of the lease a grant
        supersedes (higher epoch), or None (a fresh grant). Raises LeaseRefused for a lower
        epoch and LeasesExhausted when a grant would pass the cap."""
        active = self.active_for(holder, now_ms)
        if active is not None:
            if active.holder_epoch == holder_epoch:
                return active
            if holder_epoch < active.holder_epoch:
                raise LeaseRefused(
                    f"tso: holder epoch {holder_epoch} is not above the live lease's epoch "
                    f"{active.holder_epoch}"
                )
        if len(self.live(now_ms)) >= self.max_leases:
            raise LeasesExhausted(f"tso: {self.max_leases} leases are live, the maximum")
        return active.lease_id if active is not None else None

    def prepare_renew(self, lease_id: int, now_ms: int) -> LeaseRecord:
        r = self._records.get(lease_id)
        if r is None:
            raise LeaseNotFound(f"tso: unknown lease id {lease_id}")
        if r.expired(now_ms):
            raise LeaseRefused(
                f"tso: lease {lease_id} expired at {r.expires_at_ms} ms; acquire a new lease"
            )
        if r.superseded:
            by = max(
                (
                    o.holder_epoch
                    for o in self._records.values()
                    if o.holder == r.holder and o.holder_epoch > r.holder_epoch
                ),
                default=r.holder_epoch,
            )
            raise LeaseRefused(f"tso: lease {lease_id} was superseded by holder epoch {by}")
        return r

    def write_for(self, m: Mutation, now_ms: int) -> tuple[list[LeaseRecord], list[int]]:
        """The records to put and the ids to delete for mutation ``m``: the upsert, the
        superseded record, the removal and every expired record."""
        puts: list[LeaseRecord] = []
        deletes = {i for i, r in self._records.items() if r.expired(now_ms)}
        if m.supersede is not None:
            old = self._records.get(m.supersede)
            if old is not None and not old.expired(now_ms):
                puts.append(replace(old, superseded=True))
        if m.remove is not None and m.remove in self._records:
            deletes.add(m.remove)
        if m.upsert is not None:
            puts.append(m.upsert)
            deletes.discard(m.upsert.lease_id)
        return puts, sorted(deletes)

    # -- mutation (after the write is durable) ----------------------------------------------------

    def apply(self, m: Mutation, now_ms: int) -> None:
        puts, deletes = self.write_for(m, now_ms)
        for i in deletes:
            self._records.pop(i, None)
        for r in puts:
            self._records[r.lease_id] = r
            self.last_id = max(self.last_id, r.lease_id)

    def min_unexpired_bound(self, now_ms: int) -> int | None:
        bounds = [r.ts_upper_bound for r in self._records.values() if not r.expired(now_ms)]
        return min(bounds) if bounds else None


def safe_frontier(high_water: int, lease_bound: int | None) -> int:
    """``min(H, the smallest unexpired lease bound)``."""
    return high_water if lease_bound is None else min(high_water, lease_bound)


def max_safe(high_water: int, window_ahead_ms: int) -> int:
    """tsoracle's safe point: ``H - window_ahead - 1``, never below 0."""
    return max(0, high_water - window_ahead_ms - 1)
