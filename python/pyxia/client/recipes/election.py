"""Leader election: candidates race for one lock record whose value names the leader.

``run()`` campaigns until stopped: when this candidate wins, ``on_elected(token)`` is called
with its fencing token; when it loses the leadership (session expired, record deleted) or
resigns, ``on_lost()`` is called, and it campaigns again (unless stopped). After resigning it
first steps aside: it campaigns again only once another candidate has taken the record, or
``resign_wait_s`` passed without one doing so (a lone candidate gets the leadership back)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyxia.client.async_client import AsyncClient, Notifications
from pyxia.client.errors import KeyNotFound
from pyxia.client.recipes.lock import Lock
from pyxia.client.results import NotificationType

if TYPE_CHECKING:
    from pyxia.client.sync_client import Client

log = logging.getLogger("pyxia.recipes")

Callback = Callable[[], Awaitable[None] | None]


class LeaderElection:
    def __init__(
        self,
        client: AsyncClient,
        key: str,
        identity: bytes,
        *,
        on_elected: Callable[[int], Awaitable[None] | None] | None = None,
        on_lost: Callback | None = None,
        resign_wait_s: float = 2.0,
    ) -> None:
        self.client = client
        self.key = key
        self.identity = identity
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.resign_wait_s = resign_wait_s
        self.lock = Lock(client, key, value=identity)
        self._task: asyncio.Task[None] | None = None
        self._resign = asyncio.Event()
        self.elected = asyncio.Event()
        self.terms = 0
        """How many times this candidate was elected."""

    @property
    def is_leader(self) -> bool:
        return self.lock.held

    async def leader(self) -> bytes | None:
        """The current leader's identity, if any."""
        try:
            g = await self.client.get(self.key)
        except KeyNotFound:
            return None
        return g.value

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        while True:
            token = await self.lock.acquire()
            self.terms += 1
            self._resign.clear()
            self.elected.set()
            await _call(self.on_elected, token) if self.on_elected else None
            lost = asyncio.ensure_future(self.lock.lost.wait())
            resign = asyncio.ensure_future(self._resign.wait())
            try:
                await asyncio.wait({lost, resign}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                resign.cancel()
            resigned = self._resign.is_set() and not self.lock.lost.is_set()
            self.elected.clear()
            # Resigning: watch the record before deleting it, so that another candidate's
            # taking it is seen (campaigning again at once would win it back before the others
            # even hear that it is free).
            feed = await self._watch_key() if resigned else None
            try:
                await self.lock.release()
                if self.on_lost is not None:
                    await _call(self.on_lost)
                if feed is not None:
                    await self._step_aside(feed)
            finally:
                if feed is not None:
                    await feed.close()

    async def resign(self) -> None:
        """Gives up the leadership: another candidate may take it; this one campaigns again once
        one has, or after ``resign_wait_s``."""
        self._resign.set()

    async def _watch_key(self) -> Notifications | None:
        feed = await self.client.get_notifications()
        try:
            await asyncio.wait_for(feed.wait_connected(), self.resign_wait_s)
            return feed
        except BaseException as e:
            await feed.close()
            if isinstance(e, asyncio.CancelledError):
                raise
            log.debug("election %s: cannot watch the record: %s", self.key, e)
            return None

    async def _step_aside(self, feed: Notifications) -> None:
        """Waits until another candidate creates the record, at most ``resign_wait_s``."""

        async def taken() -> None:
            async for batch in feed:
                if any(
                    n.key == self.key
                    and n.type in (NotificationType.KEY_CREATED, NotificationType.KEY_MODIFIED)
                    for n in batch
                ):
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(taken(), self.resign_wait_s)

    async def stop(self) -> None:
        """Stops campaigning, giving up the leadership if held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        was_leader = self.lock.held
        self.elected.clear()
        await self.lock.release()
        if was_leader and self.on_lost is not None:
            await _call(self.on_lost)


async def _call(fn: Callable[..., Awaitable[None] | None], *args: object) -> None:
    r = fn(*args)
    if r is not None:
        await r


class SyncLeaderElection:
    """:class:`LeaderElection` for the sync ``Client``; callbacks run on the client's loop
    thread (keep them short)."""

    def __init__(
        self,
        client: Client,
        key: str,
        identity: bytes,
        *,
        on_elected: Callable[[int], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        resign_wait_s: float = 2.0,
    ) -> None:
        self._client = client

        async def make() -> LeaderElection:
            e = LeaderElection(
                AsyncClient.over(client.core),
                key,
                identity,
                on_elected=on_elected,
                on_lost=on_lost,
                resign_wait_s=resign_wait_s,
            )
            e.start()
            return e

        self.election = client._call(make())

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def wait_elected(self, timeout: float | None = None) -> bool:
        async def wait() -> bool:
            try:
                await asyncio.wait_for(self.election.elected.wait(), timeout)
                return True
            except TimeoutError:
                return False

        return self._client._call(wait())

    def leader(self) -> bytes | None:
        return self._client._call(self.election.leader())

    def resign(self) -> None:
        self._client._call(self.election.resign())

    def stop(self) -> None:
        self._client._call(self.election.stop())
