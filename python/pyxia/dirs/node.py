"""Opening a process's directories: lock, check, adopt, label (the I/O shell of this package).

:meth:`NodeDirs.open` is the first thing a data server does (``pyxia standalone`` and
``pyxia server``), :meth:`MetadataDir.open` the first thing ``pyxia coordinator`` does with a
``file`` or ``raft`` metadata dir. Each, in order, before any shard, log or status is opened:

1. refuses a data dir and a WAL dir that are the same directory or nested in one another;
2. checks an existing manifest's kind and format (so a wrong directory is refused before
   even a lock file is created in it);
3. takes each directory's exclusive lock for the life of the process (:mod:`.lock`);
4. reads the manifest again under the lock, or adopts a directory without one (recognising
   its content, refusing content of another kind or files pyxia never writes);
5. checks what the manifests record against what is asked: a data dir and a WAL dir that
   belong to different nodes, a standalone's data dir used by a cluster server (or the
   reverse), a metadata dir of another provider;
6. writes the manifests (only when something changed).

A standalone then calls :meth:`NodeDirs.standalone_layout` with its namespaces to check them
against the stored layout and learn their shard ids (:mod:`.layout`).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from .errors import DirError
from .layout import (
    LayoutAsk,
    NamespaceLayout,
    infer_layout,
    legacy_first_shards,
    plan_layout,
)
from .lock import DirLock, describe_os_error
from .manifest import (
    Manifest,
    Sniff,
    check_adoptable,
    check_manifest,
    read_raw,
    sniff,
    write,
)

log = logging.getLogger("pyxia.dirs")

MODES = ("standalone", "server")


def _precheck(path: Path, kind: str, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise DirError(f"{what} {path} is not a directory")
    if path.is_dir():
        raw = read_raw(path)
        if raw is not None:
            check_manifest(raw, kind, what, path)


def _load(path: Path, kind: str, what: str) -> tuple[Manifest | None, dict[str, Any], Sniff]:
    """The directory's manifest (None: to adopt), the raw fields of an earlier version's
    manifest, and what the directory holds (only looked at when adopting)."""
    raw = read_raw(path)
    manifest = check_manifest(raw, kind, what, path) if raw is not None else None
    if manifest is not None:
        return manifest, {}, Sniff()
    s = sniff(path)
    check_adoptable(s, kind, what, path)
    return None, dict(raw or {}), s


def _write_if_changed(path: Path, what: str, old: Manifest | None, new: Manifest) -> None:
    if old is not None and old.to_json() == new.to_json():
        return
    try:
        write(path, new)
    except OSError as e:
        raise DirError(describe_os_error(what, path, e)) from e


def _nested(a: Path, b: Path) -> bool:
    return a in b.parents or b in a.parents


class NodeDirs:
    """The locked, labelled data dir and WAL dir of one data server."""

    def __init__(
        self,
        data_dir: Path,
        wal_dir: Path,
        locks: list[DirLock],
        data: Manifest,
    ) -> None:
        self.data_dir = data_dir
        self.wal_dir = wal_dir
        self._locks = locks
        self.data = data

    @property
    def node_id(self) -> str:
        return self.data.node_id

    @staticmethod
    def open(data_dir: Path, wal_dir: Path, mode: str) -> NodeDirs:
        """Locks and checks both directories (see the module docstring); raises
        :class:`DirError` with one line to print."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        rd, rw = data_dir.resolve(), wal_dir.resolve()
        if rd == rw:
            raise DirError(
                f"--data-dir and --wal-dir are the same directory ({data_dir}): give each its own"
            )
        if _nested(rd, rw):
            raise DirError(
                f"--data-dir {data_dir} and --wal-dir {wal_dir} are nested in one another: "
                "give each its own directory"
            )
        _precheck(data_dir, "data", "data dir")
        _precheck(wal_dir, "wal", "wal dir")
        locks = [DirLock.acquire(data_dir, "data dir")]
        try:
            locks.append(DirLock.acquire(wal_dir, "wal dir"))
            return NodeDirs._check(data_dir, wal_dir, rd, rw, mode, locks)
        except BaseException:
            for lock in locks:
                lock.release()
            raise

    @staticmethod
    def _check(
        data_dir: Path, wal_dir: Path, rd: Path, rw: Path, mode: str, locks: list[DirLock]
    ) -> NodeDirs:
        data, data_raw, data_sniff = _load(data_dir, "data", "data dir")
        wal, _, wal_sniff = _load(wal_dir, "wal", "wal dir")
        if data is not None and wal is not None and data.node_id != wal.node_id:
            raise DirError(
                f"data dir {data_dir} and wal dir {wal_dir} belong to different nodes "
                f"({data.node_id} and {wal.node_id}): give this node its own pair"
            )
        node_id = (data or wal or Manifest("", str(uuid.uuid4()))).node_id

        stored_mode = data.extra.get("mode") if data is not None else None
        if data is None and data_raw.get("instance_id"):
            stored_mode = "server"  # an earlier version's cluster server wrote this manifest
        if stored_mode is not None and stored_mode != mode:
            raise DirError(
                f"data dir {data_dir} belongs to a pyxia {stored_mode}; pyxia {mode} needs a "
                "data dir of its own (shards cannot move between a standalone and a cluster "
                "this way)"
            )
        if data is None and not data_sniff.empty:
            log.info(
                "adopting data dir %s (written by an earlier pyxia): writing its manifest", data_dir
            )
        if wal is None and not wal_sniff.empty:
            log.info(
                "adopting wal dir %s (written by an earlier pyxia): writing its manifest", wal_dir
            )

        data_extra = dict(data.extra) if data is not None else dict(data_raw)
        data_extra.update(mode=mode, wal_dir=str(rw))
        new_data = Manifest("data", node_id, extra=data_extra)
        wal_extra = dict(wal.extra) if wal is not None else {}
        wal_extra.update(data_dir=str(rd))
        new_wal = Manifest("wal", node_id, extra=wal_extra)
        _write_if_changed(data_dir, "data dir", data, new_data)
        _write_if_changed(wal_dir, "wal dir", wal, new_wal)
        return NodeDirs(data_dir, wal_dir, locks, new_data)

    # -- standalone layout ------------------------------------------------------------------------

    def standalone_layout(self, asks: list[LayoutAsk]) -> dict[str, int]:
        """Checks the asked namespaces against the stored layout (reading it back from the
        shard dirs of an earlier version's data dir), records the layout, and returns each
        asked namespace's first shard id. Raises :class:`DirError` on a contradiction."""
        raw = self.data.extra.get("namespaces")
        reserved: list[int] = []
        if raw is not None:
            if not isinstance(raw, dict):
                raise DirError(f"data dir {self.data_dir}: the manifest's namespaces are invalid")
            stored = {name: NamespaceLayout.from_json(name, d) for name, d in raw.items()}
        else:
            # First start of a standalone here, or of this version on an earlier one's dir
            # (maybe after a start refused before the layout was recorded): read it back.
            # A lost data dir next to a kept WAL dir: the logs tell which shards existed.
            on_disk = sniff(self.data_dir).shards or sniff(self.wal_dir).shards
            stored, ambiguous = infer_layout(on_disk)
            if stored or ambiguous:
                log.info(
                    "data dir %s: read the shard layout back from disk: %s",
                    self.data_dir,
                    ", ".join(f"{n}={lay.shards}" for n, lay in sorted(stored.items())) or "-",
                )
            if ambiguous:
                legacy = legacy_first_shards(asks)
                by_name = {a.namespace: a for a in asks}
                for name in ambiguous:
                    a = by_name.get(name)
                    if a is not None:
                        stored[name] = NamespaceLayout(legacy[name], a.shards, a.key_sorting)
                    reserved.extend(on_disk.get(name, {}))
                log.warning(
                    "data dir %s: the shard layout of namespace(s) %s cannot be read back from "
                    "disk; recording what is asked now",
                    self.data_dir,
                    ", ".join(ambiguous),
                )
        layout = plan_layout(stored, asks, str(self.data_dir), reserved)
        new = Manifest(
            "data",
            self.data.node_id,
            extra={
                **self.data.extra,
                "namespaces": {n: lay.to_json() for n, lay in sorted(layout.items())},
            },
        )
        _write_if_changed(self.data_dir, "data dir", self.data, new)
        self.data = new
        return {a.namespace: layout[a.namespace].first_shard for a in asks}

    def close(self) -> None:
        """Releases both locks. Idempotent."""
        for lock in self._locks:
            lock.release()


class MetadataDir:
    """The locked, labelled directory of a coordinator's file or raft metadata provider."""

    def __init__(self, path: Path, lock: DirLock, manifest: Manifest) -> None:
        self.path = path
        self._lock = lock
        self.manifest = manifest

    @staticmethod
    def open(path: Path, provider: str) -> MetadataDir:
        what = "metadata dir"
        _precheck(path, "metadata", what)
        lock = DirLock.acquire(path, what)
        try:
            found, _, s = _load(path, "metadata", what)
            stored = found.extra.get("provider") if found is not None else None
            if found is None:
                names = {p.name for p in path.iterdir()}
                if "cluster-status.json" in names:
                    stored = "file"
                elif any(n.startswith("raft.") for n in names):
                    stored = "raft"
            if stored is not None and stored != provider:
                raise DirError(
                    f"metadata dir {path} holds the {stored} provider's cluster status; "
                    f"--metadata {provider} would start from an empty one"
                )
            if found is None and not s.empty:
                log.info("adopting metadata dir %s (written by an earlier pyxia)", path)
            node_id = found.node_id if found is not None else str(uuid.uuid4())
            extra = dict(found.extra) if found is not None else {}
            extra["provider"] = provider
            manifest = Manifest("metadata", node_id, extra=extra)
            _write_if_changed(path, what, found, manifest)
            return MetadataDir(path, lock, manifest)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        self._lock.release()
