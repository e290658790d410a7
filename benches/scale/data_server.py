"""One data server with many shards, measured for real (issue 21 §2).

A ``pyxia standalone`` (one data server and its in-process coordinator: the same data-server
code paths as ``pyxia server``) is started with ``--shards N`` on this machine. Measured:

* time to the ready line, and until every shard has taken one write (one key per shard);
* RSS, open descriptors and threads of the process, idle, once every shard has been written;
* disk allocated under the data and WAL directories (blocks, not apparent sizes);
* a clean restart (SIGTERM) and a crash restart (kill -9): time until every shard serves its
  key back;
* write throughput at saturation (``pyxia perf``, writes only, random keys over every shard),
  next to the same load on a server of ``--compare-shards`` (4) shards. With ``--oxia-perf
  PATH`` the load comes from Oxia's Go ``oxia perf`` instead (open loop at 200,000 writes/s:
  every write is in flight at once, so each shard's batches fill; ``pyxia perf`` keeps at most
  1,000 in flight, one per shard at 1,000 shards).

    PYTHONPATH=python python benches/scale/data_server.py --shards 1000
    PYTHONPATH=python python benches/scale/data_server.py --shards 1000 --json
    PYTHONPATH=python python benches/scale/data_server.py --shards 1000 --oxia-perf /path/to/oxia

Targets (issue 21): 1,000 shards idle in <= 1 GiB RSS and <= 2 GiB disk, restart to serving
<= 30 s, throughput over 1,000 shards >= 0.7x the same load on 4 shards. A scaled-down run is
in tests/test_scale_data_server.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from pyxia.client.async_client import AsyncClient  # noqa: E402
from servers import ServerProcess, standalone_args  # noqa: E402


@dataclass(frozen=True)
class ProcessStats:
    rss_bytes: int
    fds: int
    threads: int


def process_stats(pid: int) -> ProcessStats:
    """RSS, open descriptors and threads of a live process (from /proc)."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    rss = int(fields["VmRSS"].split()[0]) * 1024
    return ProcessStats(rss, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"]))


def allocated_bytes(path: Path) -> int:
    """Disk blocks allocated to the files under ``path`` (what preallocation reserves)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


async def keys_for_every_shard(address: str, namespace: str = "default") -> dict[int, str]:
    """One key per shard of ``namespace``, found by hashing candidate keys as the client does."""
    async with AsyncClient(address, namespace=namespace) as c:
        shards = set(c.core.shard_map.shards) if c.core.shard_map is not None else set()
        out: dict[int, str] = {}
        i = 0
        while len(out) < len(shards):
            key = f"/scale/k{i}"
            out.setdefault(c.shard_for(key), key)
            i += 1
        return out


async def put_each(address: str, keys: dict[int, str], value: bytes) -> None:
    async with AsyncClient(address) as c:
        await asyncio.gather(*(c.put(k, value) for k in keys.values()))


async def read_each(address: str, keys: dict[int, str], value: bytes) -> bool:
    """Whether every key reads back ``value`` (a failure of any shard is False)."""
    try:
        async with AsyncClient(address, request_timeout_s=5.0) as c:
            got = await asyncio.gather(*(c.get(k) for k in keys.values()))
    except Exception:
        return False
    return all(g.value == value for g in got)


async def wait_serving(address: str, keys: dict[int, str], value: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await read_each(address, keys, value):
        if time.monotonic() > deadline:
            raise AssertionError(f"the shards did not all serve within {timeout}s")


def perf_writes(address: str, seconds: float) -> float:
    """Writes per second at saturation (``pyxia perf``, random keys, writes only)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxia",
            "perf",
            "-a",
            address,
            "-r",
            "0",
            "-p",
            "0",
            "--keys-cardinality",
            "1000000",
            "--duration",
            f"{seconds}s",
            "--json",
            "--report-interval",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return float(report["write_ops_per_s"])


GO_WRITE_OPS = re.compile(r"Write ops\s*([\d.]+) w/s")
GO_REPORT_S = 10.0  # oxia perf's report period (fixed in its code)


def oxia_perf_writes(oxia: str, address: str, seconds: float) -> float:
    """Writes per second at saturation from Go ``oxia perf`` (open loop at 200,000 writes/s,
    random keys): the mean of its reports after the first (warm-up), ``seconds`` of them."""
    blocks = max(1, math.ceil(seconds / GO_REPORT_S))
    argv = [oxia, "perf", "-j", "-a", address, "-r", "200000", "-p", "0"]
    argv += ["--keys-cardinality", "1000000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reports: list[float] = []
    deadline = time.monotonic() + GO_REPORT_S * (blocks + 1) + 120
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = str(json.loads(line).get("message", ""))
            except (ValueError, AttributeError):
                continue
            m = GO_WRITE_OPS.search(message)
            if m is not None:
                reports.append(float(m.group(1)))
            if len(reports) > blocks or time.monotonic() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if len(reports) <= blocks:
        raise RuntimeError(f"oxia perf gave {len(reports)} reports, {blocks + 1} expected")
    return statistics.fmean(reports[1:])


@dataclass
class DataServerReport:
    shards: int
    start_to_ready_s: float
    first_write_all_s: float
    idle: ProcessStats
    data_disk_bytes: int
    wal_disk_bytes: int
    restart_to_serving_s: float
    crash_restart_to_serving_s: float
    writes_per_s: float
    compare_shards: int
    compare_writes_per_s: float

    def ratio(self) -> float:
        return self.writes_per_s / self.compare_writes_per_s if self.compare_writes_per_s else 0


def _start(base: Path, shards: int, timeout: float) -> ServerProcess:
    base.mkdir(parents=True, exist_ok=True)
    args = standalone_args(base, "--shards", str(shards))
    return ServerProcess(args, base).start(timeout=timeout)


def measure(
    base: Path,
    shards: int,
    *,
    perf_seconds: float = 10.0,
    compare_shards: int = 4,
    timeout: float = 300.0,
    oxia_perf: str | None = None,
) -> DataServerReport:
    """Runs the scenario (one event loop: grpc.aio binds to the first loop it runs on).
    ``oxia_perf``: the Oxia binary whose ``perf`` is the load generator (default ``pyxia
    perf``)."""
    return asyncio.run(_measure(base, shards, perf_seconds, compare_shards, timeout, oxia_perf))


async def _measure(
    base: Path,
    shards: int,
    perf_seconds: float,
    compare_shards: int,
    timeout: float,
    oxia_perf: str | None,
) -> DataServerReport:
    def measure_writes(address: str) -> float:
        if oxia_perf is not None:
            return oxia_perf_writes(oxia_perf, address, perf_seconds)
        return perf_writes(address, perf_seconds)

    value = b"v" * 100
    t0 = time.monotonic()
    s = _start(base / "many", shards, timeout)
    try:
        ready = time.monotonic() - t0
        keys = await keys_for_every_shard(s.public)
        assert len(keys) == shards, f"{len(keys)} shards, expected {shards}"
        await put_each(s.public, keys, value)
        first_write = time.monotonic() - t0
        await wait_serving(s.public, keys, value, timeout)
        idle = process_stats(s.pid)
        data_disk = allocated_bytes(base / "many" / "db")
        wal_disk = allocated_bytes(base / "many" / "wal")
        s.terminate(timeout)
        t1 = time.monotonic()
        s = _start(base / "many", shards, timeout)
        await wait_serving(s.public, keys, value, timeout)
        restart = time.monotonic() - t1
        s.kill()
        t2 = time.monotonic()
        s = _start(base / "many", shards, timeout)
        await wait_serving(s.public, keys, value, timeout)
        crash_restart = time.monotonic() - t2
        writes = await asyncio.to_thread(measure_writes, s.public) if perf_seconds > 0 else 0.0
    finally:
        s.kill()
    compare = 0.0
    if perf_seconds > 0:
        c = _start(base / "few", compare_shards, timeout)
        try:
            compare = await asyncio.to_thread(measure_writes, c.public)
        finally:
            c.kill()
    return DataServerReport(
        shards,
        ready,
        first_write,
        idle,
        data_disk,
        wal_disk,
        restart,
        crash_restart,
        writes,
        compare_shards,
        compare,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--compare-shards", type=int, default=4)
    p.add_argument("--perf-seconds", type=float, default=10.0)
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    p.add_argument(
        "--oxia-perf",
        default=None,
        metavar="PATH",
        help="Oxia binary whose Go `oxia perf` generates the load (default: pyxia perf)",
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyxia-scale-") as tmp:
        r = measure(
            a.dir or Path(tmp),
            a.shards,
            perf_seconds=a.perf_seconds,
            compare_shards=a.compare_shards,
            oxia_perf=a.oxia_perf,
        )
    if a.json:
        print(json.dumps({**asdict(r), "ratio": r.ratio()}))
        return
    mib = 1 << 20
    print(f"shards                      {r.shards}")
    print(f"start to ready              {r.start_to_ready_s:.1f} s")
    print(f"start to every shard written {r.first_write_all_s:.1f} s")
    print(f"idle RSS                    {r.idle.rss_bytes / mib:.0f} MiB")
    print(f"open descriptors            {r.idle.fds}")
    print(f"threads                     {r.idle.threads}")
    data, wal = r.data_disk_bytes / mib, r.wal_disk_bytes / mib
    print(f"disk: data / WAL            {data:.0f} / {wal:.0f} MiB")
    print(f"clean restart to serving    {r.restart_to_serving_s:.1f} s")
    print(f"crash restart to serving    {r.crash_restart_to_serving_s:.1f} s")
    print(f"writes/s over {r.shards} shards     {r.writes_per_s:.0f}")
    print(
        f"writes/s over {r.compare_shards} shards        {r.compare_writes_per_s:.0f}"
        f"  (ratio {r.ratio():.2f})"
    )


if __name__ == "__main__":
    main()
