"""pyxia next to the real thing: Oxia's own Go ``oxia perf`` against ``oxia standalone`` and
``pyxia standalone`` (and against two RF=3 clusters of 3 data servers and a coordinator), in
interleaved rounds with fresh servers, and the timestamp oracle against the ``tsoracle`` server
with one Rust load generator (``benches/rust/getts_load``: tonic and tsoracle-proto, the stack of
tsoracle's own client) for both.

    PYTHONPATH=python python benches/side_by_side.py [--rounds 3] [--only W,...] [--out F.json]

Binaries: ``OXIA_BIN`` (or ``oxia`` on PATH, v0.17.1), ``TSORACLE_BIN`` (or ``tsoracle``,
2.3.3) and ``GETTS_LOAD_BIN`` (or built from benches/rust/getts_load with ``cargo`` into
``$CARGO_TARGET_DIR`` or target/bench). A part whose binary is missing is skipped with a
message (exit 0); CI does not run this. docs/benchmarks.md says how to build the peers and
what the figures were.

What one run measures (``measure_perf``): the load generator prints a report every 10 s
(``oxia perf``'s fixed period; ``pyxia perf --report-interval 10s`` prints the same lines).
The first report is warm-up; the window is from the first report to the last of ``--blocks``
more. Throughput, failed ops/s and latency percentiles are the window's reports averaged;
server and client CPU seconds come from /proc/PID/stat over the same window, divided by the
operations done in it (µs of CPU per operation = ms per 1,000 operations). Next to each figure
the machine's state: the 1-minute load average and the cores that other processes used during
the window (/proc/stat busy time less this run's processes). Before each run the harness waits
(at most ``--quiet-wait`` s) for the others to use less than ``--quiet-cores`` cores.

``--py-spy DIR`` records every pyxia server during its window into ``DIR/*.folded`` (py-spy's
raw format; ``--py-spy-native`` adds the native frames); the profiler's own CPU counts as the
others' load, not the server's.

Comparisons are per round (pyxia ÷ Oxia, measured back to back, the order alternating between
rounds) and the summary gives the median of the per-round ratios, as issue 19 asks.

The client comparisons (``cw1``, ``cr80``) compare load generators, not servers: on one fresh
standalone server (pyxia's, then Oxia's), Go ``oxia perf`` (open loop at 200k ops/s) and
``pyxia perf --rate 0`` run one after the other, the order alternating between rounds; the
ratio is pyxia perf ÷ Go on the same server, its client CPU per op included. ``--py-baseline
DIR`` adds a third client, ``pyxia perf`` from another tree's ``python/`` (before/after in the
same run).

Invariants: every process it starts is ended (SIGTERM, then SIGKILL) before the run returns,
also on errors and Ctrl-C; servers listen on 127.0.0.1 ports picked at run time; data lives in
a temporary directory removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLOCK_S = 10.0  # oxia perf's report period (fixed in its code)

STATS = re.compile(
    r"Total ops:\s*([\d.]+) ops/s - Failed ops:\s*([\d.]+) ops/s\s*"
    r"Write ops\s*([\d.]+) w/s\s*Latency ms: 50%\s*([\d.]+) - 95%\s*([\d.]+) - "
    r"99%\s*([\d.]+) - 99.9%\s*([\d.]+) - max\s*([\d.]+)\s*"
    r"Read\s+ops\s*([\d.]+) r/s\s*Latency ms: 50%\s*([\d.]+) - 95%\s*([\d.]+) - "
    r"99%\s*([\d.]+) - 99.9%\s*([\d.]+) - max\s*([\d.]+)"
)


# -- the machine ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def others_cores(seconds: float = 1.0, exclude: list[int] | None = None) -> float:
    """Cores used by the machine over ``seconds``, less the processes in ``exclude``."""
    pids = exclude or []
    b0, c0, t0 = machine_busy(), sum(proc_cpu(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    b1, c1, t1 = machine_busy(), sum(proc_cpu(p) for p in pids), time.monotonic()
    return max(0.0, ((b1 - b0) - (c1 - c0)) / (t1 - t0))


def wait_quiet(max_cores: float, max_wait: float) -> float:
    """Waits (at most ``max_wait`` s) for the others to use < ``max_cores``; returns the last
    sample."""
    deadline = time.monotonic() + max_wait
    while True:
        used = others_cores(1.0)
        if used < max_cores or time.monotonic() >= deadline:
            return used


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- processes ------------------------------------------------------------------------------------


class Proc:
    """One child process with its output in a log file; ended by ``stop``."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Tools:
    oxia: str | None
    tsoracle: str | None
    getts_load: str | None
    python: str = sys.executable
    py_baseline: str | None = None
    """The ``python`` directory of another pyxia tree whose ``pyxia perf`` is measured too in
    the client comparisons (``--py-baseline``): before/after in one run."""

    def pyxia(self, *args: str) -> list[str]:
        return [self.python, "-m", "pyxia", *args]


def child_env() -> dict[str, str]:
    """pyxia children run this tree's code."""
    old = os.environ.get("PYTHONPATH")
    py = str(ROOT / "python")
    return {"PYTHONPATH": py if not old else f"{py}{os.pathsep}{old}"}


def find_tool(env_var: str, name: str) -> str | None:
    path = os.environ.get(env_var) or shutil.which(name)
    return path if path and os.access(path, os.X_OK) else None


def build_getts_load(target: Path) -> str | None:
    """``benches/rust/getts_load`` (``GETTS_LOAD_BIN``, or built with cargo into ``target``;
    None without cargo)."""
    found = find_tool("GETTS_LOAD_BIN", "getts-load")
    if found:
        return found
    cargo = shutil.which("cargo")
    if cargo is None:
        return None
    crate = HERE / "rust" / "getts_load"
    print(f"building {crate} (cargo, a few minutes the first time)", file=sys.stderr)
    subprocess.run(
        [cargo, "build", "--release", "--locked", "--quiet"],
        cwd=crate,
        check=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
    )
    return str(target / "release" / "getts-load")


# -- systems under test ---------------------------------------------------------------------------


@dataclass
class System:
    """A running server or cluster: where clients connect and which processes are its
    servers (their CPU is the server CPU) and helpers (a coordinator)."""

    kind: str  # "oxia" | "pyxia" | "tsoracle"
    address: str
    servers: list[Proc]
    helpers: list[Proc] = field(default_factory=list)
    elected_s: float = 0.0
    """Seconds from the first process's start until every shard had a leader."""

    def server_cpu(self) -> float:
        return sum(p.cpu() for p in self.servers)

    def helper_cpu(self) -> float:
        return sum(p.cpu() for p in self.helpers)

    def pids(self) -> list[int]:
        return [p.pid for p in self.servers + self.helpers]

    def check_alive(self) -> None:
        for p in self.servers + self.helpers:
            if not p.alive():
                tail = "\n".join(p.text().splitlines()[-15:])
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{tail}")

    def close(self) -> None:
        for p in self.helpers + self.servers:
            p.stop()


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def go_put(tools: Tools, address: str, key: str, timeout: str = "2s") -> bool:
    """One put through Oxia's Go client (``oxia client put``)."""
    assert tools.oxia is not None
    r = subprocess.run(
        [tools.oxia, "client", "-a", address, "--request-timeout", timeout, "put", key, "x"],
        capture_output=True,
        timeout=30,
    )
    return r.returncode == 0


def start_standalone(tools: Tools, kind: str, shards: int, base: Path) -> System:
    public, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    data, wal = str(base / "db"), str(base / "wal")
    if kind == "oxia":
        assert tools.oxia is not None
        argv = [tools.oxia, "standalone", "-j", "-p", public, "-m", metrics]
        argv += ["--data-dir", data, "--wal-dir", wal, "-s", str(shards)]
        env = None
    else:
        argv = tools.pyxia("standalone", "--public-addr", public, "--metrics-addr", metrics)
        argv += ["--data-dir", data, "--wal-dir", wal, "--shards", str(shards)]
        env = child_env()
    t0 = time.monotonic()
    proc = Proc(f"{kind} standalone", argv, base / "server.log", env)
    system = System(kind, public, [proc])
    try:
        wait_for(lambda: (system.check_alive(), port_open(public))[1], 60, f"{kind} port")
        if tools.oxia is not None:
            wait_for(lambda: go_put(tools, public, "/side-by-side/probe"), 60, "a first put")
        system.elected_s = time.monotonic() - t0
    except BaseException:
        system.close()
        raise
    return system


def cluster_config(members: list[tuple[str, str]], shards: int) -> dict[str, Any]:
    return {
        "namespaces": [{"name": "default", "initialShardCount": shards, "replicationFactor": 3}],
        "servers": [{"public": p, "internal": i} for p, i in members],
    }


def oxia_leaders_elected(status_file: Path, shards: int) -> bool:
    """Oxia's file metadata (YAML): every shard of ``default`` steady (status 1) with a
    leader."""
    try:
        status = yaml.safe_load(status_file.read_text())
        got = status["namespaces"]["default"]["shards"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False
    return len(got) == shards and all(
        s.get("status") == 1 and s.get("leader") for s in got.values()
    )


def pyxia_leaders_elected(coordinator: str) -> bool:
    from pyxia.proto import admin_pb2, metadata_pb2

    try:
        with grpc.insecure_channel(coordinator) as ch:
            st = ch.unary_unary(
                "/pyxia.admin.v1.PyxiaAdmin/GetClusterStatus",
                request_serializer=admin_pb2.GetClusterStatusRequest.SerializeToString,
                response_deserializer=admin_pb2.GetClusterStatusResponse.FromString,
            )(admin_pb2.GetClusterStatusRequest(), timeout=2)
    except grpc.RpcError:
        return False
    shards = [m for ns in st.status.namespaces.values() for m in ns.shards.values()]
    return bool(shards) and all(
        m.status == metadata_pb2.SteadyState and m.HasField("leader") for m in shards
    )


def start_cluster(tools: Tools, kind: str, shards: int, base: Path) -> System:
    """3 data servers and a coordinator (RF=3), started as their READMEs say; returns once
    every shard has a leader (``elected_s`` after the first start)."""
    base.mkdir(parents=True, exist_ok=True)
    members = [(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for _ in range(3)]
    cfg = base / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(cluster_config(members, shards)))
    servers: list[Proc] = []
    helpers: list[Proc] = []
    system = System(kind, members[0][0], servers, helpers)
    t0 = time.monotonic()
    try:
        if kind == "oxia":
            assert tools.oxia is not None
            for n, (pub, internal) in enumerate(members):
                d = base / f"s{n}"
                argv = [tools.oxia, "server", "-j", "-p", pub, "-i", internal]
                argv += ["-m", f"127.0.0.1:{free_port()}"]
                argv += ["--data-dir", str(d / "db"), "--wal-dir", str(d / "wal")]
                servers.append(Proc(f"oxia server {n}", argv, d / "server.log"))
            status = base / "cluster-status.json"
            argv = [tools.oxia, "coordinator", "-j", "-f", str(cfg), "--metadata", "file"]
            argv += ["--file-clusters-status-path", str(status)]
            argv += ["-i", f"127.0.0.1:{free_port()}", "-p", f"127.0.0.1:{free_port()}"]
            argv += ["-m", f"127.0.0.1:{free_port()}"]
            helpers.append(Proc("oxia coordinator", argv, base / "coordinator.log"))
            elected: Callable[[], bool] = lambda: oxia_leaders_elected(status, shards)  # noqa: E731
        else:
            env = child_env()
            secret = base / "cluster.secret"
            subprocess.run(
                tools.pyxia("certs", "secret", "--out", str(secret)),
                check=True,
                env={**os.environ, **env},
                capture_output=True,
            )
            sec = ["--cluster-secret-file", str(secret)]
            for n, (pub, internal) in enumerate(members):
                d = base / f"s{n}"
                argv = tools.pyxia("server", "-p", pub, "-i", internal, "-m", "")
                argv += ["--data-dir", str(d / "db"), "--wal-dir", str(d / "wal"), *sec]
                servers.append(Proc(f"pyxia server {n}", argv, d / "server.log", env))
            coordinator = f"127.0.0.1:{free_port()}"
            argv = tools.pyxia("coordinator", "--cluster-config", str(cfg), "--metadata", "file")
            argv += ["--metadata-dir", str(base / "coordinator"), "--internal-addr", coordinator]
            argv += ["--metrics-addr", "", *sec]
            helpers.append(Proc("pyxia coordinator", argv, base / "coordinator.log", env))
            elected = lambda: pyxia_leaders_elected(coordinator)  # noqa: E731
        wait_for(lambda: (system.check_alive(), elected())[1], 120, f"{kind} leaders", 0.02)
        system.elected_s = time.monotonic() - t0
    except BaseException:
        system.close()
        raise
    return system


# -- one measured run -----------------------------------------------------------------------------


REPORT_WORDS = re.compile(r"ops|Latency")


def report_lines(text: str) -> list[str]:
    """The lines of the periodic reports in a load generator's output: ``oxia perf -j`` logs
    JSON lines (the report is one message), ``pyxia perf`` plain text; warnings are dropped."""
    lines = []
    for raw in text.splitlines():
        if not REPORT_WORDS.search(raw):
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            lines.append(raw)
            continue
        if isinstance(obj, dict):
            lines.append(str(obj.get("message", "")))
    return lines


def parse_reports(lines: list[str]) -> list[dict[str, float]]:
    names = "ops failed w_ops w_p50 w_p95 w_p99 w_p999 w_max r_ops r_p50 r_p95 r_p99 r_p999 r_max"
    return [
        dict(zip(names.split(), (float(g) for g in m.groups()), strict=True))
        for m in STATS.finditer("\n".join(lines))
    ]


class LogTail:
    """Reads a growing log from where it stopped; keeps the report lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: list[str] = []

    def reports(self) -> list[dict[str, float]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        self.offset += len(chunk)
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        self.lines += report_lines(data[:cut].decode(errors="replace"))
        return parse_reports(self.lines)


def client_env(tools: Tools, client: str) -> dict[str, str] | None:
    """``py``: this tree's pyxia; ``pyb``: the baseline tree's (``--py-baseline``)."""
    if client == "py":
        return child_env()
    if client == "pyb":
        assert tools.py_baseline is not None
        return {"PYTHONPATH": tools.py_baseline}
    return None


def perf_argv(tools: Tools, client: str, address: str, load: list[str]) -> list[str]:
    if client == "go":
        assert tools.oxia is not None
        return [tools.oxia, "perf", "-j", "-a", address, *load]
    return tools.pyxia("perf", "-a", address, *load, "--report-interval", "10s")


@dataclass
class Profiler:
    """Attaches to a pyxia server during a run's window (``--py-spy DIR``)."""

    out_dir: Path
    native: bool = False

    def start(self, pid: int, name: str, seconds: float) -> Proc:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
        argv += ["--rate", "200", "--format", "raw", "--nonblocking", "--threads"]
        argv += ["--native"] if self.native else []
        argv += ["-o", str(self.out_dir / f"{name}.folded")]
        return Proc("py-spy", argv, self.out_dir / f"{name}.py-spy.log")


def measure_perf(
    tools: Tools,
    system: System,
    client: str,
    load: list[str],
    blocks: int,
    base: Path,
    profile: tuple[Profiler, str] | None = None,
) -> dict[str, Any]:
    """Runs a load generator against ``system``; the figures of ``blocks`` reports after the
    first."""
    gen = Proc(
        f"{client} perf",
        perf_argv(tools, client, system.address, load),
        base / f"perf-{client}.log",
        client_env(tools, client),
    )
    spy: Proc | None = None
    try:
        deadline = time.monotonic() + BLOCK_S * (blocks + 1) + 90
        marks: list[tuple[float, float, float, float, float]] = []
        tail = LogTail(gen.log)
        seen = 0
        while len(marks) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no reports from {gen.name}:\n{gen.text()[-2000:]}")
            system.check_alive()
            if not gen.alive():
                raise RuntimeError(f"{gen.name} exited:\n{gen.text()[-2000:]}")
            n = len(tail.reports())
            if n > seen:
                seen = n
                if n == 1 or n == 1 + blocks:
                    marks.append(
                        (
                            time.monotonic(),
                            system.server_cpu(),
                            gen.cpu(),
                            machine_busy(),
                            system.helper_cpu(),
                        )
                    )
                    if n == 1 and profile is not None and system.kind == "pyxia":
                        prof, name = profile
                        spy = prof.start(system.servers[0].pid, name, BLOCK_S * blocks)
            time.sleep(0.05)
        load_avg = load1()
    finally:
        gen.stop(signal.SIGINT)
        if spy is not None:
            spy.popen.wait(60)
    reports = parse_reports(report_lines(gen.text()))[1 : 1 + blocks]
    (t0, s0, c0, m0, h0), (t1, s1, c1, m1, h1) = marks
    wall = t1 - t0
    mean = {k: statistics.fmean(r[k] for r in reports) for k in reports[0]}
    ops = max(mean["ops"], 1e-9)
    ours = (s1 - s0) + (c1 - c0) + (h1 - h0)
    return {
        "ops_per_s": mean["ops"],
        "failed_per_s": mean["failed"],
        "write_ops_per_s": mean["w_ops"],
        "read_ops_per_s": mean["r_ops"],
        "write_p50_ms": mean["w_p50"],
        "write_p99_ms": mean["w_p99"],
        "read_p50_ms": mean["r_p50"],
        "read_p99_ms": mean["r_p99"],
        "server_cpu_us_per_op": (s1 - s0) / wall / ops * 1e6,
        "server_cores": (s1 - s0) / wall,
        "helper_cpu_us_per_op": (h1 - h0) / wall / ops * 1e6,
        "client_cpu_us_per_op": (c1 - c0) / wall / ops * 1e6,
        "client_cores": (c1 - c0) / wall,
        "load1": load_avg,
        "others_cores": max(0.0, ((m1 - m0) - ours) / wall),
        "window_s": wall,
    }


# -- workloads ------------------------------------------------------------------------------------

WRITES = ["-r", "200000", "-p", "0", "-s", "128"]
READS80 = ["-r", "200000", "-p", "80", "-s", "128"]
LIGHT = ["-r", "1000", "-p", "0", "-s", "128"]
READS80_AT_20K = ["-r", "20000", "-p", "80", "-s", "128"]
"""Below both clusters' saturation: both do the same 16k reads + 4k writes per second, so the
CPU per operation compares the same mix (at saturation each server gets the mix its own read
and write paths allow: ``oxia perf`` drives reads and writes from separate open loops)."""
PY_WRITES = ["-r", "0", "-p", "0", "-s", "128"]
PY_READS80 = ["-r", "0", "-p", "80", "-s", "128"]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    topology: str  # "standalone" | "cluster"
    shards: int
    load: list[str]
    client: str = "go"
    """Which load generator: Go ``oxia perf`` or ``pyxia perf``."""
    baseline: str | None = None
    """For client workloads: the Go workload whose runs (same round, same server) it is
    compared with; None: the comparison is pyxia's server ÷ Oxia's server."""


WORKLOADS = [
    Workload("w1", "standalone, 1 shard, 100% writes, saturating", "standalone", 1, WRITES),
    Workload("r80", "standalone, 1 shard, 80% reads, saturating", "standalone", 1, READS80),
    Workload("w4", "standalone, 4 shards, writes", "standalone", 4, WRITES),
    Workload("rf3", "3 servers RF=3 + coordinator, 3 shards, writes", "cluster", 3, WRITES),
    Workload("rf3r80", "3 servers RF=3 + coordinator, 3 shards, 80% reads", "cluster", 3, READS80),
    Workload(
        "rf3r80at20k",
        "3 servers RF=3 + coordinator, 3 shards, 80% reads offered at 20k ops/s (same mix)",
        "cluster",
        3,
        READS80_AT_20K,
    ),
    Workload("light", "light, 1000 ops/s writes", "standalone", 1, LIGHT),
    Workload(
        "pyw", "pyxia perf --rate 0, writes", "standalone", 1, PY_WRITES, client="py", baseline="w1"
    ),
    Workload(
        "pyr80",
        "pyxia perf --rate 0, 80% reads",
        "standalone",
        1,
        PY_READS80,
        client="py",
        baseline="r80",
    ),
]


@dataclass(frozen=True)
class ClientWorkload:
    """Go ``oxia perf`` (open loop at ``go_load``'s rate) and ``pyxia perf`` (``py_load``) one
    after the other against the same fresh standalone server, pyxia's and Oxia's, in an order
    that alternates between rounds."""

    name: str
    title: str
    go_load: list[str]
    py_load: list[str]


CLIENT_WORKLOADS = [
    ClientWorkload("cw1", "clients on one server, 1 shard, 100% writes", WRITES, PY_WRITES),
    ClientWorkload("cr80", "clients on one server, 1 shard, 80% reads", READS80, PY_READS80),
]


def run_clients(
    tools: Tools, w: ClientWorkload, kind: str, rnd: int, args: argparse.Namespace, base: Path
) -> dict[str, Any]:
    """One server of ``kind``; each client measured on it in turn."""
    clients = ["go", "py"] + (["pyb"] if tools.py_baseline else [])
    if rnd % 2:
        clients.reverse()
    system = start_system(tools, kind, Workload(w.name, w.title, "standalone", 1, []), base)
    out: dict[str, Any] = {}
    try:
        for client in clients:
            quiet = wait_quiet(args.quiet_cores, args.quiet_wait)
            load = w.go_load if client == "go" else w.py_load
            out[client] = measure_perf(tools, system, client, load, args.blocks, base)
            out[client]["others_cores_before"] = quiet
    finally:
        system.close()
    return out


def start_system(tools: Tools, kind: str, w: Workload, base: Path) -> System:
    if w.topology == "cluster":
        return start_cluster(tools, kind, w.shards, base)
    return start_standalone(tools, kind, w.shards, base)


def run_workload(
    tools: Tools,
    w: Workload,
    kind: str,
    args: argparse.Namespace,
    base: Path,
    profiler: Profiler | None,
) -> dict[str, Any]:
    quiet = wait_quiet(args.quiet_cores, args.quiet_wait)
    system = start_system(tools, kind, w, base)
    try:
        prof = (profiler, f"{w.name}-{base.name}") if profiler is not None else None
        result = measure_perf(tools, system, w.client, w.load, args.blocks, base, prof)
    finally:
        system.close()
    result["others_cores_before"] = quiet
    result["ready_s"] = system.elected_s
    return result


# -- the timestamp oracle -------------------------------------------------------------------------

GET_TS = "/tsoracle.v1.TsoService/GetTs"


def get_ts_once(address: str) -> bool:
    from pyxia.proto import tso_pb2

    try:
        with grpc.insecure_channel(address) as ch:
            ch.unary_unary(
                GET_TS,
                request_serializer=tso_pb2.GetTsRequest.SerializeToString,
                response_deserializer=tso_pb2.GetTsResponse.FromString,
            )(tso_pb2.GetTsRequest(count=1), timeout=1)
        return True
    except grpc.RpcError:
        return False


def start_tso(tools: Tools, kind: str, base: Path) -> System:
    public = f"127.0.0.1:{free_port()}"
    if kind == "tsoracle":
        assert tools.tsoracle is not None
        argv = [tools.tsoracle, "serve", "file", "--listen", public]
        argv += ["--state-dir", str(base / "state"), "--heartbeat-interval", "0s"]
        proc = Proc("tsoracle", argv, base / "server.log")
    else:
        argv = tools.pyxia("standalone", "--public-addr", public, "--metrics-addr", "")
        argv += ["--data-dir", str(base / "db"), "--wal-dir", str(base / "wal")]
        if kind == "pyxia":  # GetTs on the native TSO port; "pyxia-public": through grpc.aio
            public = f"127.0.0.1:{free_port()}"
            argv += ["--tso-addr", public]
        proc = Proc("pyxia standalone", argv, base / "server.log", child_env())
    system = System(kind, public, [proc])
    try:
        wait_for(lambda: (system.check_alive(), get_ts_once(public))[1], 60, f"{kind} GetTs", 0.1)
    except BaseException:
        system.close()
        raise
    return system


def measure_tso(
    tools: Tools, kind: str, callers: int, seconds: float, base: Path, quiet: tuple[float, float]
) -> dict[str, Any]:
    assert tools.getts_load is not None
    before = wait_quiet(*quiet)
    system = start_tso(tools, kind, base)
    try:
        argv = [tools.getts_load, system.address, str(callers), str(min(callers, 4))]
        argv += [str(seconds), "1"]
        t0, s0, m0 = time.monotonic(), system.server_cpu(), machine_busy()
        u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        gen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = gen.communicate(timeout=seconds + 60)
        t1, s1, m1 = time.monotonic(), system.server_cpu(), machine_busy()
        u1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the generator, now reaped
        if gen.returncode != 0:
            raise RuntimeError(f"getts-load failed: {err.strip()}")
        res = json.loads(out)
    finally:
        system.close()
    wall = t1 - t0
    calls = max(res["calls_per_s"], 1e-9)
    gen_cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    return {
        "calls_per_s": res["calls_per_s"],
        "errors": res["errors"],
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "server_cpu_us_per_call": (s1 - s0) / wall / calls * 1e6,
        "client_cpu_us_per_call": gen_cpu / wall / calls * 1e6,
        "load1": load1(),
        "machine_cores": (m1 - m0) / wall,
        "others_cores_before": before,
    }


# -- first connection -----------------------------------------------------------------------------

PY_FIRST_PUT = r"""
import sys, time
t0 = time.monotonic()
import pyxia
t1 = time.monotonic()
with pyxia.Client(sys.argv[1]) as c:
    c.put(sys.argv[2], b"x")
    t2 = time.monotonic()
print(f"{t2 - t1:.4f} {t1 - t0:.4f} {t2:.4f}")
"""


def serves_assignments(address: str) -> bool:
    """Whether the server answers GetShardAssignments with a map (a fresh Oxia data server
    refuses it, and writes, with NOT_INITIALIZED until its coordinator's first push)."""
    from pyxia.proto import client_pb2

    try:
        with grpc.insecure_channel(address) as ch:
            call = ch.unary_stream(
                "/io.oxia.proto.v1.OxiaClient/GetShardAssignments",
                request_serializer=client_pb2.ShardAssignmentsRequest.SerializeToString,
                response_deserializer=client_pb2.ShardAssignments.FromString,
            )(client_pb2.ShardAssignmentsRequest(namespace="default"), timeout=1)
            for _ in call:
                return True
    except grpc.RpcError:
        return False
    return False


def first_connection(tools: Tools, kind: str, base: Path) -> dict[str, Any]:
    """A fresh 3-server cluster: as soon as every shard has a leader, a new pyxia client (its
    own process) and Oxia's Go client (``oxia client put``) each put the same key (so both wait
    for the same shard's leader), while the harness
    probes when every server first serves the assignments (``served_s``, after the election).
    Each client's lag is the time from ``served_s`` to its put being answered (pyxia: measured
    in its process, after its imports; Go: the whole process) — what a client adds to the
    cluster's own readiness. Then a second pyxia client on the ready cluster."""
    system = start_cluster(tools, kind, 3, base)
    publics = [m["public"] for m in yaml.safe_load((base / "cluster.yaml").read_text())["servers"]]
    waiting = set(publics)
    try:
        elected = time.monotonic()
        out: dict[str, Any] = {"elected_s": system.elected_s}
        py = subprocess.Popen(
            [tools.python, "-c", PY_FIRST_PUT, system.address, "/side-by-side/first"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **child_env()},
        )
        go: subprocess.Popen[bytes] | None = None
        if tools.oxia is not None:
            argv = [tools.oxia, "client", "-a", system.address, "--request-timeout", "60s"]
            go = subprocess.Popen(
                [*argv, "put", "/side-by-side/first", "x"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        served: float | None = None
        go_done: float | None = None
        try:
            deadline = elected + 90
            while time.monotonic() < deadline:
                for a in [a for a in waiting if serves_assignments(a)]:
                    waiting.discard(a)
                    if not waiting:
                        served = time.monotonic()
                if go is not None and go_done is None and go.poll() is not None:
                    go_done = time.monotonic() if go.returncode == 0 else float("nan")
                if served is not None and py.poll() is not None and (go is None or go_done):
                    break
                time.sleep(0.02)
            stdout, stderr = py.communicate(timeout=30)
        finally:
            for p in (py, go):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        if py.returncode != 0:
            raise RuntimeError(f"pyxia client put failed: {stderr.strip()[-500:]}")
        if served is None:
            raise RuntimeError(f"{kind} cluster: no assignments served within 90 s")
        in_process, _imports, py_done = (float(x) for x in stdout.split())
        out["served_s"] = served - elected
        out["pyxia_first_s"] = in_process
        out["pyxia_lag_s"] = py_done - served
        out["go_lag_s"] = go_done - served if go_done is not None else None
        # Started together: how much later (negative: earlier) pyxia's put was answered.
        out["pyxia_minus_go_s"] = py_done - go_done if go_done is not None else None
        t0 = time.monotonic()
        r = subprocess.run(
            [tools.python, "-c", PY_FIRST_PUT, system.address, "/side-by-side/second"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **child_env()},
        )
        if r.returncode != 0:
            raise RuntimeError(f"pyxia client put failed: {r.stderr.strip()[-500:]}")
        out["pyxia_second_s"] = float(r.stdout.split()[0])
        out["pyxia_second_process_s"] = time.monotonic() - t0
        out["load1"] = load1()
    finally:
        system.close()
    return out


# -- report ---------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def read_share(r: dict[str, Any]) -> str:
    """The share of reads in the operations a run did (at saturation ``oxia perf``'s mix is
    what the server's read and write paths allow, not the ``-p`` asked for)."""
    reads, ops = r.get("read_ops_per_s"), r.get("ops_per_s") or 0.0
    return "-" if reads is None or ops <= 0 else f"{100.0 * reads / ops:.0f}%"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """Ratios a ÷ b of one round."""
    out = {
        "throughput": ratio(a["ops_per_s"], b["ops_per_s"]),
        "server_cpu_per_op": ratio(a["server_cpu_us_per_op"], b["server_cpu_us_per_op"]),
        "client_cpu_per_op": ratio(a["client_cpu_us_per_op"], b["client_cpu_us_per_op"]),
        "write_p50": ratio(a["write_p50_ms"], b["write_p50_ms"]),
        "read_p50": ratio(a["read_p50_ms"], b["read_p50_ms"]),
    }
    return out


def summarize(results: dict[str, Any]) -> str:
    """Markdown: per workload, per-round ratios and their medians, raw figures and load."""
    lines = ["| workload | ratio | per round | median | pyxia (median) | Oxia (median) | load |"]
    lines.append("|---|---|---|---:|---:|---:|---|")
    for w in WORKLOADS:
        rounds = results["perf"].get(w.name)
        if not rounds:
            continue
        if w.baseline is None:
            pairs = [(r["pyxia"], r["oxia"]) for r in rounds]
            label = "pyxia ÷ Oxia server"
        else:
            pairs = []
            base_rounds = results["perf"].get(w.baseline, [])
            for i, r in enumerate(rounds):
                for server in ("oxia", "pyxia"):
                    if i < len(base_rounds):
                        pairs.append((r[server], base_rounds[i][server]))
            label = "pyxia client ÷ Go client (same server)"
        comps = [compare(a, b) for a, b in pairs]
        keys = ["throughput", "server_cpu_per_op", "write_p50"]
        if "80" in w.name:
            keys.append("read_p50")
        if w.client == "py":
            keys = ["throughput", "client_cpu_per_op", "write_p50"] + (
                ["read_p50"] if "80" in w.name else []
            )
        fig = {
            "throughput": ("ops_per_s", 0),
            "server_cpu_per_op": ("server_cpu_us_per_op", 2),
            "client_cpu_per_op": ("client_cpu_us_per_op", 2),
            "write_p50": ("write_p50_ms", 2),
            "read_p50": ("read_p50_ms", 2),
        }
        loads = ", ".join(
            f"{a['load1']:.1f}/{b['load1']:.1f} (others {a['others_cores']:.2f}/"
            f"{b['others_cores']:.2f}; reads {read_share(a)}/{read_share(b)})"
            for a, b in pairs
        )
        for k in keys:
            per = [c[k] for c in comps]
            key, digits = fig[k]
            lines.append(
                f"| {w.name}: {w.title} | {k} ({label}) | {', '.join(fmt(x) for x in per)} | "
                f"**{fmt(med(per))}** | {fmt(med([a[key] for a, _ in pairs]), digits)} | "
                f"{fmt(med([b[key] for _, b in pairs]), digits)} | "
                f"{loads if k == 'throughput' else ''} |"
            )
    crounds = results.get("clients", {})
    if crounds:
        lines += [
            "",
            "| clients on one server | server | ratio | per round | median | pyxia perf "
            "(median) | Go oxia perf (median) | load (pyxia/Go runs) |",
        ]
        lines.append("|---|---|---|---|---:|---:|---:|---|")
    for w in CLIENT_WORKLOADS:
        for kind in ("pyxia", "oxia"):
            rounds = [r[kind] for r in crounds.get(w.name, []) if kind in r]
            if not rounds:
                continue
            for who in ("py", "pyb"):
                pairs = [(r[who], r["go"]) for r in rounds if who in r]
                if not pairs:
                    continue
                label = "pyxia perf ÷ Go" if who == "py" else "baseline pyxia perf ÷ Go"
                loads = ", ".join(f"{a['load1']:.1f}/{b['load1']:.1f}" for a, b in pairs)
                for k, key, digits in (
                    ("throughput", "ops_per_s", 0),
                    ("client_cpu_per_op", "client_cpu_us_per_op", 2),
                    ("write_p50", "write_p50_ms", 2),
                ):
                    per = [ratio(a[key], b[key]) for a, b in pairs]
                    lines.append(
                        f"| {w.name}: {w.title} | {kind} | {k} ({label}) | "
                        f"{', '.join(fmt(x) for x in per)} | **{fmt(med(per))}** | "
                        f"{fmt(med([a[key] for a, _ in pairs]), digits)} | "
                        f"{fmt(med([b[key] for _, b in pairs]), digits)} | "
                        f"{loads if k == 'throughput' else ''} |"
                    )
    tso = results.get("tso", {})
    if tso:
        lines += [
            "",
            "| TSO GetTs, count 1 | ratio | per round | median | pyxia | tsoracle | load |",
        ]
        lines.append("|---|---|---|---:|---:|---:|---|")
        for callers, rounds in sorted(tso.items(), key=lambda kv: int(kv[0])):
            for k, digits in (("calls_per_s", 0), ("p50_ms", 3), ("server_cpu_us_per_call", 1)):
                per = [ratio(r["pyxia"][k], r["tsoracle"][k]) for r in rounds]
                loads = ", ".join(
                    f"{r['pyxia']['load1']:.1f}/{r['tsoracle']['load1']:.1f}" for r in rounds
                )
                lines.append(
                    f"| {callers} caller(s) | {k} | {', '.join(fmt(x) for x in per)} | "
                    f"**{fmt(med(per))}** | {fmt(med([r['pyxia'][k] for r in rounds]), digits)} | "
                    f"{fmt(med([r['tsoracle'][k] for r in rounds]), digits)} | "
                    f"{loads if k == 'calls_per_s' else ''} |"
                )
    fc = results.get("first_connection", {})
    if fc:
        lines += [
            "",
            "| first put on a fresh RF=3 cluster (s) | elected after | assignments served "
            "after election | pyxia client, first (in process) | pyxia lag after served | "
            "Go client lag after served (process) | pyxia done - Go done | pyxia client, second | "
            "load |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for kind, rounds in fc.items():
            lines.append(
                f"| {kind} cluster | "
                + " | ".join(
                    ", ".join(fmt(r.get(k)) for r in rounds)
                    for k in (
                        "elected_s",
                        "served_s",
                        "pyxia_first_s",
                        "pyxia_lag_s",
                        "go_lag_s",
                        "pyxia_minus_go_s",
                        "pyxia_second_s",
                    )
                )
                + f" | {', '.join(fmt(r['load1'], 1) for r in rounds)} |"
            )
    return "\n".join(lines)


def round_line(name: str, rnd: int, kind: str, r: dict[str, Any]) -> str:
    return (
        f"[{name} round {rnd} {kind:5}] {r['ops_per_s']:9.0f} ops/s "
        f"({100 * r['read_ops_per_s'] / max(r['ops_per_s'], 1e-9):.0f}% reads) failed "
        f"{r['failed_per_s']:.0f}/s  w p50 {r['write_p50_ms']:.1f} ms  r p50 "
        f"{r['read_p50_ms']:.1f} ms  server {r['server_cpu_us_per_op']:.2f} µs/op "
        f"({r['server_cores']:.2f} cores)  client {r['client_cpu_us_per_op']:.2f} µs/op  "
        f"load {r['load1']:.2f} others {r['others_cores']:.2f} cores"
    )


# -- main -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pyxia-side-by-side-"))
    try:
        yield base
    finally:
        if keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2, help="10 s reports per run after warm-up")
    names = ",".join(w.name for w in WORKLOADS + CLIENT_WORKLOADS)
    ap.add_argument("--only", default=f"{names},tso,first", help=f"of {names},tso,first")
    ap.add_argument("--tso-callers", default="1,16,64")
    ap.add_argument("--tso-seconds", type=float, default=8.0)
    ap.add_argument(
        "--tso-kinds",
        default="pyxia,tsoracle",
        help="servers of the TSO rounds: pyxia (its --tso-addr port), tsoracle, pyxia-public "
        "(GetTs on pyxia's public port, grpc.aio)",
    )
    ap.add_argument("--quiet-cores", type=float, default=0.5)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--out", type=Path, help="write every figure as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the data and logs")
    ap.add_argument("--py-spy", type=Path, help="profile pyxia servers into DIR (folded)")
    ap.add_argument("--py-spy-native", action="store_true")
    ap.add_argument(
        "--py-baseline",
        help="the python/ directory of another pyxia tree: its pyxia perf is measured too in the "
        "client comparisons (cw1, cr80)",
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    tools = Tools(
        oxia=find_tool("OXIA_BIN", "oxia"),
        tsoracle=find_tool("TSORACLE_BIN", "tsoracle"),
        getts_load=None,
        py_baseline=args.py_baseline,
    )
    results: dict[str, Any] = {
        "perf": {},
        "clients": {},
        "tso": {},
        "first_connection": {},
        "meta": {},
    }
    results["meta"] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cores": os.cpu_count(),
        "oxia": tools.oxia,
        "tsoracle": tools.tsoracle,
        "rounds": args.rounds,
        "blocks": args.blocks,
    }
    profiler = None
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
        profiler = Profiler(args.py_spy, args.py_spy_native)

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1))

    with workdir(args.keep) as base:
        perf_workloads = [w for w in WORKLOADS if w.name in only]
        if perf_workloads and tools.oxia is None:
            print("skip: no oxia binary (OXIA_BIN or oxia on PATH): Oxia workloads not run")
            perf_workloads = []
        client_workloads = [w for w in CLIENT_WORKLOADS if w.name in only]
        if client_workloads and tools.oxia is None:
            print("skip: no oxia binary (OXIA_BIN or oxia on PATH): no client comparisons")
            client_workloads = []
        if "tso" in only:
            if tools.tsoracle is None:
                print("skip: no tsoracle binary (TSORACLE_BIN or tsoracle on PATH): no TSO")
                only.discard("tso")
            else:
                target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target" / "bench"))
                tools.getts_load = build_getts_load(target)
                if tools.getts_load is None:
                    print("skip: no getts-load (GETTS_LOAD_BIN, or cargo to build it): no TSO")
                    only.discard("tso")
        if "first" in only and tools.oxia is None:
            print("skip: no oxia binary (OXIA_BIN or oxia on PATH): no first connections")
            only.discard("first")
        for rnd in range(args.rounds):
            order = ["pyxia", "oxia"] if rnd % 2 == 0 else ["oxia", "pyxia"]
            for w in perf_workloads:
                row: dict[str, Any] = {}
                for kind in order:
                    d = base / f"r{rnd}-{w.name}-{kind}"
                    row[kind] = run_workload(tools, w, kind, args, d, profiler)
                    print(round_line(w.name, rnd, kind, row[kind]), flush=True)
                results["perf"].setdefault(w.name, []).append(row)
                save()
            for cw in client_workloads:
                crow: dict[str, Any] = {}
                for kind in order:
                    d = base / f"r{rnd}-{cw.name}-{kind}"
                    crow[kind] = run_clients(tools, cw, kind, rnd, args, d)
                    for client, r in crow[kind].items():
                        print(round_line(cw.name, rnd, f"{client}@{kind}", r), flush=True)
                results["clients"].setdefault(cw.name, []).append(crow)
                save()
            if "tso" in only:
                for callers in (int(c) for c in args.tso_callers.split(",")):
                    trow: dict[str, Any] = {}
                    kinds = args.tso_kinds.split(",")
                    for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                        d = base / f"r{rnd}-tso{callers}-{kind}"
                        q = (args.quiet_cores, args.quiet_wait)
                        trow[kind] = measure_tso(tools, kind, callers, args.tso_seconds, d, q)
                        t = trow[kind]
                        print(
                            f"[tso {callers} round {rnd} {kind:12}] "
                            f"{t['calls_per_s']:8.0f} calls/s "
                            f"p50 {t['p50_ms']:.3f} ms p99 {t['p99_ms']:.3f} ms server "
                            f"{t['server_cpu_us_per_call']:.1f} µs/call errors {t['errors']} "
                            f"load {t['load1']:.2f}",
                            flush=True,
                        )
                    results["tso"].setdefault(str(callers), []).append(trow)
                    save()
            if "first" in only:
                for kind in order:
                    d = base / f"r{rnd}-first-{kind}"
                    fc = first_connection(tools, kind, d)
                    print(f"[first connection round {rnd} {kind:5}] {json.dumps(fc)}", flush=True)
                    results["first_connection"].setdefault(kind, []).append(fc)
                    save()
    print()
    print(summarize(results))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
