"""The client's decisions, as pure code (no I/O, no clock of its own): retry backoff, which
failures may be retried, how operations may share one write batch."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from pyxia.client.errors import RequestTimeout, Unavailable
from pyxia.errors import (
    AlreadyClosed,
    Cancelled,
    NodeIsNotLeader,
    NotInitialized,
    PyxiaError,
    ResourceUnavailable,
    ShardNotFound,
    WriteIndeterminate,
)

# -- backoff --------------------------------------------------------------------------------------

NOT_READY_RETRY_MAX_S = 0.1
"""The longest wait before asking again a server that is up but not ready yet (NOT_INITIALIZED:
a fresh Oxia data server before its coordinator's first push, seconds after its shards were
elected). Such a refusal is cheap and the server is ready any moment: backing off to a second
would add up to that second to a fresh cluster's first answer."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter in ``[delay/2, delay]``."""

    initial_s: float = 0.02
    max_s: float = 1.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rnd: float | None = None) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry); ``rnd`` in [0, 1)
        picks the jitter (random when None)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 30))
        r = random.random() if rnd is None else rnd
        return base * (0.5 + 0.5 * r)

    def after(self, err: BaseException, attempt: int, rnd: float | None = None) -> float:
        """The wait before retry number ``attempt`` after ``err``: ``delay``, but at most
        ``NOT_READY_RETRY_MAX_S`` after a server said it is not ready yet."""
        d = self.delay(attempt, rnd)
        return min(d, NOT_READY_RETRY_MAX_S) if isinstance(err, NotInitialized) else d


# -- retry classification -------------------------------------------------------------------------


class Retry(enum.Enum):
    ALWAYS = "always"
    """The server did not take the request (not the leader, not ready, shard moved): send it
    again, after re-routing."""
    IF_SAFE = "if_safe"
    """The connection broke: requests already sent may or may not have been applied. Resend
    only operations whose second application is harmless."""
    NEVER = "never"
    """The request itself was refused (invalid, too large, storage failure)."""


_NOT_TAKEN: tuple[type[PyxiaError], ...] = (
    NodeIsNotLeader,
    NotInitialized,
    ResourceUnavailable,
    AlreadyClosed,
    Cancelled,
    ShardNotFound,
)


def classify(err: BaseException) -> Retry:
    if isinstance(err, _NOT_TAKEN):
        return Retry.ALWAYS
    if isinstance(err, (Unavailable, WriteIndeterminate)):
        return Retry.IF_SAFE
    if isinstance(err, RequestTimeout):
        return Retry.IF_SAFE
    return Retry.NEVER


def leader_hint(err: BaseException) -> str | None:
    if isinstance(err, NodeIsNotLeader) and err.leader_hint:
        return err.leader_hint
    return None


# -- write batch composition ----------------------------------------------------------------------

PUT = 0
DELETE = 1
DELETE_RANGE = 2
"""Operation kinds, in the order a WriteRequest applies them (all puts, then all deletes, then
all range deletes)."""


def can_join(batch_phase: int, kind: int) -> bool:
    """Whether an operation of ``kind`` can go at the end of a batch whose last operation is of
    kind ``batch_phase`` (-1 for an empty batch) without being applied before an earlier one:
    a WriteRequest applies puts, then deletes, then range deletes, so an operation may only
    follow operations of its own kind or of an earlier one."""
    return kind >= batch_phase


def approx_put_bytes(key: str, value: bytes) -> int:
    return len(key) + len(value) + 16
