"""The TSO shard's leader moving, on real processes (three ``pyxia server`` + ``pyxia
coordinator``, RF=3), measured the way a client sees it: a probe asks pyxia's AsyncTsoClient
for a timestamp every millisecond (one call at a time) while other callers hammer GetTs,
GetSeq and AcquireLease; the **handoff gap** of a move is the longest stretch without a
successful GetTs from the moment the move starts until service is back.

- **planned**: ``PyxiaAdmin/MoveLeader`` (the balancer's path: StepDown, then the election).
  The old leader stops granting and releases its time lease, the new one serves without
  waiting it out; no caller may see an error.
- **unplanned**: kill -9 of the leader (restarted afterwards). The new leader waits the
  lease out; callers of pyxia's client see no error either (they retry through the gap),
  except GetSeq calls in flight at the kill, which are SeqUncertain by design.

Either way the history is checked: no timestamp twice and real-time order, sequence blocks
disjoint, lease ids growing with the holder epoch.

Run alone for the medians over more moves (the note's numbers):

    cd tests && PYTHONPATH=$(cd ../python && pwd) python test_tso_handoff_processes.py \
        --moves 7 --kills 7   # an absolute PYTHONPATH: the servers run in other directories
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.checker import Record, check
from pyxia.tso.client import AsyncTsoClient, SeqBlock
from pyxia.tso.errors import SeqUncertain
from servers import wait_for
from test_tso_churn import follows, start_cluster


@dataclass
class Probe:
    """Callers on a loop in a background thread (see the module docstring)."""

    endpoints: list[str]
    probe_ok: list[float] = field(default_factory=list)  # when each probe GetTs succeeded
    records: list[Record] = field(default_factory=list)
    blocks: list[SeqBlock] = field(default_factory=list)
    leases: list[tuple[int, int]] = field(default_factory=list)  # (holder epoch, lease id)
    errors: list[str] = field(default_factory=list)
    uncertain: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def gap_after(self, t0: float) -> float | None:
        """The longest stretch without a probe success from ``t0`` to the 20th success after
        it (None before service is back)."""
        after = [t for t in self.probe_ok[:] if t >= t0]
        if len(after) < 20:
            return None
        return max(b - a for a, b in itertools.pairwise([t0, *after[:20]]))

    async def _main(self) -> None:
        async with AsyncTsoClient(self.endpoints, timeout_s=30) as tso:
            await asyncio.gather(
                self._probe(tso),
                *(self._ts(tso, i) for i in range(4)),
                self._seq(tso),
                self._lease(tso),
            )

    async def _probe(self, tso: AsyncTsoClient) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                ts = await tso.get_ts()
            except Exception as e:
                self.errors.append(f"probe: {type(e).__name__}: {e}")
                continue
            t1 = time.monotonic()
            self.probe_ok.append(t1)
            self.records.append(Record(0, t0, t1, ts, ts))
            await asyncio.sleep(max(0.0, 0.001 - (time.monotonic() - t1)))

    async def _ts(self, tso: AsyncTsoClient, n: int) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = await tso.get_ts_batch(1 + n * 5)
            except Exception as e:
                self.errors.append(f"get_ts: {type(e).__name__}: {e}")
                continue
            self.records.append(Record(n + 1, t0, time.monotonic(), r[0], r[-1]))

    async def _seq(self, tso: AsyncTsoClient) -> None:
        while not self._stop.is_set():
            try:
                self.blocks.append(await tso.get_seq("handoff", 2))
            except SeqUncertain:
                self.uncertain += 1
            except Exception as e:
                self.errors.append(f"get_seq: {type(e).__name__}: {e}")

    async def _lease(self, tso: AsyncTsoClient) -> None:
        epoch = 1
        while not self._stop.is_set():
            try:
                lease = await tso.acquire_lease(b"handoff", epoch, ttl_s=5)
                self.leases.append((epoch, lease.lease_id))
                epoch += 1
            except Exception as e:
                self.errors.append(f"lease: {type(e).__name__}: {e}")
            await asyncio.sleep(0.02)


@dataclass
class HandoffReport:
    planned_ms: list[float]
    unplanned_ms: list[float]
    errors: list[str]
    uncertain: int
    grants: int


def measure(base: Path, moves: int, kills: int) -> HandoffReport:
    cluster = start_cluster(base)
    probe = Probe(cluster.service_addresses)
    planned: list[float] = []
    unplanned: list[float] = []
    try:
        probe.start()
        wait_for(lambda: len(probe.probe_ok) > 100, timeout=60, what="the probe to run")
        for _ in range(moves):
            ok = len(probe.probe_ok)
            wait_for(lambda ok=ok: len(probe.probe_ok) > ok + 300, timeout=60, what="probes")
            t0 = time.monotonic()
            cluster.move_leader(0, namespace=DEFAULT_NAMESPACE)
            wait_for(lambda t0=t0: probe.gap_after(t0) is not None, timeout=30, interval=0.01)
            gap = probe.gap_after(t0)
            assert gap is not None
            planned.append(gap * 1000)
        for _ in range(kills):
            ok = len(probe.probe_ok)
            wait_for(lambda ok=ok: len(probe.probe_ok) > ok + 300, timeout=60, what="probes")
            victim, _ = cluster.shard_leader(0)
            assert victim is not None
            t0 = time.monotonic()
            victim.kill()
            wait_for(lambda t0=t0: probe.gap_after(t0) is not None, timeout=30, interval=0.01)
            gap = probe.gap_after(t0)
            assert gap is not None
            unplanned.append(gap * 1000)
            victim.start()
            wait_for(lambda m=victim: follows(cluster, m), timeout=60, interval=0.02)
    finally:
        probe.stop()
        cluster.close()
    violations = check(probe.records)
    assert violations == [], violations[:3]
    spans = sorted((b.start, b.start + b.count) for b in probe.blocks)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "a sequence block twice"
    ids = [i for _, i in sorted(probe.leases)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    return HandoffReport(planned, unplanned, probe.errors, probe.uncertain, len(probe.records))


def summary(r: HandoffReport) -> str:
    def fmt(xs: list[float]) -> str:
        if not xs:
            return "-"
        return f"median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms ({len(xs)}: " + (
            ", ".join(f"{x:.0f}" for x in xs) + ")"
        )

    return (
        f"planned move gap {fmt(r.planned_ms)}; kill -9 gap {fmt(r.unplanned_ms)}; "
        f"{r.grants} grants, {len(r.errors)} errors, {r.uncertain} SeqUncertain"
    )


def test_planned_moves_and_kills_of_the_tso_leader(tmp_path: Path) -> None:
    r = measure(tmp_path, moves=3, kills=2)
    print("\n" + summary(r))
    assert r.errors == [], r.errors[:5]
    # A planned move: no lease wait (a replicated write and an election). The bound leaves
    # room for this shared 2-core machine; the note's medians are well under 50 ms.
    assert statistics.median(r.planned_ms) < 150, r.planned_ms
    assert max(r.unplanned_ms) < 3000, r.unplanned_ms


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=7)
    ap.add_argument("--kills", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tso-handoff-") as d:
        print(summary(measure(Path(d), a.moves, a.kills)))
    sys.exit(0)
