"""One run of the robustness suite: start the cluster, drive the workload while the fault
schedule plays, heal, read everything back, check, report."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pyxia.robustness import checkers
from pyxia.robustness.checkers import CheckReport, SequenceFinal, Violation
from pyxia.robustness.cluster import Cluster, ClusterSpec, tso_available
from pyxia.robustness.faults import KINDS, PLANNED, FaultRecord, Injector, schedule
from pyxia.robustness.history import FAIL, INFO, OK, PUT, History, Op
from pyxia.robustness.workload import SEQ_PREFIXES, Workload, WorkloadOptions
from pyxia.test_hooks import set_dial_map

log = logging.getLogger("pyxia.robustness")

POSITIVE_CONTROL_ACK_MS = 1000
"""The positive control's WALs acknowledge before fsync and flush once a second."""


@dataclass
class RunOptions:
    minutes: float = 1.0
    seed: int = 1
    positive_control: bool = False
    faults: list[str] = field(default_factory=lambda: list(KINDS))
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    shards: int = 4
    out: Path | None = None
    keep: bool = False
    ephemeral_grace_s: float = 5.0
    tls: bool = False
    """The whole cluster over TLS (see ClusterSpec.tls)."""


@dataclass
class RunResult:
    ops: int = 0
    ok: int = 0
    failed: int = 0
    indeterminate: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    reports: list[CheckReport] = field(default_factory=list)
    out_dir: Path | None = None
    planned: Counter[str] = field(default_factory=Counter)
    """Operations run entirely within planned faults, by status."""
    planned_errors: Counter[str] = field(default_factory=Counter)

    @property
    def violations(self) -> int:
        return sum(len(r.violations) for r in self.reports)


def _say(out: TextIO, msg: str) -> None:
    out.write(msg + "\n")
    out.flush()


async def run(opts: RunOptions, out: TextIO = sys.stdout) -> RunResult:
    seconds = opts.minutes * 60.0
    base = opts.out or Path(tempfile.mkdtemp(prefix=f"pyxia-robustness-{opts.seed}-"))
    base.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in opts.faults if k in KINDS]
    forced = None
    if opts.positive_control:
        forced = [(0.35, "cluster-power-loss"), (0.7, "cluster-power-loss")]
    plan = schedule(opts.seed, seconds, kinds, forced=forced)
    _say(
        out,
        f"pyxia robustness: seed={opts.seed} minutes={opts.minutes:g} "
        f"positive-control={'yes' if opts.positive_control else 'no'} faults={len(plan)} "
        f"dir={base}",
    )
    (base / "schedule.json").write_text(
        json.dumps([f.__dict__ for f in plan], default=list, indent=1)
    )
    tso = tso_available()
    if tso:
        opts.workload.tso_processes = opts.workload.tso_processes or 2
    spec = ClusterSpec(
        tso=tso,
        shards=opts.shards,
        disk_full_node=opts.seed % 3,
        broken_ack_before_fsync_ms=POSITIVE_CONTROL_ACK_MS if opts.positive_control else None,
        tls=opts.tls,
    )
    cluster = Cluster(base / "cluster", spec)
    if opts.tls:
        _say(
            out,
            "tls: mutual TLS on the internal ports and peer connections, TLS on the "
            "coordinator's port; public ports "
            + ("TLS" if cluster.public_tls else "plaintext (this build has no public-port TLS)"),
        )
    result = RunResult(out_dir=base)
    t0 = time.monotonic_ns()

    def now() -> int:
        return time.monotonic_ns() - t0

    history = History()
    injector = Injector(cluster, now, opts.seed)
    workload: Workload | None = None
    availability = CheckReport("availability")
    leader_changes: dict[int, list[int]] = {}
    try:
        await cluster.start()
        if cluster.tmpfs is None and "disk-full" in kinds:
            _say(out, "note: cannot mount a tmpfs here (not root?): disk-full faults are no-ops")
        if not await cluster.wait_steady(120):
            raise RuntimeError("the cluster did not become steady")
        set_dial_map(cluster.client_dial_map)
        workload = Workload(
            cluster.public_addresses,
            history,
            t0,
            opts.seed,
            opts.workload,
            cluster.client_dial_map,
            cluster.client_tls,
        )
        await workload.start()
        injector.start_watchdog()
        poller = asyncio.get_running_loop().create_task(_poll_leaders(cluster, now, leader_changes))
        start = time.monotonic()
        for f in plan:
            if time.monotonic() - start + f.duration > seconds:
                break  # late (a fault waited for a recovery): the run is over
            wait = start + f.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            rec = await injector.run(f)
            _say(out, f"  {rec.start / 1e9:7.1f}s  {f.kind:<18} {rec.description}")
            for n in rec.notes:
                _say(out, f"  {'':7}   {'':<18} {n}")
        left = start + seconds - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        # -- heal and read back ------------------------------------------------------------------
        await workload.stop()
        await injector.heal_all()
        healed_at = time.monotonic()
        if not await cluster.wait_steady(120):
            availability.violations.append(
                Violation("availability", "the cluster was not steady 120s after healing")
            )
        else:
            _say(out, f"  cluster steady {time.monotonic() - healed_at:.1f}s after healing")
        await injector.stop_watchdog()
        poller.cancel()
        finals = await _read_back(workload, history, now)
        for exit_t, name, rc in injector.unexpected_exits:
            availability.violations.append(
                Violation(
                    "availability",
                    f"{name} exited unexpectedly (return code {rc}) at {exit_t / 1e9:.1f}s",
                )
            )
        result.faults = injector.records
        _dump(base, workload, finals, injector.records)
        # -- check -----------------------------------------------------------------------------
        shard_of = workload.clients[0].shard_for
        lin = checkers.check_linearizability(history, workload.keys)
        result.reports.append(lin)
        result.reports.append(
            checkers.check_versions(history, shard_of, _notif_sightings(workload))
        )
        result.reports.append(checkers.check_notifications(history, workload.subscriptions))
        result.reports.append(checkers.check_sequences(history, finals))
        result.reports.append(
            checkers.check_ephemerals(
                workload.owners,
                int(opts.workload.session_timeout_s * 1e9),
                int(opts.ephemeral_grace_s * 1e9),
                [(r.start, r.end) for r in injector.records],
                leader_changes,
            )
        )
        result.reports.append(_tso_report(workload, spec.tso))
        result.reports.append(checkers.check_tso_sequences(workload.tso_seq_calls))
        result.reports.append(checkers.check_tso_leases(workload.tso_lease_calls))
        result.reports.append(availability)
    finally:
        await injector.stop_watchdog()
        if workload is not None:
            await workload.close()
        await cluster.close()
        set_dial_map({})
    ops = history.ops
    result.ops = len(ops)
    result.ok = sum(1 for o in ops if o.status == OK)
    result.failed = sum(1 for o in ops if o.status == FAIL)
    result.indeterminate = sum(1 for o in ops if o.status == INFO)
    result.planned, result.planned_errors = during_planned(ops, result.faults)
    history.dump(str(base / "history.jsonl"))
    _report(out, opts, result)
    if result.violations == 0 and not opts.keep and opts.out is None:
        shutil.rmtree(base, ignore_errors=True)
    return result


PLANNED_SETTLE_NS = 5_000_000_000
"""Operations of a planned fault count from this long after the last unplanned fault ended
(an isolated old leader, say, may still be answering for the fault before)."""


def during_planned(ops: list[Op], faults: list[FaultRecord]) -> tuple[Counter[str], Counter[str]]:
    """The operations invoked and completed within a planned fault (no other fault runs then),
    at least ``PLANNED_SETTLE_NS`` after the last unplanned fault ended, by status, and their
    errors."""
    spans = []
    last_unplanned_end = -PLANNED_SETTLE_NS
    for r in sorted(faults, key=lambda r: r.start):
        if r.spec.kind not in PLANNED:
            last_unplanned_end = max(last_unplanned_end, r.end or r.start)
        elif r.end:
            spans.append((max(r.start, last_unplanned_end + PLANNED_SETTLE_NS), r.end))
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for o in ops:
        if o.process < 0 or o.complete is None:
            continue
        if any(s <= o.invoke and o.complete <= e for s, e in spans):
            statuses[o.status] += 1
            if o.status != OK and o.error:
                errors[o.error[:240]] += 1
    return statuses, errors


async def _poll_leaders(
    cluster: Cluster, now: Callable[[], int], changes: dict[int, list[int]]
) -> None:
    terms: dict[int, int] = {}
    while True:
        leaders = await cluster.leaders()
        t = now()
        for shard, (_, term) in leaders.items():
            if terms.get(shard) != term:
                terms[shard] = term
                changes.setdefault(shard, []).append(t)
        await asyncio.sleep(0.3)


async def _read_back(
    workload: Workload, history: History, now: Callable[[], int]
) -> list[SequenceFinal]:
    """The end of the run: reads every key once more (recorded), writes one marker per shard and
    waits for every subscriber to get them, reads the sequences, waits for the ephemeral
    records of dead owners to go."""
    aux = workload.aux
    assert aux is not None
    for key in workload.keys:
        for _ in range(20):
            op = await workload.execute_get(aux, -1, key)
            if op.status == OK:
                break
            await asyncio.sleep(0.5)
    # one marker write per shard
    markers: dict[int, int] = {}
    shards = sorted(set(aux.core.shard_map.shards)) if aux.core.shard_map else []
    for shard in shards:
        key = next(k for k in (f"/marker/{i}" for i in range(100_000)) if aux.shard_for(k) == shard)
        for attempt in range(20):
            op = history.new(-1, PUT, key, now(), value=f"marker-{shard}-{attempt}")
            op.shard = shard
            try:
                r = await aux.put(key, op.value or "")
            except Exception as e:
                op.complete, op.status, op.error = now(), INFO, str(e)
                await asyncio.sleep(0.5)
                continue
            op.complete, op.status, op.result = now(), OK, "ok"
            op.version, op.mod_count = r.version.version_id, r.version.modifications_count
            markers[shard] = r.version.version_id
            break
    await workload.drain_subscribers(markers, timeout=60)
    finals = []
    for prefix, pk in SEQ_PREFIXES:
        records: dict[str, str] = {}
        for _ in range(20):
            try:
                records = {
                    g.key: (g.value or b"").decode()
                    async for g in aux.range_scan(prefix + "-", prefix + ".", partition_key=pk)
                }
                break
            except Exception:
                await asyncio.sleep(0.5)
        finals.append(SequenceFinal(prefix, records, workload.sequence_updates.get(prefix, [])))
    for owner in workload.owners:
        if owner.died_at is not None:
            await workload.poll_ephemerals(owner, until_stop=False, timeout=30)
    return finals


def _dump(
    base: Path, workload: Workload, finals: list[SequenceFinal], faults: list[FaultRecord]
) -> None:
    """What the checkers read besides the history, for a later look."""
    from dataclasses import asdict

    data = {
        "subscriptions": [asdict(s) for s in workload.subscriptions],
        "owners": [asdict(o) for o in workload.owners],
        "sequences": [asdict(f) for f in finals],
        "faults": [
            {
                "start": r.start,
                "end": r.end,
                "kind": r.spec.kind,
                "description": r.description,
                "notes": r.notes,
            }
            for r in faults
        ],
    }
    (base / "observations.json").write_text(json.dumps(data))


def _notif_sightings(workload: Workload) -> list[checkers.VersionSighting]:
    """Versions notified, on the shard whose batch carried them (a split child's batches name
    the child, which holds those keys in the final map unless it was split again)."""
    out = []
    for sub in workload.subscriptions:
        for b in sub.batches:
            for n in b.notifications:
                if n.version is not None:
                    out.append(
                        checkers.VersionSighting(
                            b.shard, n.version, n.key, None, None, f"{sub.name} batch {b.offset}"
                        )
                    )
    return out


def _tso_report(workload: Workload, enabled: bool) -> CheckReport:
    if not enabled:
        r = CheckReport("tso")
        r.skipped = "pyxia.TsoClient not available"
        return r
    r = checkers.check_tso(workload.tso_calls)
    for e in workload.tso_errors:
        r.violations.append(Violation("tso", f"the client saw a timestamp fallback: {e}"))
    return r


def _faults_around(faults: list[FaultRecord], span: tuple[int, int]) -> list[str]:
    """The faults in progress during ``span``, or the last one that ended before it."""
    during = [r for r in faults if r.start <= span[1] and (r.end or r.start) >= span[0]]
    if not during:
        before = [r for r in faults if (r.end or r.start) < span[0]]
        during = before[-1:]
    return [
        f"  fault [{r.start / 1e9:7.1f}s ..{(r.end or r.start) / 1e9:7.1f}s] {r.spec.kind}: "
        f"{r.description}"
        for r in during
    ]


def _report(out: TextIO, opts: RunOptions, result: RunResult) -> None:
    for rep in result.reports:
        for v in rep.violations[:20]:
            _say(out, f"VIOLATION [{v.checker}] {v.summary}")
            for line in v.details[:60]:
                _say(out, line)
            if v.span is not None:
                for line in _faults_around(result.faults, v.span):
                    _say(out, line)
        if len(rep.violations) > 20:
            _say(out, f"... and {len(rep.violations) - 20} more {rep.name} violations")
    kinds = Counter(r.spec.kind for r in result.faults)
    _say(out, "")
    _say(
        out,
        f"{'':2}{'operations':<18}{result.ops:>8}  ok {result.ok}, failed {result.failed}, "
        f"indeterminate {result.indeterminate}",
    )
    _say(
        out,
        f"{'':2}{'faults':<18}{len(result.faults):>8}  "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
    )
    if any(k in PLANNED for k in kinds):
        pl = result.planned
        _say(
            out,
            f"{'':2}{'during planned':<18}{sum(pl.values()):>8}  ok {pl[OK]}, failed {pl[FAIL]}, "
            f"indeterminate {pl[INFO]}"
            + "".join(f"\n{'':28}{n} x {e}" for e, n in result.planned_errors.most_common(5)),
        )
    _say(out, f"{'':2}{'check':<26}{'result':<28}checked")
    for rep in result.reports:
        _say(out, f"{'':2}{rep.name:<26}{rep.status:<28}{rep.checked}")
    if result.violations:
        _say(
            out,
            f"replay: pyxia robustness --minutes {opts.minutes:g} --seed {opts.seed}"
            + (" --positive-control" if opts.positive_control else "")
            + f"   (history and logs in {result.out_dir})",
        )
    _say(
        out,
        f"ops={result.ops} faults={len(result.faults)} indeterminate={result.indeterminate} "
        f"violations={result.violations}",
    )
