"""The coordinator's controller of one shard: elections, followers,
ensemble changes and deletion, one at a time on the shard's own task.

An election (Oxia's): the new term is persisted first; NewTerm goes to the
ensemble plus the nodes being removed; once a majority answered, stragglers
that are still alive get a short grace period; the leader is the ensemble
member with the highest head (term, then offset), ties to the node leading
the fewest shards; BecomeLeader carries the other responders' heads; the new
status (leader, term, SteadyState) is persisted and the assignments pushed;
members that did not answer are fenced and added as followers in the
background as soon as they come back.

A planned election (a leader move by the balancer or ``MoveLeader``, an ensemble change, a
server leaving) first asks the current leader to step down (``Handoff/StepDown``): it stops
taking writes, answering them with a retryable NODE_IS_NOT_LEADER, and finishes what it logged,
so the new term starts with nothing in flight and no client sees an error. If the step-down
fails or times out the election goes on as an unplanned one (writes still in flight are then
answered WRITE_INDETERMINATE). Any unplanned request (a failure) cancels a pending planned one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from pyxia.common.channels import ChannelPool
from pyxia.common.handoff_protocol import STEP_DOWN
from pyxia.common.instance_id import CallMetadata
from pyxia.common.signals import Signal
from pyxia.config import NamespaceConfig
from pyxia.coordinator.coordination_rpc import RPC_TIMEOUT_S, coordination_call, term_options
from pyxia.coordinator.election import Head, choose_leader, majority
from pyxia.coordinator.metrics import ShardElectionMetrics
from pyxia.coordinator.model import DELETING, ELECTION, STEADY, PendingLeaders
from pyxia.coordinator.split_rules import parent_fenced
from pyxia.errors import InvalidStatus, MetadataBadVersion, PyxiaError
from pyxia.proto import admin_pb2, metadata_pb2, replication_pb2

log = logging.getLogger("pyxia.coordinator.shard")

GRACE_PERIOD = 0.1
HANDOFF_DRAIN_S = 5.0
"""How long a planned election waits for the leader to finish its logged writes."""


class ShardCoordinator(Protocol):
    """What a shard controller uses of the coordinator that owns it
    (:class:`pyxia.coordinator.coordinator.Coordinator` satisfies it; this module never imports
    that one, which builds the shard controllers)."""

    status: metadata_pb2.ClusterStatus
    """The cluster status last stored (read only here: changes go through update_shard)."""
    channels: ChannelPool
    leaving: set[str]
    """Servers being drained: no leadership goes to them."""
    pending_leaders: PendingLeaders
    """Leaders chosen by elections not yet stored, by shard (counted by leader_counts)."""
    verify_slots: asyncio.Semaphore
    """Held while a shard checks its ensemble: bounds the shards checking at once."""

    def call_metadata(self) -> CallMetadata: ...

    def call_slots(self, node: str) -> asyncio.Semaphore:
        """Bounds the coordination calls in flight to ``node``."""
        ...

    async def ensure_bound(self, node: str) -> None:
        """Handshakes ``node`` (the cluster's instance id) unless it already is."""
        ...

    def forget_binding(self, node: str) -> None: ...

    def namespace_config(self, name: str) -> NamespaceConfig | None: ...

    def is_available(self, node: str) -> bool: ...

    def leader_counts(self) -> dict[str, int]: ...

    async def update_shard(
        self, namespace: str, shard: int, fn: Callable[[metadata_pb2.ShardMetadata], None]
    ) -> None:
        """Stores the status with ``fn`` applied to the shard's metadata (compare-and-set)."""
        ...

    async def remove_shard(self, namespace: str, shard: int) -> None: ...

    def assignments_updated(self) -> None:
        """Pushes the new assignments to the servers and clients."""
        ...


class ShardController:
    def __init__(
        self,
        coordinator: ShardCoordinator,
        namespace: str,
        shard: int,
        *,
        per_shard_metrics: bool = True,
    ) -> None:
        self.c = coordinator
        self.namespace = namespace
        self.shard = shard
        self._wake = Signal()
        self._elect_requested = True
        self._verify_requested = False
        self._followers_to_add: set[str] = set()
        self._delete_requested = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Set by the leader balancer: take this member if its head allows.
        self.prefer_leader: str | None = None
        # Set with a planned move away from a leader (a server leaving, MoveLeader to anyone).
        self.avoid_leader: str | None = None
        # The next election is planned: the leader steps down first.
        self._planned = False
        self.handoffs = 0
        self.handoffs_drained = 0
        self.elections = 0
        self._fence_seconds = 0.0
        self.last_election_seconds = 0.0
        self.metrics = ShardElectionMetrics(namespace, shard, per_shard=per_shard_metrics)

    @property
    def meta(self) -> metadata_pb2.ShardMetadata:
        return self.c.status.namespaces[self.namespace].shards[self.shard]

    def start(self, *, elect: bool) -> None:
        self.metrics.term.set(self.meta.term)
        self._elect_requested = elect
        self._verify_requested = not elect
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"shard-controller-{self.shard}"
        )

    async def close(self) -> None:
        self._closed = True
        self.metrics.close()
        self._wake.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # -- events -----------------------------------------------------------------------------------

    def request_election(self, *, planned: bool = False) -> None:
        """An election soon; ``planned``: a move made on purpose (the leader hands over
        first). An unplanned request wins over a pending planned one."""
        self._planned = planned and (self._planned or not self._elect_requested)
        self._elect_requested = True
        self._wake.notify()

    def request_move(self, *, prefer: str | None = None, avoid: str | None = None) -> None:
        """A planned leader move: to ``prefer`` if its head allows, away from ``avoid``."""
        self.prefer_leader = prefer
        self.avoid_leader = avoid
        self.request_election(planned=True)

    def has_member(self, node: str) -> bool:
        """Whether ``node`` holds a replica of the shard (per the stored status)."""
        shards = self.c.status.namespaces.get(self.namespace)
        meta = shards.shards.get(self.shard) if shards is not None else None
        return meta is not None and any(m.internal == node for m in meta.ensemble)

    def request_verify(self) -> None:
        self._verify_requested = True
        self._wake.notify()

    def request_delete(self) -> None:
        self._delete_requested = True
        self._wake.notify()

    def node_unavailable(self, node: str) -> None:
        meta = self.meta
        if meta.status != DELETING and meta.HasField("leader") and meta.leader.internal == node:
            log.info("shard %d: leader %s is unavailable, electing", self.shard, node)
            self.request_election()

    def replica_failed(self, node: str, event: admin_pb2.ShardEvent) -> None:
        """``node`` reported that its replica of this shard failed on its own."""
        meta = self.meta
        if meta.status == DELETING:
            return
        if meta.HasField("leader") and meta.leader.internal == node and event.term == meta.term:
            log.info("shard %d: leader %s failed (%s), electing", self.shard, node, event.reason)
            self.request_election()
        else:
            self.request_verify()

    def replica_leaving(self, node: str, event: admin_pb2.ShardEvent) -> None:
        """``node``, shutting down gracefully, asks for its leadership to be moved away."""
        meta = self.meta
        if (
            meta.status == STEADY
            and meta.HasField("leader")
            and meta.leader.internal == node
            and event.term == meta.term
        ):
            log.info("shard %d: leader %s is shutting down: moving away", self.shard, node)
            self.request_move(avoid=node)

    def node_available(self, node: str) -> None:
        meta = self.meta
        if meta.status == STEADY and any(m.internal == node for m in meta.ensemble):
            if not (meta.HasField("leader") and meta.leader.internal == node):
                self._followers_to_add.add(node)
                self._wake.notify()
        elif meta.status == STEADY and not meta.HasField("leader"):
            # Leaderless but not electing (an election in progress will see
            # the node by itself): elect now that a member is back.
            self.request_election()

    # -- the shard's task -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            seen = self._wake.generation
            try:
                if self._delete_requested or self.meta.status == DELETING:
                    await self._delete()
                    return
                if parent_fenced(self.meta):
                    # A split past its point of no return owns this shard until it ends.
                    self._elect_requested = self._verify_requested = False
                    self._followers_to_add.clear()
                    await self._wake.wait(seen, 1.0)
                    continue
                if self._elect_requested:
                    self._elect_requested = False
                    await self._measured_election()
                    backoff = 0.05
                    continue
                if self._verify_requested:
                    self._verify_requested = False
                    async with self.c.verify_slots:
                        await self._verify()
                    continue
                if self._followers_to_add:
                    node = self._followers_to_add.pop()
                    if not await self._add_follower(node):
                        self._followers_to_add.add(node)
                        await self._wake.wait(seen, 1.0)
                    continue
            except asyncio.CancelledError:
                raise
            except MetadataBadVersion:
                return  # leadership lost: the coordinator is being rebuilt
            except Exception as e:
                log.warning("shard %d: %s; retrying", self.shard, e)
                self._elect_requested = True
                await self._wake.wait(seen, backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            await self._wake.wait(seen, 60.0)
            if not self._closed and self._wake.generation == seen:
                self._verify_requested = True  # periodic check

    # -- RPCs -------------------------------------------------------------------------------------

    async def _call(
        self, node: str, method: str, req: object, resp_type: type, timeout: float = RPC_TIMEOUT_S
    ) -> object:
        """One coordination call to ``node`` (see :mod:`.coordination_rpc`)."""
        return await coordination_call(self.c, node, method, req, resp_type, timeout)

    def _term_options(self) -> replication_pb2.NewTermOptions:
        return term_options(self.c.namespace_config(self.namespace))

    async def _new_term(self, node: str, term: int) -> Head:
        res = await self._call(
            node,
            "NewTerm",
            replication_pb2.NewTermRequest(
                namespace=self.namespace, shard=self.shard, term=term, options=self._term_options()
            ),
            replication_pb2.NewTermResponse,
        )
        h = res.head_entry_id  # type: ignore[attr-defined]
        return Head(h.term, h.offset)

    # -- election ---------------------------------------------------------------------------------

    async def _hand_off(self) -> None:
        """The first step of a planned election: the leader stops taking writes and finishes
        what it logged. A failure only makes the election an unplanned one."""
        meta = self.meta
        if meta.status != STEADY or not meta.HasField("leader"):
            return
        leader = meta.leader.internal
        if not self.c.is_available(leader):
            return
        started = time.monotonic()
        self.handoffs += 1
        try:
            res = await self._call(
                leader,
                STEP_DOWN,
                admin_pb2.StepDownRequest(
                    namespace=self.namespace,
                    shard=self.shard,
                    term=meta.term,
                    drain_timeout_ms=int(HANDOFF_DRAIN_S * 1000),
                ),
                admin_pb2.StepDownResponse,
                timeout=HANDOFF_DRAIN_S + 2.0,
            )
        except Exception as e:
            log.info(
                "shard %d: %s did not step down from term %d (%s); electing anyway",
                self.shard,
                leader,
                meta.term,
                e,
            )
            return
        assert isinstance(res, admin_pb2.StepDownResponse)
        if res.drained:
            self.handoffs_drained += 1
        log.info(
            "shard %d: %s stepped down from term %d at %d/%d (%s) in %.0f ms",
            self.shard,
            leader,
            meta.term,
            res.head_term,
            res.head_offset,
            "drained" if res.drained else "NOT drained",
            (time.monotonic() - started) * 1000,
        )

    async def _measured_election(self) -> None:
        """:meth:`_elect`, timed (Oxia's election metrics); a failure is counted."""
        started = time.perf_counter()
        try:
            await self._elect()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.failed.inc()
            raise
        self.metrics.latency.observe((time.perf_counter() - started) * 1000.0)

    async def _elect(self) -> None:
        planned, self._planned = self._planned, False
        if planned:
            await self._hand_off()
        started = time.monotonic()
        meta = self.meta
        term = meta.term + 1

        def start_election(m: metadata_pb2.ShardMetadata) -> None:
            m.status = ELECTION
            m.term = term
            m.ClearField("leader")

        await self.c.update_shard(self.namespace, self.shard, start_election)
        ensemble = [m.internal for m in self.meta.ensemble]
        removed = [m.internal for m in self.meta.removed_nodes]
        targets = list(dict.fromkeys(ensemble + removed))
        heads = await self._fence(targets, term)
        self._fence_seconds = time.monotonic() - started
        self.metrics.new_term_quorum.observe(self._fence_seconds * 1000.0)
        ens_heads = {n: h for n, h in heads.items() if n in ensemble}
        if len(ens_heads) < majority(len(ensemble)):
            raise PyxiaError(
                f"shard {self.shard}: only {len(ens_heads)} of {len(ensemble)} "
                f"ensemble members answered NewTerm for term {term}"
            )
        prefer, self.prefer_leader = self.prefer_leader, None
        avoid = set(self.c.leaving)
        if self.avoid_leader is not None:
            avoid.add(self.avoid_leader)
            self.avoid_leader = None
        leader = choose_leader(
            ens_heads, ensemble, self.c.leader_counts(), prefer=prefer, avoid=avoid
        )
        assert leader is not None
        self.c.pending_leaders[self.shard] = leader
        try:
            await self._become_leader(leader, term, ensemble, ens_heads)
        finally:
            self.c.pending_leaders.pop(self.shard, None)

    async def _become_leader(
        self, leader: str, term: int, ensemble: list[str], ens_heads: dict[str, Head]
    ) -> None:
        started = time.monotonic()
        followers = {
            n: replication_pb2.EntryId(term=h.term, offset=h.offset)
            for n, h in ens_heads.items()
            if n != leader
        }
        await self._call(
            leader,
            "BecomeLeader",
            replication_pb2.BecomeLeaderRequest(
                namespace=self.namespace,
                shard=self.shard,
                term=term,
                replication_factor=len(ensemble),
                follower_maps=followers,
            ),
            replication_pb2.BecomeLeaderResponse,
            timeout=60,
        )
        by_internal = {m.internal: m for m in self.meta.ensemble}

        def finish(m: metadata_pb2.ShardMetadata) -> None:
            m.status = STEADY
            m.leader.CopyFrom(by_internal[leader])
            m.pending_delete_shard_nodes.extend(m.removed_nodes)
            del m.removed_nodes[:]

        await self.c.update_shard(self.namespace, self.shard, finish)
        self.metrics.become_leader.observe((time.monotonic() - started) * 1000.0)
        self.metrics.term.set(term)
        self.c.assignments_updated()
        self.elections += 1
        self.last_election_seconds = time.monotonic() - started + self._fence_seconds
        log.info(
            "shard %d: %s leads term %d (election took %.0f ms)",
            self.shard,
            leader,
            term,
            self.last_election_seconds * 1000,
        )
        # Members that did not answer follow as soon as they are back.
        for n in ensemble:
            if n != leader and n not in ens_heads:
                self._followers_to_add.add(n)
        for gone in list(self.meta.pending_delete_shard_nodes):
            asyncio.get_running_loop().create_task(self._delete_on(gone.internal, term))

    async def _fence(self, targets: list[str], term: int) -> dict[str, Head]:
        """NewTerm to every target; returns once a majority answered and
        the still-reachable stragglers had a grace period."""
        heads: dict[str, Head] = {}
        failed: set[str] = set()
        done = asyncio.Event()
        need = majority(len(targets))

        async def one(node: str) -> None:
            try:
                heads[node] = await self._new_term(node, term)
            except Exception as e:
                failed.add(node)
                log.debug("shard %d: NewTerm(%d) on %s failed: %s", self.shard, term, node, e)
            if len(heads) >= need or len(heads) + len(failed) == len(targets):
                done.set()

        tasks = [asyncio.get_running_loop().create_task(one(n)) for n in targets]
        try:
            await done.wait()
            if len(heads) >= need and len(heads) + len(failed) < len(targets):
                # Stragglers that are alive get a short grace period.
                await asyncio.wait([t for t in tasks if not t.done()], timeout=GRACE_PERIOD)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
        return dict(heads)

    async def _add_follower(self, node: str) -> bool:
        meta = self.meta
        if meta.status != STEADY or not meta.HasField("leader"):
            return True
        if not self.c.is_available(node):
            return False
        try:
            try:
                head = await self._new_term(node, meta.term)
            except InvalidStatus:
                # Already following this term (its cursor reconnected).
                return True
            await self._call(
                meta.leader.internal,
                "AddFollower",
                replication_pb2.AddFollowerRequest(
                    namespace=self.namespace,
                    shard=self.shard,
                    term=meta.term,
                    follower_name=node,
                    follower_head_entry_id=replication_pb2.EntryId(
                        term=head.term, offset=head.offset
                    ),
                ),
                replication_pb2.AddFollowerResponse,
            )
            log.info("shard %d: %s follows again at term %d", self.shard, node, meta.term)
            return True
        except PyxiaError as e:
            log.info("shard %d: adding follower %s failed: %s", self.shard, node, e)
            return False

    async def _verify(self) -> None:
        """Checks that the ensemble is what the status says; re-elects if
        the leader is not leading this term."""
        meta = self.meta
        if meta.status != STEADY or not meta.HasField("leader"):
            self._elect_requested = True
            return
        try:
            st = await self._call(
                meta.leader.internal,
                "GetStatus",
                replication_pb2.GetStatusRequest(shard=self.shard),
                replication_pb2.GetStatusResponse,
                timeout=5,
            )
        except PyxiaError:
            self._elect_requested = True
            return
        if st.status != replication_pb2.LEADER or st.term != meta.term:  # type: ignore[attr-defined]
            self._elect_requested = True
            return
        for m in meta.ensemble:
            if m.internal == meta.leader.internal:
                continue
            try:
                fs = await self._call(
                    m.internal,
                    "GetStatus",
                    replication_pb2.GetStatusRequest(shard=self.shard),
                    replication_pb2.GetStatusResponse,
                    timeout=5,
                )
                ok = fs.status == replication_pb2.FOLLOWER and fs.term == meta.term  # type: ignore[attr-defined]
            except PyxiaError:
                ok = False
            if not ok:
                self._followers_to_add.add(m.internal)

    # -- deletion ---------------------------------------------------------------------------------

    async def _delete_on(self, node: str, term: int) -> None:
        try:
            await self._call(
                node,
                "DeleteShard",
                replication_pb2.DeleteShardRequest(
                    namespace=self.namespace, shard=self.shard, term=term
                ),
                replication_pb2.DeleteShardResponse,
            )
        except PyxiaError as e:
            log.info("shard %d: DeleteShard on %s: %s", self.shard, node, e)
            return

        def forget(m: metadata_pb2.ShardMetadata) -> None:
            keep = [x for x in m.pending_delete_shard_nodes if x.internal != node]
            del m.pending_delete_shard_nodes[:]
            m.pending_delete_shard_nodes.extend(keep)

        try:
            await self.c.update_shard(self.namespace, self.shard, forget)
        except (KeyError, MetadataBadVersion):
            pass

    async def _delete(self) -> None:
        meta = self.meta
        nodes = {m.internal for m in meta.ensemble} | {
            m.internal for m in meta.pending_delete_shard_nodes
        }
        term = max(meta.term, 0)
        for node in sorted(nodes):
            while not self._closed:
                try:
                    await self._call(
                        node,
                        "DeleteShard",
                        replication_pb2.DeleteShardRequest(
                            namespace=self.namespace, shard=self.shard, term=term
                        ),
                        replication_pb2.DeleteShardResponse,
                    )
                    break
                except PyxiaError as e:
                    if not self.c.is_available(node):
                        break  # it deletes what it holds when it comes back unknown
                    log.info("shard %d: DeleteShard on %s: %s", self.shard, node, e)
                    await asyncio.sleep(0.5)
        await self.c.remove_shard(self.namespace, self.shard)
        self.c.assignments_updated()
