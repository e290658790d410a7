"""The storage of one shard replica: its WAL, its DB and the applier.

Layout (as Oxia): ``<data-dir>/<namespace>/shard-<id>`` for the DB and
``<wal-dir>/<namespace>/shard-<id>`` for the WAL, built only by :func:`shard_dir`, which
refuses a namespace that is not a valid name (no separators, no ``..``, bounded length).
A marker file in the DB directory records the key encoding the data was written with, so a
restart never reads a DB with the wrong encoding.

Opening recovers: the DB says up to which offset it applied; the WAL is
opened with that commit offset (a corrupt tail above it is discarded, below
it is an error, and so is a log that starts after it: the retention flushes
the DB before it deletes a segment, so that never happens). A WAL or DB found
damaged, or a DB that is missing while its log no longer starts at entry 0,
raises :class:`~pyxia.errors.ReplicaCorrupt` whose message says how to inspect
or repair it; nothing is changed on disk.
Entries between the DB's commit offset and the WAL head are applied later,
by whoever knows they are committed (the leader once its head is committed
by a quorum, a follower up to the leader's commit offset).

A shard split's child replica holds its parent's data whole until its first own term (see
``storage/split.py``): :meth:`ShardStorage.apply_steps` cuts it down before the first entry of
a later term than the parent's, and a leader cuts it before it serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pyxia._native import CorruptedLog, EntryNotFound, Wal
from pyxia.common import keys
from pyxia.common.keys import KeyEncoding
from pyxia.common.validation import REBUILDING_HEAD, check_namespace, check_shard_id
from pyxia.errors import ReplicaCorrupt
from pyxia.failpoints import failpoint
from pyxia.metrics import SHARDS, ReplicaGauges, ShardMetrics
from pyxia.proto import replication_pb2
from pyxia.server.term_sync import TermSyncGroup
from pyxia.storage.apply import DEFAULT_WRITE_LIMITS, StateApplier, WriteLimits
from pyxia.storage.db import INVALID_OFFSET, INVALID_TERM, DbResources, ShardDB, TermOptions
from pyxia.storage.split import SplitFilter, cut_steps, read_filter, write_filter
from pyxia.storage.steps import Steps, run_steps
from pyxia.wal_inspect import repair_hint, segment_files

log = logging.getLogger("pyxia.shard")

ENCODING_MARKER = "pyxia-key-encoding"


@dataclass(frozen=True)
class StorageOptions:
    data_dir: Path
    wal_dir: Path
    wal_sync_data: bool = True
    wal_segment_size: int = 64 * 1024 * 1024
    wal_retention_ms: int = 60 * 60 * 1000
    notifications_retention_ms: int = 60 * 60 * 1000
    # What a client write may hold (checked by the leader before logging it).
    write_limits: WriteLimits = DEFAULT_WRITE_LIMITS
    # Shared by every shard DB opened with these options: the block cache.
    db: DbResources = field(default_factory=DbResources, compare=False)


def shard_dir(base: Path, namespace: str, shard: int) -> Path:
    """``<base>/<namespace>/shard-<id>``. Refuses (InvalidArgument) a namespace that is not a
    valid name and a shard id out of range, whoever the caller: a path is built only from
    validated names, so it can never leave ``base``."""
    check_namespace(namespace)
    check_shard_id(shard)
    return base / namespace / f"shard-{shard}"


def is_db_corruption(e: Exception) -> bool:
    """Whether RocksDB refused to open a DB because its files are damaged or missing (not
    because it is busy or the disk is unwritable)."""
    text = str(e)
    return text.startswith("Corruption") or text.startswith("IO error: No such file or directory")


class ShardStorage:
    """WAL + DB + applier of one shard replica."""

    def __init__(
        self, namespace: str, shard: int, options: StorageOptions, encoding: KeyEncoding
    ) -> None:
        self.namespace = namespace
        self.shard = shard
        self.options = options
        self.db_path = shard_dir(options.data_dir, namespace, shard)
        self.wal_path = shard_dir(options.wal_dir, namespace, shard)
        if not (self.db_path / ENCODING_MARKER).exists():
            logs = segment_files(self.wal_path) if self.wal_path.is_dir() else []
            if logs and logs[0][0] > 0:
                raise self._corrupt_db(
                    f"the DB is missing, and the log starts at entry {logs[0][0]}: "
                    "the entries before it are gone"
                )
        try:
            self.encoding = self._resolve_encoding(encoding)
        except ValueError as e:
            raise self._corrupt_db(f"unreadable {ENCODING_MARKER}: {e}") from e
        try:
            self.db = ShardDB(self.db_path, self.encoding, options.db)
        except Exception as e:
            if is_db_corruption(e):
                raise self._corrupt_db(str(e)) from e
            raise
        try:
            self.wal = Wal(
                self.wal_path,
                segment_size=options.wal_segment_size,
                sync_data=options.wal_sync_data,
                retention_ms=options.wal_retention_ms,
                commit_offset=self.db.commit_offset(),
            )
            first = self.wal.first_offset
            if first > self.db.commit_offset() + 1:
                # Entries the DB has not applied were deleted: replaying would skip them.
                self.wal.close()
                raise CorruptedLog(
                    f"{self.wal_path}: the log starts at {first} but the DB has applied only "
                    f"up to {self.db.commit_offset()}: committed entries are missing"
                )
        except BaseException as e:
            self.db.close()
            if isinstance(e, CorruptedLog):
                raise self._corrupt_wal(str(e)) from e
            raise
        try:
            _, term_options = self.db.read_term()
        except ValueError as e:
            self.wal.close()
            self.db.close()
            raise self._corrupt_db(f"unreadable term: {e}") from e
        except BaseException:
            self.wal.close()
            self.db.close()
            raise
        self.metrics = ShardMetrics(namespace, shard)
        self.applier = StateApplier(
            self.db,
            shard,
            notifications_enabled=term_options.notifications_enabled,
            metrics=self.metrics,
        )
        self._closed = False
        try:
            self.split_filter: SplitFilter | None = read_filter(self.db)
        except ValueError as e:
            self.wal.close()
            self.db.close()
            raise self._corrupt_db(f"unreadable split filter: {e}") from e
        self._rebuilding = self.rebuild_marker.exists()
        # Held (in a worker thread) by a retention step, and by whatever replaces or closes
        # the DB, so that neither runs under the other.
        self._maintenance = threading.Lock()
        SHARDS.add(self)

    def _corrupt_wal(self, detail: str) -> ReplicaCorrupt:
        hint = repair_hint(self.options.wal_dir, self.namespace, self.shard)
        return ReplicaCorrupt(
            f"shard {self.namespace}/{self.shard}: the write-ahead log {self.wal_path} is "
            f"damaged ({detail}); {hint}",
            shard=self.shard,
            namespace=self.namespace,
            part="wal",
        )

    def _corrupt_db(self, detail: str) -> ReplicaCorrupt:
        logs = segment_files(self.wal_path) if self.wal_path.is_dir() else []
        if self.db_path.exists() and logs and logs[0][0] == 0:
            hint = "move it aside and restart: its log holds every entry from 0 and rebuilds it"
        else:
            hint = "restore it from a backup (see docs/operations.md)"
        return ReplicaCorrupt(
            f"shard {self.namespace}/{self.shard}: the database {self.db_path} is damaged "
            f"({detail}); {hint}",
            shard=self.shard,
            namespace=self.namespace,
            part="db",
        )

    def _resolve_encoding(self, requested: KeyEncoding) -> KeyEncoding:
        marker = self.db_path / ENCODING_MARKER
        if marker.exists():
            name = marker.read_text().strip()
            if name != requested.name:
                log.warning(
                    "shard %s/%s: data uses %s key sorting, not %s; keeping %s",
                    self.namespace,
                    self.shard,
                    name,
                    requested.name,
                    name,
                )
            return keys.encoding_by_name(name)
        self.db_path.mkdir(parents=True, exist_ok=True)
        marker.write_text(requested.name + "\n")
        return requested

    @property
    def closed(self) -> bool:
        return self._closed

    # -- rebuilding after corruption --------------------------------------------------------------

    @property
    def rebuild_marker(self) -> Path:
        """Present while this replica is being rebuilt from its peers (its own files were
        found corrupt and moved aside): it must not lead, nor win an election, meanwhile."""
        return self.db_path.with_name(f"{self.db_path.name}.rebuilding")

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding

    def mark_rebuilding(self, reason: str) -> None:
        self.rebuild_marker.write_text(reason + "\n")
        self._rebuilding = True

    def finish_rebuilding(self) -> None:
        self.rebuild_marker.unlink(missing_ok=True)
        self._rebuilding = False

    def election_head(self) -> replication_pb2.EntryId:
        """The head reported to a NewTerm: a replica being rebuilt ranks below every other,
        an empty one included, so a coordinator never picks it while another can lead."""
        if self._rebuilding:
            term, offset = REBUILDING_HEAD
            return replication_pb2.EntryId(term=term, offset=offset)
        return self.head_entry_id()

    def read_term(self) -> tuple[int, TermOptions]:
        return self.db.read_term()

    def update_term(self, term: int, options: TermOptions) -> None:
        self.db.update_term(term, options)
        self.applier.notifications_enabled = options.notifications_enabled

    async def store_term(self, term: int, options: TermOptions) -> None:
        """:meth:`update_term` in the event loop's term sync round (``server.term_sync``):
        returns once the term is durable, without holding the loop or the GIL meanwhile."""
        loop = asyncio.get_running_loop()
        await TermSyncGroup.for_loop(loop).store(self.db, term, options)
        self.applier.notifications_enabled = options.notifications_enabled

    @property
    def commit_offset(self) -> int:
        """The offset of the last entry applied to the DB."""
        return self.applier.commit_offset

    def head_entry_id(self) -> replication_pb2.EntryId:
        """Term and offset of the last entry in the WAL, or {-1, -1}."""
        last = self.wal.last_offset
        if last < 0:
            return replication_pb2.EntryId(term=INVALID_TERM, offset=INVALID_OFFSET)
        return replication_pb2.EntryId(term=self.wal.read(last).term, offset=last)

    def apply_up_to(self, offset: int, batch: int = 1000) -> int:
        """Applies WAL entries after the DB's commit offset up to ``offset``
        (known committed). Returns how many were applied."""
        return run_steps(self.apply_steps(offset, batch))

    def apply_steps(self, offset: int, batch: int = 1000) -> Steps[int]:
        """:meth:`apply_up_to` in steps (a step per operation of each entry): a caller runs
        it in slices of event-loop time (``storage.steps.run_sliced``). Abandoned between two
        steps, every entry is either applied or untouched."""
        applied = 0
        nxt = self.applier.commit_offset + 1
        while nxt <= offset:
            try:
                # At most ~4 MiB of entries are read at a time (the WAL's default).
                entries = self.wal.read_batch(nxt, max_entries=min(batch, offset - nxt + 1))
            except EntryNotFound:
                # Below the WAL's first entry (after a snapshot): nothing to replay.
                break
            if not entries:
                break
            for e in entries:
                flt = self.split_filter
                if flt is not None and e.term > flt.parent_term:
                    yield from self.cut_steps()
                yield from self.applier.apply_log_entry_value_steps(e.offset, e.timestamp, e.value)
                applied += 1
                yield
            nxt = entries[-1].offset + 1
        return applied

    # -- shard split ------------------------------------------------------------------------------

    def set_split_filter(self, flt: SplitFilter) -> None:
        """Marks this replica as a split child observing its parent (durably)."""
        if self.split_filter != flt:
            write_filter(self.db, flt)
            self.split_filter = flt

    def cut_steps(self) -> Steps[int]:
        """Cuts a split child's copy of the parent's data down to its hash range (nothing to
        do for any other replica). Returns the keys deleted."""
        flt = self.split_filter
        if flt is None:
            return 0
        deleted = yield from cut_steps(self.db, flt, self.shard)
        self.split_filter = None
        log.info(
            "shard %s/%s: cut down to hashes %d..%d after the split (%d keys deleted)",
            self.namespace,
            self.shard,
            flt.min_hash,
            flt.max_hash,
            deleted,
        )
        return deleted

    def flush_and_trim(self, keep_from: int, applied: int, db: ShardDB) -> int:
        """Makes the DB durable up to what it has applied (its own WAL is off), then deletes
        the WAL segments wholly before ``keep_from``, never one holding an entry above
        ``applied`` (the commit offset this DB had applied before the call). Does nothing if
        the replica was closed or its DB replaced (a snapshot) since ``db`` was read. Safe to
        call from a worker thread. Returns the WAL's first offset."""
        with self._maintenance:
            if self._closed or self.db is not db:
                return -1
            db.flush()
            failpoint("retention.after_flush_before_trim")
            first = self.wal.trim(keep_from, applied)
            failpoint("retention.after_trim")
            return first

    # -- snapshots --------------------------------------------------------------------------------

    def create_snapshot(self) -> Path:
        """A consistent copy of the DB (RocksDB checkpoint, hard links) plus
        the key-encoding marker, in a new directory the caller removes."""
        target = self.db_path.parent / f".snapshot-{self.shard}-{uuid.uuid4().hex[:8]}"
        self.db.checkpoint(target)
        (target / ENCODING_MARKER).write_text(self.encoding.name + "\n")
        return target

    def snapshot_staging_dir(self) -> Path:
        """A fresh directory next to the DB to receive a snapshot into."""
        d = self.db_path.parent / f".incoming-{self.shard}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def install_snapshot(
        self, staged: Path, term: int, split_filter: SplitFilter | None = None
    ) -> int:
        """Replaces the DB with the snapshot in ``staged`` and clears the WAL.

        The old DB is moved aside first and put back if anything fails, so
        the replica is never left without a working DB. The term is
        persisted (with the snapshot's own term options) before returning.
        Returns the snapshot's commit offset. ``split_filter``: the snapshot is a split
        parent's; it is recorded in the new DB before its WAL is cleared."""
        with self._maintenance:
            return self._install_snapshot(staged, term, split_filter)

    def _install_snapshot(self, staged: Path, term: int, split_filter: SplitFilter | None) -> int:
        marker = staged / ENCODING_MARKER
        encoding = (
            keys.encoding_by_name(marker.read_text().strip()) if marker.exists() else self.encoding
        )
        backup = self.db_path.parent / f".previous-{self.shard}-{uuid.uuid4().hex[:8]}"
        self.db.close()
        os.replace(self.db_path, backup)
        try:
            os.replace(staged, self.db_path)
            db = ShardDB(self.db_path, encoding, self.options.db)
        except BaseException:
            shutil.rmtree(self.db_path, ignore_errors=True)
            os.replace(backup, self.db_path)
            self.db = ShardDB(self.db_path, self.encoding, self.options.db)
            self.applier = StateApplier(
                self.db,
                self.shard,
                notifications_enabled=self.db.read_term()[1].notifications_enabled,
                metrics=self.metrics,
            )
            raise
        shutil.rmtree(backup, ignore_errors=True)
        self.db = db
        self.encoding = encoding
        _, options = db.read_term()
        db.update_term(term, options)
        self.applier = StateApplier(
            db,
            self.shard,
            notifications_enabled=options.notifications_enabled,
            metrics=self.metrics,
        )
        if split_filter is not None:
            write_filter(db, split_filter)
        self.wal.clear()
        self.split_filter = read_filter(db)
        return self.applier.commit_offset

    def scrape(self) -> ReplicaGauges | None:
        """The replica's gauges for the metrics (called from the scrape thread); None once
        closed. A DB or WAL closing meanwhile raises, and the scrape skips the replica."""
        if self._closed:
            return None
        wal = self.wal
        return ReplicaGauges(
            wal_entries=max(0, wal.last_synced_offset - wal.first_offset + 1)
            if wal.last_synced_offset >= 0
            else 0,
            **self.db.gauges(),
        )

    def close(self) -> None:
        """Closes WAL and DB. Idempotent."""
        with self._maintenance:
            if self._closed:
                return
            self._closed = True
            SHARDS.remove(self)
            try:
                self.wal.close()
            finally:
                self.db.close()

    def delete(self) -> None:
        """Closes and removes every file of this replica."""
        self.close()
        self.rebuild_marker.unlink(missing_ok=True)
        shutil.rmtree(self.wal_path, ignore_errors=True)
        shutil.rmtree(self.db_path, ignore_errors=True)
