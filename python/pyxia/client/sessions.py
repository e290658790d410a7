"""Sessions for ephemeral records: one per shard, created on the first ephemeral put there and
kept alive by heartbeats (Oxia ``oxia/sessions.go``).

A session is ACTIVE while heartbeats are answered, SUSPENDED while they fail, and LOST once the
server answers that it does not know it (it expired: its ephemeral records are gone) or when no
heartbeat was answered for a whole session timeout (then the client closes it on the server as
soon as it can, so that its records go too). LOST is final; the next ephemeral put on the shard
opens a new session. Listeners hear every change of state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxia.client.errors import ClientClosed, RequestTimeout
from pyxia.client.policy import Retry, classify, leader_hint
from pyxia.client.results import SessionEvent, SessionState
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import PyxiaError, SessionNotFound
from pyxia.proto import client_pb2

if TYPE_CHECKING:
    from pyxia.client.context import ClientContext

log = logging.getLogger("pyxia.client.sessions")

SessionListener = Callable[[SessionEvent], None]


class ClientSession:
    def __init__(self, manager: SessionManager, shard: int) -> None:
        self.manager = manager
        self.shard = shard
        self.session_id = -1
        self.state = SessionState.SUSPENDED
        loop = manager.core.loop
        self.established: asyncio.Future[int] = loop.create_future()
        self._task = loop.create_task(self._run(), name=f"pyxia-session-{shard}")
        self.last_ok = time.monotonic()

    async def _run(self) -> None:
        core = self.manager.core
        try:
            self.session_id = await self._create()
        except asyncio.CancelledError:
            if not self.established.done():
                self.established.set_exception(ClientClosed("oxia: the client is closed"))
            raise
        except BaseException as e:
            if not self.established.done():
                self.established.set_exception(e)
            self.manager.forget(self)
            return
        self.last_ok = time.monotonic()
        self._set_state(SessionState.ACTIVE, "created")
        self.established.set_result(self.session_id)
        interval = core.options.keep_alive_interval_s
        timeout = core.options.session_timeout_s
        req = client_pb2.SessionHeartbeat(shard=self.shard, session_id=self.session_id)
        while True:
            await asyncio.sleep(interval)
            try:
                leader = core.leader_of(self.shard)
                if leader is None:
                    raise RequestTimeout("oxia: no leader known")
                await core.conns.stub(leader).keep_alive(req, timeout=max(interval, 1.0))
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                err = e if isinstance(e, PyxiaError) else error_from_rpc(e)
                if isinstance(err, SessionNotFound):
                    self.lose("the server no longer knows the session (expired)")
                    return
                hint = leader_hint(err)
                if hint:
                    core.set_leader_hint(self.shard, hint)
                if time.monotonic() - self.last_ok >= timeout:
                    self.lose(f"no heartbeat answered for {timeout:g}s ({err})")
                    core.loop.create_task(self.manager.close_remote(self.shard, self.session_id))
                    return
                self._set_state(SessionState.SUSPENDED, str(err))
                continue
            self.last_ok = time.monotonic()
            self._set_state(SessionState.ACTIVE, "heartbeat answered")

    async def _create(self) -> int:
        core = self.manager.core
        deadline = time.monotonic() + core.options.request_timeout_s
        req = client_pb2.CreateSessionRequest(
            shard=self.shard,
            session_timeout_ms=int(core.options.session_timeout_s * 1000),
            client_identity=core.options.identity,
        )
        attempt = 0
        while True:
            try:
                leader = core.leader_of(self.shard)
                if leader is None:
                    raise RequestTimeout("oxia: no leader known")
                left = deadline - time.monotonic()
                resp = await core.conns.stub(leader).create_session(req, timeout=max(left, 0.01))
                return int(resp.session_id)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                err = e if isinstance(e, PyxiaError) else error_from_rpc(e)
                if classify(err) is Retry.NEVER:
                    raise err from None
                hint = leader_hint(err)
                if hint:
                    core.set_leader_hint(self.shard, hint)
                if time.monotonic() >= deadline:
                    raise RequestTimeout(f"oxia: cannot create a session: {err}") from err
                await asyncio.sleep(0 if hint else core.backoff.after(err, attempt))
                attempt += 1

    def _set_state(self, state: SessionState, reason: str) -> None:
        if state is self.state or self.state is SessionState.LOST:
            return
        self.state = state
        self.manager.notify(SessionEvent(self.shard, self.session_id, state, reason))

    def lose(self, reason: str) -> None:
        if self.state is SessionState.LOST:
            return
        log.warning("session %d on shard %d lost: %s", self.session_id, self.shard, reason)
        self._set_state(SessionState.LOST, reason)
        self.manager.forget(self)
        if asyncio.current_task() is not self._task:
            self._task.cancel()

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        if self.state is not SessionState.LOST and self.session_id >= 0:
            await self.manager.close_remote(self.shard, self.session_id)
            self._set_state(SessionState.LOST, "closed")


class SessionManager:
    def __init__(self, core: ClientContext) -> None:
        self.core = core
        self._by_shard: dict[int, ClientSession] = {}
        self._listeners: list[SessionListener] = []

    def add_listener(self, fn: SessionListener) -> Callable[[], None]:
        self._listeners.append(fn)

        def remove() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return remove

    def notify(self, event: SessionEvent) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:
                log.exception("session listener failed")

    async def session_id(self, shard: int) -> int:
        s = self._by_shard.get(shard)
        if s is None:
            s = ClientSession(self, shard)
            self._by_shard[shard] = s
        return await asyncio.shield(s.established)

    def session(self, shard: int) -> ClientSession | None:
        return self._by_shard.get(shard)

    def forget(self, s: ClientSession) -> None:
        if self._by_shard.get(s.shard) is s:
            del self._by_shard[s.shard]

    def on_missing(self, shard: int, session_id: int) -> None:
        """A write said the session does not exist."""
        s = self._by_shard.get(shard)
        if s is not None and s.session_id == session_id:
            s.lose("the server no longer knows the session (a write was refused)")

    async def close_remote(self, shard: int, session_id: int) -> None:
        core = self.core
        try:
            leader = core.leader_of(shard)
            if leader is not None:
                await core.conns.stub(leader).close_session(
                    client_pb2.CloseSessionRequest(shard=shard, session_id=session_id),
                    timeout=min(core.options.request_timeout_s, 5.0),
                )
        except Exception as e:
            log.debug("closing session %d on shard %d: %s", session_id, shard, e)

    async def close(self) -> None:
        sessions = list(self._by_shard.values())
        self._by_shard.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
