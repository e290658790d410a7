"""Shard split with real processes: three ``pyxia server`` processes and a ``pyxia coordinator``,
pyxia's client writing from threads all along. The coordinator is killed (SIGKILL, by a
failpoint at exactly that step) mid-split, before and after the point of no return; a new one
resumes the split. No acknowledged write is lost, none fails, every record keeps the version it
was answered with, and the children hold exactly the parent's range."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyxia
from proc_cluster import ProcCluster
from pyxia.common.sharding import MAX_HASH
from pyxia.failpoints import ENV_VAR
from pyxia.proto import metadata_pb2
from servers import wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster.start(
        tmp_path, 3, [{"name": "default", "initialShardCount": 1, "replicationFactor": 3}]
    )
    try:
        yield c
    finally:
        c.close()


class Writers:
    def __init__(self, addresses: list[str], n: int = 3) -> None:
        self.acked: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client = pyxia.Client(addresses, request_timeout_s=60.0)
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{w}/k{i}"
            i += 1
            try:
                v = self._client.put(key, key.encode()).version.version_id
            except Exception as e:
                with self._lock:
                    self.failures.append(f"{key}: {e!r}")
                continue
            with self._lock:
                self.acked[key] = v

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def check(self) -> None:
        assert self.failures == []
        for key, version in self.acked.items():
            assert self._client.get(key).version.version_id == version, key
        self._client.close()


def split_status(c: ProcCluster) -> dict[int, metadata_pb2.ShardMetadata] | None:
    st = c.status()
    if st is None or not st.leader:
        return None
    return dict(st.status.namespaces["default"].shards)


@pytest.mark.parametrize("kill_at", ["split.after_catch_up", "split.after_fence"])
def test_split_under_load_survives_a_coordinator_killed_mid_split(
    cluster: ProcCluster, kill_at: str
) -> None:
    (parent,) = split_status(cluster) or {}
    # The next coordinator dies (SIGKILL) at ``kill_at``.
    cluster.kill_coordinator()
    os.environ[ENV_VAR] = f"{kill_at}=crash"
    try:
        cluster.start_coordinator()
    finally:
        del os.environ[ENV_VAR]
    cluster.wait_steady()
    writers = Writers(cluster.service_addresses)
    try:
        wait_for(lambda: writers.count() > 50, timeout=60, what="writes before the split")
        res = cluster.split_shard(parent)
        left, right = res.left_shard, res.right_shard
        assert cluster.coordinator is not None
        coordinator = cluster.coordinator
        wait_for(lambda: not coordinator.alive(), timeout=60, what="killed by the failpoint")
        cluster.start_coordinator()  # resumes the split

        def done() -> bool:
            shards = split_status(cluster)
            return (
                shards is not None
                and sorted(shards) == [left, right]
                and all(
                    m.status == metadata_pb2.SteadyState and not m.HasField("split")
                    for m in shards.values()
                )
            )

        wait_for(done, timeout=120, interval=0.1, what="the split done by the new coordinator")
        n = writers.count()
        wait_for(lambda: writers.count() > n + 50, timeout=60, what="writes after the split")
    finally:
        writers.stop()
    writers.check()
    shards = split_status(cluster)
    assert shards is not None
    ranges = sorted((m.int32_hash_range.min, m.int32_hash_range.max) for m in shards.values())
    assert ranges == [(0, MAX_HASH // 2), (MAX_HASH // 2 + 1, MAX_HASH)]
