"""Leader election: candidates race for one lock record whose value names the leader.

``run()`` campaigns until stopped: when this candidate wins, ``on_elected(token)`` is called
with its fencing token; when it loses the leadership (session expired, record deleted) or
resigns, ``on_lost()`` is called, and it campaigns again (unless stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyxia.client.async_client import AsyncClient
from pyxia.client.errors import KeyNotFound
from pyxia.client.recipes.lock import Lock

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
    ) -> None:
        self.client = client
        self.key = key
        self.identity = identity
        self.on_elected = on_elected
        self.on_lost = on_lost
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
            self.elected.clear()
            await self.lock.release()
            if self.on_lost is not None:
                await _call(self.on_lost)

    async def resign(self) -> None:
        """Gives up the leadership (another candidate may win; this one campaigns again)."""
        self._resign.set()

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
    ) -> None:
        self._client = client

        async def make() -> LeaderElection:
            e = LeaderElection(
                AsyncClient.over(client.core),
                key,
                identity,
                on_elected=on_elected,
                on_lost=on_lost,
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
