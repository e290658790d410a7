"""The manifest of a pyxia directory: ``<dir>/MANIFEST.json``.

This module is the only reader and writer of that file. A manifest says what a directory is,
so a process never uses one for something else::

    {"kind": "data" | "wal" | "metadata", "format": 1, "node_id": "<uuid>", "pyxia": "<version>",
     ...kind-specific fields}

- ``data``: ``mode`` ("standalone" or "server"), ``wal_dir`` (the WAL dir it was last paired
  with, informative), ``namespaces`` (standalone only: name -> ``{"first_shard", "shards",
  "key_sorting"}``), ``instance_id`` (cluster servers: the cluster it joined, set by the
  coordinator's first Handshake through :mod:`pyxia.server.manifest`, which owns that field;
  earlier versions wrote a manifest holding only this field).
- ``wal``: ``data_dir`` (the data dir it was last paired with; the WAL tools find the shard
  DBs through it).
- ``metadata``: ``provider`` ("file" or "raft").

Rules (pure, :func:`check_manifest`): a manifest of another kind, or of a format this version
does not read, is refused. Fields this version does not know are kept when the manifest is
rewritten. Writes are atomic (temp file, fsync, rename, directory fsync), so a crash leaves
the old manifest or the new one.

A directory without a manifest (written by an earlier version, or new) is adopted: its
content is recognised by name (:func:`sniff`) and the manifest is written at its first start.
Content of another kind, or files pyxia never writes, are refused rather than adopted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DirError
from .names import LEGACY_MANIFEST_TMP, LOCK_FILE, MANIFEST_FILE

FORMAT = 1
KINDS = ("data", "wal", "metadata")

_WHAT = {"data": "shard databases", "wal": "write-ahead logs", "metadata": "coordinator metadata"}

# Names a pyxia directory may hold at its top besides namespace directories.
_OWN_FILES = {MANIFEST_FILE, LOCK_FILE, LEGACY_MANIFEST_TMP, "lost+found"}
_METADATA_FILES = re.compile(
    r"^(cluster-status\.json|coordinator\.lock|raft\.(journal|dump)(\..*)?)$"
)
_SHARD = re.compile(r"^shard-(\d+)$")
_SHARD_ASIDE = re.compile(r"^shard-\d+\..+$")  # shard-N.corrupt-<time>, shard-N.rebuilding, ...
_DB_FILES = ("CURRENT", "pyxia-key-encoding")


@dataclass
class Manifest:
    """A manifest document; ``extra`` holds the fields beyond the common ones."""

    kind: str
    node_id: str
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from pyxia.version import __version__

        return {
            "kind": self.kind,
            "format": self.format,
            "node_id": self.node_id,
            "pyxia": __version__,
            **{k: v for k, v in self.extra.items() if k not in ("pyxia",)},
        }


def read_raw(directory: Path) -> dict[str, Any] | None:
    """The manifest's JSON object, or None when there is none."""
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DirError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise DirError(f"{path} is not valid JSON ({e}): not a manifest pyxia wrote") from e
    if not isinstance(doc, dict):
        raise DirError(f"{path} is not a JSON object: not a manifest pyxia wrote")
    return doc


def check_manifest(doc: dict[str, Any], kind: str, what: str, directory: Path) -> Manifest | None:
    """The manifest in ``doc`` if it is a ``kind`` manifest this version reads; None if ``doc``
    has no ``kind`` (an earlier version's, to adopt). Raises :class:`DirError` otherwise."""
    found = doc.get("kind")
    if found is None:
        return None
    if found not in KINDS:
        raise DirError(f"{what} {directory} has a manifest of unknown kind {found!r}")
    if found != kind:
        hint = "; are --data-dir and --wal-dir swapped?" if {found, kind} == {"data", "wal"} else ""
        raise DirError(
            f"{what} {directory} holds {_WHAT[found]} (its {MANIFEST_FILE} says kind {found!r}), "
            f"not {_WHAT[kind]}{hint}"
        )
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise DirError(f"{what} {directory} has an invalid format version {fmt!r}")
    if fmt > FORMAT:
        from pyxia.version import __version__

        raise DirError(
            f"{what} {directory} has format version {fmt}; this pyxia ({__version__}) reads "
            f"format {FORMAT}: run a newer pyxia"
        )
    node_id = doc.get("node_id")
    if not isinstance(node_id, str) or not node_id:
        raise DirError(f"{what} {directory} has a manifest without a node id")
    extra = {k: v for k, v in doc.items() if k not in ("kind", "format", "node_id")}
    return Manifest(kind=found, node_id=node_id, format=fmt, extra=extra)


def write(directory: Path, manifest: Manifest) -> None:
    """Writes the manifest atomically (temp file, fsync, rename, directory fsync)."""
    _write_json(directory, manifest.to_json())


def update_fields(directory: Path, **fields: Any) -> None:
    """Sets fields of the manifest (creating the file if needed), keeping every other field.
    For fields owned by a subsystem (a cluster server's ``instance_id``)."""
    doc = read_raw(directory) or {}
    doc.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory, doc)


def _write_json(directory: Path, doc: dict[str, Any]) -> None:
    path = directory / MANIFEST_FILE
    tmp = directory / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    payload = (json.dumps(doc, indent=2) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- adoption: what an unlabelled directory holds ------------------------------------------------


@dataclass
class Sniff:
    """What a directory without a manifest holds, recognised by file names."""

    evidence: dict[str, Path] = field(default_factory=dict)  # kind -> a file that shows it
    unknown: list[str] = field(default_factory=list)  # top-level names pyxia never writes
    # namespace -> shard id -> key sorting (None: no marker, or a WAL dir)
    shards: dict[str, dict[int, str | None]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.evidence and not self.unknown and not self.shards


def _shard_kind(shard_dir: Path) -> tuple[str | None, Path | None]:
    try:
        names = sorted(os.listdir(shard_dir))
    except OSError:
        return None, None
    if any(n.endswith(".txnx") for n in names):
        return "wal", shard_dir / next(n for n in names if n.endswith(".txnx"))
    for marker in _DB_FILES:
        if marker in names:
            return "data", shard_dir / marker
    return None, None


def sniff(directory: Path) -> Sniff:
    """Classifies the content of ``directory`` (which may not exist)."""
    out = Sniff()
    try:
        top = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in top:
        path = directory / name
        if name.startswith(".") or name in _OWN_FILES:
            continue
        if _METADATA_FILES.match(name):
            out.evidence.setdefault("metadata", path)
            continue
        if not path.is_dir():
            out.unknown.append(name)
            continue
        foreign = False
        for child in sorted(os.listdir(path)):
            m = _SHARD.match(child)
            if m is None:
                if not (child.startswith(".") or _SHARD_ASIDE.match(child)):
                    foreign = True
                continue
            kind, proof = _shard_kind(path / child)
            if kind is not None and proof is not None:
                out.evidence.setdefault(kind, proof)
            sorting: str | None = None
            if kind == "data":
                try:
                    sorting = (path / child / "pyxia-key-encoding").read_text().strip() or None
                except OSError:
                    sorting = None
            if kind is not None:
                out.shards.setdefault(name, {})[int(m.group(1))] = sorting
        if foreign:
            out.unknown.append(name)
    return out


def check_adoptable(s: Sniff, kind: str, what: str, directory: Path) -> None:
    """Refuses a directory without manifest whose content is not of ``kind``."""
    other = [k for k in s.evidence if k != kind]
    if other:
        found = other[0]
        hint = "; are --data-dir and --wal-dir swapped?" if {found, kind} == {"data", "wal"} else ""
        raise DirError(
            f"{what} {directory} holds {_WHAT[found]} ({s.evidence[found]}), "
            f"not {_WHAT[kind]}{hint}"
        )
    if s.unknown:
        shown = ", ".join(s.unknown[:3]) + (", ..." if len(s.unknown) > 3 else "")
        raise DirError(
            f"{what} {directory} holds files pyxia did not write ({shown}): "
            "give pyxia a directory of its own"
        )
