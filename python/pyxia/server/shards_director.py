"""Which shard replicas this data server holds, and in which role."""

from __future__ import annotations

import asyncio
import logging

from pyxia.errors import NodeIsNotLeader, ShardNotFound
from pyxia.server.assignments import AssignmentsDispatcher
from pyxia.server.leader_controller import LEADER, LeaderController
from pyxia.server.shard_storage import ShardStorage, StorageOptions
from pyxia.storage.keys import KeyEncoding

log = logging.getLogger("pyxia.director")


class ShardsDirector:
    """Owns the shard controllers (and their storage) of one data server."""

    def __init__(
        self,
        storage_options: StorageOptions,
        assignments: AssignmentsDispatcher,
        *,
        session_check_interval: float = 0.1,
    ) -> None:
        self.storage_options = storage_options
        self.assignments = assignments
        self.leaders: dict[int, LeaderController] = {}
        self._storages: dict[int, ShardStorage] = {}
        self._session_check_interval = session_check_interval
        self._closed = False

    def open_leader(self, namespace: str, shard: int, encoding: KeyEncoding) -> LeaderController:
        """Opens (recovering) the shard's storage and a leader controller."""
        if shard in self.leaders:
            return self.leaders[shard]
        storage = ShardStorage(namespace, shard, self.storage_options, encoding)
        self._storages[shard] = storage
        lc = LeaderController(storage, session_check_interval=self._session_check_interval)
        self.leaders[shard] = lc
        return lc

    def get_leader(self, shard: int) -> LeaderController:
        """The controller leading ``shard`` here, or a NodeIsNotLeader error
        with a hint of the leader the assignments name."""
        lc = self.leaders.get(shard)
        if lc is not None and lc.status == LEADER and not lc.closed:
            return lc
        hint = self.assignments.leader_of(shard)
        if lc is None and hint is None and self.assignments.initialized:
            raise ShardNotFound(f"oxia: shard {shard} not found", shard=shard)
        raise NodeIsNotLeader(
            f"oxia: node is not leader for shard {shard}", shard=shard, leader_hint=hint
        )

    async def drain(self, timeout: float) -> None:
        """Waits (up to ``timeout``) until no leader has writes in flight."""
        await asyncio.gather(*(lc.drain(timeout) for lc in self.leaders.values()))

    async def close(self) -> None:
        """Stops every controller, then closes the storage (flushing the DBs)."""
        if self._closed:
            return
        self._closed = True
        for lc in list(self.leaders.values()):
            await lc.close()
        for st in list(self._storages.values()):
            try:
                st.close()
            except Exception:
                log.exception("closing shard %s/%s", st.namespace, st.shard)
        self.leaders.clear()
        self._storages.clear()
