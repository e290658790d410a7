"""Guarded directories, as processes (issue 15 §1): a directory in use is refused with the
holder's pid (and freed by kill -9), a directory of the wrong kind or a flag that contradicts
the stored layout stops the process with one line, earlier versions' directories are adopted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import pyxia
from cli_runs import last_line, one_line, run
from pyxia.common.ports import free_port
from servers import (
    COORDINATOR_READY,
    ServerProcess,
    cluster_secret_file,
    standalone_args,
    wait_for,
)


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    procs: list[ServerProcess] = []
    yield procs
    for p in procs:
        p.kill()


def start(started: list[ServerProcess], args: list[str], base: Path) -> ServerProcess:
    p = ServerProcess(args, base).start()
    started.append(p)
    return p


def put_keys(address: str, keys: list[str], namespace: str = "default") -> None:
    with pyxia.Client(address, namespace=namespace) as c:
        for k in keys:
            c.put(k, k.encode())


def get_all(address: str, keys: list[str], namespace: str = "default") -> list[bytes]:
    with pyxia.Client(address, namespace=namespace) as c:
        return [c.get(k).value for k in keys]


def test_a_dir_in_use_is_refused_and_kill_9_frees_it(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    first = start(started, standalone_args(tmp_path), tmp_path)
    put_keys(first.public, ["/a"])
    # Another data dir, the same WAL dir: refused before it touches anything.
    other = tmp_path / "other"
    r = run(*standalone_args(other)[:-2], "--wal-dir", str(tmp_path / "wal"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == f"pyxia: wal dir {tmp_path / 'wal'} is in use by pid {first.pid}"
    # A cluster data server on the running standalone's dirs.
    r = run(
        "server",
        "-p",
        "127.0.0.1:0",
        "-i",
        "127.0.0.1:0",
        "-m",
        "",
        "--data-dir",
        str(tmp_path / "db"),
        "--wal-dir",
        str(tmp_path / "wal"),
        "--cluster-secret-file",
        str(cluster_secret_file(tmp_path)),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert one_line(r) == f"pyxia: data dir {tmp_path / 'db'} is in use by pid {first.pid}"
    assert get_all(first.public, ["/a"]) == [b"/a"]  # the first one still serves
    # kill -9 releases the lock: a restart right after works
    first.kill()
    again = start(started, standalone_args(tmp_path), tmp_path)
    assert get_all(again.public, ["/a"]) == [b"/a"]


def test_the_shard_layout_of_a_namespace_is_fixed(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    s = start(started, standalone_args(tmp_path, "--shards", "1"), tmp_path)
    keys = [f"/k{i}" for i in range(20)]
    put_keys(s.public, keys)
    assert s.terminate() == 0
    db = tmp_path / "db"
    r = run(*standalone_args(tmp_path, "--shards", "4"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: namespace 'default' in {db} has 1 shard, but --shards 4 asks for 4: "
        "the shard count of a namespace cannot change"
    )
    r = run(*standalone_args(tmp_path, "--key-sorting", "natural"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: namespace 'default' in {db} uses hierarchical key sorting, "
        "but --key-sorting natural asks for natural"
    )
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"namespaces": [{"name": "default", "initialShardCount": 2}]}))
    r = run(*standalone_args(tmp_path, "--config", str(cfg)), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: namespace 'default' in {db} has 1 shard, but initialShardCount 2 "
        f"(namespace default in {cfg}) asks for 2: the shard count of a namespace cannot change"
    )
    # what was asked at creation still starts and serves every key
    s = start(started, standalone_args(tmp_path, "--shards", "1"), tmp_path)
    assert get_all(s.public, keys) == [k.encode() for k in keys]


def test_swapped_dirs_are_refused_with_or_without_manifests(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    s = start(started, standalone_args(tmp_path), tmp_path)
    put_keys(s.public, ["/a"])
    assert s.terminate() == 0
    db, wal = tmp_path / "db", tmp_path / "wal"
    swapped = [
        *standalone_args(tmp_path)[:-4],
        "--data-dir",
        str(wal),
        "--wal-dir",
        str(db),
    ]
    r = run(*swapped, cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: data dir {wal} holds write-ahead logs (its MANIFEST.json says kind 'wal'), "
        "not shard databases; are --data-dir and --wal-dir swapped?"
    )
    # Dirs of an earlier version (no manifest): recognised by their content.
    (db / "MANIFEST.json").unlink()
    (wal / "MANIFEST.json").unlink()
    r = run(*swapped, cwd=tmp_path)
    assert r.returncode == 1
    line = one_line(r)
    assert line.startswith(f"pyxia: data dir {wal} holds write-ahead logs ({wal}/")
    assert line.endswith(".txnx), not shard databases; are --data-dir and --wal-dir swapped?")
    assert not list(wal.rglob("CURRENT")), "nothing was created in the WAL dir"


def test_earlier_versions_dirs_are_adopted_keeping_each_namespaces_shards(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """An earlier version numbered shards in the order the namespaces were given: adopting its
    dirs reads the layout back from disk, so a new order still finds every key."""
    args = standalone_args(tmp_path, "-n", "a", "-n", "b", "--shards", "2")
    s = start(started, args, tmp_path)
    put_keys(s.public, ["/x", "/y", "/z"], namespace="a")
    put_keys(s.public, ["/x2", "/y2"], namespace="b")
    assert s.terminate() == 0
    for d in ("db", "wal"):
        (tmp_path / d / "MANIFEST.json").unlink()  # what an earlier version leaves
    r = run(*standalone_args(tmp_path, "-n", "b", "-n", "a", "--shards", "4"), cwd=tmp_path)
    assert r.returncode == 1
    assert last_line(r) == (
        f"pyxia: namespace 'b' in {tmp_path / 'db'} has 2 shards, but --shards 4 asks for 4: "
        "the shard count of a namespace cannot change"
    )
    s = start(started, standalone_args(tmp_path, "-n", "b", "-n", "a", "--shards", "2"), tmp_path)
    assert get_all(s.public, ["/x", "/y", "/z"], namespace="a") == [b"/x", b"/y", b"/z"]
    assert get_all(s.public, ["/x2", "/y2"], namespace="b") == [b"/x2", b"/y2"]
    manifest = json.loads((tmp_path / "db" / "MANIFEST.json").read_text())
    assert manifest["namespaces"]["a"] == {
        "first_shard": 0,
        "shards": 2,
        "key_sorting": "hierarchical",
    }
    assert manifest["namespaces"]["b"]["first_shard"] == 2


def test_an_unknown_format_version_is_refused(tmp_path: Path, started: list[ServerProcess]) -> None:
    s = start(started, standalone_args(tmp_path), tmp_path)
    assert s.terminate() == 0
    path = tmp_path / "wal" / "MANIFEST.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "format": 7}))
    r = run(*standalone_args(tmp_path), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: wal dir {tmp_path / 'wal'} has format version 7; this pyxia "
        f"({pyxia.__version__}) reads format 1: run a newer pyxia"
    )


def test_standalone_says_once_that_it_ignores_replication_and_servers(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "namespaces": [{"name": "default", "initialShardCount": 2, "replicationFactor": 3}],
                "servers": [{"public": f"h{i}:6648", "internal": f"h{i}:6649"} for i in range(3)],
            }
        )
    )
    s = start(started, standalone_args(tmp_path, "--config", str(cfg)), tmp_path)
    put_keys(s.public, ["/a"])
    notes = [ln for ln in s.output().splitlines() if "replication factor 1" in ln]
    assert len(notes) == 1
    assert (
        "standalone runs every namespace with replication factor 1: replicationFactor 3 "
        f"(namespace default) and the 3 servers listed in {cfg} are ignored"
    ) in notes[0]


def _coordinator(tmp_path: Path, metadata: str, internal: str) -> list[str]:
    cfg = tmp_path / "cluster.yaml"
    if not cfg.exists():
        cfg.write_text(
            yaml.safe_dump(
                {
                    "namespaces": [{"name": "default", "initialShardCount": 1}],
                    "servers": [{"public": "127.0.0.1:1", "internal": "127.0.0.1:2"}],
                }
            )
        )
    return [
        "coordinator",
        "--cluster-config",
        str(cfg),
        "--metadata",
        metadata,
        "--metadata-dir",
        str(tmp_path / "coordinator"),
        "--internal-addr",
        internal,
        "--admin-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "",
        "--cluster-secret-file",
        str(cluster_secret_file(tmp_path)),
    ]


def test_a_coordinators_metadata_dir_is_locked_and_keeps_its_provider(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    proc = ServerProcess(
        _coordinator(tmp_path, "file", f"127.0.0.1:{free_port()}"),
        tmp_path,
        ready=COORDINATOR_READY,
    ).start(timeout=30)
    started.append(proc)
    try:
        wait_for(
            lambda: (tmp_path / "coordinator" / "cluster-status.json").exists(),
            timeout=30,
            what="the cluster status",
        )
        meta = tmp_path / "coordinator"
        r = run(*_coordinator(tmp_path, "file", f"127.0.0.1:{free_port()}"), cwd=tmp_path)
        assert r.returncode == 1
        assert one_line(r) == f"pyxia: metadata dir {meta} is in use by pid {proc.pid}"
        proc.kill()
        r = run(*_coordinator(tmp_path, "raft", f"127.0.0.1:{free_port()}"), cwd=tmp_path)
        assert r.returncode == 1
        assert one_line(r) == (
            f"pyxia: metadata dir {meta} holds the file provider's cluster status; "
            "--metadata raft would start from an empty one"
        )
    finally:
        proc.kill()


def test_a_refused_dir_is_refused_before_its_mode_is_touched(tmp_path: Path) -> None:
    """Locks and manifests are checked before the directories are made private: a directory
    in use, or of another kind, keeps its mode (and the process prints one line)."""
    import os
    import stat

    from pyxia.dirs import DirLock, MetadataDir, NodeDirs

    db, wal, meta = tmp_path / "db", tmp_path / "wal", tmp_path / "coordinator"
    NodeDirs.open(db, wal, "standalone").close()
    MetadataDir.open(meta, "raft").close()
    for d in (db, wal, meta):
        os.chmod(d, 0o755)

    def mode(d: Path) -> int:
        return stat.S_IMODE(d.stat().st_mode)

    # in use
    lock = DirLock.acquire(db, "data dir")
    try:
        r = run(*standalone_args(tmp_path), cwd=tmp_path)
        assert one_line(r) == f"pyxia: data dir {db} is in use by pid {os.getpid()}"
    finally:
        lock.release()
    # of another kind (swapped), by a cluster server
    r = run(
        "server",
        "-p",
        "127.0.0.1:0",
        "-i",
        "127.0.0.1:0",
        "-m",
        "",
        "--data-dir",
        str(wal),
        "--wal-dir",
        str(db),
        "--cluster-secret-file",
        str(cluster_secret_file(tmp_path / "secret")),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert one_line(r).startswith(f"pyxia: data dir {wal} holds write-ahead logs")
    # a metadata dir of another provider
    r = run(*_coordinator(tmp_path, "file", f"127.0.0.1:{free_port()}"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r).startswith(f"pyxia: metadata dir {meta} holds the raft provider's")
    assert [mode(d) for d in (db, wal, meta)] == [0o755, 0o755, 0o755]
    # accepted: then made private
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        assert [mode(d) for d in (db, wal)] == [0o700, 0o700]
    finally:
        s.kill()
