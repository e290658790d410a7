"""The leading coordinator's copy of the cluster status and its writes to the metadata
provider, with shard edits batched (group commit).

Every shard controller changes its shard's record (an election starts, a leader is chosen, a
replica is forgotten) and waits until the change is durable before it acts on it. Writing the
whole status once per edit made a cold start of N shards cost about 2N writes of an O(N)
status: quadratic, minutes at 10,000 shards. Here, edits queue up and one writer task stores
them together: whatever queued while the previous write was in flight goes into the next one,
so there is at most one write in flight and a burst of N edits costs a few writes, not N.

Invariants:

- ``status`` is what the provider holds at ``version``: an edit is visible in it only once it
  is durable (callers read their shard's record from it after ``update_shard`` returns).
- Edits apply in the order they were queued; each is applied to its own copy of the shard's
  record first, so an edit that raises is refused alone (its caller gets the exception) and
  the batch's other edits are stored.
- An edit of a shard the status no longer has raises ``KeyError`` to its caller (it does not
  create an empty record).
- ``lock`` serialises every write: a batch holds it while it is stored, and whole-status
  changes (configuration, admin) take it around their read-copy-store.
- A compare-and-set lost (``MetadataBadVersion``) fails the batch's edits and every queued
  one, and calls ``on_lost``: nothing is retried (a newer leader may have written); the
  coordinator steps down. Any other store error fails that batch's edits only (their
  controllers retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyxia.coordinator.metadata.provider import MetadataProvider, Version
from pyxia.errors import MetadataBadVersion
from pyxia.metrics import (
    COORDINATOR_STATUS_EDITS,
    COORDINATOR_STATUS_WRITE_BYTES,
    COORDINATOR_STATUS_WRITES,
)
from pyxia.proto import metadata_pb2

log = logging.getLogger("pyxia.coordinator.status")

ShardEdit = Callable[[metadata_pb2.ShardMetadata], None]


@dataclass(slots=True)
class _Queued:
    namespace: str
    shard: int
    edit: ShardEdit
    done: asyncio.Future[None]


class StatusStore:
    """The cluster status as stored, and the one way to change it."""

    def __init__(
        self,
        provider: MetadataProvider,
        status: metadata_pb2.ClusterStatus,
        version: Version,
        on_lost: Callable[[], None],
    ) -> None:
        self.provider = provider
        self.status = status
        self.version = version
        self.lock = asyncio.Lock()
        self._on_lost = on_lost
        self._queue: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self._lost = False
        # What was written, for the metrics and the scale harness.
        self.writes = 0
        self.bytes_written = 0
        self.edits_written = 0

    async def store(self, new_status: metadata_pb2.ClusterStatus) -> None:
        """Compare-and-set of a whole new status (hold ``lock``)."""
        try:
            self.version = await self.provider.store(new_status, self.version)
        except MetadataBadVersion:
            self._lose()
            raise
        self.status = new_status
        size = new_status.ByteSize()
        self.writes += 1
        self.bytes_written += size
        COORDINATOR_STATUS_WRITES.inc()
        COORDINATOR_STATUS_WRITE_BYTES.inc(size)

    async def update_shard(self, namespace: str, shard: int, edit: ShardEdit) -> None:
        """Applies ``edit`` to the shard's record and returns once that is durable (with
        whatever other edits were queued meanwhile)."""
        if self._lost:
            raise MetadataBadVersion("the coordinator is stepping down")
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(namespace, shard, edit, done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queued(), name="coordinator-status-writer"
            )
        await done

    async def close(self) -> None:
        """Fails what is queued and stops the writer (a store already handed to the provider
        may still land: the next leader reads whatever is stored)."""
        self._lost = True  # nothing more is accepted
        self._fail_queued(MetadataBadVersion("the coordinator is closing"))
        writer = self._writer
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):
                log.debug("the status writer stopped", exc_info=True)

    def _lose(self) -> None:
        if not self._lost:
            self._lost = True
            log.warning("lost a compare-and-set on the cluster status: stepping down")
            self._on_lost()

    def _fail_queued(self, err: Exception) -> None:
        queued, self._queue = self._queue, []
        for q in queued:
            if not q.done.done():
                q.done.set_exception(err)

    async def _write_queued(self) -> None:
        try:
            while self._queue and not self._lost:
                async with self.lock:
                    batch, self._queue = self._queue, []
                    await self._write_batch(batch)
            if self._lost:
                self._fail_queued(MetadataBadVersion("the coordinator is stepping down"))
        finally:
            self._writer = None

    async def _write_batch(self, batch: list[_Queued]) -> None:
        work = metadata_pb2.ClusterStatus()
        work.CopyFrom(self.status)
        applied: list[_Queued] = []
        for q in batch:
            if q.done.done():  # its caller was cancelled
                continue
            ns = work.namespaces.get(q.namespace)
            if ns is None or q.shard not in ns.shards:
                q.done.set_exception(
                    KeyError(f"no shard {q.shard} in namespace {q.namespace!r} any more")
                )
                continue
            record = metadata_pb2.ShardMetadata()
            record.CopyFrom(ns.shards[q.shard])
            try:
                q.edit(record)
            except Exception as e:
                q.done.set_exception(e)
                continue
            ns.shards[q.shard].CopyFrom(record)
            applied.append(q)
        if not applied:
            return
        try:
            await self.store(work)
        except asyncio.CancelledError:  # closing
            for q in applied:
                if not q.done.done():
                    q.done.set_exception(MetadataBadVersion("the coordinator is closing"))
            raise
        except Exception as e:
            for q in applied:
                if not q.done.done():
                    q.done.set_exception(e)
            if isinstance(e, MetadataBadVersion):
                self._fail_queued(e)
            return
        self.edits_written += len(applied)
        COORDINATOR_STATUS_EDITS.inc(len(applied))
        for q in applied:
            if not q.done.done():
                q.done.set_result(None)
