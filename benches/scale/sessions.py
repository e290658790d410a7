"""Sessions and notifications at scale on a real 3-server cluster (issue 21 §3).

Three ``pyxia server`` processes and a ``pyxia coordinator`` (RF=3, ``--shards`` shards) are
started on this machine; the bench drives them over the raw gRPC API (many sessions per
connection, as ``oxia perf`` does). Measured:

* sessions: time to create N sessions (CreateSession, ``--concurrency`` in flight) and to give
  each an ephemeral key (Writes of 1,000 session puts); server RSS per session (the servers'
  RSS after, minus before, over N); keep-alive CPU: the servers' CPU time (utime+stime from
  /proc) over a burst of ``--keepalives`` KeepAlive calls, per call, and what that makes per
  session per second at Oxia's default heartbeat (every session timeout / 10 = 1.5 s);
* expiry: ``--expire`` of the sessions (created with ``--expire-timeout``, the others with
  the 5-minute maximum so they need no heartbeat meanwhile) get one last heartbeat each, then
  none: how long that round of heartbeats took (their deadlines are spread over it), the time
  from the first heartbeat's deadline to the first key gone, from the last one's to every one
  of their ephemeral keys gone, and how many log entries that took (the shards' head offsets
  before and after; nothing else writes meanwhile);
* notifications: ``--subscribers`` GetNotifications streams on shard 0, ``--slow`` of which
  never read (on their own connection, without BDP window growth), while ``--notify-writes``
  writes flow: the leader's RSS sampled throughout, what every fast subscriber received,
  the slow ones cut off (``--notifications-send-timeout``) and resumed from their last offset
  without a gap.

    PYTHONPATH=python python benches/scale/sessions.py --sessions 100000 --expire 10000
    PYTHONPATH=python python benches/scale/sessions.py --sessions 20000 --expire 5000 --json

Targets (issue 21 §3): 100,000 sessions with ephemeral keys on 3 servers, expiry of 10,000 at
once in batched log entries, bounded memory per session; 1,000 subscribers on one shard with
slow ones cut off and resumed. Scaled-down runs are in tests/test_scale_sessions_bench.py (this
harness) and tests/test_scale_sessions.py (each scenario, in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_server import process_stats  # noqa: E402

from proc_cluster import Member, ProcCluster  # noqa: E402
from pyxia.proto import client_pb2  # noqa: E402

OXIA_HEARTBEAT_S = 1.5
"""Oxia's client heartbeat at its default 15 s session timeout (timeout / 10)."""
MAX_TIMEOUT_MS = 5 * 60_000
PUTS_PER_WRITE = 1_000
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class SessionFigures:
    sessions: int
    create_s: float
    create_per_s: float
    ephemeral_put_s: float
    rss_before_mib: float
    rss_after_mib: float
    rss_per_session_bytes: float
    keepalives: int
    keepalive_wall_s: float
    keepalive_server_cpu_us: float
    keepalive_cpu_per_session_per_s_us: float
    sessions_per_core_at_oxia_heartbeat: float
    expire: int
    expire_timeout_s: float
    heartbeat_round_s: float
    expiry_first_s_after_timeout: float
    expiry_s_after_timeout: float
    expiry_log_entries: int
    loadavg: list[float] = field(default_factory=list)


@dataclass
class NotificationFigures:
    subscribers: int
    slow: int
    writes: int
    leader_rss_start_mib: float
    leader_rss_max_mib: float
    leader_rss_end_mib: float
    fast_complete: int
    slow_cut_off: int
    slow_resumed_without_gap: int
    wall_s: float
    loadavg: list[float] = field(default_factory=list)


def _stub(channel: grpc.aio.Channel, method: str, resp: Any, stream: bool = False) -> Any:
    make = channel.unary_stream if stream else channel.unary_unary
    return make(
        f"/io.oxia.proto.v1.OxiaClient/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp.FromString,
    )


def leaders(c: ProcCluster, shards: int) -> dict[int, Member]:
    out: dict[int, Member] = {}
    for s in range(shards):
        m, _ = c.shard_leader(s)
        assert m is not None, f"shard {s} has no leader"
        out[s] = m
    return out


def head_offsets(c: ProcCluster, lead: dict[int, Member]) -> dict[int, int]:
    return {s: c.replica_status(m, s).head_offset for s, m in lead.items()}


def rss_mib(c: ProcCluster) -> float:
    return sum(process_stats(m.proc.pid).rss_bytes for m in c.members if m.proc) / 2**20


def server_cpu(c: ProcCluster) -> float:
    return sum(cpu_seconds(m.proc.pid) for m in c.members if m.proc)


async def _bounded(calls: list[Callable[[], Any]], concurrency: int) -> list[Any]:
    """Runs the calls (functions starting an RPC: a gRPC call starts when it is made) with
    at most ``concurrency`` in flight; their results in order."""
    out: list[Any] = [None] * len(calls)
    it = iter(enumerate(calls))

    async def worker() -> None:
        for i, call in it:
            out[i] = await call()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))
    return out


async def run_sessions(c: ProcCluster, args: argparse.Namespace) -> SessionFigures:
    lead = leaders(c, args.shards)
    channels = {s: grpc.aio.insecure_channel(m.public) for s, m in lead.items()}
    try:
        create = {
            s: _stub(ch, "CreateSession", client_pb2.CreateSessionResponse)
            for s, ch in channels.items()
        }
        write = {s: _stub(ch, "Write", client_pb2.WriteResponse) for s, ch in channels.items()}
        keep = {
            s: _stub(ch, "KeepAlive", client_pb2.KeepAliveResponse) for s, ch in channels.items()
        }
        rss0 = rss_mib(c)

        def heartbeat(s: int, sid: int) -> client_pb2.SessionHeartbeat:
            return client_pb2.SessionHeartbeat(shard=s, session_id=sid)

        def session_req(i: int, timeout_ms: int) -> tuple[int, Callable[[], Any]]:
            s = i % args.shards
            req = client_pb2.CreateSessionRequest(
                shard=s, session_timeout_ms=timeout_ms, client_identity=f"bench-{i}"
            )
            return s, functools.partial(create[s], req, timeout=120)

        async def open_sessions(first: int, end: int, timeout_ms: int) -> list[tuple[int, int]]:
            """Sessions ``first``..``end`` as (shard, session id), with an ephemeral key each
            (``/eph/<i>``)."""
            specs = [session_req(i, timeout_ms) for i in range(first, end)]
            res = await _bounded([co for _, co in specs], args.concurrency)
            return [(s, r.session_id) for (s, _), r in zip(specs, res, strict=True)]

        async def put_ephemerals(first: int, opened: list[tuple[int, int]]) -> None:
            by_shard: dict[int, list[tuple[int, int]]] = {}
            for i, (s, sid) in enumerate(opened, start=first):
                by_shard.setdefault(s, []).append((i, sid))
            writes = []
            for s, items in by_shard.items():
                for j in range(0, len(items), PUTS_PER_WRITE):
                    puts = [
                        client_pb2.PutRequest(key=f"/eph/{i}", value=b"e", session_id=sid)
                        for i, sid in items[j : j + PUTS_PER_WRITE]
                    ]
                    req = client_pb2.WriteRequest(shard=s, puts=puts)
                    writes.append(functools.partial(write[s], req, timeout=120))
            for r in await _bounded(writes, 8):
                assert all(p.status == client_pb2.OK for p in r.puts)

        # The long-lived sessions (the 5-minute maximum: no heartbeat needed meanwhile).
        kept_n = args.sessions - args.expire
        t0 = time.perf_counter()
        kept = await open_sessions(0, kept_n, MAX_TIMEOUT_MS)
        create_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await put_ephemerals(0, kept)
        put_s = time.perf_counter() - t0
        print(f"created {len(kept)} sessions in {create_s:.1f}s", file=sys.stderr)

        # Keep-alive cost: a burst over the long-lived sessions, the servers' CPU around it.
        burst = [kept[i % max(kept_n, 1)] for i in range(args.keepalives)]
        cpu0, t0 = server_cpu(c), time.perf_counter()
        await _bounded(
            [functools.partial(keep[s], heartbeat(s, sid), timeout=120) for s, sid in burst],
            args.concurrency,
        )
        ka_wall = time.perf_counter() - t0
        ka_cpu = server_cpu(c) - cpu0
        per_call_us = ka_cpu / max(args.keepalives, 1) * 1e6

        # The sessions that will expire: opened, given their keys, one heartbeat each, then none.
        t0 = time.perf_counter()
        doomed = await open_sessions(kept_n, args.sessions, int(args.expire_timeout * 1000))
        create_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        await put_ephemerals(kept_n, doomed)
        put_s += time.perf_counter() - t0
        sessions = kept + doomed
        rss1 = rss_mib(c)
        before = head_offsets(c, lead)
        first_beat = time.perf_counter()
        await _bounded(
            [functools.partial(keep[s], heartbeat(s, sid), timeout=120) for s, sid in doomed],
            args.concurrency,
        )
        last_beat = time.perf_counter()
        read = {
            s: _stub(ch, "Read", client_pb2.ReadResponse, stream=True) for s, ch in channels.items()
        }
        doomed_keys: dict[int, list[str]] = {}
        for i, (s, _) in enumerate(doomed, start=kept_n):
            doomed_keys.setdefault(s, []).append(f"/eph/{i}")

        async def remaining() -> int:
            n = 0
            for s, ks in doomed_keys.items():
                for j in range(0, len(ks), 5_000):
                    req = client_pb2.ReadRequest(
                        shard=s, gets=[client_pb2.GetRequest(key=k) for k in ks[j : j + 5_000]]
                    )
                    async for r in read[s](req, timeout=120):
                        n += sum(1 for g in r.gets if g.status == client_pb2.OK)
            return n

        # Nothing can expire before the first of those heartbeats' deadlines.
        await asyncio.sleep(max(first_beat + args.expire_timeout - 0.5 - time.perf_counter(), 0))
        deadline = time.perf_counter() + args.expire_timeout + 120
        first_gone: float | None = None
        while left := await remaining():
            if first_gone is None and left < len(doomed):
                first_gone = time.perf_counter()
            if time.perf_counter() > deadline:
                raise RuntimeError("the expired sessions' ephemeral keys were not deleted")
            await asyncio.sleep(0.05)
        all_gone = time.perf_counter()
        first_gone = all_gone if first_gone is None else first_gone
        expiry_s = all_gone - last_beat - args.expire_timeout
        after = head_offsets(c, lead)
        entries = sum(after[s] - before[s] for s in lead)
        per_session_s = per_call_us / OXIA_HEARTBEAT_S
        return SessionFigures(
            sessions=len(sessions),
            create_s=round(create_s, 2),
            create_per_s=round(len(sessions) / create_s, 1),
            ephemeral_put_s=round(put_s, 2),
            rss_before_mib=round(rss0, 1),
            rss_after_mib=round(rss1, 1),
            rss_per_session_bytes=round((rss1 - rss0) * 2**20 / len(sessions), 1),
            keepalives=args.keepalives,
            keepalive_wall_s=round(ka_wall, 2),
            keepalive_server_cpu_us=round(per_call_us, 1),
            keepalive_cpu_per_session_per_s_us=round(per_session_s, 1),
            sessions_per_core_at_oxia_heartbeat=round(1e6 / per_session_s) if per_session_s else 0,
            expire=len(doomed),
            expire_timeout_s=args.expire_timeout,
            heartbeat_round_s=round(last_beat - first_beat, 2),
            expiry_first_s_after_timeout=round(first_gone - first_beat - args.expire_timeout, 2),
            expiry_s_after_timeout=round(expiry_s, 2),
            expiry_log_entries=entries,
            loadavg=list(os.getloadavg()),
        )
    finally:
        for ch in channels.values():
            await ch.close()


async def run_notifications(c: ProcCluster, args: argparse.Namespace) -> NotificationFigures:
    lead = leaders(c, args.shards)[0]
    assert lead.proc is not None
    fast_channels = [grpc.aio.insecure_channel(lead.public) for _ in range(4)]
    slow_channel = grpc.aio.insecure_channel(lead.public, options=[("grpc.http2.bdp_probe", 0)])
    writer = grpc.aio.insecure_channel(lead.public)
    try:
        write = _stub(writer, "Write", client_pb2.WriteResponse)
        start = c.replica_status(lead, 0).head_offset
        req = client_pb2.NotificationsRequest(shard=0, start_offset_exclusive=start)
        n_fast = args.subscribers - args.slow
        got: list[list[int]] = [[] for _ in range(n_fast)]

        async def fast(i: int) -> None:
            stub = _stub(
                fast_channels[i % 4], "GetNotifications", client_pb2.NotificationBatch, True
            )
            async for b in stub(req):
                got[i].append(b.offset)
                if len(got[i]) == args.notify_writes:
                    return

        slow_stub = _stub(slow_channel, "GetNotifications", client_pb2.NotificationBatch, True)
        slow_calls = [slow_stub(req) for _ in range(args.slow)]
        fast_tasks = [asyncio.ensure_future(fast(i)) for i in range(n_fast)]
        rss: list[float] = [process_stats(lead.proc.pid).rss_bytes / 2**20]
        t0 = time.perf_counter()
        for w in range(args.notify_writes):
            puts = [
                client_pb2.PutRequest(key=f"/notify/{w}/{j}/" + "k" * 100, value=b"v")
                for j in range(100)
            ]
            await write(client_pb2.WriteRequest(shard=0, puts=puts), timeout=60)
            rss.append(process_stats(lead.proc.pid).rss_bytes / 2**20)
        await asyncio.wait_for(asyncio.gather(*fast_tasks), 600)
        wall = time.perf_counter() - t0
        # Past the send timeout every slow one is cut off; let its status through.
        await asyncio.sleep(args.notifications_send_timeout + 1)
        rss.append(process_stats(lead.proc.pid).rss_bytes / 2**20)
        reference = got[0]
        fast_complete = sum(1 for g in got if g == reference and len(g) == args.notify_writes)
        cut = resumed = 0
        for call in slow_calls:
            seen: list[int] = []
            try:
                async for b in call:
                    seen.append(b.offset)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and "too slow" in (e.details() or ""):
                    cut += 1
            again = client_pb2.NotificationsRequest(
                shard=0, start_offset_exclusive=seen[-1] if seen else start
            )
            if len(seen) < args.notify_writes:
                async for b in slow_stub(again, timeout=60):
                    seen.append(b.offset)
                    if len(seen) == args.notify_writes:
                        break
            resumed += seen == reference
        return NotificationFigures(
            subscribers=args.subscribers,
            slow=args.slow,
            writes=args.notify_writes,
            leader_rss_start_mib=round(rss[0], 1),
            leader_rss_max_mib=round(max(rss), 1),
            leader_rss_end_mib=round(rss[-1], 1),
            fast_complete=fast_complete,
            slow_cut_off=cut,
            slow_resumed_without_gap=resumed,
            wall_s=round(wall, 2),
            loadavg=list(os.getloadavg()),
        )
    finally:
        for ch in [*fast_channels, slow_channel, writer]:
            await ch.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--expire", type=int, default=10_000)
    p.add_argument("--expire-timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--keepalives", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--subscribers", type=int, default=1_000)
    p.add_argument("--slow", type=int, default=100)
    p.add_argument("--notify-writes", type=int, default=50)
    p.add_argument("--notifications-send-timeout", type=float, default=5.0, help="seconds")
    p.add_argument("--skip-sessions", action="store_true")
    p.add_argument("--skip-notifications", action="store_true")
    p.add_argument("--json", action="store_true")
    return p


def measure(base: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Starts the cluster under ``base``, runs the scenarios ``args`` selects, stops it."""
    out: dict[str, dict[str, Any]] = {}
    c = ProcCluster.start(
        base,
        3,
        [{"name": "default", "initialShardCount": args.shards, "replicationFactor": 3}],
        server_args=()
        if args.skip_notifications
        else ("--notifications-send-timeout", f"{args.notifications_send_timeout}s"),
    )
    try:
        if not args.skip_sessions:
            out["sessions"] = asdict(asyncio.run(run_sessions(c, args)))
        if not args.skip_notifications:
            out["notifications"] = asdict(asyncio.run(run_notifications(c, args)))
    finally:
        c.close()
    return out


def main() -> None:
    p = parser()
    args = p.parse_args()
    if not 0 <= args.expire <= args.sessions:
        p.error("--expire must be between 0 and --sessions")
    if not 0 <= args.slow < args.subscribers:
        p.error("--slow must be between 0 and --subscribers - 1")
    with tempfile.TemporaryDirectory(prefix="pyxia-scale-sessions-") as tmp:
        out = measure(Path(tmp), args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for section, figures in out.items():
            print(f"[{section}]")
            for k, v in figures.items():
                print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
