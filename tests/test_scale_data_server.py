"""A scaled-down run of the many-shards data server benchmark (benches/scale/data_server.py):
one ``pyxia standalone`` with 40 shards, each written once, restarted cleanly and after a
kill -9. Guards what made 1,000 shards expensive: a 64 MiB WAL segment preallocated per
shard, descriptors and threads per shard, every shard serving again after a restart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches" / "scale"))
from data_server import measure  # noqa: E402

pytestmark = pytest.mark.slow  # starts pyxia processes

SHARDS = 40
MIB = 1 << 20


def test_many_shards_on_one_server_stay_small_and_restart(tmp_path: Path) -> None:
    # (a short load too, on the many shards and on the comparison server: the harness's own
    # code path, not a figure)
    r = measure(tmp_path, SHARDS, perf_seconds=1, timeout=120)
    replicas = SHARDS + 1  # and the TSO namespace's shard
    # Each log's first segment is 1 MiB (it was 64 MiB: 2.6 GB here).
    assert r.wal_disk_bytes <= replicas * (MIB + 64 * 1024)
    assert r.data_disk_bytes <= replicas * MIB
    # Per shard: a WAL sync thread; its segment, pipes and RocksDB's files (DB, LOG, MANIFEST,
    # LOCK, a table file, the directory): bounded, not growing with anything but the shards.
    assert r.idle.threads <= replicas + 40, r.idle
    assert r.idle.fds <= 16 * replicas + 100, r.idle
    assert r.idle.rss_bytes <= 512 * MIB, r.idle
    assert r.restart_to_serving_s < 60
    assert r.crash_restart_to_serving_s < 60
    assert r.writes_per_s > 0 and r.compare_writes_per_s > 0
