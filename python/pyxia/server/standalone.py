"""Standalone mode: one data server with an in-process coordinator for RF=1.

It runs the same code paths as a cluster: each shard is fenced into a new
term (NewTerm) and elected (BecomeLeader) locally, then the assignments are
published to clients through GetShardAssignments.

Before anything is opened, the data server locks and checks its directories,
and the namespaces asked for are checked against the shard layout stored in
the data dir (``pyxia.dirs``): each namespace keeps the shard ids, count and
key sorting it was created with; new ones get ids after those in use.

It has no peers: the internal port is off unless ``internal_addr`` is given (``pyxia
standalone --internal-addr``, e.g. for test hooks), and even then it refuses Handshake and
every coordination and replication call (``ServerOptions.coordinated = False``). The shards
are opened through the director's trusted path (this process is their coordinator).

Terms: a restart leads each shard in ``term + 1``. A shard whose stored term is at or above
``MAX_TERM`` (forged by a NewTerm before terms were bounded) is re-based instead of
overflowing: it leads in one more than the last term in its log, or in that term itself if
the log already holds entries above the bound (see ``validation.standalone_term``; safe
because this server is the shard's only replica). A warning names the shard and both terms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pyxia.common.sharding import generate_shards
from pyxia.common.validation import standalone_term
from pyxia.config import NamespaceConfig
from pyxia.dirs import LayoutAsk
from pyxia.proto import client_pb2
from pyxia.server.data_server import DataServer, ServerOptions
from pyxia.storage.db import TermOptions

log = logging.getLogger("pyxia.standalone")

ELECT_CONCURRENCY = 64
"""Shards opened and elected at a time at startup (one after another, a restart of 1,000
shards took a minute)."""

_KEY_SORTING = {
    "hierarchical": client_pb2.KEY_SORTING_HIERARCHICAL,
    "natural": client_pb2.KEY_SORTING_NATURAL,
}


class Standalone:
    def __init__(
        self,
        options: ServerOptions,
        namespaces: list[NamespaceConfig],
        *,
        config_file: Path | None = None,
        build: Callable[[ServerOptions], DataServer],
    ) -> None:
        """``config_file``: the YAML the namespaces come from (None: the command-line flags),
        named when they contradict the layout stored in the data dir. ``build`` makes the data
        server from the options once they are settled (:func:`pyxia.node.standalone` passes
        the composition root's, which adds the timestamp oracle)."""
        if not namespaces:
            raise ValueError("standalone needs at least one namespace")
        self._given = {n.name for n in namespaces}
        if options.tso is not None:
            namespaces = with_tso_namespace(options, namespaces)
        options.coordinated = False
        self.options = options
        self.namespaces = namespaces
        self.config_file = config_file
        self.server = build(options)
        self.first_shard: dict[str, int] = {}
        self._layout_checked = False

    def layout_asks(self) -> list[LayoutAsk]:
        """What this start asks of each namespace's layout, and where that comes from."""
        out = []
        for ns in self.namespaces:
            if ns.name not in self._given:  # the timestamp oracle's, added here
                shards_src = sorting_src = f"--tso-namespace {ns.name}"
            elif self.config_file is not None:
                where = f"namespace {ns.name} in {self.config_file}"
                shards_src = f"initialShardCount {ns.initial_shard_count} ({where})"
                sorting_src = f"keySorting {ns.key_sorting} ({where})"
            else:
                shards_src = f"--shards {ns.initial_shard_count}"
                sorting_src = f"--key-sorting {ns.key_sorting}"
            out.append(
                LayoutAsk(ns.name, ns.initial_shard_count, ns.key_sorting, shards_src, sorting_src)
            )
        return out

    def open_dirs(self) -> None:
        """Locks and checks the data and WAL dirs and the namespaces' layout against the one
        stored in the data dir, learning each namespace's shard ids; raises
        :class:`~pyxia.dirs.DirError` (the locks released) on a contradiction. Idempotent; the
        command line calls it before it tightens the directories' modes."""
        if self._layout_checked:
            return
        dirs = self.server.open_dirs()
        try:
            self.first_shard = dirs.standalone_layout(self.layout_asks())
        except BaseException:
            self.server.close_dirs()
            raise
        self._layout_checked = True

    async def start(self) -> None:
        try:
            self.open_dirs()
        except BaseException:
            await self.server.close()
            raise
        await self.server.start()
        try:
            await self._elect_all()
        except BaseException:
            await self.server.close()
            raise
        await self.server.set_ready()

    async def _elect_all(self) -> None:
        """Opens and elects every shard, up to :data:`ELECT_CONCURRENCY` at a time (their
        storage opens in the director's worker threads; their term writes and log syncs
        overlap), the timestamp oracle's last, then publishes the assignments once."""
        server = self.server
        assignments = client_pb2.ShardAssignments()
        jobs: list[tuple[NamespaceConfig, int, client_pb2.Int32HashRange]] = []
        for ns in self.namespaces:
            nsa = assignments.namespaces[ns.name]
            nsa.shard_key_router = client_pb2.XXHASH3
            nsa.key_sorting = _KEY_SORTING[ns.key_sorting]
            for i, r in enumerate(generate_shards(ns.initial_shard_count)):
                hash_range = client_pb2.Int32HashRange(
                    min_hash_inclusive=r.min_inclusive, max_hash_inclusive=r.max_inclusive
                )
                jobs.append((ns, self.first_shard.get(ns.name, 0) + i, hash_range))
        gate = asyncio.Semaphore(ELECT_CONCURRENCY)

        async def elect(ns: NamespaceConfig, shard_id: int) -> None:
            async with gate:
                lc = await server.director.open_leader(ns.name, shard_id, ns.encoding)
                term = standalone_term(lc.term, lc.storage.head_entry_id().term)
                if term <= lc.term:
                    log.warning(
                        "shard %s/%d: stored term %d is beyond the largest valid term; "
                        "re-based to %d (this server is its only replica)",
                        ns.name,
                        shard_id,
                        lc.term,
                        term,
                    )
                await lc.new_term(term, TermOptions(ns.notifications_enabled, ns.key_sorting))
                await lc.become_leader(term, 1)
                lc.leader_hint = server.public_address
                log.debug("shard %s/%d leader at term %d", ns.name, shard_id, term)

        # A failure cancels the other elections and is raised as itself (the caller closes
        # the server; the command line reports a corrupt replica in one line).
        tso = self.options.tso.namespace if self.options.tso is not None else None
        try:
            async with asyncio.TaskGroup() as tg:
                for ns, shard_id, _ in jobs:
                    if ns.name != tso:
                        tg.create_task(elect(ns, shard_id))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        # The timestamp oracle's shard last and in this task, as when shards were elected one
        # by one: its leadership starts the oracle's fence, which logs an entry; the server
        # says it is ready before that runs.
        for ns, shard_id, _ in jobs:
            if ns.name == tso:
                await elect(ns, shard_id)
        for ns, shard_id, hash_range in jobs:
            assignments.namespaces[ns.name].assignments.add(
                shard=shard_id, leader=server.public_address, int32_hash_range=hash_range
            )
        server.assignments.update(assignments)

    async def close(self) -> None:
        await self.server.close()


def with_tso_namespace(
    options: ServerOptions, namespaces: list[NamespaceConfig]
) -> list[NamespaceConfig]:
    """The namespaces plus the one-shard TSO namespace: the one marked ``tso: true`` if any
    (the oracle then serves it), else ``options.tso.namespace`` ("tso"), created if missing."""
    assert options.tso is not None
    marked = [n for n in namespaces if n.tso]
    if marked:
        options.tso = replace(options.tso, namespace=marked[0].name)
        return namespaces
    name = options.tso.namespace
    same = [n for n in namespaces if n.name == name]
    if not same:
        return [*namespaces, NamespaceConfig(name, 1, 1, notifications_enabled=False, tso=True)]
    if same[0].initial_shard_count != 1:
        raise ValueError(
            f"namespace {name!r} serves the timestamp oracle and must have one shard "
            "(choose another --tso-namespace)"
        )
    return namespaces
