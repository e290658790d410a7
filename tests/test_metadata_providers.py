"""The metadata providers' shared contract, run against every provider:
memory, file, raft (3 in-process PySyncObj nodes on loopback ports), etcd (a
real etcd server started here) and kubernetes (an in-process fake of the API
server's ConfigMap and Lease endpoints).

Every wait has a deadline; nothing sleeps to synchronise. The only bounded
waits are *negative* checks ("B does not lead while A does")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Procs, wait_for
from k8s_fake import FakeKubernetes
from pyxia.coordinator.metadata import (
    NOT_EXISTS,
    LeadershipLost,
    MetadataProvider,
    Version,
    create_provider,
    split_addresses,
)
from pyxia.coordinator.metadata.codec import status_to_dict
from pyxia.coordinator.metadata.etcd import EtcdMetadataProvider
from pyxia.coordinator.metadata.file import FileMetadataProvider
from pyxia.coordinator.metadata.kubernetes import KubernetesMetadataProvider
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.metadata.raft import RaftMetadataProvider, _StatusState
from pyxia.errors import AlreadyClosed, MetadataBadVersion
from pyxia.proto import metadata_pb2 as md

DEADLINE = 30.0
RAFT_SECRET = b"raft-test-secret-0123456789abcdef"
NEGATIVE_CHECK = 0.5  # how long a contender is watched *not* becoming leader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample_status(n: int) -> md.ClusterStatus:
    s = md.ClusterStatus(shard_id_generator=n + 3, server_idx=n % 5, instance_id=f"inst-{n}")
    ns = s.namespaces["default"]
    ns.replication_factor = 3
    shard = ns.shards[n]
    shard.status = md.SteadyState
    shard.term = n + 1
    shard.leader.public = f"127.0.0.1:{6000 + n}"
    shard.leader.internal = f"127.0.0.1:{7000 + n}"
    for i in range(3):
        shard.ensemble.add(public=f"h{i}:6648", internal=f"h{i}:6649", name=f"s{i}")
    shard.int32_hash_range.min = 0
    shard.int32_hash_range.max = 2**32 - 1
    shard.split.child_leaders_at_bootstrap[n + 10] = "h1:6649"
    return s


async def first_leader(
    tasks: dict[asyncio.Task[LeadershipLost | None], MetadataProvider],
    timeout: float = DEADLINE,
) -> tuple[MetadataProvider, LeadershipLost | None]:
    done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    assert done, "no contender became leader before the deadline"
    task = done.pop()
    return tasks[task], task.result()


async def cancel_all(tasks: Any) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, AlreadyClosed):
            await t


# -- backends ---------------------------------------------------------------------


class Backend:
    """A provider kind plus a backing store that several providers can share."""

    name = ""
    shared = True  # several providers on one backing store
    elects = True  # wait_to_become_leader returns a signal that can fire

    def __init__(self) -> None:
        self.providers: list[MetadataProvider] = []

    def make(self) -> MetadataProvider:
        raise NotImplementedError

    async def new(self) -> MetadataProvider:
        p = self.make()
        self.providers.append(p)
        await p.start()
        return p

    async def lead(self) -> tuple[MetadataProvider, LeadershipLost | None]:
        p = await self.new()
        return p, await asyncio.wait_for(p.wait_to_become_leader(), DEADLINE)

    async def contenders(self) -> list[MetadataProvider]:
        return [await self.new()]

    async def force_loss(self, leader: MetadataProvider) -> None:
        raise NotImplementedError

    async def write_behind(self, status: md.ClusterStatus) -> None:
        """Another writer replaces the stored status behind the leader's back."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        for p in self.providers:
            await p.close()


class MemoryBackend(Backend):
    name = "memory"
    shared = False
    elects = False

    def make(self) -> MetadataProvider:
        return MemoryMetadataProvider()


class FileBackend(Backend):
    name = "file"
    elects = False

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def make(self) -> MetadataProvider:
        return FileMetadataProvider(self.directory, lock_poll_interval=0.02)

    async def write_behind(self, status: md.ClusterStatus) -> None:
        other = FileMetadataProvider(self.directory)
        _, version = await other.get()
        await other.store(status, version)
        await other.close()


class RaftBackend(Backend):
    """A 3-node Raft cluster in this process; contenders are the other nodes."""

    name = "raft"

    def __init__(self) -> None:
        super().__init__()
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.nodes = [
            RaftMetadataProvider(
                addr,
                self.addresses,
                heartbeat_interval=0.05,
                election_timeout=(0.3, 0.6),
                leader_fallback_timeout=1.0,
                connection_retry=0.2,
                commit_timeout=10.0,
                secret=RAFT_SECRET,
            )
            for addr in self.addresses
        ]
        self.providers = list(self.nodes)
        self.handed: list[MetadataProvider] = []

    async def start(self) -> None:
        for n in self.nodes:
            await n.start()

    async def lead(self) -> tuple[MetadataProvider, LeadershipLost | None]:
        live = [n for n in self.nodes if not n.closed]
        tasks = {asyncio.create_task(n.wait_to_become_leader()): n for n in live}
        try:
            leader, lost = await first_leader(tasks)
        finally:
            await cancel_all(tasks)
        self.handed.append(leader)
        return leader, lost

    async def contenders(self) -> list[MetadataProvider]:
        return [n for n in self.nodes if n not in self.handed and not n.closed]

    async def force_loss(self, leader: MetadataProvider) -> None:
        assert isinstance(leader, RaftMetadataProvider)
        deadline = time.monotonic() + DEADLINE
        # Denied until a follower has caught up with the leader's log: retry.
        while not await leader.transfer_leadership():
            assert time.monotonic() < deadline, "raft leadership transfer never accepted"
            await asyncio.sleep(0.05)

    async def write_behind(self, status: md.ClusterStatus) -> None:
        pytest.skip("raft: only the Raft leader can write")

    async def cleanup(self) -> None:
        machines = [n._machine for n in self.nodes if n._machine is not None]
        await super().cleanup()
        assert not [m for m in machines if m.tick_thread_alive()], "a raft thread outlived close()"


class EtcdBackend(Backend):
    name = "etcd"

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.prefix = f"/pyxia-test-{uuid.uuid4().hex[:8]}"
        self.count = 0
        self.options: dict[str, Any] = {}  # more constructor arguments

    def make(self) -> MetadataProvider:
        self.count += 1
        return EtcdMetadataProvider(
            self.endpoint,
            prefix=self.prefix,
            identity=f"coordinator-{self.count}",
            lease_ttl=2,
            campaign_interval=0.05,
            **self.options,
        )

    def leader_kv(self) -> dict[str, Any] | None:
        """The leader key as etcd has it now (synchronous: answers while the loop is blocked)."""
        kvs: list[dict[str, Any]] = (
            self.etcd("/v3/kv/range", {"key": self.key("coordinator-leader")}).get("kvs") or []
        )
        return kvs[0] if kvs else None

    async def cleanup(self) -> None:
        await super().cleanup()
        keepers = [t for t in threading.enumerate() if t.name.startswith("etcd-lease-")]
        assert not keepers, f"a lease keeper thread outlived close(): {keepers}"

    def etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.endpoint}{path}", json=body, timeout=10, trust_env=False)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def key(self, suffix: str) -> str:
        return base64.b64encode(f"{self.prefix}/{suffix}".encode()).decode()

    async def force_loss(self, leader: MetadataProvider) -> None:
        kvs = self.etcd("/v3/kv/range", {"key": self.key("coordinator-leader")})["kvs"]
        self.etcd("/v3/lease/revoke", {"ID": kvs[0]["lease"]})

    async def write_behind(self, status: md.ClusterStatus) -> None:
        from pyxia.coordinator.metadata.codec import encode_status

        value = base64.b64encode(encode_status(status).encode()).decode()
        self.etcd("/v3/kv/put", {"key": self.key("cluster-status"), "value": value})


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, fake: FakeKubernetes) -> None:
        super().__init__()
        self.fake = fake
        self.count = 0

    def make(self) -> MetadataProvider:
        self.count += 1
        return KubernetesMetadataProvider(
            namespace="pyxia",
            host=self.fake.url,
            identity=f"coordinator-{self.count}",
            lease_duration=1.5,
            renew_deadline=1.0,
            retry_period=0.1,
        )

    async def force_loss(self, leader: MetadataProvider) -> None:
        assert isinstance(leader, KubernetesMetadataProvider)
        self.fake.block(leader.identity)  # it can no longer renew: the lease lapses

    async def write_behind(self, status: md.ClusterStatus) -> None:
        from pyxia.coordinator.metadata.codec import encode_status

        def change(obj: dict[str, Any]) -> None:
            obj["data"]["status"] = encode_status(status)

        self.fake.mutate("ConfigMap", "pyxia", "oxia-cluster-status", change)

    async def cleanup(self) -> None:
        self.fake.blocked.clear()
        await super().cleanup()


# -- fixtures ---------------------------------------------------------------------


def find_etcd() -> str | None:
    """``$PYXIA_ETCD``, else ``etcd`` on PATH (Debian's etcd-server puts it in /usr/bin)."""
    explicit = os.environ.get("PYXIA_ETCD")
    if explicit:
        return explicit
    return shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd on loopback ports chosen at runtime, killed at teardown."""
    binary = find_etcd()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    workdir = tmp_path_factory.mktemp("etcd")
    client = f"http://127.0.0.1:{free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    log = open(workdir / "etcd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            binary,
            "--name=pyxia-test",
            f"--data-dir={workdir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pyxia-test={peer}",
            "--log-level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def healthy() -> bool:
        assert proc.poll() is None, (workdir / "etcd.log").read_text()
        try:
            r = httpx.get(f"{client}/health", timeout=1, trust_env=False)
            return bool(r.json().get("health") == "true")
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=DEADLINE, interval=0.05, what="etcd to be healthy")
        yield client
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    try:
        yield fake
    finally:
        fake.close()


BACKENDS = ["memory", "file", "raft", "etcd", "kubernetes"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend
    if request.param == "memory":
        b = MemoryBackend()
    elif request.param == "file":
        b = FileBackend(tmp_path / "metadata")
    elif request.param == "raft":
        b = RaftBackend()
        await b.start()
    elif request.param == "etcd":
        b = EtcdBackend(request.getfixturevalue("etcd_server"))
    else:
        b = KubernetesBackend(request.getfixturevalue("fake_k8s"))
    try:
        yield b
    finally:
        await b.cleanup()


def needs_shared(b: Backend) -> None:
    if not b.shared:
        pytest.skip(f"{b.name}: no backing store shared between providers")


def needs_election(b: Backend) -> None:
    if not b.elects:
        pytest.skip(f"{b.name}: leadership cannot be lost while the process lives")


# -- the contract -------------------------------------------------------------------


async def test_initial_get_is_empty(backend: Backend) -> None:
    p, _ = await backend.lead()
    assert await p.get() == (None, NOT_EXISTS)


async def test_store_get_roundtrip(backend: Backend) -> None:
    p, _ = await backend.lead()
    status = sample_status(1)
    version = await p.store(status, NOT_EXISTS)
    assert version != NOT_EXISTS
    got, got_version = await p.get()
    assert got == status
    assert got_version == version
    status.instance_id = "changed after store"  # the provider kept no alias
    assert (await p.get())[0] == sample_status(1)


async def test_versions_change_on_every_store(backend: Backend) -> None:
    p, _ = await backend.lead()
    seen = [NOT_EXISTS]
    for i in range(5):
        seen.append(await p.store(sample_status(i), seen[-1]))
        assert await p.get() == (sample_status(i), seen[-1])
    assert len(set(seen)) == len(seen)


async def test_cas_conflict_raises_and_leaves_value(backend: Backend) -> None:
    p, lost = await backend.lead()
    v1 = await p.store(sample_status(1), NOT_EXISTS)
    for stale in (NOT_EXISTS, Version("987654")):
        with pytest.raises(MetadataBadVersion):
            await p.store(sample_status(2), stale)
        assert await p.get() == (sample_status(1), v1)
        if lost is not None:
            # A conflict from the backing store signals leadership loss at once,
            # and the provider refuses to store until it leads again.
            assert lost.fired
            with pytest.raises(MetadataBadVersion):
                await p.store(sample_status(2), v1)
            assert await p.get() == (sample_status(1), v1)
            lost = await asyncio.wait_for(p.wait_to_become_leader(), DEADLINE)
            assert lost is not None and not lost.fired
    v2 = await p.store(sample_status(2), v1)
    assert v2 != v1
    assert await p.get() == (sample_status(2), v2)


async def test_conflict_from_another_writer(backend: Backend) -> None:
    needs_shared(backend)
    p, lost = await backend.lead()
    v1 = await p.store(sample_status(1), NOT_EXISTS)
    await backend.write_behind(sample_status(7))
    with pytest.raises(MetadataBadVersion):
        await p.store(sample_status(2), v1)
    if lost is not None:
        assert lost.fired  # at once: no lease timeout involved
    status, version = await p.get()
    assert status == sample_status(7)
    assert version != v1


async def test_only_one_leader_at_a_time(backend: Backend) -> None:
    needs_shared(backend)
    a, _ = await backend.lead()
    contenders = await backend.contenders()
    tasks = {asyncio.create_task(c.wait_to_become_leader()): c for c in contenders}
    try:
        done, _ = await asyncio.wait(tasks, timeout=NEGATIVE_CHECK)
        assert not done, "a contender became leader while another leads"
        await a.close()
        winner, _ = await first_leader(tasks)
        assert winner is not a
        still_waiting = [t for t in tasks if not t.done()]
        assert len(still_waiting) == len(tasks) - 1  # one leader, the rest wait
        status, version = await winner.get()
        assert status is None
        await winner.store(sample_status(3), version)
    finally:
        await cancel_all(tasks)


async def test_leader_loss_fires_once_and_another_takes_over(backend: Backend) -> None:
    needs_election(backend)
    a, lost = await backend.lead()
    assert lost is not None and not lost.fired
    calls: list[str] = []
    lost.add_callback(calls.append)
    v1 = await a.store(sample_status(1), NOT_EXISTS)
    tasks = {asyncio.create_task(c.wait_to_become_leader()): c for c in await backend.contenders()}
    try:
        await backend.force_loss(a)
        reason = await asyncio.wait_for(lost.wait(), DEADLINE)
        assert lost.fired and lost.reason == reason
        # The old leader steps down without exiting: its stores now fail.
        with pytest.raises(MetadataBadVersion):
            await a.store(sample_status(2), v1)
        winner, winner_lost = await first_leader(tasks)
        assert winner is not a
        if winner_lost is not None:
            assert not winner_lost.fired
        status, version = await winner.get()
        assert (status, version) == (sample_status(1), v1)
        v3 = await winner.store(sample_status(3), version)
        with pytest.raises(MetadataBadVersion):
            await a.store(sample_status(4), v3)
        assert await winner.get() == (sample_status(3), v3)
        assert not lost.fire("fired again")  # exactly once
        await a.close()
        await asyncio.sleep(0)  # let callbacks run
        assert calls == [reason]
    finally:
        await cancel_all(tasks)


async def test_close_unblocks_a_pending_wait(backend: Backend) -> None:
    needs_shared(backend)
    await backend.lead()
    b = (await backend.contenders())[0]
    task = asyncio.create_task(b.wait_to_become_leader())
    done, _ = await asyncio.wait([task], timeout=NEGATIVE_CHECK)
    assert not done
    await b.close()
    with pytest.raises(AlreadyClosed):
        await asyncio.wait_for(task, DEADLINE)
    await b.close()  # idempotent


async def test_close_is_idempotent_and_fires_the_signal(backend: Backend) -> None:
    p, lost = await backend.lead()
    await p.store(sample_status(1), NOT_EXISTS)
    await p.close()
    await p.close()
    if lost is not None:
        assert lost.fired
    with pytest.raises(AlreadyClosed):
        await p.get()
    with pytest.raises(AlreadyClosed):
        await p.store(sample_status(2), NOT_EXISTS)
    with pytest.raises(AlreadyClosed):
        await p.wait_to_become_leader()


# -- LeadershipLost, factory, state machine ----------------------------------------------


async def test_leadership_lost_fires_once_from_any_thread() -> None:
    lost = LeadershipLost()
    calls: list[str] = []
    lost.add_callback(calls.append)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(lost.fire(f"t{i}"))) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reason = await asyncio.wait_for(lost.wait(), DEADLINE)
    await asyncio.sleep(0)
    assert results.count(True) == 1
    assert calls == [reason] and lost.reason == reason


def test_factory_builds_each_provider(tmp_path: Path) -> None:
    assert isinstance(create_provider("memory"), MemoryMetadataProvider)
    f = create_provider("file", metadata_dir=str(tmp_path))
    assert isinstance(f, FileMetadataProvider) and f.directory == tmp_path
    secret = tmp_path / "raft.secret"
    secret.write_bytes(RAFT_SECRET + b"\n")
    secret.chmod(0o600)
    r = create_provider(
        "raft",
        raft_address="127.0.0.1:1",
        raft_peers="127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
        raft_secret_file=str(secret),
    )
    assert isinstance(r, RaftMetadataProvider) and r.peers == ["127.0.0.1:2", "127.0.0.1:3"]
    e = create_provider("etcd", etcd_endpoints="h1:2379, h2:2379", metadata_dir=None)
    assert isinstance(e, EtcdMetadataProvider)
    assert e.endpoints == ["http://h1:2379", "http://h2:2379"]
    k = create_provider("kubernetes", namespace="oxia", host="http://127.0.0.1:1")
    assert isinstance(k, KubernetesMetadataProvider) and k.namespace == "oxia"
    assert split_addresses(" a:1 ,,b:2 ") == ["a:1", "b:2"]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("zookeeper", {}, "unknown metadata provider"),
        ("file", {}, "--metadata-dir"),
        ("raft", {"raft_peers": "a:1"}, "--raft-address"),
        ("raft", {"raft_address": "127.0.0.1:1"}, "--raft-secret-file"),
        ("raft", {"raft_address": "127.0.0.1:1", "secret": b"short"}, "at least 16"),
        ("etcd", {}, "--etcd-endpoints"),
        ("memory", {"bogus": 1}, "bad options"),
    ],
)
def test_factory_rejects_bad_input(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_provider(name, **options)


def test_raft_state_machine_fences_old_leaders() -> None:
    """The replicated CAS, applied directly: only the latest claim may write."""
    state = _StatusState()
    state.claim("old", _doApply=True)
    assert state.cas("s1", -1, "old", _doApply=True) == ("ok", 0)
    state.claim("new", _doApply=True)
    assert state.cas("s2", 0, "old", _doApply=True) == ("not_leader", 0)
    assert state.cas("s2", 5, "new", _doApply=True) == ("bad_version", 0)
    assert state.cas("s2", 0, "new", _doApply=True) == ("ok", 1)
    assert state.snapshot == ("s2", 1)


# -- provider specifics --------------------------------------------------------------


async def test_file_status_is_readable_json_written_atomically(tmp_path: Path) -> None:
    p = FileMetadataProvider(tmp_path)
    await p.wait_to_become_leader()
    v = await p.store(sample_status(1), NOT_EXISTS)
    v = await p.store(sample_status(2), v)
    doc = json.loads((tmp_path / "cluster-status.json").read_text())
    assert doc["version"] == v.token == "1"
    assert doc["clusterStatus"]["shardIdGenerator"] == "5"  # protojson: int64 as string
    assert doc["clusterStatus"]["namespaces"]["default"]["shards"]["2"]["status"] == "SteadyState"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    await p.close()


_FILE_LEADER_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pyxia.coordinator.metadata.file import FileMetadataProvider

    async def main():
        p = FileMetadataProvider(sys.argv[1])
        await p.wait_to_become_leader()
        print("leader", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # hold the lock until killed

    asyncio.run(main())
    """
)


async def test_file_leadership_across_processes(tmp_path: Path, procs: Procs) -> None:
    child = procs.python(
        _FILE_LEADER_CHILD,
        str(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    p = FileMetadataProvider(tmp_path, lock_poll_interval=0.02)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), DEADLINE)
        assert line.strip() == "leader"
        task = asyncio.create_task(p.wait_to_become_leader())
        done, _ = await asyncio.wait([task], timeout=NEGATIVE_CHECK)
        assert not done, "two processes hold the file leadership"
        os.kill(child.pid, signal.SIGKILL)  # the kernel drops the dead leader's lock
        assert await asyncio.wait_for(task, DEADLINE) is None
        await p.store(sample_status(1), NOT_EXISTS)
    finally:
        await p.close()
        child.kill()
        child.wait(timeout=10)
        child.stdin.close()
        child.stdout.close()


async def test_raft_leader_without_majority_steps_down() -> None:
    b = RaftBackend()
    try:
        await b.start()
        leader, lost = await b.lead()
        assert lost is not None
        v = await leader.store(sample_status(1), NOT_EXISTS)
        for n in b.nodes:
            if n is not leader:
                await n.close()
        # No majority answers: PySyncObj falls back to follower after
        # leader_fallback_timeout, and the signal fires.
        await asyncio.wait_for(lost.wait(), DEADLINE)
        with pytest.raises(MetadataBadVersion):
            await leader.store(sample_status(2), v)
        assert await leader.get() == (sample_status(1), v)
    finally:
        await b.cleanup()


async def test_etcd_leader_key_removed_fires(etcd_server: str) -> None:
    b = EtcdBackend(etcd_server)
    try:
        leader, lost = await b.lead()
        assert lost is not None
        b.etcd("/v3/kv/deleterange", {"key": b.key("coordinator-leader")})
        await asyncio.wait_for(lost.wait(), DEADLINE)
        with pytest.raises(MetadataBadVersion):
            await leader.store(sample_status(1), NOT_EXISTS)
        # It may campaign again: the key is free.
        again = await asyncio.wait_for(leader.wait_to_become_leader(), DEADLINE)
        assert again is not None and not again.fired
        await leader.store(sample_status(1), NOT_EXISTS)
        kv = b.etcd("/v3/kv/range", {"key": b.key("cluster-status")})["kvs"][0]
        doc = json.loads(base64.b64decode(kv["value"]))
        assert doc["instanceId"] == "inst-1"  # readable protojson
    finally:
        await b.cleanup()


async def test_etcd_lease_outlives_a_blocked_event_loop(etcd_server: str) -> None:
    """The lease is kept alive from a thread of its own: a coordinator whose event loop is
    busy for longer than the lease TTL (a cold start of 10,000 shards) still leads."""
    b = EtcdBackend(etcd_server)
    try:
        leader, lost = await b.lead()
        assert lost is not None and isinstance(leader, EtcdMetadataProvider)
        v = await leader.store(sample_status(1), NOT_EXISTS)
        before = b.leader_kv()
        assert before is not None
        time.sleep(2 + 1)  # noqa: ASYNC251 - blocks the loop past the 2 s TTL, on purpose
        after = b.leader_kv()
        # Still there: the lease did not lapse (the key would have gone with it).
        assert after is not None and after["create_revision"] == before["create_revision"]
        assert not lost.fired, lost
        v = await leader.store(sample_status(2), v)
        assert await leader.get() == (sample_status(2), v)
        # And a standby does not take over.
        standby = await b.new()
        task = asyncio.create_task(standby.wait_to_become_leader())
        done, _ = await asyncio.wait([task], timeout=NEGATIVE_CHECK)
        assert not done, "a standby took over from a live leader"
        await cancel_all([task])
    finally:
        await b.cleanup()


async def test_etcd_revoked_lease_is_seen_while_the_loop_is_blocked(etcd_server: str) -> None:
    """Loss detection runs in the keeper's thread: a lease revoked by etcd fires the signal
    (store refuses at once) even while the coordinator's loop is busy, and the waiters on the
    loop wake once it runs."""
    b = EtcdBackend(etcd_server)
    try:
        leader, lost = await b.lead()
        assert lost is not None
        v = await leader.store(sample_status(1), NOT_EXISTS)
        await b.force_loss(leader)  # revokes the leader's lease in etcd
        # Synchronous wait: the loop does not run meanwhile.
        wait_for(lambda: lost.fired, timeout=DEADLINE, interval=0.05, what="the keeper to see it")
        assert "expired or revoked" in (lost.reason or ""), lost
        reason = await asyncio.wait_for(lost.wait(), DEADLINE)
        assert reason == lost.reason
        with pytest.raises(MetadataBadVersion):
            await leader.store(sample_status(2), v)
        # A new lease and a new campaign: it leads again, with a new keeper.
        again = await asyncio.wait_for(leader.wait_to_become_leader(), DEADLINE)
        assert again is not None and again is not lost and not again.fired
        await leader.store(sample_status(2), v)
    finally:
        await b.cleanup()


async def test_etcd_stuck_event_loop_gives_the_leadership_up(etcd_server: str) -> None:
    """A keeper does not keep a stuck process leading for ever: once the coordinator's loop
    ran nothing for ``loop_stall_limit``, the lease is revoked (a standby takes over at
    once) and the signal fires."""
    b = EtcdBackend(etcd_server)
    b.options = {"loop_stall_limit": 1.0}
    try:
        leader, lost = await b.lead()
        assert lost is not None
        v = await leader.store(sample_status(1), NOT_EXISTS)
        # The loop is stuck (a synchronous wait): the leader key goes meanwhile.
        wait_for(
            lambda: b.leader_kv() is None, timeout=DEADLINE, interval=0.05, what="the key to go"
        )
        assert lost.fired and "event loop" in (lost.reason or ""), lost
        with pytest.raises(MetadataBadVersion):
            await leader.store(sample_status(2), v)
        standby, won = await b.lead()
        assert won is not None and not won.fired
        await standby.store(sample_status(2), v)
    finally:
        await b.cleanup()


async def test_etcd_close_stops_the_keeper_thread(etcd_server: str) -> None:
    b = EtcdBackend(etcd_server)
    try:
        leader, lost = await b.lead()
        assert lost is not None
        assert [t for t in threading.enumerate() if t.name.startswith("etcd-lease-")]
        await leader.close()
        assert lost.fired
        assert not [t for t in threading.enumerate() if t.name.startswith("etcd-lease-")]
        assert b.leader_kv() is None  # revoked: a standby need not wait out the TTL
    finally:
        await b.cleanup()


async def test_kubernetes_lease_taken_fires_at_once(fake_k8s: FakeKubernetes) -> None:
    b = KubernetesBackend(fake_k8s)
    try:
        leader, lost = await b.lead()
        assert lost is not None
        await leader.store(sample_status(1), NOT_EXISTS)

        def take(obj: dict[str, Any]) -> None:
            obj["spec"]["holderIdentity"] = "intruder"

        fake_k8s.mutate("Lease", "pyxia", "pyxia-coordinator", take)
        reason = await asyncio.wait_for(lost.wait(), DEADLINE)
        assert "intruder" in reason
        cm = fake_k8s.get("ConfigMap", "pyxia", "oxia-cluster-status")
        assert cm is not None
        assert json.loads(cm["data"]["status"])["instanceId"] == "inst-1"
    finally:
        await b.cleanup()


async def test_kubernetes_close_releases_the_lease(fake_k8s: FakeKubernetes) -> None:
    b = KubernetesBackend(fake_k8s)
    try:
        a, _ = await b.lead()
        c = await b.new()
        await a.close()
        lease = fake_k8s.get("Lease", "pyxia", "pyxia-coordinator")
        assert lease is not None and not lease["spec"].get("holderIdentity")
        # Released, so the standby need not wait out the lease duration.
        start = time.monotonic()
        await asyncio.wait_for(c.wait_to_become_leader(), DEADLINE)
        assert time.monotonic() - start < 1.5
    finally:
        await b.cleanup()


# PySyncObj 0.3.17 reads its journal's .meta file without closing it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_raft_status_survives_a_full_cluster_restart(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    def cluster() -> RaftBackend:
        b = RaftBackend()
        b.addresses = addresses
        b.nodes = [
            RaftMetadataProvider(
                addr,
                addresses,
                data_dir=tmp_path / f"node{i}",
                heartbeat_interval=0.05,
                election_timeout=(0.3, 0.6),
                connection_retry=0.2,
                secret=RAFT_SECRET,
            )
            for i, addr in enumerate(addresses)
        ]
        b.providers = list(b.nodes)
        return b

    first = cluster()
    try:
        await first.start()
        leader, _ = await first.lead()
        v = await leader.store(sample_status(1), NOT_EXISTS)
        v = await leader.store(sample_status(2), v)
    finally:
        await first.cleanup()
    second = cluster()
    try:
        await second.start()
        leader, _ = await second.lead()
        assert await leader.get() == (sample_status(2), v)
        await leader.store(sample_status(3), v)
    finally:
        await second.cleanup()


async def test_file_store_reads_the_version_of_a_sorted_key_file(tmp_path: Path) -> None:
    """A status file written with its keys sorted (the version last, as before the version
    moved first) is read and compare-and-set like any other; the new one starts with it."""
    old = {"clusterStatus": status_to_dict(sample_status(1)), "version": "7"}
    (tmp_path / "cluster-status.json").write_text(json.dumps(old, sort_keys=True, indent=2))
    p = FileMetadataProvider(tmp_path)
    status, v = await p.get()
    assert v.token == "7" and status == sample_status(1)
    with pytest.raises(MetadataBadVersion):
        await p.store(sample_status(2), Version("6"))
    v = await p.store(sample_status(2), v)
    assert v.token == "8"
    text = (tmp_path / "cluster-status.json").read_text()
    assert text.startswith('{"version":"8","clusterStatus":{')
    assert await p.get() == (sample_status(2), v)
    with pytest.raises(MetadataBadVersion):
        await p.store(sample_status(3), Version("7"))
    await p.close()


async def test_file_store_over_a_file_without_a_status(tmp_path: Path) -> None:
    """A file that holds a version but no status is read as no status (NOT_EXISTS), by
    ``get`` and by a store's compare alike."""
    (tmp_path / "cluster-status.json").write_text('{"version":"3","clusterStatus":null}')
    p = FileMetadataProvider(tmp_path)
    assert await p.get() == (None, NOT_EXISTS)
    with pytest.raises(MetadataBadVersion):
        await p.store(sample_status(1), Version("3"))
    v = await p.store(sample_status(1), NOT_EXISTS)
    assert await p.get() == (sample_status(1), v)
    await p.close()
