"""The checkers of a run (pure code over recorded data; no I/O, no clock).

- :func:`check_linearizability`: per-key linearizability of the KV history
  (:mod:`pyxia.robustness.linearizability`), with a minimal failing history per violation;
- :func:`check_versions`: a version id names one record version per shard (same key, value and
  modification count wherever it is seen: writes, reads, scans, notifications), and version ids
  increase with real time per shard (a write invoked after another completed gets a higher one);
- :func:`check_notifications`: every committed change delivered exactly once per subscriber,
  in commit order, across reconnects and resumptions; subscribers agree on each batch;
- :func:`check_sequences`: sequential keys gap-free and increasing, none lost, none invented;
- :func:`check_ephemerals`: an ephemeral record is gone within session timeout + grace after
  its owner died (counted from the last fault or leader change of its shard);
- :func:`check_tso`: every timestamp strictly above every one received before it was requested.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyxia.robustness.history import (
    CAS,
    GET,
    INFO,
    OK,
    PUT,
    SCAN,
    SEQ,
    History,
    Op,
    fmt_time,
)
from pyxia.robustness.linearizability import (
    READ,
    LinOp,
    Outcome,
    build,
    check_ops,
    describe_state,
    minimize,
)


@dataclass
class Violation:
    checker: str
    summary: str
    details: list[str] = field(default_factory=list)
    span: tuple[int, int] | None = None
    """The time span of the failing excerpt (ns since the start), when known."""


@dataclass
class CheckReport:
    name: str
    checked: str = ""
    violations: list[Violation] = field(default_factory=list)
    unknown: int = 0
    skipped: str | None = None

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return f"skipped ({self.skipped})"
        if self.violations:
            return f"{len(self.violations)} VIOLATION(S)"
        if self.unknown:
            return f"ok ({self.unknown} unknown: search budget exceeded)"
        return "ok"


# -- linearizability -------------------------------------------------------------------------------


def _describe_lin(lop: LinOp, src: Op, key: str) -> str:
    t = f"  [{fmt_time(lop.call)}s ..{fmt_time(lop.ret)}s] p{src.process:<3} #{src.id:<6} "
    if lop.ghost:
        return t + f"(possible earlier application of #{src.id}) {src.describe()}"
    if src.kind in ("list", "scan"):
        return (
            t
            + f"{src.kind}({src.key}, {src.end}) saw {key}: "
            + (lop.describe().split(" -> ", 1)[1] if lop.kind == READ else lop.result or "")
        )
    return t + src.describe()


def check_linearizability(
    history: History,
    keys: Iterable[str] | None = None,
    max_steps: int = 3_000_000,
    minimize_budget_s: float = 20.0,
    max_minimized: int = 3,
) -> CheckReport:
    kh = build(history, keys)
    report = CheckReport("linearizability")
    n_ops = sum(len(v) for v in kh.by_key.values())
    report.checked = f"{len(kh.by_key)} keys, {n_ops} key-operations"
    minimized = 0
    for key in sorted(kh.by_key):
        ops = kh.by_key[key]
        res = check_ops(ops, max_steps=max_steps)
        if res.outcome is Outcome.UNKNOWN:
            report.unknown += 1
            continue
        if res.outcome is Outcome.OK:
            continue
        details: list[str] = []
        span: tuple[int, int] | None = None
        if res.blocked is not None:
            b = res.blocked
            span = (b.call, b.ret if b.ret is not None else b.call)
            details.append(
                f"no linearization places #{res.blocked.source} "
                f"({kh.source[res.blocked.source].describe()}) after "
                f"{len(res.linearized)} operations of {key}"
            )
        if minimized < max_minimized:
            minimized += 1
            small = minimize(ops, budget_s=minimize_budget_s)
            details.append(
                f"minimal failing history of {key} ({len(small.ops)} of {len(ops)} operations): "
                f"the record is {describe_state(small.initial)} after {small.skipped} earlier "
                "operations, then"
            )
            details += [_describe_lin(o, kh.source[o.source], key) for o in small.ops]
            if small.ops:
                span = (
                    min(o.call for o in small.ops),
                    max(o.ret if o.ret is not None else o.call for o in small.ops),
                )
        report.violations.append(
            Violation("linearizability", f"key {key}: not linearizable", details, span)
        )
    return report


# -- versions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionSighting:
    shard: int
    version: int
    key: str
    value: str | None
    mod_count: int | None
    where: str


def version_sightings(history: History, shard_of: Callable[..., int]) -> Iterable[VersionSighting]:
    """Every version seen, on the shard that holds the key in the *final* map (``shard_of``):
    a split's children go on with their parent's version counter, so a key's versions form
    one sequence on its final shard (each final shard's keys lived in one shard at every
    moment), while two children may hand out the same version number to different keys."""
    for op in history.ops:
        if op.status != OK:
            continue
        if op.kind in (PUT, CAS, SEQ) and op.result == "ok" and op.version is not None:
            key = op.result_key if op.kind == SEQ and op.result_key else op.key
            yield VersionSighting(
                shard_of(op.key, op.partition_key),
                op.version,
                key,
                op.value,
                op.mod_count,
                f"#{op.id} {op.kind}",
            )
        elif op.kind == GET and op.result == "found" and op.version is not None:
            yield VersionSighting(
                shard_of(op.key, op.partition_key),
                op.version,
                op.key,
                op.read_value,
                op.mod_count,
                f"#{op.id} get",
            )
        elif op.kind == SCAN:
            for r in op.records or ():
                yield VersionSighting(
                    shard_of(r.key), r.version, r.key, r.value, r.mod_count, f"#{op.id} scan"
                )


def check_versions(
    history: History,
    shard_of: Callable[..., int],
    extra: Iterable[VersionSighting] = (),
) -> CheckReport:
    report = CheckReport("versions")
    seen: dict[tuple[int, int], VersionSighting] = {}
    n = 0
    bad: set[tuple[int, int]] = set()
    for s in [*version_sightings(history, shard_of), *extra]:
        n += 1
        k = (s.shard, s.version)
        first = seen.get(k)
        if first is None:
            seen[k] = s
            continue
        if (
            first.key != s.key
            or (first.value is not None and s.value is not None and first.value != s.value)
            or (
                first.mod_count is not None
                and s.mod_count is not None
                and first.mod_count != s.mod_count
            )
        ):
            if k in bad:
                continue
            bad.add(k)
            report.violations.append(
                Violation(
                    "versions",
                    f"shard {s.shard}: version {s.version} names two different records",
                    [
                        f"  {first.where}: key={first.key} value={first.value!r} "
                        f"mod_count={first.mod_count}",
                        f"  {s.where}: key={s.key} value={s.value!r} mod_count={s.mod_count}",
                    ],
                )
            )
    # real-time order of writes per shard
    writes: dict[int, list[Op]] = {}
    for op in history.ops:
        if (
            op.status == OK
            and op.kind in (PUT, CAS, SEQ)
            and op.result == "ok"
            and op.version is not None
            and op.complete is not None
        ):
            writes.setdefault(shard_of(op.key, op.partition_key), []).append(op)
    for shard, ws in writes.items():
        by_complete = sorted(ws, key=lambda o: o.complete or 0)
        completes = [o.complete or 0 for o in by_complete]
        # prefix maximum of versions by completion time
        best: list[Op] = []
        for o in by_complete:
            if not best or (o.version or 0) > (best[-1].version or 0):
                best.append(o)
            else:
                best.append(best[-1])
        reported = 0
        for b in ws:
            i = bisect.bisect_left(completes, b.invoke)  # writes completed before b was invoked
            if i == 0:
                continue
            a = best[i - 1]
            if (a.version or 0) >= (b.version or 0) and reported < 5:
                reported += 1
                report.violations.append(
                    Violation(
                        "versions",
                        f"shard {shard}: version ids went back in real time",
                        [
                            f"  [{fmt_time(a.invoke)}s ..{fmt_time(a.complete)}s] #{a.id} "
                            f"{a.describe()}",
                            f"  [{fmt_time(b.invoke)}s ..{fmt_time(b.complete)}s] #{b.id} "
                            f"{b.describe()}  (invoked after #{a.id} completed)",
                        ],
                    )
                )
    report.checked = f"{n} sightings, {len(seen)} versions"
    return report


# -- notifications ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notif:
    type: str  # "created" | "modified" | "deleted" | "range_deleted"
    key: str
    version: int | None


@dataclass(frozen=True)
class Batch:
    received: int
    shard: int
    offset: int
    notifications: tuple[Notif, ...]


@dataclass
class Subscription:
    name: str
    connected_at: int
    """When the feed was established: changes invoked later must all be delivered."""
    batches: list[Batch] = field(default_factory=list)
    resumes: int = 0
    caught_up: bool = False
    """Whether it received the end-of-run marker of every shard."""


def check_notifications(history: History, subs: list[Subscription]) -> CheckReport:
    report = CheckReport("notifications")
    if not subs:
        report.skipped = "no subscriber"
        return report
    total = 0
    by_offset: dict[tuple[int, int], tuple[str, Batch]] = {}
    for sub in subs:
        last_offset: dict[int, int] = {}
        last_version: dict[int, int] = {}
        # (key, version) -> the shards whose batches notified it. By key, not by the shard
        # the write went to: after a split, a parent's change may be delivered by a child
        # (whose log continues the parent's), and two children share the parent's counter.
        delivered: dict[tuple[str, int], set[int]] = {}
        shards_of_key: dict[str, set[int]] = {}
        for b in sub.batches:
            total += 1
            lo = last_offset.get(b.shard)
            if lo is not None and b.offset <= lo:
                what = (
                    "twice"
                    if any(
                        x.shard == b.shard and x.offset == b.offset
                        for x in sub.batches
                        if x is not b
                    )
                    else "out of order"
                )
                report.violations.append(
                    Violation(
                        "notifications",
                        f"{sub.name}: shard {b.shard} batch {b.offset} delivered {what} "
                        f"(after batch {lo})",
                    )
                )
            last_offset[b.shard] = max(b.offset, lo if lo is not None else -1)
            prev = by_offset.get((b.shard, b.offset))
            if prev is None:
                by_offset[(b.shard, b.offset)] = (sub.name, b)
            elif prev[1].notifications != b.notifications:
                report.violations.append(
                    Violation(
                        "notifications",
                        f"shard {b.shard} batch {b.offset} differs between {prev[0]} and "
                        f"{sub.name}",
                        [
                            f"  {prev[0]}: {prev[1].notifications}",
                            f"  {sub.name}: {b.notifications}",
                        ],
                    )
                )
            # versions grow from batch to batch (within a batch they are in key order)
            lv = last_version.get(b.shard, -1)
            vs = [n.version for n in b.notifications if n.version is not None]
            if vs and min(vs) <= lv:
                report.violations.append(
                    Violation(
                        "notifications",
                        f"{sub.name}: shard {b.shard} batch {b.offset} holds version {min(vs)}, "
                        f"not above version {lv} of an earlier batch",
                    )
                )
            if vs:
                last_version[b.shard] = max(lv, *vs)
            for n in b.notifications:
                shards_of_key.setdefault(n.key, set()).add(b.shard)
                if n.version is not None:
                    delivered.setdefault((n.key, n.version), set()).add(b.shard)
        if not sub.caught_up:
            report.violations.append(
                Violation(
                    "notifications",
                    f"{sub.name}: did not receive the end-of-run changes of every shard "
                    "after the cluster recovered",
                )
            )
            continue
        coalesced = _coalesced(sub.batches)
        missing = []
        for op in history.ops:
            if (
                op.status == OK
                and op.kind in (PUT, CAS, SEQ)
                and op.result == "ok"
                and op.version is not None
                and op.invoke >= sub.connected_at
            ):
                key = op.result_key if op.kind == SEQ and op.result_key else op.key
                if (key, op.version) in delivered:
                    continue
                if coalesced(frozenset(shards_of_key.get(key, ())), op.version, key):
                    continue
                missing.append(op)
        if missing:
            report.violations.append(
                Violation(
                    "notifications",
                    f"{sub.name}: {len(missing)} acknowledged write(s) never notified",
                    [
                        f"  [{fmt_time(o.invoke)}s ..{fmt_time(o.complete)}s] #{o.id} "
                        f"shard {o.shard}: {o.describe()}"
                        for o in missing[:10]
                    ],
                )
            )
    report.checked = f"{len(subs)} subscribers, {total} batches"
    return report


def _coalesced(batches: list[Batch]) -> Callable[[frozenset[int], int, str], bool]:
    """A batch holds one notification per key: a key written twice in one log entry (or
    written, then deleted) is notified once, with its last change. Whether version ``v`` of
    ``key`` can be such a superseded change: a delivered batch notifies ``key`` and ``v`` lies
    between the versions of the batches before it and those after it (versions grow with the
    log, so ``v`` was assigned in that batch's entry).

    The log is that of the shards whose batches notified the key (``shards``): one shard, or
    a split parent and its descendants, whose logs continue one another (offsets and versions
    grow along the lineage), merged in offset order."""
    by_shard: dict[int, list[Batch]] = {}
    for b in batches:
        by_shard.setdefault(b.shard, []).append(b)
    index: dict[
        frozenset[int], tuple[list[int], list[float], dict[str, list[tuple[int, float]]]]
    ] = {}

    def build(shards: frozenset[int]) -> None:
        bs = sorted((b for s in shards for b in by_shard.get(s, ())), key=lambda b: b.offset)
        versions = [[n.version for n in b.notifications if n.version is not None] for b in bs]
        pre_max: list[int] = []
        m = -1
        for vs in versions:
            pre_max.append(m)
            m = max([m, *vs])
        post_min: list[float] = [0.0] * len(bs)
        lo = float("inf")
        for i in range(len(bs) - 1, -1, -1):
            post_min[i] = lo
            lo = min([lo, *versions[i]])
        keys: dict[str, list[tuple[int, float]]] = {}
        for i, b in enumerate(bs):
            for n in b.notifications:
                # the key's last change in the entry: a later version, or a deletion
                last = float("inf") if n.version is None else n.version
                keys.setdefault(n.key, []).append((i, last))
        index[shards] = (pre_max, post_min, keys)

    def check(shards: frozenset[int], v: int, key: str) -> bool:
        if not shards:
            return False
        if shards not in index:
            build(shards)
        pre_max, post_min, keys = index[shards]
        return any(pre_max[i] < v < post_min[i] and v < last for i, last in keys.get(key, ()))

    return check


# -- sequences -------------------------------------------------------------------------------------


@dataclass
class SequenceFinal:
    prefix: str
    records: dict[str, str]
    """The keys of the sequence at the end of the run, with their values."""
    updates: list[list[str]] = field(default_factory=list)
    """What each sequence-updates subscription delivered, in order."""


def _seq_number(prefix: str, key: str) -> int | None:
    from pyxia.common.keys import parse_sequence_suffix

    try:
        parts = parse_sequence_suffix(prefix, key)
    except Exception:
        return None
    return parts[0] if parts else None


def check_sequences(history: History, finals: list[SequenceFinal]) -> CheckReport:
    report = CheckReport("sequences")
    if not finals:
        report.skipped = "no sequence"
        return report
    n_ops = 0
    for fin in finals:
        p = fin.prefix
        ops = [o for o in history.ops if o.kind == SEQ and o.key == p and o.status in (OK, INFO)]
        n_ops += len(ops)
        acked = [o for o in ops if o.status == OK and o.result == "ok"]
        values = {o.value for o in ops}
        # none lost
        lost = [o for o in acked if fin.records.get(o.result_key or "") != o.value]
        if lost:
            report.violations.append(
                Violation(
                    "sequences",
                    f"{p}: {len(lost)} acknowledged sequential key(s) missing at the end",
                    [f"  #{o.id} {o.describe()}" for o in lost[:10]],
                )
            )
        # distinct
        by_key: dict[str, Op] = {}
        for o in acked:
            k = o.result_key or ""
            if k in by_key:
                report.violations.append(
                    Violation(
                        "sequences",
                        f"{p}: key {k} created twice",
                        [f"  #{by_key[k].id} {by_key[k].describe()}", f"  #{o.id} {o.describe()}"],
                    )
                )
            by_key[k] = o
        # gap-free, none invented
        nums = sorted(n for n in (_seq_number(p, k) for k in fin.records) if n is not None)
        if nums and (nums[0] != 1 or nums[-1] - nums[0] + 1 != len(nums)):
            gaps = [a + 1 for a, b in itertools.pairwise(nums) if b != a + 1][:10]
            report.violations.append(
                Violation(
                    "sequences",
                    f"{p}: the sequence is not gap-free (first {nums[0]}, {len(nums)} keys, "
                    f"last {nums[-1]}; missing after {gaps})",
                )
            )
        invented = [k for k, v in fin.records.items() if v not in values]
        if invented:
            report.violations.append(
                Violation("sequences", f"{p}: key(s) nobody wrote: {invented[:10]}")
            )
        # increasing in real time
        timed = sorted((o for o in acked if o.complete is not None), key=lambda o: o.complete or 0)
        completes = [o.complete or 0 for o in timed]
        best: list[Op] = []
        for o in timed:
            if not best or (_seq_number(p, o.result_key or "") or 0) > (
                _seq_number(p, best[-1].result_key or "") or 0
            ):
                best.append(o)
            else:
                best.append(best[-1])
        reported = 0
        for b in acked:
            i = bisect.bisect_left(completes, b.invoke)
            if i == 0 or reported >= 5:
                continue
            a = best[i - 1]
            if (_seq_number(p, a.result_key or "") or 0) >= (
                _seq_number(p, b.result_key or "") or 0
            ):
                reported += 1
                report.violations.append(
                    Violation(
                        "sequences",
                        f"{p}: a later sequential put got a lower key",
                        [f"  #{a.id} {a.describe()}", f"  #{b.id} {b.describe()}"],
                    )
                )
        # updates feeds
        for i, feed in enumerate(fin.updates):
            last = 0
            for k in feed:
                num = _seq_number(p, k)
                if num is None or k not in fin.records:
                    report.violations.append(
                        Violation("sequences", f"{p}: updates feed {i} delivered unknown key {k}")
                    )
                    break
                if num < last:
                    report.violations.append(
                        Violation(
                            "sequences", f"{p}: updates feed {i} went back from {last} to {num}"
                        )
                    )
                    break
                last = num
    report.checked = f"{len(finals)} sequences, {n_ops} sequential puts"
    return report


# -- ephemeral records -----------------------------------------------------------------------------


@dataclass
class EphemeralOwner:
    name: str
    keys: dict[str, int]
    """key -> shard, for every ephemeral put the owner had acknowledged."""
    died_at: int | None = None
    observations: list[tuple[int, str, bool]] = field(default_factory=list)
    """(time, key, present) of successful reads after the owner died."""


def check_ephemerals(
    owners: list[EphemeralOwner],
    session_timeout_ns: int,
    grace_ns: int,
    faults: list[tuple[int, int]],
    leader_changes: dict[int, list[int]],
) -> CheckReport:
    """A record seen present at time t after its owner died is a violation when t is later than
    session timeout + grace after the last of: the death, the end of the last fault, the last
    leader change of its shard (a new leader restarts its sessions' timers). Reads during a
    fault do not count (the expiry may be unable to commit)."""
    report = CheckReport("ephemeral")
    dead = [o for o in owners if o.died_at is not None and o.keys]
    if not dead:
        report.skipped = "no owner died"
        return report
    ends = sorted(e for _, e in faults)
    n_keys = 0
    for o in dead:
        assert o.died_at is not None
        n_keys += len(o.keys)
        gone: set[str] = set()
        for t, key, present in sorted(o.observations):
            if not present:
                gone.add(key)
                continue
            if any(s <= t <= e for s, e in faults):
                continue
            shard = o.keys.get(key, -1)
            changes = leader_changes.get(shard, [])
            i = bisect.bisect_right(changes, t)
            j = bisect.bisect_right(ends, t)
            since = max(o.died_at, changes[i - 1] if i else 0, ends[j - 1] if j else 0)
            if t > since + session_timeout_ns + grace_ns:
                report.violations.append(
                    Violation(
                        "ephemeral",
                        f"{o.name}: {key} still present {(t - o.died_at) / 1e9:.1f}s after its "
                        f"owner died ({(t - since) / 1e9:.1f}s after the last fault or leader "
                        f"change of shard {shard}; session timeout "
                        f"{session_timeout_ns / 1e9:g}s + grace {grace_ns / 1e9:g}s)",
                    )
                )
                break
        never = sorted(set(o.keys) - gone)
        if never:
            report.violations.append(
                Violation("ephemeral", f"{o.name}: still present at the end of the run: {never}")
            )
    report.checked = f"{len(dead)} dead owners, {n_keys} ephemeral records"
    return report


# -- timestamp oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TsoCall:
    process: int
    invoke: int
    complete: int
    first: int
    count: int
    """The call returned timestamps ``first .. first + count - 1``."""


def check_tso(calls: list[TsoCall]) -> CheckReport:
    """Every timestamp strictly above every timestamp received (by any client) before the call
    that returned it was made; no timestamp handed out twice."""
    report = CheckReport("tso")
    if not calls:
        report.skipped = "no TSO call"
        return report
    by_complete = sorted(calls, key=lambda c: c.complete)
    completes = [c.complete for c in by_complete]
    prefix_max: list[TsoCall] = []
    for c in by_complete:
        last = c.first + c.count - 1
        if not prefix_max or last > prefix_max[-1].first + prefix_max[-1].count - 1:
            prefix_max.append(c)
        else:
            prefix_max.append(prefix_max[-1])
    for c in calls:
        i = bisect.bisect_left(completes, c.invoke)
        if i == 0:
            continue
        a = prefix_max[i - 1]
        if c.first <= a.first + a.count - 1:
            report.violations.append(
                Violation(
                    "tso",
                    f"p{c.process} got {c.first} (+{c.count}) at {fmt_time(c.invoke)}s, not above "
                    f"{a.first + a.count - 1} received by p{a.process} at {fmt_time(a.complete)}s",
                )
            )
            if len(report.violations) >= 10:
                break
    ranges = sorted((c.first, c.first + c.count - 1) for c in calls)
    for (_, a1), (b0, b1) in itertools.pairwise(ranges):
        if b0 <= a1:
            report.violations.append(
                Violation("tso", f"timestamps {b0}..{min(a1, b1)} handed out twice")
            )
            break
    report.checked = f"{len(calls)} calls"
    return report


# -- the oracle's dense sequences and stamping leases ---------------------------------------------


@dataclass(frozen=True)
class TsoSeqCall:
    process: int
    invoke: int
    complete: int
    key: str
    count: int
    start: int | None
    """The block's start; None for a call whose outcome is unknown (SeqUncertain)."""


def check_tso_sequences(calls: list[TsoSeqCall]) -> CheckReport:
    """Per key: no ordinal handed out twice; a block received before another call was made is
    below that call's block (real time); and gap-free — every ordinal below the highest one
    handed out was handed out, except as many as the calls whose outcome was unknown asked
    for (a committed block whose answer was lost is spent, never reused)."""
    report = CheckReport("tso-seq")
    if not calls:
        report.skipped = "no sequence call"
        return report
    by_key: dict[str, list[TsoSeqCall]] = {}
    for c in calls:
        by_key.setdefault(c.key, []).append(c)
    for key, cs in by_key.items():
        done = [c for c in cs if c.start is not None]
        uncertain = sum(c.count for c in cs if c.start is None)
        spans = sorted((c.start, c.start + c.count) for c in done if c.start is not None)
        for (_, e0), (s1, _) in itertools.pairwise(spans):
            if s1 < e0:
                report.violations.append(
                    Violation("tso-seq", f"{key}: ordinals {s1}..{min(e0, s1 + 1) - 1} twice")
                )
                break
        if spans:
            holes = spans[0][0] + sum(
                max(0, s1 - e0) for (_, e0), (s1, _) in itertools.pairwise(spans)
            )
            if holes > uncertain:
                report.violations.append(
                    Violation(
                        "tso-seq",
                        f"{key}: {holes} ordinals below {spans[-1][1]} never handed out, more "
                        f"than the {uncertain} asked for by calls of unknown outcome",
                    )
                )
        by_complete = sorted(done, key=lambda c: c.complete)
        for c in done:
            before = [d for d in by_complete if d.complete < c.invoke]
            if before and c.start is not None:
                best = max(before, key=lambda d: d.start or 0)
                assert best.start is not None
                if c.start < best.start + best.count:
                    report.violations.append(
                        Violation(
                            "tso-seq",
                            f"{key}: p{c.process} got {c.start} at {fmt_time(c.invoke)}s, below "
                            f"{best.start + best.count} received by p{best.process} before",
                        )
                    )
                    break
    unknown = sum(1 for c in calls if c.start is None)
    report.checked = f"{len(calls)} calls on {len(by_key)} keys ({unknown} of unknown outcome)"
    return report


@dataclass(frozen=True)
class TsoLeaseCall:
    process: int
    invoke: int
    complete: int
    invoke_wall_ms: int
    """The client's wall clock when the call was made."""
    complete_wall_ms: int
    """The client's wall clock when the answer (or the failure) came back (compared with server
    expiries)."""
    kind: str  # "acquire" | "renew" | "release" | "release-unknown" (failed: may have happened)
    holder: bytes
    holder_epoch: int
    lease_id: int
    ts_upper_bound: int = 0
    expires_at_ms: int = 0


def check_tso_leases(calls: list[TsoLeaseCall], clock_skew_ms: int = 1000) -> CheckReport:
    """Never two holders: an acquire at a holder's epoch returns the live lease of that epoch
    (a different id only once the earlier one expired or was released); an acquire at a lower
    epoch never succeeds while a higher one's lease is live; an id names one (holder, epoch);
    a lease's bound never goes down.

    The server decides an acquire at some instant between its invoke and its answer (under
    load, seconds after the invoke: it waits for the oracle's earlier writes), so an earlier
    lease counts as live against it only if it was live for the whole call: unexpired at the
    acquire's *answer* (client wall clock, give or take ``clock_skew_ms``) and no release of it
    (answered or of unknown outcome) sent before that answer."""
    report = CheckReport("tso-lease")
    if not calls:
        report.skipped = "no lease call"
        return report
    owner: dict[int, tuple[bytes, int]] = {}
    bound: dict[int, int] = {}
    released: dict[int, int] = {}  # lease id -> when its first release was sent
    for c in sorted(calls, key=lambda c: c.complete):
        if c.kind in ("release", "release-unknown"):
            released[c.lease_id] = min(released.get(c.lease_id, c.invoke), c.invoke)
            continue
        who = (c.holder, c.holder_epoch)
        if owner.setdefault(c.lease_id, who) != who:
            report.violations.append(
                Violation(
                    "tso-lease", f"lease id {c.lease_id} given to {owner[c.lease_id]} and {who}"
                )
            )
        if c.ts_upper_bound < bound.get(c.lease_id, 0):
            report.violations.append(
                Violation(
                    "tso-lease", f"lease {c.lease_id}: its bound went down to {c.ts_upper_bound}"
                )
            )
        bound[c.lease_id] = max(bound.get(c.lease_id, 0), c.ts_upper_bound)
    acquires = sorted((c for c in calls if c.kind == "acquire"), key=lambda c: c.complete)
    latest: dict[int, TsoLeaseCall] = {}  # lease id -> its latest answer (acquire or renew)
    for c in sorted(calls, key=lambda c: c.complete):
        if c.kind in ("acquire", "renew"):
            latest[c.lease_id] = c
    for a in acquires:
        for b in acquires:
            if b is a or b.holder != a.holder or b.complete >= a.invoke:
                continue
            # b was answered before a was asked: was b's lease live for the whole of a's call?
            last = latest.get(b.lease_id, b)
            live = (
                last.expires_at_ms > a.complete_wall_ms + clock_skew_ms
                and released.get(b.lease_id, a.complete + 1) > a.complete
            )
            if not live:
                continue
            if b.holder_epoch == a.holder_epoch and b.lease_id != a.lease_id:
                report.violations.append(
                    Violation(
                        "tso-lease",
                        f"{a.holder!r} epoch {a.holder_epoch}: lease {a.lease_id} granted while "
                        f"lease {b.lease_id} of the same epoch was live",
                    )
                )
            elif a.holder_epoch < b.holder_epoch:
                report.violations.append(
                    Violation(
                        "tso-lease",
                        f"{a.holder!r}: epoch {a.holder_epoch} acquired while epoch "
                        f"{b.holder_epoch}'s lease {b.lease_id} was live",
                    )
                )
        if len(report.violations) >= 10:
            break
    report.checked = f"{len(calls)} lease calls, {len(owner)} leases"
    return report
