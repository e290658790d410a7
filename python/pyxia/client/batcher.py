"""Per-shard batching on the event loop.

A batch leaves when it is full (operations or bytes), when its shard has room on the wire
(fewer than ``window`` batches in flight: then it leaves at the end of the current event-loop
iteration, so every operation submitted in that iteration joins it), or when the linger expires.
So a lone caller pays no linger, and under load batches fill up while earlier ones are on the
wire. Ordered batchers (writes) also close a batch before an operation that the WriteRequest
would apply ahead of earlier ones (``policy.can_join``).

A wave of callers is split across the window. When an answer comes back, every caller it
completes submits again in the same event-loop iteration; left to the end of that iteration,
they would all form one batch, and client and server would take turns: the server idle while
the client resumes its callers, the client idle while the server works (measured: 64 callers
sent one batch of 64 at a time, the window of 2 unused). So while there is room on the wire, a
batch also leaves as soon as it holds its *share* of the work outstanding (the operations on
the wire or waiting when the last answer came, divided by the window): the server starts on the
first share while the client resumes the rest. Shares below ``MIN_SHARE`` operations are not
worth their own message, so few callers keep the one-batch-per-iteration rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pyxia.client.policy import can_join

MIN_SHARE = 8
"""The smallest share of the outstanding work that leaves as a batch of its own."""


class Batcher:
    __slots__ = (
        "_bytes",
        "_emit",
        "_has_room",
        "_linger",
        "_loop",
        "_max_bytes",
        "_max_ops",
        "_ops",
        "_ordered",
        "_phase",
        "_scheduled",
        "_share",
        "_timer",
        "_window",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        emit: Callable[[list[Any]], None],
        has_room: Callable[[], bool],
        *,
        max_ops: int,
        max_bytes: int,
        linger: float,
        ordered: bool,
        window: int,
    ) -> None:
        self._loop = loop
        self._emit = emit
        self._has_room = has_room
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._linger = linger
        self._ordered = ordered
        self._ops: list[Any] = []
        self._bytes = 0
        self._phase = -1
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._window = window
        self._share = 0

    @property
    def pending(self) -> list[Any]:
        return self._ops

    def add(self, op: Any) -> None:
        ops = self._ops
        size = op.size
        if ops and (
            self._bytes + size > self._max_bytes
            or (self._ordered and not can_join(self._phase, op.kind))
        ):
            self.flush()
            ops = self._ops
        ops.append(op)
        self._bytes += size
        self._phase = op.kind
        n = len(ops)
        full = n >= self._max_ops or self._bytes >= self._max_bytes
        if full or (self._share and n >= self._share and self._has_room()):
            self.flush()
        elif not self._scheduled:
            if self._linger <= 0 or self._has_room():
                self._scheduled = True
                self._loop.call_soon(self._on_turn)
            elif self._timer is None:
                self._timer = self._loop.call_later(self._linger, self._on_linger)

    def _on_turn(self) -> None:
        self._scheduled = False
        if not self._ops:
            return
        if self._linger <= 0 or self._has_room():
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._linger, self._on_linger)

    def _on_linger(self) -> None:
        self._timer = None
        if self._ops:
            self.flush()

    def room_freed(self, outstanding: int) -> None:
        """A batch of the shard completed: a waiting batch may leave now. ``outstanding`` counts
        the operations on the wire or waiting (the completed batch's included) just before it
        completed: about as many callers as will submit again."""
        share = outstanding // self._window
        self._share = share if share >= MIN_SHARE else 0
        if self._ops and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._on_turn)

    def flush(self) -> None:
        """Sends the current batch now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops = self._ops
        if not ops:
            return
        self._ops = []
        self._bytes = 0
        self._phase = -1
        self._emit(ops)

    def take(self) -> list[Any]:
        """Removes and returns the operations not sent yet."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops, self._ops = self._ops, []
        self._bytes = 0
        self._phase = -1
        return ops
