"""The cluster status (``ClusterStatus`` in metadata.proto) and how the
configuration turns into it (pure code, no I/O).

Servers are identified by their internal address. Shard ids come from the
status' ``shard_id_generator``, unique across the whole cluster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyxia.common.sharding import generate_shards
from pyxia.config import ClusterConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator.placement import AntiAffinityRule, select_ensemble
from pyxia.proto import metadata_pb2

ShardMetadata = metadata_pb2.ShardMetadata
STEADY = metadata_pb2.SteadyState
ELECTION = metadata_pb2.Election
DELETING = metadata_pb2.Deleting


def identity(s: ServerAddress) -> metadata_pb2.DataServerIdentity:
    ident = metadata_pb2.DataServerIdentity(public=s.public, internal=s.internal)
    if s.name:
        ident.name = s.name
    return ident


def shards(status: metadata_pb2.ClusterStatus) -> Iterator[tuple[str, int, ShardMetadata]]:
    for ns_name in sorted(status.namespaces):
        ns = status.namespaces[ns_name]
        for shard_id in sorted(ns.shards):
            yield ns_name, shard_id, ns.shards[shard_id]


def replica_load(status: metadata_pb2.ClusterStatus) -> Counter[str]:
    """Shard replicas per server (internal address)."""
    load: Counter[str] = Counter()
    for _, _, meta in shards(status):
        if meta.status != DELETING:
            for m in meta.ensemble:
                load[m.internal] += 1
    return load


def leader_counts(status: metadata_pb2.ClusterStatus) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _, _, meta in shards(status):
        if meta.HasField("leader") and meta.status != DELETING:
            counts[meta.leader.internal] += 1
    return counts


class PendingLeaders:
    """Elections that chose a leader not persisted yet (shard -> server), and leaderships per
    server counting them, without a walk over every shard per election.

    ``counts(status)`` is the status's leaderships (shards not being deleted) plus one per
    pending election, minus the leader the status still records for a pending shard (that
    shard is counted once, for its new leader). The status's part is computed once per status
    object (the coordinator replaces it at each write, never edits it in place); the pending
    part is kept up to date as elections come and go."""

    def __init__(self) -> None:
        self._pending: dict[int, str] = {}
        self._by_node: Counter[str] = Counter()
        # The leader the status records for each pending shard, and those counted per server.
        self._displaced: dict[int, str] = {}
        self._displaced_by_node: Counter[str] = Counter()
        self._status: metadata_pb2.ClusterStatus | None = None
        self._leaders: dict[int, str] = {}
        self._base: Counter[str] = Counter()

    def __setitem__(self, shard: int, node: str) -> None:
        self.pop(shard, None)
        self._pending[shard] = node
        self._by_node[node] += 1
        displaced = self._leaders.get(shard)
        if displaced is not None:
            self._displaced[shard] = displaced
            self._displaced_by_node[displaced] += 1

    def pop(self, shard: int, default: str | None = None) -> str | None:
        node = self._pending.pop(shard, None)
        if node is None:
            return default
        self._by_node[node] -= 1
        displaced = self._displaced.pop(shard, None)
        if displaced is not None:
            self._displaced_by_node[displaced] -= 1
        return node

    def __contains__(self, shard: object) -> bool:
        return shard in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def items(self) -> list[tuple[int, str]]:
        return list(self._pending.items())

    def counts(self, status: metadata_pb2.ClusterStatus) -> dict[str, int]:
        if status is not self._status:
            self._status = status
            self._leaders = {
                shard: meta.leader.internal
                for _, shard, meta in shards(status)
                if meta.HasField("leader") and meta.status != DELETING
            }
            self._base = Counter(self._leaders.values())
            self._displaced = {s: self._leaders[s] for s in self._pending if s in self._leaders}
            self._displaced_by_node = Counter(self._displaced.values())
        out = self._base.copy()
        out.update(self._by_node)
        out.subtract(self._displaced_by_node)
        return {node: n for node, n in out.items() if n}


@dataclass
class Reconciliation:
    """What the coordinator must do to bring the status in line with the config."""

    created: list[tuple[str, int]] = field(default_factory=list)
    deleted_namespaces: list[str] = field(default_factory=list)
    removed_servers: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.deleted_namespaces or self.removed_servers)


def rules_of(ns: NamespaceConfig | None) -> list[AntiAffinityRule]:
    if ns is None:
        return []
    return [AntiAffinityRule(a.labels, a.mode == "strict") for a in ns.anti_affinities]


def add_namespace(
    status: metadata_pb2.ClusterStatus,
    ns: NamespaceConfig,
    servers: list[ServerAddress],
    labels: dict[str, dict[str, str]] | None = None,
) -> list[int]:
    """Creates the namespace's shards with their ensembles. Returns their ids."""
    by_internal = {s.internal: s for s in servers}
    ns_status = status.namespaces[ns.name]
    ns_status.replication_factor = ns.replication_factor
    created = []
    names = sorted(by_internal)
    load = replica_load(status)  # counted once, then kept up to date (not once per shard)
    for r in generate_shards(ns.initial_shard_count):
        shard_id = status.shard_id_generator
        status.shard_id_generator += 1
        ensemble = select_ensemble(names, ns.replication_factor, load)
        load.update(ensemble)
        meta = ns_status.shards[shard_id]
        meta.status = ShardStatusUnknown
        meta.term = -1
        meta.int32_hash_range.min = r.min_inclusive
        meta.int32_hash_range.max = r.max_inclusive
        meta.ensemble.extend(identity(by_internal[i]) for i in ensemble)
        created.append(shard_id)
    return created


ShardStatusUnknown = metadata_pb2.ShardStatusUnknown


def reconcile(status: metadata_pb2.ClusterStatus, config: ClusterConfig) -> Reconciliation:
    """Brings ``status`` (modified in place) in line with ``config``."""
    rec = Reconciliation()
    servers = list(config.servers)
    wanted = {n.name: n for n in config.namespaces}
    for name, ns in wanted.items():
        if name not in status.namespaces:
            for shard_id in add_namespace(status, ns, servers, config.labels_by_internal()):
                rec.created.append((name, shard_id))
    for name in sorted(status.namespaces):
        if name not in wanted:
            ns_status = status.namespaces[name]
            if any(m.status != DELETING for m in ns_status.shards.values()):
                for meta in ns_status.shards.values():
                    meta.status = DELETING
                rec.deleted_namespaces.append(name)
    known = {s.internal for s in servers}
    in_use = {m.internal for _, _, meta in shards(status) for m in meta.ensemble}
    rec.removed_servers = sorted(in_use - known)
    return rec


def namespace_config(config: ClusterConfig, name: str) -> NamespaceConfig | None:
    for n in config.namespaces:
        if n.name == name:
            return n
    return None
