"""``pyxia wal scan`` and ``pyxia wal truncate`` on a standalone's real WAL (issue 15 §4): the
tools refuse a running node, a cut log restarts serving its prefix, and a standalone with a
damaged log refuses to start with one line naming the commands that repair it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyxia
from cli_runs import one_line, run
from pyxia.wal_inspect import scan_shard
from servers import ServerProcess, standalone_args

KEYS = [f"/k{i:02d}" for i in range(30)]


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    procs: list[ServerProcess] = []
    yield procs
    for p in procs:
        p.kill()


def start(started: list[ServerProcess], base: Path) -> ServerProcess:
    p = ServerProcess(standalone_args(base), base).start()
    started.append(p)
    return p


def write_keys(address: str) -> None:
    with pyxia.Client(address) as c:
        for k in KEYS:
            c.put(k, k.encode())  # one entry each: offsets 0..29 of shard 0


def present(address: str) -> list[str]:
    with pyxia.Client(address) as c:
        return c.list("/", "/~")


def test_scan_and_truncate_a_real_wal(tmp_path: Path, started: list[ServerProcess]) -> None:
    s = start(started, tmp_path)
    write_keys(s.public)
    wal = tmp_path / "wal"
    where = ["--wal-dir", str(wal), "--namespace", "default", "--shard", "0"]
    r = run("wal", "truncate", *where, "--offset", "19")
    assert r.returncode == 1
    assert one_line(r) == f"pyxia: wal dir {wal} is in use by pid {s.pid}: stop the node first"
    # scan reads a running node's log (read-only), and says so
    r = run("wal", "scan", *where, "--offset-first", "3", "--offset-last", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert f"is in use by pid {s.pid}" in r.stderr
    entries = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [e["offset"] for e in entries] == [3, 4]
    assert [e["writeRequests"]["writes"][0]["puts"][0]["key"] for e in entries] == ["/k03", "/k04"]
    s.kill()

    # a bare top-level dir lists the shard logs it holds
    r = run("wal", "scan", "--wal-dir", str(wal))
    assert r.returncode == 0, r.stderr
    assert "default/shard-0: 1 segment(s), entries 0..29, valid" in r.stdout.splitlines()
    r = run("wal", "scan", *where)
    assert r.returncode == 0
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert [int(x[0]) for x in rows] == list(range(30))
    assert rows[5][-2:] == ["put", "/k05"]

    r = run("wal", "truncate", *where, "--offset", "19")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "shard default/0: kept entries 0..19, removed entries 20..29"
    aside = next(wal.glob("default/shard-0.truncated-*"))
    assert lines[1] == f"shard default/0: copies of the segments changed are in {aside}"
    assert scan_shard(aside).last_valid == 29  # the removed entries are kept aside

    s = start(started, tmp_path)
    assert present(s.public) == KEYS[:20]
    with pyxia.Client(s.public) as c:
        c.put("/after", b"x")
        assert c.get("/after").value == b"x"


def test_a_standalone_with_a_damaged_log_refuses_and_the_hint_repairs_it(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    s = start(started, tmp_path)
    write_keys(s.public)
    assert s.terminate() == 0  # a clean stop: the DB holds every entry (commit offset 29)
    wal = tmp_path / "wal"
    log_dir = wal / "default" / "shard-0"
    scan = scan_shard(log_dir)
    seg = scan.segments[0]
    rec = seg.records[3]
    raw = bytearray(seg.path.read_bytes())
    raw[rec.position + 12 + 4] ^= 0xFF  # a byte of entry 3's payload
    seg.path.write_bytes(bytes(raw))

    r = run(*standalone_args(tmp_path), cwd=tmp_path)
    assert r.returncode == 1
    where = f"--wal-dir {wal} --namespace default --shard 0"
    line = one_line(r)
    assert line.startswith(
        f"pyxia: shard default/0: the write-ahead log {log_dir} is damaged (corrupted log: "
        f"{seg.path}: byte {rec.position}: CRC mismatch"
    ), line
    assert line.endswith(
        f"(entry 3, at or below commit offset 29)); inspect it with `pyxia wal scan {where}`, "
        f"then cut it with `pyxia wal truncate {where} --offset 2`"
    ), line

    r = run("wal", "scan", *where.split())
    assert r.returncode == 1
    assert f"DAMAGED: byte {rec.position}: CRC mismatch" in r.stdout

    r = run("wal", "truncate", *where.split(), "--offset", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        "shard default/0: its DB already holds the entries up to 29, which a cut at 2 cannot "
        "take back: the log was emptied (entries 0..2 and the damaged rest removed) and the "
        "shard continues from its DB at entry 30"
    )
    s = start(started, tmp_path)
    assert present(s.public) == KEYS
    with pyxia.Client(s.public) as c:
        c.put("/after", b"x")
    assert s.terminate() == 0
    assert scan_shard(log_dir).first_offset == 30  # the log continues the DB
    s = start(started, tmp_path)
    assert present(s.public) == ["/after", *KEYS]
