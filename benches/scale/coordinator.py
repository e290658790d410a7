"""The coordinator at scale, against simulated data servers (issue 21 §1).

The real coordinator (a ``pyxia coordinator`` process, file metadata provider, cluster secret)
runs against N data servers simulated by one other process (``sim_servers.py``: one gRPC
server per identity, in-memory shard state). Scenarios, in order, each measured for wall
time, the coordinator's CPU time and RSS, and the cluster-status writes it made (count, bytes,
shard edits batched into them) and the assignment pushes the data servers received:

1. ``cold_start``: the coordinator starts on an empty status: every shard of the namespaces
   (``--shards`` over ``--namespaces``, RF ``--rf``) is created, elected, and SteadyState;
2. ``idle``: ``--idle-seconds`` of a steady cluster: what the coordinator spends keeping it
   (health probes, and each shard's check of its ensemble every minute: a GetStatus per
   replica);
3. ``server_dies``: one server is killed: every shard it led has a new leader, persisted
   (and ``pushed_s``: when the last server got the last assignment map of it, from which
   clients learn the new leaders); then ``server_back``: it restarts, until every replica it
   holds follows (or leads) again;
4. ``coordinator_failover``: the coordinator is killed (-9) and a new one started on the same
   metadata (the file provider has no standby: the next process takes over): until it leads
   with every shard steady, and until it verified every replica (its first GetStatus round);
5. ``rolling_restart``: every server in turn (``--rolling`` of them) is killed, and restarted
   once each shard it led has a new leader; the next one goes once its replicas follow again.
   Reported: the total, each step's time, and each shard's unavailability (from its leader's
   end to the next BecomeLeader, timed by the simulator);
6. ``remove_servers``: ``--change`` servers leave the config: every replica moves off them;
7. ``add_servers``: ``--change`` new servers join, the balancer (every second) moves replicas
   onto them, for at most ``--balance-seconds``: until every server is within 5% of the mean
   replica count (or the time is up: the spread is reported).

    PYTHONPATH=python python benches/scale/coordinator.py --servers 100 --shards 10000
    PYTHONPATH=python python benches/scale/coordinator.py --servers 10 --shards 300 --json

Targets (issue 21): cold start of 10,000 shards <= 60 s; every shard of a dead server
re-elected <= 2 s; coordinator failover to steady <= 10 s; coordinator RSS <= 1 GiB;
cluster-status writes batched. A scaled-down run is in tests/test_scale_coordinator.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from pyxia.common.ports import free_port
from pyxia.proto import admin_pb2, metadata_pb2
from pyxia.security.cluster_auth import generate_secret_file

HERE = Path(__file__).resolve().parent
STEADY = metadata_pb2.SteadyState
CLK_TCK = os.sysconf("SC_CLK_TCK")
GET_STATUS = "/pyxia.admin.v1.PyxiaAdmin/GetClusterStatus"


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- the processes ---------------------------------------------------------------------------------


class Simulator:
    """The simulated data servers' process and its command pipe."""

    def __init__(self, secret: Path, log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sim_servers.py"), "--cluster-secret-file", str(secret)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def cmd(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"simulator: {op}: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class EtcdProcess:
    """A one-member etcd on loopback ports chosen at runtime (the etcd provider's store)."""

    def __init__(self, base: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install -y etcd-server)")
        self.endpoint = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self._log = (base / "etcd.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "--name=scale",
                f"--data-dir={base / 'etcd'}",
                f"--listen-client-urls={self.endpoint}",
                f"--advertise-client-urls={self.endpoint}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=scale={peer}",
                "--quota-backend-bytes=8589934592",  # every status write is a 3.5 MB revision
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=100",
                "--max-request-bytes=67108864",
                "--log-level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(base / 'etcd.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        wait_for(healthy, 30, "etcd to be healthy")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()


class CoordinatorProcess:
    """A ``pyxia coordinator`` process on the file provider, or on etcd (``etcd``: its
    endpoint; a standby waits there until the leader's lease ends)."""

    READY = re.compile(r"coordinator ready: internal=\S*?:(\d+)\s")

    def __init__(
        self,
        config: Path,
        metadata_dir: Path,
        secret: Path,
        log: Path,
        *,
        etcd: str | None = None,
        etcd_lease_ttl: int | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.log = log
        self._log = log.open("ab")
        self._offset = log.stat().st_size if log.exists() else 0
        metadata = (
            ["--metadata", "file", "--metadata-dir", str(metadata_dir)]
            if etcd is None
            else [
                "--metadata",
                "etcd",
                "--etcd-endpoints",
                etcd,
                *([] if etcd_lease_ttl is None else ["--etcd-lease-ttl", str(etcd_lease_ttl)]),
            ]
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxia",
                "coordinator",
                "-f",
                str(config),
                *metadata,
                "-i",
                "127.0.0.1:0",
                "-p",
                "",
                "-m",
                f"127.0.0.1:{self.metrics_port}",
                "--cluster-secret-file",
                str(secret),
                # Per shard, the election histograms are a 70 MB exposition at 10,000 shards:
                # every scrape would cost the coordinator most of a minute.
                "--no-per-shard-election-metrics",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.port = 0
        self._channel: grpc.Channel | None = None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the coordinator exited:\n{self.tail()}")
            m = self.READY.search(self.log.read_bytes()[self._offset :].decode(errors="replace"))
            if m:
                self.port = int(m.group(1))
            return bool(m)

        wait_for(ready, timeout, "the coordinator's ready line")
        self._channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_receive_message_length", 256 << 20)]
        )

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def leadership_losses(self, since: int = 0) -> int:
        """How many times this process logged losing its leadership (``leadership lost``:
        the coordinator closing on its provider's signal) in its log after byte ``since``."""
        if not self.log.exists():
            return 0
        return self.log.read_bytes()[max(since, self._offset) :].count(b"leadership lost (")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cluster_status(self) -> admin_pb2.GetClusterStatusResponse:
        assert self._channel is not None
        call = self._channel.unary_unary(
            GET_STATUS,
            request_serializer=admin_pb2.GetClusterStatusRequest.SerializeToString,
            response_deserializer=admin_pb2.GetClusterStatusResponse.FromString,
        )
        res: admin_pb2.GetClusterStatusResponse = call(
            admin_pb2.GetClusterStatusRequest(), timeout=30
        )
        return res

    def metrics(self) -> dict[str, float]:
        """The coordinator's unlabelled ``pyxia_coordinator_*`` samples (read line by line:
        prometheus_client's parser took minutes over 10,000 shards' series)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("pyxia_coordinator_") and "{" not in line:
                name, value = line.split()[:2]
                out[name] = float(value)
        return out

    def usage(self) -> tuple[float, int, int]:
        """CPU seconds (user + system), RSS and peak RSS (bytes) from /proc."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        rss = int(status["VmRSS"].split()[0]) * 1024
        hwm = int(status["VmHWM"].split()[0]) * 1024
        return cpu, rss, hwm

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self._channel is not None:
            self._channel.close()
        self._log.close()


# -- measurements ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    coordinator_cpu_s: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    status_writes: int = 0
    status_write_mib: float = 0.0
    shard_edits: int = 0
    pushes: int = 0
    push_mib: float = 0.0
    rpcs: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


WRITES = "pyxia_coordinator_status_writes_total"
WRITE_BYTES = "pyxia_coordinator_status_write_bytes_total"
EDITS = "pyxia_coordinator_status_shard_edits_total"


class Harness:
    def __init__(
        self,
        base: Path,
        servers: int,
        *,
        provider: str = "file",
        etcd_lease_ttl: int | None = None,
    ) -> None:
        self.base = base
        self.etcd = EtcdProcess(base) if provider == "etcd" else None
        self.etcd_lease_ttl = etcd_lease_ttl
        self.generation = 0
        self.secret = base / "cluster.secret"
        generate_secret_file(self.secret)
        self.config = base / "cluster.yaml"
        self.metadata = base / "metadata"
        self.sim = Simulator(self.secret, base / "sim.log")
        self.addresses: list[str] = self.sim.cmd("start", count=servers)["servers"]
        self.members = list(range(servers))  # indexes of the servers in the config
        self.coordinator: CoordinatorProcess | None = None
        self.standby: CoordinatorProcess | None = None
        self.phases: list[Phase] = []
        self.namespaces: list[dict[str, Any]] = []
        self.balance_interval = "30s"

    def close(self) -> None:
        if self.coordinator is not None:
            self.coordinator.kill()
        if self.standby is not None:
            self.standby.kill()
        self.sim.close()
        if self.etcd is not None:
            self.etcd.close()

    def write_config(self) -> None:
        cfg = {
            "namespaces": self.namespaces,
            "servers": [
                {"public": self.addresses[i], "internal": self.addresses[i]} for i in self.members
            ],
            "loadBalancer": {"scheduleInterval": self.balance_interval, "quarantineTime": "5m"},
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg))
        tmp.replace(self.config)

    def new_coordinator(self) -> CoordinatorProcess:
        """A coordinator process (each its own log: coordinator-N.log), not yet ready."""
        self.generation += 1
        return CoordinatorProcess(
            self.config,
            self.metadata,
            self.secret,
            self.base / f"coordinator-{self.generation}.log",
            etcd=None if self.etcd is None else self.etcd.endpoint,
            etcd_lease_ttl=self.etcd_lease_ttl,
        )

    def start_coordinator(self) -> CoordinatorProcess:
        self.coordinator = self.new_coordinator()
        self.coordinator.wait_ready()
        return self.coordinator

    @property
    def c(self) -> CoordinatorProcess:
        assert self.coordinator is not None
        return self.coordinator

    def status(self) -> metadata_pb2.ClusterStatus | None:
        try:
            res = self.c.cluster_status()
        except grpc.RpcError:
            return None
        return res.status if res.leader else None

    @staticmethod
    def shard_records(status: metadata_pb2.ClusterStatus) -> Iterator[metadata_pb2.ShardMetadata]:
        for ns in status.namespaces.values():
            yield from ns.shards.values()

    def all_steady(self, expect: int) -> metadata_pb2.ClusterStatus | None:
        st = self.status()
        if st is None:
            return None
        records = list(self.shard_records(st))
        if len(records) != expect:
            return None
        if all(m.status == STEADY and m.HasField("leader") for m in records):
            return st
        return None

    @contextmanager
    def phase(self, name: str, *, fresh: bool = False) -> Iterator[Phase]:
        """Measures what happens in the block; ``fresh``: the coordinator process started
        with it (its counters and CPU time from zero)."""
        p = Phase(name)
        before_sim = self.sim.cmd("stats")
        before_m = {} if fresh else self.c.metrics()
        before_cpu = 0.0 if fresh else self.c.usage()[0]
        c_before = self.coordinator
        log_before = 0 if fresh else self.c.log_size()
        started = time.monotonic()
        yield p
        p.wall_s = round(time.monotonic() - started, 3)
        after_sim = self.sim.cmd("stats")
        m = self.c.metrics()
        if self.coordinator is not c_before:  # a new process: its counters start at zero
            before_m, before_cpu, log_before = {}, 0.0, 0
        # Every leadership loss of the leading process (a lease that lapsed under load shows
        # here): the harness's scenarios never take leadership away on purpose but by a kill.
        p.extra["leadership_losses"] = self.c.leadership_losses(log_before)
        cpu, rss, hwm = self.c.usage()
        p.coordinator_cpu_s = round(cpu - before_cpu, 2)
        p.rss_mib = round(rss / 2**20, 1)
        p.peak_rss_mib = round(hwm / 2**20, 1)
        p.status_writes = int(m.get(WRITES, 0) - before_m.get(WRITES, 0))
        p.status_write_mib = round(
            (m.get(WRITE_BYTES, 0) - before_m.get(WRITE_BYTES, 0)) / 2**20, 1
        )
        p.shard_edits = int(m.get(EDITS, 0) - before_m.get(EDITS, 0))
        p.pushes = after_sim["pushes"] - before_sim["pushes"]
        p.push_mib = round((after_sim["push_bytes"] - before_sim["push_bytes"]) / 2**20, 1)
        p.extra["assignments_kib"] = round(after_sim["last_push_bytes"] / 1024, 1)
        p.rpcs = {
            k: v - before_sim["calls"].get(k, 0)
            for k, v in after_sim["calls"].items()
            if v - before_sim["calls"].get(k, 0)
        }
        self.phases.append(p)

    # -- scenarios ---------------------------------------------------------------------------------

    def cold_start(self, shards: int, namespaces: int, rf: int, timeout: float) -> None:
        per_ns = shards // namespaces
        self.namespaces = [
            {"name": f"ns{i}", "initialShardCount": per_ns, "replicationFactor": rf}
            for i in range(namespaces)
        ]
        self.total = per_ns * namespaces
        self.write_config()
        self.coordinator = self.new_coordinator()
        started = time.monotonic()
        self.c.wait_ready()
        with self.phase("cold_start", fresh=True) as p:
            wait_for(lambda: self.all_steady(self.total), timeout, "every shard steady", 0.2)
        p.wall_s = round(time.monotonic() - started, 3)  # from the process start
        p.extra["shards"] = self.total
        p.extra["servers"] = len(self.members)
        if self.etcd is None:
            p.extra["file_mib"] = round(
                (self.metadata / "cluster-status.json").stat().st_size / 2**20, 1
            )

    def idle(self, seconds: float) -> None:
        with self.phase("idle") as p:
            time.sleep(seconds)  # measuring a quiet cluster over a fixed span, not waiting
        p.extra["seconds"] = seconds

    def server_dies(self, timeout: float, victim_index: int = 0) -> None:
        """The ``victim_index``-th member dies, then comes back."""
        st = self.all_steady(self.total)
        assert st is not None
        victim = self.members[victim_index % len(self.members)]
        address = self.addresses[victim]
        led = {
            s: m.term
            for ns in st.namespaces.values()
            for s, m in ns.shards.items()
            if m.leader.internal == address
        }
        replicas = sum(
            1 for m in self.shard_records(st) for e in m.ensemble if e.internal == address
        )

        def reelected() -> bool:
            cur = self.status()
            if cur is None:
                return False
            for ns in cur.namespaces.values():
                for s, m in ns.shards.items():
                    if s in led and (
                        m.status != STEADY or m.term <= led[s] or m.leader.internal == address
                    ):
                        return False
            return True

        since = len(self.sim.cmd("outages")["outages"])
        with self.phase("server_dies") as p:
            killed = time.monotonic()
            self.sim.cmd("kill", servers=[victim])
            wait_for(reelected, timeout, "every shard of the dead server re-elected", 0.05)
            reelected_s = time.monotonic() - killed
            # Clients learn the new leaders from the servers' assignment maps: once the pushes
            # stopped, when did the last server get its last one (the simulator's clock is
            # CLOCK_MONOTONIC too)?
            pushes = [-1, self.sim.cmd("stats")["pushes"]]
            while pushes[-1] != pushes[-2]:
                time.sleep(0.3)  # a quiet spell, measured: no push for this long
                pushes.append(self.sim.cmd("stats")["pushes"])
            pushed_s = self.sim.cmd("stats")["last_push_at"] - killed
        p.wall_s = round(reelected_s, 3)  # the re-election (the quiet spell is not counted)
        p.extra.update(
            leaderships=len(led),
            replicas=replicas,
            pushed_s=round(pushed_s, 3),
            **self.outages_since(since),
        )
        with self.phase("server_back") as p:
            self.sim.cmd("restart", servers=[victim])

            def following() -> bool:
                s = self.sim.cmd("stats")
                # Following (or leading again: the balancer may move leaderships back).
                return bool(s["serving_per_server"][victim] >= replicas)

            wait_for(following, timeout, "the restarted server to follow again", 0.2)

    def outages_since(self, since: int) -> dict[str, Any]:
        """The simulator's shard outages from the ``since``-th on, summarised."""
        out = self.sim.cmd("outages", since=since)
        d = sorted(out["outages"])
        if not d:
            return {"outages": 0}
        return {
            "outages": len(d),
            "outage_median_s": round(statistics.median(d), 3),
            "outage_p99_s": round(d[min(len(d) - 1, int(0.99 * len(d)))], 3),
            "outage_max_s": round(d[-1], 3),
        }

    def rolling_restart(self, count: int, timeout: float) -> None:
        """Each of the first ``count`` members in turn: killed; restarted once every shard
        has a leader again (on another server); the next once its replicas follow again."""
        since = len(self.sim.cmd("outages")["outages"])
        steps: list[float] = []
        with self.phase("rolling_restart") as p:
            for victim in self.members[:count]:
                started = time.monotonic()
                replicas = self.sim.cmd("stats")["replicas_per_server"][victim]
                self.sim.cmd("kill", servers=[victim])
                wait_for(
                    lambda: self.sim.cmd("outages", since=1 << 62)["unavailable"] == 0,
                    timeout,
                    f"every shard of server {victim} re-elected",
                    0.02,
                )
                self.sim.cmd("restart", servers=[victim])

                def following(v: int = victim, n: int = replicas) -> bool:
                    return bool(self.sim.cmd("stats")["serving_per_server"][v] >= n)

                wait_for(following, timeout, f"server {victim} to follow again", 0.05)
                steps.append(time.monotonic() - started)
        p.extra.update(
            restarted=len(steps),
            step_median_s=round(statistics.median(steps), 3),
            step_max_s=round(max(steps), 3),
            steps_s=[round(x, 2) for x in steps],
            **self.outages_since(since),
        )

    def coordinator_failover(self, timeout: float) -> None:
        """kill -9 of the leading coordinator. On the file provider a new process then starts
        on the same metadata; on etcd a standby, started beforehand, takes over once the dead
        leader's lease ends."""
        st = self.status() or metadata_pb2.ClusterStatus()
        replicas = sum(len(m.ensemble) for m in self.shard_records(st))
        if self.etcd is not None:
            self.standby = self.new_coordinator()
            self.standby.wait_ready()
            if self.standby_status() is not None:
                raise RuntimeError("the standby leads while the leader is alive")
        with self.phase("coordinator_failover") as p:
            started = time.monotonic()
            self.c.kill()
            base_calls = self.sim.cmd("stats")["calls"].get("GetStatus", 0)
            if self.standby is None:
                self.start_coordinator()
            else:
                self.coordinator, self.standby = self.standby, None
                wait_for(lambda: self.status() is not None, timeout, "the standby to lead", 0.05)
            p.extra["leads_s"] = round(time.monotonic() - started, 3)
            wait_for(lambda: self.all_steady(self.total), timeout, "every shard steady", 0.05)
            p.extra["steady_s"] = round(time.monotonic() - started, 3)

            def verified() -> bool:
                calls = self.sim.cmd("stats")["calls"].get("GetStatus", 0)
                return bool(calls - base_calls >= replicas)

            wait_for(verified, timeout, "every replica verified", 0.2)
        p.extra["provider"] = "file" if self.etcd is None else "etcd"

    def standby_status(self) -> metadata_pb2.ClusterStatus | None:
        assert self.standby is not None
        try:
            res = self.standby.cluster_status()
        except grpc.RpcError:
            return None
        return res.status if res.leader else None

    def remove_servers(self, count: int, timeout: float) -> None:
        gone = self.members[-count:]
        gone_addr = {self.addresses[i] for i in gone}

        def moved() -> bool:
            """Every shard steady, led and replicated without the removed servers, their
            old replicas deleted (a replica moves by an election in a new term, then the
            removed member's copy is deleted)."""
            st = self.all_steady(self.total)
            if st is None:
                return False
            return not any(
                e.internal in gone_addr
                for m in self.shard_records(st)
                for e in [*m.ensemble, m.leader, *m.removed_nodes, *m.pending_delete_shard_nodes]
            )

        with self.phase("remove_servers") as p:
            self.members = self.members[:-count]
            self.write_config()
            wait_for(moved, timeout, "every replica moved off the removed servers", 0.2)
        p.extra["removed"] = count

    def add_servers(self, count: int, seconds: float) -> None:
        new = self.sim.cmd("start", count=count)["servers"]
        first = len(self.addresses)
        self.addresses.extend(new)
        self.balance_interval = "1s"

        def spread() -> tuple[int, int]:
            st = self.status() or metadata_pb2.ClusterStatus()
            load = {self.addresses[i]: 0 for i in self.members}
            for m in self.shard_records(st):
                for e in m.ensemble:
                    if e.internal in load:
                        load[e.internal] += 1
            return min(load.values()), max(load.values())

        replicas = sum(
            len(m.ensemble)
            for m in self.shard_records(self.status() or metadata_pb2.ClusterStatus())
        )
        # Balanced: every server within 5% of the mean (the balancer's moves are quarantined
        # for a while, so the last replica or two may wait).
        tolerance = max(2, int(0.05 * replicas / (len(self.members) + count)))
        with self.phase("add_servers") as p:
            started = time.monotonic()
            self.members.extend(range(first, first + count))
            self.write_config()
            balanced = False
            try:
                wait_for(
                    lambda: (lambda lo, hi: hi - lo <= tolerance)(*spread()),
                    seconds,
                    "balance",
                    0.5,
                )
                balanced = True
                p.extra["balanced_s"] = round(time.monotonic() - started, 2)
            except TimeoutError:
                pass
        lo, hi = spread()
        p.extra.update(added=count, balanced=balanced, replicas_min=lo, replicas_max=hi)


SCENARIOS = (
    "idle",
    "server_dies",
    "coordinator_failover",
    "rolling_restart",
    "remove_servers",
    "add_servers",
)


def run(
    base: Path,
    *,
    servers: int,
    shards: int,
    namespaces: int,
    rf: int,
    change: int,
    balance_seconds: float,
    timeout: float,
    idle_seconds: float = 0.0,
    rolling: int | None = None,
    dies_repeat: int = 1,
    provider: str = "file",
    etcd_lease_ttl: int | None = None,
    scenarios: frozenset[str] = frozenset(SCENARIOS),
) -> list[Phase]:
    """Runs the cold start, then the ``scenarios`` named (in the module docstring's order);
    ``rolling``: how many servers the rolling restart restarts (default: all); ``dies_repeat``:
    how many times the server-dies scenario runs (another server each time)."""
    h = Harness(base, servers, provider=provider, etcd_lease_ttl=etcd_lease_ttl)
    try:
        h.cold_start(shards, namespaces, rf, timeout)
        if idle_seconds > 0 and "idle" in scenarios:
            h.idle(idle_seconds)
        if "server_dies" in scenarios:
            for k in range(dies_repeat):
                h.server_dies(timeout, victim_index=k)
        if "coordinator_failover" in scenarios:
            h.coordinator_failover(timeout)
        if "rolling_restart" in scenarios:
            h.rolling_restart(servers if rolling is None else rolling, timeout)
        if "remove_servers" in scenarios:
            h.remove_servers(change, timeout)
        if "add_servers" in scenarios:
            h.add_servers(change, balance_seconds)
        return h.phases
    except BaseException:
        if h.coordinator is not None:
            sys.stderr.write(h.coordinator.tail() + "\n")
        raise
    finally:
        h.close()


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that the processes this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--change", type=int, default=10, help="servers removed, then added")
    ap.add_argument("--balance-seconds", type=float, default=300.0)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--rolling", type=int, default=None, help="servers the rolling restart restarts"
    )
    ap.add_argument("--provider", choices=("file", "etcd"), default="file")
    ap.add_argument(
        "--etcd-lease-ttl", type=int, default=None, help="default: the coordinator's (5 s)"
    )
    ap.add_argument("--dies-repeat", type=int, default=1, help="server_dies runs, in a row")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"after the cold start, a comma-separated subset of {','.join(SCENARIOS)}",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    scenarios = frozenset(x for x in args.scenarios.split(",") if x)
    if scenarios - set(SCENARIOS):
        ap.error(f"unknown scenarios: {', '.join(sorted(scenarios - set(SCENARIOS)))}")
    with tempfile.TemporaryDirectory(prefix="pyxia-scale-coord-") as d:
        phases = run(
            Path(d),
            servers=args.servers,
            shards=args.shards,
            namespaces=args.namespaces,
            rf=args.rf,
            change=args.change,
            balance_seconds=args.balance_seconds,
            timeout=args.timeout,
            idle_seconds=args.idle_seconds,
            rolling=args.rolling,
            dies_repeat=args.dies_repeat,
            provider=args.provider,
            etcd_lease_ttl=args.etcd_lease_ttl,
            scenarios=scenarios,
        )
    if args.json:
        print(json.dumps([asdict(p) for p in phases], indent=2))
        return
    for p in phases:
        print(
            f"{p.name:22s} {p.wall_s:8.2f} s  cpu {p.coordinator_cpu_s:7.2f} s  "
            f"rss {p.rss_mib:6.1f} MiB (peak {p.peak_rss_mib:6.1f})  "
            f"writes {p.status_writes:5d} ({p.status_write_mib:6.1f} MiB, "
            f"{p.shard_edits} edits)  pushes {p.pushes} ({p.push_mib} MiB)  {p.extra}"
        )


if __name__ == "__main__":
    main()
