"""Applying committed log entries to the shard DB.

One log entry (one client ``WriteRequest``) becomes one RocksDB batch that
also carries the commit offset, the shard-wide version counter and the
entry's notification batch. Every replica applies the same entries in the
same order to the same state, so this code is deterministic: no clock (the
timestamp comes from the entry), no randomness.

Semantics follow Oxia: puts, then deletes, then delete-ranges; per-op
statuses; the version id is a shard-wide counter; the session record and
secondary index bookkeeping happen in the same batch as the record. A write
that cannot be applied at all (a sequential put whose deltas do not fit the
sequence) is *rejected*: it has no effect but its offset is recorded as
applied, and the leader answers the client with the error.

Applying is done in steps (``*_steps`` generators, see ``storage/steps.py``): an entry yields
after each operation (and each record a range delete or a session close removes) and writes
its one DB batch in its last step, so a caller may spread a big entry over several slices of
event-loop time, or abandon it between steps without leaving a trace.

What a client write may hold is bounded before it is logged (:class:`WriteLimits`, checked by
:func:`validate_write_request` at the leader): key and value sizes and the number of
operations, so that no single entry can make one step, or the entry's atomic DB batch, long.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from pyxia._native import apply_puts, write_request_shape
from pyxia.common import keys
from pyxia.common.keys import ScanBounds
from pyxia.errors import InvalidArgument, PyxiaError
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage.db import ShardDB
from pyxia.storage.notifications import Notifications
from pyxia.storage.steps import Steps, run_steps

if TYPE_CHECKING:
    from pyxia.metrics import ShardMetrics

OK = client_pb2.OK
KEY_NOT_FOUND = client_pb2.KEY_NOT_FOUND
UNEXPECTED_VERSION_ID = client_pb2.UNEXPECTED_VERSION_ID
SESSION_DOES_NOT_EXIST = client_pb2.SESSION_DOES_NOT_EXIST

StorageEntry = storage_pb2.StorageEntry
PutResponse = client_pb2.PutResponse
DeleteResponse = client_pb2.DeleteResponse
DeleteRangeResponse = client_pb2.DeleteRangeResponse
Version = client_pb2.Version


class RejectedWrite(InvalidArgument):
    """The entry was recorded as applied but had no effect."""


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n >= 0``."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SPLICED_VALUE_SIZE = 64 * 1024
"""From this size on, a record's value is spliced into its serialized ``StorageEntry``
rather than copied in and out of a message (two copies less of a large value)."""


def storage_entry_bytes(entry: storage_pb2.StorageEntry, value: bytes) -> bytes:
    """``entry`` (which has no value) serialized with ``value``: the same bytes as
    ``SerializeToString`` of the entry holding the value, whose field 1 comes first."""
    if len(value) < SPLICED_VALUE_SIZE:
        entry.value = value
        return entry.SerializeToString()
    return b"".join((b"\x0a", varint(len(value)), value, entry.SerializeToString()))


class ApplyResult:
    """What applying one entry produced: the response as a message, or as its wire bytes
    (``wire``, from the native put path; ``response`` then decodes it on first use).

    ``sequence_updates``: (prefix, new last key) of every sequential put, for
    GetSequenceUpdates. ``request``: the request, kept when it was rejected (to answer each
    operation)."""

    __slots__ = ("_response", "error", "notified", "request", "sequence_updates", "wire")

    def __init__(
        self,
        response: client_pb2.WriteResponse | None,
        error: PyxiaError | None = None,
        sequence_updates: list[tuple[str, str]] | None = None,
        notified: bool = False,
        request: client_pb2.WriteRequest | None = None,
        *,
        wire: bytes | None = None,
    ) -> None:
        self._response = response
        self.error = error
        self.sequence_updates: list[tuple[str, str]] = sequence_updates or []
        self.notified = notified
        self.request = request
        self.wire = wire

    @property
    def response(self) -> client_pb2.WriteResponse | None:
        if self._response is None and self.wire is not None:
            self._response = client_pb2.WriteResponse.FromString(self.wire)
        return self._response

    def response_bytes(self) -> bytes:
        """The serialized ``WriteResponse`` (a write that was not rejected)."""
        if self.wire is not None:
            return self.wire
        assert self._response is not None
        return self._response.SerializeToString()


class _Stage:
    """The mutations of one entry: a RocksDB batch plus an overlay, so later
    operations of the same entry read what earlier ones wrote.

    The overlay's keys are also kept in a sorted list, brought up to date lazily: new keys
    wait in ``_new`` until a scan inserts them (by bisection, or one sort when many came), so
    a put costs an append and a scan O(log n) plus its keys rather than a pass over the whole
    overlay: an entry that closes 1,000 sessions scans 1,000 times an overlay of thousands."""

    __slots__ = ("_db_get", "_keys", "_new", "batch", "db", "overlay")

    def __init__(self, db: ShardDB) -> None:
        self.db = db
        self._db_get = db.db.get
        self.batch: WriteBatch = db.new_batch()
        self.overlay: dict[bytes, bytes | None] = {}
        self._keys: list[bytes] = []
        self._new: list[bytes] = []

    def get(self, ekey: bytes) -> bytes | None:
        ov = self.overlay
        if ekey in ov:
            return ov[ekey]
        v: bytes | None = self._db_get(ekey)
        return v

    def put(self, ekey: bytes, value: bytes) -> None:
        if ekey not in self.overlay:
            self._new.append(ekey)
        self.overlay[ekey] = value
        self.batch.put(ekey, value)

    def delete(self, ekey: bytes) -> None:
        if ekey not in self.overlay:
            self._new.append(ekey)
        self.overlay[ekey] = None
        self.batch.delete(ekey)

    def _overlay_keys(self, bounds: ScanBounds, reverse: bool) -> list[bytes]:
        """The overlay's keys within ``bounds``, in scan order."""
        ks, new = self._keys, self._new
        if new:
            if len(new) * 8 > len(ks):
                ks.extend(new)
                ks.sort()
            else:
                for k in new:
                    bisect.insort(ks, k)
            new.clear()
        lo = 0 if bounds.lower is None else bisect.bisect_left(ks, bounds.lower)
        hi = len(ks) if bounds.upper is None else bisect.bisect_left(ks, bounds.upper)
        out = [k for k in ks[lo:hi] if bounds.contains(k)] if bounds.skip else ks[lo:hi]
        if reverse:
            out.reverse()
        return out

    def scan(self, bounds: ScanBounds, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Merged DB + overlay scan (overlay wins). The overlay keys are
        captured when the scan starts, so mutations made while iterating only
        affect keys not yet visited through the DB."""
        if bounds.empty:
            return
        ov_keys = self._overlay_keys(bounds, reverse)
        db_it = (
            kv
            for kv in self.db.scan(bounds.lower, bounds.upper, reverse=reverse)
            if bounds.contains(kv[0])
        )
        i = 0
        nxt = next(db_it, None)
        while nxt is not None or i < len(ov_keys):
            if i < len(ov_keys) and (
                nxt is None or (ov_keys[i] <= nxt[0] if not reverse else ov_keys[i] >= nxt[0])
            ):
                k = ov_keys[i]
                i += 1
                if nxt is not None and nxt[0] == k:
                    nxt = next(db_it, None)
                v = self.overlay.get(k)
                if v is not None:
                    yield k, v
            else:
                assert nxt is not None
                k, v = nxt
                nxt = next(db_it, None)
                if k in self.overlay:
                    # Changed after the scan started: respect the overlay.
                    ov = self.overlay[k]
                    if ov is None:
                        continue
                    v = ov
                yield k, v


NATIVE_MAX_PUTS = 2000
"""A plain-put write of at most this many puts is applied in one native call (~1 µs per put,
so one call holds the event loop ~2 ms at most); a larger one goes step by step."""


class StateApplier:
    """Applies entries of one shard to its DB.

    A write of plain puts (no session, sequence delta or secondary index; no delete) takes the
    native path (``pyxia._native.apply_puts``: decode, key encoding, stored records, response
    and notifications in one call, with one multi-get of the stored records); it produces the
    same records, version counter, response and notification batch as the Python path
    (``native=False``), which applies everything else."""

    def __init__(
        self,
        db: ShardDB,
        shard: int,
        *,
        notifications_enabled: bool = True,
        metrics: ShardMetrics | None = None,
        native: bool = True,
    ) -> None:
        self.db = db
        self.shard = shard
        self.notifications_enabled = notifications_enabled
        # Counted once per write request (its operations, its batch), never per operation.
        self.metrics = metrics
        self.native = native
        self.encoding = db.encoding
        self._hierarchical = db.encoding.name == "hierarchical"
        self.last_version_id = db.last_version_id()
        self.commit_offset = db.commit_offset()

    # -- entry level ------------------------------------------------------------------------------

    def apply_log_entry_value(self, offset: int, timestamp: int, value: bytes) -> list[ApplyResult]:
        """Decodes a ``LogEntryValue`` and applies it (followers, WAL replay)."""
        return run_steps(self.apply_log_entry_value_steps(offset, timestamp, value))

    def apply_log_entry_value_steps(
        self, offset: int, timestamp: int, value: bytes
    ) -> Steps[list[ApplyResult]]:
        """:meth:`apply_log_entry_value` in steps."""
        lev = storage_pb2.LogEntryValue.FromString(value)
        which = lev.WhichOneof("value")
        if which == "requests":
            writes = lev.requests.writes
            if len(writes) == 1:
                return [(yield from self.apply_write_steps(writes[0], offset, timestamp))]
            # Several writes in one entry (pyxia's leader logs one per entry) are applied as
            # one step: each writes its own batch, so the entry must not be abandoned halfway.
            return [self.apply_write(w, offset, timestamp) for w in writes]
        # Control requests carry no user data: only the offset moves.
        self.apply_noop(offset)
        return []

    def apply_noop(self, offset: int) -> None:
        b = self.db.new_batch()
        self.db.put_commit_offset(b, offset)
        self.db.write(b)
        self.commit_offset = offset

    def apply_write(self, req: client_pb2.WriteRequest, offset: int, timestamp: int) -> ApplyResult:
        """Applies one write request as the entry at ``offset``."""
        return run_steps(self.apply_write_steps(req, offset, timestamp))

    def apply_write_steps(
        self, req: client_pb2.WriteRequest, offset: int, timestamp: int
    ) -> Steps[ApplyResult]:
        """:meth:`apply_write` in steps: one per operation, then the DB write (a write of plain
        puts: one step, natively). Closed before its last step, it leaves the DB and this
        applier as they were."""
        started = time.perf_counter()
        if (
            self.native
            and 0 < len(req.puts) <= NATIVE_MAX_PUTS
            and not req.deletes
            and not req.delete_ranges
        ):
            done = self._apply_puts_natively(req, offset, timestamp, started)
            if done is not None:
                return done
        stage = _Stage(self.db)
        notifications = (
            Notifications(self.shard, offset, timestamp) if self.notifications_enabled else None
        )
        base_version = self.last_version_id
        seq_updates: list[tuple[str, str]] = []
        try:
            res = client_pb2.WriteResponse()
            add_put = res.puts.add
            put = self._put
            for p in req.puts:
                generated = put(stage, p, add_put(), timestamp, notifications)
                if generated is not None:
                    seq_updates.append((p.key, generated))
                yield
            deletes = res.deletes
            for d in req.deletes:
                deletes.append((yield from self._delete(stage, d, notifications)))
                yield
            ranges = res.delete_ranges
            for r in req.delete_ranges:
                ranges.append((yield from self._delete_range(stage, r, notifications)))
                yield
        except keys.SequenceKeyError as e:
            # Rejected as a whole, identically on every replica.
            self.last_version_id = base_version
            self.apply_noop(offset)
            rejected = RejectedWrite(str(e))
            rejected.__cause__ = e
            return ApplyResult(None, rejected, request=req)
        except BaseException:
            self.last_version_id = base_version
            raise
        batch = stage.batch
        self.db.put_commit_offset(batch, offset)
        self.db.put_last_version_id(batch, self.last_version_id)
        notified = False
        if notifications is not None and len(notifications):
            batch.put(
                self.encoding.encode(keys.notification_key(offset)),
                notifications.seal_bytes(),
            )
            notified = True
        m = self.metrics
        if m is not None:  # a written batch is consumed: measured before
            m.kv_batch(batch.size_in_bytes(), batch.len())
        committing = time.perf_counter()
        try:
            self.db.write(batch)
        except BaseException:
            self.last_version_id = base_version
            if m is not None:
                m.kv_write_errors.inc()
            raise
        self.commit_offset = offset
        if m is not None:
            m.db_applied(
                len(req.puts), len(req.deletes), len(req.delete_ranges), started, committing
            )
        return ApplyResult(res, None, seq_updates, notified)

    def _apply_puts_natively(
        self, req: client_pb2.WriteRequest, offset: int, timestamp: int, started: float
    ) -> ApplyResult | None:
        """Applies a plain-put write in one native call and one DB batch; None when the native
        path declines it (it changed nothing: the Python path applies it). Counted in the
        shard's metrics as the Python path counts a write (``started``: when it began)."""
        db = self.db
        out = apply_puts(
            req.SerializeToString(),
            self._hierarchical,
            db.db.get,
            self.last_version_id,
            timestamp,
            (self.shard, offset) if self.notifications_enabled else None,
        )
        if out is None:
            return None
        records, last_version_id, response, notification_batch = out
        batch = db.new_batch()
        put = batch.put
        for ekey, record in records:
            put(ekey, record)
        db.put_commit_offset(batch, offset)
        db.put_last_version_id(batch, last_version_id)
        if notification_batch is not None:
            put(self.encoding.encode(keys.notification_key(offset)), notification_batch)
        m = self.metrics
        if m is not None:  # a written batch is consumed: measured before
            m.kv_batch(batch.size_in_bytes(), batch.len())
        committing = time.perf_counter()
        try:
            db.write(batch)
        except BaseException:
            if m is not None:
                m.kv_write_errors.inc()
            raise
        self.last_version_id = last_version_id
        self.commit_offset = offset
        if m is not None:
            m.db_applied(len(req.puts), 0, 0, started, committing)
        return ApplyResult(None, None, None, notification_batch is not None, wire=response)

    # -- operations -------------------------------------------------------------------------------

    def _put(
        self,
        st: _Stage,
        req: client_pb2.PutRequest,
        pr: client_pb2.PutResponse,
        timestamp: int,
        notifications: Notifications | None,
    ) -> str | None:
        """Applies one put, filling ``pr`` in place (it runs once per put:
        no message is built only to be copied). Returns the generated key of
        a sequential put."""
        enc = self.encoding.encode
        generated: str | None = None
        existing: storage_pb2.StorageEntry | None = None
        if req.sequence_key_delta:
            try:
                keys.validate_sequence_put(
                    has_partition_key=req.HasField("partition_key"),
                    has_expected_version=req.HasField("expected_version_id"),
                )
            except keys.SequenceWithExpectedVersion:
                pr.status = UNEXPECTED_VERSION_ID
                return None
            search = keys.sequence_search_key(req.key)
            if self._has_key_with_prefix(st, search):
                # Its first part is at 2^64-1: the lookup below (Oxia's, strictly below the
                # search key) would miss that key and hand out it again, or a lower one.
                raise keys.SequenceOverflow(
                    f"oxia: sequential key operation overflows the sequence {req.key!r}: its "
                    f"first part is already {keys.MAX_SEQUENCE_VALUE} (2^64-1)"
                )
            last = self._last_key_below(st, search)
            generated = keys.next_sequence_key(req.key, last, list(req.sequence_key_delta))
            key = generated
            ekey = enc(key)
            raw = st.get(ekey)
            if raw is not None:
                existing = StorageEntry.FromString(raw)
        else:
            key = req.key
            ekey = enc(key)
            raw = st.get(ekey)
            if raw is not None:
                existing = StorageEntry.FromString(raw)
            if req.HasField("expected_version_id"):
                ev = req.expected_version_id
                if (existing is None and ev != -1) or (
                    existing is not None and existing.version_id != ev
                ):
                    pr.status = UNEXPECTED_VERSION_ID
                    return None

        has_session = req.HasField("session_id")
        if has_session:
            sid = req.session_id
            # Session ids are WAL offsets: a negative one names no session.
            if sid < 0 or st.get(enc(keys.session_key(sid))) is None:
                pr.status = SESSION_DOES_NOT_EXIST
                return None
        if existing is not None:
            if existing.HasField("session_id"):
                st.delete(enc(keys.session_shadow_key(existing.session_id, key)))
            if existing.secondary_indexes:
                for si in existing.secondary_indexes:
                    st.delete(enc(keys.index_entry_key(si.index_name, si.secondary_key, key)))
        if has_session:
            st.put(enc(keys.session_shadow_key(sid, key)), b"")
        indexes = req.secondary_indexes
        if indexes:
            for si in indexes:
                st.put(enc(keys.index_entry_key(si.index_name, si.secondary_key, key)), b"")

        if req.HasField("override_version_id"):
            version_id = req.override_version_id
        else:
            self.last_version_id += 1
            version_id = self.last_version_id
        if existing is None:
            mod_count = 0
            created = timestamp
        else:
            mod_count = existing.modifications_count + 1
            created = existing.creation_timestamp
        if req.HasField("override_modifications_count"):
            mod_count = req.override_modifications_count
        se = StorageEntry(
            version_id=version_id,
            modifications_count=mod_count,
            creation_timestamp=created,
            modification_timestamp=timestamp,
        )
        if indexes:
            se.secondary_indexes.extend(indexes)
        has_identity = req.HasField("client_identity")
        if has_session:
            se.session_id = sid
        if has_identity:
            se.client_identity = req.client_identity
        if req.HasField("partition_key"):
            se.partition_key = req.partition_key
        st.put(ekey, storage_entry_bytes(se, req.value))
        if notifications is not None:
            notifications.modified(key, version_id, mod_count)
        v = pr.version
        v.version_id = version_id
        v.modifications_count = mod_count
        v.created_timestamp = created
        v.modified_timestamp = timestamp
        if has_session:
            v.session_id = sid
        if has_identity:
            v.client_identity = req.client_identity
        if generated is not None:
            pr.key = generated
        return generated

    def _has_key_with_prefix(self, st: _Stage, prefix: str) -> bool:
        """Whether ``prefix`` itself or a key ``prefix-...`` is stored (both sort in one run
        starting at ``prefix`` in either encoding: a '-' suffix adds no level)."""
        enc = self.encoding.encode
        if st.get(enc(prefix)) is not None:
            return True
        lower = enc(prefix + "-")
        for _ in st.scan(ScanBounds(lower, enc(prefix + ".")), reverse=False):
            return True
        return False

    def _last_key_below(self, st: _Stage, key: str) -> str | None:
        """The greatest user key strictly below ``key``."""
        upper = self.encoding.encode(key)
        start, _ = self.encoding.internal_region
        bounds = ScanBounds(None, min(upper, start))
        for ekey, _ in st.scan(bounds, reverse=True):
            return self.encoding.decode(ekey)
        return None

    def _delete(
        self,
        st: _Stage,
        req: client_pb2.DeleteRequest,
        notifications: Notifications | None,
    ) -> Steps[client_pb2.DeleteResponse]:
        key = req.key
        ekey = self.encoding.encode(key)
        raw = st.get(ekey)
        if raw is None:
            if req.HasField("expected_version_id") and req.expected_version_id != -1:
                return DeleteResponse(status=UNEXPECTED_VERSION_ID)
            return DeleteResponse(status=KEY_NOT_FOUND)
        existing = StorageEntry.FromString(raw)
        if req.HasField("expected_version_id") and existing.version_id != req.expected_version_id:
            return DeleteResponse(status=UNEXPECTED_VERSION_ID)
        yield from self._delete_entry(st, key, ekey, existing, notifications)
        return DeleteResponse(status=OK)

    def _delete_entry(
        self,
        st: _Stage,
        key: str,
        ekey: bytes,
        entry: storage_pb2.StorageEntry,
        notifications: Notifications | None,
    ) -> Steps[None]:
        """Deletes a record with its shadow key, index entries and (for a
        session record) the session's ephemeral records, one step each."""
        enc = self.encoding.encode
        if entry.HasField("session_id"):
            st.delete(enc(keys.session_shadow_key(entry.session_id, key)))
        for si in entry.secondary_indexes:
            st.delete(enc(keys.index_entry_key(si.index_name, si.secondary_key, key)))
        if keys.is_session_key(key):
            yield from self._close_session(st, keys.parse_session_key(key), notifications)
        st.delete(ekey)
        if notifications is not None:
            notifications.deleted(key)

    def _close_session(
        self, st: _Stage, session_id: int, notifications: Notifications | None
    ) -> Steps[None]:
        lower, upper = keys.session_shadow_range(session_id, self.encoding)
        # Lazily: the scan skips what this loop deletes (the overlay wins).
        for shadow, _ in st.scan(ScanBounds(lower, upper)):
            yield
            st.delete(shadow)
            _, user_key = keys.parse_session_shadow_key(self.encoding.decode(shadow))
            if not user_key:
                continue
            ekey = self.encoding.encode(user_key)
            raw = st.get(ekey)
            if raw is None:
                continue
            entry = StorageEntry.FromString(raw)
            if entry.HasField("session_id") and entry.session_id == session_id:
                yield from self._delete_entry(st, user_key, ekey, entry, notifications)

    def _delete_range(
        self,
        st: _Stage,
        req: client_pb2.DeleteRangeRequest,
        notifications: Notifications | None,
    ) -> Steps[client_pb2.DeleteRangeResponse]:
        bounds = keys.delete_range_bounds(req.start_inclusive, req.end_exclusive, self.encoding)
        if notifications is not None:
            notifications.deleted_range(req.start_inclusive, req.end_exclusive)
        decode = self.encoding.decode
        enc = self.encoding.encode
        # Lazily: the scan skips what an earlier operation of this entry deleted (the overlay
        # wins), and the records this loop deletes are behind it.
        for ekey, raw in st.scan(bounds):
            key = decode(ekey)
            entry = StorageEntry.FromString(raw)
            if entry.HasField("session_id"):
                st.delete(enc(keys.session_shadow_key(entry.session_id, key)))
            for si in entry.secondary_indexes:
                st.delete(enc(keys.index_entry_key(si.index_name, si.secondary_key, key)))
            st.delete(ekey)
            yield
        return DeleteRangeResponse(status=OK)


KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class WriteLimits:
    """What one client write may hold, checked before it is logged (``--max-key-size``,
    ``--max-value-size``, ``--max-write-operations``; Oxia has none of these, only its 256 MiB
    gRPC messages). rocksdict holds the GIL in every call, so what a write costs the event loop
    grows with it; measured on this machine (issue 15 §6): an 8 MiB put takes ~30 ms of CPU
    (WAL append and copies; ~4 ms per MiB, worse past 32 MiB where every buffer is freshly
    mapped), a write's last step, its one atomic DB batch, ~1 µs per operation (12 ms for
    10,000 puts, 310 ms for 100,000 on a loaded machine):

    * keys (and secondary index names and keys, partition keys, delete-range bounds): 64 KiB
      of UTF-8. Keys are copied into internal keys, notifications and index blocks; path-like
      keys are a few hundred bytes;
    * values: 8 MiB, so one value holds the loop for tens of milliseconds at most (ZooKeeper's
      default limit is 1 MB, etcd's 1.5 MiB);
    * operations per write: 10,000, ten times what Oxia's clients batch by default (1,000
      operations or 128 KiB per request), so one entry's atomic batch stays a few ms.
    """

    max_key_size: int = 64 * KIB
    max_value_size: int = 8 * MIB
    max_operations: int = 10_000

    def __post_init__(self) -> None:
        if min(self.max_key_size, self.max_value_size, self.max_operations) < 1:
            raise ValueError("write limits must be positive")


DEFAULT_WRITE_LIMITS = WriteLimits()


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_key(what: str, key: str, limits: WriteLimits) -> None:
    # A code point is at most 4 bytes of UTF-8: short keys need no encoding.
    if len(key) * 4 > limits.max_key_size and _utf8_size(key) > limits.max_key_size:
        raise InvalidArgument(
            f"{what} is {_utf8_size(key)} bytes, more than the maximum key size "
            f"({limits.max_key_size} bytes)"
        )


def validate_write_request(
    req: client_pb2.WriteRequest,
    limits: WriteLimits = DEFAULT_WRITE_LIMITS,
    size: int | None = None,
    raw: bytes | None = None,
) -> None:
    """Request-level checks done before an entry is logged. Raises
    InvalidArgument with a clear message; the request is then not applied.

    ``size`` is the request's serialized size when the caller has it (else it is computed):
    no field is larger than the whole request, so the sizes of keys and values are looked at
    only in a request larger than the limit (a client's usual batch is far smaller). ``raw``,
    the request's bytes: one native pass over them tells whether any per-operation check can
    fail (``write_request_shape``); when none can, the operations are not looked at here."""
    puts = req.puts
    deletes = req.deletes
    ranges = req.delete_ranges
    n_ops = len(puts) + len(deletes) + len(ranges)
    if n_ops > limits.max_operations:
        raise InvalidArgument(
            f"the write has {n_ops} operations, more than the maximum of "
            f"{limits.max_operations} per write"
        )
    if size is None:
        size = req.ByteSize()
    check_keys = size > limits.max_key_size
    check_values = size > limits.max_value_size
    if raw is not None and not check_keys and not check_values and write_request_shape(raw)[0]:
        return
    internal = keys.INTERNAL_KEY_PREFIX
    max_value = limits.max_value_size
    short_key = limits.max_key_size // 4  # a code point is at most 4 bytes of UTF-8
    for p in puts:
        key = p.key
        if not key or key.startswith(internal) or p.sequence_key_delta or p.secondary_indexes:
            _validate_put(p, limits)
        if check_keys:
            if len(key) > short_key:
                _check_key("put: the key", key, limits)
            if p.HasField("partition_key") and len(p.partition_key) > short_key:
                _check_key("put: the partition key", p.partition_key, limits)
        if check_values and len(p.value) > max_value:
            raise InvalidArgument(
                f"put {key[:64]!r}: the value is {len(p.value)} bytes, more than the maximum "
                f"value size ({max_value} bytes)"
            )
    for d in deletes:
        key = d.key
        if not key:
            raise InvalidArgument("delete: the key must not be empty")
        if key.startswith(internal):
            raise InvalidArgument(f"delete: keys under {internal} are reserved")
        if check_keys and len(key) > short_key:
            _check_key("delete: the key", key, limits)
    if check_keys:
        for r in ranges:
            _check_key("delete range: the start key", r.start_inclusive, limits)
            _check_key("delete range: the end key", r.end_exclusive, limits)


_OVERRIDE_TAG_BYTES = (b"\x48", b"\xc8", b"\x50", b"\xd0")
"""The first byte of the tag of PutRequest field 9 (override_version_id) and 10
(override_modifications_count), varint wire type, in its shortest form and overlong (a parser
accepts a tag varint with continuation bytes, whose first byte then has the high bit set)."""


def override_fields_used(req: client_pb2.WriteRequest, raw: bytes | None = None) -> bool:
    """Whether a put of ``req`` sets ``override_version_id`` or ``override_modifications_count``
    (Oxia's migration fields, privileged); a negative value raises InvalidArgument.

    ``raw``, the request's bytes, lets a request none of whose bytes can start either field's
    tag (a few memchr), or whose native scan finds neither field, skip the per-put look."""
    if raw is not None and (
        not any(b in raw for b in _OVERRIDE_TAG_BYTES) or not write_request_shape(raw)[1]
    ):
        return False
    used = False
    for p in req.puts:
        if p.HasField("override_version_id"):
            if p.override_version_id < 0:
                raise InvalidArgument(
                    f"put: override_version_id must be >= 0, got {p.override_version_id}"
                )
            used = True
        if p.HasField("override_modifications_count"):
            if p.override_modifications_count < 0:
                raise InvalidArgument(
                    "put: override_modifications_count must be >= 0, got "
                    f"{p.override_modifications_count}"
                )
            used = True
    return used


def _validate_put(p: client_pb2.PutRequest, limits: WriteLimits) -> None:
    if p.sequence_key_delta:
        if not p.key:
            raise InvalidArgument("a sequential put needs a key prefix")
        if not p.HasField("partition_key"):
            raise InvalidArgument("oxia: sequential key operation requires partition key")
        if p.sequence_key_delta[0] == 0:
            raise InvalidArgument("oxia: sequential key operation requires first delta do be > 0")
    elif not p.key:
        raise InvalidArgument("put: the key must not be empty")
    if keys.is_internal_key(p.key):
        raise InvalidArgument(f"put: keys under {keys.INTERNAL_KEY_PREFIX} are reserved")
    for si in p.secondary_indexes:
        if not si.index_name or "/" in si.index_name:
            raise InvalidArgument(
                f"put: invalid secondary index name {si.index_name[:64]!r} (empty or with '/')"
            )
        _check_key("put: the secondary index name", si.index_name, limits)
        _check_key("put: the secondary key", si.secondary_key, limits)
