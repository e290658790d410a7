"""Safe defaults (issue 16): private files and directories, test hooks that never arm silently,
metrics on /metrics only.

File modes: a standalone and a coordinator (file provider) run under a lax umask (022) and
still leave no file or directory that group or others can access; an existing directory with
group/other access is tightened, with one log line."""

from __future__ import annotations

import http.client
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conftest import wait_for
from grpc_stubs import OxiaClientStub
from pyxia.common.ports import free_port
from pyxia.proto import client_pb2
from pyxia.security.file_modes import make_private, tighten_dir
from servers import COORDINATOR_READY, ServerProcess, cluster_secret_file, standalone_args

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
            stub = OxiaClientStub(ch)
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
    proc = ServerProcess(
        [
            "coordinator",
            "--cluster-config",
            str(config),
            "--cluster-secret-file",
            str(cluster_secret_file(tmp_path)),
            "--metadata",
            "file",
            "--metadata-dir",
            str(meta),
            "--internal-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
        ],
        tmp_path,
        ready=COORDINATOR_READY,
    ).start(wait_ready=False)
    try:
        wait_for(
            lambda: (meta / "cluster-status.json").exists(),
            timeout=60,
            interval=0.02,
            what="the coordinator to store the cluster status",
        )
    finally:
        proc.kill()
    # A status write in progress may add its temporary file: what must be there, and private.
    assert {".cluster-status.json.lock", "cluster-status.json", "coordinator.lock"} <= {
        p.name for p in meta.iterdir()
    }
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


# -- test hooks ---------------------------------------------------------------------------------

CRASH_ON_WRITE = "wal.after_append_before_sync=crash"


def _write(s: ServerProcess) -> None:
    with grpc.insecure_channel(s.public) as ch:
        res = OxiaClientStub(ch).Write(
            client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="/k", value=b"v")]),
            timeout=30,
        )
    assert res.puts[0].status == client_pb2.OK


def _hook_lines(s: ServerProcess, word: str) -> list[str]:
    return [line for line in s.log if word in line and "test_hooks" in line]


def test_hooks_in_the_environment_are_ignored_outside_test_mode(tmp_path: Path) -> None:
    env = {
        "PYXIA_TEST_MODE": "0",
        "PYXIA_FAILPOINTS": CRASH_ON_WRITE,
        "PYXIA_WAL_SYNCED_MARK": "1",
        "PYXIA_DIAL_MAP": "127.0.0.1:1=127.0.0.1:2",
    }
    s = ServerProcess(standalone_args(tmp_path), tmp_path, env=env).start()
    try:
        _write(s)  # the crash failpoint did not arm
        assert s.alive()
    finally:
        assert s.terminate() == 0
    ignored = _hook_lines(s, "IGNORED")
    for name in ("PYXIA_FAILPOINTS", "PYXIA_WAL_SYNCED_MARK", "PYXIA_DIAL_MAP"):
        assert sum(f'hook="{name}"' in line for line in ignored) == 1, s.output()
    assert not _hook_lines(s, "ARMED")
    assert not list((tmp_path / "wal").rglob("synced-offset.mark")), "the WAL armed its hook"


def test_hooks_arm_in_test_mode_with_a_loud_warning(tmp_path: Path) -> None:
    env = {
        "PYXIA_TEST_MODE": "1",
        "PYXIA_FAILPOINTS": CRASH_ON_WRITE,
        "PYXIA_WAL_SYNCED_MARK": "1",
    }
    s = ServerProcess(standalone_args(tmp_path), tmp_path, env=env).start()
    try:
        with pytest.raises(grpc.RpcError):
            _write(s)
        assert s.proc is not None and s.proc.wait(30) == -9  # the failpoint fired
    finally:
        s.kill()
    armed = _hook_lines(s, "ARMED")
    for name in ("PYXIA_FAILPOINTS", "PYXIA_WAL_SYNCED_MARK"):
        assert sum(f'hook="{name}"' in line for line in armed) == 1, s.output()
    assert all("level=warning" in line for line in armed)
    assert list((tmp_path / "wal").rglob("synced-offset.mark")), "the WAL did not arm its hook"


def test_ack_before_fsync_exists_only_in_a_test_build(tmp_path: Path) -> None:
    from pyxia import _native
    from pyxia.test_hooks import native_test_build

    assert native_test_build() is _native.TEST_HOOKS
    env = {"PYXIA_TEST_MODE": "1", "PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS": "1000"}
    s = ServerProcess(standalone_args(tmp_path), tmp_path, env=env).start()
    try:
        _write(s)
    finally:
        assert s.terminate() == 0
    word = "ARMED" if _native.TEST_HOOKS else "IGNORED"
    lines = _hook_lines(s, word)
    assert [line for line in lines if 'hook="PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS"' in line]
    if not _native.TEST_HOOKS:
        assert "not a test build" in lines[0]


def test_positive_control_refuses_a_build_without_test_hooks(tmp_path: Path) -> None:
    from pyxia import _native

    if _native.TEST_HOOKS:
        pytest.skip("this is a test build: the positive control would run")
    r = subprocess.run(
        [sys.executable, "-m", "pyxia", "robustness", "--minutes", "0.1", "--positive-control"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--features python,test-hooks" in lines[0]
    assert not r.stdout  # it failed at once: no run started


# -- metrics ------------------------------------------------------------------------------------


def _http(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _check_metrics_endpoint(port: int, metric: str) -> None:
    status, body = _http(port, "GET", "/metrics")
    assert status == 200 and metric.encode() in body
    assert _http(port, "GET", "/metrics?name[]=process_cpu_seconds_total")[0] == 200
    assert _http(port, "HEAD", "/metrics") == (200, b"")
    for path in ("/", "/x", "/metrics/", "/metrics/x", "/favicon.ico", "/../metrics"):
        status, body = _http(port, "GET", path)
        assert status == 404, path
        assert metric.encode() not in body
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert _http(port, method, "/metrics")[0] == 405, method


def test_metrics_endpoint_serves_metrics_only() -> None:
    from pyxia.common.metrics_http import MetricsServer

    server = MetricsServer("127.0.0.1:0")
    try:
        _check_metrics_endpoint(server.port, "python_info")
    finally:
        server.close()
    with pytest.raises(OSError, match="cannot listen on metrics address"):
        MetricsServer("127.0.0.1:notaport")


def test_standalone_and_coordinator_serve_metrics_only(tmp_path: Path) -> None:
    s = ServerProcess(standalone_args(tmp_path / "s"), tmp_path).start()
    try:
        assert s.metrics_port
        _check_metrics_endpoint(s.metrics_port, "pyxia_server")
    finally:
        s.kill()
    config = tmp_path / "cluster.yaml"
    config.write_text(CLUSTER_CONFIG)
    port = free_port()
    proc = ServerProcess(
        [
            "coordinator",
            "--cluster-config",
            str(config),
            "--cluster-secret-file",
            str(cluster_secret_file(tmp_path)),
            "--metadata",
            "memory",
            "--internal-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            f"127.0.0.1:{port}",
        ],
        tmp_path,
        ready=COORDINATOR_READY,
    ).start(wait_ready=False)

    def answers() -> bool:
        try:
            return _http(port, "GET", "/metrics")[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, timeout=60, interval=0.05, what="the coordinator's metrics")
        _check_metrics_endpoint(port, "python_info")
    finally:
        proc.kill()
