"""The audit's "one client's data cannot stall the node" scenario against a real
``pyxia standalone`` with two shards (issue 15 §6), shared by the test and the benchmark.

A large value is stored on shard 0 and the server is restarted (closing flushes the memtable, so
the value sits in an SST as it would after any flush); then one Write of many puts next to the
large key goes to shard 0 while two probes run in threads of this process, each timing every
call with ``time.monotonic``: unary Writes to shard 1 and Checks of the health service. The
result says how long the batch took, and, over the window from the batch being sent until
``AFTER`` past its answer, the slowest probe answer and the longest time without one.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_stubs import OxiaClientStub
from pyxia.proto import client_pb2

BIG_KEY = "big"
MIB = 1 << 20
AFTER = 0.1


def neighbour_key(i: int) -> str:
    """Keys that sort right after :data:`BIG_KEY` (hierarchical or natural order alike)."""
    return f"big-{i:06d}"


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )


def store_large_value(address: str, size: int, shard: int = 0) -> None:
    with channel(address) as ch:
        stub = OxiaClientStub(ch)
        put = client_pb2.PutRequest(key=BIG_KEY, value=os.urandom(size))
        res = stub.Write(client_pb2.WriteRequest(shard=shard, puts=[put]), timeout=120)
        assert res.puts[0].status == client_pb2.OK, res


@dataclass
class Probe:
    """Calls ``call`` back to back in a thread; keeps (start, latency) of each call."""

    name: str
    call: object
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        call = self.call
        assert callable(call)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                call()
            except grpc.RpcError as e:
                self.errors.append(str(e))
            self.samples.append((t0, time.monotonic() - t0))
            time.sleep(0.002)

    def during(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t0, lat) for t0, lat in self.samples if t0 <= end and t0 + lat >= start]

    def worst_during(self, start: float, end: float) -> float:
        """The slowest call that overlapped ``[start, end]``."""
        return max((lat for _, lat in self.during(start, end)), default=0.0)

    def longest_silence(self, start: float, end: float) -> float:
        """The longest time within ``[start, end]`` without an answer."""
        answers = sorted(t0 + lat for t0, lat in self.samples if start <= t0 + lat <= end)
        edges = [start, *answers, end]
        return max(b - a for a, b in itertools.pairwise(edges))


@dataclass
class StallResult:
    batch_seconds: float
    worst_other_shard_write: float
    worst_health_check: float
    longest_silence: float  # of either probe
    other_shard_writes: int
    health_checks: int
    errors: list[str]


def batch_next_to_large_value(
    address: str, puts: int, shard: int = 0, first: int = 0
) -> StallResult:
    """Applies one Write of ``puts`` puts (keys ``neighbour_key(first)``, ...) next to the
    large value on ``shard`` while probing writes to the other shard and the health service."""
    other = 1 - shard
    with channel(address) as write_ch, channel(address) as probe_ch, channel(address) as health_ch:
        stub = OxiaClientStub(write_ch)
        probe_stub = OxiaClientStub(probe_ch)
        health = health_pb2_grpc.HealthStub(health_ch)
        probe_write = client_pb2.WriteRequest(
            shard=other, puts=[client_pb2.PutRequest(key="/probe", value=b"x")]
        )
        probes = [
            Probe("write", lambda: probe_stub.Write(probe_write, timeout=600)),
            Probe(
                "health",
                lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=600),
            ),
        ]
        for p in probes:  # warm the channels up before timing anything
            assert callable(p.call)
            p.call()
        stop = threading.Event()
        threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in probes]
        for t in threads:
            t.start()
        req = client_pb2.WriteRequest(
            shard=shard,
            puts=[
                client_pb2.PutRequest(key=neighbour_key(first + i), value=b"v" * 10)
                for i in range(puts)
            ],
        )
        try:
            t0 = time.monotonic()
            res = stub.Write(req, timeout=900)
            t1 = time.monotonic()
            assert all(p.status == client_pb2.OK for p in res.puts)
            time.sleep(AFTER)  # the probes go on: the window ends AFTER past the answer
        finally:
            stop.set()
            for t in threads:
                t.join(900)
        write, hc = probes
        end = t1 + AFTER
        return StallResult(
            batch_seconds=t1 - t0,
            worst_other_shard_write=write.worst_during(t0, end),
            worst_health_check=hc.worst_during(t0, end),
            longest_silence=max(write.longest_silence(t0, end), hc.longest_silence(t0, end)),
            other_shard_writes=len(write.during(t0, end)),
            health_checks=len(hc.during(t0, end)),
            errors=write.errors + hc.errors,
        )


def point_lookups(address: str, n: int, shard: int = 0) -> list[float]:
    """Latencies of ``n`` Reads (one Get each) of keys next to the large value."""
    out = []
    with channel(address) as ch:
        stub = OxiaClientStub(ch)
        for i in range(n):
            req = client_pb2.ReadRequest(
                shard=shard, gets=[client_pb2.GetRequest(key=neighbour_key(i), include_value=True)]
            )
            t0 = time.monotonic()
            for _ in stub.Read(req, timeout=600):
                pass
            out.append(time.monotonic() - t0)
    return out
