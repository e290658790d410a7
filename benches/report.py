"""Measures pyxia's client against a fresh ``pyxia standalone`` and writes docs/benchmarks.md,
each figure next to its baseline measured in the same run:

    python benches/report.py [--seconds 3] [--rounds 3]

* client throughput (64 async callers, one put/get each at a time) vs the server's own
  WriteStream/Read throughput driven by a bare gRPC loader: at the same concurrency (the same
  operations in flight) and at its best (1,000-op batches, several in flight);
* sync (threads) vs async, for puts and gets;
* one put at a time (p50), sync and async, vs one bare WriteStream put at a time.

The machine is shared and noisy, so every figure is measured in ``--rounds`` interleaved rounds
(each round measures every figure and its baseline back to back) and the table shows the median
of each figure and the median of the per-round ratios.
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
    async_put_latencies,
    async_puts,
    raw_put_latencies,
    sync_gets,
    sync_put_latencies,
    sync_puts,
)
from load import read_load, write_stream_load  # noqa: E402
from servers import ServerProcess, standalone_args  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import grpc

    return (
        f"{os.cpu_count()} vCPU {cpu_model()}, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, grpcio {grpc.__version__}"
    )


def short_machine() -> str:
    """What stands next to each figure: cores, CPU and the load while it was measured."""
    return f"{os.cpu_count()} vCPU {cpu_model().split()[0]}, load {os.getloadavg()[0]:.2f}"


# (what, client key, baseline description, baseline key)
ROWS = [
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
        "`pyxia.AsyncClient`, 64 callers",
        "async_puts_64",
    ),
    ("puts/s, 8 sync threads", "sync_puts_8", "bare WriteStream, 8 puts in flight", "raw_8"),
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
        "gets/s, 64 sync threads (`pyxia.Client`)",
        "sync_gets_64",
        "`pyxia.AsyncClient`, 64 callers",
        "async_gets_64",
    ),
    (
        "single sync put, p50 latency (ms)",
        "sync_put_p50_ms",
        "bare WriteStream put, one at a time",
        "raw_put_p50_ms",
    ),
    (
        "single async put, p50 latency (ms)",
        "async_put_p50_ms",
        "bare WriteStream put, one at a time",
        "raw_put_p50_ms",
    ),
]


def measure_round(address: str, seconds: float) -> tuple[dict[str, float], dict[str, str]]:
    """One round: every figure and its baseline, back to back. Returns the figures and, for
    each client figure, the machine (with its load) at the time it was measured."""
    out: dict[str, float] = {}
    where: dict[str, str] = {}

    async def best_of(*shapes: tuple[int, int]) -> float:
        results = [
            (await write_stream_load(address, 0, seconds, batch=b, inflight=n)).ops_per_s
            for b, n in shapes
        ]
        return max(results)

    async def run_async() -> None:
        a = address
        out["raw_best"] = (await write_stream_load(a, 0, seconds)).ops_per_s
        out["raw_64"] = await best_of((64, 1), (32, 2))
        where["async_puts_64"] = short_machine()
        out["async_puts_64"] = (await async_puts(a, 64, seconds)).ops_per_s
        out["raw_8"] = await best_of((8, 1), (4, 2))
        out["raw_read_best"] = (await read_load(a, 0, seconds)).ops_per_s
        out["raw_read_64"] = (await read_load(a, 0, seconds, batch=32, concurrency=2)).ops_per_s
        where["async_gets_64"] = short_machine()
        out["async_gets_64"] = (await async_gets(a, 64, seconds)).ops_per_s

    asyncio.run(run_async())
    for key, fn in (
        ("sync_puts_64", lambda: sync_puts(address, 64, seconds).ops_per_s),
        ("sync_puts_8", lambda: sync_puts(address, 8, seconds).ops_per_s),
        ("sync_gets_64", lambda: sync_gets(address, 64, seconds).ops_per_s),
    ):
        where[key] = short_machine()
        out[key] = fn()
    return out, where


def measure_latency_round(address: str) -> tuple[dict[str, float], dict[str, str]]:
    """One put at a time: the bare round trip, then the async and the sync client (p50 of 300
    puts each), back to back."""
    out: dict[str, float] = {}
    where: dict[str, str] = {}
    out["raw_put_p50_ms"] = statistics.median(asyncio.run(raw_put_latencies(address))) * 1000
    where["async_put_p50_ms"] = short_machine()
    out["async_put_p50_ms"] = statistics.median(asyncio.run(async_put_latencies(address))) * 1000
    where["sync_put_p50_ms"] = short_machine()
    out["sync_put_p50_ms"] = statistics.median(sync_put_latencies(address)) * 1000
    return out, where


def measure(seconds: float, rounds: int) -> tuple[list[dict[str, float]], dict[str, str]]:
    """Throughput rounds on one server, then latency rounds on a fresh one (a server that just
    took seconds of full-speed writes is still flushing and compacting its DB, which slows a
    lone put's round trip, the bare one included, by up to 2x on this machine)."""
    results: list[dict[str, float]] = [{} for _ in range(rounds)]
    where: dict[str, str] = {}
    for phase in ("throughput", "latency"):
        with tempfile.TemporaryDirectory() as d:
            base = Path(d)
            s = ServerProcess(standalone_args(base), base).start()
            try:
                for i in range(rounds):
                    print(f"{phase} round {i + 1}/{rounds} ...", file=sys.stderr, flush=True)
                    if phase == "throughput":
                        r, w = measure_round(s.public, seconds)
                    else:
                        r, w = measure_latency_round(s.public)
                    results[i].update(r)
                    where.update(w)
                    print(
                        "  " + ", ".join(f"{k} {r[k] / r[b]:.2f}" for _, k, _, b in ROWS if k in r),
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                s.kill()
    return results, where


def render(results: list[dict[str, float]], where: dict[str, str], seconds: float) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    def fmt(key: str, v: float) -> str:
        return f"{v:.2f}" if key.endswith("_ms") else f"{v:,.0f}"

    lines = [
        "| measurement | pyxia client | same-run baseline | ratio (median of rounds) "
        "| machine when measured |",
        "|---|---:|---|---:|---|",
    ]
    for what, k, base, b in ROWS:
        ratio = statistics.median(r[k] / r[b] for r in results)
        lines.append(
            f"| {what} | {fmt(k, med(k))} | {fmt(b, med(b))} ({base}) | {ratio:.2f} "
            f"| {where.get(k, '')} |"
        )
    table = "\n".join(lines)

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return f"""# pyxia client benchmarks

Written by `python benches/report.py` on {time.strftime("%Y-%m-%d %H:%M")} (commit {rev},
{len(results)} interleaved rounds, {seconds:g} s per figure per round). Machine: {machine()}.

One `pyxia standalone` (1 shard, RF=1, fsync on) for the throughput rows, a fresh one for the
latency rows (one put at a time, on a server not busy flushing what a throughput run wrote);
client and server share the machine. Every
figure has its baseline from the **same run**: a bare gRPC loader (`benches/load.py`:
pre-serialized requests, no client logic) driving the same server, or the other client face.
Puts and values are 100 bytes. Each figure is the median over the rounds; the ratio is the
median of the per-round ratios (each round measures a figure and its baseline back to back, so
the ratio is steadier than either figure on this shared machine). The last column gives the
machine and its 1-minute load average when the client figure was measured (last round).

{table}

Reading it: with 64 callers each waiting for its own put, at most 64 puts are in flight, so
the server's fsync round trip bounds the throughput; the fair baseline is the bare loader with
the same puts in flight. The client splits each returning wave of callers across its window of
two batches, so the server works on one batch while the client resumes the callers of the
other. Sync threads pay a hand-off to the client's event-loop thread and back per call. The
single-put latency is dominated by the server (its fsync and gRPC's cost per message): compare
the bare WriteStream round trip.
"""


SIDE_BY_SIDE = "## Side by side with real Oxia"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    args = ap.parse_args()
    results, where = measure(args.seconds, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""
    if args.out.exists():  # the side-by-side section (benches/side_by_side.py) is not ours
        old = args.out.read_text()
        cut = old.find(SIDE_BY_SIDE)
        kept = "\n" + old[cut:] if cut >= 0 else ""
    args.out.write_text(render(results, where, args.seconds) + kept)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
