"""Coordination recipes on top of the client: a lock with a fencing token, leader election
with a callback on loss, and a cache kept current by notifications. Each has an asyncio class
and a blocking one for the sync ``Client``."""

from pyxia.client.recipes.cache import Cache, SyncCache
from pyxia.client.recipes.election import LeaderElection, SyncLeaderElection
from pyxia.client.recipes.lock import Lock, LockLost, SyncLock

__all__ = [
    "Cache",
    "LeaderElection",
    "Lock",
    "LockLost",
    "SyncCache",
    "SyncLeaderElection",
    "SyncLock",
]
