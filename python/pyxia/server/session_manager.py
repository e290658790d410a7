"""Sessions on the shard leader.

A session is a record ``__oxia/session/<id>`` (``SessionMetadata``) whose id
is the WAL offset of the entry that created it. Ephemeral records point to
their session; deleting the session record deletes them in the same batch
(see ``storage.apply``). Liveness lives in the leader's memory only: each
session has a deadline, refreshed by KeepAlive; when it passes, the leader
logs the deletion of the session record. A new leader reloads the sessions
from its DB with fresh deadlines (Oxia does the same).

Costs, so that 100,000 sessions fit one shard leader: a keep-alive is one dict lookup and
one float store (the deadline heap is fixed up lazily by the expiry loop, so a heartbeat
never touches it); a session is one slotted ``Session`` plus a heap tuple. Sessions that
expire together are deleted in log entries of at most ``MAX_EXPIRED_PER_ENTRY`` session
deletes each (``expiry_batches``): each expiry round logs what came due since the last one,
so 10,000 clients vanishing at once cost one entry per round their deadlines spread over (and
per 1,000), not one per session; an explicit CloseSession stays one entry.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyxia.common import keys
from pyxia.errors import InvalidSessionTimeout, PyxiaError, SessionNotFound
from pyxia.metrics import ShardMetrics
from pyxia.proto import client_pb2, storage_pb2
from pyxia.storage.apply import ApplyResult

log = logging.getLogger("pyxia.sessions")

MIN_SESSION_TIMEOUT_MS = 2_000
MAX_SESSION_TIMEOUT_MS = 5 * 60_000
MAX_EXPIRED_PER_ENTRY = 1_000
"""Session deletes in one expiry log entry: the entry stays ~40 KB and its apply (which also
deletes each session's ephemeral records) one DB batch of bounded size."""


@dataclass(slots=True)
class Session:
    id: int
    timeout_s: float
    identity: str
    deadline: float
    closing: bool = False


def expiry_batches(
    due: list[Session], max_per_entry: int = MAX_EXPIRED_PER_ENTRY
) -> list[list[Session]]:
    """The expired sessions grouped into log entries, in the order they came due (pure)."""
    if max_per_entry <= 0:
        raise ValueError("max_per_entry must be positive")
    return [due[i : i + max_per_entry] for i in range(0, len(due), max_per_entry)]


def check_timeout(timeout_ms: int) -> None:
    if not MIN_SESSION_TIMEOUT_MS <= timeout_ms <= MAX_SESSION_TIMEOUT_MS:
        raise InvalidSessionTimeout(
            f"oxia: invalid session timeout {timeout_ms} ms: it must be between "
            f"{MIN_SESSION_TIMEOUT_MS} ms and {MAX_SESSION_TIMEOUT_MS} ms"
        )


class SessionLeader(Protocol):
    """What the session manager uses of its shard's leader (``leader_controller.py``'s
    ``LeaderController``; this module does not import it, the leader builds the manager)."""

    @property
    def shard(self) -> int: ...

    @property
    def metrics(self) -> ShardMetrics: ...

    @property
    def handing_off(self) -> bool:
        """Stepping down: no session is expired (the next leader reloads them)."""

    def propose_internal(
        self,
        build: Callable[[int], client_pb2.WriteRequest],
        on_applied: Callable[[ApplyResult], None] | None = None,
    ) -> asyncio.Future[ApplyResult]: ...


class SessionManager:
    """Session liveness for one shard leader."""

    def __init__(
        self,
        leader: SessionLeader,
        *,
        check_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leader = leader
        self._clock = clock
        self._check_interval = check_interval
        self.sessions: dict[int, Session] = {}
        self._heap: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        # Set whenever a session is added: a leader without sessions does not wake up every
        # check interval (1,000 idle shards did 10,000 wake-ups a second).
        self._added = asyncio.Event()
        self.expired_total = 0
        self.expiry_entries_total = 0
        self.checks = 0  # expiry checks run (a metric for tests)

    # -- lifecycle --------------------------------------------------------------------------------

    def load(self, records: dict[int, storage_pb2.SessionMetadata]) -> None:
        """Sessions found in the DB when becoming leader: fresh deadlines."""
        now = self._clock()
        self.sessions.clear()
        self._heap.clear()
        for sid, md in records.items():
            self._add(sid, md.timeout_ms, md.identity, now)
        if records:
            log.info("shard %s: reloaded %d sessions", self._leader.shard, len(records))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._expiry_loop(), name=f"sessions-{self._leader.shard}"
            )

    def stop(self) -> None:
        """Stops expiring (leadership lost). Sessions stay in the DB."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.sessions.clear()
        self._heap.clear()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.sessions.clear()
        self._heap.clear()

    def _add(self, sid: int, timeout_ms: int, identity: str, now: float) -> None:
        timeout_s = timeout_ms / 1000.0
        s = Session(sid, timeout_s, identity, now + timeout_s)
        self.sessions[sid] = s
        heapq.heappush(self._heap, (s.deadline, sid))
        self._added.set()
        self._leader.metrics.sessions_active.set(len(self.sessions))

    # -- operations -------------------------------------------------------------------------------

    async def create(self, timeout_ms: int, identity: str) -> int:
        """Logs a new session record; its id is the offset of that entry."""
        check_timeout(timeout_ms)
        value = storage_pb2.SessionMetadata(timeout_ms=timeout_ms, identity=identity)
        raw = value.SerializeToString()
        offset_box: list[int] = []

        def build(offset: int) -> client_pb2.WriteRequest:
            offset_box.append(offset)
            return client_pb2.WriteRequest(
                puts=[client_pb2.PutRequest(key=keys.session_key(offset), value=raw)]
            )

        def on_applied(res: ApplyResult) -> None:
            # Registered at apply time, so keep-alives can follow the reply.
            if res.error is None:
                self._add(offset_box[0], timeout_ms, identity, self._clock())
                self._leader.metrics.sessions_created.inc()

        res = await self._leader.propose_internal(build, on_applied)
        if res.error is not None:
            raise res.error
        return offset_box[0]

    def keep_alive(self, session_id: int) -> None:
        s = self.sessions.get(session_id)
        if s is None or s.closing:
            raise SessionNotFound(f"oxia: session {session_id} not found", shard=self._leader.shard)
        s.deadline = self._clock() + s.timeout_s
        # The heap entry is refreshed lazily by the expiry loop.

    async def close_session(self, session_id: int) -> None:
        s = self.sessions.get(session_id)
        if s is None or s.closing:
            raise SessionNotFound(f"oxia: session {session_id} not found", shard=self._leader.shard)
        await self._delete(s)
        self._leader.metrics.sessions_closed.inc()

    async def _delete(self, s: Session) -> None:
        res = await self._propose_delete([s])
        if res.error is not None:
            raise res.error

    def _propose_delete(self, batch: list[Session]) -> asyncio.Future[ApplyResult]:
        """Logs one entry deleting every session of ``batch`` (and, at apply, their
        ephemeral records)."""
        for s in batch:
            s.closing = True
        ids = [s.id for s in batch]

        def build(_offset: int) -> client_pb2.WriteRequest:
            return client_pb2.WriteRequest(
                deletes=[client_pb2.DeleteRequest(key=keys.session_key(sid)) for sid in ids]
            )

        def on_applied(_res: ApplyResult) -> None:
            for sid in ids:
                self.sessions.pop(sid, None)
            self._leader.metrics.sessions_active.set(len(self.sessions))

        try:
            return self._leader.propose_internal(build, on_applied)
        except PyxiaError:
            for s in batch:
                s.closing = False
            raise

    # -- expiry -----------------------------------------------------------------------------------

    def due(self, now: float) -> list[Session]:
        """Sessions whose deadline has passed (pure bookkeeping)."""
        out: list[Session] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, sid = heapq.heappop(heap)
            s = self.sessions.get(sid)
            if s is None or s.closing:
                continue
            if s.deadline > now:
                heapq.heappush(heap, (s.deadline, sid))  # refreshed by a keep-alive
                continue
            out.append(s)
        return out

    async def _expiry_loop(self) -> None:
        while True:
            if not self._heap:
                # Nothing can expire until a session is added (cleared and awaited in one
                # step after the check, so an addition is never missed).
                self._added.clear()
                await self._added.wait()
            await asyncio.sleep(self._check_interval)
            self.checks += 1
            if self._leader.handing_off:
                continue  # no new entries while stepping down; the next leader expires them
            due = self.due(self._clock())
            if not due:
                continue
            futures = []
            for batch in expiry_batches(due):
                try:
                    futures.append(self._propose_delete(batch))
                except PyxiaError as e:
                    log.warning("shard %s: cannot expire sessions: %s", self._leader.shard, e)
                    return
                self.expired_total += len(batch)
                self.expiry_entries_total += 1
                self._leader.metrics.sessions_expired.inc(len(batch))
            log.info(
                "shard %s: %d sessions expired (%d log entries; first id %d)",
                self._leader.shard,
                len(due),
                len(futures),
                due[0].id,
            )
            await asyncio.gather(*futures, return_exceptions=True)
