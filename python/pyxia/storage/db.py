"""One RocksDB per shard (through rocksdict), in raw-bytes mode.

RocksDB's own WAL is off: durability comes from pyxia's WAL. Every batch the
shard applies carries the commit offset (``__oxia/commit-offset``), so after a
crash the DB may lag the WAL, never lead it, and a restart replays the WAL
from there. The term is not in the WAL, so writing it forces a flush.

Keys are stored encoded (``KeyEncoding``); values of user records and of the
internal counters are ``StorageEntry`` protobufs, as in Oxia.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from pyxia.proto import storage_pb2
from pyxia.storage import keys
from pyxia.storage.keys import KeyEncoding

INVALID_TERM = -1
INVALID_OFFSET = -1


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

    def __init__(self, path: Path, encoding: KeyEncoding) -> None:
        self.path = path
        self.encoding = encoding
        path.mkdir(parents=True, exist_ok=True)
        self._opts = Options(raw_mode=True)
        self._opts.create_if_missing(True)
        self._db: Rdict | None = Rdict(str(path), self._opts)
        self._write_opts = WriteOptions()
        # A property at runtime; the stub declares it as a method.
        self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(self._write_opts)
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

    def seek_ge(self, ekey: bytes) -> tuple[bytes, bytes] | None:
        for kv in self.scan(ekey, None):
            return kv
        return None

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

    def update_term(self, term: int, options: TermOptions) -> None:
        """Persists the term and its options, and flushes: the term is not in the WAL."""
        b = self.new_batch()
        b.put(self._term_key, ascii_entry(term))
        b.put(
            self._term_options_key,
            storage_pb2.StorageEntry(value=options.to_json(), version_id=-1).SerializeToString(),
        )
        self.write(b)
        self.flush()

    # -- lifecycle --------------------------------------------------------------------------------

    def flush(self) -> None:
        self.db.flush(wait=True)

    def checkpoint(self, target: Path) -> None:
        """A consistent copy of the DB (hard links where possible) in ``target``."""
        self.flush()
        Checkpoint(self.db).create_checkpoint(str(target))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file())

    def close(self) -> None:
        """Closes the DB (flushing the memtable). Idempotent."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def delete(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
