"""The data server's cluster identity: the ``instance_id`` field of its data dir's manifest.

There is one manifest per data dir, ``<data-dir>/MANIFEST.json``, and one module that reads
and writes that file: :mod:`pyxia.dirs.manifest` (its format, atomic writes, adoption of
directories written by earlier versions). :class:`pyxia.dirs.NodeDirs` writes what the
directory is (kind, node id, format, mode, paired WAL dir, a standalone's layout) when the
process starts; this module owns one field of it, ``instance_id``: the cluster the server
belongs to, set by the first Handshake (every other field kept) and never changed by a later
one: a server bound to cluster X answers MISMATCH to cluster Y. Every other internal call must
carry the bound id in the ``instance-id`` metadata header (Oxia's
``constant.MetadataInstanceId``); the server's own outgoing internal calls (a leader
replicating to its followers) send it too.

Earlier versions kept a manifest holding only ``{"instance_id": ...}`` here: ``NodeDirs``
adopts it as a cluster server's data dir, keeping the id.

The id is read from disk once and kept in memory; a manifest that exists but cannot be read is
a storage failure, never "unbound" (that would let anyone bind the server again).
"""

from __future__ import annotations

from pathlib import Path

from pyxia.common.instance_id import INSTANCE_ID_HEADER, CallMetadata
from pyxia.dirs import DirError
from pyxia.dirs import manifest as dir_manifest
from pyxia.dirs.names import MANIFEST_FILE
from pyxia.errors import StorageFailure

__all__ = ["MANIFEST_FILE", "Manifest"]

INSTANCE_ID_FIELD = "instance_id"


class Manifest:
    """The bound instance id of one data server (None until the first Handshake).

    ``path`` is ``<data-dir>/MANIFEST.json`` (:data:`MANIFEST_FILE`)."""

    def __init__(self, path: Path) -> None:
        if path.name != MANIFEST_FILE:
            raise ValueError(f"the data dir's manifest is {MANIFEST_FILE}, not {path.name}")
        self.path = path
        self.data_dir = path.parent
        self._instance_id: str | None = None
        self._loaded = False

    def instance_id(self) -> str | None:
        if not self._loaded:
            self._instance_id = self._read()
            self._loaded = True
        return self._instance_id

    def _read(self) -> str | None:
        try:
            d = dir_manifest.read_raw(self.data_dir)
        except DirError as e:
            raise StorageFailure(f"oxia: server manifest: {e}") from e
        v = d.get(INSTANCE_ID_FIELD) if d is not None else None
        if v is not None and not isinstance(v, str):
            raise StorageFailure(f"oxia: the server manifest {self.path} is malformed")
        return v or None

    def bind(self, instance_id: str) -> None:
        """Records ``instance_id`` in the manifest (atomically, keeping every other field)."""
        dir_manifest.update_fields(self.data_dir, **{INSTANCE_ID_FIELD: instance_id})
        self._instance_id = instance_id
        self._loaded = True

    def call_metadata(self) -> CallMetadata:
        """The header that proves this server's cluster on its own internal calls."""
        iid = self.instance_id()
        return ((INSTANCE_ID_HEADER, iid),) if iid else ()
