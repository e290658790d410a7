"""Helpers of the retention tests: a sustained overwrite load and a sampler of every replica's
WAL and DB sizes on disk."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

KEYS = 1000
VALUE = b"x" * 1024


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass  # deleted while walking (a trimmed segment, a compacted SST)
    return total


@dataclass
class Sample:
    t: float
    wal: dict[str, int]
    db: dict[str, int]


@dataclass
class Samples:
    """Sizes of each replica's WAL and DB directories over time."""

    dirs: dict[str, tuple[Path, Path]]  # replica -> (wal dir, db dir)
    rows: list[Sample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def take(self) -> Sample:
        s = Sample(
            time.monotonic() - self.started,
            {r: dir_bytes(w) for r, (w, _) in self.dirs.items()},
            {r: dir_bytes(d) for r, (_, d) in self.dirs.items()},
        )
        self.rows.append(s)
        return s

    def max_wal(self, replica: str, after: float = 0.0) -> int:
        return max(s.wal[replica] for s in self.rows if s.t >= after)

    def max_db(self, replica: str, after: float = 0.0) -> int:
        return max(s.db[replica] for s in self.rows if s.t >= after)

    def table(self, every: float = 2.0) -> str:
        """A small table (MiB) of one sample every ``every`` seconds."""
        names = sorted(self.dirs)
        head = "t(s) | " + " | ".join(f"{n} WAL | {n} DB" for n in names)
        lines = [head]
        nxt = 0.0
        for s in self.rows:
            if s.t + 1e-9 < nxt:
                continue
            nxt = s.t + every
            cells = " | ".join(f"{s.wal[n] / 2**20:.1f} | {s.db[n] / 2**20:.1f}" for n in names)
            lines.append(f"{s.t:5.1f} | {cells}")
        return "\n".join(lines)


async def overwrite(
    write: Callable[[list[str]], Awaitable[object]],
    seconds: float,
    *,
    writers: int = 8,
    batch: int = 20,
    on_tick: Callable[[], None] | None = None,
    tick: float = 0.2,
) -> int:
    """Overwrites keys ``/k0000`` .. ``/k0999`` (1 KiB values) from ``writers`` concurrent
    writers, ``batch`` keys per write, for ``seconds``; calls ``on_tick`` every ``tick``
    seconds. Returns how many writes were acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    done = 0

    async def writer(w: int) -> None:
        nonlocal done
        i = w * batch
        while loop.time() < deadline:
            keys = [f"/k{(i + j) % KEYS:04d}" for j in range(batch)]
            await write(keys)
            done += 1
            i += writers * batch

    async def ticker() -> None:
        while loop.time() < deadline:
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(tick)

    await asyncio.gather(ticker(), *(writer(w) for w in range(writers)))
    return done
