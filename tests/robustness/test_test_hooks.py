"""The test hooks the robustness suite relies on: the debug service of ``pyxia server
--enable-test-hooks`` (failpoints armed at runtime; absent without the flag), and the power-loss
cut of a killed process's WAL back to its synced-offset mark."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pyxia.robustness.cluster import MARK_ENV, Node
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.server.debug_rpc import call_debug
from servers import ServerProcess, cluster_secret_file


def _server(tmp: Path, *extra: str) -> ServerProcess:
    return ServerProcess(
        [
            "server",
            "--public-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
            "--data-dir",
            str(tmp / "db"),
            "--wal-dir",
            str(tmp / "wal"),
            "--cluster-secret-file",
            str(cluster_secret_file(tmp)),
            *extra,
        ],
        tmp,
    ).start()


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[ServerProcess]:
    s = _server(tmp_path, "--enable-test-hooks")
    try:
        yield s
    finally:
        s.kill()


def _secret(s: ServerProcess) -> ClusterSecret:
    return ClusterSecret.from_file(cluster_secret_file(s.workdir))


def test_debug_service_arms_failpoints(hooked: ServerProcess) -> None:
    addr, secret = hooked.internal, _secret(hooked)
    arm = {"name": "x.y", "action": "2*sleep(1)"}
    assert call_debug(addr, "ArmFailpoint", arm, secret=secret) == {}
    assert call_debug(addr, "FailpointHits", {"name": "x.y"}, secret=secret) == {"hits": 0}
    assert call_debug(addr, "DisarmFailpoint", {"name": None}, secret=secret) == {}
    with pytest.raises(grpc.RpcError) as e:
        call_debug(addr, "ArmFailpoint", {"name": "x.y", "action": "explode"}, secret=secret)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_no_debug_service_without_the_flag(tmp_path: Path) -> None:
    s = _server(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as e:
            call_debug(s.internal, "FailpointHits", {"name": "x"}, secret=_secret(s))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    finally:
        s.kill()


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pyxia._native import Wal
    w = Wal(sys.argv[1], segment_size=64 * 1024)
    for i in range(300):
        w.append(1, i, b"x" * 500, 0)
    w.sync()
    for i in range(300, 420):  # written, never synced
        w.append(1, i, b"y" * 500, 0)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_power_loss_cuts_back_to_the_synced_offset(tmp_path: Path) -> None:
    shard = tmp_path / "n" / "wal" / "default" / "shard-0"
    shard.mkdir(parents=True)
    p = subprocess.run(
        [sys.executable, "-c", WRITER, str(shard)],
        env={**__import__("os").environ, MARK_ENV: "1"},
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == -9, p.stderr
    node = Node("s0", tmp_path / "n", [], {})
    dropped = node.cut_unsynced()
    assert dropped == {"shard-0": 120}
    from pyxia._native import Wal

    with Wal(shard) as w:
        assert w.last_offset == 299
        assert w.read(299).value == b"x" * 500
    assert node.cut_unsynced() == {}  # nothing more to drop
