"""``pyxia client ...`` and ``pyxia perf`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from pyxia.cli import main
from servers import ServerProcess, standalone_args


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("cli")
    s = ServerProcess(standalone_args(base, "--shards", "2"), base).start()
    yield s
    s.kill()


def run(server: ServerProcess, *args: str, input: str | None = None) -> str:
    r = CliRunner().invoke(main, ["client", "-a", server.public, *args], input=input)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


def test_client_commands(server: ServerProcess) -> None:
    p = f"/cli-{uuid.uuid4().hex[:6]}"
    v = json.loads(run(server, "put", f"{p}/a", "hello"))
    assert (v["key"], v["modifications_count"], v["ephemeral"]) == (f"{p}/a", 0, False)
    run(server, "put", f"{p}/b", "-c", input="from stdin")
    run(server, "put", f"{p}/i", "x", "--index", f"idx={p}-k")
    out = run(server, "get", f"{p}/a", "-v").splitlines()
    assert out[0] == "hello" and out[1] == "---"
    assert json.loads(out[2])["version_id"] == v["version_id"]
    assert run(server, "get", f"{p}/az", "-t", "floor").strip() == "hello"
    assert run(server, "get", f"{p}-k", "--index", "idx").strip() == "x"
    assert run(server, "list", "-s", f"{p}/", "-e", f"{p}//").split() == [
        f"{p}/a",
        f"{p}/b",
        f"{p}/i",
    ]
    recs = [
        json.loads(x)
        for x in run(server, "range-scan", "-s", f"{p}/", "-e", f"{p}//").split("\n")
        if x
    ]
    assert [(r["key"], r["value"]) for r in recs][:2] == [
        (f"{p}/a", "hello"),
        (f"{p}/b", "from stdin"),
    ]
    seq = json.loads(run(server, "put", f"{p}/s", "v", "-p", "pk", "-d", "1,2"))
    assert seq["key"] == f"{p}/s-{1:020d}-{2:020d}"
    assert (
        run(server, "sequence-updates", f"{p}/s", "-p", "pk", "--count", "1").strip() == seq["key"]
    )
    run(server, "delete", f"{p}/a")
    r = CliRunner().invoke(main, ["client", "-a", server.public, "get", f"{p}/a"])
    assert r.exit_code != 0 and "key not found" in r.output
    run(server, "delete-range", "-s", f"{p}/", "-e", f"{p}//")
    assert run(server, "list", "-s", f"{p}/", "-e", f"{p}//") == ""


def test_notifications_command(server: ServerProcess) -> None:
    p = f"/cli-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxia",
            "client",
            "-a",
            server.public,
            "notifications",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # the stream starts at "now": write until the command sees one of our writes
        assert proc.stdout is not None
        import threading

        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        i = 0
        while reader.is_alive() and i < 400:
            run(server, "put", f"{p}/n{i}", "v")
            reader.join(0.05)
            i += 1
        reader.join(10)
        assert lines, "no notification printed"
        note = json.loads(lines[0])
        assert note["type"] == "KEY_CREATED" and note["key"].startswith(p)
    finally:
        proc.kill()
        proc.wait(10)


def test_perf_json(server: ServerProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxia",
            "perf",
            "-a",
            server.public,
            "--rate",
            "0",
            "--duration",
            "2s",
            "--report-interval",
            "1s",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ops_per_s"] > 100
    assert report["failed_ops_per_s"] == 0
    for k in ("write_latency_ms", "read_latency_ms"):
        assert set(report[k]) == {"p50", "p95", "p99", "p999", "max"}
        assert 0 < report[k]["p50"] <= report[k]["p99"] <= report[k]["max"]
    assert "Total ops" in out.stderr  # live progress


def test_perf_paced_rate(server: ServerProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxia",
            "perf",
            "-a",
            server.public,
            "-r",
            "500",
            "--duration",
            "2",
            "--json",
            "-p",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert 350 < report["ops_per_s"] < 650
    assert 0.3 < report["read_ops_per_s"] / report["ops_per_s"] < 0.7
