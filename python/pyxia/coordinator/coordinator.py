"""The leading coordinator: keeps the cluster status in the metadata
provider, runs one controller per shard and per data server, reconciles
configuration changes, balances load, pushes shard assignments.

The configuration it applies is the cluster config file's joined with what the admin API
manages (kept in the status; the file wins for what it defines: see ``admin_config``). A
reload of the file and an admin change both go through one compare-and-set of the status that
holds the change and the shards it creates, then the same steps (new servers watched, new
shards elected, deleted namespaces' shards deleted, removed servers evacuated).

A shard is in the pushed assignments (with no leader yet, as Oxia's coordinator publishes
leaderless shards) before its first NewTerm: data servers create a replica only for a shard
the assignments know. Every call to a data server carries the cluster's instance id, after a
Handshake (see ``dataserver_controller``).

Leader moves it makes on purpose (rebalancing, ensemble changes, evacuating a server removed
from the config, a server shutting down, ``MoveLeader``) are planned elections: the leader hands
over gracefully first (see ``shard_controller``).

Shard splits (``split_shard``) run in their own controllers (``split.py``), their phases in the
status: the children of a split in progress get no shard controller and reach the data servers
only as pending (never served to clients) until the cutover publishes them; the parent's
controller elects nothing once the split passed its point of no return; the balancer leaves
both alone. A coordinator that becomes leader resumes every split in its status.

It is built from the metadata it reads when it becomes leader and is thrown
away when leadership is lost: it never retries a write that lost a
compare-and-set (that could overwrite what a newer leader wrote) — it marks
itself failed and lets the server rebuild it from fresh metadata.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pyxia.common.channels import ChannelPool
from pyxia.common.instance_id import INSTANCE_ID_HEADER, CallMetadata
from pyxia.common.signals import Signal
from pyxia.config import ClusterConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator import admin_config, split_rules
from pyxia.coordinator.autosplit import AutoSplitter
from pyxia.coordinator.dataserver_controller import DataServerController, LivenessOptions
from pyxia.coordinator.metadata.provider import MetadataProvider, Version
from pyxia.coordinator.model import (
    DELETING,
    STEADY,
    PendingLeaders,
    Reconciliation,
    identity,
    reconcile,
    replica_load,
    rules_of,
    shards,
)
from pyxia.coordinator.placement import (
    PlacementError,
    plan_leader_rebalance,
    plan_rebalance_moves,
    replace_member,
)
from pyxia.coordinator.shard_controller import ShardController
from pyxia.coordinator.split import DEFAULT_SPLIT_TIMEOUT_S, SplitController
from pyxia.coordinator.status_store import ShardEdit, StatusStore
from pyxia.errors import (
    FailedPrecondition,
    InvalidArgument,
    MetadataBadVersion,
    NotInitialized,
    ResourceUnavailable,
)
from pyxia.proto import admin_pb2, client_pb2, metadata_pb2
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.tls import TlsOptions

log = logging.getLogger("pyxia.coordinator")

T = TypeVar("T")

_KEY_SORTING = {
    "hierarchical": client_pb2.KEY_SORTING_HIERARCHICAL,
    "natural": client_pb2.KEY_SORTING_NATURAL,
}


MAX_CALLS_PER_SERVER = 64
"""Coordination calls in flight to one data server; more wait their turn. A cold start of
10,000 shards started 30,000 NewTerm calls at once (peak RSS near 1 GiB), and a server that
hangs holds only its own calls."""

MAX_SHARDS_VERIFYING = 64
"""Shards checking their ensemble (a GetStatus per replica) at once; more wait their turn.
A new coordinator checks every shard when it starts: 10,000 shards' 30,000 calls at once kept
its event loop so busy that its admin and health answers took seconds (a coordinator
failover looked 4 s slower than it was), for no more calls a second."""

DEFAULT_ASSIGNMENTS_PUSH_LINGER = 0.1
"""Seconds (``--assignments-push-linger``)."""


@dataclass
class CoordinatorOptions:
    liveness: LivenessOptions = field(default_factory=LivenessOptions)
    config_poll_interval: float = 1.0
    balance: bool = True
    # The connections to data servers: TLS (--peer-tls-*) and the proof of cluster membership
    # every call carries (--cluster-secret-file); None: plaintext, no proof.
    peer_tls: TlsOptions | None = None
    cluster_secret: ClusterSecret | None = None
    # Where the cluster config file is, for the admin API's errors ("the file wins").
    config_source: str = "(-f/--cluster-config)"
    # A split that has not cut over within this is aborted (Oxia: 5 minutes).
    split_timeout: float = DEFAULT_SPLIT_TIMEOUT_S
    # This coordinator (its admin address), recorded in the status when it begins to lead so
    # that the others can point admin clients at it; None: nothing recorded.
    leader_info: metadata_pb2.CoordinatorInfo | None = None
    # Election histograms per shard (Oxia's labels) or per namespace (shard=""): see
    # coordinator/metrics.py; per shard, 10,000 shards make a 70 MB exposition.
    per_shard_election_metrics: bool = True
    # After the assignment map changed, how long each data server's push waits for more
    # changes to send them together (a burst of elections finishing one status write after
    # another: one push per server, not one per write); a stream's first map goes at once.
    assignments_push_linger: float = DEFAULT_ASSIGNMENTS_PUSH_LINGER


class Coordinator:
    def __init__(
        self,
        provider: MetadataProvider,
        load_config: Callable[[], ClusterConfig],
        options: CoordinatorOptions | None = None,
    ) -> None:
        self.provider = provider
        self._load_config = load_config
        self.options = options or CoordinatorOptions()
        opts = self.options
        peer_tls = opts.peer_tls.client() if opts.peer_tls is not None else None
        self.channels = ChannelPool(peer_tls, opts.cluster_secret)
        # The cluster config file as last loaded, and the configuration applied: the file's
        # joined with the admin-managed items in the status (admin_config.effective_config).
        self.file_config = load_config()
        self.config = self.file_config
        self._refused_file: ClusterConfig | None = None
        self.failed = asyncio.Event()  # a compare-and-set was lost
        # The status as stored; shard edits are batched into its writes (status_store).
        self._statuses = StatusStore(
            provider, metadata_pb2.ClusterStatus(), Version("-1"), self.failed.set
        )
        self.shard_controllers: dict[int, ShardController] = {}
        # Splits in progress, by parent shard; and how the latest of each parent ended.
        self.split_controllers: dict[int, SplitController] = {}
        self.splits_ended: dict[int, SplitController] = {}
        self.auto_splitter = AutoSplitter(self)
        # Elections that chose a leader not persisted yet (counted as leaderships).
        self.pending_leaders = PendingLeaders()
        self.servers: dict[str, DataServerController] = {}
        # The map pushed to data servers, rebuilt lazily (once per change that is read, not
        # once per shard event) and serialized once for every push stream.
        self._assignments: client_pb2.ShardAssignments | None = None
        self._assignments_stale = False
        self._assignments_leaderless = False
        self._assignments_payload: bytes | None = None
        self.assignments_changed = Signal()
        # Wakes the balancer before its interval: the configuration changed (not when a server
        # comes back: moving leaderships to it while it catches up is churn).
        self._balance_wake = Signal()
        self._tasks: list[asyncio.Task[None]] = []
        self._quarantine: dict[int, float] = {}
        # Servers shutting down gracefully (they asked for their leaderships to be moved): no
        # leadership goes to them until they come back.
        self.leaving: set[str] = set()
        self._call_slots: dict[str, asyncio.Semaphore] = {}
        self.verify_slots = asyncio.Semaphore(MAX_SHARDS_VERIFYING)  # held by a shard's check
        # Servers this coordinator has seen available at least once.
        self._seen_available: set[str] = set()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, status: metadata_pb2.ClusterStatus | None, version: Version) -> None:
        self.version = version
        fresh = status is None
        self.status = (
            status
            if status is not None
            else metadata_pb2.ClusterStatus(instance_id=str(uuid.uuid4()))
        )
        work = copy.deepcopy(self.status)
        taken = admin_config.take_over(work.admin_managed, self.file_config)
        for note in taken:
            log.warning("%s", note)
        self.config = admin_config.effective_config(self.file_config, work.admin_managed)
        problem = admin_config.config_problem(self.config)
        if problem is not None:
            log.warning("the cluster configuration cannot be fully applied: %s", problem)
        rec = reconcile(work, self.config)
        me = self.options.leader_info
        claim = False
        if me is not None and work.leader_coordinator != me:
            work.leader_coordinator.CopyFrom(me)  # where the others point admin clients
            claim = True
        if fresh or rec.changed or taken or claim:
            await self._store(work)
        self._recompute_assignments()
        for s in self.config.servers:
            self._add_server(s)
        for ns, shard_id, meta in shards(self.status):
            if split_rules.is_split_child(meta):
                continue  # its split controller drives it until the cutover
            self._add_shard(
                ns,
                shard_id,
                elect=(meta.status != STEADY or not meta.HasField("leader"))
                and not split_rules.parent_fenced(meta),
            )
        for ns, shard_id, meta in shards(self.status):
            if split_rules.is_split_parent(meta):
                log.info("resuming the split of shard %d (%s)", shard_id, meta.split.phase)
                self._start_split(ns, shard_id)
        for node in rec.removed_servers:
            self._evacuate(node)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._config_loop(), name="coordinator-config"))
        if self.options.balance:
            self._tasks.append(loop.create_task(self._balance_loop(), name="coordinator-balance"))
        self._tasks.append(loop.create_task(self.auto_splitter.run(), name="coordinator-autosplit"))
        log.info(
            "coordinator started: %d namespaces, %d shards, %d servers",
            len(self.status.namespaces),
            len(self.shard_controllers),
            len(self.servers),
        )

    async def close(self) -> None:
        """Stops every controller and task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        for split in list(self.split_controllers.values()):
            await split.close()
        for sc in list(self.shard_controllers.values()):
            await sc.close()
        await self._statuses.close()
        for dc in list(self.servers.values()):
            await dc.close()
        self.assignments_changed.close()
        self._balance_wake.close()
        await self.channels.close()

    # -- status persistence -----------------------------------------------------------------------

    @property
    def status(self) -> metadata_pb2.ClusterStatus:
        """The cluster status as stored (replaced, never edited in place, by each write)."""
        return self._statuses.status

    @status.setter
    def status(self, value: metadata_pb2.ClusterStatus) -> None:
        self._statuses.status = value

    @property
    def version(self) -> Version:
        return self._statuses.version

    @version.setter
    def version(self, value: Version) -> None:
        self._statuses.version = value

    @property
    def _update_lock(self) -> asyncio.Lock:
        """Held around every status write: whole-status changes take it around their
        read-copy-store, the batched shard edits while they are stored."""
        return self._statuses.lock

    async def _store(self, new_status: metadata_pb2.ClusterStatus) -> None:
        """Stores a whole new status (hold ``_update_lock``); a lost compare-and-set makes
        this coordinator step down."""
        await self._statuses.store(new_status)

    async def update_shard(self, namespace: str, shard: int, fn: ShardEdit) -> None:
        """Applies ``fn`` to the shard's record; returns once it is durable. Edits made
        meanwhile by other shards go into the same write (``status_store``)."""
        if self._closed or self.failed.is_set():
            raise MetadataBadVersion("the coordinator is stepping down")
        await self._statuses.update_shard(namespace, shard, fn)

    async def update_status(self, fn: Callable[[metadata_pb2.ClusterStatus], T]) -> T:
        """Applies ``fn`` to a copy of the status and stores it (compare-and-set)."""
        async with self._update_lock:
            if self._closed or self.failed.is_set():
                raise MetadataBadVersion("the coordinator is stepping down")
            work = copy.deepcopy(self.status)
            result = fn(work)
            await self._store(work)
            return result

    async def remove_shard(self, namespace: str, shard: int) -> None:
        async with self._update_lock:
            work = copy.deepcopy(self.status)
            ns = work.namespaces.get(namespace)
            if ns is not None and shard in ns.shards:
                del ns.shards[shard]
                if not ns.shards:
                    del work.namespaces[namespace]
            await self._store(work)
        self.shard_controllers.pop(shard, None)

    # -- queries ----------------------------------------------------------------------------------

    def is_available(self, node: str) -> bool:
        dc = self.servers.get(node)
        return dc is not None and dc.available

    def leader_counts(self) -> dict[str, int]:
        """Leaderships per server, counting elections that chose a leader
        but have not persisted it yet (concurrent elections spread out)."""
        return self.pending_leaders.counts(self.status)

    # -- identity ---------------------------------------------------------------------------------

    def call_metadata(self) -> CallMetadata:
        """The header every coordination call carries: this cluster's instance id."""
        return ((INSTANCE_ID_HEADER, self.status.instance_id),)

    async def ensure_bound(self, node: str) -> None:
        """Handshakes ``node`` unless it is bound to this cluster already (a data server
        refuses coordination calls before its first Handshake)."""
        dc = self.servers.get(node)
        if dc is not None:
            await dc.ensure_bound()

    def call_slots(self, node: str) -> asyncio.Semaphore:
        """Held by each coordination call to ``node`` (``MAX_CALLS_PER_SERVER``)."""
        slots = self._call_slots.get(node)
        if slots is None:
            slots = self._call_slots[node] = asyncio.Semaphore(MAX_CALLS_PER_SERVER)
        return slots

    def forget_binding(self, node: str) -> None:
        dc = self.servers.get(node)
        if dc is not None:
            dc.bound = False

    def namespace_config(self, name: str) -> NamespaceConfig | None:
        for n in self.config.namespaces:
            if n.name == name:
                return n
        return None

    # -- assignments ------------------------------------------------------------------------------

    def _recompute_assignments(self) -> None:
        """Rebuilds the map clients get, now. A shard being elected keeps the leader it was
        last published with: that server answers a retryable NODE_IS_NOT_LEADER until the new
        map names the new one, where an empty leader would make Oxia's Go client fail the
        write (it dials "")."""
        before: dict[tuple[str, int], tuple[str, int]] = {}
        if self._assignments is not None:
            for name, nsa_before in self._assignments.namespaces.items():
                for a in nsa_before.assignments:
                    before[(name, a.shard)] = (a.leader, a.leader_term)
        out = client_pb2.ShardAssignments()
        leaderless = False
        for ns, shard, meta in shards(self.status):
            if meta.status == DELETING:
                continue
            nsa = out.namespaces[ns]
            if split_rules.is_split_child(meta):
                # Known to the data servers (they create its replicas), never to clients.
                nsa.pending_split_assignments.add(
                    shard=shard,
                    int32_hash_range=client_pb2.Int32HashRange(
                        min_hash_inclusive=meta.int32_hash_range.min,
                        max_hash_inclusive=meta.int32_hash_range.max,
                    ),
                )
                continue
            nsa.shard_key_router = client_pb2.XXHASH3
            cfg = self.namespace_config(ns)
            nsa.key_sorting = _KEY_SORTING[cfg.key_sorting if cfg else "hierarchical"]
            # The leader and the term it leads (pyxia's extension field: the TSO's hints).
            leader, leader_term = (
                (meta.leader.public, meta.term)
                if meta.HasField("leader")
                else before.get((ns, shard), ("", 0))
            )
            leaderless = leaderless or not leader
            nsa.assignments.add(
                shard=shard,
                leader=leader,
                leader_term=leader_term,
                int32_hash_range=client_pb2.Int32HashRange(
                    min_hash_inclusive=meta.int32_hash_range.min,
                    max_hash_inclusive=meta.int32_hash_range.max,
                ),
            )
        self._assignments = out
        self._assignments_leaderless = leaderless
        self._assignments_stale = False
        self._assignments_payload = None

    def assignments(self) -> client_pb2.ShardAssignments | None:
        if self._assignments_stale:
            self._recompute_assignments()
        return self._assignments

    def assignments_leaderless(self) -> bool:
        """Whether the current map names no leader for some shard (one never elected yet)."""
        self.assignments()
        return self._assignments_leaderless

    def assignments_payload(self) -> bytes | None:
        """The current map serialized (once for every push stream)."""
        current = self.assignments()
        if current is None:
            return None
        if self._assignments_payload is None:
            self._assignments_payload = current.SerializeToString()
        return self._assignments_payload

    def assignments_updated(self) -> None:
        """The status changed what clients see: the map is rebuilt when next read (the push
        streams read it once they wake up), so changes made together cost one rebuild."""
        self._assignments_stale = True
        self.assignments_changed.notify()

    # -- controllers ------------------------------------------------------------------------------

    def _add_server(self, s: ServerAddress) -> None:
        if s.internal in self.servers:
            return
        dc = DataServerController(
            s,
            self.channels,
            self.status.instance_id,
            self.assignments_payload,
            self.assignments_changed,
            self._on_server_change,
            self.options.liveness,
            on_shard_event=self._on_shard_event,
            on_reconnected=self._on_server_reconnected,
            push_linger=self.options.assignments_push_linger,
            assignments_leaderless=self.assignments_leaderless,
        )
        self.servers[s.internal] = dc
        dc.start()

    def _add_shard(self, namespace: str, shard: int, *, elect: bool) -> None:
        if shard in self.shard_controllers:
            return
        sc = ShardController(
            self,
            namespace,
            shard,
            per_shard_metrics=self.options.per_shard_election_metrics,
        )
        self.shard_controllers[shard] = sc
        sc.start(elect=elect)

    def _on_shard_event(self, node: str, event: admin_pb2.ShardEvent) -> None:
        sc = self.shard_controllers.get(event.shard)
        if event.leaving:
            self.leaving.add(node)
            if sc is not None:
                sc.replica_leaving(node, event)
        elif sc is not None:
            sc.replica_failed(node, event)

    def _on_server_reconnected(self, node: str) -> None:
        """``node``'s health watch broke while it stayed reachable (it may have restarted):
        every shard with a replica there checks its replicas (a GetStatus each)."""
        for sc in list(self.shard_controllers.values()):
            if sc.has_member(node):
                sc.request_verify()

    async def _on_server_change(self, node: str, available: bool) -> None:
        if available:
            self.leaving.discard(node)  # back (restarted)
            if node not in self._seen_available:
                # First seen by this coordinator: every shard's first check (or election)
                # covers its replicas, and one that found it unreachable adds it back as
                # soon as it is available. No NewTerm per replica here.
                self._seen_available.add(node)
                return
        for sc in list(self.shard_controllers.values()):
            if available:
                sc.node_available(node)
            else:
                sc.node_unavailable(node)

    # -- configuration changes --------------------------------------------------------------------

    async def _config_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.options.config_poll_interval)
            try:
                cfg = self._load_config()
            except Exception as e:
                log.warning("cluster config not reloaded: %s", e)
                continue
            if cfg != self.file_config and cfg != self._refused_file:
                log.info("cluster config changed: applying")
                try:
                    await self.apply_config(cfg)
                except FailedPrecondition as e:
                    # said once; tried again when the file or the admin API changes something
                    self._refused_file = cfg
                    log.warning("cluster config not reloaded: %s", e)

    async def apply_config(self, cfg: ClusterConfig) -> None:
        """Applies a new cluster config file, joined with the admin-managed items (those the
        file now defines are taken over by it, logged). Raises FailedPrecondition, changing
        nothing, if the result cannot be applied."""
        async with self._update_lock:
            work = copy.deepcopy(self.status)
            taken = admin_config.take_over(work.admin_managed, cfg)
            effective = admin_config.effective_config(cfg, work.admin_managed)
            problem = admin_config.config_problem(effective)
            if problem is not None:
                raise FailedPrecondition(f"{problem} (the file and the admin API together)")
            rec = reconcile(work, effective)
            if rec.changed or taken:
                await self._store(work)
            for note in taken:
                log.warning("%s", note)
            self.file_config, self.config = cfg, effective
        await self._act_on(rec)

    async def change_admin_config(self, change: Callable[[metadata_pb2.ClusterStatus], T]) -> T:
        """One admin API change: ``change`` validates the request and edits a copy of the
        status (its ``admin_managed`` part, and shard records if need be), raising a domain
        error to refuse it; the copy is stored with the shards the new configuration creates
        or deletes in one compare-and-set, then acted on. Returns what ``change`` returned."""
        async with self._update_lock:
            if self._closed or self.failed.is_set():
                raise NotInitialized("oxia: this coordinator is stepping down")
            work = copy.deepcopy(self.status)
            result = change(work)
            effective = admin_config.effective_config(self.file_config, work.admin_managed)
            problem = admin_config.config_problem(effective)
            if problem is not None:
                raise FailedPrecondition(f"oxia: {problem}")
            rec = reconcile(work, effective)
            await self._store(work)
            self.config = effective
            # a file refused before may fit now (say, a server it lacks was added): the next
            # poll tries it again
            self._refused_file = None
        await self._act_on(rec)
        return result

    async def _act_on(self, rec: Reconciliation) -> None:
        """What follows a stored configuration change: servers watched (or their address
        updated), new shards elected, deleted namespaces' shards deleted, servers the
        configuration no longer has evacuated and, once empty, forgotten."""
        cfg = self.config
        for s in cfg.servers:
            dc = self.servers.get(s.internal)
            if dc is not None:
                dc.server = s
            self._add_server(s)
        # New shards go into the pushed assignments (with no leader yet) before their first
        # NewTerm: a data server creates a replica only for a shard the assignments know.
        self.assignments_updated()
        for ns, shard in rec.created:
            self._add_shard(ns, shard, elect=True)
        for name in rec.deleted_namespaces:
            for shard in list(self.status.namespaces[name].shards):
                sc = self.shard_controllers.get(shard)
                if sc is not None:
                    sc.request_delete()
        for node in rec.removed_servers:
            self._evacuate(node)
        for node in list(self.servers):
            if node not in {s.internal for s in cfg.servers} and not self._hosts_anything(node):
                dc = self.servers.pop(node)
                await dc.close()
        self.assignments_updated()
        self._balance_wake.notify()

    def hosts_replicas(self, node: str) -> bool:
        """Whether the status records any replica (or leftover) of a shard on ``node``."""
        return self._hosts_anything(node)

    def _hosts_anything(self, node: str) -> bool:
        return any(
            m.internal == node
            for _, _, meta in shards(self.status)
            for m in [*meta.ensemble, *meta.removed_nodes, *meta.pending_delete_shard_nodes]
        )

    def _evacuate(self, node: str) -> None:
        """Moves every replica off a server removed from the config."""
        servers = [s.internal for s in self.config.servers]
        load = replica_load(self.status)  # kept up to date with the moves planned here
        labels = self.config.labels_by_internal()
        for _ns, shard, meta in shards(self.status):
            if meta.status == DELETING or not any(m.internal == node for m in meta.ensemble):
                continue
            try:
                target = replace_member(
                    [m.internal for m in meta.ensemble],
                    node,
                    servers,
                    load,
                    rules=rules_of(self.namespace_config(_ns)),
                    labels=labels,
                )
            except PlacementError as e:
                log.warning("shard %d: cannot move its replica off %s: %s", shard, node, e)
                continue
            load[target] += 1
            load[node] -= 1
            sc = self.shard_controllers.get(shard)
            if sc is not None:
                self._tasks.append(
                    asyncio.get_running_loop().create_task(
                        self.change_ensemble(shard, node, target)
                    )
                )

    async def change_ensemble(self, shard: int, source: str, target: str) -> None:
        """Replaces ``source`` by ``target`` in the shard's ensemble: an
        election in a new term with ``source`` among the removed nodes."""
        sc = self.shard_controllers.get(shard)
        if sc is None:
            return
        by_internal = {s.internal: s for s in self.config.servers}
        if target not in by_internal:
            return

        def swap(m: metadata_pb2.ShardMetadata) -> None:
            members = list(m.ensemble)
            if not any(x.internal == source for x in members):
                return
            del m.ensemble[:]
            for x in members:
                if x.internal == source:
                    m.removed_nodes.append(x)
                    m.ensemble.append(identity(by_internal[target]))
                else:
                    m.ensemble.append(x)

        ns = sc.namespace
        await self.update_shard(ns, shard, swap)
        log.info("shard %d: moving a replica from %s to %s", shard, source, target)
        sc.request_election(planned=True)

    async def move_leader(
        self, namespace: str, shard: int, to: str = "", timeout: float = 30.0
    ) -> tuple[str, int]:
        """A planned leader move of ``shard`` to ensemble member ``to`` (empty: any other
        member); returns the leader and term once the new term is steady. The target gets it if
        its log is as far as the others' (after the handoff it is, unless it lags)."""
        sc = self.shard_controllers.get(shard)
        if sc is None or sc.namespace != namespace:
            raise InvalidArgument(f"oxia: no shard {shard} in namespace {namespace!r}")
        meta = sc.meta
        members = [m.internal for m in meta.ensemble]
        if to and to not in members:
            raise InvalidArgument(f"oxia: {to} is not in the ensemble of shard {shard}: {members}")
        if meta.status != STEADY or not meta.HasField("leader"):
            raise ResourceUnavailable(f"oxia: shard {shard} is not steady (an election runs)")
        current, term = meta.leader.internal, meta.term
        if to == current:
            return current, term
        sc.request_move(prefer=to or None, avoid=current)
        deadline = time.monotonic() + timeout
        while True:
            seen = self.assignments_changed.generation
            meta = sc.meta
            if meta.term > term and meta.status == STEADY and meta.HasField("leader"):
                return meta.leader.internal, meta.term
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                raise ResourceUnavailable(
                    f"oxia: shard {shard} has no new leader after {timeout:g}s"
                )
            await self.assignments_changed.wait(seen, left)

    # -- load balancing ---------------------------------------------------------------------------

    async def _balance_loop(self) -> None:
        while not self._closed:
            # Read each time: a reloaded config may change the interval.
            seen = self._balance_wake.generation
            await self._balance_wake.wait(seen, self.config.load_balancer.schedule_interval)
            try:
                await self.balance_once()
            except MetadataBadVersion:
                return
            except Exception:
                log.exception("load balancing failed")

    async def balance_once(self) -> bool:
        """One balancing step: replica moves (at most one off each server, once the previous
        step's are done), else a leadership move."""
        now = time.monotonic()
        quarantined = {s for s, until in self._quarantine.items() if until > now}
        live = {shard: meta for _, shard, meta in shards(self.status) if meta.status != DELETING}
        steady = {
            shard: meta
            for shard, meta in live.items()
            if meta.status == STEADY and not meta.HasField("split")
        }
        # The load counts every replica; only a steady shard (not splitting) may move one.
        quarantined.update(s for s in live if s not in steady)
        replicas = {s: [m.internal for m in meta.ensemble] for s, meta in live.items()}
        servers = [
            s.internal
            for s in self.config.servers
            if self.is_available(s.internal) and s.internal not in self.leaving
        ]
        if any(meta.removed_nodes for meta in live.values()):
            # Replica moves under way: the next ones once their elections finished, as
            # Oxia's balancer waits for a round's swaps.
            return False
        moves = plan_rebalance_moves(replicas, servers, quarantined)
        qt = self.config.load_balancer.quarantine_time
        if moves:
            load = replica_load(self.status)
            labels = self.config.labels_by_internal()
            allowed = []
            for move in moves:
                self._quarantine[move.shard] = now + qt
                ns = self.shard_controllers[move.shard].namespace
                try:  # the move must respect the namespace's strict anti-affinity
                    replace_member(
                        replicas[move.shard],
                        move.source,
                        [move.target],
                        load,
                        rules=rules_of(self.namespace_config(ns)),
                        labels=labels,
                    )
                except PlacementError:
                    continue
                allowed.append(move)
            if not allowed:
                return False
            # Their ensemble changes go into one status write; the elections run on.
            await asyncio.gather(
                *(self.change_ensemble(m.shard, m.source, m.target) for m in allowed)
            )
            return True
        if len(steady) < len(live):
            return False  # leaderships are counted once no election is under way
        leaders = {s: meta.leader.internal for s, meta in steady.items() if meta.HasField("leader")}
        lead_move = plan_leader_rebalance(leaders, replicas, quarantined)
        if lead_move is not None:
            shard, target = lead_move
            self._quarantine[shard] = now + qt
            sc = self.shard_controllers.get(shard)
            if sc is not None and target not in self.leaving:
                sc.request_move(prefer=target)
                return True
        return False

    # -- shard split ------------------------------------------------------------------------------

    async def split_shard(
        self,
        namespace: str,
        shard: int,
        split_point: int | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, int]:
        """Starts splitting ``shard`` of ``namespace`` at ``split_point`` (default: the middle
        of its hash range) into two shards; returns their ids at once (the split goes on in
        its controller: see :meth:`wait_split`). Refuses a shard that is not steady, one
        already splitting, a point outside its range, and a namespace at its shard limit."""
        if split_point is not None and not 0 <= split_point <= 0xFFFFFFFF:
            raise InvalidArgument(f"oxia: split point {split_point} is not a uint32")
        sc = self.shard_controllers.get(shard)
        if sc is None or sc.namespace != namespace:
            raise InvalidArgument(f"oxia: no shard {shard} in namespace {namespace!r}")
        ns_tso = self.namespace_config(namespace)
        if ns_tso is not None and ns_tso.tso:
            raise InvalidArgument(
                f"oxia: namespace {namespace!r} holds the timestamp oracle: its one shard "
                "cannot be split"
            )
        max_shards = self.config.auto_split.max_shards_per_namespace
        ns_cfg = self.namespace_config(namespace)

        def plan(st: metadata_pb2.ClusterStatus) -> tuple[int, int]:
            return split_rules.plan_split(
                st,
                namespace,
                shard,
                split_point,
                self.config.servers,
                rules=rules_of(ns_cfg),
                labels=self.config.labels_by_internal(),
                max_shards=max_shards,
            )

        left, right = await self.update_status(plan)
        log.info("splitting shard %d of %s into %d and %d", shard, namespace, left, right)
        # The children are pushed (pending) before their replicas are fenced.
        self.assignments_updated()
        self._start_split(namespace, shard, timeout)
        return left, right

    def _start_split(self, namespace: str, parent: int, timeout: float | None = None) -> None:
        if parent in self.split_controllers:
            return
        split = SplitController(
            self,
            namespace,
            parent,
            timeout=self.options.split_timeout if timeout is None else timeout,
            on_end=self._split_ended,
        )
        self.split_controllers[parent] = split
        split.start()

    def _split_ended(self, split: SplitController) -> None:
        """A split controller finished (done or aborted): its controllers and the map follow."""
        self.split_controllers.pop(split.parent, None)
        self.splits_ended[split.parent] = split
        if self._closed:
            return
        if split.outcome == "done":
            for child in split.children:
                self._add_shard(split.namespace, child, elect=False)
            sc = self.shard_controllers.get(split.parent)
            if sc is not None:
                sc.request_delete()
        self.assignments_updated()

    async def wait_split(self, parent: int, timeout: float = 60.0) -> str:
        """Waits for the split of ``parent`` to end; returns "done" or "aborted"."""
        split = self.split_controllers.get(parent) or self.splits_ended.get(parent)
        if split is None:
            raise InvalidArgument(f"oxia: shard {parent} has no split")
        try:
            await asyncio.wait_for(split.ended.wait(), timeout)
        except TimeoutError:
            raise ResourceUnavailable(
                f"oxia: the split of shard {parent} did not end within {timeout:g}s"
            ) from None
        if split.outcome is None:
            raise ResourceUnavailable(f"oxia: the split of shard {parent} was interrupted")
        return split.outcome
