"""The names pyxia gives the files at the top of its directories (no imports, no I/O).

A data dir and a WAL dir hold, at their top, one directory per namespace and these files; so
that a namespace can never be named like one of them, :mod:`pyxia.common.validation` refuses
every name in :data:`TOP_LEVEL_FILES` as a namespace name (case-insensitively: some
filesystems are). Files pyxia writes there under other names start with ``.`` (a manifest
being written: ``.MANIFEST.json.tmp-<pid>``), which no namespace name does.
"""

from __future__ import annotations

from typing import Final

LOCK_FILE: Final = "pyxia.lock"
"""The directory's lock (:mod:`pyxia.dirs.lock`)."""

MANIFEST_FILE: Final = "MANIFEST.json"
"""What the directory is (:mod:`pyxia.dirs.manifest`); a data dir's also holds the cluster's
instance id (:mod:`pyxia.server.manifest`)."""

LEGACY_MANIFEST_TMP: Final = "MANIFEST.tmp"
"""The temporary file earlier versions wrote the instance id through (one may be left over by
a crash)."""

TOP_LEVEL_FILES: Final = frozenset({LOCK_FILE, MANIFEST_FILE, LEGACY_MANIFEST_TMP})
"""Every file pyxia keeps, or has kept, at the top of a data or WAL dir."""
