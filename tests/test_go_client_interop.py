"""Oxia's own Go client (github.com/oxia-db/oxia/oxia v0.17.1) against a
real ``pyxia standalone``: the checks live in tests/go/interop/main.go."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import ServerProcess, standalone_args

GO_DIR = Path(__file__).parent / "go" / "interop"


@pytest.fixture(scope="module")
def interop_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain is not installed")
    out = tmp_path_factory.mktemp("go") / "interop"
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    r = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=GO_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if r.returncode != 0:
        if "proxy.golang.org" in r.stderr or "dial tcp" in r.stderr:
            pytest.skip(f"Go modules unavailable: {r.stderr[-300:]}")
        raise AssertionError(f"go build failed:\n{r.stderr}")
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("go-standalone")
    s = ServerProcess(standalone_args(base, "--shards", "3"), base).start()
    yield s
    s.kill()


def test_go_client_against_pyxia(interop_binary: Path, server: ServerProcess) -> None:
    r = subprocess.run(
        [str(interop_binary), server.public, "/go-interop"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
