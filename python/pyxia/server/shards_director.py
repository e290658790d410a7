"""Which shard replicas this data server holds, and in which role.

Each shard has at most one controller: a :class:`LeaderController` (fenced
or leading) or a :class:`FollowerController`. Both work on the same
:class:`ShardStorage`, which the director owns. Roles change as Oxia's
director changes them: NewTerm goes to the existing controller (a leader
controller if there is none); BecomeLeader turns a follower into a leader;
Truncate, Replicate and SendSnapshot turn a leader controller into a
follower. Storage is opened on demand, recovering what is on disk.

A replica whose WAL or DB is found corrupt when opened does not take the
server's other shards down: its files are moved aside, the failure is
reported (ShardEvents), and it starts empty, marked as rebuilding, to be
rebuilt from the leader like a wiped follower; until it holds what was
committed it ranks below every replica in elections and refuses to lead.
Only a replica this server holds is ever opened, so only a held one is set
aside: its rebuilding, empty successor is held too (open, then on disk).

What may create a replica (open storage, make directories) is bounded, so no caller can make
the server allocate for shards it does not hold:

- a shard that is open here, or on disk here *in the namespace the request names*, is held;
- a new replica is created (NewTerm, SendSnapshot) only when the coordinator's latest pushed
  assignments know that shard id in that namespace (the coordinator publishes a shard, with
  no leader yet, before fencing it); a NewTerm that races the push waits for it up to
  :data:`ASSIGNMENT_WAIT_S`, and at most :data:`MAX_ASSIGNMENT_WAITERS` wait at once;
- at most ``max_shards`` replicas are open; creating one more is refused (RESOURCE_EXHAUSTED)
  before any file is touched. Replicas already on disk always open (they are this server's).
- a request naming a namespace other than the held replica's is refused; DeleteShard removes
  only ``<dir>/<namespace>/shard-<id>`` of a replica held here (a valid name: see
  ``shard_storage.shard_dir``), and is a no-op for one it does not hold.

:meth:`open_leader` is the trusted in-process path of standalone mode (its own coordinator).

A NewTerm is answered once the replica is fenced *and* this server's read-lease promise for the
shard lapsed (``read_lease.py``: a leader serving reads from its lease counts on it).

Replicas are opened in the director's worker threads, :data:`OPEN_CONCURRENCY` at a time
(RocksDB's open and the WAL's recovery release the GIL), each under its shard's lock; one
opened for a caller that went away, or while the server closed, is closed again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyxia.common.channels import ChannelPool
from pyxia.common.instance_id import CallMetadata
from pyxia.common.keys import HIERARCHICAL, KeyEncoding
from pyxia.common.signals import Signal
from pyxia.errors import (
    AlreadyClosed,
    InvalidArgument,
    InvalidStatus,
    InvalidTerm,
    NodeIsNotLeader,
    NodeIsNotMember,
    PyxiaError,
    ReplicaCorrupt,
    ResourceExhausted,
    ShardNotFound,
)
from pyxia.metrics import READ_LEASE_WAIT_SECONDS, READ_LEASE_WAITS, count_controllers
from pyxia.proto import replication_pb2
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.follower_controller import FollowerController
from pyxia.server.leader_controller import LEADER, LeaderController
from pyxia.server.read_lease import READ_LEASE_S, LeasePromises
from pyxia.server.shard_events import ShardFailures
from pyxia.server.shard_storage import ENCODING_MARKER, ShardStorage, StorageOptions, shard_dir
from pyxia.storage.db import TermOptions

log = logging.getLogger("pyxia.director")

_CLOSE_CONCURRENCY = 8
"""Shard replicas closed at a time when the server stops (each close flushes its DB)."""

OPEN_CONCURRENCY = 8
"""Shard replicas opened at a time, each in a worker thread (RocksDB's open and the WAL's
recovery release the GIL): a restart of 1,000 shards opened them one after another in the
event loop thread, about 10 ms each."""

Controller = LeaderController | FollowerController

DEFAULT_MAX_SHARDS = 4096
ASSIGNMENT_WAIT_S = 2.0
MAX_ASSIGNMENT_WAITERS = 64


def _no_metadata() -> CallMetadata:
    return ()


def _close_opened(fut: asyncio.Future[ShardStorage]) -> None:
    """Closes a replica whose opener was cancelled while a worker thread opened it."""
    if not fut.cancelled() and fut.exception() is None:
        try:
            fut.result().close()
        except Exception:
            log.exception("closing a replica opened for a cancelled caller")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardsDirector:
    """Owns the shard controllers (and their storage) of one data server."""

    def __init__(
        self,
        storage_options: StorageOptions,
        assignments: AssignmentsDispatcher,
        *,
        session_check_interval: float = 0.1,
        channels: ChannelPool | None = None,
        max_shards: int = DEFAULT_MAX_SHARDS,
        call_metadata: Callable[[], CallMetadata] = _no_metadata,
        rebuild_corrupt: bool = True,
        read_lease_s: float = READ_LEASE_S,
    ) -> None:
        self.storage_options = storage_options
        self.assignments = assignments
        self.max_shards = max_shards
        # The header proving this server's cluster on its calls to peers (replication).
        self.call_metadata = call_metadata
        self._assignment_waiters = 0
        self.channels = channels or ChannelPool()
        self.leaders: dict[int, LeaderController] = {}
        self.followers: dict[int, FollowerController] = {}
        # Read-lease promises this server's followers give (read_lease.py), and how many
        # NewTerm answers waited for one to lapse.
        self.lease_promises = LeasePromises(read_lease_s)
        self.lease_waits = 0
        count_controllers(lambda: len(self.leaders), lambda: len(self.followers))
        self._storages: dict[int, ShardStorage] = {}
        self._session_check_interval = session_check_interval
        self._locks: dict[int, asyncio.Lock] = {}
        self._closed = False
        # Replicas being opened in worker threads (counted against max_shards), the gate that
        # bounds them, and how many opened at once at most (a metric for tests and benches).
        self._opening = 0
        self._opens_running = 0
        self._open_gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        self._openers = ThreadPoolExecutor(OPEN_CONCURRENCY, thread_name_prefix="pyxia-open")
        self.max_concurrent_opens = 0
        # Notified by every leader controller on a leadership change (the TSO's fence).
        self.leadership = Signal()
        # Called by a leader that begins a planned step-down, before it refuses writes (the
        # TSO stops granting and logs its release marker there).
        self.before_step_down: list[Callable[[LeaderController], None]] = []
        # Replicas that failed on their own (storage), watched by the coordinator.
        self.failures = ShardFailures()
        # A replica found corrupt when opened is set aside and rebuilt from its peers (a
        # cluster server); without peers (standalone) the ReplicaCorrupt error is raised.
        self.rebuild_corrupt = rebuild_corrupt
        # Called with each shard storage opened (the retention keeper watches its WAL).
        self.storage_listeners: list[Callable[[ShardStorage], None]] = []

    # -- storage ----------------------------------------------------------------------------------

    def _lock(self, shard: int) -> asyncio.Lock:
        lock = self._locks.get(shard)
        if lock is None:
            lock = self._locks[shard] = asyncio.Lock()
        return lock

    def on_disk(self, namespace: str, shard: int) -> bool:
        return (
            shard_dir(self.storage_options.data_dir, namespace, shard) / ENCODING_MARKER
        ).exists()

    def _any_dir_on_disk(self, namespace: str, shard: int) -> bool:
        """Whether anything of the replica is on disk (its DB or its WAL directory, even
        half-created)."""
        opts = self.storage_options
        bases = (opts.data_dir, opts.wal_dir)
        return any(shard_dir(base, namespace, shard).exists() for base in bases)

    def holds(self, namespace: str, shard: int) -> bool:
        """Whether this server holds a replica of ``shard`` (open, or on disk in ``namespace``).
        An open replica of another namespace is refused: shard ids are cluster-wide."""
        st = self._storages.get(shard)
        if st is not None:
            if st.namespace != namespace:
                raise InvalidArgument(
                    f"oxia: shard {shard} is held here in namespace {st.namespace!r}, "
                    f"not {namespace!r}",
                    shard=shard,
                )
            return True
        return self.on_disk(namespace, shard)

    async def _await_assignment(self, namespace: str, shard: int) -> None:
        """Returns once the pushed assignments know ``shard`` in ``namespace``; refuses if they
        do not within :data:`ASSIGNMENT_WAIT_S` (or too many requests are waiting already)."""
        if self.assignments.knows(namespace, shard):
            return
        if self._assignment_waiters >= MAX_ASSIGNMENT_WAITERS:
            raise ShardNotFound(
                f"oxia: shard {shard} of namespace {namespace!r} is not in the coordinator's "
                "assignments",
                shard=shard,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ASSIGNMENT_WAIT_S
        self._assignment_waiters += 1
        try:
            while not self.assignments.knows(namespace, shard):
                seen = self.assignments.changed.generation
                left = deadline - loop.time()
                if left <= 0 or self._closed or self.assignments.changed.closed:
                    raise ShardNotFound(
                        f"oxia: shard {shard} of namespace {namespace!r} is not in the "
                        "coordinator's assignments",
                        shard=shard,
                    )
                await self.assignments.changed.wait(seen, left)
        finally:
            self._assignment_waiters -= 1

    def _check_may_open(self, namespace: str, shard: int, *, trusted: bool) -> ShardStorage | None:
        """The replica already open (its namespace checked), or None when it may be opened
        now; refuses a closing server and a new replica past ``max_shards``."""
        if self._closed:
            # A request racing the shutdown must not reopen a shard that
            # close() will never see (it would keep the DB locked).
            raise AlreadyClosed(
                f"oxia: the data server is shutting down (shard {shard})", shard=shard
            )
        st = self._storages.get(shard)
        if st is not None:
            if st.namespace != namespace:
                raise InvalidArgument(
                    f"oxia: shard {shard} is held here in namespace {st.namespace!r}, "
                    f"not {namespace!r}",
                    shard=shard,
                )
            return st
        held = len(self._storages) + self._opening
        if not trusted and held >= self.max_shards and not self.on_disk(namespace, shard):
            raise ResourceExhausted(
                f"oxia: this server already holds {held} shard replicas "
                f"(--max-shards {self.max_shards}): not creating shard {shard}",
                shard=shard,
            )
        return None

    def _register(self, st: ShardStorage) -> ShardStorage:
        self._storages[st.shard] = st
        for listener in self.storage_listeners:
            listener(st)
        return st

    async def _open_storage(
        self, namespace: str, shard: int, encoding: KeyEncoding, *, trusted: bool = False
    ) -> ShardStorage:
        """The shard's storage, opened (DB open, WAL recovery) in a worker thread if it is not
        open yet, at most :data:`OPEN_CONCURRENCY` at a time, so many shards open together. A
        replica found corrupt is set aside (see :meth:`_set_aside`). The caller holds
        the shard's lock (no second open of the same shard). A replica opened for a caller
        that was cancelled, or while the server closed, is closed again, never leaked."""
        st = self._check_may_open(namespace, shard, trusted=trusted)
        if st is not None:
            return st
        self._opening += 1
        try:
            async with self._open_gate:
                self._opens_running += 1
                self.max_concurrent_opens = max(self.max_concurrent_opens, self._opens_running)
                fut = asyncio.get_running_loop().run_in_executor(
                    self._openers, ShardStorage, namespace, shard, self.storage_options, encoding
                )
                try:
                    st = await asyncio.shield(fut)
                except asyncio.CancelledError:
                    fut.add_done_callback(_close_opened)
                    raise
                finally:
                    self._opens_running -= 1
        except ReplicaCorrupt as e:
            if not self.rebuild_corrupt:
                raise
            st = self._set_aside(namespace, shard, encoding, e)
        finally:
            self._opening -= 1
        if self._closed:
            await asyncio.to_thread(st.close)
            raise AlreadyClosed(
                f"oxia: the data server is shutting down (shard {shard})", shard=shard
            )
        return self._register(st)

    def _set_aside(
        self, namespace: str, shard: int, encoding: KeyEncoding, e: ReplicaCorrupt
    ) -> ShardStorage:
        """A replica found corrupt when opened: its WAL and DB are moved aside (kept for
        inspection as ``shard-<id>.corrupt-<time>``), the failure is reported to the
        coordinator, and the replica starts empty, marked as rebuilding: it takes a snapshot
        (or the log) from the leader, and cannot lead until it holds what was committed."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept: list[str] = []
        for base in (self.storage_options.data_dir, self.storage_options.wal_dir):
            src = shard_dir(base, namespace, shard)
            if not src.exists():
                continue
            dst = src.with_name(f"{src.name}.corrupt-{stamp}")
            n = 1
            while dst.exists():
                n += 1
                dst = src.with_name(f"{src.name}.corrupt-{stamp}-{n}")
            os.replace(src, dst)
            _fsync_dir(src.parent)
            kept.append(str(dst))
        log.error(
            "%s; the damaged files are kept in %s and the replica is rebuilt from its peers",
            e,
            ", ".join(kept) or "-",
        )
        st = ShardStorage(namespace, shard, self.storage_options, encoding)
        st.mark_rebuilding(f"corrupt {e.part}, files kept in {', '.join(kept)}")
        self.failures.report(
            namespace, shard, -1, "replica", f"corrupt {e.part}: rebuilding from the peers"
        )
        return st

    def _reporter(
        self, namespace: str, shard: int, role: str, term: Callable[[], int]
    ) -> Callable[[str], None]:
        def report(reason: str) -> None:
            self.failures.report(namespace, shard, term(), role, reason)

        return report

    def _new_leader(self, st: ShardStorage) -> LeaderController:
        lc = LeaderController(
            st,
            session_check_interval=self._session_check_interval,
            channels=self.channels,
            leadership=self.leadership,
        )
        lc.leader_hint = self.assignments.leader_of(st.shard)
        lc.call_metadata = self.call_metadata
        lc.on_failure = self._reporter(st.namespace, st.shard, "leader", lambda: lc.term)
        lc.before_step_down = self.before_step_down
        self.leaders[st.shard] = lc
        return lc

    # -- roles ------------------------------------------------------------------------------------

    def controller(self, shard: int) -> Controller | None:
        return self.leaders.get(shard) or self.followers.get(shard)

    def replicas(self) -> list[tuple[ShardStorage, Controller | None]]:
        """Every open shard replica with its controller (None between roles)."""
        return [(st, self.controller(shard)) for shard, st in self._storages.items()]

    async def open_leader(
        self, namespace: str, shard: int, encoding: KeyEncoding
    ) -> LeaderController:
        """Opens (recovering, in a worker thread: see :meth:`_open_storage`) the shard's
        storage and a leader controller: the trusted path of standalone mode, whose in-process
        coordinator decides which shards exist (it opens many at a time)."""
        async with self._lock(shard):
            lc = self.leaders.get(shard)
            if lc is not None:
                return lc
            st = await self._open_storage(namespace, shard, encoding, trusted=True)
            return self._new_leader(st)

    async def for_new_term(self, namespace: str, shard: int, encoding: KeyEncoding) -> Controller:
        """The controller a NewTerm goes to; a new replica only for a shard the coordinator's
        assignments know (see the module docstring)."""
        if not self.holds(namespace, shard):
            await self._await_assignment(namespace, shard)
        async with self._lock(shard):
            c = self.controller(shard)
            if c is not None:
                self.holds(namespace, shard)  # the namespace must be the held replica's
                return c
            return self._new_leader(await self._open_storage(namespace, shard, encoding))

    async def new_term(
        self, namespace: str, shard: int, encoding: KeyEncoding, term: int, options: TermOptions
    ) -> replication_pb2.EntryId:
        """Fences the shard's replica at ``term``. The controller may be closed between being
        looked up and fenced, replaced by a role change (a leader's stream that arrives as the
        replica restarts turns it into a follower): the NewTerm then goes to its successor."""
        attempts = 3
        while True:
            c = await self.for_new_term(namespace, shard, encoding)
            try:
                head = await c.new_term(term, options)
            except AlreadyClosed:
                attempts -= 1
                if attempts == 0 or self._closed or self.controller(shard) in (c, None):
                    raise
                continue
            # Fenced: the old leader gets nothing more from here. The answer waits until this
            # server's read-lease promise to it lapsed (read_lease.py).
            wait = self.lease_promises.wait_s(shard)
            if wait > 0.0:
                self.lease_waits += 1
                READ_LEASE_WAITS.inc()
                READ_LEASE_WAIT_SECONDS.inc(wait)
                await asyncio.sleep(wait)
            return head

    async def as_leader(self, shard: int) -> LeaderController:
        """The shard's controller as a leader (a follower is converted). A replica being
        rebuilt after corruption is refused: it may not hold what was committed."""
        if self.controller(shard) is None:
            raise NodeIsNotMember(f"oxia: node is not a member of shard {shard}", shard=shard)
        async with self._lock(shard):
            st = self._storages.get(shard)
            if st is not None and st.rebuilding:
                raise InvalidStatus(
                    f"oxia: shard {shard} is being rebuilt here after corruption: it cannot "
                    "lead before it has caught up",
                    shard=shard,
                )
            lc = self.leaders.get(shard)
            if lc is not None:
                return lc
            fc = self.followers.pop(shard, None)
            if fc is None:
                raise NodeIsNotMember(f"oxia: node is not a member of shard {shard}", shard=shard)
            await fc.close()
            return self._new_leader(fc.storage)

    async def as_follower(
        self, namespace: str, shard: int, *, create: bool = False, term: int | None = None
    ) -> FollowerController:
        """The shard's controller as a follower (a leader controller is
        converted). A shard with no data here is NOT_MEMBER (a wiped replica)
        unless ``create`` and the assignments know it (a snapshot creates it).
        A request of ``term`` never demotes a leader at that term or a newer
        one (a deposed leader's late stream)."""
        if not self.holds(namespace, shard) and not (
            create and self.assignments.knows(namespace, shard)
        ):
            raise NodeIsNotMember(f"oxia: node is not a member of shard {shard}", shard=shard)
        async with self._lock(shard):
            fc = self.followers.get(shard)
            if fc is not None:
                self.holds(namespace, shard)
                return fc
            lc = self.leaders.get(shard)
            if term is not None and lc is not None:
                lc.replica.check_may_follow(term)
            if lc is not None:
                self.holds(namespace, shard)
                self.leaders.pop(shard, None)
                await lc.close()
                st = lc.storage
            else:
                if (
                    shard not in self._storages
                    and not self.on_disk(namespace, shard)
                    and not (create and self.assignments.knows(namespace, shard))
                ):
                    raise NodeIsNotMember(
                        f"oxia: node is not a member of shard {shard}", shard=shard
                    )
                st = await self._open_storage(namespace, shard, HIERARCHICAL)
            fc = FollowerController(st, self.lease_promises)
            fc.on_failure = self._reporter(namespace, shard, "follower", lambda: fc.term)
            self.followers[shard] = fc
            return fc

    def get_leader(self, shard: int) -> LeaderController:
        """The controller leading ``shard`` here, or a NodeIsNotLeader error
        with a hint of the leader the assignments name."""
        lc = self.leaders.get(shard)
        if lc is not None and lc.status == LEADER and not lc.closed:
            return lc
        hint = self.assignments.leader_of(shard)
        if (
            lc is None
            and hint is None
            and shard not in self.followers
            and self.assignments.initialized
        ):
            raise ShardNotFound(f"oxia: shard {shard} not found", shard=shard)
        raise NodeIsNotLeader(
            f"oxia: node is not leader for shard {shard}", shard=shard, leader_hint=hint
        )

    async def delete_shard(self, namespace: str, shard: int, term: int) -> None:
        """Removes this server's replica of ``shard`` in ``namespace``: its DB and WAL
        directories, nothing else. A replica it does not hold is nothing to do (the
        coordinator retries a failed delete, so a repeated one succeeds)."""
        if shard not in self._storages and not self._any_dir_on_disk(namespace, shard):
            log.info("DeleteShard %s/%d: no such replica here", namespace, shard)
            return
        async with self._lock(shard):
            st = self._storages.get(shard)
            if st is not None and st.namespace != namespace:
                raise InvalidArgument(
                    f"oxia: shard {shard} is held here in namespace {st.namespace!r}, "
                    f"not {namespace!r}",
                    shard=shard,
                )
            c = self.controller(shard)
            if c is not None and term < c.term:
                raise InvalidTerm(
                    f"oxia: DeleteShard for term {term}, the shard is at {c.term}", shard=shard
                )
            if c is not None:
                await c.close()
            self.leaders.pop(shard, None)
            self.followers.pop(shard, None)
            st = self._storages.pop(shard, None)
            if st is not None:
                st.delete()
            else:
                opts = self.storage_options
                for base in (opts.data_dir, opts.wal_dir):
                    p: Path = shard_dir(base, namespace, shard)
                    shutil.rmtree(p, ignore_errors=True)
            log.info("deleted shard %s/%d", namespace, shard)

    def update_leader_hints(self) -> None:
        for shard, lc in self.leaders.items():
            lc.leader_hint = self.assignments.leader_of(shard)

    # -- shutdown ---------------------------------------------------------------------------------

    def leading(self) -> list[LeaderController]:
        """The controllers leading their shard here now."""
        return [lc for lc in self.leaders.values() if lc.status == LEADER and not lc.closed]

    async def step_down_all(self, drain_s: float) -> None:
        """Hands every leadership of this server over in place (a shutdown that no coordinator
        moved them away from first): new writes are refused with a retryable NodeIsNotLeader,
        logged ones finish, for up to ``drain_s``."""

        async def one(lc: LeaderController) -> None:
            try:
                await lc.step_down(lc.term, drain_s)
            except PyxiaError as e:
                log.info("shard %s: not stepped down: %s", lc.shard, e)

        await asyncio.gather(*(one(lc) for lc in self.leading()))

    async def close(self) -> None:
        """Stops every controller, then closes the storage (flushing the DBs)."""
        if self._closed:
            return
        self._closed = True
        self.failures.close()
        controllers: list[Controller] = [*self.leaders.values(), *self.followers.values()]
        for c in controllers:
            try:
                await c.close()
            except Exception:
                log.exception("closing shard %s", c.shard)
        # Closing flushes each DB (a few fsyncs): several at a time, in worker threads, so a
        # server with 1,000 shards stops in seconds (one at a time took ~40 s).
        gate = asyncio.Semaphore(_CLOSE_CONCURRENCY)

        async def close_storage(st: ShardStorage) -> None:
            async with gate:
                try:
                    await asyncio.to_thread(st.close)
                except Exception:
                    log.exception("closing shard %s/%s", st.namespace, st.shard)

        await asyncio.gather(*(close_storage(st) for st in list(self._storages.values())))
        self.leaders.clear()
        self.followers.clear()
        self._storages.clear()
        # An open still running in a worker closes its replica itself (it sees ``_closed``).
        self._openers.shutdown(wait=False)
        await self.channels.close()
