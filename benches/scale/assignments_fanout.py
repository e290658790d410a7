"""Assignment fan-out to subscribed clients (issue 21 §1, client side).

A real ``pyxia server`` process gets shard assignments pushed as a coordinator pushes them
(Handshake, then one PushShardAssignments stream, with the cluster secret) for ``--shards``
shards in ``--namespaces`` namespaces, and ``--clients`` GetShardAssignments streams are
subscribed to it (from this process, over one channel per 100 streams; each client asks for
one namespace, as Oxia's clients do, or with ``--whole-map`` for every namespace). Then
``--updates`` changes are pushed, one leader moved each, and for each one measured: the time
until every client got the new map, the server's CPU time, and the bytes the clients got.

With ``--baseline-pythonpath DIR`` the same runs with a server of that tree, the two
alternating (``--rounds`` each), so both see the same machine load.

    PYTHONPATH=python python benches/scale/assignments_fanout.py --shards 10000 --clients 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from pyxia.common.instance_id import INSTANCE_ID_HEADER
from pyxia.common.ports import free_port
from pyxia.proto import client_pb2, replication_pb2
from pyxia.security.cluster_auth import ClusterSecret, generate_secret_file

CLK_TCK = os.sysconf("SC_CLK_TCK")
COORDINATION = "/replication.OxiaCoordination/"
ASSIGNMENTS = "/io.oxia.proto.v1.OxiaClient/GetShardAssignments"
STREAMS_PER_CHANNEL = 100
READY = re.compile(r"pyxia server ready: public=(\S+) internal=(\S+)")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def the_map(shards: int, namespaces: int, moved: int) -> client_pb2.ShardAssignments:
    """``shards`` over ``namespaces``, each led by one of 100 addresses; the first ``moved``
    shards' leaders moved to the next address (each update moves one more)."""
    m = client_pb2.ShardAssignments()
    per = shards // namespaces
    step = (1 << 32) // per
    for n in range(namespaces):
        ns = m.namespaces[f"ns{n}"]
        ns.shard_key_router = client_pb2.XXHASH3
        for j in range(per):
            sid = n * per + j
            a = ns.assignments.add(shard=sid, leader=f"10.0.{sid % 100}.1:6648")
            if sid < moved:
                a.leader = f"10.0.{(sid + 1) % 100}.1:6648"
            a.int32_hash_range.min_hash_inclusive = j * step
            a.int32_hash_range.max_hash_inclusive = (
                (j + 1) * step - 1 if j < per - 1 else (1 << 32) - 1
            )
    return m


class Server:
    def __init__(self, base: Path, secret: Path, pythonpath: str) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.log = base / "server.log"
        env = {**os.environ, "PYTHONPATH": pythonpath}
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxia",
                "server",
                "-p",
                f"127.0.0.1:{free_port()}",
                "-i",
                f"127.0.0.1:{free_port()}",
                "-m",
                "",
                "--data-dir",
                str(base / "db"),
                "--wal-dir",
                str(base / "wal"),
                "--cluster-secret-file",
                str(secret),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            m = READY.search(self.log.read_text(errors="replace"))
            if m:
                self.public, self.internal = m.group(1), m.group(2)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)  # polling a log file for the ready line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()


async def measure(
    server: Server, secret: ClusterSecret, args: argparse.Namespace
) -> dict[str, Any]:
    instance = uuid.uuid4().hex
    internal = grpc.aio.insecure_channel(
        server.internal, options=[("grpc.max_send_message_length", 256 << 20)]
    )

    def md(method: str, bound: bool = True) -> list[tuple[str, str]]:
        out = [secret.sign(COORDINATION + method)]
        if bound:
            out.append((INSTANCE_ID_HEADER, instance))
        return out

    handshake = internal.unary_unary(
        COORDINATION + "Handshake",
        request_serializer=replication_pb2.HandshakeRequest.SerializeToString,
        response_deserializer=replication_pb2.HandshakeResponse.FromString,
    )
    await handshake(
        replication_pb2.HandshakeRequest(instance_id=instance),
        metadata=md("Handshake", False),
        timeout=30,
    )
    pushes: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests() -> Any:
        while (raw := await pushes.get()) is not None:
            yield raw

    push_call = internal.stream_unary(
        COORDINATION + "PushShardAssignments",
        request_serializer=None,
        response_deserializer=replication_pb2.CoordinationShardAssignmentsResponse.FromString,
    )(requests(), metadata=md("PushShardAssignments"))
    await pushes.put(the_map(args.shards, args.namespaces, 0).SerializeToString())

    channels = [
        grpc.aio.insecure_channel(
            server.public, options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        for _ in range((args.clients + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    received = [0] * args.clients
    got_bytes = 0
    target = 1
    reached = asyncio.Event()
    pending = args.clients

    async def client(i: int) -> None:
        nonlocal got_bytes, pending
        ch = channels[i // STREAMS_PER_CHANNEL]
        namespace = "" if args.whole_map else f"ns{i % args.namespaces}"
        call = ch.unary_stream(
            ASSIGNMENTS,
            request_serializer=client_pb2.ShardAssignmentsRequest.SerializeToString,
            response_deserializer=None,
        )(client_pb2.ShardAssignmentsRequest(namespace=namespace))
        async for raw in call:
            received[i] += 1
            got_bytes += len(raw)
            if received[i] == target:
                pending -= 1
                if pending == 0:
                    reached.set()

    tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
    started = time.monotonic()
    await asyncio.wait_for(reached.wait(), 300)
    subscribed_s = time.monotonic() - started
    latencies: list[float] = []
    cpus: list[float] = []
    sizes: list[int] = []
    for k in range(1, args.updates + 1):
        raw = the_map(args.shards, args.namespaces, k).SerializeToString()
        target, pending = k + 1, args.clients
        reached.clear()
        before_bytes = got_bytes
        cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.monotonic()
        await pushes.put(raw)
        await asyncio.wait_for(reached.wait(), 300)
        latencies.append(time.monotonic() - t0)
        cpus.append(cpu_seconds(server.proc.pid) - cpu0)
        sizes.append(got_bytes - before_bytes)
    result = {
        "clients": args.clients,
        "shards": args.shards,
        "map_kib": round(len(raw) / 1024, 1),
        "subscribe_s": round(subscribed_s, 2),
        "update_median_s": round(statistics.median(latencies), 3),
        "update_max_s": round(max(latencies), 3),
        "server_cpu_per_update_s": round(statistics.median(cpus), 3),
        "mib_per_update": round(statistics.median(sizes) / 2**20, 1),
        "server_rss_mib": round(rss_mib(server.proc.pid), 1),
    }
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pushes.put(None)
    push_call.cancel()
    for ch in [*channels, internal]:
        await ch.close()
    return result


async def run(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    trees = [("this tree", os.environ.get("PYTHONPATH", ""))]
    if args.baseline_pythonpath:
        trees.insert(0, ("baseline", args.baseline_pythonpath))
    out = []
    with tempfile.TemporaryDirectory(prefix="pyxia-fanout-") as d:
        base = Path(d)
        secret_file = base / "cluster.secret"
        generate_secret_file(secret_file)
        secret = ClusterSecret.from_file(secret_file)
        for r in range(args.rounds):
            for name, pythonpath in trees:
                server = await asyncio.to_thread(
                    Server, base / f"{r}-{len(out)}", secret_file, pythonpath
                )
                try:
                    load = os.getloadavg()[0]
                    result = await measure(server, secret, args)
                    result["load"] = round(load, 1)
                    out.append((name, result))
                    print(name, result, flush=True)
                finally:
                    server.close()
    return out


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that the processes this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--clients", type=int, default=1_000)
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--whole-map", action="store_true", help="clients ask for every namespace")
    ap.add_argument("--baseline-pythonpath", default=None)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
