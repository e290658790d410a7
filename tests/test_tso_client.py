"""``pyxia.TsoClient`` / ``pyxia.AsyncTsoClient`` against ``pyxia standalone`` (a real process,
which serves the ``tso`` namespace out of the box) and against in-process servers: grants,
coalescing, monotonicity across restarts and a crash between persist and publish, leader-hint
following, retries, and the client-side fallback tripwire."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import pyxia
from cluster import Cluster, free_port
from pyxia import failpoints
from pyxia.errors import InvalidArgument
from pyxia.proto import tso_pb2
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.checker import Record, check
from pyxia.tso.client import AsyncTsoClient, LeaderHint, TsoClient, decode_leader_hint
from pyxia.tso.errors import TimestampFallback
from pyxia.tso.options import TsoOptions
from servers import ServerProcess, standalone_args


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


def test_exported_lazily_from_pyxia() -> None:
    assert pyxia.TsoClient is TsoClient
    assert pyxia.AsyncTsoClient is AsyncTsoClient
    assert pyxia.TimestampFallback is TimestampFallback


def test_leader_hint_decoding() -> None:
    pb = tso_pb2.LeaderHint(leader_endpoint="10.0.0.7:6648")
    pb.leader_epoch.lo = 42
    assert decode_leader_hint(pb.SerializeToString()) == LeaderHint("10.0.0.7:6648", 42)
    assert decode_leader_hint(tso_pb2.LeaderHint().SerializeToString()) == LeaderHint(None, None)
    # tsoracle releases that encode the hint with postcard.
    postcard = b"\x01\x0d10.0.0.7:6648\x01\x00\x2a"
    assert decode_leader_hint(postcard) == LeaderHint("10.0.0.7:6648", 42)
    assert decode_leader_hint(b"\x00\x00") == LeaderHint(None, None)
    assert decode_leader_hint(b"\x07garbage") is None


# -- against `pyxia standalone` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("tso-standalone")
    p = ServerProcess(standalone_args(base), base).start()
    try:
        yield p
    finally:
        p.kill()


def test_standalone_creates_the_tso_namespace(standalone: ServerProcess) -> None:
    ready = next(line for line in standalone.log if "ready:" in line)
    assert f"namespaces=default,{DEFAULT_NAMESPACE} shards=2" in ready


def test_standalone_exports_the_oracle_metrics(standalone: ServerProcess) -> None:
    with TsoClient(standalone.public) as tso:
        tso.get_ts_batch(10)
    url = f"http://127.0.0.1:{standalone.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as res:
        text = res.read().decode()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("pyxia_tso_")
    )
    assert samples["pyxia_tso_serving"] == "1.0"
    assert samples["pyxia_tso_failed"] == "0.0"
    assert float(samples["pyxia_tso_timestamps_total"]) >= 10
    assert float(samples["pyxia_tso_leader_transitions_total"]) >= 1
    assert float(samples["pyxia_tso_high_water_ms"]) > time.time() * 1000


def test_sync_client_grants_and_batches(standalone: ServerProcess) -> None:
    with TsoClient(standalone.public) as tso:
        a = tso.get_ts()
        b = tso.get_ts()
        batch = tso.get_ts_batch(1000)
        c = tso.get_ts()
        assert a < b < batch[0] and batch[-1] < c
        assert len(batch) == 1000 and batch.step == 1
        physical = a >> 18
        assert abs(physical - time.time() * 1000) < 60_000  # close to the wall clock
        with pytest.raises(InvalidArgument):
            tso.get_ts_batch(0)
        with pytest.raises(InvalidArgument):
            tso.get_ts_batch(262_145)


def test_sync_client_from_many_threads_coalesces(standalone: ServerProcess) -> None:
    records: list[Record] = []
    lock = threading.Lock()
    with TsoClient(standalone.public) as tso:

        def worker(n: int) -> None:
            for _ in range(150):
                t0 = time.monotonic()
                ts = tso.get_ts()
                rec = Record(n, t0, time.monotonic(), ts, ts)
                with lock:
                    records.append(rec)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rpcs = tso.client.rpcs
    assert len(records) == 8 * 150
    assert check(records) == []
    assert rpcs < len(records)  # concurrent calls shared RPCs


async def test_async_client_concurrent_calls(standalone: ServerProcess) -> None:
    async with AsyncTsoClient(standalone.public) as tso:
        records: list[Record] = []

        async def caller(n: int) -> None:
            for _ in range(40):
                t0 = time.monotonic()
                if n % 2:
                    ts = await tso.get_ts()
                    records.append(Record(n, t0, time.monotonic(), ts, ts))
                else:
                    r = await tso.get_ts_batch(7)
                    records.append(Record(n, t0, time.monotonic(), r[0], r[-1]))

        await asyncio.gather(*(caller(n) for n in range(32)))
        assert check(records) == []
        assert tso.rpcs < len(records)
        assert tso.leader == standalone.public
        assert tso.fallbacks == 0


def _restart(p: ServerProcess, base: Path, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(standalone_args(base), base, env=env).start()


def test_timestamps_keep_growing_across_restarts_and_a_crash_before_publish(
    tmp_path: Path,
) -> None:
    p = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        with TsoClient(p.public) as tso:
            before = tso.get_ts_batch(100)[-1]
        assert p.terminate() == 0
        # kill -9 at the fence, after its high-water write, before publishing serving.
        p = _restart(p, tmp_path, {"PYXIA_FAILPOINTS": "fence.after_persist_before_publish=crash"})
        assert p.proc is not None
        assert p.proc.wait(30) == -signal.SIGKILL
        p = _restart(p, tmp_path)
        with TsoClient(p.public) as tso:
            after = tso.get_ts()
        # Above what was served, and above the crashed fence's durable window too: that
        # fence persisted max(before + 1, now) + 1 s, the new floor is above it.
        assert after > before
        assert (after >> 18) > (before >> 18) + 1000
        p.kill()  # kill -9 while serving
        p = _restart(p, tmp_path)
        with TsoClient(p.public) as tso:
            assert tso.get_ts() > after
    finally:
        p.kill()


# -- in-process servers ---------------------------------------------------------------------------


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"tso": TsoOptions(lease_s=0.05), "namespace": DEFAULT_NAMESPACE}


async def test_client_follows_the_leader_hint(cluster: Cluster) -> None:
    n0, n1, _ = cluster.nodes
    await cluster.elect(0, n1, cluster.nodes)
    await cluster.push_assignments({0: n1})
    async with AsyncTsoClient([n0.public], timeout_s=10) as tso:
        ts = await tso.get_ts()
        assert tso.leader == n1.public
        assert n1.public in tso.endpoints
        assert await tso.get_ts() > ts
        # A new leader: the old one hints it (its assignments were pushed), the client moves.
        await cluster.elect(0, cluster.nodes[2], cluster.nodes)
        await cluster.push_assignments({0: cluster.nodes[2]})
        assert await tso.get_ts() > ts
        assert tso.leader == cluster.nodes[2].public


async def test_client_retries_a_transient_server_error(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await cluster.elect(0, n0, cluster.nodes)
    await cluster.push_assignments({0: n0})
    async with AsyncTsoClient(n0.public) as tso:
        first = await tso.get_ts()
        failpoints.arm("service.before_allocate", "2*raise")
        assert await tso.get_ts() > first
        assert tso.retries >= 2


async def test_client_gives_up_after_its_timeout() -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with AsyncTsoClient([dead], timeout_s=0.5, attempt_timeout_s=0.2) as tso:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await tso.get_ts()
        assert time.monotonic() - t0 < 3


async def test_fallback_tripwire() -> None:
    """A (broken) server that goes backwards: the client raises instead of handing it out."""
    answers = [2_000_000_000_000, 1_000_000_000_000]

    async def get_ts(raw: bytes, context: object) -> bytes:
        count = tso_pb2.GetTsRequest.FromString(raw).count
        physical = answers.pop(0) if answers else 3_000_000_000_000
        return tso_pb2.GetTsResponse(
            physical_ms=physical, count=count, epoch_lo=1
        ).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tsoracle.v1.TsoService",
                {
                    "GetTs": grpc.unary_unary_rpc_method_handler(
                        get_ts, request_deserializer=None, response_serializer=None
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncTsoClient(f"127.0.0.1:{port}") as tso:
            first = await tso.get_ts()
            with pytest.raises(TimestampFallback, match="fallback"):
                await tso.get_ts()
            assert tso.fallbacks == 1
            assert await tso.get_ts() > first  # the bad grant was never handed out
    finally:
        await server.stop(None)


def test_sync_client_close_is_idempotent_and_final(standalone: ServerProcess) -> None:
    tso = TsoClient(standalone.public)
    tso.get_ts()
    tso.close()
    tso.close()
    with pytest.raises(pyxia.ClientClosed):
        tso.get_ts()
