"""Timestamp oracle clients: :class:`AsyncTsoClient` (asyncio) and :class:`TsoClient`
(threads), one core. They speak tsoracle's ``tsoracle.v1.TsoService`` (pyxia's data servers or
tsoracle itself): every call of tsoracle-proto 1.3.x.

    from pyxia import TsoClient

    with TsoClient(["host1:6648", "host2:6648", "host3:6648"]) as tso:
        ts = tso.get_ts()                 # one int
        batch = tso.get_ts_batch(100)     # a range of 100 consecutive timestamps
        block = tso.get_seq("orders", 10) # SeqBlock: dense ordinals, never reused
        lease = tso.acquire_lease(b"writer-group", 1, ttl_s=10)
        safe = tso.get_current_max_safe() # MaxSafe(max_safe_physical_ms, epoch)

- **Coalescing**: callers queue up; one driver task sends one ``GetTs`` for everything queued
  (up to 262,144 timestamps per RPC), hands each caller a contiguous slice, and meanwhile the
  next batch forms (one RPC in flight: the batch grows with load, PD's and AtlasDB's scheme).
  Sequence calls coalesce the same way into one ``GetSeq``/``GetSeqBatch`` (per-key totals up
  to ``max_seq_count``, 128 keys), each caller getting its slice of its keys' blocks; the two
  reads (safe point, frontier) share one RPC among the callers waiting for it.
- **Freshness**: a call is only ever answered by an RPC sent after it was made, so no
  timestamp it gets predates the call — the real-time order the server guarantees carries
  over to callers.
- **Leader following**: ``FAILED_PRECONDITION`` with a ``tsoracle-leader-hint-bin`` trailer
  (protobuf ``LeaderHint``; postcard-encoded hints are understood too) is a redirect: the
  hinted leader is tried next without backoff (a hint whose epoch is older than the leader's
  last seen epoch, or naming an endpoint that just failed, is ignored; the leader naming
  itself is asked again within milliseconds); other failures move to the next endpoint. Once
  every endpoint failed in a pass the client backs off: a few milliseconds when they all
  answered (a leadership in transition, as in a planned move: callers see no error), full
  jitter from ``backoff_base_s`` when some could not be reached. ``timeout_s`` bounds a call,
  ``attempt_timeout_s`` each RPC. ``FAILED_PRECONDITION`` *without* the trailer is a definite
  refusal (a sequence at 2^64-1, a lease refused) and is raised, as are INVALID_ARGUMENT,
  RESOURCE_EXHAUSTED and NOT_FOUND.
- **Sequences are not idempotent**: a GetSeq is only sent on a live connection (a refused
  connection is known not to have carried it, and is retried elsewhere); a redirect is
  retried (nothing was written); any other failure after sending raises :class:`SeqUncertain`
  — the block may be spent, never reused; reconcile before asking again. Lease calls are
  retried like GetTs (a re-acquire at the same holder epoch returns the same lease).
- **Fallback tripwire**: every grant must start above the largest timestamp this client
  received before sending that RPC; otherwise :class:`TimestampFallback` is raised to the
  callers of that batch (and counted in ``fallbacks``) and its timestamps are not handed out.
- **Security**: ``tls=`` (a ``TlsOptions``, or True for the system's roots) and a bearer token
  (``auth_token=``, ``auth_token_file=`` or ``auth_token_provider=``) as for ``pyxia.Client``;
  UNAUTHENTICATED / PERMISSION_DENIED are raised at once (never retried).
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from pyxia.client.connections import WithToken, channel_options
from pyxia.client.errors import ClientClosed, RequestTimeout
from pyxia.client.options import client_tls
from pyxia.client.waiter import Waiter
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.errors import (
    InvalidArgument,
    PermissionDenied,
    PyxiaError,
    ResourceUnavailable,
    Unauthenticated,
)
from pyxia.proto import tso_pb2
from pyxia.security.tls import TlsOptions
from pyxia.security.tokens import TokenSource
from pyxia.tso.allocator import LOGICAL_BITS, MAX_COUNT
from pyxia.tso.errors import (
    LeaseNotFound,
    SeqUncertain,
    TimestampFallback,
)
from pyxia.tso.sequences import DEFAULT_MAX_SEQ_BATCH_KEYS, DEFAULT_MAX_SEQ_COUNT, check_key

__all__ = [
    "AsyncTsoClient",
    "GrantInfo",
    "LeaderHint",
    "Lease",
    "LeaseRenewal",
    "MaxSafe",
    "SafeFrontier",
    "SeqBlock",
    "SeqUncertain",
    "TimestampFallback",
    "TsoClient",
    "decode_leader_hint",
]

_SVC = "/tsoracle.v1.TsoService/"
GET_TS = _SVC + "GetTs"
GET_SEQ = _SVC + "GetSeq"
GET_SEQ_BATCH = _SVC + "GetSeqBatch"
GET_MAX_SAFE = _SVC + "GetCurrentMaxSafe"
GET_FRONTIER = _SVC + "GetSafeFrontier"
ACQUIRE_LEASE = _SVC + "AcquireLease"
RENEW_LEASE = _SVC + "RenewLease"
RELEASE_LEASE = _SVC + "ReleaseLease"
LEADER_HINT_KEY = "tsoracle-leader-hint-bin"
TSO_MAX_MESSAGE_BYTES = 1024 * 1024
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


# -- leader hints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderHint:
    endpoint: str | None
    epoch: int | None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _postcard_hint(data: bytes) -> LeaderHint:
    """Postcard: ``Option`` = 0x00 | 0x01 + value; strings length-prefixed; u64 as varints."""
    i = 0

    def present() -> bool:
        nonlocal i
        tag = data[i]
        i += 1
        if tag not in (0, 1):
            raise ValueError("not a postcard option")
        return tag == 1

    endpoint: str | None = None
    epoch: int | None = None
    if present():
        n, i = _varint(data, i)
        if i + n > len(data):
            raise ValueError("truncated string")
        endpoint = data[i : i + n].decode()
        i += n
    if i < len(data) and present():
        hi, i = _varint(data, i)
        lo, i = _varint(data, i)
        epoch = (hi << 64) | lo
    if i != len(data):
        raise ValueError("trailing bytes")
    return LeaderHint(endpoint, epoch)


def decode_leader_hint(raw: bytes) -> LeaderHint | None:
    """The hint in a ``tsoracle-leader-hint-bin`` trailer (protobuf, else postcard)."""
    try:
        pb = tso_pb2.LeaderHint.FromString(raw)
        endpoint = pb.leader_endpoint if pb.HasField("leader_endpoint") else None
        epoch = (
            (pb.leader_epoch.hi << 64) | pb.leader_epoch.lo if pb.HasField("leader_epoch") else None
        )
        return LeaderHint(endpoint or None, epoch)
    except Exception:
        pass
    try:
        return _postcard_hint(raw) if raw else None
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def _hint_of(e: grpc.aio.AioRpcError) -> LeaderHint | None:
    for item in e.trailing_metadata() or ():
        k, v = item[0], item[1]
        if k == LEADER_HINT_KEY and isinstance(v, bytes):
            return decode_leader_hint(v)
    return None


# -- the core -------------------------------------------------------------------------------------


class _Sink(Protocol):
    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exc: BaseException, /) -> None: ...


@dataclass(slots=True)
class _Request:
    count: int
    sink: _Sink
    single: bool


@dataclass(frozen=True)
class GrantInfo:
    """One GetTs answer: ``count`` timestamps from ``first``, issued at ``epoch``."""

    physical_ms: int
    logical_start: int
    count: int
    epoch: int
    endpoint: str

    @property
    def first(self) -> int:
        return (self.physical_ms << LOGICAL_BITS) | self.logical_start

    @property
    def last(self) -> int:
        return self.first + self.count - 1


@dataclass(frozen=True)
class SeqBlock:
    """A block of dense ordinals ``[start, start + count)`` of one key, issued at ``epoch``."""

    key: str
    start: int
    count: int
    epoch: int

    @property
    def ordinals(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass(frozen=True)
class Lease:
    """A stamping lease: stamp physical milliseconds up to ``ts_upper_bound`` until
    ``expires_at_ms`` (server clock)."""

    lease_id: int
    ts_upper_bound: int
    expires_at_ms: int
    epoch: int


@dataclass(frozen=True)
class LeaseRenewal:
    ts_upper_bound: int
    expires_at_ms: int
    epoch: int


@dataclass(frozen=True)
class MaxSafe:
    """The safe point (physical ms); ``(0, 0)``: no leader answered (cold start)."""

    max_safe_physical_ms: int
    epoch: int


@dataclass(frozen=True)
class SafeFrontier:
    frontier_physical_ms: int
    epoch: int


_DEFINITE_CODES: Mapping[grpc.StatusCode, tuple[type[PyxiaError], str]] = {
    grpc.StatusCode.FAILED_PRECONDITION: (PyxiaError, "tso"),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidArgument, "tso"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (PyxiaError, "tso"),
    grpc.StatusCode.NOT_FOUND: (LeaseNotFound, "tso"),
    grpc.StatusCode.UNIMPLEMENTED: (PyxiaError, "tso"),
    grpc.StatusCode.UNAUTHENTICATED: (Unauthenticated, "tso"),
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDenied, "tso"),
}
"""tsoracle's definite refusals, as its servers send them: a bare code (pyxia's data servers add
the ErrorInfo of the exact error, which wins)."""


def _definite_error(e: grpc.aio.AioRpcError) -> PyxiaError:
    """The domain error of a definite refusal (its ErrorInfo reason, else by code)."""
    return error_from_rpc(e, _DEFINITE_CODES)


def _has_hint(e: grpc.aio.AioRpcError) -> bool:
    return any(item[0] == LEADER_HINT_KEY for item in e.trailing_metadata() or ())


class _Batcher(Generic[I, R]):
    """Callers queue items; one task sends everything queued at once (``send``), hands each
    caller its result, and meanwhile the next batch forms. An item is only ever answered by a
    call sent after it was queued. ``take`` picks the items of one call (a prefix)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[list[I]], Awaitable[list[R]]],
        take: Callable[[list[I]], int] = len,
        name: str = "tso-batcher",
    ) -> None:
        self._loop = loop
        self._send = send
        self._take = take
        self._queue: list[tuple[I, _Sink]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = loop.create_task(self._run(), name=name)

    def enqueue(self, item: I, sink: _Sink) -> None:
        if self._closed:
            sink.set_exception(ClientClosed("tso: client closed"))
            return
        self._queue.append((item, sink))
        self._wake.set()

    async def __call__(self, item: I) -> R:
        fut: asyncio.Future[R] = self._loop.create_future()
        self.enqueue(item, fut)
        return await fut

    async def _run(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            pending = [(i, s) for i, s in self._queue if not s.done()]
            self._queue.clear()
            if not pending:
                continue
            n = max(1, self._take([i for i, _ in pending]))
            batch, rest = pending[:n], pending[n:]
            self._queue[:0] = rest
            try:
                results = await self._send([i for i, _ in batch])
            except asyncio.CancelledError:
                for _, sink in batch:
                    if not sink.done():
                        sink.set_exception(ClientClosed("tso: client closed"))
                raise
            except Exception as e:
                for _, sink in batch:
                    if not sink.done():
                        sink.set_exception(e)
                continue
            for (_, sink), r in zip(batch, results, strict=True):
                if not sink.done():
                    sink.set_result(r)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        for _, sink in self._queue:
            if not sink.done():
                sink.set_exception(ClientClosed("tso: client closed"))
        self._queue.clear()


SeqRequest = tuple[tuple[str, int], ...]


def _seq_take(max_count: int, max_keys: int) -> Callable[[list[SeqRequest]], int]:
    """How many queued sequence requests fit one GetSeqBatch: per-key totals within
    ``max_count``, at most ``max_keys`` keys (a request alone is always sent)."""

    def take(requests: list[SeqRequest]) -> int:
        totals: dict[str, int] = {}
        for i, req in enumerate(requests):
            after = dict(totals)
            for key, count in req:
                after[key] = after.get(key, 0) + count
            if i > 0 and (len(after) > max_keys or any(v > max_count for v in after.values())):
                return i
            totals = after
        return len(requests)

    return take


class AsyncTsoClient:
    """A timestamp oracle client for asyncio (see the module docstring). Create it inside a
    running loop; ``async with AsyncTsoClient(...) as tso: ...``."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = "localhost:6648",
        *,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 2.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
        max_queued: int = 4096,
        max_seq_count: int = DEFAULT_MAX_SEQ_COUNT,
        tls: TlsOptions | bool | None = None,
        auth_token: str | None = None,
        auth_token_file: str | Path | None = None,
        auth_token_provider: Callable[[], str] | None = None,
    ) -> None:
        self._tls = client_tls(tls)
        self._tokens = TokenSource.of(auth_token, auth_token_file, auth_token_provider)
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        eps = [_strip_scheme(e) for e in eps if e]
        if not eps:
            raise InvalidArgument("tso: at least one endpoint is needed")
        self.endpoints: list[str] = list(dict.fromkeys(eps))
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_queued = max_queued
        self.max_seq_count = max_seq_count
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False
        self._rr = 0
        # The leader: the endpoint that last answered as leader, and the highest epoch seen.
        self.leader: str | None = None
        self.epoch = -1
        self._max_received = -1
        self.rpcs = 0
        self.retries = 0
        self.fallbacks = 0
        self.last_grant: GrantInfo | None = None
        self._driver = self._loop.create_task(self._drive(), name="tso-client")
        self._seq = _Batcher[SeqRequest, list[SeqBlock]](
            self._loop,
            self._send_seq,
            _seq_take(max_seq_count, DEFAULT_MAX_SEQ_BATCH_KEYS),
            "tso-seq",
        )
        self._max_safe = _Batcher[None, MaxSafe](
            self._loop, self._send_max_safe, name="tso-max-safe"
        )
        self._frontier = _Batcher[None, SafeFrontier](
            self._loop, self._send_frontier, name="tso-frontier"
        )

    # -- public API -------------------------------------------------------------------------------

    async def get_ts(self) -> int:
        """One timestamp."""
        fut: asyncio.Future[int] = self._loop.create_future()
        await self._enqueue_async(_Request(1, fut, True))
        return await fut

    async def get_ts_batch(self, count: int) -> range:
        """``count`` consecutive timestamps (1 to 262,144), all from one grant."""
        _check_count(count)
        fut: asyncio.Future[range] = self._loop.create_future()
        await self._enqueue_async(_Request(count, fut, False))
        return await fut

    async def get_seq(self, key: str, count: int = 1) -> SeqBlock:
        """A block of ``count`` dense ordinals of ``key`` (gap-free, never reused). Raises
        :class:`SeqUncertain` when the outcome is unknown (the block may be spent): do not
        retry blindly."""
        (block,) = await self._seq(self._seq_request([(key, count)]))
        return block

    async def get_seq_batch(self, entries: Sequence[tuple[str, int]]) -> list[SeqBlock]:
        """Blocks for several distinct keys, all or none (one atomic write)."""
        return await self._seq(self._seq_request(entries))

    async def get_current_max_safe(self) -> MaxSafe:
        """The leader's safe point (coalesced with concurrent callers; asked after the call)."""
        return await self._max_safe(None)

    async def get_safe_frontier(self) -> SafeFrontier:
        """The leader's safe frontier: min(high-water, every unexpired lease bound)."""
        return await self._frontier(None)

    async def acquire_lease(self, holder: bytes, holder_epoch: int, ttl_s: float) -> Lease:
        """A stamping lease for ``holder`` (idempotent for the same ``holder_epoch``; a higher
        one supersedes). Retried like GetTs: a lost answer is re-acquired as the same lease."""
        req = tso_pb2.AcquireLeaseRequest(
            holder=holder, holder_epoch=holder_epoch, ttl_ms=round(ttl_s * 1000)
        )
        raw, _ = await self._rpc(ACQUIRE_LEASE, req.SerializeToString())
        r = tso_pb2.AcquireLeaseResponse.FromString(raw)
        return Lease(r.lease_id, r.ts_upper_bound, r.expires_at_ms, _epoch(r.epoch))

    async def renew_lease(self, lease_id: int) -> LeaseRenewal:
        req = tso_pb2.RenewLeaseRequest(lease_id=lease_id)
        raw, _ = await self._rpc(RENEW_LEASE, req.SerializeToString())
        r = tso_pb2.RenewLeaseResponse.FromString(raw)
        return LeaseRenewal(r.ts_upper_bound, r.expires_at_ms, _epoch(r.epoch))

    async def release_lease(self, lease_id: int) -> None:
        """Surrenders a lease (an unknown or expired one is fine)."""
        req = tso_pb2.ReleaseLeaseRequest(lease_id=lease_id)
        await self._rpc(RELEASE_LEASE, req.SerializeToString())

    async def close(self) -> None:
        """Fails queued calls with ClientClosed, stops the drivers, closes channels."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._driver.cancel()
        try:
            await self._driver
        except asyncio.CancelledError:
            pass
        self._fail_queue(ClientClosed("tso: client closed"))
        for b in (self._seq, self._max_safe, self._frontier):
            await b.close()
        for ch in self._channels.values():
            await ch.close(grace=None)
        self._channels.clear()
        self._calls.clear()

    async def __aenter__(self) -> AsyncTsoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queue ------------------------------------------------------------------------------------

    async def _enqueue_async(self, req: _Request) -> None:
        while self._queued >= self.max_queued and not self._closed:
            self._space.clear()
            await self._space.wait()
        self.enqueue(req)

    def enqueue(self, req: _Request) -> None:
        """Queues a call (from the loop's thread); the driver answers ``req.sink``."""
        if self._closed:
            req.sink.set_exception(ClientClosed("tso: client closed"))
            return
        self._queue.append(req)
        self._queued += 1
        self._wake.set()

    def enqueue_seq(self, entries: Sequence[tuple[str, int]], sink: _Sink) -> None:
        """Queues a sequence call (from the loop's thread)."""
        try:
            req = self._seq_request(entries)
        except InvalidArgument as e:
            sink.set_exception(e)
            return
        self._seq.enqueue(req, sink)

    def enqueue_read(self, which: str, sink: _Sink) -> None:
        (self._max_safe if which == "max_safe" else self._frontier).enqueue(None, sink)

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        total = 0
        q = self._queue
        while q and total + q[0].count <= MAX_COUNT:
            r = q.popleft()
            if r.sink.done():  # cancelled by its caller
                continue
            batch.append(r)
            total += r.count
        self._queued = len(q)
        if self._queued < self.max_queued:
            self._space.set()
        return batch

    def _fail_queue(self, err: BaseException) -> None:
        while self._queue:
            r = self._queue.popleft()
            if not r.sink.done():
                r.sink.set_exception(err)
        self._queued = 0
        self._space.set()

    # -- the GetTs driver -------------------------------------------------------------------------

    async def _drive(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            if not batch:
                continue
            total = sum(r.count for r in batch)
            try:
                grant = await self._get_ts(total)
            except asyncio.CancelledError:
                for r in batch:
                    if not r.sink.done():
                        r.sink.set_exception(ClientClosed("tso: client closed"))
                raise
            except Exception as e:
                for r in batch:
                    if not r.sink.done():
                        r.sink.set_exception(e)
                continue
            ts = grant.first
            for r in batch:
                if not r.sink.done():
                    r.sink.set_result(ts if r.single else range(ts, ts + r.count))
                ts += r.count

    async def _get_ts(self, count: int) -> GrantInfo:
        """One GetTs for ``count`` timestamps, following leaders and retrying; checks that the
        grant is above everything received before it was asked for."""
        floor = self._max_received
        req = tso_pb2.GetTsRequest(count=count).SerializeToString()
        raw, target = await self._rpc(GET_TS, req)
        res = tso_pb2.GetTsResponse.FromString(raw)
        if res.count != count:
            raise PyxiaError(f"tso: {target} granted {res.count} timestamps, not {count}")
        epoch = (res.epoch_hi << 64) | res.epoch_lo
        self._seen_leader(target, epoch)
        g = GrantInfo(res.physical_ms, res.logical_start, res.count, epoch, target)
        if g.first <= floor:
            self.fallbacks += 1
            raise TimestampFallback(
                f"tso: timestamp fallback: {g.endpoint} granted {g.first} (epoch {g.epoch}) "
                f"after this client had received {floor}"
            )
        self._max_received = g.last
        self.last_grant = g
        return g

    # -- the other drivers ------------------------------------------------------------------------

    def _seq_request(self, entries: Sequence[tuple[str, int]]) -> SeqRequest:
        if not entries:
            raise InvalidArgument("tso: a sequence batch needs at least one entry")
        seen: set[str] = set()
        for key, count in entries:
            check_key(key)
            if key in seen:
                raise InvalidArgument(f"tso: duplicate key in the batch: {key[:64]!r}")
            seen.add(key)
            if not isinstance(count, int) or count < 1:
                raise InvalidArgument(f"tso: a sequence count must be at least 1, got {count!r}")
        return tuple((k, n) for k, n in entries)

    async def _send_seq(self, requests: list[SeqRequest]) -> list[list[SeqBlock]]:
        """One GetSeq (one key) or GetSeqBatch for every queued request; each request gets its
        slice of its keys' blocks, in queue order."""
        totals: dict[str, int] = {}
        for req in requests:
            for key, count in req:
                totals[key] = totals.get(key, 0) + count
        if len(totals) == 1:
            ((key, count),) = totals.items()
            raw, target = await self._rpc(
                GET_SEQ, tso_pb2.GetSeqRequest(key=key, count=count).SerializeToString(), dense=True
            )
            r = tso_pb2.GetSeqResponse.FromString(raw)
            if r.key != key or r.count != count or not r.HasField("epoch"):
                raise SeqUncertain(f"tso: {target} answered a malformed GetSeq: {r}")
            starts, epoch = {key: r.start}, _epoch(r.epoch)
        else:
            batch = tso_pb2.GetSeqBatchRequest(
                entries=[tso_pb2.SeqRequestEntry(key=k, count=n) for k, n in totals.items()]
            )
            raw, target = await self._rpc(GET_SEQ_BATCH, batch.SerializeToString(), dense=True)
            rb = tso_pb2.GetSeqBatchResponse.FromString(raw)
            got = [(g.key, g.count) for g in rb.grants]
            if got != list(totals.items()) or not rb.HasField("epoch"):
                raise SeqUncertain(f"tso: {target} answered a malformed GetSeqBatch")
            starts, epoch = {g.key: g.start for g in rb.grants}, _epoch(rb.epoch)
        self._seen_leader(target, epoch)
        out: list[list[SeqBlock]] = []
        for req in requests:
            blocks = []
            for key, count in req:
                blocks.append(SeqBlock(key, starts[key], count, epoch))
                starts[key] += count
            out.append(blocks)
        return out

    async def _send_max_safe(self, items: list[None]) -> list[MaxSafe]:
        raw = await self._read(GET_MAX_SAFE, tso_pb2.GetCurrentMaxSafeRequest())
        r = tso_pb2.GetCurrentMaxSafeResponse.FromString(raw)
        ms = MaxSafe(r.max_safe_physical_ms, (r.epoch_hi << 64) | r.epoch_lo)
        return [ms] * len(items)

    async def _send_frontier(self, items: list[None]) -> list[SafeFrontier]:
        raw = await self._read(GET_FRONTIER, tso_pb2.GetSafeFrontierRequest())
        r = tso_pb2.GetSafeFrontierResponse.FromString(raw)
        f = SafeFrontier(r.frontier_physical_ms, (r.epoch_hi << 64) | r.epoch_lo)
        return [f] * len(items)

    async def _read(self, method: str, req: Message) -> bytes:
        """A read answered with a zero epoch by non-leaders: the leader first, then every
        endpoint until one answers with an epoch (all zero: the zero answer)."""
        raw_req = req.SerializeToString()
        zero: bytes | None = None
        order = [self.leader] if self.leader else []
        order += [e for e in self.endpoints if e not in order]
        for ep in order:
            try:
                raw, target = await self._rpc(method, raw_req, first=ep, single=True)
            except (PyxiaError, RequestTimeout):
                continue
            msg = type(req).__name__.replace("Request", "Response")
            res = getattr(tso_pb2, msg).FromString(raw)
            if res.epoch_hi or res.epoch_lo:
                self._seen_leader(target, (res.epoch_hi << 64) | res.epoch_lo)
                return raw
            zero = raw
        if zero is None:
            raise RequestTimeout(f"tso: no endpoint answered {method}")
        return zero

    # -- one call, following leaders --------------------------------------------------------------

    def _seen_leader(self, endpoint: str, epoch: int) -> None:
        if epoch >= self.epoch:
            self.epoch = epoch
            self.leader = endpoint

    def _call(self, method: str, endpoint: str) -> Any:
        call = self._calls.get((method, endpoint))
        if call is None:
            ch = self._channel(endpoint)
            call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            if self._tokens is not None:
                call = WithToken(call, self._tokens)
            self._calls[(method, endpoint)] = call
        return call

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            options = channel_options(TSO_MAX_MESSAGE_BYTES)
            if self._tls is not None:
                ch = self._tls.secure_channel(endpoint, options)
            else:
                ch = grpc.aio.insecure_channel(endpoint, options=options)
            self._channels[endpoint] = ch
        return ch

    async def _connected(self, endpoint: str, timeout: float) -> bool:
        """Whether a connection to ``endpoint`` is up (waits up to ``timeout`` for one): a
        non-idempotent call is only sent on a live connection, so that a refused connection
        is known not to have carried it."""
        ch = self._channel(endpoint)
        state = ch.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            return True
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return False
        try:
            await asyncio.wait_for(ch.channel_ready(), timeout)
        except TimeoutError:
            return False
        return ch.get_state() == grpc.ChannelConnectivity.READY

    def _next_endpoint(self) -> str:
        ep = self.endpoints[self._rr % len(self.endpoints)]
        self._rr += 1
        return ep

    async def _rpc(
        self,
        method: str,
        req: bytes,
        *,
        dense: bool = False,
        first: str | None = None,
        single: bool = False,
    ) -> tuple[bytes, str]:
        """One call, following leader hints and retrying (see the module docstring): the
        answer and the endpoint that gave it. ``dense``: the call is not idempotent — sent only
        on a live connection, and any failure after it was sent is SeqUncertain. ``single``:
        only ``first`` is asked (reads that go round the endpoints themselves)."""
        loop = self._loop
        deadline = loop.time() + self.timeout_s
        target = first or self.leader or self._next_endpoint()
        failed_in_pass: set[str] = set()
        hinted_in_pass: set[str] = set()
        passes = 0
        only_refusals = True  # every failure of this pass was a live server's answer
        fencing_polls = 0
        last_error: BaseException | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise RequestTimeout(
                    f"tso: no answer within {self.timeout_s}s (last error: {last_error})"
                )
            self.rpcs += 1
            if dense and not await self._connected(target, min(self.attempt_timeout_s, left)):
                last_error = ConnectionError(f"tso: no connection to {target}")
                failed_in_pass.add(target)
                only_refusals = False
            else:
                try:
                    raw = await self._call(method, target)(
                        req, timeout=min(self.attempt_timeout_s, left)
                    )
                    return raw, target
                except grpc.aio.AioRpcError as e:
                    self.retries += 1
                    last_error = e
                    code = e.code()
                    if code == grpc.StatusCode.FAILED_PRECONDITION and _has_hint(e):
                        hint = _hint_of(e)
                        hinted = _strip_scheme(hint.endpoint) if hint and hint.endpoint else None
                        if hinted is not None and not single:
                            if (
                                hint is not None
                                and hint.epoch is not None
                                and hint.epoch < self.epoch
                            ):
                                pass  # stale: older than a leader already seen
                            elif hinted == target:
                                # The leader itself, fence still running: ask again shortly.
                                fencing_polls += 1
                                delay = min(0.002 * (1 << min(fencing_polls, 5)), 0.05)
                                await asyncio.sleep(min(delay * (0.5 + random.random()), left))
                                continue
                            elif hinted not in hinted_in_pass and hinted not in failed_in_pass:
                                hinted_in_pass.add(hinted)
                                if hinted not in self.endpoints:
                                    self.endpoints.append(hinted)
                                failed_in_pass.add(target)
                                target = hinted
                                continue
                    elif code in _DEFINITE_CODES:
                        raise _definite_error(e) from None
                    elif dense:
                        raise SeqUncertain(
                            f"tso: the outcome of {method.rsplit('/', 1)[-1]} on {target} is "
                            f"unknown ({code.name}: {e.details()}): the block may be spent"
                        ) from None
                    else:
                        only_refusals = only_refusals and code != grpc.StatusCode.UNAVAILABLE
                if self.leader == target:
                    self.leader = None
                failed_in_pass.add(target)
            if single:
                raise ResourceUnavailable(f"tso: {target}: {last_error}")
            untried = self._next_untried(failed_in_pass)
            if untried is None:  # every endpoint failed once: back off
                passes += 1
                failed_in_pass.clear()
                hinted_in_pass.clear()
                # Live servers refusing (a leadership in transition): look again soon.
                base = 0.005 if only_refusals else self.backoff_base_s
                cap = min(self.backoff_cap_s, base * (1 << min(passes, 10)))
                if only_refusals:
                    cap = min(cap, 0.1)
                only_refusals = True
                await asyncio.sleep(min(random.random() * cap, max(0.0, left)))
                untried = self._next_endpoint()
            target = untried

    def _next_untried(self, failed: set[str]) -> str | None:
        for _ in range(len(self.endpoints)):
            ep = self._next_endpoint()
            if ep not in failed:
                return ep
        return None


def _epoch(w: tso_pb2.EpochWire) -> int:
    return (w.hi << 64) | w.lo


def _check_count(count: int) -> None:
    if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise InvalidArgument(f"tso: count must be between 1 and {MAX_COUNT}, got {count!r}")


def _strip_scheme(endpoint: str) -> str:
    for prefix in ("http://", "https://", "dns:///"):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix) :].rstrip("/")
    return endpoint


# -- the synchronous face -------------------------------------------------------------------------


class TsoClient:
    """The timestamp oracle client for threads: the same core as :class:`AsyncTsoClient`,
    driven by an event loop on a background thread. Any number of threads may call it."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = "localhost:6648",
        *,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 2.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
        max_seq_count: int = DEFAULT_MAX_SEQ_COUNT,
        tls: TlsOptions | bool | None = None,
        auth_token: str | None = None,
        auth_token_file: str | Path | None = None,
        auth_token_provider: Callable[[], str] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="pyxia-tso", daemon=True)
        self._thread.start()
        self._wait = timeout_s + 5.0
        self._closed = False

        async def make() -> AsyncTsoClient:
            return AsyncTsoClient(
                endpoints,
                timeout_s=timeout_s,
                attempt_timeout_s=attempt_timeout_s,
                backoff_base_s=backoff_base_s,
                backoff_cap_s=backoff_cap_s,
                max_queued=1 << 30,
                max_seq_count=max_seq_count,
                tls=tls,
                auth_token=auth_token,
                auth_token_file=auth_token_file,
                auth_token_provider=auth_token_provider,
            )

        try:
            self._core = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_await(coro), self._loop).result(self._wait)

    @property
    def client(self) -> AsyncTsoClient:
        """The asyncio core (lives on the background loop)."""
        return self._core

    def get_ts(self) -> int:
        """One timestamp."""
        if self._closed:
            raise ClientClosed("tso: client closed")
        w = Waiter()
        self._loop.call_soon_threadsafe(self._core.enqueue, _Request(1, w, True))
        out: int = w.wait(self._wait, "tso")
        return out

    def get_ts_batch(self, count: int) -> range:
        """``count`` consecutive timestamps (1 to 262,144), all from one grant."""
        _check_count(count)
        if self._closed:
            raise ClientClosed("tso: client closed")
        w = Waiter()
        self._loop.call_soon_threadsafe(self._core.enqueue, _Request(count, w, False))
        out: range = w.wait(self._wait)
        return out

    def get_seq(self, key: str, count: int = 1) -> SeqBlock:
        """A block of ``count`` dense ordinals of ``key`` (coalesced with concurrent calls);
        :class:`SeqUncertain` when its outcome is unknown."""
        (block,) = self.get_seq_batch([(key, count)])
        return block

    def get_seq_batch(self, entries: Sequence[tuple[str, int]]) -> list[SeqBlock]:
        """Blocks for several distinct keys, all or none."""
        if self._closed:
            raise ClientClosed("tso: client closed")
        w = Waiter()
        self._loop.call_soon_threadsafe(self._core.enqueue_seq, list(entries), w)
        out: list[SeqBlock] = w.wait(self._wait, "tso")
        return out

    def get_current_max_safe(self) -> MaxSafe:
        out = self._read("max_safe")
        assert isinstance(out, MaxSafe)
        return out

    def get_safe_frontier(self) -> SafeFrontier:
        out = self._read("frontier")
        assert isinstance(out, SafeFrontier)
        return out

    def _read(self, which: str) -> object:
        if self._closed:
            raise ClientClosed("tso: client closed")
        w = Waiter()
        self._loop.call_soon_threadsafe(self._core.enqueue_read, which, w)
        return w.wait(self._wait, "tso")

    def acquire_lease(self, holder: bytes, holder_epoch: int, ttl_s: float) -> Lease:
        """See :meth:`AsyncTsoClient.acquire_lease`."""
        return self._run(self._core.acquire_lease(holder, holder_epoch, ttl_s))

    def renew_lease(self, lease_id: int) -> LeaseRenewal:
        return self._run(self._core.renew_lease(lease_id))

    def release_lease(self, lease_id: int) -> None:
        self._run(self._core.release_lease(lease_id))

    def close(self) -> None:
        """Fails queued calls, closes the channels, stops the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._core.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> TsoClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _await(aw: Awaitable[T]) -> T:
    return await aw
