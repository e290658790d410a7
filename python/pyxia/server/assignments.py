"""Shard assignments: who leads which shard, which hash range it owns.

The coordinator (or, in standalone mode, the local one) pushes the full map;
every data server re-serves it to clients on GetShardAssignments, as a
stream that sends the whole map again on every change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from pyxia.errors import NamespaceNotFound
from pyxia.proto import client_pb2
from pyxia.server.signals import Signal


class AssignmentsDispatcher:
    """Holds the latest assignments and streams them to clients."""

    def __init__(self) -> None:
        self._current: client_pb2.ShardAssignments | None = None
        # shard id -> (namespace, advertised leader or ""), rebuilt on every update
        self._index: dict[int, tuple[str, str]] = {}
        self.changed = Signal()

    @property
    def current(self) -> client_pb2.ShardAssignments | None:
        return self._current

    @property
    def initialized(self) -> bool:
        return self._current is not None

    def update(self, assignments: client_pb2.ShardAssignments) -> None:
        """Takes a new map (already validated: see ``pyxia.common.validation``)."""
        self._index = {
            a.shard: (name, a.leader)
            for name, ns in assignments.namespaces.items()
            for a in ns.assignments
        }
        self._current = assignments
        self.changed.notify()

    def leader_of(self, shard: int) -> str | None:
        """The advertised leader of ``shard``, if known."""
        entry = self._index.get(shard)
        return (entry[1] or None) if entry is not None else None

    def namespace_of(self, shard: int) -> str | None:
        entry = self._index.get(shard)
        return entry[0] if entry is not None else None

    def knows(self, namespace: str, shard: int) -> bool:
        """Whether the latest map assigns ``shard`` to ``namespace`` (with a leader or not yet):
        only then may a data server create a replica of it."""
        entry = self._index.get(shard)
        return entry is not None and entry[0] == namespace

    def _view(
        self, namespace: str, visible: Callable[[str], bool] | None = None
    ) -> client_pb2.ShardAssignments:
        assert self._current is not None
        if not namespace:
            if visible is None:
                return self._current
            out = client_pb2.ShardAssignments()
            for name, nsa in self._current.namespaces.items():
                if visible(name):
                    out.namespaces[name].CopyFrom(nsa)
            out.allowed_authorities.extend(self._current.allowed_authorities)
            return out
        if namespace not in self._current.namespaces:
            raise NamespaceNotFound(f"oxia: namespace not found: {namespace!r}")
        out = client_pb2.ShardAssignments()
        out.namespaces[namespace].CopyFrom(self._current.namespaces[namespace])
        out.allowed_authorities.extend(self._current.allowed_authorities)
        return out

    async def stream(
        self, namespace: str, visible: Callable[[str], bool] | None = None
    ) -> AsyncIterator[client_pb2.ShardAssignments]:
        """Yields the assignments now (once known) and after every change. With no
        ``namespace``, every namespace (those ``visible`` accepts, when given)."""
        sent = -1
        while not self.changed.closed:
            seen = self.changed.generation
            if self._current is not None and seen != sent:
                sent = seen
                yield self._view(namespace, visible)
            await self.changed.wait(seen)

    def close(self) -> None:
        self.changed.close()
