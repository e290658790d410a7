"""Timestamp oracle clients: :class:`AsyncTsoClient` (asyncio) and :class:`TsoClient`
(threads), one core. They speak ``tsoracle.v1.TsoService/GetTs`` (pyxia's data servers or
tsoracle itself).

    from pyxia import TsoClient

    with TsoClient(["host1:6648", "host2:6648", "host3:6648"]) as tso:
        ts = tso.get_ts()                 # one int
        batch = tso.get_ts_batch(100)     # a range of 100 consecutive timestamps

- **Coalescing**: callers queue up; one driver task sends one ``GetTs`` for everything queued
  (up to 262,144 timestamps per RPC), hands each caller a contiguous slice, and meanwhile the
  next batch forms (one RPC in flight: the batch grows with load, PD's and AtlasDB's scheme).
- **Freshness**: a call is only ever answered by an RPC sent after it was made, so no
  timestamp it gets predates the call — the real-time order the server guarantees carries
  over to callers.
- **Leader following**: ``FAILED_PRECONDITION`` carries a ``tsoracle-leader-hint-bin``
  trailer (protobuf ``LeaderHint``; postcard-encoded hints are understood too): the hinted
  leader is tried next without backoff (a hint whose epoch is older than the leader's last
  seen epoch is ignored); other failures move to the next endpoint, with full-jitter backoff
  after every endpoint failed once. ``timeout_s`` bounds a call, ``attempt_timeout_s`` each RPC.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc

from pyxia.client.connections import WithToken, channel_options
from pyxia.client.errors import ClientClosed, RequestTimeout
from pyxia.client.options import client_tls
from pyxia.client.waiter import Waiter
from pyxia.errors import InvalidArgument, PermissionDenied, PyxiaError, Unauthenticated
from pyxia.proto import tso_pb2
from pyxia.security.tls import TlsOptions
from pyxia.security.tokens import TokenSource
from pyxia.tso.allocator import LOGICAL_BITS, MAX_COUNT
from pyxia.tso.errors import TimestampFallback

__all__ = [
    "AsyncTsoClient",
    "GrantInfo",
    "LeaderHint",
    "TimestampFallback",
    "TsoClient",
    "decode_leader_hint",
]

GET_TS = "/tsoracle.v1.TsoService/GetTs"
LEADER_HINT_KEY = "tsoracle-leader-hint-bin"
TSO_MAX_MESSAGE_BYTES = 1024 * 1024
T = TypeVar("T")


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
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, Any] = {}
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False
        self._rr = 0
        # The leader: the endpoint that last granted, and the highest epoch seen.
        self.leader: str | None = None
        self.epoch = -1
        self._max_received = -1
        self.rpcs = 0
        self.retries = 0
        self.fallbacks = 0
        self.last_grant: GrantInfo | None = None
        self._driver = self._loop.create_task(self._drive(), name="tso-client")

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

    async def close(self) -> None:
        """Fails queued calls with ClientClosed, stops the driver, closes channels."""
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

    # -- driver -----------------------------------------------------------------------------------

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
        g = await self._call_with_retries(count)
        if g.first <= floor:
            self.fallbacks += 1
            raise TimestampFallback(
                f"tso: timestamp fallback: {g.endpoint} granted {g.first} (epoch {g.epoch}) "
                f"after this client had received {floor}"
            )
        self._max_received = g.last
        self.last_grant = g
        return g

    def _call(self, endpoint: str) -> Any:
        call = self._calls.get(endpoint)
        if call is None:
            options = channel_options(TSO_MAX_MESSAGE_BYTES)
            if self._tls is not None:
                ch = self._tls.secure_channel(endpoint, options)
            else:
                ch = grpc.aio.insecure_channel(endpoint, options=options)
            self._channels[endpoint] = ch
            call = ch.unary_unary(GET_TS, request_serializer=None, response_deserializer=None)
            if self._tokens is not None:
                call = WithToken(call, self._tokens)
            self._calls[endpoint] = call
        return call

    def _next_endpoint(self) -> str:
        ep = self.endpoints[self._rr % len(self.endpoints)]
        self._rr += 1
        return ep

    async def _call_with_retries(self, count: int) -> GrantInfo:
        req = tso_pb2.GetTsRequest(count=count).SerializeToString()
        loop = self._loop
        deadline = loop.time() + self.timeout_s
        target = self.leader or self._next_endpoint()
        failed_in_pass: set[str] = set()
        hinted_in_pass: set[str] = set()
        passes = 0
        last_error: BaseException | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise RequestTimeout(
                    f"tso: no timestamps within {self.timeout_s}s (last error: {last_error})"
                )
            try:
                self.rpcs += 1
                raw = await self._call(target)(req, timeout=min(self.attempt_timeout_s, left))
            except grpc.aio.AioRpcError as e:
                self.retries += 1
                code = e.code()
                last_error = e
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(e.details() or "tso: invalid argument") from None
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise Unauthenticated(e.details() or "tso: unauthenticated") from None
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    raise PermissionDenied(e.details() or "tso: permission denied") from None
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    hint = _hint_of(e)
                    if hint is not None and hint.endpoint:
                        hinted = _strip_scheme(hint.endpoint)
                        if hint.epoch is not None and hint.epoch < self.epoch:
                            pass  # stale: older than a leader we already saw
                        elif hinted == target:
                            # The leader itself, fence in progress: ask again shortly.
                            await asyncio.sleep(min(0.01 + random.random() * 0.02, left))
                            continue
                        elif hinted not in hinted_in_pass:  # no ping-pong between stale hints
                            hinted_in_pass.add(hinted)
                            if hinted not in self.endpoints:
                                self.endpoints.append(hinted)
                            target = hinted
                            continue
                if self.leader == target:
                    self.leader = None
                failed_in_pass.add(target)
                untried = self._next_untried(failed_in_pass)
                if untried is None:  # every endpoint failed once: back off
                    passes += 1
                    failed_in_pass.clear()
                    hinted_in_pass.clear()
                    cap = min(self.backoff_cap_s, self.backoff_base_s * (1 << min(passes, 10)))
                    await asyncio.sleep(min(random.random() * cap, max(0.0, left)))
                    untried = self._next_endpoint()
                target = untried
                continue
            res = tso_pb2.GetTsResponse.FromString(raw)
            if res.count != count:
                raise PyxiaError(f"tso: {target} granted {res.count} timestamps, not {count}")
            epoch = (res.epoch_hi << 64) | res.epoch_lo
            if epoch >= self.epoch:
                self.epoch = epoch
                self.leader = target
            return GrantInfo(res.physical_ms, res.logical_start, res.count, epoch, target)

    def _next_untried(self, failed: set[str]) -> str | None:
        for _ in range(len(self.endpoints)):
            ep = self._next_endpoint()
            if ep not in failed:
                return ep
        return None


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
