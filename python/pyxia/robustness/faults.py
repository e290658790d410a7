"""Faults on a seeded random schedule.

:func:`schedule` turns a seed into a list of :class:`FaultSpec` (when, what, how long, and
random numbers for every choice), so a seed replays the same schedule. Choices that depend on
the cluster's state at that moment (the leader of a shard) are resolved at runtime from the
spec's random numbers. One fault at a time: it is injected, held for its duration, healed, and
the next one starts after a pause.

Kinds (``--faults`` selects a subset):

========================  ========================================================================
``kill``                  kill -9 a data server or the coordinator, restart it after the duration
``kill-leader``           kill -9 the leader of a shard, restart it after the duration
``pause``                 SIGSTOP a data server or the coordinator, SIGCONT after the duration
``partition``             isolate a node: its links (internal only, with clients, or only from the
                          coordinator) blackholed or refusing connections
``partition-leader``      isolate a shard leader from the other servers and the coordinator,
                          clients can still reach it
``delay``                 delay the traffic of a few links (20-300 ms)
``flaky``                 cut the connections of a few links at random
``disk-full``             fill the tmpfs holding one server's WALs, free it after the duration
``power-loss``            kill -9 a server, cut its WALs back to what was fsynced, restart
``cluster-power-loss``    the same on every server at once
``failpoint``             arm a named failpoint on a server (crash once, or sleep)
``wipe``                  kill -9 a server, delete its data, restart it empty (it gets snapshots;
                          a snapshot failpoint may crash it on the way)
``planned-move``          the coordinator moves 1-3 shard leaderships on purpose (``MoveLeader``):
                          the leader hands over gracefully, clients should see no error
``graceful-restart``      SIGTERM a server (mostly one that leads shards: it hands its leaderships
                          over first) or the coordinator, restart it after the duration; a
                          non-zero exit is an availability violation
``split``                 the coordinator splits a shard of the data namespace in two
                          (``SplitShard``); clients should see no error
``split-kill``            a split is started and the coordinator killed -9 at a random moment of
                          it, restarted after the duration: the new one resumes or aborts it
========================  ========================================================================

The planned kinds are DESIGN.md principle 8 under test: the checkers hold them to the same
rules, and the run's report counts the operations that failed or were indeterminate while only
planned faults were going on (from 5 s after the last unplanned fault ended).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyxia.robustness.cluster import COORDINATOR, Cluster, Node

log = logging.getLogger("pyxia.robustness")

# kind -> (weight, min duration s, max duration s)
KINDS: dict[str, tuple[float, float, float]] = {
    "kill": (10, 0.5, 6),
    "kill-leader": (10, 0.5, 6),
    "pause": (7, 1, 10),
    "partition": (12, 3, 20),
    "partition-leader": (7, 3, 20),
    "delay": (5, 3, 12),
    "flaky": (5, 3, 12),
    "disk-full": (5, 5, 15),
    "power-loss": (9, 0.5, 5),
    "cluster-power-loss": (3, 0.5, 3),
    "failpoint": (10, 2, 10),
    "wipe": (3, 1, 3),
    "planned-move": (8, 1, 6),
    "graceful-restart": (7, 0.5, 6),
    "split": (5, 1, 4),
    "split-kill": (4, 0.5, 4),
}

PLANNED = frozenset({"planned-move", "graceful-restart", "split"})
"""Faults that are planned changes (they should cost clients no error)."""

CRASH_FAILPOINTS = (
    "wal.after_append_before_sync",
    "leader.after_commit_before_apply",
    "follower.after_append_before_ack",
)
SLEEP_FAILPOINTS = (
    ("follower.after_append_before_ack", "sleep(300)"),
    ("wal.after_append_before_sync", "sleep(50)"),
    ("leader.after_commit_before_apply", "sleep(20)"),
)
MAX_SPLIT_SHARDS = 16
"""The split faults stop splitting a namespace once it has this many shards."""

SNAPSHOT_FAILPOINTS = (
    "snapshot.after_receive_before_install",
    "snapshot.after_install_before_reply",
)


@dataclass(frozen=True)
class FaultSpec:
    at: float
    """Seconds after the start of the workload."""
    kind: str
    duration: float
    r: tuple[float, ...]
    """Random numbers in [0, 1) for the fault's choices."""

    def pick(self, i: int, items: list[Any]) -> Any:
        return items[int(self.r[i] * len(items)) % len(items)]


def schedule(
    seed: int,
    seconds: float,
    kinds: list[str],
    *,
    warmup: float = 3.0,
    gap: tuple[float, float] = (1.0, 5.0),
    forced: list[tuple[float, str]] | None = None,
) -> list[FaultSpec]:
    """The faults of a run of ``seconds`` (seeded). ``forced`` adds faults at fixed fractions of
    the run (the positive control's power losses)."""
    rng = random.Random(f"pyxia-robustness-faults-{seed}")
    weights = [KINDS[k][0] for k in kinds]
    out: list[FaultSpec] = []
    t = warmup
    while kinds:
        kind = rng.choices(kinds, weights)[0]
        lo, hi = KINDS[kind][1], KINDS[kind][2]
        d = rng.uniform(lo, hi)
        if t + d > seconds:
            break
        out.append(FaultSpec(round(t, 3), kind, round(d, 3), tuple(rng.random() for _ in range(6))))
        t += d + rng.uniform(*gap)
    for frac, kind in forced or []:
        at = round(seconds * frac, 3)
        lo, hi = KINDS[kind][1], KINDS[kind][2]
        out.append(FaultSpec(at, kind, round(lo, 3), tuple(rng.random() for _ in range(6))))
    out.sort(key=lambda f: f.at)
    # forced faults replace whatever overlaps them
    kept: list[FaultSpec] = []
    for f in out:
        if kept and kept[-1].at + kept[-1].duration + 0.5 > f.at:
            if forced and any(abs(seconds * fr - f.at) < 1e-6 for fr, _ in forced):
                kept[-1] = f
            continue
        kept.append(f)
    return kept


@dataclass
class FaultRecord:
    spec: FaultSpec
    start: int
    end: int = 0
    description: str = ""
    notes: list[str] = field(default_factory=list)


class Injector:
    """Injects and heals faults on a cluster; restarts processes that die."""

    def __init__(self, cluster: Cluster, now: Callable[[], int], seed: int) -> None:
        self.cluster = cluster
        self.now = now
        self.records: list[FaultRecord] = []
        self.unexpected_exits: list[tuple[int, str, int]] = []
        self._rng = random.Random(f"pyxia-robustness-watchdog-{seed}")
        self._watchdog: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()

    # -- watchdog ---------------------------------------------------------------------------------

    def start_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for n in self.cluster.nodes:
                if n.desired == "running" and n.proc is not None and n.proc.poll() is not None:
                    rc = n.proc.returncode
                    expected = n.expect_crash and rc == -9
                    n.expect_crash = False
                    if expected:
                        cut = n.is_server and self._rng.random() < 0.5
                        note = f"{n.name} crashed at an armed failpoint; restarted"
                        if cut:
                            dropped = await asyncio.to_thread(n.cut_unsynced)
                            note += f" after a power loss (dropped {dropped or 'nothing'})"
                        if self.records:
                            self.records[-1].notes.append(note)
                    else:
                        self.unexpected_exits.append((self.now(), n.name, rc))
                        log.error("%s exited unexpectedly (rc=%s); restarting it", n.name, rc)
                    n.start()

    # -- helpers ----------------------------------------------------------------------------------

    async def _leader(self, spec: FaultSpec, i: int) -> tuple[Node, int | None]:
        """The leader of a shard chosen by ``spec.r[i]`` (a random server if unknown)."""
        leaders = await self.cluster.leaders()
        shards = sorted(s for s, (n, _) in leaders.items() if n is not None)
        if shards:
            shard = spec.pick(i, shards)
            node = leaders[shard][0]
            assert node is not None
            return node, shard
        return spec.pick(i, self.cluster.servers), None

    def _links(self, node: str, scope: str) -> list[str]:
        names = list(self.cluster.links)
        if scope == "coordinator":
            return [f"{COORDINATOR}->{node}"] if node != COORDINATOR else []
        out = []
        for link in names:
            src, dest = link.split("->")
            if src == "client" and scope != "all":
                continue
            if node in (src, dest):
                out.append(link)
        return out

    async def _restart(self, nodes: list[Node]) -> None:
        for n in nodes:
            if not n.alive:
                n.start()

    async def heal_all(self) -> None:
        """Undoes everything: links pass, disk freed, processes resumed or restarted."""
        await self.cluster.proxies.set(list(self.cluster.links), "pass")
        if self.cluster.tmpfs is not None:
            self.cluster.tmpfs.free()
        for n in self.cluster.nodes:
            if n.desired == "paused":
                n.resume()
            if n.is_server and n.alive:
                try:
                    await self.cluster.debug(n, "DisarmFailpoint", {"name": None})
                except Exception:
                    pass
            n.expect_crash = False
            if not n.alive:
                n.start()

    # -- faults -----------------------------------------------------------------------------------

    async def run(self, spec: FaultSpec) -> FaultRecord:
        rec = FaultRecord(spec, self.now())
        self.records.append(rec)
        try:
            await getattr(self, "_" + spec.kind.replace("-", "_"))(spec, rec)
        finally:
            rec.end = self.now()
        return rec

    async def _kill(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n: Node = spec.pick(0, self.cluster.nodes)
        rec.description = f"kill -9 {n.name}, restart after {spec.duration:.1f}s"
        n.kill()
        await asyncio.sleep(spec.duration)
        await self._restart([n])

    async def _kill_leader(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n, shard = await self._leader(spec, 0)
        rec.description = (
            f"kill -9 {n.name} (leader of shard {shard}), restart after {spec.duration:.1f}s"
        )
        n.kill()
        await asyncio.sleep(spec.duration)
        await self._restart([n])

    async def _pause(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n: Node = spec.pick(0, self.cluster.nodes)
        rec.description = f"SIGSTOP {n.name} for {spec.duration:.1f}s"
        n.pause()
        await asyncio.sleep(spec.duration)
        n.resume()

    async def _partition(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n: Node = spec.pick(0, self.cluster.nodes)
        scope = spec.pick(1, ["internal", "all", "coordinator"]) if n.is_server else "internal"
        mode = spec.pick(2, ["blackhole", "refuse"])
        links = self._links(n.name, scope)
        rec.description = (
            f"partition {n.name} ({scope} links, {mode}) for {spec.duration:.1f}s: "
            + ", ".join(links)
        )
        await self.cluster.proxies.set(links, mode)
        await asyncio.sleep(spec.duration)
        await self.cluster.proxies.set(links, "pass")

    async def _partition_leader(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n, shard = await self._leader(spec, 0)
        mode = spec.pick(1, ["blackhole", "refuse"])
        links = self._links(n.name, "internal")
        rec.description = (
            f"partition {n.name} (leader of shard {shard}) from the cluster, clients still "
            f"reach it ({mode}) for {spec.duration:.1f}s"
        )
        await self.cluster.proxies.set(links, mode)
        await asyncio.sleep(spec.duration)
        await self.cluster.proxies.set(links, "pass")

    def _some_links(self, spec: FaultSpec) -> list[str]:
        names = sorted(self.cluster.links)
        rng = random.Random(spec.r[0])
        return sorted(rng.sample(names, k=max(1, int(2 + spec.r[1] * 5))))

    async def _delay(self, spec: FaultSpec, rec: FaultRecord) -> None:
        links = self._some_links(spec)
        ms = 20 + spec.r[2] * 280
        rec.description = f"delay {ms:.0f} ms on {', '.join(links)} for {spec.duration:.1f}s"
        await self.cluster.proxies.set(links, "delay", ms)
        await asyncio.sleep(spec.duration)
        await self.cluster.proxies.set(links, "pass")

    async def _flaky(self, spec: FaultSpec, rec: FaultRecord) -> None:
        links = self._some_links(spec)
        ms = 200 + spec.r[2] * 1800
        rec.description = (
            f"cut connections (mean life {ms:.0f} ms) on {', '.join(links)} for "
            f"{spec.duration:.1f}s"
        )
        await self.cluster.proxies.set(links, "flaky", ms)
        await asyncio.sleep(spec.duration)
        await self.cluster.proxies.set(links, "pass")

    async def _disk_full(self, spec: FaultSpec, rec: FaultRecord) -> None:
        tmpfs = self.cluster.tmpfs
        node = self.cluster.disk_full_node
        if tmpfs is None or node is None:
            rec.description = "disk-full skipped (no tmpfs mount)"
            await asyncio.sleep(spec.duration)
            return
        taken = await asyncio.to_thread(tmpfs.fill)
        rec.description = (
            f"disk full on {node.name}'s WAL directory ({taken >> 20} MiB taken) for "
            f"{spec.duration:.1f}s"
        )
        await asyncio.sleep(spec.duration)
        tmpfs.free()

    async def _power_loss(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n: Node = spec.pick(0, self.cluster.servers)
        if spec.r[1] < 0.6:
            n, _ = await self._leader(spec, 0)  # a leader: it appends
            # slow the syncs down first, so the power goes out with appended, unsynced entries
            try:
                await self.cluster.debug(
                    n,
                    "ArmFailpoint",
                    {"name": "wal.after_append_before_sync", "action": "sleep(30)"},
                )
                await asyncio.sleep(0.3 + spec.r[2])
            except Exception:
                pass
        n.kill()
        dropped = await asyncio.to_thread(n.cut_unsynced)
        rec.description = (
            f"power loss on {n.name} (un-fsynced WAL tail dropped: {dropped or 'nothing'}), "
            f"restart after {spec.duration:.1f}s"
        )
        await asyncio.sleep(spec.duration)
        await self._restart([n])

    async def _cluster_power_loss(self, spec: FaultSpec, rec: FaultRecord) -> None:
        servers = self.cluster.servers
        for n in servers:
            n.kill()
        dropped = {n.name: await asyncio.to_thread(n.cut_unsynced) for n in servers}
        rec.description = (
            f"power loss on every server (un-fsynced WAL tails dropped: {dropped}), restart "
            f"after {spec.duration:.1f}s"
        )
        await asyncio.sleep(spec.duration)
        await self._restart(servers)

    async def _failpoint(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n, _ = await self._leader(spec, 0)
        if spec.r[1] < 0.5:
            name = spec.pick(2, list(CRASH_FAILPOINTS))
            if name == "follower.after_append_before_ack":
                n = spec.pick(3, [s for s in self.cluster.servers if s is not n])
            action = "1*crash"
            n.expect_crash = True
        else:
            name, action = spec.pick(2, list(SLEEP_FAILPOINTS))
        rec.description = f"failpoint {name}={action} on {n.name} for {spec.duration:.1f}s"
        try:
            await self.cluster.debug(n, "ArmFailpoint", {"name": name, "action": action})
        except Exception as e:
            n.expect_crash = False
            rec.notes.append(f"could not arm it: {e}")
            await asyncio.sleep(spec.duration)
            return
        await asyncio.sleep(spec.duration)
        if n.alive:
            try:
                await self.cluster.debug(n, "DisarmFailpoint", {"name": name})
            except Exception:
                pass
        # a crash after this point is still the failpoint's doing until the watchdog saw it
        await asyncio.sleep(0.3)
        n.expect_crash = False

    async def _wipe(self, spec: FaultSpec, rec: FaultRecord) -> None:
        n: Node = spec.pick(0, self.cluster.servers)
        n.kill()
        await asyncio.to_thread(n.wipe)
        fp = ""
        if spec.r[1] < 0.5:
            fp = spec.pick(2, list(SNAPSHOT_FAILPOINTS))
            n.next_start_env = {"PYXIA_FAILPOINTS": f"{fp}=1*crash"}
            n.expect_crash = True
        rec.description = (
            f"wipe {n.name} (all its data lost), restart after {spec.duration:.1f}s"
            + (f" with {fp}=1*crash armed" if fp else "")
        )
        await asyncio.sleep(spec.duration)
        await self._restart([n])
        # An empty replica holds nothing yet: give it time to catch up (snapshots) before the
        # next fault could make it count in an election.
        await self.wait_caught_up(n, 60.0, rec)
        n.expect_crash = False

    async def _planned_move(self, spec: FaultSpec, rec: FaultRecord) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + spec.duration
        moves = 1 + int(spec.r[0] * 3)
        done: list[str] = []
        for i in range(moves):
            shards = await self.cluster.led_shards()
            if not shards:
                rec.notes.append("no steady shard to move")
                break
            ns, shard, leader = shards[int(spec.r[1 + i] * len(shards)) % len(shards)]
            try:
                new_leader, term = await self.cluster.move_leader(ns, shard, timeout=30)
            except Exception as e:
                rec.notes.append(f"moving shard {shard} failed: {e}")
                continue
            node = self.cluster.by_internal(new_leader)
            done.append(
                f"shard {shard} {leader.name} -> {node.name if node else new_leader} (term {term})"
            )
        rec.description = f"planned leader moves over {spec.duration:.1f}s: " + (
            ", ".join(done) or "none"
        )
        left = end - loop.time()
        if left > 0:
            await asyncio.sleep(left)

    async def _split_target(self, spec: FaultSpec, rec: FaultRecord) -> tuple[str, int] | None:
        """A steady shard of a namespace with room for one more (never the TSO's)."""
        shards = [(ns, shard) for ns, shard, _ in await self.cluster.led_shards() if ns != "tso"]
        counts: dict[str, int] = {}
        for ns, _ in shards:
            counts[ns] = counts.get(ns, 0) + 1
        shards = [(ns, s) for ns, s in shards if counts[ns] < MAX_SPLIT_SHARDS]
        if not shards:
            rec.notes.append("no steady shard to split")
            return None
        return shards[int(spec.r[0] * len(shards)) % len(shards)]

    async def _split(self, spec: FaultSpec, rec: FaultRecord) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + spec.duration
        target = await self._split_target(spec, rec)
        rec.description = "split: no shard"
        if target is not None:
            ns, shard = target
            try:
                res = await self.cluster.split_shard(ns, shard, wait=True, timeout=120)
                phases = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(res.phase_ms.items()))
                rec.description = (
                    f"split shard {shard} into {res.left_shard} and {res.right_shard}: "
                    f"{res.outcome} ({phases}; writes refused {res.frozen_ms:.0f} ms)"
                )
            except Exception as e:
                rec.description = f"split shard {shard}"
                rec.notes.append(f"the split failed: {e}")
        left = end - loop.time()
        if left > 0:
            await asyncio.sleep(left)

    async def _split_kill(self, spec: FaultSpec, rec: FaultRecord) -> None:
        target = await self._split_target(spec, rec)
        coord = self.cluster.coordinator
        assert coord is not None
        if target is None:
            rec.description = "split + coordinator kill: no shard"
            await asyncio.sleep(spec.duration)
            return
        ns, shard = target
        delay = 0.02 + spec.r[1] * 1.5
        try:
            res = await self.cluster.split_shard(ns, shard, wait=False, timeout=30)
            started = f"into {res.left_shard} and {res.right_shard}"
        except Exception as e:
            started = "(not started)"
            rec.notes.append(f"the split was refused: {e}")
        await asyncio.sleep(delay)
        coord.kill()
        rec.description = (
            f"split shard {shard} {started}, coordinator killed -9 {delay * 1000:.0f} ms in, "
            f"restarted after {spec.duration:.1f}s"
        )
        await asyncio.sleep(spec.duration)
        await self._restart([coord])
        # The new coordinator resumes (or aborts) the split: let it end before the next fault.
        deadline = asyncio.get_running_loop().time() + 120
        while asyncio.get_running_loop().time() < deadline:
            st = await self.cluster.status()
            if (
                st is not None
                and st.leader
                and not any(m.HasField("split") for m in self.cluster.shards_of(st).values())
            ):
                return
            await asyncio.sleep(0.2)
        rec.notes.append("the split had not ended 120 s after the coordinator came back")

    async def _graceful_restart(self, spec: FaultSpec, rec: FaultRecord) -> None:
        # A process still starting has no handler for SIGTERM yet (it dies by the signal, as
        # any process would): the fault is about a server that serves.
        if not await self.cluster.wait_steady(30):
            rec.notes.append("the cluster was not steady within 30s; SIGTERM anyway")
        shard: int | None = None
        if spec.r[1] < 0.6:
            n, shard = await self._leader(spec, 0)
        elif spec.r[1] < 0.9 or self.cluster.coordinator is None:
            n = spec.pick(0, self.cluster.servers)
        else:
            n = self.cluster.coordinator
        what = f"{n.name}" + (f" (leader of shard {shard})" if shard is not None else "")
        t0 = time.monotonic()
        rc = await asyncio.to_thread(n.terminate, 60.0)
        took = time.monotonic() - t0
        if rc is None:
            rec.notes.append(f"{n.name} did not exit within 60s of SIGTERM: killed")
        elif rc != 0:
            self.unexpected_exits.append((self.now(), n.name, rc))
        rec.description = (
            f"SIGTERM {what}: exited ({rc}) after {took:.1f}s, restart after {spec.duration:.1f}s"
        )
        await asyncio.sleep(spec.duration)
        await self._restart([n])

    async def wait_caught_up(self, n: Node, timeout: float, rec: FaultRecord) -> None:
        from pyxia.proto import replication_pb2

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            leaders = await self.cluster.leaders()
            st = await self.cluster.status()
            iid = st.status.instance_id if st is not None else ""
            if leaders and all(node is not None for node, _ in leaders.values()):
                ok = True
                for shard, (leader, _) in leaders.items():
                    assert leader is not None
                    if leader is n:
                        continue
                    try:
                        mine = await self.cluster.replica_status(n, shard, iid)
                        theirs = await self.cluster.replica_status(leader, shard, iid)
                    except Exception:
                        ok = False
                        break
                    if (
                        mine.status != replication_pb2.FOLLOWER
                        or mine.commit_offset < theirs.commit_offset - 50
                    ):
                        ok = False
                        break
                if ok:
                    rec.notes.append(f"{n.name} caught up")
                    return
            await asyncio.sleep(0.5)
        rec.notes.append(f"{n.name} did not catch up within {timeout:.0f}s")
