"""Follows the shard assignments: a ``GetShardAssignments`` stream from any of the service
addresses (or a leader learned from them), reconnected with backoff when it breaks. A server
that does not know the service (UNIMPLEMENTED) is asked again under Oxia's pre-0.12 service
name, and the client uses that name from then on.

Until the first map arrives the client retries often (at most ``STARTUP_RETRY_MAX_S`` apart):
a fresh cluster is "not ready" for a while (servers not listening yet; an Oxia data server
refuses with NOT_INITIALIZED until its coordinator's first push), and a client that has backed
off to a second would connect up to that long after the cluster is ready. A refused attempt
costs the server one cheap answer. Once connected, a broken stream is retried with the
client's ordinary backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from pyxia.client.policy import NOT_READY_RETRY_MAX_S, Backoff
from pyxia.client.shard_map import ShardMap
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import NamespaceNotFound, PermissionDenied, PyxiaError, Unauthenticated
from pyxia.proto import client_pb2

if TYPE_CHECKING:
    from pyxia.client.context import ClientContext

log = logging.getLogger("pyxia.client")

STARTUP_RETRY_MAX_S = NOT_READY_RETRY_MAX_S
"""The longest wait between attempts before the client has its first map."""


class AssignmentsWatcher:
    def __init__(self, core: ClientContext, on_update: Callable[[ShardMap], None]) -> None:
        self.core = core
        self.on_update = on_update
        self.ready: asyncio.Future[None] = core.loop.create_future()
        self._task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        b = core.backoff
        self._startup_backoff = Backoff(min(b.initial_s, STARTUP_RETRY_MAX_S), STARTUP_RETRY_MAX_S)

    def start(self) -> None:
        self._task = self.core.loop.create_task(self._run(), name="pyxia-assignments")

    def _candidates(self) -> list[str]:
        out = list(self.core.options.service_addresses)
        m = self.core.shard_map
        if m is not None:
            for a in m.leaders.values():
                if a and a not in out:
                    out.append(a)
        return out

    async def _run(self) -> None:
        core = self.core
        ns = core.namespace
        attempt = 0
        i = 0
        while True:
            candidates = self._candidates()
            address = candidates[i % len(candidates)]
            try:
                call = core.conns.stub(address).get_shard_assignments(
                    client_pb2.ShardAssignmentsRequest(namespace=ns)
                )
                async for a in call:
                    m = ShardMap.from_assignments(ns, a)
                    if m is None:
                        raise NamespaceNotFound(f"oxia: namespace not found: {ns!r}")
                    attempt = 0
                    self.on_update(m)
                    if not self.ready.done():
                        self.ready.set_result(None)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                if (
                    isinstance(e, grpc.aio.AioRpcError)
                    and e.code() == grpc.StatusCode.UNIMPLEMENTED
                    and core.conns.use_compat_service()
                ):
                    continue  # an Oxia server older than 0.12: ask it again by its old name
                err = e if isinstance(e, PyxiaError) else error_from_rpc(e)
                self.last_error = err
                if (
                    isinstance(err, (NamespaceNotFound, Unauthenticated, PermissionDenied))
                    and not self.ready.done()
                ):
                    self.ready.set_exception(err)
                    return
                log.debug("assignments from %s: %s", address, err)
            i += 1
            backoff = core.backoff if self.ready.done() else self._startup_backoff
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if not self.ready.done():
            self.ready.cancel()
