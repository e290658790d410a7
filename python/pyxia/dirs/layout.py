"""A standalone's shard layout: which shard ids each namespace owns (pure rules, no I/O).

A standalone numbers its shards itself: each namespace owns a contiguous run of shard ids
(``first_shard`` .. ``first_shard + shards - 1``), and the hash ranges come from the count. The
layout a namespace was created with is fixed for its life: a different shard count would route
keys to shards that do not hold them (they read as "not found" while ``list`` still shows them),
and a different key sorting would read keys with the wrong encoding. So:

- a namespace already in the layout keeps its shard ids; what the flags or the config ask for
  must match its shard count and key sorting, else the process refuses to start;
- a new namespace gets ids after the highest id in use, whatever the order of the namespaces
  on the command line (earlier versions numbered them in that order, so reordering or adding a
  namespace moved the others onto shard dirs that were not theirs);
- a namespace in the layout that is not asked for is left alone: its ids stay reserved.

Directories written by earlier versions carry no layout: :func:`infer_layout` reads it back from
the shard directories on disk. When that is ambiguous (ids not contiguous, mixed key sortings,
overlapping ranges), the namespace is left out and what is asked now is recorded at the ids an
earlier version would have used (:func:`legacy_first_shards`), with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DirError


@dataclass(frozen=True)
class NamespaceLayout:
    first_shard: int
    shards: int
    key_sorting: str

    def to_json(self) -> dict[str, Any]:
        return {
            "first_shard": self.first_shard,
            "shards": self.shards,
            "key_sorting": self.key_sorting,
        }

    @staticmethod
    def from_json(name: str, d: Any) -> NamespaceLayout:
        if not isinstance(d, dict):
            raise DirError(f"the layout of namespace {name!r} in the manifest is not an object")
        first, shards, sorting = d.get("first_shard"), d.get("shards"), d.get("key_sorting")
        if (
            not isinstance(first, int)
            or not isinstance(shards, int)
            or first < 0
            or shards < 1
            or sorting not in ("hierarchical", "natural")
        ):
            raise DirError(f"the layout of namespace {name!r} in the manifest is invalid: {d!r}")
        return NamespaceLayout(first, shards, sorting)


@dataclass(frozen=True)
class LayoutAsk:
    """What the flags or the config ask for one namespace, and how to name that source."""

    namespace: str
    shards: int
    key_sorting: str
    shards_source: str  # e.g. "--shards 4", "initialShardCount 4 in cluster.yaml"
    sorting_source: str  # e.g. "--key-sorting natural"


def infer_layout(
    on_disk: Mapping[str, Mapping[int, str | None]],
) -> tuple[dict[str, NamespaceLayout], list[str]]:
    """The layout of an unlabelled data dir from its shard dirs (namespace -> shard id -> key
    sorting marker). Returns the namespaces it could read back and those it could not."""
    layout: dict[str, NamespaceLayout] = {}
    ambiguous: list[str] = []
    for name in sorted(on_disk):
        shards = on_disk[name]
        if not shards:
            continue
        ids = sorted(shards)
        sortings = {s for s in shards.values() if s is not None}
        contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
        if not contiguous or len(sortings) > 1 or not sortings <= {"hierarchical", "natural"}:
            ambiguous.append(name)
            continue
        layout[name] = NamespaceLayout(
            ids[0], len(ids), sortings.pop() if sortings else "hierarchical"
        )
    # Ranges that overlap (an earlier version renumbered namespaces when their order changed)
    # say nothing reliable about either namespace.
    overlapping = {
        a
        for a, la in layout.items()
        for b, lb in layout.items()
        if a != b
        and la.first_shard < lb.first_shard + lb.shards
        and lb.first_shard < la.first_shard + la.shards
    }
    for name in sorted(overlapping):
        del layout[name]
        ambiguous.append(name)
    return layout, sorted(ambiguous)


def legacy_first_shards(asks: Sequence[LayoutAsk]) -> dict[str, int]:
    """The shard ids earlier versions gave the asked namespaces: numbered in the order asked."""
    out: dict[str, int] = {}
    next_id = 0
    for a in asks:
        out[a.namespace] = next_id
        next_id += a.shards
    return out


def plan_layout(
    stored: Mapping[str, NamespaceLayout],
    asks: Sequence[LayoutAsk],
    where: str,
    reserved: Sequence[int] = (),
) -> dict[str, NamespaceLayout]:
    """The layout after this start: ``stored`` plus the new namespaces of ``asks``.

    Raises :class:`DirError` naming what was found and what was asked when an ask contradicts
    the stored layout. ``reserved``: shard ids in use on disk outside ``stored`` (never reused).
    ``where`` names the data dir in messages."""
    out = dict(stored)
    for a in asks:
        have = stored.get(a.namespace)
        if have is None:
            continue
        if have.shards != a.shards:
            raise DirError(
                f"namespace {a.namespace!r} in {where} has {have.shards} "
                f"shard{'s' if have.shards != 1 else ''}, but {a.shards_source} asks for "
                f"{a.shards}: the shard count of a namespace cannot change"
            )
        if have.key_sorting != a.key_sorting:
            raise DirError(
                f"namespace {a.namespace!r} in {where} uses {have.key_sorting} key sorting, "
                f"but {a.sorting_source} asks for {a.key_sorting}"
            )
    used = [lay.first_shard + lay.shards for lay in stored.values()]
    next_id = max([0, *used, *(r + 1 for r in reserved)])
    for a in asks:
        if a.namespace in out:
            continue
        out[a.namespace] = NamespaceLayout(next_id, a.shards, a.key_sorting)
        next_id += a.shards
    return out
