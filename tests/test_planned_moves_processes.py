"""Planned leader moves lose no client operation (issue 15 §3), with real processes: 3
``pyxia server`` + a ``pyxia coordinator`` (RF=3, 4 shards). Oxia's own Go client (v0.17.1,
tests/go/interop load mode) and pyxia's client write continuously — each retrying only as it
does on its own — while the coordinator moves leaders 10 times (``PyxiaAdmin/MoveLeader``) and
then one server that leads shards gets SIGTERM (and is restarted). Every operation must
succeed, and every acknowledged write must be there afterwards with the version it was
acknowledged with. Half of the writes are create-only (expected: record does not exist) and
every key is written once, so a write applied twice would fail."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from proc_cluster import Member, ProcCluster
from pyxia.client import AsyncClient
from servers import wait_for
from test_go_client_interop import interop_binary  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

MOVES = 10
SHARDS = 4


class PyxiaLoad:
    """pyxia's client writing unique keys from ``workers`` tasks on a loop of its own thread."""

    def __init__(self, addresses: list[str], prefix: str, workers: int = 16) -> None:
        self.addresses = addresses
        self.prefix = prefix
        self.workers = workers
        self.acks: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(120)
        assert not self._thread.is_alive(), "pyxia's load did not stop"

    async def _main(self) -> None:
        async with AsyncClient(self.addresses, request_timeout_s=60) as client:

            async def worker(w: int) -> None:
                i = 0
                while not self._stop.is_set():
                    key = f"{self.prefix}/w{w:02d}-{i:08d}"
                    try:
                        r = await client.put(
                            key, key, expected_version_id=-1 if i % 2 == 0 else None
                        )
                    except Exception as e:
                        self.failures.append(f"{key}: {type(e).__name__}: {e}")
                    else:
                        self.acks[key] = r.version.version_id
                    i += 1

            await asyncio.gather(*(worker(w) for w in range(self.workers)))


def go_acks(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, version = line.partition(" ")
            if version:
                out[key] = int(version)
    return out


def stored(addresses: list[str], prefixes: list[str]) -> dict[str, int]:
    async def scan() -> dict[str, int]:
        out: dict[str, int] = {}
        async with AsyncClient(addresses) as client:
            for p in prefixes:
                async for g in client.range_scan(p + "/", p + "//"):
                    out[g.key] = g.version.version_id
        return out

    return asyncio.run(scan())


def leading_member(cluster: ProcCluster, exclude: Member) -> Member:
    for s in range(SHARDS):
        m, _ = cluster.shard_leader(s)
        if m is not None and m is not exclude:
            return m
    raise AssertionError("no other server leads a shard")


def test_planned_moves_and_sigterm_lose_no_operation(
    tmp_path: Path,
    interop_binary: Path,  # noqa: F811 - the imported fixture
) -> None:
    cluster = ProcCluster.start(
        tmp_path, 3, [{"name": "default", "initialShardCount": SHARDS, "replicationFactor": 3}]
    )
    go: subprocess.Popen[str] | None = None
    py = PyxiaLoad(cluster.service_addresses, "/py")
    acks_file = tmp_path / "go-acks.txt"
    try:
        entry = cluster.members[0]  # the Go client's one service address: never stopped
        go = subprocess.Popen(
            [str(interop_binary), "load", entry.public, "/go", "600", str(acks_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        py.start()

        def progress() -> tuple[int, int]:
            return len(go_acks(acks_file)), len(py.acks)

        def both_go_on(what: str) -> None:
            seen = progress()
            wait_for(
                lambda: all(n > s + 50 for n, s in zip(progress(), seen, strict=True)),
                timeout=60,
                what=what,
            )

        wait_for(lambda: min(progress()) >= 200, timeout=60, what="both loads running")
        for i in range(MOVES):
            shard = i % SHARDS
            before, term = cluster.shard_leader(shard)
            leader, new_term = cluster.move_leader(shard)
            assert new_term > term
            assert before is None or leader != before.internal, f"move {i} kept {leader}"
            both_go_on(f"both loads going on after move {i}")
        victim = leading_member(cluster, entry)
        led = [s for s in range(SHARDS) if cluster.shard_leader(s)[0] is victim]
        t0 = time.monotonic()
        assert victim.terminate(60) == 0
        shutdown_s = time.monotonic() - t0
        for s in led:
            m, _ = cluster.shard_leader(s)
            assert m is not victim, f"shard {s} is still led by the stopped server"
        both_go_on("both loads going on after the SIGTERM")
        victim.start()
        cluster.wait_steady()
        both_go_on("both loads going on after the restart")
        go.send_signal(signal.SIGINT)  # stop sending, finish what is in flight
        out, err = go.communicate(timeout=120)
        py.stop()

        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["failed"] == 0, f"Go client: {summary}\n{err[-3000:]}"
        assert not py.failures, f"pyxia client: {len(py.failures)} failed: {py.failures[:10]}"
        go_acked = go_acks(acks_file)
        assert summary["ok"] == len(go_acked) > 1000
        assert len(py.acks) > 1000
        # every acknowledged write is there, with the version it was acknowledged with
        found = stored(cluster.service_addresses, ["/go", "/py"])
        acked = {**go_acked, **py.acks}
        missing = [k for k in acked if k not in found]
        assert not missing, f"{len(missing)} acknowledged writes missing: {missing[:10]}"
        wrong = [(k, v, found[k]) for k, v in acked.items() if found[k] != v]
        assert not wrong, f"versions differ (key, acked, stored): {wrong[:10]}"
        assert shutdown_s < 20, f"the SIGTERM took {shutdown_s:.1f}s"
    finally:
        if go is not None and go.poll() is None:
            go.kill()
            go.wait()
        py.stop()
        cluster.close()
