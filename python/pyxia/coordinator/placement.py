"""Where replicas go (pure code, no I/O): ensemble selection with
anti-affinity and load, and the moves the load balancer makes.

Selection runs Oxia's selector chain: anti-affinity first (a hard filter in
``strict`` mode, a preference in ``relaxed`` mode), then the lowest load
(shard replicas per server), then a stable order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class PlacementError(ValueError):
    """The constraints cannot be met (too few servers, strict anti-affinity)."""


@dataclass(frozen=True)
class AntiAffinityRule:
    labels: tuple[str, ...]
    strict: bool = True


def _conflicts(
    candidate: str,
    chosen: Sequence[str],
    rules: Sequence[AntiAffinityRule],
    labels: Mapping[str, Mapping[str, str]],
    *,
    strict_only: bool,
) -> bool:
    cl = labels.get(candidate, {})
    for rule in rules:
        if strict_only and not rule.strict:
            continue
        for label in rule.labels:
            value = cl.get(label)
            if value is None:
                continue
            if any(labels.get(c, {}).get(label) == value for c in chosen):
                return True
    return False


def select_ensemble(
    servers: Sequence[str],
    replication_factor: int,
    load: Mapping[str, int],
    *,
    rules: Sequence[AntiAffinityRule] = (),
    labels: Mapping[str, Mapping[str, str]] | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Picks ``replication_factor`` distinct servers."""
    labels = labels or {}
    pool = [s for s in servers if s not in exclude]
    if replication_factor > len(pool):
        raise PlacementError(
            f"replication factor {replication_factor} needs {replication_factor} servers, "
            f"{len(pool)} available"
        )
    chosen: list[str] = []
    running = Counter(load)
    for _ in range(replication_factor):
        options = [s for s in pool if s not in chosen]
        allowed = [s for s in options if not _conflicts(s, chosen, rules, labels, strict_only=True)]
        if not allowed:
            raise PlacementError("strict anti-affinity cannot be satisfied with these servers")
        preferred = [
            s for s in allowed if not _conflicts(s, chosen, rules, labels, strict_only=False)
        ] or allowed
        pick = min(preferred, key=lambda s: (running[s], s))
        chosen.append(pick)
        running[pick] += 1
    return chosen


def replace_member(
    ensemble: Sequence[str],
    leaving: str,
    servers: Sequence[str],
    load: Mapping[str, int],
    *,
    rules: Sequence[AntiAffinityRule] = (),
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """The server that takes ``leaving``'s place in ``ensemble``."""
    keep = [s for s in ensemble if s != leaving]
    labels = labels or {}
    candidates = [s for s in servers if s not in ensemble]
    allowed = [s for s in candidates if not _conflicts(s, keep, rules, labels, strict_only=True)]
    if not allowed:
        raise PlacementError(f"no server can replace {leaving}")
    preferred = [
        s for s in allowed if not _conflicts(s, keep, rules, labels, strict_only=False)
    ] or allowed
    return min(preferred, key=lambda s: (load.get(s, 0), s))


@dataclass(frozen=True)
class Move:
    """Move one replica of ``shard`` from ``source`` to ``target``."""

    shard: int
    source: str
    target: str


def plan_rebalance(
    replicas: Mapping[int, Sequence[str]],
    servers: Sequence[str],
    quarantined: set[int] | None = None,
) -> Move | None:
    """One replica move that narrows the gap between the most and the least
    loaded servers, or None when balanced (gap <= 1)."""
    if len(servers) < 2:
        return None
    quarantined = quarantined or set()
    load = Counter({s: 0 for s in servers})
    for ens in replicas.values():
        for s in ens:
            if s in load:
                load[s] += 1
    most = max(servers, key=lambda s: (load[s], s))
    least = min(servers, key=lambda s: (load[s], s))
    if load[most] - load[least] <= 1:
        return None
    for shard in sorted(replicas):
        ens = replicas[shard]
        if shard in quarantined or most not in ens or least in ens:
            continue
        return Move(shard, most, least)
    return None


def plan_rebalance_moves(
    replicas: Mapping[int, Sequence[str]],
    servers: Sequence[str],
    quarantined: set[int] | None = None,
) -> list[Move]:
    """The replica moves of one balancing step: each narrows the gap between the most and
    the least loaded servers (as :func:`plan_rebalance`'s one, which is the first); a step
    moves at most one replica off each server (a server gives one, or takes some: never both),
    so a large imbalance — servers just added — is worked off in parallel, and at most one
    replica of a shard (its ensemble keeps a majority that holds what it committed). Empty
    when balanced."""
    if len(servers) < 2:
        return []
    quarantined = quarantined or set()
    load = Counter({s: 0 for s in servers})
    hosted: dict[str, list[int]] = {s: [] for s in servers}
    for shard in sorted(replicas):
        for s in replicas[shard]:
            if s in load:
                load[s] += 1
                hosted[s].append(shard)
    busy: set[str] = set()  # sources, and servers with nothing to give to the least loaded
    targets: set[str] = set()
    taken: set[int] = set()  # one move per shard: two at once could lose what it committed
    moves: list[Move] = []
    while True:
        free = [s for s in servers if s not in busy]
        if len(free) < 2:
            break
        most = max((s for s in free if s not in targets), key=lambda s: (load[s], s), default=None)
        if most is None:
            break
        least = min(free, key=lambda s: (load[s], s))
        if load[most] - load[least] <= 1:
            break
        candidate = next(
            (
                sh
                for sh in hosted[most]
                if sh not in quarantined and sh not in taken and least not in replicas[sh]
            ),
            None,
        )
        busy.add(most)
        if candidate is None:
            continue  # nothing of this server can go there: the next most loaded may
        shard = candidate
        taken.add(shard)
        targets.add(least)
        load[most] -= 1
        load[least] += 1
        moves.append(Move(shard, most, least))
    return moves


def plan_leader_rebalance(
    leaders: Mapping[int, str],
    ensembles: Mapping[int, Sequence[str]],
    quarantined: set[int] | None = None,
) -> tuple[int, str] | None:
    """A shard whose leadership should move (gap in leader counts >= 2) and
    the member that should take it, or None."""
    quarantined = quarantined or set()
    members = sorted({s for ens in ensembles.values() for s in ens})
    if len(members) < 2:
        return None
    count = Counter({s: 0 for s in members})
    for lead in leaders.values():
        if lead in count:
            count[lead] += 1
    most = max(members, key=lambda s: (count[s], s))
    least = min(members, key=lambda s: (count[s], s))
    if count[most] - count[least] < 2:
        return None
    for shard in sorted(leaders):
        if shard in quarantined or leaders[shard] != most:
            continue
        if least in ensembles.get(shard, ()):
            return shard, least
    return None
