"""A checker for recorded timestamp histories (tests, benchmarks, the robustness suite).

A :class:`Record` is one answered call: who asked, when it was sent and received (one
monotonic clock shared by every client of the history), and the timestamps ``[first, last]``
it got. :func:`check` returns every violation of what the oracle promises:

- **overlap**: no timestamp is ever granted twice (grants never overlap, whatever the order);
- **real time**: a call sent after another call's answer was received gets timestamps strictly
  above that answer's — the linearizable order. Calls that overlap in time may be answered in
  any order (two answers racing on the network are not an error), so this is the strongest
  order a client can observe; it holds across clients, leaders and failovers;
- **malformed**: ``last < first`` or an answer received before it was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True, slots=True)
class Record:
    client: int
    issued_at: float
    received_at: float
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # "overlap" | "real-time" | "malformed"
    record: Record
    detail: str


def check(records: Iterable[Record], limit: int = 100) -> list[Violation]:
    recs: list[Record] = []
    out: list[Violation] = []
    for r in records:
        if r.last < r.first or r.received_at < r.issued_at:
            out.append(Violation("malformed", r, f"{r}"))
        else:
            recs.append(r)
    by_first = sorted(recs, key=lambda r: (r.first, r.last))
    for prev, r in pairwise(by_first):
        if r.first <= prev.last:
            out.append(
                Violation(
                    "overlap",
                    r,
                    f"[{r.first}, {r.last}] (client {r.client}) overlaps [{prev.first}, "
                    f"{prev.last}] (client {prev.client})",
                )
            )
    by_received = sorted(recs, key=lambda r: r.received_at)
    i = 0
    best: Record | None = None  # the largest grant received so far
    for r in sorted(recs, key=lambda r: r.issued_at):
        while i < len(by_received) and by_received[i].received_at < r.issued_at:
            done = by_received[i]
            if best is None or done.last > best.last:
                best = done
            i += 1
        if best is not None and r.first <= best.last:
            out.append(
                Violation(
                    "real-time",
                    r,
                    f"client {r.client} sent at {r.issued_at:.6f} and got {r.first}, not above "
                    f"{best.last} received by client {best.client} at {best.received_at:.6f}",
                )
            )
        if len(out) >= limit:
            break
    return out[:limit]


def longest_gap(records: Sequence[Record], start: float, end: float) -> float:
    """The longest stretch of ``[start, end]`` in which no answer was received."""
    times = sorted(r.received_at for r in records if start <= r.received_at <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in pairwise(edges))
