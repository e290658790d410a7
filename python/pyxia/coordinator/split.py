"""The coordinator's controller of one shard split: drives the phases of ``split_rules`` with
the data servers' internal RPCs (NewTerm, AddFollower as observer, GetStatus, FreezeShard,
RemoveObserver, BecomeLeader, DeleteShard), persisting each phase in the cluster status before
acting on it.

It owns its task; a step that fails is retried with backoff until the split's deadline. Past
the deadline, a split that has not reached its point of no return is aborted (the children
dropped, the parent thawed and serving); one that has goes on until it finishes, whatever it
takes (the parent is fenced: only the children can serve its keys). A coordinator that takes
over starts a new controller for every split in its status (with a fresh deadline): it resumes
from the persisted phase. Losing a compare-and-set ends the controller at once (the coordinator
is stepping down; its successor resumes).

Timings of each phase are kept in ``phase_seconds`` (logged when the split ends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pyxia.common.channels import ChannelPool
from pyxia.common.instance_id import CallMetadata
from pyxia.config import NamespaceConfig
from pyxia.coordinator import split_rules as rules
from pyxia.coordinator.coordination_rpc import RPC_TIMEOUT_S, coordination_call, term_options
from pyxia.coordinator.election import majority
from pyxia.coordinator.model import ELECTION, STEADY
from pyxia.errors import (
    InvalidStatus,
    MetadataBadVersion,
    PyxiaError,
    ResourceUnavailable,
)
from pyxia.failpoints import afailpoint
from pyxia.proto import client_pb2, metadata_pb2, replication_pb2

log = logging.getLogger("pyxia.coordinator.split")

T = TypeVar("T")


class SplitCoordinator(Protocol):
    """What a split controller uses of the coordinator that owns it
    (:class:`pyxia.coordinator.coordinator.Coordinator` satisfies it; this module never imports
    that one, which builds the split controllers)."""

    status: metadata_pb2.ClusterStatus
    channels: ChannelPool

    def call_metadata(self) -> CallMetadata: ...

    async def ensure_bound(self, node: str) -> None: ...

    def forget_binding(self, node: str) -> None: ...

    def call_slots(self, node: str) -> asyncio.Semaphore: ...

    def leader_counts(self) -> dict[str, int]: ...

    def namespace_config(self, name: str) -> NamespaceConfig | None: ...

    async def update_status(self, fn: Callable[[metadata_pb2.ClusterStatus], T]) -> T: ...

    def assignments_updated(self) -> None: ...


DEFAULT_SPLIT_TIMEOUT_S = 300.0
"""Oxia's default: a split that has not cut over within 5 minutes is aborted."""
CATCH_UP_ROUND_S = 10.0
"""A catch-up round waits this long for the children, then looks at the parent again."""
POLL_S = 0.05

DONE = "done"
ABORTED = "aborted"


class SplitController:
    """Drives the split of ``parent`` in ``namespace`` to its end."""

    def __init__(
        self,
        coordinator: SplitCoordinator,
        namespace: str,
        parent: int,
        *,
        timeout: float = DEFAULT_SPLIT_TIMEOUT_S,
        on_end: Callable[[SplitController], None] | None = None,
    ) -> None:
        self.c = coordinator
        self.namespace = namespace
        self.parent = parent
        self.timeout = timeout
        self._on_end = on_end
        self.children: tuple[int, int] = tuple(self._meta().split.child_shard_ids)  # type: ignore[assignment]
        self.outcome: str | None = None
        self.ended = asyncio.Event()
        self.phase_seconds: dict[str, float] = {}
        # How long the parent refused writes (frozen, then fenced) before the children served.
        self.frozen_seconds: float | None = None
        self._frozen_at: float | None = None
        self._snapshot_followers: dict[int, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"split-{self.namespace}-{self.parent}"
        )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.ended.set()

    # -- status -----------------------------------------------------------------------------------

    def _meta(self, shard: int | None = None) -> metadata_pb2.ShardMetadata:
        ns = self.c.status.namespaces[self.namespace]
        return ns.shards[self.parent if shard is None else shard]

    def _has(self, shard: int) -> bool:
        ns = self.c.status.namespaces.get(self.namespace)
        return ns is not None and shard in ns.shards

    async def _update(self, fn: Callable[[metadata_pb2.ClusterStatus], Any]) -> Any:
        return await self.c.update_status(fn)

    async def _set_phase(self, phase: int) -> None:
        await self._update(lambda st: rules.set_phase(st, self.namespace, self.parent, phase))
        log.info("split of shard %d: phase %s", self.parent, rules.phase_name(phase))

    # -- the task ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        backoff = 0.05
        try:
            while not self._closed:
                if not self._has(self.parent) or not rules.is_split_parent(self._meta()):
                    return
                meta = self._meta()
                if rules.parent_fenced(meta):
                    await self._complete()
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    await self._abort()
                    return
                phase = meta.split.phase
                started = time.monotonic()
                try:
                    async with asyncio.timeout(left):
                        if phase == rules.BOOTSTRAP:
                            await self._bootstrap()
                        elif phase == rules.CATCH_UP:
                            await self._catch_up()
                        else:
                            await self._cutover()
                    backoff = 0.05
                except TimeoutError:
                    continue  # the deadline: the loop aborts (or completes, past the fence)
                except MetadataBadVersion:
                    return  # stepping down: the next coordinator resumes
                except Exception as e:
                    log.info("split of shard %d: %s; retrying", self.parent, e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                finally:
                    name = rules.phase_name(phase)
                    self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + (
                        time.monotonic() - started
                    )
        finally:
            if self.outcome == DONE:
                log.info(
                    "split of shard %d done: children %d and %d serve (phases: %s; writes "
                    "refused for %s)",
                    self.parent,
                    *self.children,
                    ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.phase_seconds.items()),
                    "?" if self.frozen_seconds is None else f"{self.frozen_seconds * 1000:.0f} ms",
                )
            self.ended.set()
            if self._on_end is not None and self.outcome is not None:
                self._on_end(self)

    # -- RPCs -------------------------------------------------------------------------------------

    async def _call(
        self, node: str, method: str, req: Any, resp_type: Any, timeout: float = RPC_TIMEOUT_S
    ) -> Any:
        """One coordination call to ``node`` (see :mod:`.coordination_rpc`)."""
        return await coordination_call(self.c, node, method, req, resp_type, timeout)

    def _options(self) -> replication_pb2.NewTermOptions:
        return term_options(self.c.namespace_config(self.namespace))

    async def _new_term(self, node: str, shard: int, term: int) -> replication_pb2.EntryId | None:
        """Fences ``node``'s replica of ``shard`` at ``term``: its head, ``{-1, -1}`` if it is
        past the fence at this term already (following it), None if it did not answer."""
        try:
            res = await self._call(
                node,
                "NewTerm",
                replication_pb2.NewTermRequest(
                    namespace=self.namespace, shard=shard, term=term, options=self._options()
                ),
                replication_pb2.NewTermResponse,
            )
            head: replication_pb2.EntryId = res.head_entry_id
            return head
        except InvalidStatus:
            return replication_pb2.EntryId(term=-1, offset=-1)
        except PyxiaError as e:
            log.debug("split of %d: NewTerm(%d, %d) on %s: %s", self.parent, shard, term, node, e)
            return None

    async def _fence_all(
        self, shard: int, term: int, members: list[str]
    ) -> dict[str, replication_pb2.EntryId]:
        heads = await asyncio.gather(*(self._new_term(m, shard, term) for m in members))
        return {m: h for m, h in zip(members, heads, strict=True) if h is not None}

    async def _replica(self, node: str, shard: int) -> rules.ChildReplica | None:
        try:
            st = await self._call(
                node,
                "GetStatus",
                replication_pb2.GetStatusRequest(shard=shard),
                replication_pb2.GetStatusResponse,
                timeout=5,
            )
        except PyxiaError:
            return None
        return rules.ChildReplica(st.term, st.split_parent_term, st.head_offset)

    async def _replicas(self, shard: int) -> dict[str, rules.ChildReplica | None]:
        members = [m.internal for m in self._meta(shard).ensemble]
        got = await asyncio.gather(*(self._replica(m, shard) for m in members))
        return dict(zip(members, got, strict=True))

    def _parent_leader(self) -> tuple[str, int]:
        meta = self._meta()
        if meta.status != STEADY or not meta.HasField("leader"):
            raise ResourceUnavailable(f"oxia: split parent {self.parent} has no leader now")
        return meta.leader.internal, meta.term

    def _stale(self) -> bool:
        """The parent's term moved since Bootstrap (a new leader): the observers are gone."""
        meta = self._meta()
        return (
            meta.status != STEADY
            or not meta.HasField("leader")
            or meta.term != meta.split.parent_term_at_bootstrap
        )

    # -- phases -----------------------------------------------------------------------------------

    async def _bootstrap(self) -> None:
        leader, term = self._parent_leader()

        def record(st: metadata_pb2.ClusterStatus) -> None:
            ns = st.namespaces[self.namespace]
            ns.shards[self.parent].split.parent_term_at_bootstrap = term
            for child in self.children:
                ns.shards[child].term = term

        await self._update(record)
        for child in self.children:
            members = [m.internal for m in self._meta(child).ensemble]
            fenced = await self._fence_all(child, term, members)
            if len(fenced) < majority(len(members)):
                raise ResourceUnavailable(
                    f"oxia: only {len(fenced)} of {len(members)} replicas of split child "
                    f"{child} answered NewTerm"
                )
            r = self._meta(child).int32_hash_range
            for m in fenced:
                await self._call(
                    leader,
                    "AddFollower",
                    replication_pb2.AddFollowerRequest(
                        namespace=self.namespace,
                        shard=self.parent,
                        term=term,
                        follower_name=m,
                        follower_head_entry_id=replication_pb2.EntryId(term=-1, offset=-1),
                        observer=True,
                        target_shard=child,
                        split_hash_range=client_pb2.Int32HashRange(
                            min_hash_inclusive=r.min, max_hash_inclusive=r.max
                        ),
                    ),
                    replication_pb2.AddFollowerResponse,
                )
        await afailpoint("split.after_bootstrap")
        await self._set_phase(rules.CATCH_UP)

    async def _children_hold(self, term: int, target: int, round_s: float) -> bool:
        """Waits up to ``round_s`` for a majority of each child to count at ``target``."""
        end = time.monotonic() + round_s
        while True:
            if self._stale():
                return False
            held = True
            for child in self.children:
                members = [m.internal for m in self._meta(child).ensemble]
                if not rules.majority_holds(await self._replicas(child), members, term, target):
                    held = False
                    break
            if held:
                return True
            if time.monotonic() >= end or self._closed:
                return False
            await asyncio.sleep(POLL_S)

    async def _catch_up(self) -> None:
        while not self._closed:
            if self._stale():
                await self._set_phase(rules.BOOTSTRAP)
                return
            leader, term = self._parent_leader()
            st = await self._call(
                leader,
                "GetStatus",
                replication_pb2.GetStatusRequest(shard=self.parent),
                replication_pb2.GetStatusResponse,
                timeout=5,
            )
            if await self._children_hold(term, st.commit_offset, CATCH_UP_ROUND_S):
                await afailpoint("split.after_catch_up")
                await self._set_phase(rules.CUTOVER)
                return

    async def _freeze(self, leader: str, term: int, frozen: bool) -> int:
        res = await self._call(
            leader,
            "FreezeShard",
            replication_pb2.FreezeShardRequest(
                namespace=self.namespace, shard=self.parent, term=term, frozen=frozen
            ),
            replication_pb2.FreezeShardResponse,
        )
        return int(res.head_offset)

    async def _thaw(self) -> None:
        """Best effort: a new term of the parent thaws it anyway."""
        meta = self._meta()
        if not meta.HasField("leader"):
            return
        try:
            await self._freeze(meta.leader.internal, meta.term, False)
        except PyxiaError as e:
            log.info("split of shard %d: thawing the parent: %s", self.parent, e)

    async def _cutover(self) -> None:
        if self._stale():
            await self._thaw()
            await self._set_phase(rules.BOOTSTRAP)
            return
        leader, term = self._parent_leader()
        head = await self._freeze(leader, term, True)
        if self._frozen_at is None:
            self._frozen_at = time.monotonic()
        log.info("split of shard %d: parent frozen at offset %d", self.parent, head)
        while not await self._children_hold(term, head, CATCH_UP_ROUND_S):
            if self._stale():
                self._frozen_at = None
                await self._thaw()
                await self._set_phase(rules.BOOTSTRAP)
                return
            if self._closed:
                return
        await afailpoint("split.before_fence")

        # The point of no return: the parent's fencing term, persisted before it is sent.
        def fence(st: metadata_pb2.ClusterStatus) -> None:
            p = st.namespaces[self.namespace].shards[self.parent]
            p.term = term + 1
            p.status = ELECTION
            p.ClearField("leader")
            p.split.snapshot_offset = head  # the parent's final head

        await self._update(fence)
        self.c.assignments_updated()
        log.info(
            "split of shard %d: parent fenced at term %d (final head %d)",
            self.parent,
            term + 1,
            head,
        )
        await afailpoint("split.after_fence")
        await self._complete()

    async def _complete(self) -> None:
        """After the point of no return: fences the parent, elects the children, publishes
        them. Retries until done (no deadline: only the children can serve the keys now)."""
        backoff = 0.05
        while not self._closed:
            try:
                await self._complete_once()
                return
            except MetadataBadVersion:
                raise
            except Exception as e:
                log.info("split of shard %d: completing: %s; retrying", self.parent, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _complete_once(self) -> None:
        meta = self._meta()
        fence_term = meta.term
        parent_term = meta.split.parent_term_at_bootstrap
        head = meta.split.snapshot_offset
        members = [m.internal for m in meta.ensemble]
        fenced = await self._fence_all(self.parent, fence_term, members)
        if len(fenced) < majority(len(members)):
            raise ResourceUnavailable(
                f"oxia: only {len(fenced)} of {len(members)} replicas of split parent "
                f"{self.parent} answered NewTerm"
            )
        await asyncio.gather(*(self._elect_child(c, parent_term, head) for c in self.children))
        await afailpoint("split.before_publish")

        def publish(st: metadata_pb2.ClusterStatus) -> None:
            rules.finish(st, self.namespace, self.parent)

        await self._update(publish)
        self.outcome = DONE
        if self._frozen_at is not None:
            self.frozen_seconds = time.monotonic() - self._frozen_at

    async def _elect_child(self, child: int, parent_term: int, head: int) -> None:
        meta = self._meta(child)
        if meta.status == STEADY and meta.HasField("leader"):
            return  # elected before a coordinator change
        members = [m.internal for m in meta.ensemble]
        replicas = await self._replicas(child)
        eligible = {
            m: r
            for m, r in replicas.items()
            if r is not None and rules.counted_after_fence(r, parent_term, head)
        }
        term = max(meta.term, parent_term) + 1

        def start(st: metadata_pb2.ClusterStatus) -> None:
            m = st.namespaces[self.namespace].shards[child]
            m.term = term
            m.status = ELECTION
            m.ClearField("leader")

        await self._update(start)
        fenced = await self._fence_all(child, term, members)
        if len(fenced) < majority(len(members)):
            raise ResourceUnavailable(
                f"oxia: only {len(fenced)} of {len(members)} replicas of split child {child} "
                "answered NewTerm"
            )
        candidates = [m for m in fenced if m in eligible]
        if not candidates:
            raise ResourceUnavailable(
                f"oxia: no replica of split child {child} that holds the parent's head {head} "
                "answered"
            )
        counts = self.c.leader_counts()
        leader = min(candidates, key=lambda m: (-eligible[m].head_offset, counts.get(m, 0), m))
        # A counted follower holds a prefix of the parent's final log (seeded by its last
        # leader): it keeps it. Any other starts over from the leader's snapshot: a replica
        # seeded by an earlier leader of the parent may hold a tail the parent's log no longer
        # has. After a failed attempt (a leader whose log is only a snapshot cannot check a
        # follower's entries), every follower starts over.
        empty = replication_pb2.EntryId(term=-1, offset=-1)
        followers = {
            m: h if m in eligible and not self._snapshot_followers.get(child) else empty
            for m, h in fenced.items()
            if m != leader
        }
        try:
            await self._call(
                leader,
                "BecomeLeader",
                replication_pb2.BecomeLeaderRequest(
                    namespace=self.namespace,
                    shard=child,
                    term=term,
                    replication_factor=len(members),
                    follower_maps=followers,
                ),
                replication_pb2.BecomeLeaderResponse,
                timeout=120,
            )
        except PyxiaError:
            self._snapshot_followers[child] = True
            raise
        by_internal = {m.internal: m for m in meta.ensemble}

        def done(st: metadata_pb2.ClusterStatus) -> None:
            m = st.namespaces[self.namespace].shards[child]
            m.status = STEADY
            m.leader.CopyFrom(by_internal[leader])

        await self._update(done)
        log.info(
            "split of shard %d: child %d led by %s at term %d", self.parent, child, leader, term
        )

    # -- abort ------------------------------------------------------------------------------------

    async def _abort(self) -> None:
        """Before the point of no return: the parent serves on, the children are dropped."""
        log.warning(
            "split of shard %d did not cut over within %.0fs: aborting", self.parent, self.timeout
        )
        meta = self._meta()
        if meta.HasField("leader"):
            for child in self.children:
                if not self._has(child):
                    continue
                for member in self._meta(child).ensemble:
                    try:
                        await self._call(
                            meta.leader.internal,
                            "RemoveObserver",
                            replication_pb2.RemoveObserverRequest(
                                namespace=self.namespace,
                                shard=self.parent,
                                term=meta.term,
                                follower_name=member.internal,
                                target_shard=child,
                            ),
                            replication_pb2.RemoveObserverResponse,
                        )
                    except PyxiaError as e:
                        log.info("split of shard %d: removing an observer: %s", self.parent, e)
        await self._thaw()
        replicas = {
            child: [m.internal for m in self._meta(child).ensemble]
            for child in self.children
            if self._has(child)
        }
        await self._update(lambda st: rules.abort(st, self.namespace, self.parent))
        self.outcome = ABORTED
        self.c.assignments_updated()
        for child, members in replicas.items():
            for m in members:
                try:
                    await self._call(
                        m,
                        "DeleteShard",
                        replication_pb2.DeleteShardRequest(
                            namespace=self.namespace, shard=child, term=self._term_for_delete()
                        ),
                        replication_pb2.DeleteShardResponse,
                    )
                except PyxiaError as e:
                    log.info(
                        "split of shard %d: deleting child %d on %s: %s", self.parent, child, m, e
                    )
        log.info("split of shard %d aborted: the parent serves on", self.parent)

    def _term_for_delete(self) -> int:
        # A child replica is at most at the parent's current term (fenced at it in Bootstrap).
        return max(self._meta().term, 0) + 1
