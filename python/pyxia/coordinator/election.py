"""Shard election rules (pure code, no I/O).

Oxia's rules: a new term is persisted first; NewTerm goes to the ensemble
plus the nodes being removed; once a majority of them answered (and a short
grace period for stragglers that are still alive passed), the leader is the
responder *in the ensemble* with the highest head entry — term first, then
offset (Oxia #579) — ties going to the node that leads the fewest shards. A planned move may
name a member to prefer and members to avoid among those tied at the highest head.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Head:
    """A replica's last log entry (term, offset); (-1, -1) when empty."""

    term: int
    offset: int


def majority(n: int) -> int:
    """How many of ``n`` nodes form a majority."""
    return n // 2 + 1


def choose_leader(
    heads: Mapping[str, Head],
    ensemble: Sequence[str],
    leader_counts: Mapping[str, int],
    *,
    prefer: str | None = None,
    avoid: Collection[str] = (),
) -> str | None:
    """The new leader among the ensemble members that answered NewTerm: one with the highest
    head — ``prefer`` if it is one of them (a planned move's target), else one not in
    ``avoid`` (a server leaving) if there is one — then fewest leaderships, then name
    (deterministic). Safety comes first: a member behind the highest head is never chosen,
    whatever ``prefer`` and ``avoid`` say."""
    candidates = [n for n in ensemble if n in heads]
    if not candidates:
        return None
    best = max(heads[n] for n in candidates)
    top = [n for n in candidates if heads[n] == best]
    if prefer is not None and prefer in top:
        return prefer
    staying = [n for n in top if n not in avoid]
    return min(staying or top, key=lambda n: (leader_counts.get(n, 0), n))
