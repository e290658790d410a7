"""The rules of a shard split on the coordinator's side (pure code: no I/O, no clock).

A split of parent shard P at split point ``sp`` creates two children, left ``[min, sp]`` and
right ``[sp + 1, max]`` (Oxia's convention; the default point is the middle of P's range), with
ids from the status' ``shard_id_generator`` and ensembles chosen like a new shard's. Its state
lives in the cluster status, on the parent and on both children (``SplitMetadata``), so a
coordinator that takes over resumes it:

- **Bootstrap**: every child replica is fenced at P's current term and fed by an observer
  cursor on P's leader (a snapshot, then P's log); P's term is recorded.
- **CatchUp**: rounds until a majority of each child's replicas hold P's commit offset.
- **Cutover**: P's leader is frozen (drained: its head is final, nothing in flight), the
  children's majorities reach that head, then P is fenced at term + 1 — the point of no return,
  recorded by persisting that term first — and the children are elected in their own term.
  One status write then publishes the children and marks P for deletion.

A change of P's term before the point of no return (P's leader failed) invalidates the
observers: the split goes back to Bootstrap. A split that cannot finish within its timeout
aborts before the point of no return: the children are dropped, P serves on. After it, the
split only goes forward.

A child replica *counts* (towards a majority, as a leader candidate) only if it is fenced at
P's current term, was seeded by P's current leader (``GetStatus.split_parent_term``) and holds
the target offset: a replica seeded by an earlier leader of P may hold a tail that P's log no
longer has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyxia.config import ServerAddress
from pyxia.coordinator.election import majority
from pyxia.coordinator.model import DELETING, STEADY, ShardStatusUnknown, identity, replica_load
from pyxia.coordinator.placement import AntiAffinityRule, select_ensemble
from pyxia.errors import InvalidArgument, ResourceUnavailable
from pyxia.proto import metadata_pb2

BOOTSTRAP = metadata_pb2.Bootstrap
CATCH_UP = metadata_pb2.CatchUp
CUTOVER = metadata_pb2.Cutover


def phase_name(phase: int) -> str:
    names: dict[int, str] = {BOOTSTRAP: "Bootstrap", CATCH_UP: "CatchUp", CUTOVER: "Cutover"}
    return names.get(phase, str(phase))


@dataclass(frozen=True, slots=True)
class ChildReplica:
    """What one child replica reported (GetStatus)."""

    term: int
    split_parent_term: int
    head_offset: int


def is_split_parent(meta: metadata_pb2.ShardMetadata) -> bool:
    return meta.HasField("split") and len(meta.split.child_shard_ids) == 2


def is_split_child(meta: metadata_pb2.ShardMetadata) -> bool:
    """A child of a split still in progress (not published to clients, no controller)."""
    return meta.HasField("split") and not meta.split.child_shard_ids


def parent_fenced(meta: metadata_pb2.ShardMetadata) -> bool:
    """Whether the split of this parent passed its point of no return (its fencing term is
    persisted): from there it only goes forward, and no election of the parent may run."""
    return (
        is_split_parent(meta)
        and meta.split.phase == CUTOVER
        and meta.term > meta.split.parent_term_at_bootstrap
    )


def default_split_point(lo: int, hi: int) -> int:
    return lo + (hi - lo) // 2


def plan_split(
    status: metadata_pb2.ClusterStatus,
    namespace: str,
    shard: int,
    split_point: int | None,
    servers: Sequence[ServerAddress],
    *,
    rules: Sequence[AntiAffinityRule] = (),
    labels: Mapping[str, Mapping[str, str]] | None = None,
    max_shards: int = 0,
) -> tuple[int, int]:
    """Starts the split of ``shard`` in ``status`` (modified in place): the children, with
    their ensembles, in Bootstrap. Returns (left, right). Refuses (InvalidArgument) what
    cannot be split, ResourceUnavailable what cannot be split *now*."""
    ns = status.namespaces.get(namespace)
    if ns is None:
        raise InvalidArgument(f"oxia: namespace {namespace!r} not found")
    if shard not in ns.shards:
        raise InvalidArgument(f"oxia: shard {shard} not found in namespace {namespace!r}")
    parent = ns.shards[shard]
    if parent.HasField("split"):
        raise ResourceUnavailable(f"oxia: shard {shard} already has a split in progress")
    if parent.status != STEADY or not parent.HasField("leader"):
        raise ResourceUnavailable(f"oxia: shard {shard} is not in steady state")
    if parent.removed_nodes or parent.pending_delete_shard_nodes:
        raise ResourceUnavailable(f"oxia: shard {shard} has an ensemble change in progress")
    lo, hi = parent.int32_hash_range.min, parent.int32_hash_range.max
    if hi - lo < 1:
        raise InvalidArgument(f"oxia: shard {shard} hash range is too small to split")
    sp = default_split_point(lo, hi) if split_point is None else split_point
    if not lo <= sp < hi:
        raise InvalidArgument(
            f"oxia: split point {sp} is outside shard {shard}'s hash range [{lo}, {hi - 1}]"
        )
    live = sum(1 for m in ns.shards.values() if m.status != DELETING)
    if max_shards and live + 1 > max_shards:
        raise InvalidArgument(
            f"oxia: namespace {namespace!r} would have {live + 1} shards, more than its "
            f"maximum of {max_shards}"
        )
    by_internal = {s.internal: s for s in servers}
    rf = len(parent.ensemble)
    ids = []
    for c_lo, c_hi in ((lo, sp), (sp + 1, hi)):
        child_id = status.shard_id_generator
        status.shard_id_generator += 1
        members = select_ensemble(
            sorted(by_internal), rf, replica_load(status), rules=rules, labels=labels
        )
        child = ns.shards[child_id]
        child.status = ShardStatusUnknown
        child.term = parent.term
        child.int32_hash_range.min = c_lo
        child.int32_hash_range.max = c_hi
        child.ensemble.extend(identity(by_internal[m]) for m in members)
        child.split.phase = BOOTSTRAP
        child.split.parent_shard_id = shard
        child.split.split_point = sp
        ids.append(child_id)
    parent.split.phase = BOOTSTRAP
    parent.split.child_shard_ids.extend(ids)
    parent.split.split_point = sp
    parent.split.parent_term_at_bootstrap = parent.term
    return ids[0], ids[1]


def set_phase(status: metadata_pb2.ClusterStatus, namespace: str, parent: int, phase: int) -> None:
    """Moves the parent and both children to ``phase``."""
    ns = status.namespaces[namespace]
    p = ns.shards[parent]
    for s in [parent, *p.split.child_shard_ids]:
        if s in ns.shards and ns.shards[s].HasField("split"):
            ns.shards[s].split.phase = phase  # type: ignore[assignment]


def abort(status: metadata_pb2.ClusterStatus, namespace: str, parent: int) -> list[int]:
    """Drops the children and the parent's split state. Returns the children dropped."""
    ns = status.namespaces[namespace]
    p = ns.shards[parent]
    children = list(p.split.child_shard_ids)
    for c in children:
        if c in ns.shards:
            del ns.shards[c]
    p.ClearField("split")
    return children


def finish(status: metadata_pb2.ClusterStatus, namespace: str, parent: int) -> list[int]:
    """The cutover's last write: the children become ordinary shards, the parent is deleted.
    Returns the children."""
    ns = status.namespaces[namespace]
    p = ns.shards[parent]
    children = list(p.split.child_shard_ids)
    for c in children:
        ns.shards[c].ClearField("split")
    p.ClearField("split")
    p.status = DELETING
    p.ClearField("leader")
    return children


def counted(replica: ChildReplica | None, parent_term: int, target: int) -> bool:
    """Whether a child replica counts for the split (see the module docstring)."""
    return (
        replica is not None
        and replica.term == parent_term
        and replica.split_parent_term == parent_term
        and replica.head_offset >= target
    )


def counted_after_fence(replica: ChildReplica, parent_term: int, head: int) -> bool:
    """After the parent is fenced the children move to their own terms: a replica counts if it
    holds the parent's final ``head`` and was seeded by the parent's last leader — or it was cut
    already, in a child term (it led, or applied a child entry: it held all of the parent's)."""
    if replica.head_offset < head:
        return False
    if replica.split_parent_term == parent_term:
        return True
    return replica.split_parent_term < 0 and replica.term > parent_term


def majority_holds(
    replicas: Mapping[str, ChildReplica | None],
    ensemble: Sequence[str],
    parent_term: int,
    target: int,
) -> bool:
    """Whether a majority of the child's ensemble counts at ``target``."""
    held = sum(1 for m in ensemble if counted(replicas.get(m), parent_term, target))
    return held >= majority(len(ensemble))


def choose_child_leader(
    replicas: Mapping[str, ChildReplica | None],
    candidates: Sequence[str],
    parent_term: int,
    target: int,
    leader_counts: Mapping[str, int],
) -> str | None:
    """The child's first leader: a counted replica among ``candidates`` (those fenced in the
    child's own term), the one holding most, then leading fewest shards, then by name."""
    best = [m for m in candidates if counted(replicas.get(m), parent_term, target)]
    if not best:
        return None

    def rank(m: str) -> tuple[int, int, str]:
        r = replicas[m]
        assert r is not None
        return (-r.head_offset, leader_counts.get(m, 0), m)

    return min(best, key=rank)
