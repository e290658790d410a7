"""Errors a person can read (issue 15 §5): each startup failure prints one line and exits
non-zero, never a traceback; ``pyxia perf`` and ``pyxia admin status`` say what is wrong."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import pyxia
from cli_runs import one_line, run
from pyxia.common.ports import free_port
from servers import ServerProcess, cluster_secret_file, standalone_args, wait_for


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    procs: list[ServerProcess] = []
    yield procs
    for p in procs:
        p.kill()


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def test_bad_metrics_address(tmp_path: Path) -> None:
    r = run(*with_flag(standalone_args(tmp_path), "--metrics-addr", "foo"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == "pyxia: invalid --metrics-addr 'foo': expected host:port"
    assert not (tmp_path / "db").exists(), "nothing is created before the flags are checked"


def test_port_out_of_range(tmp_path: Path) -> None:
    r = run(*with_flag(standalone_args(tmp_path), "--public-addr", "127.0.0.1:99999"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        "pyxia: invalid --public-addr '127.0.0.1:99999': port 99999 is out of range (0-65535)"
    )


def test_metrics_port_in_use_is_one_line_without_noise(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        addr = f"127.0.0.1:{port}"
        r = run(*with_flag(standalone_args(tmp_path), "--metrics-addr", addr), cwd=tmp_path)
        assert r.returncode == 1
        assert (
            one_line(r) == f"pyxia: cannot listen on metrics address {addr}: Address already in use"
        )
        # the coordinator too
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "namespaces": [{"name": "default"}],
                    "servers": [{"public": "127.0.0.1:1", "internal": "127.0.0.1:2"}],
                }
            )
        )
        r = run(
            "coordinator",
            "-f",
            str(cfg),
            "--metadata",
            "memory",
            "-i",
            f"127.0.0.1:{free_port()}",
            "--admin-addr",
            "127.0.0.1:0",
            "-m",
            addr,
            "--cluster-secret-file",
            str(cluster_secret_file(tmp_path)),
            cwd=tmp_path,
        )
        assert r.returncode == 1
        assert (
            one_line(r) == f"pyxia: cannot listen on metrics address {addr}: Address already in use"
        )


def test_coordinator_address_checks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "namespaces": [{"name": "default"}],
                "servers": [{"public": "127.0.0.1:1", "internal": "127.0.0.1:2"}],
            }
        )
    )
    secret = cluster_secret_file(tmp_path)
    r = run(
        "coordinator",
        "-f",
        str(cfg),
        "--metadata",
        "memory",
        "-i",
        "127.0.0.1:70000",
        "--admin-addr",
        "127.0.0.1:0",
        "--cluster-secret-file",
        str(secret),
    )
    assert r.returncode == 1
    assert one_line(r) == (
        "pyxia: invalid --internal-addr '127.0.0.1:70000': port 70000 is out of range (0-65535)"
    )


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "wal"
    path.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: mount a read-only filesystem
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs", str(path)],
            capture_output=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr!r}")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=False)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_read_only_wal_dir(tmp_path: Path, read_only_dir: Path) -> None:
    r = run(*standalone_args(tmp_path), cwd=tmp_path)
    assert r.returncode == 1
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert one_line(r) == f"pyxia: wal dir {read_only_dir} is not writable: {reason}"


def test_junk_in_a_shard_db_and_the_hint_that_repairs_it(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    started.append(s)
    with pyxia.Client(s.public) as c:
        for i in range(10):
            c.put(f"/k{i}", b"v")
    assert s.terminate() == 0
    shard_db = tmp_path / "db" / "default" / "shard-0"
    (shard_db / "CURRENT").write_text("junk")
    r = run(*standalone_args(tmp_path), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        f"pyxia: shard default/0: the database {shard_db} is damaged (Corruption: CURRENT file "
        "does not end with newline); move it aside and restart: its log holds every entry "
        "from 0 and rebuilds it"
    )
    shutil.move(shard_db, tmp_path / "damaged-db")
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    started.append(s)
    with pyxia.Client(s.public) as c:
        assert [c.get(f"/k{i}").value for i in range(10)] == [b"v"] * 10


def test_perf_against_a_dead_address_fails_within_its_timeout() -> None:
    t0 = time.monotonic()
    r = run(
        "perf",
        "-a",
        f"127.0.0.1:{free_port()}",
        "--request-timeout",
        "2s",
        "--duration",
        "60s",
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 1
    line = one_line(r)
    assert line.startswith("Error: oxia: no shard assignments from 127.0.0.1:"), line
    assert "UNAVAILABLE" in line
    assert elapsed < 2 + 10, f"took {elapsed:.1f}s"  # the timeout, plus starting Python


def test_perf_reports_a_server_gone_mid_run(tmp_path: Path, started: list[ServerProcess]) -> None:
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    started.append(s)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxia",
            "perf",
            "-a",
            s.public,
            "--rate",
            "200",
            "--report-interval",
            "0.5s",
            "--duration",
            "20s",
            "--request-timeout",
            "60s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def pump() -> None:
        assert p.stderr is not None
        for ln in p.stderr:
            lines.append(ln.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for(lambda: any("Total ops" in ln for ln in lines), timeout=30, what="a report")
        s.kill()
        killed = time.monotonic()
        waiting = wait_for(
            lambda: next((ln for ln in lines if ln.strip().startswith("Waiting:")), None),
            timeout=10,
            what="the report to say that operations are waiting",
        )
        assert time.monotonic() - killed < 5  # long before the 60 s request timeout
        assert (
            "ops unanswered for" in waiting
            and "last error:" in waiting
            and "UNAVAILABLE" in waiting
        )
    finally:
        p.kill()
        p.wait(10)


def test_admin_status_at_a_data_server(tmp_path: Path, started: list[ServerProcess]) -> None:
    s = ServerProcess(standalone_args(tmp_path, internal="127.0.0.1:0"), tmp_path).start()
    started.append(s)
    r = run("admin", "status", "--coordinator", s.internal)
    assert r.returncode == 1
    assert one_line(r) == (
        f"Error: {s.internal} is not a coordinator (it does not serve pyxia's admin API; a data "
        "server?): point --coordinator at a coordinator's address"
    )


def test_a_tso_namespace_with_several_shards(tmp_path: Path) -> None:
    r = run(*standalone_args(tmp_path, "-n", "tso", "--shards", "2"), cwd=tmp_path)
    assert r.returncode == 1
    assert one_line(r) == (
        "pyxia: namespace 'tso' serves the timestamp oracle and must have one shard "
        "(choose another --tso-namespace)"
    )
