"""Why a directory cannot be used: each error is one line a person can act on.

They are raised before a process opens anything in the directory, so refusing loses nothing.
The command line prints ``str(error)`` after ``pyxia: `` and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class DirError(Exception):
    """A directory is of the wrong kind, busy, unreadable, or contradicts what was asked."""


class DirInUse(DirError):
    """Another live process holds the directory's lock."""

    def __init__(self, what: str, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"{what} {path} is in use by {holder}")
        self.what = what
        self.path = path
        self.pid = pid
