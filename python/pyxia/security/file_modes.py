"""Private files by default: a pyxia process that owns a data, WAL or metadata directory makes
everything it creates readable by its own user only.

:func:`make_private` is called once at the start of ``pyxia server``, ``pyxia standalone`` and
``pyxia coordinator``, before anything is opened (only the directories' locks and manifests,
created under :func:`use_private_umask`, come before it, so a directory in use or of another
kind is refused before its mode is changed): it sets the process umask to ``0o077`` (so
every directory is created 0700 and every file 0600 — Python's, RocksDB's, the Rust WAL's and
PySyncObj's alike, as they all create with the umask applied) and creates the directories the
process owns with mode 0700, or tightens them when they exist with group or other access
(files created there before, with a laxer umask, are then out of reach of other users too).

Invariants:
- A directory is only ever tightened (group and other bits cleared), never loosened.
- A directory the process does not own, or a shared one (sticky bit, like /tmp), is left as it
  is, with a warning: pyxia never changes the mode of a directory it does not own.
- One log line per directory actually tightened; nothing when it was private already.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("pyxia.security")

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700


def use_private_umask() -> None:
    """From now on this process creates every file 0600 and every directory 0700 at most.
    Touches no directory: a process that locks and checks its directories first (``pyxia.dirs``)
    sets it before, so the lock and manifest files it creates are private too."""
    os.umask(PRIVATE_UMASK)


def make_private(dirs: Iterable[Path | str | None]) -> list[Path]:
    """Sets the private umask, then creates (0700) or tightens each directory; returns the
    existing directories it tightened. Raises OSError when one cannot be created."""
    use_private_umask()
    tightened: list[Path] = []
    for d in dict.fromkeys(Path(x) for x in dirs if x):
        if tighten_dir(d):
            tightened.append(d)
    return tightened


def tighten_dir(path: Path) -> bool:
    """Creates ``path`` with mode 0700 or clears the group/other bits of an existing one;
    True when an existing directory's mode was changed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        path.mkdir(PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    if st.st_uid != os.geteuid() or mode & stat.S_ISVTX:
        log.warning(
            "directory is accessible by group or others and not ours to tighten",
            extra={"path": str(path), "mode": f"{mode:04o}"},
        )
        return False
    new = mode & ~0o077
    os.chmod(path, new)
    log.warning(
        "tightened the permissions of an existing directory (group/other access removed)",
        extra={"path": str(path), "old_mode": f"{mode:04o}", "new_mode": f"{new:04o}"},
    )
    return True
