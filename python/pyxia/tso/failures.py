"""How the TSO classifies a failure of its log writes (pure: no I/O, no state).

One classifier for the failover fence (:mod:`pyxia.tso.fence`) and for the serving leader's
high-water and lease writes (:mod:`pyxia.tso.oracle`), after tsoracle's (PR #227 → issue #229
→ PR #235):

- **stepped down**: this node no longer leads at that term (not leader, fenced, invalid
  term/status, controller closed, a write left indeterminate by a step-down);
- **transient**: worth retrying while still leading (replication or quorum timeout, a peer
  unavailable, an injected failpoint error);
- **permanent**: the oracle must stop on this node (storage failure, corrupt high-water, a
  clock past 46 bits, an allocator invariant broken, anything unexpected).

Invariant: every exception gets exactly one disposition, and an unknown one is permanent (a
bug is never retried forever).
"""

from __future__ import annotations

from enum import Enum

from pyxia._native import WalError
from pyxia.errors import (
    AlreadyClosed,
    Cancelled,
    InvalidStatus,
    InvalidTerm,
    NodeIsNotLeader,
    NodeIsNotMember,
    ResourceUnavailable,
    StorageFailure,
    Unavailable,
    WriteIndeterminate,
)
from pyxia.failpoints import FailpointError
from pyxia.tso.allocator import AdvanceOutOfRange, AllocatorError
from pyxia.tso.allocator import NotLeader as AllocatorNotLeader
from pyxia.tso.errors import HighWaterCorrupt, TsoNotLeader, TsoUnavailable


class Disposition(Enum):
    STEPPED_DOWN = "stepped_down"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


_STEPPED_DOWN: tuple[type[BaseException], ...] = (
    NodeIsNotLeader,
    InvalidTerm,
    InvalidStatus,
    AlreadyClosed,
    NodeIsNotMember,
    TsoNotLeader,
    AllocatorNotLeader,
    WriteIndeterminate,  # the leader stepped down while the high-water write was in flight
)
_TRANSIENT: tuple[type[BaseException], ...] = (
    TsoUnavailable,
    ResourceUnavailable,
    Unavailable,  # a peer unreachable (pyxia.common.grpc_errors' transport failure)
    Cancelled,
    TimeoutError,
    ConnectionError,
    FailpointError,
)
_PERMANENT: tuple[type[BaseException], ...] = (
    StorageFailure,
    HighWaterCorrupt,
    AdvanceOutOfRange,
    WalError,
)


def classify(err: BaseException) -> Disposition:
    """One classifier for the fence and for the serving leader's extensions."""
    if isinstance(err, _PERMANENT):
        return Disposition.PERMANENT
    if isinstance(err, _STEPPED_DOWN):
        return Disposition.STEPPED_DOWN
    if isinstance(err, _TRANSIENT):
        return Disposition.TRANSIENT
    if isinstance(err, AllocatorError):
        return Disposition.PERMANENT  # an allocator invariant broke
    return Disposition.PERMANENT


__all__ = ["Disposition", "classify"]
