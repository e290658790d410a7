"""An exclusive, process-lifetime lock on a directory.

The lock is an ``flock(LOCK_EX | LOCK_NB)`` on ``<dir>/pyxia.lock`` (a name no RocksDB or WAL
file uses: RocksDB's own ``LOCK`` lives inside each shard's DB directory). The holder writes its
pid into the file for the error message of the next contender; the lock itself is what counts,
and the kernel drops it when the holder's descriptor closes, including on ``kill -9``. The
descriptor is opened ``O_CLOEXEC``, so child processes never inherit the lock.

Invariants: one :class:`DirLock` per directory per process (a second one in the same process
conflicts like another process would); :meth:`DirLock.release` is idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from .errors import DirError, DirInUse
from .names import LOCK_FILE


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def describe_os_error(what: str, path: Path, e: OSError) -> str:
    """One line for an OSError met while preparing a directory."""
    reason = e.strerror or str(e)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{what} {path} is not writable: {reason}"
    if e.errno == errno.ENOTDIR:
        return f"{what} {path} is not a directory"
    return f"{what} {path}: {reason}"


class DirLock:
    """Holds the lock of one directory until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @staticmethod
    def acquire(path: Path, what: str) -> DirLock:
        """Creates ``path`` if needed and locks it; raises :class:`DirInUse` if another
        process holds it, :class:`DirError` if the directory cannot be used."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DirError(describe_os_error(what, path, e)) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DirInUse(what, path, pid) from None
        except OSError as e:
            os.close(fd)
            raise DirError(describe_os_error(what, path, e)) from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise DirError(describe_os_error(what, path, e)) from e
        return DirLock(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drops the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def holder(path: Path) -> int | None:
    """The pid holding ``path``'s lock (0 if it did not say), or None when nobody holds it.
    A read-only probe: the lock file is neither created nor written."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
