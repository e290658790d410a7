"""``pyxia perf``: Oxia's ``oxia perf`` load (random puts and gets over ``key-<i>`` at a paced
rate, or as fast as it goes with ``rate`` 0), driven through the client, so it speaks only the
Oxia protocol and can drive any Oxia-compatible server."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from pyxia.client.async_client import AsyncClient
from pyxia.client.errors import KeyNotFound

PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))


@dataclass
class PerfConfig:
    service_address: str = "localhost:6648"
    namespace: str = "default"
    rate: float = 100.0
    read_percentage: float = 80.0
    keys_cardinality: int = 1000
    value_size: int = 128
    random_payload: bool = False
    batch_linger_s: float = 0.005
    max_requests_per_batch: int = 1000
    request_timeout_s: float = 30.0
    duration_s: float = 0.0
    report_interval_s: float = 5.0
    max_outstanding: int = 1000
    security: dict[str, Any] = field(default_factory=dict)
    """``tls``, ``auth_token``, ``auth_token_file`` for the client."""


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {name: 0.0 for name, _ in PERCENTILES}
    s = sorted(samples_ms)
    out = {}
    for name, q in PERCENTILES:
        i = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
        out[name] = round(s[i], 3)
    return out


@dataclass
class Window:
    write_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    failed: int = 0


def _line(kind: str, n: int, secs: float, lat: dict[str, float]) -> str:
    return (
        f"{kind} ops {n / secs:8.1f} {kind[0].lower()}/s  Latency ms: 50% {lat['p50']:6.2f} - "
        f"95% {lat['p95']:6.2f} - 99% {lat['p99']:6.2f} - 99.9% {lat['p999']:6.2f} - "
        f"max {lat['max']:7.2f}"
    )


def report_text(w: Window, secs: float, title: str = "Stats") -> str:
    total = len(w.write_ms) + len(w.read_ms)
    return "\n".join(
        [
            f"{title} - Total ops: {total / secs:8.1f} ops/s - Failed ops: {w.failed / secs:6.1f} "
            "ops/s",
            "  " + _line("Write", len(w.write_ms), secs, percentiles(w.write_ms)),
            "  " + _line("Read ", len(w.read_ms), secs, percentiles(w.read_ms)),
        ]
    )


def report_json(w: Window, secs: float) -> dict[str, Any]:
    total = len(w.write_ms) + len(w.read_ms)
    return {
        "ops_per_s": round(total / secs, 1),
        "failed_ops_per_s": round(w.failed / secs, 1),
        "write_ops_per_s": round(len(w.write_ms) / secs, 1),
        "read_ops_per_s": round(len(w.read_ms) / secs, 1),
        "write_latency_ms": percentiles(w.write_ms),
        "read_latency_ms": percentiles(w.read_ms),
        "duration_s": round(secs, 3),
    }


class _Load:
    """What the running load shares: the operations in flight, and the windows of figures."""

    __slots__ = ("max_outstanding", "outstanding", "room", "total", "window")

    def __init__(self, max_outstanding: int, total: Window, window: Window) -> None:
        self.max_outstanding = max_outstanding
        self.outstanding = 0
        self.room = asyncio.Event()
        self.room.set()
        self.total = total
        self.window = window


class _Answer:
    """The target of one operation of the load: the client completes it on its loop, and it
    counts the operation there and then (no future, no callback scheduled per operation)."""

    __slots__ = ("_done", "is_write", "load", "t0")

    def __init__(self, load: _Load, is_write: bool, t0: float) -> None:
        self.load = load
        self.is_write = is_write
        self.t0 = t0
        self._done = False

    def done(self) -> bool:
        return self._done

    def _count(self, failed: bool) -> None:
        self._done = True
        load = self.load
        load.outstanding -= 1
        if load.outstanding < load.max_outstanding:
            load.room.set()
        if failed:
            load.total.failed += 1
            load.window.failed += 1
            return
        ms = (time.perf_counter() - self.t0) * 1000
        if self.is_write:
            load.total.write_ms.append(ms)
            load.window.write_ms.append(ms)
        else:
            load.total.read_ms.append(ms)
            load.window.read_ms.append(ms)

    def set_result(self, result: Any, /) -> None:
        if not self._done:
            self._count(False)

    def set_exception(self, exc: BaseException, /) -> None:
        if not self._done:
            self._count(not isinstance(exc, KeyNotFound))


def _last_connection_error(client: AsyncClient) -> BaseException | None:
    """The last error of the client's shard-assignments stream (the server's reachability)."""
    watcher = getattr(client.core, "_watcher", None)
    err = getattr(watcher, "last_error", None)
    return err if isinstance(err, BaseException) else None


async def run_perf(
    cfg: PerfConfig,
    progress: TextIO | None = sys.stderr,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    keys = [f"key-{i}" for i in range(cfg.keys_cardinality)]
    value = os.urandom(cfg.value_size)
    total = Window()
    window = Window()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with AsyncClient(
        cfg.service_address,
        namespace=cfg.namespace,
        batch_linger_s=cfg.batch_linger_s,
        max_requests_per_batch=cfg.max_requests_per_batch,
        request_timeout_s=cfg.request_timeout_s,
        **cfg.security,
    ) as client:
        core = client.core
        # The load's objects live as long as the run: out of the collector's way, so that a
        # collection walks only the operations in flight.
        gc.collect()
        gc.freeze()
        rnd = random.random
        choice = random.choice
        reads = cfg.read_percentage / 100.0
        put_op = core.plain_put_op
        get_op = core.plain_get_op
        submit_write = core.submit_write
        submit_read = core.submit_read
        perf_counter = time.perf_counter
        state = _Load(cfg.max_outstanding, total, window)

        def issue() -> None:
            key = choice(keys)
            state.outstanding += 1
            if state.outstanding >= cfg.max_outstanding:
                state.room.clear()
            if rnd() < reads:
                submit_read(get_op(key, _Answer(state, False, perf_counter())))
            else:
                v = os.urandom(cfg.value_size) if cfg.random_payload else value
                submit_write(put_op(key, v, _Answer(state, True, perf_counter())))

        async def reporter() -> None:
            last = time.perf_counter()
            silent_since: float | None = None
            while True:
                await asyncio.sleep(cfg.report_interval_s)
                now = time.perf_counter()
                w, state.window = state.window, Window()
                outstanding = state.outstanding
                answered = len(w.write_ms) + len(w.read_ms) + w.failed
                if answered or not outstanding:
                    silent_since = None
                elif silent_since is None:
                    silent_since = last
                if progress is not None:
                    print(report_text(w, now - last), file=progress, flush=True)
                    if silent_since is not None:
                        # The operations fail only at their deadline (--request-timeout): say
                        # now that nothing is answered, and why, rather than print 0 ops/s.
                        err = _last_connection_error(client)
                        print(
                            f"  Waiting: {outstanding} ops unanswered for "
                            f"{now - silent_since:.1f}s"
                            + (f" - last error: {err}" if err is not None else ""),
                            file=progress,
                            flush=True,
                        )
                last = now

        async def driver() -> None:
            start = time.perf_counter()
            n = 0
            while not stop.is_set():
                if cfg.rate > 0:
                    due = start + n / cfg.rate
                    delay = due - time.perf_counter()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                    # catch up in bursts (at most a batch) when late
                    burst = min(
                        cfg.max_requests_per_batch,
                        max(1, int((time.perf_counter() - start) * cfg.rate) - n),
                    )
                else:
                    # Up to a batch per loop turn: the operations issued in one turn can share
                    # a batch (64 per turn made batches of ~150 and a Read call per ~150 gets).
                    burst = cfg.max_requests_per_batch
                for _ in range(burst):
                    if state.outstanding >= cfg.max_outstanding:
                        break
                    issue()
                    n += 1
                if state.outstanding >= cfg.max_outstanding:
                    await state.room.wait()
                elif cfg.rate <= 0:
                    await asyncio.sleep(0)

        t0 = time.perf_counter()
        rep = loop.create_task(reporter())
        drv = loop.create_task(driver())
        try:
            if cfg.duration_s > 0:
                try:
                    await asyncio.wait_for(stop.wait(), cfg.duration_s)
                except TimeoutError:
                    pass
            else:
                await stop.wait()
        finally:
            stop.set()
            elapsed = time.perf_counter() - t0
            drv.cancel()
            rep.cancel()
            await asyncio.gather(drv, rep, return_exceptions=True)
            gc.unfreeze()
    return report_json(total, elapsed) | {"_window": total}
