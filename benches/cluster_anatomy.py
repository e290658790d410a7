"""Where an RF=3 cluster's CPU goes at a fixed load: pyxia's or real Oxia's 3 data servers and
coordinator (as ``side_by_side.py`` starts them), Go ``oxia perf`` offering ``--rate`` ops/s at
``--reads`` percent reads, and over one window after a warm-up:

- the servers' CPU, user and system, in cores;
- gRPC calls and messages per second by method (``grpc_server_*`` from each server's
  ``/metrics``) and WAL sync rounds per second: what the load costs in messages;
- for pyxia, CPU and context switches per second by thread (the event loop's thread, gRPC's
  poller and event-engine threads, the WAL sync threads), from /proc.

    OXIA_BIN=... PYTHONPATH=python python benches/cluster_anatomy.py [--system pyxia|oxia]
        [--rate 20000] [--reads 80] [--warmup 16] [--seconds 12]

Same invariants as ``side_by_side.py``: loopback ports picked at run time, every process
ended, the data in a temporary directory removed at the end. Skips (exit 0, a message) without
an ``oxia`` binary (the load generator).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import side_by_side as sbs  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
COUNTED = re.compile(
    r"(grpc_server_started_total|grpc_server_msg_received_total|grpc_server_msg_sent_total"
    r"|oxia_server_wal_sync_latency_milliseconds_count)(\{[^}]*\})? ([0-9.e+]+)"
)
METHOD = re.compile(r'grpc_method="([^"]+)"')


def metrics_port(argv: list[str]) -> str | None:
    """The ``-m`` address a server was started with (None: metrics off)."""
    for flag in ("-m", "--metrics-addr"):
        if flag in argv:
            addr = argv[argv.index(flag) + 1]
            return addr or None
    return None


def scrape(addresses: list[str]) -> collections.Counter[tuple[str, str]]:
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for a in addresses:
        with urllib.request.urlopen(f"http://{a}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            m = COUNTED.match(line)
            if m:
                meth = METHOD.search(m.group(2) or "")
                out[(m.group(1), meth.group(1) if meth else "")] += float(m.group(3))
    return out


def threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """tid -> (name, CPU ticks, context switches) of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = st[st.index("(") + 1 : st.rindex(")")]
        fields = st.rsplit(")", 1)[1].split()
        switches = sum(
            int(status.split(k)[1].split()[0])
            for k in ("\nvoluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
        )
        out[tid] = (
            "event loop" if tid == str(pid) else name,
            int(fields[11]) + int(fields[12]),
            switches,
        )
    return out


def user_sys(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def start(tools: sbs.Tools, kind: str, base: Path) -> tuple[sbs.System, list[str]]:
    """The cluster, and its servers' metrics addresses (pyxia's started with metrics on)."""
    if kind == "oxia":
        system = sbs.start_cluster(tools, kind, 3, base)
        return system, [a for p in system.servers if (a := metrics_port(p.argv))]
    # side_by_side starts pyxia's servers with metrics off: turn them on for this run.
    ports: list[str] = []
    original = tools.pyxia

    def with_metrics(*args: str) -> list[str]:
        argv = original(*args)
        if args and args[0] == "server":
            addr = f"127.0.0.1:{sbs.free_port()}"
            ports.append(addr)
            i = len(argv) - 1 - argv[::-1].index("-m")  # the server's -m, not python's
            argv[i + 1] = addr
        return argv

    tools.pyxia = with_metrics  # type: ignore[method-assign]
    try:
        return sbs.start_cluster(tools, kind, 3, base), ports
    finally:
        tools.pyxia = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", choices=("pyxia", "oxia"), default="pyxia")
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=80)
    ap.add_argument("--warmup", type=float, default=16.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args(argv)
    oxia = sbs.find_tool("OXIA_BIN", "oxia")
    if oxia is None:
        print("cluster_anatomy: no oxia binary (OXIA_BIN or on PATH): skipped")
        return 0
    tools = sbs.Tools(oxia=oxia, tsoracle=None, getts_load=None)
    with tempfile.TemporaryDirectory(prefix="pyxia-anatomy-") as tmp:
        base = Path(tmp)
        system, metrics = start(tools, args.system, base)
        load = ["-r", str(args.rate), "-p", str(args.reads), "-s", "128"]
        perf = sbs.Proc("oxia perf", [oxia, "perf", "-a", system.address, *load], base / "perf.log")
        try:
            print(
                f"{args.system}: RF=3, 3 shards, oxia perf {' '.join(load)}; "
                f"warm-up {args.warmup:g} s",
                flush=True,
            )
            time.sleep(args.warmup)
            system.check_alive()
            pids = [p.popen.pid for p in system.servers]
            m0, u0 = scrape(metrics), [user_sys(p) for p in pids]
            t0 = [threads(p) for p in pids] if args.system == "pyxia" else []
            began = time.monotonic()
            time.sleep(args.seconds)
            dt = time.monotonic() - began
            m1, u1 = scrape(metrics), [user_sys(p) for p in pids]
            t1 = [threads(p) for p in pids] if args.system == "pyxia" else []
        finally:
            perf.stop()
            system.close()
    user = sum(b[0] - a[0] for a, b in zip(u0, u1, strict=True)) / CLK_TCK / dt
    sys_ = sum(b[1] - a[1] for a, b in zip(u0, u1, strict=True)) / CLK_TCK / dt
    print(
        f"servers' CPU: {user + sys_:.2f} cores (user {user:.2f}, system {sys_:.2f}) "
        f"over {dt:.1f} s; load {sbs.load1():.1f}"
    )
    print("per second (all 3 servers):")
    for key in sorted(m1):
        rate = (m1[key] - m0.get(key, 0.0)) / dt
        if rate >= 1.0:
            print(f"  {rate:9.1f}  {key[0].replace('_total', '')} {key[1]}")
    if t1:
        cpu: collections.Counter[str] = collections.Counter()
        switches: collections.Counter[str] = collections.Counter()
        count: collections.Counter[str] = collections.Counter()
        for a, b in zip(t0, t1, strict=True):
            for tid, (name, ticks, sw) in b.items():
                _, ticks0, sw0 = a.get(tid, (name, 0, 0))
                kind = re.sub(r"[0-9]+", "#", name)
                cpu[kind] += ticks - ticks0
                switches[kind] += sw - sw0
                count[kind] += 1
        print("by thread (all 3 servers):")
        for kind, ticks in cpu.most_common():
            if ticks or switches[kind]:
                print(
                    f"  {kind:18s} x{count[kind]:<3d} {ticks / CLK_TCK / dt:5.2f} cores "
                    f"{switches[kind] / dt:8.0f} context switches/s"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
