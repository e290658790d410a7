"""A distributed lock: an ephemeral record created only if absent.

Holding the lock = owning the record ``key``, bound to this client's session on the key's
shard. The record's ``version_id`` is the **fencing token**: it only grows within a shard, so a
resource that remembers the highest token it has seen can refuse a stale holder (one whose
session expired while it was paused: locks without fencing are unsafe, Jepsen's etcd 3.4.3
analysis). The lock is lost when the session is (``on_lost`` is called, ``lost`` is set) or
when the record is deleted or overwritten by someone else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxia.client.async_client import AsyncClient
from pyxia.client.errors import (
    KeyNotFound,
    RequestIndeterminate,
    RequestTimeout,
    UnexpectedVersion,
)
from pyxia.client.results import (
    EXPECTED_RECORD_DOES_NOT_EXIST,
    NotificationType,
    PutResult,
    SessionEvent,
    SessionState,
)
from pyxia.errors import PyxiaError, SessionNotFound

if TYPE_CHECKING:
    from pyxia.client.sync_client import Client

log = logging.getLogger("pyxia.recipes")


def in_range(client: AsyncClient, key: str, start: str, end: str | None) -> bool:
    """Whether ``key`` is in ``[start, end)`` in the namespace's key order."""
    m = client.core.shard_map
    if m is None:
        return False
    k = m.order.sort_key(key)
    return bool(m.order.sort_key(start) <= k and (not end or k < m.order.sort_key(end)))


class LockLost(PyxiaError):
    reason = "LOCK_LOST"
    grpc_code = "ABORTED"


class Lock:
    def __init__(
        self,
        client: AsyncClient,
        key: str,
        *,
        value: bytes = b"",
        on_lost: Callable[[Lock], None] | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.value = value
        self.on_lost = on_lost
        self.fencing_token: int | None = None
        """The version id of the lock record while held."""
        self.lost = asyncio.Event()
        self._session_id: int | None = None
        self._shard = -1
        self._remove_listener: Callable[[], None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._undo: asyncio.Future[None] | None = None

    @property
    def held(self) -> bool:
        return self.fencing_token is not None and not self.lost.is_set()

    async def acquire(self, timeout: float | None = None) -> int:
        """Waits until the lock is ours (or ``timeout`` seconds: RequestTimeout); returns the
        fencing token."""
        if self.held:
            assert self.fencing_token is not None
            return self.fencing_token
        try:
            return await asyncio.wait_for(self._acquire(), timeout)
        except TimeoutError:
            raise RequestTimeout(f"oxia: lock {self.key!r} not acquired in {timeout}s") from None

    async def try_acquire(self) -> bool:
        """Takes the lock if it is free, without waiting."""
        return await self._attempt() is not None

    async def _attempt(self) -> int | None:
        c = self.client
        await self._settle()
        self._shard = c.shard_for(self.key)
        put = asyncio.ensure_future(
            c.put(
                self.key,
                self.value,
                expected_version_id=EXPECTED_RECORD_DOES_NOT_EXIST,
                ephemeral=True,
            )
        )
        try:
            r = await asyncio.shield(put)
        except asyncio.CancelledError:
            # Cancelled (acquire's timeout, an election stopped) with the create on its way: if
            # it wins, the record must not stay behind, held by nobody.
            self._undo = asyncio.ensure_future(self._undo_attempt(put))
            raise
        except UnexpectedVersion:
            # Maybe ours already (an earlier attempt whose answer was lost).
            return await self._ours()
        except (RequestIndeterminate, SessionNotFound):
            return await self._ours()
        self._held(r.version.version_id, r.version.session_id)
        return r.version.version_id

    async def _undo_attempt(self, put: asyncio.Future[PutResult]) -> None:
        await asyncio.wait({put})
        if put.cancelled() or put.exception() is not None:
            return
        r = put.result()
        with contextlib.suppress(Exception):
            await self.client.delete(self.key, expected_version_id=r.version.version_id)

    async def _settle(self) -> None:
        """Waits for the undoing of a cancelled attempt, if any."""
        undo, self._undo = self._undo, None
        if undo is not None:
            await asyncio.wait({undo})
            if not undo.cancelled() and undo.exception() is not None:
                log.debug("lock %s: undoing an attempt: %s", self.key, undo.exception())

    async def _ours(self) -> int | None:
        try:
            g = await self.client.get(self.key)
        except KeyNotFound:
            return None
        sid = g.version.session_id
        if sid is None:
            return None
        session = self.client.core.sessions.session(self._shard)
        if session is not None and session.session_id == sid and session.established.done():
            self._held(g.version.version_id, sid)
            return g.version.version_id
        return None

    async def _acquire(self) -> int:
        c = self.client
        while True:
            notifications = await c.get_notifications()
            try:
                await notifications.wait_connected()
                token = await self._attempt()
                if token is not None:
                    return token
                # Held by someone else: wait until the record is deleted.
                while True:
                    batch = await notifications.__anext__()
                    if any(
                        (n.key == self.key and n.type is NotificationType.KEY_DELETED)
                        or (
                            n.type is NotificationType.KEY_RANGE_DELETED
                            and in_range(c, self.key, n.key, n.key_range_end)
                        )
                        for n in batch
                    ):
                        break
            finally:
                await notifications.close()

    def _held(self, token: int, session_id: int | None) -> None:
        self.fencing_token = token
        self._session_id = session_id
        self.lost = asyncio.Event()
        if self._remove_listener is None:
            self._remove_listener = self.client.add_session_listener(self._on_session)
        self._watch = asyncio.get_running_loop().create_task(self._watch_record())

    def _on_session(self, ev: SessionEvent) -> None:
        if (
            ev.state is SessionState.LOST
            and ev.shard == self._shard
            and ev.session_id == self._session_id
        ):
            self._mark_lost(f"session lost: {ev.reason}")

    async def _watch_record(self) -> None:
        """Notices the record being deleted or overwritten by someone else."""
        try:
            async with await self.client.get_notifications() as feed:
                await feed.wait_connected()
                try:
                    g = await self.client.get(self.key)
                    if g.version.version_id != self.fencing_token:
                        self._mark_lost("the lock record was replaced")
                        return
                except KeyNotFound:
                    self._mark_lost("the lock record is gone")
                    return
                async for batch in feed:
                    for n in batch:
                        if n.key == self.key and (
                            n.type is NotificationType.KEY_DELETED
                            or (
                                n.type is NotificationType.KEY_MODIFIED
                                and n.version_id != self.fencing_token
                            )
                        ):
                            self._mark_lost("the lock record was deleted or replaced")
                            return
                        if n.type is NotificationType.KEY_RANGE_DELETED and in_range(
                            self.client, self.key, n.key, n.key_range_end
                        ):
                            self._mark_lost("the lock record was range-deleted")
                            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("lock %s: watch ended: %s", self.key, e)

    def _mark_lost(self, why: str) -> None:
        if self.lost.is_set() or self.fencing_token is None:
            return
        log.warning("lock %s lost: %s", self.key, why)
        self.lost.set()
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:
                log.exception("lock on_lost callback failed")

    async def release(self) -> None:
        """Gives the lock up (deleting the record if it is still ours)."""
        await self._settle()
        token = self.fencing_token
        self.fencing_token = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if token is not None and not self.lost.is_set():
            with contextlib.suppress(UnexpectedVersion, KeyNotFound):
                await self.client.delete(self.key, expected_version_id=token)

    def check(self) -> int:
        """The fencing token, or LockLost if the lock is no longer held."""
        if not self.held:
            raise LockLost(f"oxia: lock {self.key!r} is not held")
        assert self.fencing_token is not None
        return self.fencing_token

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class SyncLock:
    """:class:`Lock` for the sync ``Client``: ``with SyncLock(client, "/locks/a") as lock:``.
    ``on_lost`` runs on the client's loop thread."""

    def __init__(
        self,
        client: Client,
        key: str,
        *,
        value: bytes = b"",
        on_lost: Callable[[Lock], None] | None = None,
    ) -> None:
        self._client = client

        async def make() -> Lock:
            return Lock(AsyncClient.over(client.core), key, value=value, on_lost=on_lost)

        self.lock = client._call(make())

    @property
    def held(self) -> bool:
        return self.lock.held

    @property
    def fencing_token(self) -> int | None:
        return self.lock.fencing_token

    def acquire(self, timeout: float | None = None) -> int:
        return self._client._call(self.lock.acquire(timeout))

    def try_acquire(self) -> bool:
        return self._client._call(self.lock.try_acquire())

    def release(self) -> None:
        self._client._call(self.lock.release())

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Waits until the lock is lost (True) or ``timeout`` passes (False)."""

        async def wait() -> bool:
            try:
                await asyncio.wait_for(self.lock.lost.wait(), timeout)
                return True
            except TimeoutError:
                return False

        return self._client._call(wait())

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
