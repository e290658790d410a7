"""Work in steps, so that one shard's long apply cannot starve the event loop.

Applying a log entry is a generator (:data:`Steps`) that yields between operations and returns
its result; nothing reaches the DB before its last step (one RocksDB batch per entry, with the
commit offset). rocksdict holds the GIL during every call (measured: a 60 MiB get or a 400,000-put
batch write stops every other thread), so a worker thread would not free the loop: the work is
instead cut into slices of loop time, and the loop runs other shards, the health service and
signal handlers between them.

Closing a generator between steps abandons the entry without a trace (the applier restores its
counters); it is applied again later from the WAL, which is how a leader that steps down, a
follower whose state is being replaced, or a closing server stops a long apply at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]
"""Work that yields between steps and returns a ``T``."""

APPLY_SLICE_S = 0.005
"""Event-loop time one shard's apply may take before it lets the loop run (seconds)."""


class Abandoned(Exception):
    """Sliced work was given up between two steps (see :func:`run_sliced`)."""


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The result of finished steps."""

    value: T


def run_steps(steps: Steps[T]) -> T:
    """Runs ``steps`` to the end, synchronously."""
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        result: T = stop.value
        return result


def advance(steps: Steps[T], deadline: float) -> Done[T] | None:
    """Runs ``steps`` until it finishes (its result) or ``time.monotonic()`` passes
    ``deadline`` after a step (None: the generator is left suspended)."""
    clock = time.monotonic
    try:
        while True:
            next(steps)
            if clock() >= deadline:
                return None
    except StopIteration as stop:
        return Done(stop.value)


async def run_sliced(
    steps: Steps[T],
    slice_s: float = APPLY_SLICE_S,
    still_wanted: Callable[[], bool] | None = None,
) -> T:
    """Runs ``steps`` on the event loop, ``slice_s`` at a time. Between slices, if
    ``still_wanted()`` is false, the work is abandoned (the generator closed) and
    :class:`Abandoned` raised; cancellation abandons it the same way."""
    try:
        while True:
            done = advance(steps, time.monotonic() + slice_s)
            if done is not None:
                return done.value
            await asyncio.sleep(0)
            if still_wanted is not None and not still_wanted():
                raise Abandoned("abandoned between two steps")
    finally:
        steps.close()
