"""Guarded directories: every directory a pyxia process owns is locked and labelled.

- :mod:`.lock`: an exclusive ``flock`` on ``<dir>/pyxia.lock`` held for the process's life
  (the kernel releases it on ``kill -9``); a second process is refused with the holder's pid.
- :mod:`.manifest`: ``<dir>/MANIFEST.json`` says what the directory is (data, wal, metadata),
  which node it belongs to and its format version; directories of earlier versions are
  recognised by their content and adopted.
- :mod:`.names`: the names of those files (a namespace may never take one).
- :mod:`.layout`: the shard layout a standalone's namespaces were created with (pure rules).
- :mod:`.node`: opening a data server's or a coordinator's directories in the right order.

Every refusal is a :class:`DirError` whose message is one line naming what was found and what
was asked.
"""

from .errors import DirError, DirInUse
from .layout import LayoutAsk, NamespaceLayout
from .lock import DirLock, holder
from .manifest import Manifest
from .names import LOCK_FILE, MANIFEST_FILE, TOP_LEVEL_FILES
from .node import MetadataDir, NodeDirs

__all__ = [
    "LOCK_FILE",
    "MANIFEST_FILE",
    "TOP_LEVEL_FILES",
    "DirError",
    "DirInUse",
    "DirLock",
    "LayoutAsk",
    "Manifest",
    "MetadataDir",
    "NamespaceLayout",
    "NodeDirs",
    "holder",
]
