"""Safe defaults (issue 16): private files and directories, test hooks that never arm silently,
metrics on /metrics only.

File modes: a standalone and a coordinator (file provider) run under a lax umask (022) and
still leave no file or directory that group or others can access; an existing directory with
group/other access is tightened, with one log line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conftest import wait_for
from pyxia.proto import client_pb2, client_pb2_grpc
from pyxia.security.file_modes import make_private, tighten_dir
from servers import ServerProcess, standalone_args

CLUSTER_CONFIG = (
    "namespaces:\n  - name: default\n    initialShardCount: 2\n    replicationFactor: 1\n"
    "servers:\n  - public: 127.0.0.1:1\n    internal: 127.0.0.1:2\n"
)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """Child processes start with umask 022 (what the audit saw)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _accessible_by_others(root: Path) -> list[str]:
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 and not path.is_symlink():
            bad.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return bad


def test_standalone_leaves_no_file_readable_by_others(tmp_path: Path, lax_umask: None) -> None:
    (tmp_path / "db").mkdir(mode=0o755)  # an existing, lax data dir is tightened
    os.chmod(tmp_path / "db", 0o755)
    s = ServerProcess(standalone_args(tmp_path, "--shards", "2"), tmp_path).start()
    try:
        with grpc.insecure_channel(s.public) as ch:
            stub = client_pb2_grpc.OxiaClientStub(ch)
            for shard in (0, 1):
                res = stub.Write(
                    client_pb2.WriteRequest(
                        shard=shard, puts=[client_pb2.PutRequest(key="/k", value=b"v")]
                    )
                )
                assert res.puts[0].status == client_pb2.OK
    finally:
        assert s.terminate() == 0
    db, wal = tmp_path / "db", tmp_path / "wal"
    assert [p for p in db.rglob("*") if p.is_file()], "no database file was written"
    assert [p for p in wal.rglob("*") if p.is_file()], "no WAL file was written"
    assert _accessible_by_others(db) == []
    assert _accessible_by_others(wal) == []
    tightened = [line for line in s.log if "tightened the permissions" in line]
    assert len(tightened) == 1 and str(db) in tightened[0], s.output()


def test_coordinator_file_provider_leaves_no_file_readable_by_others(
    tmp_path: Path, lax_umask: None
) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(CLUSTER_CONFIG)
    meta = tmp_path / "meta"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxia",
            "coordinator",
            "--cluster-config",
            str(config),
            "--metadata",
            "file",
            "--metadata-dir",
            str(meta),
            "--internal-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (meta / "cluster-status.json").exists(),
            timeout=60,
            interval=0.02,
            what="the coordinator to store the cluster status",
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert sorted(p.name for p in meta.iterdir()) == [
        ".cluster-status.json.lock",
        "cluster-status.json",
        "coordinator.lock",
    ]
    assert _accessible_by_others(meta) == []


def test_make_private_sets_the_umask_and_tightens_only_what_it_owns(
    tmp_path: Path, lax_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    lax = tmp_path / "lax"
    lax.mkdir()
    os.chmod(lax, 0o775)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: never ours to change
    new = tmp_path / "a" / "new"
    try:
        assert make_private([lax, shared, new, None, lax]) == [lax]
        assert os.umask(0o077) == 0o077
        assert stat.S_IMODE(lax.stat().st_mode) == 0o700
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert stat.S_IMODE(new.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert not tighten_dir(lax)  # private already: nothing to do, nothing logged twice
        messages = [r.getMessage() for r in caplog.records]
        assert sum("tightened" in m for m in messages) == 1
        assert sum("not ours to tighten" in m for m in messages) == 1
        (tmp_path / "file").write_text("x")
        with pytest.raises(NotADirectoryError):
            tighten_dir(tmp_path / "file")
    finally:
        os.chmod(shared, 0o700)
