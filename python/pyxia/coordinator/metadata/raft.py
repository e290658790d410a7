"""The raft provider: coordinators replicate the status among themselves with
PySyncObj (Raft); the Raft leader is the leading coordinator.

State machine (applied in log order on every node, so identical everywhere):
``snapshot = (status protojson | None, counter)`` and ``leader_token``.

- Becoming leader: when PySyncObj makes this node the Raft leader,
  ``wait_to_become_leader`` commits ``claim(token)`` with a fresh token. Its
  application is a barrier (every earlier entry is applied locally, so ``get()``
  is current) and a fence: from then on only ``cas`` commands carrying this
  token are applied.
- ``store``: ``cas(status, expected counter, token)`` committed through the
  log; applied only if the token still leads and the counter matches, so an
  old leader's late command can never overwrite a newer leader's status.
- Leadership loss: PySyncObj's ``onStateChanged`` (leader -> follower: a
  higher term seen, or no answer from a majority for
  ``leader_fallback_timeout``) fires the signal from PySyncObj's thread.
  A rejected ``cas`` or a command Raft discarded fires it too.

Version = the counter (-1 = NOT_EXISTS). Persistence: with ``data_dir`` the
Raft journal and snapshots live there (PySyncObj's journal is mmap'd and
synced by the OS, not fsync'ed per entry); without it the state lives as long
as a majority of the coordinators does.

Security (docs/security.md): PySyncObj unpickles what reaches its port.
- A shared secret is required (``secret``, ``--raft-secret-file``): PySyncObj
  derives a Fernet key from it and authenticates (HMAC-SHA256) and encrypts
  (AES-128-CBC) every frame, the handshake's first one included, before it
  unpickles it; a frame made without the secret drops the connection. Each
  connection's frames also carry a random per-connection key (replayed frames
  are refused); PySyncObj checks that with ``assert``, so ``python -O`` is
  refused.
- Unpickling is restricted to plain data and PySyncObj's member class
  (:mod:`.raft_unpickler`, installed when this module is imported), so even a
  holder of the secret, or a writer of the journal, cannot make it run code.
- The listener binds only the host of ``address`` (not 0.0.0.0).
What the secret does not give: protection from a holder of the secret (Raft is
not Byzantine tolerant: a member can rewrite the status or wedge the log), nor
durability beyond PySyncObj's (see above).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import queue
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pysyncobj import (
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    replicated,
)

from pyxia.errors import AlreadyClosed, MetadataBadVersion, ResourceUnavailable
from pyxia.proto.metadata_pb2 import ClusterStatus

from . import raft_unpickler
from .codec import StatusEncoder, decode_status
from .provider import (
    NOT_EXISTS,
    LeadershipLost,
    MetadataProvider,
    Version,
    bad_version,
    counter_of,
)

log = logging.getLogger("pyxia.coordinator.metadata.raft")

raft_unpickler.install()
# PySyncObj's win_inet_pton module replaces socket.inet_ntop, on every OS, with a Windows-only
# function that raises TypeError: give the process its real one back.
socket.inet_ntop = _socket.inet_ntop

MIN_SECRET_BYTES = 16

_RAFT_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
# Outcomes of a command that never came back from the log.
_STEPPED_DOWN = -1
_CLOSED = -2

_FAIL_NAMES = {
    v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_") and isinstance(v, int)
}


class _StatusState(SyncObjConsumer):  # type: ignore[misc]
    """The replicated state machine. Methods run on PySyncObj's thread, in log order."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: tuple[str | None, int] = (None, -1)  # replaced whole: no torn reads
        self.leader_token = ""

    @replicated  # type: ignore[untyped-decorator]
    def claim(self, token: str) -> str:
        self.leader_token = token
        return token

    @replicated  # type: ignore[untyped-decorator]
    def cas(self, status_json: str, expected: int, token: str) -> tuple[str, int]:
        counter = self.snapshot[1]
        if token != self.leader_token:
            return "not_leader", counter
        if expected != counter:
            return "bad_version", counter
        self.snapshot = (status_json, counter + 1)
        return "ok", counter + 1


class RaftMetadataProvider(MetadataProvider):
    name = "raft"

    def __init__(
        self,
        address: str,
        peers: Sequence[str],
        *,
        data_dir: str | Path | None = None,
        heartbeat_interval: float = 0.1,
        election_timeout: tuple[float, float] = (1.0, 2.0),
        leader_fallback_timeout: float = 3.0,
        connection_retry: float = 1.0,
        commit_timeout: float = 10.0,
        secret: bytes,
    ) -> None:
        super().__init__()
        self._encoder = StatusEncoder()  # reuses the JSON of unchanged shards
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the raft secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
            )
        self.address = address
        self.peers = sorted({p for p in peers if p and p != address})
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._heartbeat = heartbeat_interval
        self._election_timeout = election_timeout
        self._fallback = leader_fallback_timeout
        self._connection_retry = connection_retry
        self._commit_timeout = commit_timeout
        self._secret = secret
        self._state = _StatusState()
        self._machine: Any = None  # pysyncobj.SyncObj
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # raft state changed, or closing
        self._pending: set[asyncio.Future[tuple[Any, int]]] = set()
        self._tick_actions: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lost: LeadershipLost | None = None
        self._token = ""

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._check_open()
        if self._machine is not None:
            return
        if sys.flags.optimize:
            raise ResourceUnavailable(
                "raft: PySyncObj checks its frames' replay protection with assert statements, "
                "which python -O removes: run without -O (and without PYTHONOPTIMIZE)"
            )
        self._loop = asyncio.get_running_loop()
        journal = dump = None
        if self._data_dir is not None:
            self._data_dir.mkdir(0o700, parents=True, exist_ok=True)
            journal = str(self._data_dir / "raft.journal")
            dump = str(self._data_dir / "raft.dump")
        low, high = self._election_timeout
        conf = SyncObjConf(
            appendEntriesPeriod=self._heartbeat,
            raftMinTimeout=low,
            raftMaxTimeout=high,
            leaderFallbackTimeout=self._fallback,
            connectionTimeout=max(3.5, 2 * high),
            connectionRetryTime=self._connection_retry,
            onStateChanged=self._on_state_changed,
            journalFile=journal,
            fullDumpFile=dump,
            useFork=False,  # never fork a process running asyncio and gRPC threads
            bindRetryTime=0.2,
            maxBindRetries=10,
            password=self._secret,  # authenticate + encrypt every frame before unpickling
            bindAddress=self.address,  # only the given host, never 0.0.0.0
        )
        conf.validate()
        # Built on the event loop's thread: PySyncObj's tick thread lives as
        # long as the thread that created it.
        machine = SyncObj(self.address, self.peers, conf, consumers=[self._state])
        machine.addOnTickCallback(self._run_tick_actions)
        self._machine = machine
        try:
            await asyncio.to_thread(machine.waitBinded)
        except Exception as e:
            await asyncio.to_thread(machine.destroy_synchronous)
            self._machine = None
            raise ResourceUnavailable(f"raft: cannot bind {self.address}: {e}") from e

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lost is not None:
            self._lost.fire("raft metadata provider closed")
        self._abort_pending(_CLOSED)
        self._changed.set()
        machine, self._machine = self._machine, None
        if machine is not None:
            await asyncio.to_thread(machine.destroy_synchronous)

    # -- PySyncObj thread ------------------------------------------------------

    def _on_state_changed(self, old: int, new: int) -> None:
        if old == _RAFT_LEADER and new != _RAFT_LEADER:
            lost = self._lost
            if lost is not None and lost.fire(f"raft leadership lost at {self.address}"):
                log.warning("raft leadership lost", extra={"address": self.address})
            self._call_soon(self._abort_pending, _STEPPED_DOWN)
        self._call_soon(self._changed.set)

    def _run_tick_actions(self) -> None:
        while True:
            try:
                action = self._tick_actions.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            except Exception:  # pragma: no cover - defensive
                log.exception("raft tick action failed")

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(fn, *args)

    # -- committing commands ---------------------------------------------------

    def _abort_pending(self, outcome: int) -> None:
        for fut in list(self._pending):
            if not fut.done():
                fut.set_result((None, outcome))
        self._pending.clear()

    async def _commit(self, command: Callable[..., None], *args: Any) -> tuple[Any, int] | None:
        """Submits a replicated command; its (result, FAIL_REASON) once applied
        here, (None, _STEPPED_DOWN/_CLOSED) if that happened first, None on timeout."""
        assert self._loop is not None
        fut: asyncio.Future[tuple[Any, int]] = self._loop.create_future()
        self._pending.add(fut)

        def settle(result: Any, err: int) -> None:
            if not fut.done():
                fut.set_result((result, err))
            self._pending.discard(fut)

        def on_done(result: Any, err: int) -> None:  # PySyncObj thread
            self._call_soon(settle, result, err)

        command(*args, callback=on_done)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self._commit_timeout)
        except TimeoutError:
            return None
        finally:
            self._pending.discard(fut)

    def _is_raft_leader(self) -> bool:
        machine = self._machine
        return machine is not None and bool(machine._isLeader())

    # -- the contract ----------------------------------------------------------

    async def get(self) -> tuple[ClusterStatus | None, Version]:
        await self.start()
        status_json, counter = self._state.snapshot
        if status_json is None:
            return None, NOT_EXISTS
        return decode_status(status_json, f"raft state at {self.address}"), Version(str(counter))

    async def store(self, status: ClusterStatus, expected_version: Version) -> Version:
        await self.start()
        lost, token = self._lost, self._token
        if lost is None or lost.fired:
            raise MetadataBadVersion(f"raft: {self.address} is not the leading coordinator")
        expected = counter_of(expected_version)
        outcome = await self._commit(self._state.cas, self._encoder.encode(status), expected, token)
        if outcome is None:
            lost.fire("raft store not committed in time")
            raise MetadataBadVersion("raft: store not committed in time; its outcome is unknown")
        result, err = outcome
        if err == _CLOSED:
            raise AlreadyClosed("raft metadata provider is closed")
        if err != FAIL_REASON.SUCCESS:
            why = "leadership lost" if err == _STEPPED_DOWN else _FAIL_NAMES.get(err, str(err))
            lost.fire(f"raft store not committed: {why}")
            raise MetadataBadVersion(f"raft: store not committed ({why}); its outcome is unknown")
        kind, counter = result
        if kind == "ok":
            return Version(str(counter))
        found = NOT_EXISTS if counter < 0 else Version(str(counter))
        if kind == "not_leader":
            lost.fire("raft: another coordinator claimed leadership")
            raise MetadataBadVersion(f"raft: {self.address} no longer leads (claimed by another)")
        lost.fire("raft: metadata version conflict")
        raise bad_version(expected_version, found, "raft")

    async def wait_to_become_leader(self) -> LeadershipLost | None:
        await self.start()
        while True:
            self._check_open()
            self._changed.clear()
            current = self._lost
            if current is not None and not current.fired and self._is_raft_leader():
                return current
            recheck = self._election_timeout[1]
            if self._is_raft_leader():
                lost = await self._claim()
                if lost is not None:
                    return lost
                recheck = self._heartbeat  # the claim failed: retry soon, not in a hot loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), recheck)

    async def _claim(self) -> LeadershipLost | None:
        assert self._loop is not None
        token = uuid.uuid4().hex
        outcome = await self._commit(self._state.claim, token)
        self._check_open()
        if outcome is None or outcome[1] != FAIL_REASON.SUCCESS:
            return None
        if not self._is_raft_leader() or self._state.leader_token != token:
            return None
        lost = LeadershipLost(self._loop)
        self._lost, self._token = lost, token
        if not self._is_raft_leader():  # stepped down while we published the signal
            lost.fire(f"raft leadership lost at {self.address}")
            return None
        log.info("raft: leading coordinator", extra={"address": self.address})
        return lost

    # -- operations --------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """This node is the Raft leader (it may not have claimed yet)."""
        return self._is_raft_leader()

    async def transfer_leadership(self) -> bool:
        """Hands Raft leadership to the most caught-up follower (graceful step
        down). True if the request was sent; the signal fires once it is done."""
        await self.start()
        assert self._loop is not None
        fut: asyncio.Future[int] = self._loop.create_future()

        def settle(err: int) -> None:
            if not fut.done():
                fut.set_result(err)

        def act() -> None:  # PySyncObj thread
            self._machine.transferLeadership(
                callback=lambda _res, err: self._call_soon(settle, err)
            )

        self._tick_actions.put(act)
        try:
            err = await asyncio.wait_for(fut, self._commit_timeout)
        except TimeoutError:
            return False
        return bool(err == FAIL_REASON.SUCCESS)
