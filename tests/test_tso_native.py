"""The TSO port (``--tso-addr``, :mod:`pyxia.tso.native`): GetTs served by the Rust server from
the window Python grants.

- the native allocator is the Python one, operation for operation (hypothesis);
- on real in-process data servers: the leader's TSO port grants (natively: the window's
  counters say so) strictly above and below its public port's grants; the others' TSO ports
  answer exactly as their public port (FAILED_PRECONDITION and the leader hint), bad requests
  INVALID_ARGUMENT, other methods UNIMPLEMENTED;
- fencing across a leadership change through the TSO ports: a new leader told of its
  election serves above everything the old one granted, the old one stops at once;
- a lost lease: a deposed leader that was never told stops granting natively when its lease
  lapses (the checker finds no overlap); the control run without the lease shows the checker
  catches the overlap on the TSO ports too;
- the fast-path deadline: past it, calls go to Python's path;
- the CLI refuses --tso-addr next to TLS or authentication, or with a bad address;
- a real ``pyxia standalone --tso-addr`` process serves it and stops cleanly; a TSO port in
  use fails the start with one line.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from cluster import Cluster, Node
from pyxia import failpoints
from pyxia.cli import main
from pyxia.node import tso_of
from pyxia.proto import replication_pb2, tso_pb2
from pyxia.security.pki import CertificateAuthority
from pyxia.tso import DEFAULT_NAMESPACE
from pyxia.tso.allocator import Allocator, AllocatorError, Extension
from pyxia.tso.checker import Record, check
from pyxia.tso.client import decode_leader_hint
from pyxia.tso.driver import DirectorLeadership, Leading
from pyxia.tso.native import NativeAllocator, TsoAddress
from pyxia.tso.options import TsoOptions
from servers import ServerProcess, wait_for, wait_until

GET_TS = "/tsoracle.v1.TsoService/GetTs"
OPTIONS = TsoOptions(lease_s=1.0, native_addr="127.0.0.1:0")
"""A lease of 1 s: renewals (every 0.5 s under load, handed to Python) rarely interrupt the
native path in these short runs."""
NOW = 1_700_000_000_000


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    return {"tso": OPTIONS, "namespace": DEFAULT_NAMESPACE}


# -- the allocator: native == Python --------------------------------------------------------------

Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(-5, 40), st.integers(0, 270_000)),
        st.tuples(st.just("extend"), st.integers(-5, 40), st.integers(1, 50)),
        st.tuples(st.just("renew"), st.integers(-5, 40), st.integers(1, 50)),
        st.tuples(st.just("commit"), st.integers(-5, 60), st.integers(0, 1)),
        st.tuples(st.just("lead"), st.integers(1, 30), st.integers(0, 30)),
        st.tuples(st.just("down"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


def _step(a: Allocator, op: Op) -> object:
    kind, x, y = op
    try:
        if kind == "grant":
            return a.try_grant(y, NOW + x)
        if kind == "extend":
            return a.prepare_extension(NOW + x, y)
        if kind == "renew":
            return a.prepare_renewal(NOW + x, y)
        if kind == "commit":
            epoch = a.epoch
            return a.commit_window_extension(Extension((epoch or 0) + y, 0), NOW + x)
        if kind == "lead":
            a.become_leader(NOW + x, NOW + x + y, x)
            return None
        a.step_down()
        return None
    except (AllocatorError, ValueError) as e:
        return type(e).__name__


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_native_allocator_is_the_python_one(script: list[Op]) -> None:
    py, native = Allocator(window_ahead_ms=7), NativeAllocator(window_ahead_ms=7)
    for op in script:
        assert _step(native, op) == _step(py, op), op
        assert (native.epoch, native.high_water) == (py.epoch, py.high_water)


def test_tso_addresses() -> None:
    assert TsoAddress.parse("127.0.0.1:0") == TsoAddress("127.0.0.1", 0)
    assert TsoAddress.parse("[::1]:6650") == TsoAddress("::1", 6650)
    for bad in ("localhost:1", "127.0.0.1", "127.0.0.1:99999", ":1", "1.2.3.4:x"):
        with pytest.raises(ValueError, match="--tso-addr"):
            TsoAddress.parse(bad)


# -- on data servers ------------------------------------------------------------------------------


def tso_port(node: Node) -> str:
    svc = tso_of(node.server)
    assert svc is not None and svc.transport is not None and svc.transport.port
    return f"127.0.0.1:{svc.transport.port}"


def native_stats(node: Node) -> tuple[int, int, int]:
    svc = tso_of(node.server)
    assert svc is not None and isinstance(svc.oracle.allocator, NativeAllocator)
    return svc.oracle.allocator.stats()


async def call(c: Cluster, target: str, raw: bytes, method: str = GET_TS) -> bytes:
    return await c.channel(target).unary_unary(method)(raw, timeout=5)


async def get_ts(c: Cluster, target: str, count: int = 1) -> tso_pb2.GetTsResponse:
    raw = await call(c, target, tso_pb2.GetTsRequest(count=count).SerializeToString())
    return tso_pb2.GetTsResponse.FromString(raw)


async def error(c: Cluster, target: str, raw: bytes, method: str = GET_TS) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(c, target, raw, method)
    return info.value


def hint(e: grpc.aio.AioRpcError) -> tuple[str | None, int | None]:
    for k, v in e.trailing_metadata() or ():
        if k == "tsoracle-leader-hint-bin":
            assert isinstance(v, bytes)
            h = decode_leader_hint(v)
            assert h is not None
            return h.endpoint, h.epoch
    raise AssertionError("no leader hint trailer")


async def serves(c: Cluster, target: str) -> bool:
    try:
        await get_ts(c, target)
        return True
    except grpc.aio.AioRpcError:
        return False


def first_ts(r: tso_pb2.GetTsResponse) -> int:
    return (r.physical_ms << 18) | r.logical_start


def last_ts(r: tso_pb2.GetTsResponse) -> int:
    return first_ts(r) + r.count - 1


async def elect(c: Cluster, leader: Node, ensemble: list[Node] | None = None) -> int:
    term = await c.elect(0, leader, ensemble or c.nodes)
    await c.push_assignments({0: leader})
    return term


async def elect_the_most_advanced(c: Cluster, candidates: list[Node]) -> Node:
    """Fences ``candidates`` at a new term and makes the one with the longest log lead them
    (as the coordinator would: a lagging replica cannot lead one that committed more)."""
    term = c.terms.get(0, 0) + 1
    c.terms[0] = term
    heads = {n.internal: await c.new_term(n, 0, term) for n in candidates}
    leader = max(candidates, key=lambda n: (heads[n.internal].term, heads[n.internal].offset))
    await c.coordination(  # type: ignore[misc]
        leader,
        "BecomeLeader",
        replication_pb2.BecomeLeaderRequest(
            namespace=c.namespace,
            shard=0,
            term=term,
            replication_factor=len(candidates),
            follower_maps={k: v for k, v in heads.items() if k != leader.internal},
        ),
        replication_pb2.BecomeLeaderResponse,
    )
    return leader


async def test_the_tso_port_grants_natively_and_answers_like_the_public_port(
    cluster: Cluster,
) -> None:
    n0, n1, _ = cluster.nodes
    term = await elect(cluster, n1)
    await wait_until(lambda: serves(cluster, tso_port(n1)), what="the TSO port to serve")
    before = native_stats(n1)[0]
    scraped = REGISTRY.get_sample_value("pyxia_tso_native_grants_total") or 0.0
    last = -1
    for i in range(60):
        target = tso_port(n1) if i % 3 else n1.public  # both ports, one allocator
        r = await get_ts(cluster, target, 1 + i % 5)
        assert (r.epoch_hi, r.epoch_lo) == (0, term + 1)
        assert r.count == 1 + i % 5 and first_ts(r) > last
        last = last_ts(r)
    assert native_stats(n1)[0] - before >= 35  # the TSO port's grants stayed native
    now_scraped = REGISTRY.get_sample_value("pyxia_tso_native_grants_total") or 0.0
    assert now_scraped - scraped >= 35
    full = await get_ts(cluster, tso_port(n1), 262_144)
    assert full.logical_start == 0 and first_ts(full) > last

    e = await error(cluster, tso_port(n0), tso_pb2.GetTsRequest(count=1).SerializeToString())
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hint(e) == (n1.public, term + 1)
    for raw in (tso_pb2.GetTsRequest(count=0).SerializeToString(), b"\xff\xff"):
        e = await error(cluster, tso_port(n1), raw)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
    other = "/tsoracle.v1.TsoService/GetSeq"
    e = await error(cluster, tso_port(n1), b"", other)
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await serves(cluster, tso_port(n1))  # and it keeps serving


async def test_fencing_across_a_leadership_change_on_the_tso_ports(cluster: Cluster) -> None:
    n0, n1, _ = cluster.nodes
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, tso_port(n0)))
    old = [await get_ts(cluster, tso_port(n0), 100) for _ in range(20)]
    term = await elect(cluster, n1)  # n0 is told: fenced by the new term
    e = await error(cluster, tso_port(n0), tso_pb2.GetTsRequest(count=1).SerializeToString())
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    await wait_until(lambda: serves(cluster, tso_port(n1)))
    new = await get_ts(cluster, tso_port(n1))
    assert new.epoch_lo == term + 1
    assert first_ts(new) > max(last_ts(r) for r in old)


@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease-control"])
async def test_a_lost_lease_stops_the_native_grants(
    cluster: Cluster, lease: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n0 leads and serves on its TSO port; n1 is elected by n1 and n2 alone (n0 is not told,
    as if paused or cut off). With the lease, n0's native grants stop when its lease lapses
    (its renewal cannot commit), before n1 serves: the history is linearizable. Without it the
    checker catches n0 granting on beside n1."""
    if not lease:
        current = DirectorLeadership.current

        def no_lease(self: DirectorLeadership) -> object:
            s = current(self)
            return Leading(s.epoch, s.handle, False) if isinstance(s, Leading) else s

        monkeypatch.setattr(DirectorLeadership, "current", no_lease)
    n0, n1, n2 = cluster.nodes
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, tso_port(n0)))
    before = native_stats(n0)[0]
    records: list[Record] = []
    stop = asyncio.Event()

    async def hammer(node: Node, client: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await get_ts(cluster, tso_port(node))
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.002)
                continue
            records.append(Record(client, t0, time.monotonic(), first_ts(r), first_ts(r)))

    def answered(client: int, since: float = 0.0) -> int:
        return sum(1 for r in records if r.client == client and r.issued_at > since)

    def first_new() -> float:
        return min((r.received_at for r in records if r.client == 1), default=float("inf"))

    tasks = [asyncio.get_running_loop().create_task(hammer(n0, 0))]
    await wait_until(lambda: answered(0) >= 20, what="n0 to answer")
    new = await elect_the_most_advanced(cluster, [n1, n2])  # n0 keeps believing it leads
    tasks.append(asyncio.get_running_loop().create_task(hammer(new, 1)))
    await wait_until(lambda: answered(1) >= 100, what="the new leader to answer")
    if not lease:  # n0 answers on (natively) beside its successor
        await wait_until(lambda: answered(0, first_new()) >= 20, what="n0 to answer on")
    stop.set()
    await asyncio.gather(*tasks)
    violations = check(records)
    assert native_stats(n0)[0] > before  # n0's grants were native
    if lease:
        assert violations == []
        last_old = max(r.received_at for r in records if r.client == 0)
        assert last_old < first_new()
    else:
        assert violations, "the control run should overlap"


async def test_past_the_fast_path_deadline_calls_go_to_python(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, tso_port(n0)))
    svc = tso_of(n0.server)
    assert svc is not None and isinstance(svc.oracle.allocator, NativeAllocator)
    # Python's path leaves the deadline closed while it renews; hold it closed: every call
    # goes to Python, which still grants (its lease holds) and stays above the native grants.
    a = await get_ts(cluster, tso_port(n0))
    svc.oracle.allocator.set_fast_until(0.0)
    grants, _, handed = native_stats(n0)
    b = await get_ts(cluster, tso_port(n0))
    g2, _, h2 = native_stats(n0)
    assert first_ts(b) > first_ts(a)
    assert h2 == handed + 1 and g2 == grants
    svc.oracle.allocator.set_fast_until(None)
    await get_ts(cluster, tso_port(n0))
    assert native_stats(n0)[0] == grants + 1


async def test_seen_not_leading_closes_the_fast_path_until_seen_leading(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller no longer leads but the watch has not stepped down yet: Python's path
    refuses and closes the native path too; once seen leading again, it reopens."""
    n0 = cluster.nodes[0]
    await elect(cluster, n0)
    await wait_until(lambda: serves(cluster, tso_port(n0)))
    svc = tso_of(n0.server)
    assert svc is not None
    leads = True
    monkeypatch.setattr(svc.oracle, "_still_leading", lambda _target: leads)

    async def granted_natively() -> bool:
        before = native_stats(n0)[0]
        await get_ts(cluster, tso_port(n0))
        return native_stats(n0)[0] > before

    await wait_until(granted_natively, what="a native grant")
    grants, _, handed = native_stats(n0)
    leads = False
    e = await error(cluster, n0.public, tso_pb2.GetTsRequest(count=1).SerializeToString())
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    e = await error(cluster, tso_port(n0), tso_pb2.GetTsRequest(count=1).SerializeToString())
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION  # handed over, refused
    assert native_stats(n0)[0] == grants
    svc.oracle._publish_fast_path()  # a lease write committing meanwhile does not reopen it
    e = await error(cluster, tso_port(n0), tso_pb2.GetTsRequest(count=1).SerializeToString())
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert native_stats(n0)[0] == grants
    assert native_stats(n0)[2] >= handed + 2
    leads = True
    await get_ts(cluster, n0.public)  # seen leading again
    await wait_until(granted_natively, what="native grants again")


# -- the CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tso-addr", "localhost:1"], "not an IP address"),
        (["--tso-addr", "127.0.0.1:1", "--tso-namespace", ""], "needs the timestamp oracle"),
        (["--tso-addr", "127.0.0.1:1", "TLS"], "without TLS or authentication"),
    ],
)
def test_the_cli_refuses_a_tso_port_it_cannot_serve(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    if extra[-1] == "TLS":
        files = CertificateAuthority.create().issue_files(tmp_path, "node")
        extra = [*extra[:-1], "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key)]
    argv = ["standalone", "--data-dir", str(tmp_path / "db"), "--wal-dir", str(tmp_path / "wal")]
    r = CliRunner().invoke(main, [*argv, "--public-addr", "127.0.0.1:0", *extra])
    assert r.exit_code != 0
    assert message in r.output, r.output


# -- a real process -------------------------------------------------------------------------------


def test_pyxia_standalone_serves_the_tso_port(tmp_path: Path) -> None:
    """``pyxia standalone --tso-addr 127.0.0.1:0`` names the bound port on its ready line,
    grants there (strictly increasing with its public port) and stops cleanly on SIGTERM."""
    args = ["standalone", "--public-addr", "127.0.0.1:0", "--metrics-addr", ""]
    args += ["--data-dir", str(tmp_path / "db"), "--wal-dir", str(tmp_path / "wal")]
    server = ServerProcess([*args, "--tso-addr", "127.0.0.1:0"], tmp_path)
    server.start()
    try:
        assert server.ready_line is not None
        found = re.search(r" tso=(\S+) ", server.ready_line.string)
        assert found, server.ready_line.string
        tso_addr = found.group(1)
        request = tso_pb2.GetTsRequest(count=3).SerializeToString()

        def get(target: str) -> tso_pb2.GetTsResponse | None:
            with grpc.insecure_channel(target) as ch:
                try:
                    raw = ch.unary_unary(GET_TS)(request, timeout=5)
                except grpc.RpcError:
                    return None
            return tso_pb2.GetTsResponse.FromString(raw)

        first = wait_for(lambda: get(tso_addr), timeout=30, what="the TSO port to serve")
        public = get(server.public)
        last = get(tso_addr)
        assert public is not None and last is not None
        assert first_ts(first) + 2 < first_ts(public) and first_ts(public) + 2 < first_ts(last)
        assert server.terminate() == 0
    finally:
        server.kill()


def test_a_tso_port_in_use_is_one_line_and_a_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["standalone", "--public-addr", "127.0.0.1:0", "--metrics-addr", ""]
        args += ["--data-dir", str(tmp_path / "db"), "--wal-dir", str(tmp_path / "wal")]
        r = subprocess.run(
            [sys.executable, "-m", "pyxia", *args, "--tso-addr", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("pyxia: ")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"pyxia: cannot listen on the TSO address 127.0.0.1:{port}: ")
    assert "Traceback" not in r.stderr
