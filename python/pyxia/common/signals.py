"""A wake-up signal that cannot lose notifications.

Waiters remember the generation they saw; ``notify`` bumps the generation
and wakes everyone. A waiter that checks its condition, then waits "since
generation g", returns at once if a notify happened in between.
"""

from __future__ import annotations

import asyncio


class Signal:
    __slots__ = ("_closed", "_fut", "generation")

    def __init__(self) -> None:
        self.generation = 0
        self._fut: asyncio.Future[None] | None = None
        self._closed = False

    def notify(self) -> None:
        self.generation += 1
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close(self) -> None:
        """Wakes every waiter for good (they see ``closed``)."""
        self._closed = True
        self.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait(self, since: int, timeout: float | None = None) -> bool:
        """Waits until the generation moves past ``since`` (or the signal is
        closed). False on timeout."""
        if self.generation != since or self._closed:
            return True
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
        fut = self._fut
        try:
            if timeout is None:
                await asyncio.shield(fut)
            else:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self.generation != since
        return True
