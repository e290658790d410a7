"""Measures pyxia's client against a fresh ``pyxia standalone`` and writes docs/benchmarks.md,
each figure next to its baseline measured in the same run:

    python benches/report.py [--seconds 5]

* client throughput (64 async callers, one put/get each at a time) vs the server's own
  WriteStream/Read throughput driven by a bare gRPC loader: at the same concurrency (64 operations
  in flight) and at its best (1,000-op batches, 8 in flight);
* sync (threads) vs async;
* one synchronous put at a time (p50) vs one bare WriteStream put at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from client_load import (  # noqa: E402
    async_gets,
    async_puts,
    raw_put_latencies,
    sync_put_latencies,
    sync_puts,
)
from load import read_load, write_stream_load  # noqa: E402
from servers import ServerProcess, standalone_args  # noqa: E402


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    import grpc

    return (
        f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, grpcio {grpc.__version__}; "
        f"load average at start {load[0]:.2f} (the machine is shared: compare ratios)"
    )


def measure(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        s = ServerProcess(standalone_args(base), base).start()
        try:

            async def run_async() -> None:
                a = s.public
                out["raw_best"] = (await write_stream_load(a, 0, seconds)).ops_per_s
                raw = []
                for b, n in ((64, 1), (32, 2)):
                    raw.append(
                        (await write_stream_load(a, 0, seconds, batch=b, inflight=n)).ops_per_s
                    )
                out["raw_64"] = max(raw)
                out["async_puts_64"] = (await async_puts(a, 64, seconds)).ops_per_s
                out["raw_read_best"] = (await read_load(a, 0, seconds)).ops_per_s
                out["raw_read_64"] = (
                    await read_load(a, 0, seconds, batch=32, concurrency=2)
                ).ops_per_s
                out["async_gets_64"] = (await async_gets(a, 64, seconds)).ops_per_s
                out["raw_put_p50_ms"] = statistics.median(await raw_put_latencies(a)) * 1000

            asyncio.run(run_async())
            out["sync_puts_64"] = sync_puts(s.public, 64, seconds).ops_per_s
            out["sync_puts_8"] = sync_puts(s.public, 8, seconds).ops_per_s
            out["sync_put_p50_ms"] = statistics.median(sync_put_latencies(s.public)) * 1000
        finally:
            s.kill()
    return out


def render(m: dict[str, float], seconds: float) -> str:
    rows = [
        (
            "puts/s, 64 async callers (one put each at a time)",
            "async_puts_64",
            "bare WriteStream, 64 puts in flight",
            "raw_64",
        ),
        (
            "same, against the server's best WriteStream load",
            "async_puts_64",
            "bare WriteStream, 1,000-put batches, 8 in flight",
            "raw_best",
        ),
        (
            "puts/s, 64 sync threads (`pyxia.Client`)",
            "sync_puts_64",
            "async, 64 callers",
            "async_puts_64",
        ),
        ("puts/s, 8 sync threads", "sync_puts_8", "bare WriteStream, 64 puts in flight", "raw_64"),
        (
            "gets/s, 64 async callers",
            "async_gets_64",
            "bare Read, 64 gets in flight",
            "raw_read_64",
        ),
        (
            "gets/s, 64 async callers",
            "async_gets_64",
            "bare Read, 1,000-get batches, 4 in flight",
            "raw_read_best",
        ),
        (
            "single sync put, p50 latency (ms)",
            "sync_put_p50_ms",
            "bare WriteStream put, one at a time",
            "raw_put_p50_ms",
        ),
    ]

    def fmt(key: str) -> str:
        return f"{m[key]:.2f}" if key.endswith("_ms") else f"{m[key]:,.0f}"

    table = "\n".join(
        ["| measurement | pyxia client | same-run baseline | ratio |", "|---|---:|---|---:|"]
        + [
            f"| {what} | {fmt(k)} | {fmt(b)} ({base}) | {m[k] / m[b]:.2f} |"
            for what, k, base, b in rows
        ]
    )

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return f"""# pyxia client benchmarks

Written by `python benches/report.py` on {time.strftime("%Y-%m-%d %H:%M")} (commit {rev},
{seconds:g} s per figure). Machine: {machine()}.

One `pyxia standalone` (1 shard, RF=1, fsync on); client and server share the machine. Every
figure has its baseline from the **same run**: a bare gRPC loader (`benches/load.py`:
pre-serialized requests, no client logic) driving the same server. Puts are 100 bytes.

{table}

Reading it: with 64 callers each waiting for its own put, at most 64 puts are in flight, so
the server's fsync round trip bounds the throughput; the fair baseline is the bare loader with
the same 64 puts in flight. The single-put latency is dominated by the server's fsync (compare
the bare WriteStream round trip).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    args = ap.parse_args()
    m = measure(args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(m, args.seconds))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
