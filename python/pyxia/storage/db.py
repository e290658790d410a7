"""One RocksDB per shard (through rocksdict), in raw-bytes mode.

RocksDB's own WAL is off: durability comes from pyxia's WAL. Every batch the
shard applies carries the commit offset (``__oxia/commit-offset``), so after a
crash the DB may lag the WAL, never lead it, and a restart replays the WAL
from there. The term is not in the WAL, so it is written through RocksDB's own WAL, synced
(one fdatasync, where a memtable flush costs several fsyncs and a table file: a server
electing 1,000 shards paid that 1,000 times in a row); RocksDB replays it on open.

Two ways to make a term durable: :meth:`ShardDB.update_term` (a synced RocksDB write: rocksdict
holds the GIL through its fdatasync, so every other thread of the process waits for it), or
:meth:`ShardDB.write_term` then :meth:`ShardDB.sync_term` (an unsynced write, which RocksDB
hands to the OS at once, then an fdatasync of RocksDB's WAL files and an fsync of their
directory through ``os``, which releases the GIL: many shards' syncs overlap, see
``pyxia.server.term_sync``). Only the term goes through RocksDB's WAL (every other write has
it disabled), so its WAL files are small, and a WAL file RocksDB deleted meanwhile had its
records flushed to a synced table file first.

Keys are stored encoded (``KeyEncoding``); values of user records and of the
internal counters are ``StorageEntry`` protobufs, as in Oxia.

Tuning (:class:`DbTuning`, measured on the audit's scenario of issue 15: a 60 MiB value made
every point lookup of a neighbouring key read the whole 60 MiB data block, so 1,000 puts next to
it took ~50 s):

* values of at least ``min_blob_size`` bytes live in blob files (RocksDB's integrated BlobDB),
  not in the data blocks, so a data block stays near ``block_size`` and a point lookup reads at
  most about ``block_size + min_blob_size`` bytes of it, whatever the neighbours hold; blob
  garbage collection reclaims overwritten large values during compaction;
* a whole-key bloom filter per table file, so a lookup of an absent key (every put of a new
  key checks for an existing record) usually reads no data block at all;
* one LRU block cache shared by every shard DB of the process (``DbResources``), sized like
  Oxia's ``--db-cache-size-mb``; index and filter blocks are charged to it (pinned for L0), so
  the memory of many shards stays bounded by one number;
* one write buffer manager shared by every shard DB of the process: the memtables of all shards
  together stay within ``write_buffer_budget_mb`` (a write past it flushes the memtable of the
  shard written), each shard's memtable is small (``write_buffer_size_kb``, allocated in small
  arena blocks of :data:`ARENA_BLOCK_SIZE`, so an idle shard holds little and 1,000 written
  shards stay far under the budget), and a shard keeps at most ``max_open_files``
  table files open. Measured on one server with 1,000 shards (docs/benchmarks.md, "A data
  server with many shards"): memory and descriptors stay bounded as shards are added;
* a DB opens its table files in the opening thread (RocksDB's default starts 16 threads per
  open: 45 ms per shard instead of 10 ms, 1,000 shards took 45 s to open); its info log is
  rotated at 1 MiB and two old ones are kept (the default keeps 1,000, one per restart).

Every option here only changes how new table files are written and read: a DB written with
other options (or rocksdict's defaults) opens and reads as before, and is rewritten gradually
by compaction. The options are passed for the default column family explicitly, because
rocksdict otherwise reopens an existing DB with the options saved in it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Checkpoint,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from pyxia.common import keys
from pyxia.common.keys import KeyEncoding
from pyxia.metrics import KV_MAX_CACHE_SIZE, rocksdb_statistics
from pyxia.proto import storage_pb2

INVALID_TERM = -1
INVALID_OFFSET = -1

DEFAULT_CACHE_SIZE_MB = 100
"""Oxia's default ``--db-cache-size-mb`` (``storage.database.readCacheSizeMB``)."""

ARENA_BLOCK_SIZE = 64 * 1024
"""Memtable memory is allocated in blocks of this size (RocksDB's default is 1/8 of the write
buffer). Every memtable that holds a write holds at least one block, and the write buffer
manager counts blocks against its budget: with 512 KiB blocks, 1,000 written shards held
500 MiB, over the 256 MiB budget, so nearly every write flushed its shard's memtable (14,215
flushes in 25 s of writes). 64 KiB blocks: 62.5 MiB for 1,000 shards."""


@dataclass(frozen=True)
class DbTuning:
    """How the shard DBs of a process are opened (see the module docstring for the why)."""

    cache_size_mb: int = DEFAULT_CACHE_SIZE_MB
    block_size: int = 16 * 1024
    bloom_bits_per_key: int = 10
    min_blob_size: int = 4 * 1024
    write_buffer_budget_mb: int = 256
    write_buffer_size_kb: int = 8 * 1024
    max_open_files: int = 256

    def __post_init__(self) -> None:
        if self.cache_size_mb < 1:
            raise ValueError(f"the DB cache size must be at least 1 MB, not {self.cache_size_mb}")
        if self.write_buffer_budget_mb < 1 or self.write_buffer_size_kb < 64:
            raise ValueError(
                "the DB write buffer budget must be >= 1 MB and a shard's write buffer >= 64 KiB"
            )
        if self.max_open_files < 16:
            raise ValueError(f"a shard DB needs at least 16 open files, not {self.max_open_files}")
        if self.block_size < 1024 or self.min_blob_size < 1:
            raise ValueError("the DB block size must be >= 1 KiB and the blob size >= 1 byte")


class DbResources:
    """What every shard DB of one process shares: the tuning, one block cache and one write
    buffer manager (RocksDB keeps both alive as long as a DB uses them)."""

    def __init__(self, tuning: DbTuning | None = None) -> None:
        self.tuning = tuning or DbTuning()
        self.block_cache = Cache(self.tuning.cache_size_mb * 1024 * 1024)
        self.write_buffers = WriteBufferManager(self.tuning.write_buffer_budget_mb << 20, False)
        KV_MAX_CACHE_SIZE.set(self.tuning.cache_size_mb * 1024 * 1024)

    def options(self) -> Options:
        """Options for one shard DB (raw bytes mode)."""
        t = self.tuning
        table = BlockBasedOptions()
        table.set_block_cache(self.block_cache)
        table.set_block_size(t.block_size)
        table.set_bloom_filter(t.bloom_bits_per_key, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_block_based_table_factory(table)
        opts.set_enable_blob_files(True)
        opts.set_min_blob_size(t.min_blob_size)
        opts.set_enable_blob_gc(True)
        opts.set_write_buffer_manager(self.write_buffers)
        opts.set_write_buffer_size(t.write_buffer_size_kb * 1024)
        # Memtable memory is allocated in small arena blocks (see ARENA_BLOCK_SIZE).
        opts.set_arena_block_size(ARENA_BLOCK_SIZE)
        opts.set_max_open_files(t.max_open_files)
        opts.set_max_file_opening_threads(1)
        opts.set_max_log_file_size(1 << 20)
        opts.set_keep_log_file_num(2)
        # Tickers for the block cache's hits and misses, iterators, flushes and compactions
        # (the metrics read them at scrape time; a few atomic increments per operation).
        opts.enable_statistics()
        return opts

    def cache_usage_bytes(self) -> int:
        return int(self.block_cache.get_usage())

    def write_buffer_usage_bytes(self) -> int:
        """Memory the memtables of every shard DB of the process hold (arena blocks)."""
        return int(self.write_buffers.get_usage())


@dataclass(frozen=True)
class TermOptions:
    """What a term was created with (persisted next to the term)."""

    notifications_enabled: bool = True
    key_sorting: str = "hierarchical"

    def to_json(self) -> bytes:
        return json.dumps(
            {"NotificationsEnabled": self.notifications_enabled, "KeySorting": self.key_sorting},
            sort_keys=True,
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> TermOptions:
        d = json.loads(raw)
        return TermOptions(
            notifications_enabled=bool(d.get("NotificationsEnabled", True)),
            key_sorting=str(d.get("KeySorting", "hierarchical")),
        )


def ascii_entry(value: int) -> bytes:
    """The stored form of an internal counter (a StorageEntry with ASCII value)."""
    return storage_pb2.StorageEntry(value=b"%d" % value, version_id=-1).SerializeToString()


def parse_ascii_entry(raw: bytes) -> int:
    return int(storage_pb2.StorageEntry.FromString(raw).value)


class ShardDB:
    """The materialized state of one shard."""

    def __init__(
        self, path: Path, encoding: KeyEncoding, resources: DbResources | None = None
    ) -> None:
        self.path = path
        self.encoding = encoding
        path.mkdir(parents=True, exist_ok=True)
        self.resources = resources or DbResources()
        self._opts = self.resources.options()
        self._db: Rdict | None = Rdict(
            str(path), self._opts, column_families={"default": self._opts}
        )
        self._write_opts = WriteOptions()
        # A property at runtime; the stub declares it as a method.
        self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(self._write_opts)
        self._durable_write_opts = WriteOptions()
        self._durable_write_opts.sync = True
        self._durable_write_opts.disable_wal = False  # type: ignore[method-assign,assignment]
        self._logged_write_opts = WriteOptions()
        self._logged_write_opts.disable_wal = False  # type: ignore[method-assign,assignment]
        self._commit_key = encoding.encode(keys.COMMIT_OFFSET_KEY)
        self._version_key = encoding.encode(keys.LAST_VERSION_ID_KEY)
        self._term_key = encoding.encode(keys.TERM_KEY)
        self._term_options_key = encoding.encode(keys.TERM_OPTIONS_KEY)

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"shard DB {self.path} is closed")
        return self._db

    @property
    def closed(self) -> bool:
        return self._db is None

    # -- raw access -----------------------------------------------------------------------------

    def get(self, ekey: bytes) -> bytes | None:
        v: bytes | None = self.db.get(ekey)
        return v

    def write(self, batch: WriteBatch) -> None:
        self.db.write(batch)

    def new_batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def scan(
        self, lower: bytes | None, upper: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Encoded ``(key, value)`` pairs with ``lower <= key < upper``."""
        it = self.db.iter()
        try:
            if reverse:
                if upper is None:
                    it.seek_to_last()
                else:
                    it.seek_for_prev(upper)
                    if it.valid() and it.key() >= upper:
                        it.prev()
                while it.valid():
                    k: bytes = it.key()
                    if lower is not None and k < lower:
                        break
                    yield k, it.value()
                    it.prev()
            else:
                if lower is None:
                    it.seek_to_first()
                else:
                    it.seek(lower)
                while it.valid():
                    k = it.key()
                    if upper is not None and k >= upper:
                        break
                    yield k, it.value()
                    it.next()
        finally:
            del it

    def seek_le(self, ekey: bytes) -> tuple[bytes, bytes] | None:
        it = self.db.iter()
        try:
            it.seek_for_prev(ekey)
            return (it.key(), it.value()) if it.valid() else None
        finally:
            del it

    # -- internal records -------------------------------------------------------------------------

    def _get_int(self, ekey: bytes, default: int) -> int:
        raw = self.get(ekey)
        return parse_ascii_entry(raw) if raw is not None else default

    def commit_offset(self) -> int:
        return self._get_int(self._commit_key, INVALID_OFFSET)

    def last_version_id(self) -> int:
        return self._get_int(self._version_key, -1)

    def put_commit_offset(self, batch: WriteBatch, offset: int) -> None:
        batch.put(self._commit_key, ascii_entry(offset))

    def put_last_version_id(self, batch: WriteBatch, version_id: int) -> None:
        batch.put(self._version_key, ascii_entry(version_id))

    def read_term(self) -> tuple[int, TermOptions]:
        term = self._get_int(self._term_key, INVALID_TERM)
        raw = self.get(self._term_options_key)
        options = (
            TermOptions.from_json(storage_pb2.StorageEntry.FromString(raw).value)
            if raw is not None
            else TermOptions()
        )
        return term, options

    def _term_batch(self, term: int, options: TermOptions) -> WriteBatch:
        b = self.new_batch()
        b.put(self._term_key, ascii_entry(term))
        b.put(
            self._term_options_key,
            storage_pb2.StorageEntry(value=options.to_json(), version_id=-1).SerializeToString(),
        )
        return b

    def update_term(self, term: int, options: TermOptions) -> None:
        """Persists the term and its options durably (synced through RocksDB's WAL: the term
        is not in pyxia's WAL) before returning."""
        self.db.write(self._term_batch(term, options), self._durable_write_opts)

    def write_term(self, term: int, options: TermOptions) -> None:
        """Writes the term and its options through RocksDB's WAL without syncing it: readable
        at once, durable only once :meth:`sync_term` returned after this call."""
        self.db.write(self._term_batch(term, options), self._logged_write_opts)

    def sync_term(self) -> None:
        """Makes every term written so far by :meth:`write_term` durable: an fdatasync of each
        of RocksDB's WAL files (``*.log`` in the DB directory) and an fsync of the directory
        (a WAL file created since the last synced write is then found after a crash), through
        ``os``, which releases the GIL. A file deleted meanwhile is skipped (RocksDB deletes a
        WAL file only once its records are in a synced table file). Works on a closed DB (its
        files stay until RocksDB deletes them). Raises ``OSError`` if a sync fails."""
        wal_files = [e.path for e in os.scandir(self.path) if e.name.endswith(".log")]
        for path in wal_files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- lifecycle --------------------------------------------------------------------------------

    def flush(self) -> None:
        self.db.flush(wait=True)

    def checkpoint(self, target: Path) -> None:
        """A consistent copy of the DB (hard links where possible) in ``target``."""
        self.flush()
        Checkpoint(self.db).create_checkpoint(str(target))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file())

    def gauges(self) -> dict[str, int]:
        """RocksDB's numbers that the metrics export (``pyxia.metrics.ReplicaGauges``), read
        now. Safe from another thread: a DB closed meanwhile raises ``DbClosedError``."""
        db = self.db
        prop = db.property_int_value
        stats = rocksdb_statistics(self._opts.get_statistics() or "")
        levels = 7
        return {
            "block_cache_used_bytes": prop("rocksdb.block-cache-usage") or 0,
            "block_cache_hits": stats.get("rocksdb.block.cache.hit", 0),
            "block_cache_misses": stats.get("rocksdb.block.cache.miss", 0),
            "read_iterators": max(
                0,
                stats.get("rocksdb.num.iterator.created", 0)
                - stats.get("rocksdb.num.iterator.deleted", 0),
            ),
            "compactions": stats.get("rocksdb.compaction.times.micros", 0),
            "compaction_debt_bytes": prop("rocksdb.estimate-pending-compaction-bytes") or 0,
            "flushes": stats.get("rocksdb.db.flush.micros", 0),
            "flush_bytes": stats.get("rocksdb.flush.write.bytes", 0),
            "memtable_size_bytes": prop("rocksdb.cur-size-all-mem-tables") or 0,
            "disk_space_bytes": (prop("rocksdb.total-sst-files-size") or 0)
            + (prop("rocksdb.total-blob-file-size") or 0),
            "num_files": sum(prop(f"rocksdb.num-files-at-level{n}") or 0 for n in range(levels)),
            "read_bytes": stats.get("rocksdb.non.last.level.read.bytes", 0)
            + stats.get("rocksdb.last.level.read.bytes", 0),
        }

    def close(self) -> None:
        """Closes the DB (flushing the memtable). Idempotent."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def delete(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
