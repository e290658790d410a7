"""What the client's workers see of the client core: the narrow interface through which the
assignments watcher, the shard readers and writers, the sessions and the streams reach it.

The core (:class:`pyxia.client.core.ClientCore`) builds the workers and satisfies this
protocol; the workers import only this module, never the core, so the client's modules form no
import circle (the core sits above its workers). Everything here lives on the core's event
loop: it is called from the loop thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from pyxia.client.connections import Connections
from pyxia.client.ops import ReadOp, WriteOp
from pyxia.client.options import ClientOptions
from pyxia.client.policy import Backoff
from pyxia.client.shard_map import ShardMap


class ClientContext(Protocol):
    """The client core as its workers use it."""

    options: ClientOptions
    loop: asyncio.AbstractEventLoop
    namespace: str
    conns: Connections
    backoff: Backoff
    shard_map: ShardMap | None
    """The latest assignments (None until the first arrives)."""
    closed: bool
    """The client is closed (new requests fail)."""
    draining: bool
    """Closing, but still finishing the requests already accepted."""
    shard_ranges_seen: dict[int, tuple[int, int]]
    """The hash range of every shard the client saw (a split parent's too, once it left)."""

    def add_map_listener(self, fn: Callable[[ShardMap], None]) -> Callable[[], None]:
        """Calls ``fn`` with every new shard map; returns the function that stops it."""
        ...

    def shard_exists(self, shard: int) -> bool: ...

    def leader_of(self, shard: int) -> str | None:
        """The shard's leader: the latest hint from a refusal, else the assignments'."""
        ...

    def set_leader_hint(self, shard: int, address: str) -> None: ...

    def reroute_read(self, op: ReadOp) -> None:
        """Sends a read again, to the shard that holds its key now."""
        ...

    def reroute_write(self, op: WriteOp) -> None:
        """Sends a write again, to the shard that holds its key now."""
        ...
