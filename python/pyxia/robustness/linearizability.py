"""Per-key linearizability of a KV history: a Wing-Gong-Lowe search (porcupine's algorithm) over
each key's operations separately (P-compositionality: a history is linearizable iff every key's
sub-history is), with memoization of (linearized set, state).

The model is one record: absent, or present with a value, a version id and a modification
count. Versions must increase along a key's linearization (they increase per shard), reads must
return exactly the value, version and modification count of the state, compare-and-sets must
match the version.

Indeterminate operations (a write that timed out or whose connection broke) are *optional*:
they may take effect at any point after their invocation, or never; they have no return entry.
Values are unique per write, so a read that returns a value tells which write it saw.

Plain puts and deletes may be re-sent by the client after a broken connection (they are
"safe" to retry), so one operation can take effect more than once between its invocation and
its completion. The checker models the earlier applications as optional *ghost* operations
bounded by the operation's interval: for a put, one ghost per extra version of its value that
some read observed and one of unknown version; for a delete, one ghost. A ghost comes before
its operation's own application. The modification count of a plain put is checked leniently
(>= the state's + 1), since unobserved earlier applications also count.

The search is complete: an optional operation is either linearized while it is pending or
skipped when its return entry is reached (bounded ghosts), never both on one path. A
configuration is pruned when one with the same required operations linearized, the same state
and a subset of the optional operations done was exhausted without success (it could do
everything this one can).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pyxia.robustness.history import (
    CAS,
    CDELETE,
    DELETE,
    GET,
    INFO,
    LIST,
    OK,
    PUT,
    SCAN,
    History,
    Op,
)

# LinOp kinds
WRITE = "write"  # put (plain or ghost); strict_mc says whether mod counts must be exact
CASW = "cas"
DEL = "delete"  # plain delete with a result, or (result None) an optional/ghost delete
CDEL = "cdelete"
READ = "read"
PRESENT = "present"  # a list saw the key (result "found") or not ("not_found")

State = tuple[str | None, int | None, int | None, int]
"""(value or None when absent, version id or None if unknown, mod count or None, version floor)"""

INITIAL: State = (None, None, None, -1)


@dataclass(frozen=True, slots=True)
class LinOp:
    source: int
    """The id of the history operation this comes from."""
    call: int
    ret: int | None
    required: bool
    kind: str
    value: str | None = None
    version: int | None = None
    mod_count: int | None = None
    expected: int | None = None
    result: str | None = None
    strict_mc: bool = True
    ghost: bool = False

    def describe(self) -> str:
        k = self.kind
        pre = "possible earlier application of " if self.ghost else ""
        if k in (WRITE, CASW):
            exp = f", expected_version={self.expected}" if k == CASW else ""
            res = self.result or ("applied?" if not self.required else "ok")
            return (
                f"{pre}put({self.value!r}{exp}) -> {res} version={self.version} "
                f"mod_count={self.mod_count}"
            )
        if k in (DEL, CDEL):
            exp = f"expected_version={self.expected}" if k == CDEL else ""
            return f"{pre}delete({exp}) -> {self.result or 'applied?'}"
        if k == READ:
            if self.result == "not_found":
                return "get() -> not found"
            return f"get() -> {self.value!r} version={self.version} mod_count={self.mod_count}"
        return f"list() -> {'present' if self.result == 'found' else 'absent'}"


def _match(s: State, expected: int | None) -> bool | None:
    """Whether the state's version is ``expected`` (-1: absent); None when unknown."""
    val, ver = s[0], s[1]
    if expected == -1:
        return val is None
    if val is None:
        return False
    if ver is None:
        return None
    return ver == expected


def step(s: State, op: LinOp, strict: bool = True) -> State | None:
    """The state after ``op``, or None if ``op`` cannot happen in state ``s``. ``strict=False``
    checks only values and versions read or expected (no modification counts, no version
    order): the relaxed model used to minimize a failing history."""
    val, ver, mc, floor = s
    k = op.kind
    if k == READ:
        if op.result == "not_found":
            return s if val is None else None
        if val is None or val != op.value:
            return None
        if ver is not None and ver != op.version:
            return None
        if strict and mc is not None and mc != op.mod_count:
            return None
        if ver is None or mc is None:
            v = op.version if ver is None else ver
            return (val, v, op.mod_count, max(floor, v) if v is not None else floor)
        return s
    if k == PRESENT:
        return s if (val is not None) == (op.result == "found") else None
    if k in (WRITE, CASW):
        if k == CASW:
            m = _match(s, op.expected)
            if op.result == "bad_version":
                return s if m is not True else None
            if m is False:
                return None
        v, c = op.version, op.mod_count
        if strict:
            if v is not None and v <= floor:
                return None
            if c is not None:
                if op.strict_mc:
                    if val is None and c != 0:
                        return None
                    if val is not None and mc is not None and c != mc + 1:
                        return None
                elif val is not None and mc is not None and c < mc + 1:
                    return None
        assert op.value is not None
        return (op.value, v, c, max(floor, v) if v is not None else floor)
    if k == DEL:
        r = op.result
        if r is None:  # optional (ghost or indeterminate): removes the record
            return (None, None, None, floor)
        if r == "deleted":
            return (None, None, None, floor) if val is not None else None
        return s if val is None else None  # "not_found"
    if k == CDEL:
        e = op.expected
        r = op.result
        if r is None:  # indeterminate: only an application that deletes changes anything
            return (
                (None, None, None, floor) if val is not None and _match(s, e) is not False else None
            )
        if r == "deleted":
            if val is not None and (ver is None or ver == e):
                return (None, None, None, floor)
            return None
        if r == "bad_version":
            if val is None:
                return s if e != -1 else None
            return s if (ver is None or ver != e) else None
        return s if (val is None and e == -1) else None  # "not_found"
    raise ValueError(f"unknown op kind {k!r}")


class Outcome(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the search hit its step budget


@dataclass
class KeyResult:
    outcome: Outcome
    steps: int
    blocked: LinOp | None = None
    """A required operation no linearization of the deepest prefix could place."""
    linearized: list[LinOp] = field(default_factory=list)
    """The deepest partial linearization reached."""


def check_ops(
    ops: list[LinOp],
    strict: bool = True,
    max_steps: int = 2_000_000,
    initial: State = INITIAL,
) -> KeyResult:
    """Searches a linearization of one key's operations (from ``initial``)."""
    n = len(ops)
    entries: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        entries.append((op.call, 0, i))
        if op.ret is not None:
            entries.append((op.ret, 1, i))
    entries.sort()
    m = len(entries)
    head = m
    nxt = [-1] * (m + 1)
    prv = [-1] * (m + 1)
    order = [head, *range(m)]
    for a, b in itertools.pairwise(order):
        nxt[a] = b
        prv[b] = a
    is_ret = [e[1] == 1 for e in entries]
    opi = [e[2] for e in entries]
    call_entry = [0] * n
    ret_entry = [-1] * n
    for idx, (_, r, i) in enumerate(entries):
        if r:
            ret_entry[i] = idx
        else:
            call_entry[i] = idx
    required = [op.required for op in ops]
    n_required = sum(required)
    # a ghost (an earlier application) must come before its operation's own application
    main_of = {op.source: i for i, op in enumerate(ops) if not op.ghost}
    after_bit = [1 << main_of[op.source] if op.ghost and op.source in main_of else 0 for op in ops]

    def lift(ce: int) -> None:
        p, q = prv[ce], nxt[ce]
        nxt[p] = q
        if q != -1:
            prv[q] = p
        re = ret_entry[opi[ce]]
        if re != -1:
            p, q = prv[re], nxt[re]
            nxt[p] = q
            if q != -1:
                prv[q] = p

    def unlift(ce: int) -> None:
        re = ret_entry[opi[ce]]
        if re != -1:
            p, q = prv[re], nxt[re]
            nxt[p] = re
            if q != -1:
                prv[q] = re
        p, q = prv[ce], nxt[ce]
        nxt[p] = ce
        if q != -1:
            prv[q] = ce

    # Configurations whose every continuation failed: (required done, state) -> optional sets.
    failed: dict[tuple[int, State], list[int]] = {}

    def dominated(req: int, st: State, opt: int) -> bool:
        """A failed configuration had the same required operations done, the same state and a
        subset of these optional ones done (so it could do all this one can)."""
        done = failed.get((req, st))
        if done is not None:
            for o in done:
                if o & ~opt == 0:
                    return True
        return False

    def fail(req: int, st: State, opt: int) -> None:
        failed.setdefault((req, st), []).append(opt)

    state = initial
    req = 0
    opt = 0
    done_req = 0
    stack: list[tuple[int, State, bool]] = []  # (call entry, previous state, skipped)
    steps = 0
    best = -1
    best_blocked: LinOp | None = None
    best_lin: list[LinOp] = []
    e = nxt[head]
    while True:
        if done_req == n_required:
            return KeyResult(Outcome.OK, steps)
        steps += 1
        if steps > max_steps:
            return KeyResult(Outcome.UNKNOWN, steps)
        if e != -1 and not is_ret[e]:
            i = opi[e]
            op = ops[i]
            ns = None if req & after_bit[i] else step(state, op, strict)
            if ns is not None:
                bit = 1 << i
                if required[i]:
                    nreq, nopt = req | bit, opt
                else:
                    nreq, nopt = req, opt | bit
                if not dominated(nreq, ns, nopt):
                    stack.append((e, state, False))
                    state, req, opt = ns, nreq, nopt
                    if required[i]:
                        done_req += 1
                    lift(e)
                    e = nxt[head]
                    continue
            e = nxt[e]
            continue
        if e != -1:
            i = opi[e]
            if not required[i]:
                nopt = opt | (1 << i)
                if not dominated(req, state, nopt):
                    ce = call_entry[i]
                    stack.append((ce, state, True))
                    opt = nopt
                    lift(ce)
                    e = nxt[head]
                    continue
            elif done_req > best:
                best = done_req
                best_blocked = ops[i]
                best_lin = [ops[opi[c]] for c, _, skipped in stack if not skipped]
        # backtrack: this configuration is exhausted
        while True:
            fail(req, state, opt)
            if not stack:
                return KeyResult(Outcome.VIOLATION, steps, best_blocked, best_lin)
            ce, old, skipped = stack.pop()
            i = opi[ce]
            unlift(ce)
            if required[i]:
                req &= ~(1 << i)
                done_req -= 1
            else:
                opt &= ~(1 << i)
            state = old
            if not skipped:
                e = nxt[ce]
                break


# -- from a recorded history to per-key operation lists ----------------------------------------


def key_in_range(key: str, start: str, end: str) -> bool:
    """Whether ``key`` is in ``[start, end)`` in the namespace's (hierarchical) key order."""
    from pyxia.common.keys import HIERARCHICAL

    enc = HIERARCHICAL.encode
    k = enc(key)
    return enc(start) <= k < enc(end)


@dataclass
class KeyHistories:
    by_key: dict[str, list[LinOp]]
    source: dict[int, Op]


def build(history: History, keys: Iterable[str] | None = None) -> KeyHistories:
    """Per-key operation lists for the register model (sequential puts are not in it)."""
    ops = history.ops
    keyset = set(keys) if keys is not None else set()
    for op in ops:
        if op.kind in (PUT, CAS, GET, DELETE, CDELETE):
            keyset.add(op.key)
    # value -> observed (version, mod count), from reads and scans
    observed: dict[str, set[tuple[int, int]]] = {}

    def observe(value: str | None, version: int | None, mc: int | None) -> None:
        if value is not None and version is not None and mc is not None:
            observed.setdefault(value, set()).add((version, mc))

    for op in ops:
        if op.status != OK:
            continue
        if op.kind == GET and op.result == "found":
            observe(op.read_value, op.version, op.mod_count)
        elif op.kind == SCAN:
            for r in op.records or ():
                observe(r.value, r.version, r.mod_count)

    by_key: dict[str, list[LinOp]] = {k: [] for k in keyset}
    source: dict[int, Op] = {}

    def add(key: str, lop: LinOp, op: Op) -> None:
        if key in by_key:
            by_key[key].append(lop)
            source[op.id] = op

    in_range_cache: dict[tuple[str, str], list[str]] = {}

    def keys_in(start: str, end: str) -> list[str]:
        r = in_range_cache.get((start, end))
        if r is None:
            r = [k for k in keyset if key_in_range(k, start, end)]
            in_range_cache[(start, end)] = r
        return r

    for op in ops:
        k = op.kind
        ok = op.status == OK
        indet = op.status == INFO
        if not ok and not indet:
            continue
        base = LinOp(op.id, op.invoke, op.complete if ok else None, ok, WRITE)
        if k == PUT:
            seen = observed.get(op.value or "", set())
            if ok:
                add(
                    op.key,
                    replace(
                        base,
                        value=op.value,
                        version=op.version,
                        mod_count=op.mod_count,
                        strict_mc=False,
                    ),
                    op,
                )
                # earlier applications: one per other version seen of its value, plus one
                # whose version nobody saw (it may still explain a presence, a delete)
                extra: list[tuple[int | None, int | None]] = [
                    (v, c) for v, c in sorted(seen) if v != op.version
                ]
                extra.append((None, None))
                for v, c in extra:
                    if v != op.version:
                        add(
                            op.key,
                            replace(
                                base,
                                required=False,
                                value=op.value,
                                version=v,
                                mod_count=c,
                                strict_mc=False,
                                ghost=True,
                            ),
                            op,
                        )
            else:
                for v, c in sorted(seen) or [(None, None)]:  # type: ignore[list-item]
                    add(
                        op.key,
                        replace(base, value=op.value, version=v, mod_count=c, strict_mc=False),
                        op,
                    )
        elif k == CAS:
            if ok:
                add(
                    op.key,
                    replace(
                        base,
                        kind=CASW,
                        value=op.value,
                        version=op.version,
                        mod_count=op.mod_count,
                        expected=op.expected,
                        result=op.result,
                    ),
                    op,
                )
            else:
                seen = observed.get(op.value or "", set())
                for v, c in sorted(seen) or [(None, None)]:  # type: ignore[list-item]
                    add(
                        op.key,
                        replace(
                            base,
                            kind=CASW,
                            value=op.value,
                            version=v,
                            mod_count=c,
                            expected=op.expected,
                        ),
                        op,
                    )
        elif k == DELETE:
            if ok:
                add(op.key, replace(base, kind=DEL, result=op.result), op)
                add(op.key, replace(base, kind=DEL, required=False, ghost=True), op)
            else:
                add(op.key, replace(base, kind=DEL), op)
        elif k == CDELETE:
            add(
                op.key,
                replace(base, kind=CDEL, expected=op.expected, result=op.result if ok else None),
                op,
            )
        elif k == GET and ok:
            if op.result == "found":
                lop = replace(
                    base, kind=READ, value=op.read_value, version=op.version, mod_count=op.mod_count
                )
            else:
                lop = replace(base, kind=READ, result="not_found")
            add(op.key, lop, op)
        elif k == LIST and ok:
            assert op.end is not None
            got = set(op.keys or ())
            for key in keys_in(op.key, op.end):
                add(
                    key,
                    replace(base, kind=PRESENT, result="found" if key in got else "not_found"),
                    op,
                )
        elif k == SCAN and ok:
            assert op.end is not None
            recs = {r.key: r for r in op.records or ()}
            for key in keys_in(op.key, op.end):
                rec = recs.get(key)
                if rec is None:
                    lop = replace(base, kind=READ, result="not_found")
                else:
                    lop = replace(
                        base,
                        kind=READ,
                        value=rec.value,
                        version=rec.version,
                        mod_count=rec.mod_count,
                    )
                add(key, lop, op)
    return KeyHistories(by_key, source)


# -- minimal failing histories -------------------------------------------------------------------


@dataclass
class Minimal:
    ops: list[LinOp]
    """The operations of the excerpt (a sub-history of the key's)."""
    initial: State
    """The record's state before them."""
    skipped: int
    """How many earlier operations (linearized) led to ``initial``."""


def describe_state(s: State) -> str:
    if s[0] is None:
        return "absent"
    return f"{s[0]!r} version={s[1]} mod_count={s[2]}"


def minimize(ops: list[LinOp], max_steps: int = 300_000, budget_s: float = 20.0) -> Minimal:
    """A short excerpt of a failing key history that still fails: the operations up to the
    return of the one no linearization could place, starting from the state reached by as long
    a linearized prefix as possible, without the reads that are not needed to fail."""
    deadline = time.monotonic() + budget_s
    res = check_ops(ops, max_steps=max_steps * 10)
    if res.outcome is not Outcome.VIOLATION or res.blocked is None:
        return Minimal(ops, INITIAL, 0)

    def fails(sub: list[LinOp], init: State) -> bool:
        return check_ops(sub, max_steps=max_steps, initial=init).outcome is Outcome.VIOLATION

    blocked = res.blocked
    assert blocked.ret is not None
    current = [o for o in ops if o.call <= blocked.ret]
    if not fails(current, INITIAL):
        current = list(ops)
    # the state along the deepest linearization found
    states = [INITIAL]
    for o in res.linearized:
        nxt = step(states[-1], o)
        if nxt is None:
            break
        states.append(nxt)
    lin = res.linearized[: len(states) - 1]
    best_k, initial = 0, INITIAL
    lo, hi = 1, len(lin)
    while lo <= hi and time.monotonic() < deadline:
        k = (lo + hi) // 2
        gone = {id(o) for o in lin[:k]}
        sub = [o for o in current if id(o) not in gone]
        if fails(sub, states[k]):
            best_k, initial = k, states[k]
            lo = k + 1
        else:
            hi = k - 1
    # keep the last two state changes of the prefix in the excerpt: they show where the
    # expected state came from
    writes = [i for i in range(best_k) if lin[i].kind not in (READ, PRESENT)][-2:]
    if writes:
        k = writes[0]
        gone = {id(o) for o in lin[:k]}
        if fails([o for o in current if id(o) not in gone], states[k]):
            best_k, initial = k, states[k]
    gone = {id(o) for o in lin[:best_k]}
    gone_sources = {o.source for o in lin[:best_k] if not o.ghost}
    current = [
        o for o in current if id(o) not in gone and not (o.ghost and o.source in gone_sources)
    ]
    # drop the reads and the possible (optional) effects that are not needed, latest first
    for o in sorted(current, key=lambda x: -x.call):
        if time.monotonic() > deadline:
            break
        if o is blocked or (o.kind not in (READ, PRESENT) and o.required):
            continue
        cand = [x for x in current if x is not o]
        if fails(cand, initial):
            current = cand
    return Minimal(sorted(current, key=lambda x: x.call), initial, best_k)
