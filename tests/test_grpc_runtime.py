"""gRPC's I/O settings for pyxia's server processes (pyxia.common.grpc_runtime): set before gRPC
loads, never over an operator's choice, known to the gRPC this project ships with, and set by
the server commands (and this suite), not by client commands or the client library."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyxia.common.grpc_runtime import LEGACY_IO_EXPERIMENTS

PROBE = (
    "import os, sys\n"
    "from pyxia.common import grpc_runtime\n"
    "{before}\n"
    "print(grpc_runtime.configure(), os.environ.get('GRPC_EXPERIMENTS'))\n"
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GRPC_EXPERIMENTS",)}
    base.pop("PYXIA_GRPC_EVENT_ENGINE", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_set_before_grpc_loads() -> None:
    out = _run(PROBE.format(before="")).stdout.split()
    assert out == ["True", LEGACY_IO_EXPERIMENTS]


def test_the_operators_choice_wins() -> None:
    out = _run(PROBE.format(before=""), GRPC_EXPERIMENTS="-chaotic_good").stdout.split()
    assert out == ["False", "-chaotic_good"]
    out = _run(PROBE.format(before=""), PYXIA_GRPC_EVENT_ENGINE="1").stdout.split()
    assert out == ["False", "None"]


def test_too_late_once_grpc_is_loaded() -> None:
    out = _run(PROBE.format(before="import grpc")).stdout.split()
    assert out == ["False", "None"]


LOAD_COMMAND = (
    "import os, click\n"
    "from pyxia.cli import main\n"
    "main.get_command(click.Context(main), {name!r})\n"
    "print(os.environ.get('GRPC_EXPERIMENTS'))\n"
)


def test_server_commands_set_it_client_commands_and_the_library_do_not() -> None:
    for name in ("server", "standalone", "coordinator"):
        assert _run(LOAD_COMMAND.format(name=name)).stdout.strip() == LEGACY_IO_EXPERIMENTS
    for name in ("perf", "client", "admin"):
        assert _run(LOAD_COMMAND.format(name=name)).stdout.strip() == "None"
    lib = _run("import os, pyxia, pyxia.client; print(os.environ.get('GRPC_EXPERIMENTS'))")
    assert lib.stdout.strip() == "None"


def test_grpc_knows_every_experiment_and_serves_with_them() -> None:
    """A gRPC that dropped one of them logs ``Unknown experiment``: time to look again."""
    code = (
        "import asyncio\n"
        "from pyxia.common import grpc_runtime\n"
        "assert grpc_runtime.configure()\n"
        "import grpc\n"
        "async def main():\n"
        "    s = grpc.aio.server()\n"
        "    port = s.add_insecure_port('127.0.0.1:0')\n"
        "    await s.start()\n"
        "    async with grpc.aio.insecure_channel(f'127.0.0.1:{port}') as ch:\n"
        "        try:\n"
        "            await ch.unary_unary('/x.Y/Z')(b'', timeout=5)\n"
        "        except grpc.aio.AioRpcError as e:\n"
        "            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e\n"
        "    await s.stop(0)\n"
        "    print('served')\n"
        "asyncio.run(main())\n"
    )
    r = _run(code)
    assert r.stdout.strip() == "served"
    assert "Unknown experiment" not in r.stderr


def test_this_suite_runs_the_servers_io_path() -> None:
    chosen = os.environ.get("GRPC_EXPERIMENTS")
    if os.environ.get("PYXIA_GRPC_EVENT_ENGINE") == "1" or chosen not in (
        None,
        LEGACY_IO_EXPERIMENTS,
    ):
        pytest.skip("this run's environment chose gRPC's I/O settings itself")
    assert chosen == LEGACY_IO_EXPERIMENTS
