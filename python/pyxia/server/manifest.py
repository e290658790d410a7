"""The data server's identity file: which cluster it belongs to.

``<data-dir>/MANIFEST.json`` holds ``{"instance_id": ...}``, written once by the first
Handshake (atomically: temp file, fsync, rename) and never changed by a later one: a server
bound to cluster X answers MISMATCH to cluster Y. Every other internal call must carry the
bound id in the ``instance-id`` metadata header (Oxia's ``constant.MetadataInstanceId``); the
server's own outgoing internal calls (a leader replicating to its followers) send it too.

The id is read from disk once and kept in memory; a manifest that exists but cannot be read is
a storage failure, never "unbound" (that would let anyone bind the server again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyxia.errors import StorageFailure

INSTANCE_ID_HEADER = "instance-id"
MANIFEST_FILE = "MANIFEST.json"

CallMetadata = tuple[tuple[str, str], ...]


class Manifest:
    """The bound instance id of one data server (None until the first Handshake)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._instance_id: str | None = None
        self._loaded = False

    def instance_id(self) -> str | None:
        if not self._loaded:
            self._instance_id = self._read()
            self._loaded = True
        return self._instance_id

    def _read(self) -> str | None:
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StorageFailure(f"oxia: cannot read the server manifest {self.path}: {e}") from e
        v = d.get("instance_id") if isinstance(d, dict) else None
        if v is not None and not isinstance(v, str):
            raise StorageFailure(f"oxia: the server manifest {self.path} is malformed")
        return v or None

    def bind(self, instance_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"instance_id": instance_id}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._instance_id = instance_id
        self._loaded = True

    def call_metadata(self) -> CallMetadata:
        """The header that proves this server's cluster on its own internal calls."""
        iid = self.instance_id()
        return ((INSTANCE_ID_HEADER, iid),) if iid else ()
