"""Type stubs for pyxia's native extension (the Rust write-ahead log)."""

from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, final

__all__ = [
    "DEFAULT_RETENTION_MS",
    "DEFAULT_SEGMENT_SIZE",
    "TEST_HOOKS",
    "CorruptedLog",
    "CrcMismatch",
    "EntryNotFound",
    "InvalidNextOffset",
    "TsoResponder",
    "TsoWindow",
    "Wal",
    "WalClosed",
    "WalEntry",
    "WalError",
    "WalFailed",
    "WalReader",
    "WalReverseReader",
    "__version__",
    "apply_puts",
    "chained_crc",
    "encode_hierarchical",
    "encode_notification_batch",
    "read_gets",
    "scan_segment",
    "sync_many",
    "write_request_shape",
]

__version__: Final[str]
DEFAULT_SEGMENT_SIZE: Final[int]
DEFAULT_RETENTION_MS: Final[int]
TEST_HOOKS: Final[bool]
"""Whether this is a test build (cargo feature ``test-hooks``): only a test build has the WAL's
ack-before-fsync hook (``PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS``, the robustness suite's positive
control). Build one with ``maturin develop --release --features python,test-hooks``."""

class WalError(Exception):
    """Base class of every WAL error."""

class EntryNotFound(WalError):
    """The offset is not in the log."""

class InvalidNextOffset(WalError):
    """An append does not continue the log."""

class CrcMismatch(WalError):
    """The given previous CRC does not match the log."""

class CorruptedLog(WalError):
    """The log holds invalid data where committed entries should be."""

class WalClosed(WalError):
    """The WAL is closed."""

class WalFailed(WalError):
    """A sync failed earlier; the WAL must be reopened."""

@final
class WalEntry:
    """One entry read from the log, with its place in the CRC chain."""

    @property
    def term(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def crc(self) -> int: ...
    @property
    def previous_crc(self) -> int: ...

@final
class WalReader(Iterator[WalEntry]):
    """Forward iterator; stops at the current end of the log."""

    def __iter__(self) -> WalReader: ...
    def __next__(self) -> WalEntry: ...
    @property
    def next_offset(self) -> int: ...

@final
class WalReverseReader(Iterator[WalEntry]):
    """Iterates from the last entry down to the first."""

    def __iter__(self) -> WalReverseReader: ...
    def __next__(self) -> WalEntry: ...

@final
class Wal:
    """A write-ahead log in one directory.

    Offsets are contiguous; an empty log may start at any offset (seeded with
    ``previous_crc`` after a snapshot). ``commit_offset`` tells recovery which
    entries are known committed: an invalid tail above it is discarded, one at
    or below it raises :class:`CorruptedLog`.
    """

    def __new__(
        cls,
        dir: str | PathLike[str],
        *,
        segment_size: int = ...,
        sync_data: bool = True,
        retention_ms: int = ...,
        commit_offset: int = ...,
        min_segment_size: int = ...,
    ) -> Wal:
        """``segment_size`` bounds a new segment (64 MiB by default); the first one gets
        ``min_segment_size`` (1 MiB, capped at ``segment_size``) and each next one about a
        minute of the log's write rate, within those bounds."""
    def append(
        self,
        term: int,
        offset: int,
        value: bytes,
        timestamp: int,
        previous_crc: int | None = None,
    ) -> int: ...
    def append_replicated(self, frame: bytes, term: int, offset: int) -> int:
        """Appends the entry of a serialized ``replication.Append`` (checked against its
        ``previous_entry_crc`` when present) straight from the frame's bytes; returns the
        entry's value size. ValueError: no entry, a malformed frame, or an entry other than
        ``term``/``offset`` (the ones the caller checked)."""
    def append_batch(
        self,
        entries: Sequence[tuple[int, int, bytes, int]],
        previous_crc: int | None = None,
    ) -> int: ...
    def request_sync(self) -> None: ...
    def sync_inline(self) -> None:
        """Syncs in the calling thread (GIL released), no sync-thread hand-off."""
    def sync_inline_quiet(self) -> None:
        """:meth:`sync_inline` that does not write the notify pipe (the caller tells the
        owner); threads in :meth:`wait_synced` are woken as usual."""
    def sync(self) -> None: ...
    def wait_synced(self, offset: int, timeout: float | None = None) -> bool: ...
    @property
    def last_offset(self) -> int: ...
    @property
    def last_synced_offset(self) -> int: ...
    @property
    def first_offset(self) -> int: ...
    @property
    def last_crc(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def failure(self) -> str | None: ...
    @property
    def dir(self) -> Path: ...
    @property
    def segment_size(self) -> int: ...
    @property
    def min_segment_size(self) -> int: ...
    @property
    def sync_data(self) -> bool: ...
    @property
    def notify_fd(self) -> int: ...
    @property
    def segment_closed_fd(self) -> int:
        """Readable after a sync round that closed a segment; the reader drains it."""
    def segments(self) -> list[tuple[int, int, int, int, bool]]:
        """``(base, last_offset, size_bytes, last_timestamp, closed)`` per segment, oldest
        first; only closed segments can be trimmed."""
    def sync_stats(self) -> tuple[int, list[int]]: ...
    def read(self, offset: int) -> WalEntry: ...
    def read_batch(
        self, from_offset: int, max_entries: int = 1000, max_bytes: int = ...
    ) -> list[WalEntry]: ...
    def read_appends(
        self,
        from_offset: int,
        term: int,
        commit_offset: int,
        max_entries: int = 256,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> tuple[list[bytes], int]:
        """The entries ``read_batch`` would read, each as a serialized ``replication.Append``
        (``term``, the entry, ``commit_offset``, the entry's previous CRC, cumulative acks
        supported) built around the stored entry bytes: protobuf's canonical bytes of that
        message. With the entries' total value size."""
    def reader(self, from_offset: int) -> WalReader: ...
    def reverse_reader(self) -> WalReverseReader: ...
    def truncate(self, last_safe_offset: int) -> int: ...
    def clear(self) -> None: ...
    def trim(self, before_offset: int, commit_offset: int) -> int: ...
    def trim_expired(self, commit_offset: int, now_ms: int | None = None) -> int: ...
    def close(self) -> None: ...
    def delete(self) -> None: ...
    def __enter__(self) -> Wal: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...

def scan_segment(
    path: str | PathLike[str],
) -> tuple[list[tuple[int, int, int, int, int, int, int]], str | None]: ...
def sync_many(wals: Sequence[Wal], threads: int = 8) -> list[str | None]:
    """One :meth:`Wal.sync_inline_quiet` round of each WAL, up to ``threads`` at a time in native
    threads, the GIL released; returns once all are done. Per WAL: None when its round left it
    usable, else why not (closed, or the failure that poisoned it)."""

def chained_crc(previous: int, payload: bytes) -> int: ...
def encode_hierarchical(key: str) -> bytes: ...
def encode_notification_batch(
    shard: int,
    offset: int,
    timestamp: int,
    items: list[tuple[str, tuple[int, int | None, str | None]]],
) -> bytes: ...
def apply_puts(
    request: bytes,
    hierarchical: bool,
    get: Callable[..., object],
    last_version_id: int,
    timestamp: int,
    notifications: tuple[int, int] | None = None,
) -> tuple[list[tuple[bytes, bytes]], int, bytes, bytes | None] | None:
    """Applies a serialized ``WriteRequest`` of plain puts (no delete, session, sequence delta
    or secondary index) in one call: decodes it, encodes its keys (hierarchical or natural),
    calls ``get`` once with every encoded key (rocksdict's ``Rdict.get``) and returns
    ``(records, last_version_id, response, notification_batch)``: the ``(encoded key,
    StorageEntry bytes)`` to write in order, the new version counter, the ``WriteResponse``
    bytes and the ``NotificationBatch`` bytes (``notifications`` = ``(shard, offset)``; None
    without it or when nothing is notified). None: the request is not for this path, or a put
    replaces a record with a session or secondary indexes (or one that does not decode): the
    caller applies it in Python. Writes nothing."""

def write_request_shape(request: bytes) -> tuple[bool, bool]:
    """``(plain, overrides)`` of a serialized ``WriteRequest``, in one pass over its bytes:
    ``plain`` when every put and delete has a non-empty key outside ``__oxia/`` and no put has
    a sequence delta or secondary indexes (no per-operation check can fail but the size
    limits); ``overrides`` when a put sets ``override_version_id`` or
    ``override_modifications_count``. ``(False, True)`` for bytes that do not decode."""

def read_gets(request: bytes, hierarchical: bool, get: Callable[..., object]) -> bytes | None:
    """The serialized ``ReadResponse`` of a serialized ``ReadRequest`` whose gets are all EQUAL
    gets of user keys (no secondary index, nothing under ``__oxia/``): the keys encoded
    (hierarchical or natural), ``get`` called once with all of them (rocksdict's
    ``Rdict.get``), each answered as the Read RPC's Python path answers it. None when the
    request is not for this path or a stored record does not decode: answer it in Python."""

@final
class TsoResponder:
    """Python's answer to one GetTs the native TSO port handed over (sent once)."""

    def send(
        self, code: int, message: str, payload: bytes, trailers: list[tuple[str, bytes]]
    ) -> bool:
        """``code`` 0 answers with ``payload``; else a gRPC status with ``message`` and
        ``trailers`` (``grpc-status-details-bin`` becomes the status details). False if
        already answered or the caller is gone."""

@final
class TsoWindow:
    """The timestamp allocator shared by Python and the native GetTs server
    (``rust/src/tso_server.rs``; wrapped by :class:`pyxia.tso.native.NativeAllocator`).
    Codes: 0 ok, 1 not leader, 2 window exhausted, 3 invalid count, 4 out of range."""

    def __new__(cls) -> TsoWindow: ...
    def become_leader(self, floor_ms: int, high_water_ms: int, epoch: int) -> None:
        """Serving at ``epoch``; the fast path stays closed until :meth:`set_fast_until`."""
    def step_down(self) -> None: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def high_water(self) -> int | None: ...
    def would_grant(self, count: int, now_ms: int) -> bool: ...
    def try_grant(self, count: int, now_ms: int) -> tuple[int, int, int, int]:
        """``(code, physical_ms, logical_start, epoch)``."""
    def prepare_extension(self, now_ms: int, ahead_ms: int) -> tuple[int, int, int]:
        """``(code, epoch, requested)``."""
    def prepare_renewal(
        self, now_ms: int, min_ahead_ms: int, window_ahead_ms: int
    ) -> tuple[int, int, int]:
        """``(code, epoch, requested)``."""
    def commit(self, epoch: int, durable_ms: int) -> tuple[int, bool]:
        """``(code, applied)``."""
    def set_fast_until(self, until: float | None) -> None:
        """The native server grants while ``time.monotonic() < until``; None: no limit."""
    def stats(self) -> tuple[int, int, int]:
        """``(native grants, their timestamps, calls handed to Python)``."""
    def serve(
        self,
        host: str,
        port: int,
        fallback: Callable[[bytes, TsoResponder], None],
        workers: int,
    ) -> int:
        """Starts the native GetTs server on ``host:port``; returns the bound port."""
    def stop(self) -> None:
        """Stops the server (waits up to 2 s for open calls); safe twice."""
    @property
    def port(self) -> int | None: ...
