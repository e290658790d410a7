"""Leadership churn on a real cluster: three ``pyxia server`` processes and ``pyxia
coordinator`` (RF=3 TSO namespace), 16 concurrent :class:`AsyncTsoClient` callers plus one
client stuck on each server, and a nemesis that every ~2 s alternately SIGSTOPs the TSO
shard's leader (once its window reaches 1.5 s ahead) until another leader serves, then
SIGCONTs it — a deposed leader waking up with timestamps left in its window, the case the
lease is for — or kill -9s it (restarted once service resumed). The next fault waits until
the last victim follows again, so a quorum always remains.

The checker (:mod:`pyxia.tso.checker`) sees every answer with its send and receipt times on
one clock: no timestamp granted twice, and every call sent after another's answer arrived
gets larger timestamps, across clients, leaders and failovers. Service must resume after
every fault. The benchmark (benches/test_bench_tso.py) runs the same for a minute.

``test_churn_with_tso_ports`` runs it with a client stuck on each server's TSO port too
(``--tso-addr``: GetTs answered natively, where only the lease — not the controller's state —
stops a woken leader's grants).

Note: on SIGCONT the coordinator's NewTerm, queued while the leader was stopped, usually
reaches it within milliseconds, so these runs rarely give a woken leader the chance to answer
from its old window at all; ``test_tso_service`` covers a deposed leader that is never told,
with a control run without the lease that the checker catches.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import pyxia
from proc_cluster import Member, ProcCluster
from pyxia.common.ports import free_port
from pyxia.proto import replication_pb2, tso_pb2
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.checker import Record, Violation, check
from pyxia.tso.client import GET_TS, AsyncTsoClient
from pyxia.tso.driver import HIGH_WATER_KEY
from servers import wait_for

COORDINATOR_LIVENESS = (
    "--liveness-probe-interval",
    "0.1",
    "--liveness-probe-timeout",
    "0.3",
    "--liveness-failures",
    "2",
)
PAUSE_WINDOW_MS = 1500
"""A leader is paused once its window reaches this far past the clock: it wakes up (after
another leader was elected, ~0.5-1 s later) with timestamps still left in its window."""


@dataclass
class Fault:
    kind: str  # "kill" | "pause"
    victim: str  # its public address
    at: float
    resumed_at: float | None = None  # first grant received from another node afterwards
    last_before: float | None = None  # the last grant received from the victim before
    elected_at: float | None = None  # the coordinator reported a new leader


@dataclass
class ChurnReport:
    records: list[Record]
    sources: list[str]
    faults: list[Fault]
    violations: list[Violation]
    fallbacks: int
    seconds: float
    errors: list[str] = field(default_factory=list)
    tso_ports: list[str] = field(default_factory=list)

    @property
    def gaps_ms(self) -> list[float]:
        """Per kill: last grant from the old leader → first grant from the new one."""
        return [
            (f.resumed_at - f.last_before) * 1000
            for f in self.faults
            if f.kind == "kill" and f.resumed_at is not None and f.last_before is not None
        ]

    @property
    def elections_ms(self) -> list[float]:
        return [
            (f.elected_at - f.at) * 1000
            for f in self.faults
            if f.kind == "kill" and f.elected_at is not None
        ]

    def summary(self) -> str:
        g = self.gaps_ms
        e = self.elections_ms
        return (
            f"{len(self.records)} grants in {self.seconds:.0f}s "
            f"({len(self.records) / self.seconds:.0f}/s), "
            f"{sum(f.kind == 'kill' for f in self.faults)} kills, "
            f"{sum(f.kind == 'pause' for f in self.faults)} pauses, "
            f"violations {len(self.violations)}, fallbacks {self.fallbacks}"
            + (
                f", failover gap median {statistics.median(g):.0f} ms max {max(g):.0f} ms"
                if g
                else ""
            )
            + (f", election median {statistics.median(e):.0f} ms" if e else "")
        )


def start_cluster(base: Path, attempts: int = 3, *, tso_ports: bool = False) -> ProcCluster:
    """The cluster on fresh loopback ports (again on new ones if a port was taken meanwhile);
    with ``tso_ports`` every server also serves a TSO port (``--tso-addr``, kept across
    restarts; see :func:`tso_port_of`)."""
    for attempt in range(attempts):
        root = base / f"try{attempt}"
        c = ProcCluster(
            root,
            [Member(root / f"s{i}") for i in range(3)],
            [
                {
                    "name": DEFAULT_NAMESPACE,
                    "initialShardCount": 1,
                    "replicationFactor": 3,
                    "tso": True,
                }
            ],
            extra_coordinator_args=COORDINATOR_LIVENESS,
        )
        root.mkdir(parents=True)
        try:
            c.write_config()
            if tso_ports:
                for m in c.members:
                    m.security = (*m.security, "--tso-addr", f"127.0.0.1:{free_port()}")
            with ThreadPoolExecutor(len(c.members)) as pool:
                list(pool.map(lambda m: m.start(), c.members))
            c.start_coordinator()
            c.wait_steady()
            return c
        except RuntimeError as e:
            c.close()
            if "already in use" not in str(e) or attempt == attempts - 1:
                raise
        except BaseException:
            c.close()
            raise
    raise AssertionError("unreachable")


class Load:
    """``clients`` callers, each its own AsyncTsoClient, on a loop in a background thread;
    answers are appended in the order they are received."""

    def __init__(
        self, endpoints: list[str], clients: int, count: int = 1, pinned: list[str] | None = None
    ) -> None:
        self.endpoints = endpoints
        self.pinned = endpoints + (pinned or [])
        self.clients = clients
        self.count = count
        self.samples: list[tuple[Record, str]] = []  # (answer, the endpoint that granted it)
        self.errors: list[str] = []
        self.fallbacks = 0
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tso-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the load did not stop"

    def last_from(self, source: str, before: float) -> float | None:
        """When the last answer from ``source`` received before ``before`` arrived."""
        for r, s in reversed(self.samples[:]):
            if s == source and r.received_at <= before:
                return r.received_at
        return None

    def first_not_from(self, source: str, after: float) -> float | None:
        """When the first answer from another endpoint arrived after ``after``."""
        first = None
        for r, s in reversed(self.samples[:]):
            if r.received_at < after:
                break
            if s != source:
                first = r.received_at
        return first

    def received_since(self, t: float) -> int:
        n = 0
        for r, _ in reversed(self.samples[:]):
            if r.received_at < t:
                break
            n += 1
        return n

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        await asyncio.gather(
            *(self._client(n) for n in range(self.clients)),
            *(self._pinned(self.clients + i, ep) for i, ep in enumerate(self.pinned)),
        )

    async def _pinned(self, n: int, endpoint: str) -> None:
        """A client stuck on one server (stale leader knowledge): it keeps asking a deposed
        leader, which is what a woken-up paused leader must not answer from its old window."""
        req = tso_pb2.GetTsRequest(count=1).SerializeToString()
        async with grpc.aio.insecure_channel(endpoint) as ch:
            call = ch.unary_unary(GET_TS)
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    raw = await call(req, timeout=5)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.005)
                    continue
                t1 = time.monotonic()
                r = tso_pb2.GetTsResponse.FromString(raw)
                ts = (r.physical_ms << 18) | r.logical_start
                self.samples.append((Record(n, t0, t1, ts, ts), endpoint))

    async def _client(self, n: int) -> None:
        k = n % len(self.endpoints)
        eps = self.endpoints[k:] + self.endpoints[:k]
        async with AsyncTsoClient(eps, timeout_s=30, attempt_timeout_s=0.5) as tso:
            try:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    try:
                        if self.count == 1:
                            first = last = await tso.get_ts()
                        else:
                            r = await tso.get_ts_batch(self.count)
                            first, last = r[0], r[-1]
                    except Exception as e:
                        self.errors.append(f"client {n}: {type(e).__name__}: {e}")
                        continue
                    t1 = time.monotonic()
                    assert tso.last_grant is not None
                    self.samples.append((Record(n, t0, t1, first, last), tso.last_grant.endpoint))
            finally:
                self.fallbacks += tso.fallbacks


def tso_port_of(member: Member) -> str:
    """The TSO port a member of ``start_cluster(..., tso_ports=True)`` serves."""
    return member.security[member.security.index("--tso-addr") + 1]


def window_ahead(kv: pyxia.Client, ms: int, timeout: float = 5.0) -> None:
    """Waits (up to ``timeout``) until the TSO leader's persisted high-water is at least
    ``ms`` past the clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            high_water = int(kv.get(HIGH_WATER_KEY).value)
        except Exception:
            high_water = 0
        if high_water - time.time() * 1000 >= ms:
            return
        time.sleep(0.02)


def follows(cluster: ProcCluster, member: Member) -> bool:
    leader, term = cluster.shard_leader(0)
    if leader is None or leader is member:
        return False
    try:
        st = cluster.replica_status(member, 0)
    except grpc.RpcError:
        return False
    return st.status == replication_pb2.FOLLOWER and st.term == term


def run_churn(
    base: Path,
    seconds: float,
    *,
    clients: int = 16,
    period: float = 2.0,
    count: int = 1,
    tso_ports: bool = False,
) -> ChurnReport:
    """Faults every ``period`` seconds (or as soon as the previous one healed) for
    ``seconds``, alternately: SIGSTOP of the TSO leader until another leader serves, then
    SIGCONT; kill -9 of it (restarted in the background once service resumed). At most one
    server is down at a time, so a quorum always remains. With ``tso_ports``, one more
    client is stuck on each server's TSO port (native grants)."""
    cluster = start_cluster(base, tso_ports=tso_ports)
    faults: list[Fault] = []
    pinned = [tso_port_of(m) for m in cluster.members] if tso_ports else []
    load = Load(cluster.service_addresses, clients, count, pinned)
    stopped: Member | None = None
    healing: Member | None = None
    kv = pyxia.Client(cluster.service_addresses, namespace=DEFAULT_NAMESPACE)
    try:
        load.start()
        wait_for(lambda: len(load.samples) >= 100, timeout=60, what="grants before the churn")
        t_start = time.monotonic()
        while time.monotonic() - t_start < seconds:
            if healing is not None:
                # The last victim follows again: the next fault leaves a quorum.
                wait_for(
                    lambda m=healing: follows(cluster, m),
                    timeout=60,
                    interval=0.02,
                    what=f"{healing.public} to follow again",
                )
                healing = None
            victim, term = cluster.shard_leader(0)
            if victim is None or victim.proc is None:
                wait_for(lambda: cluster.shard_leader(0)[0] is not None, timeout=60)
                continue
            kind = "pause" if len(faults) % 2 == 0 else "kill"
            if kind == "pause":
                window_ahead(kv, PAUSE_WINDOW_MS)
            fault = Fault(kind, victim.public, time.monotonic())
            if kind == "kill":
                victim.kill()
            else:
                os.kill(victim.proc.pid, signal.SIGSTOP)
                stopped = victim
            fault.at = time.monotonic()
            faults.append(fault)

            def elected(term: int = term, victim: Member = victim) -> bool:
                leader, new_term = cluster.shard_leader(0)
                return leader is not None and leader is not victim and new_term > term

            wait_for(elected, timeout=30, interval=0.005, what="a new leader")
            fault.elected_at = time.monotonic()
            wait_for(
                lambda f=fault: load.first_not_from(f.victim, f.at) is not None,
                timeout=30,
                interval=0.005,
                what=f"service to resume after the {kind} of {victim.public}",
            )
            fault.resumed_at = load.first_not_from(fault.victim, fault.at)
            fault.last_before = load.last_from(fault.victim, fault.at)
            if kind == "pause":
                # It wakes up believing it still leads, with its old window.
                os.kill(victim.proc.pid, signal.SIGCONT)
                stopped = None
            else:
                victim.start()
            healing = victim
            time.sleep(max(0.0, fault.at + period - time.monotonic()))  # the fault cadence
        seconds_run = time.monotonic() - t_start
        after = time.monotonic()
        wait_for(lambda: load.received_since(after) >= 50, timeout=30, what="service at the end")
    finally:
        if stopped is not None and stopped.proc is not None and stopped.alive:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        load.stop()
        kv.close()
        cluster.close()
    records = [r for r, _ in load.samples]
    return ChurnReport(
        records,
        [s for _, s in load.samples],
        faults,
        check(records),
        load.fallbacks,
        seconds_run,
        load.errors,
        pinned,
    )


def test_churn_kill_and_pause_the_tso_leader(tmp_path: Path) -> None:
    report = run_churn(tmp_path, seconds=12.0)
    print("\n" + report.summary())
    assert report.violations == [], report.violations[:5]
    assert report.fallbacks == 0
    assert {f.kind for f in report.faults} == {"kill", "pause"}
    assert all(f.resumed_at is not None for f in report.faults)
    assert len(report.records) > 1000
    assert not report.errors, report.errors[:5]


def test_churn_with_tso_ports(tmp_path: Path) -> None:
    """The same churn with a client stuck on each server's TSO port: a paused leader's native
    grants stop with its lease (the monotonic clock runs on while it is stopped), a killed
    one's port comes back with it, and the history stays linearizable."""
    report = run_churn(tmp_path, seconds=10.0, clients=8, tso_ports=True)
    print("\n" + report.summary())
    assert report.violations == [], report.violations[:5]
    assert {f.kind for f in report.faults} == {"kill", "pause"}
    assert all(f.resumed_at is not None for f in report.faults)
    native = [s for s in report.sources if s in report.tso_ports]
    assert len(native) > 100, "too few grants from the TSO ports"
    assert not report.errors, report.errors[:5]
