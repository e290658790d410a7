"""`pyxia wal perf` and `pyxia wal scan` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pyxia._native import Wal
from pyxia.cli import main


def test_wal_perf_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxia",
            "wal",
            "perf",
            "--json",
            "--seconds",
            "1",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(out.stdout)
    for key in (
        "append_entries_per_s",
        "durable_entries_per_s",
        "sync_p50_us",
        "sync_p99_us",
        "baseline_fdatasync_entries_per_s",
    ):
        assert data[key] > 0, key
    assert "baseline" in out.stderr  # progress goes to stderr
    assert not list(tmp_path.iterdir()), "perf must clean up after itself"


def test_wal_scan(tmp_path: Path) -> None:
    with Wal(tmp_path, segment_size=4096) as wal:
        wal.append_batch([(5, o, b"x" * 50, 1_700_000_000_000) for o in range(120)])
    r = CliRunner().invoke(main, ["wal", "scan", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "segment 00000000000000000000.txnx" in r.output
    assert "index present" in r.output
    lines = [ln.split() for ln in r.output.splitlines() if ln.strip()[:1].isdigit()]
    assert [int(ln[0]) for ln in lines] == list(range(120))
    assert all(ln[1] == "5" for ln in lines)
    # damage is reported with its byte position and a non-zero exit
    seg = sorted(tmp_path.glob("*.txnx"))[-1]
    raw = bytearray(seg.read_bytes())
    raw[30] ^= 0xFF
    seg.write_bytes(bytes(raw))
    r = CliRunner().invoke(main, ["wal", "scan", "--no-entries", str(tmp_path)])
    assert r.exit_code == 1
    assert "DAMAGED: byte 0" in r.output


def test_version() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "pyxia" in r.output
