"""The timestamp oracle's native transport: GetTs on a TSO port served by Rust (tonic), from
the window that Python grants under the fence and the time lease.

Why: a Python gRPC unary call costs ~200 µs of CPU here whatever the handler does
(docs/benchmarks.md), so GetTs through ``grpc.aio`` cannot reach tsoracle's rate. The native
server answers a GetTs without entering Python when the allocator grants at once.

Division of labour (see ``rust/src/tso_server.rs``):

- :class:`NativeAllocator` is the oracle's allocator when the port is on: the same interface
  and rules as :class:`~pyxia.tso.allocator.Allocator` (the Rust twin is property-tested
  against it), its state in Rust behind one mutex, shared by Python's handlers (the public
  port, extensions, leases) and the native server. There is one allocator, so grants from both
  ports are strictly increasing together.
- Python stays the owner of leadership and safety: the fence seeds the allocator
  (``become_leader``, which closes the fast path), steps it down (synchronous: no native grant
  after it returns), writes and commits the high-water, and publishes the *fast-path
  deadline* (:meth:`NativeAllocator.set_fast_until`): the time lease less its renewal margin,
  or no limit without a lease (one replica). The native server grants only before it, so it
  never grants outside a lease and leaves renewals to Python.
- The native path does not ask the shard's controller on every call whether it still leads
  (Python's path does, and closes the fast path when it sees it does not, as when a
  high-water write is refused as not-leader). Safe, because nobody else can serve meanwhile:
  with a lease, a new leader elsewhere serves only once this one's lease lapsed, and the fast
  path closes before it; with one replica, another node can only lead after a planned handoff,
  which steps this allocator down first, and a new term on this node starts with a step-down.
- Every call the native side does not answer at once (not serving, fence in progress, window
  exhausted, lease to renew, a malformed request) is handed to Python's GetTs handler
  (:meth:`~pyxia.tso.service.TsoService.answer_get_ts`) on the event loop and answered with
  exactly what the public port would answer (status, ErrorInfo, leader hint).

The TSO port has no TLS and no authentication: the server refuses to start it when the public
port has either (:func:`check_transport`). The failpoint ``service.before_allocate`` is only
on Python's path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pyxia import _native
from pyxia.tso.allocator import (
    MAX_PHYSICAL,
    AdvanceOutOfRange,
    Allocator,
    Extension,
    Grant,
    InvalidCount,
    NotLeader,
    WindowExhausted,
    check_count,
)

log = logging.getLogger("pyxia.tso")

_OK, _NOT_LEADER, _EXHAUSTED, _INVALID_COUNT, _OUT_OF_RANGE = range(5)


def _raise(code: int, what: str) -> None:
    if code == _NOT_LEADER:
        raise NotLeader("the allocator is not serving")
    if code == _EXHAUSTED:
        raise WindowExhausted(f"{what}: past the high-water")
    if code == _INVALID_COUNT:
        raise InvalidCount(f"{what}: invalid count")
    if code == _OUT_OF_RANGE:
        raise AdvanceOutOfRange(f"{what}: does not fit in 46 bits")
    raise AssertionError(f"unknown allocator code {code}")


class NativeAllocator(Allocator):
    """:class:`Allocator`'s interface over the Rust window the native server grants from."""

    __slots__ = ("__weakref__", "window")

    def __init__(self, window_ahead_ms: int = 3000) -> None:
        super().__init__(window_ahead_ms)
        self.window = _native.TsoWindow()
        _LIVE.add(self)

    @property
    def epoch(self) -> int | None:
        return self.window.epoch

    @property
    def high_water(self) -> int | None:
        return self.window.high_water

    def become_leader(self, floor_ms: int, high_water_ms: int, epoch: int) -> None:
        if not 0 < floor_ms <= high_water_ms:
            raise ValueError(f"need 0 < floor ({floor_ms}) <= high-water ({high_water_ms})")
        if high_water_ms > MAX_PHYSICAL:
            raise AdvanceOutOfRange(f"high-water {high_water_ms} does not fit in 46 bits")
        self.window.become_leader(floor_ms, high_water_ms, epoch)

    def step_down(self) -> None:
        self.window.step_down()

    def would_grant(self, count: int, now_ms: int) -> bool:
        return self.window.would_grant(count, now_ms)

    def try_grant(self, count: int, now_ms: int) -> Grant:
        check_count(count)
        code, physical, logical, epoch = self.window.try_grant(count, now_ms)
        if code != _OK:
            _raise(code, f"grant of {count} at {now_ms}")
        return Grant(physical, logical, count, epoch)

    def prepare_extension(self, now_ms: int, ahead_ms: int) -> Extension:
        code, epoch, requested = self.window.prepare_extension(now_ms, ahead_ms)
        if code != _OK:
            _raise(code, "window extension")
        return Extension(epoch, requested)

    def prepare_renewal(self, now_ms: int, min_ahead_ms: int) -> Extension:
        code, epoch, requested = self.window.prepare_renewal(
            now_ms, min_ahead_ms, self.window_ahead_ms
        )
        if code != _OK:
            _raise(code, "lease renewal")
        return Extension(epoch, requested)

    def commit_window_extension(self, ext: Extension, durable_ms: int) -> bool:
        code, applied = self.window.commit(ext.epoch, durable_ms)
        if code != _OK:
            _raise(code, f"high-water {durable_ms}")
        return applied

    def set_fast_until(self, until: float | None) -> None:
        """The native server grants while ``time.monotonic() < until`` (None: no limit)."""
        self.window.set_fast_until(until)

    def stats(self) -> tuple[int, int, int]:
        """``(native grants, their timestamps, calls handed to Python)``."""
        return self.window.stats()


_LIVE: weakref.WeakSet[NativeAllocator] = weakref.WeakSet()


class NativeCounters(Collector):
    """``pyxia_tso_native_*``: what the TSO ports of this process answered, read at scrape
    time from the windows' counters (the native path counts under its mutex, not in
    Python)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        grants = timestamps = handed = 0
        for a in list(_LIVE):
            g, t, h = a.stats()
            grants, timestamps, handed = grants + g, timestamps + t, handed + h
        yield CounterMetricFamily(
            "pyxia_tso_native_grants", "GetTs calls the TSO port answered natively", grants
        )
        yield CounterMetricFamily(
            "pyxia_tso_native_timestamps", "Timestamps the TSO port granted natively", timestamps
        )
        yield CounterMetricFamily(
            "pyxia_tso_native_handed_over",
            "GetTs calls the TSO port handed to Python (counted there as on the public port)",
            handed,
        )


REGISTRY.register(NativeCounters())


class TransportError(OSError):
    """The TSO port cannot be served (a bad address, or it cannot listen)."""


@dataclass(frozen=True)
class TsoAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> TsoAddress:
        """``IP:port`` (``[v6]:port`` too); raises ValueError."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"--tso-addr: expected IP:port, got {text!r}")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"--tso-addr: {host!r} is not an IP address") from None
        return cls(host, int(port_text))


Outcome = tuple[int, str, bytes, tuple[tuple[str, bytes], ...]]
"""``(grpc code, message, response bytes, trailers)``; code 0 is success."""

MAX_HANDED_OVER = 4096
"""Calls the TSO port may have waiting in Python at once; past it: RESOURCE_EXHAUSTED."""
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class NativeTransport:
    """The native GetTs server on one address, answering from ``allocator`` and handing every
    other call to ``answer`` on the event loop it was started on (at most
    :data:`MAX_HANDED_OVER` at once). ``start``/``close``; closing twice is safe."""

    def __init__(
        self,
        allocator: NativeAllocator,
        address: TsoAddress,
        answer: Callable[[bytes], Awaitable[Outcome]],
        workers: int = 2,
    ) -> None:
        self.allocator = allocator
        self.address = address
        self.workers = workers
        self._answer = answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.port: int | None = None

    def start(self) -> int:
        """Listens (on the running loop's behalf); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        try:
            self.port = self.allocator.window.serve(
                self.address.host, self.address.port, self._handed_over, self.workers
            )
        except (OSError, ValueError) as e:
            where = f"{self.address.host}:{self.address.port}"
            raise TransportError(f"cannot listen on the TSO address {where}: {e}") from e
        return self.port

    def _handed_over(self, raw: bytes, responder: _native.TsoResponder) -> None:
        """Called on a runtime thread: schedules the answer on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the event loop is gone")
        loop.call_soon_threadsafe(self._spawn, raw, responder)

    def _spawn(self, raw: bytes, responder: _native.TsoResponder) -> None:
        if self._closed:
            responder.send(_UNAVAILABLE, "tso: the server is shutting down", b"", [])
            return
        if len(self._tasks) >= MAX_HANDED_OVER:
            responder.send(_RESOURCE_EXHAUSTED, "tso: too many calls waiting", b"", [])
            return
        task = asyncio.get_running_loop().create_task(self._reply(raw, responder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, raw: bytes, responder: _native.TsoResponder) -> None:
        try:
            code, message, payload, trailers = await self._answer(raw)
        except asyncio.CancelledError:
            responder.send(_UNAVAILABLE, "tso: the server is shutting down", b"", [])
            raise
        except Exception as e:  # the handler answers domain errors itself: this is a bug
            log.exception("tso: GetTs handed over by the TSO port failed")
            responder.send(_INTERNAL, f"tso: {type(e).__name__}: {e}", b"", [])
            return
        responder.send(code, message, payload, list(trailers))

    async def close(self) -> None:
        self._closed = True
        self.allocator.set_fast_until(0.0)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.to_thread(self.allocator.window.stop)


def check_transport(tso_addr: str | None, public_tls: bool, public_auth: bool) -> None:
    """The TSO port serves plain gRPC only: refuse it next to a protected public port."""
    if not tso_addr:
        return
    if public_tls or public_auth:
        raise ValueError(
            "--tso-addr serves GetTs without TLS or authentication; it cannot be used with "
            "--tls-* or --auth-provider-name on the public port"
        )
    TsoAddress.parse(tso_addr)


__all__ = [
    "NativeAllocator",
    "NativeTransport",
    "Outcome",
    "TransportError",
    "TsoAddress",
    "check_transport",
]
