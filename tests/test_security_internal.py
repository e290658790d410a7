"""The internal port obeys only members of the cluster (audit issue 16).

Each attack of the audit that the cluster secret or mutual TLS closes is replayed here against a
secured cluster, and must be refused (UNAUTHENTICATED, or no TLS connection at all) without
changing anything: an unauthenticated DeleteShard, NewTerm, BecomeLeader, AddFollower,
Handshake, PushShardAssignments, Replicate, Truncate or SendSnapshot; a replayed proof, a proof
made for another method, a stale one, one made with another secret; with mutual TLS a caller
without a certificate or with one from another CA. On the code before this change every one of
these calls was obeyed.

In-process clusters (three DataServers and a coordinator in one event loop) run with a secret
on both sides, or with mutual TLS; process clusters (``pyxia server`` x3 + ``pyxia coordinator``)
run with mutual TLS only, survive a leader kill -9 and a rotation of every certificate.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from cluster import Cluster, Node
from proc_cluster import ProcCluster, tls_args
from pyxia.client import AsyncClient
from pyxia.common.channels import ChannelPool
from pyxia.common.ports import free_port
from pyxia.common.sharding import generate_shards, route, routing_hash
from pyxia.config import ClusterConfig, LoadBalancerConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator.coordinator import CoordinatorOptions
from pyxia.coordinator.dataserver_controller import LivenessOptions
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.model import STEADY
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from pyxia.node import data_server
from pyxia.proto import admin_pb2, client_pb2, replication_pb2
from pyxia.security.cluster_auth import ClusterSecret, generate_secret_file
from pyxia.security.pki import CertificateAuthority
from pyxia.security.tls import TlsOptions, fetch_peer_certificate
from pyxia.server.debug_rpc import debug_handler
from pyxia.server.internal_rpc import Manifest
from servers import wait_for, wait_until

NS = "default"
SHARDS = 2
COORD = "/replication.OxiaCoordination/"
REPL = "/replication.OxiaLogReplication/"

FAST = LivenessOptions(probe_interval=0.2, probe_timeout=1.0, failures=2)


def _ser(m: Any) -> bytes:
    return bytes(m.SerializeToString())


def _ident(b: bytes) -> bytes:
    return b


# -- in-process clusters --------------------------------------------------------------------------


@dataclass
class Env:
    cluster: Cluster
    server: CoordinatorServer
    member: ChannelPool
    """Channels that prove membership (what another node of the cluster would use)."""
    base: Path

    @property
    def coordinator(self) -> Any:
        assert self.server.coordinator is not None
        return self.server.coordinator

    def leader_of(self, shard: int) -> Node:
        meta = self.coordinator.status.namespaces[NS].shards[shard]
        return next(n for n in self.cluster.nodes if n.internal == meta.leader.internal)

    def follower_of(self, shard: int) -> Node:
        leader = self.leader_of(shard)
        return next(n for n in self.cluster.nodes if n is not leader)

    def state(self) -> dict[tuple[int, int], tuple[int, int, int]]:
        """(node, shard) -> (term, head offset, status) of every replica."""
        out = {}
        for n in self.cluster.nodes:
            for shard in range(SHARDS):
                c = n.s.director.controller(shard)
                if c is not None:
                    st = c.get_status()
                    out[(n.index, shard)] = (st.term, st.head_offset, st.status)
        return out


def steady(env: Env) -> bool:
    c = env.server.coordinator
    if c is None:
        return False
    ns = c.status.namespaces.get(NS)
    return (
        ns is not None
        and len(ns.shards) == SHARDS
        and all(m.status == STEADY and m.HasField("leader") for m in ns.shards.values())
        and all(n.s.assignments.initialized for n in env.cluster.nodes)
    )


def make_config(nodes: list[Node]) -> ClusterConfig:
    return ClusterConfig(
        namespaces=(NamespaceConfig(NS, SHARDS, 3),),
        servers=tuple(ServerAddress(n.public, n.internal) for n in nodes),
        load_balancer=LoadBalancerConfig(schedule_interval=3600, quarantine_time=0.0),
    )


async def start_env(
    base: Path,
    node_options: Callable[[Node], dict[str, Any]],
    coordinator: CoordinatorOptions,
    member: ChannelPool,
) -> Env:
    nodes = [Node(i, base / f"n{i}", free_port(), free_port()) for i in range(3)]
    cluster = Cluster(nodes)
    server = CoordinatorServer(
        MemoryMetadataProvider(),
        lambda: make_config(nodes),
        CoordinatorServerOptions(
            internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=coordinator
        ),
    )
    env = Env(cluster, server, member, base)
    try:
        for n in nodes:
            await n.start(**node_options(n))
        await server.start()
        await wait_until(lambda: steady(env), 30, "a steady cluster")
    except BaseException:
        await close_env(env)
        raise
    return env


async def close_env(env: Env) -> None:
    await env.server.close()
    await env.member.close()
    await env.cluster.close()


def secret_file(base: Path) -> Path:
    path = base / "cluster.secret"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        generate_secret_file(path)
    return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """Three data servers and a coordinator sharing a cluster secret (each process its own
    copy, read from the file, as separate processes would)."""
    path = secret_file(tmp_path)
    e = await start_env(
        tmp_path,
        lambda n: {"cluster_secret": ClusterSecret.from_file(path)},
        CoordinatorOptions(
            liveness=FAST,
            config_poll_interval=0.1,
            balance=False,
            cluster_secret=ClusterSecret.from_file(path),
        ),
        ChannelPool(secret=ClusterSecret.from_file(path)),
    )
    try:
        yield e
    finally:
        await close_env(e)


async def write_keys(env: Env, n: int = 40) -> dict[str, bytes]:
    keys = {f"/k/{i:03d}": f"v{i}".encode() for i in range(n)}
    async with AsyncClient([x.public for x in env.cluster.nodes], request_timeout_s=10) as c:
        for k, v in keys.items():
            await c.put(k, v)
        assert {c.shard_for(k) for k in keys} == set(range(SHARDS))
    return keys


async def assert_readable(env: Env, keys: dict[str, bytes]) -> None:
    async with AsyncClient([x.public for x in env.cluster.nodes], request_timeout_s=10) as c:
        for k, v in keys.items():
            assert (await c.get(k)).value == v, k


async def refused(awaitable: Any) -> str:
    """Awaits an RPC that must be refused as unauthenticated; returns the details."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await awaitable
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
    return str(e.value.details())


async def drain(call: Any) -> list[Any]:
    return [m async for m in call]


def unary(ch: Any, method: str, resp: Any) -> Any:
    return ch.unary_unary(method, request_serializer=_ser, response_deserializer=resp.FromString)


# -- the in-process variant with a secret on both sides -------------------------------------------


async def test_a_cluster_with_a_secret_on_both_sides_serves_and_replicates(env: Env) -> None:
    keys = await write_keys(env)
    await assert_readable(env, keys)

    def replicated() -> bool:
        st = env.state()
        for shard in range(SHARDS):
            heads = {st[(n.index, shard)][1] for n in env.cluster.nodes}
            if len(heads) != 1:
                return False
        return True

    await wait_until(replicated, 20, "every replica at the leader's head")
    # Every internal call came with a valid proof: nothing was refused.
    assert refusals("no") == 0


def refusals(reason: str) -> float:
    v = REGISTRY.get_sample_value("pyxia_server_internal_calls_refused_total", {"reason": reason})
    return v or 0.0


# -- the audit's attacks --------------------------------------------------------------------------


async def test_unauthenticated_coordination_calls_are_refused_and_change_nothing(
    env: Env,
) -> None:
    keys = await write_keys(env)
    before = env.state()
    instance_id = env.coordinator.status.instance_id
    for node in env.cluster.nodes:
        async with grpc.aio.insecure_channel(node.internal) as ch:
            for shard in range(SHARDS):
                term = before[(node.index, shard)][0]
                await refused(
                    unary(ch, COORD + "DeleteShard", replication_pb2.DeleteShardResponse)(
                        replication_pb2.DeleteShardRequest(namespace=NS, shard=shard, term=term)
                    )
                )
                await refused(
                    unary(ch, COORD + "NewTerm", replication_pb2.NewTermResponse)(
                        replication_pb2.NewTermRequest(namespace=NS, shard=shard, term=term + 100)
                    )
                )
                await refused(
                    unary(ch, COORD + "BecomeLeader", replication_pb2.BecomeLeaderResponse)(
                        replication_pb2.BecomeLeaderRequest(
                            namespace=NS, shard=shard, term=term + 100, replication_factor=1
                        )
                    )
                )
                await refused(
                    unary(ch, COORD + "AddFollower", replication_pb2.AddFollowerResponse)(
                        replication_pb2.AddFollowerRequest(
                            namespace=NS,
                            shard=shard,
                            term=term,
                            follower_name="10.9.9.9:6649",
                            follower_head_entry_id=replication_pb2.EntryId(term=-1, offset=-1),
                        )
                    )
                )
            await refused(
                unary(ch, COORD + "Handshake", replication_pb2.HandshakeResponse)(
                    replication_pb2.HandshakeRequest(instance_id="someone-else")
                )
            )
    # Nothing moved: same terms, heads and roles; the data is there; still bound to us.
    assert env.state() == before
    await assert_readable(env, keys)
    for node in env.cluster.nodes:
        assert Manifest(node.base / "db" / "MANIFEST.json").instance_id() == instance_id


async def test_forged_shard_assignments_are_refused(env: Env) -> None:
    keys = await write_keys(env)
    leaders = {
        shard: [n.s.assignments.leader_of(shard) for n in env.cluster.nodes]
        for shard in range(SHARDS)
    }
    forged = client_pb2.ShardAssignments()
    nsa = forged.namespaces[NS]
    for shard in range(SHARDS):
        nsa.assignments.add(shard=shard, leader="evil.example:6648")
    for node in env.cluster.nodes:
        async with grpc.aio.insecure_channel(node.internal) as ch:
            call = ch.stream_unary(
                COORD + "PushShardAssignments",
                request_serializer=_ser,
                response_deserializer=replication_pb2.CoordinationShardAssignmentsResponse.FromString,
            )
            await refused(call(iter([forged])))
    for shard in range(SHARDS):
        now = [n.s.assignments.leader_of(shard) for n in env.cluster.nodes]
        assert now == leaders[shard]
        assert "evil.example:6648" not in now
    await assert_readable(env, keys)


async def test_unauthenticated_replication_calls_are_refused_and_change_nothing(
    env: Env,
) -> None:
    keys = await write_keys(env)
    refused_before = refusals("no")
    shard = 0
    follower = env.follower_of(shard)
    term, head, _ = env.state()[(follower.index, shard)]
    md = (("namespace", NS), ("shard-id", str(shard)), ("term", str(term)))
    forged_entry = replication_pb2.Append(
        term=term,
        entry=replication_pb2.LogEntry(term=term, offset=head + 1, value=b"forged"),
        commit_offset=head + 1,
    ).SerializeToString()
    chunk = replication_pb2.SnapshotChunk(
        term=term, name="CURRENT", content=b"x", chunk_index=0, chunk_count=1
    ).SerializeToString()
    async with grpc.aio.insecure_channel(follower.internal) as ch:
        replicate = ch.stream_stream(
            REPL + "Replicate",
            request_serializer=_ident,
            response_deserializer=replication_pb2.Ack.FromString,
        )
        # grpc-python's client reports INTERNAL ("Internal error from Core") instead of the
        # server's status when a bidirectional stream ends while it is still sending: the
        # refusal counter below tells that the gate refused it.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await drain(replicate(iter([forged_entry]), metadata=md))
        assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL)
        await refused(
            unary(ch, REPL + "Truncate", replication_pb2.TruncateResponse)(
                replication_pb2.TruncateRequest(
                    namespace=NS,
                    shard=shard,
                    term=term,
                    head_entry_id=replication_pb2.EntryId(term=-1, offset=-1),
                )
            )
        )
        snapshot = ch.stream_unary(
            REPL + "SendSnapshot",
            request_serializer=_ident,
            response_deserializer=replication_pb2.SnapshotResponse.FromString,
        )
        await refused(snapshot(iter([chunk]), metadata=md))
    assert refusals("no") - refused_before == 3
    st = env.state()[(follower.index, shard)]
    assert st[0] == term and st[1] >= head  # not truncated, not fenced (it may have caught up)
    wal = follower.s.director.controller(shard).storage.wal  # type: ignore[union-attr]
    assert all(e.value != b"forged" for e in wal.reverse_reader())
    await assert_readable(env, keys)


async def test_handshake_cannot_bind_a_fresh_server_to_a_foreign_cluster(
    env: Env, tmp_path: Path
) -> None:
    path = secret_file(tmp_path)
    fresh = Node(9, tmp_path / "fresh", free_port(), free_port())
    await fresh.start(cluster_secret=ClusterSecret.from_file(path))
    path_of_manifest = fresh.base / "db" / "MANIFEST.json"
    try:
        async with grpc.aio.insecure_channel(fresh.internal) as ch:
            await refused(
                unary(ch, COORD + "Handshake", replication_pb2.HandshakeResponse)(
                    replication_pb2.HandshakeRequest(instance_id="foreign-cluster")
                )
            )
        assert Manifest(path_of_manifest).instance_id() is None
        # The cluster's own handshake (with a proof) binds it.
        res = await unary(
            env.member.get(fresh.internal), COORD + "Handshake", replication_pb2.HandshakeResponse
        )(replication_pb2.HandshakeRequest(instance_id=env.coordinator.status.instance_id))
        assert res.status == replication_pb2.HANDSHAKE_STATUS_BOUND
        assert Manifest(path_of_manifest).instance_id() == env.coordinator.status.instance_id
    finally:
        await fresh.stop()


async def test_replayed_misdirected_stale_and_foreign_proofs_are_refused(
    env: Env, tmp_path: Path
) -> None:
    keys = await write_keys(env)
    node = env.leader_of(0)
    term = env.state()[(node.index, 0)][0]
    secret = ClusterSecret.from_file(secret_file(tmp_path))
    get_status = COORD + "GetStatus"
    delete = COORD + "DeleteShard"
    status_req = replication_pb2.GetStatusRequest(shard=0)
    delete_req = replication_pb2.DeleteShardRequest(namespace=NS, shard=0, term=term)
    async with grpc.aio.insecure_channel(node.internal) as ch:
        status = unary(ch, get_status, replication_pb2.GetStatusResponse)
        delete_shard = unary(ch, delete, replication_pb2.DeleteShardResponse)
        # A proof works once.
        proof = secret.sign(get_status)
        iid = ("instance-id", env.coordinator.status.instance_id)
        assert (await status(status_req, metadata=(proof, iid))).term == term
        assert "replayed" in await refused(status(status_req, metadata=(proof, iid)))
        # A proof for one method does not open another.
        other = secret.sign(get_status)
        assert "bad" in await refused(delete_shard(delete_req, metadata=(other,)))
        # A stale proof, and a proof made with another secret.
        stale = secret.sign(delete, now_ms=int(time.time() * 1000) - 120_000)
        assert "expired" in await refused(delete_shard(delete_req, metadata=(stale,)))
        stranger = ClusterSecret(b"not the cluster's secret, 32 b..").sign(delete)
        assert "bad" in await refused(delete_shard(delete_req, metadata=(stranger,)))
    await assert_readable(env, keys)
    assert env.state()[(node.index, 0)][0] == term


async def test_only_health_is_open_on_the_internal_port(env: Env, tmp_path: Path) -> None:
    node = env.cluster.nodes[0]
    async with grpc.aio.insecure_channel(node.internal) as ch:
        check = unary(ch, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckResponse)
        res = await check(health_pb2.HealthCheckRequest(service=""))
        assert res.status == health_pb2.HealthCheckResponse.SERVING
        await refused(
            unary(ch, COORD + "GetInfo", replication_pb2.GetInfoResponse)(
                replication_pb2.GetInfoRequest()
            )
        )
        watch = ch.unary_stream(
            "/pyxia.admin.v1.ShardEvents/Watch",
            request_serializer=_ser,
            response_deserializer=admin_pb2.ShardEvent.FromString,
        )
        await refused(drain(watch(admin_pb2.WatchShardEventsRequest())))
        # A method nobody serves is refused the same way (no probing for what exists).
        await refused(ch.unary_unary("/no.Such/Method")(b""))
    # Services added later (the test hooks) sit behind the same gate.
    path = secret_file(tmp_path)
    hooked = Node(8, tmp_path / "hooked", free_port(), free_port())
    hooked.server = data_server(hooked.options(cluster_secret=ClusterSecret.from_file(path)))
    hooked.server.extra_internal_handlers.append(debug_handler())
    await hooked.server.start()
    try:
        async with grpc.aio.insecure_channel(hooked.internal) as ch:
            arm = ch.unary_unary("/pyxia.debug.v1.Debug/ArmFailpoint")
            await refused(arm(b'{"name": "wal.after_append_before_sync", "action": "crash"}'))
        # With the proof the hooks answer (so the refusal above was the gate, not absence).
        member = ChannelPool(secret=ClusterSecret.from_file(path))
        try:
            hits = member.get(hooked.internal).unary_unary("/pyxia.debug.v1.Debug/FailpointHits")
            assert await hits(b'{"name": "x"}') == b'{"hits": 0}'
        finally:
            await member.close()
    finally:
        await hooked.stop()


async def test_refusals_are_logged_rate_limited_and_counted(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    node = env.cluster.nodes[1]
    before = refusals("no")
    with caplog.at_level(logging.WARNING, logger="pyxia.internal.auth"):
        async with grpc.aio.insecure_channel(node.internal) as ch:
            status = unary(ch, COORD + "GetStatus", replication_pb2.GetStatusResponse)
            for _ in range(50):
                await refused(status(replication_pb2.GetStatusRequest(shard=0)))
    lines = [r.getMessage() for r in caplog.records if r.name == "pyxia.internal.auth"]
    assert len(lines) <= 1  # one line per 10 s at most, whatever the flood
    assert refusals("no") - before == 50


# -- mutual TLS -----------------------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    ca: CertificateAuthority

    def opts(self, name: str, *, listener: bool = False) -> TlsOptions:
        return TlsOptions(
            cert_file=self.dir / f"{name}.crt",
            key_file=self.dir / f"{name}.key",
            trusted_ca_file=self.dir / "ca.crt",
            client_auth=listener,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create()
    d = tmp_path / "pki"
    ca.save(d)
    for name in ("n0", "n1", "n2", "coordinator", "member"):
        ca.issue_files(d, name)
    return Pki(d, ca)


@pytest.fixture
async def mtls_env(tmp_path: Path, pki: Pki) -> AsyncIterator[Env]:
    """Mutual TLS only (no secret): internal ports demand a certificate of the cluster's CA."""
    member = pki.opts("member").client()
    e = await start_env(
        tmp_path,
        lambda n: {
            "internal_tls": pki.opts(f"n{n.index}", listener=True),
            "peer_tls": pki.opts(f"n{n.index}"),
        },
        CoordinatorOptions(
            liveness=FAST,
            config_poll_interval=0.1,
            balance=False,
            peer_tls=pki.opts("coordinator"),
        ),
        ChannelPool(member),
    )
    try:
        yield e
    finally:
        await close_env(e)


async def test_mtls_cluster_serves_and_refuses_callers_without_a_cluster_certificate(
    mtls_env: Env, tmp_path: Path, pki: Pki
) -> None:
    env = mtls_env
    keys = await write_keys(env)
    await assert_readable(env, keys)
    before = env.state()
    node = env.leader_of(0)
    term = before[(node.index, 0)][0]
    delete_req = replication_pb2.DeleteShardRequest(namespace=NS, shard=0, term=term)

    other_ca = CertificateAuthority.create("another CA")
    other_dir = tmp_path / "other"
    other_ca.save(other_dir)
    other_ca.issue_files(other_dir, "intruder")
    strangers = {
        "plaintext": grpc.aio.insecure_channel(node.internal),
        "no certificate": grpc.aio.secure_channel(
            node.internal, grpc.ssl_channel_credentials((pki.dir / "ca.crt").read_bytes())
        ),
        "another CA's certificate": grpc.aio.secure_channel(
            node.internal,
            grpc.ssl_channel_credentials(
                (pki.dir / "ca.crt").read_bytes(),
                (other_dir / "intruder.key").read_bytes(),
                (other_dir / "intruder.crt").read_bytes(),
            ),
        ),
    }
    for what, ch in strangers.items():
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await unary(ch, COORD + "DeleteShard", replication_pb2.DeleteShardResponse)(
                    delete_req, timeout=5
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, what
    assert env.state() == before
    await assert_readable(env, keys)
    # A member's certificate is accepted (so the refusals above were the certificate check).
    res = await unary(
        env.member.get(node.internal), COORD + "GetStatus", replication_pb2.GetStatusResponse
    )(
        replication_pb2.GetStatusRequest(shard=0),
        metadata=(("instance-id", env.coordinator.status.instance_id),),
    )
    assert res.term == term


async def test_mtls_and_a_secret_together(tmp_path: Path, pki: Pki) -> None:
    """Both locks at once: a member needs its certificate and the secret."""
    path = secret_file(tmp_path)
    env = await start_env(
        tmp_path,
        lambda n: {
            "internal_tls": pki.opts(f"n{n.index}", listener=True),
            "peer_tls": pki.opts(f"n{n.index}"),
            "cluster_secret": ClusterSecret.from_file(path),
        },
        CoordinatorOptions(
            liveness=FAST,
            config_poll_interval=0.1,
            balance=False,
            peer_tls=pki.opts("coordinator"),
            cluster_secret=ClusterSecret.from_file(path),
        ),
        ChannelPool(pki.opts("member").client(), ClusterSecret.from_file(path)),
    )
    try:
        keys = await write_keys(env, 10)
        await assert_readable(env, keys)
        node = env.cluster.nodes[0]
        cert_only = ChannelPool(pki.opts("member").client())
        try:
            await refused(
                unary(
                    cert_only.get(node.internal),
                    COORD + "GetStatus",
                    replication_pb2.GetStatusResponse,
                )(replication_pb2.GetStatusRequest(shard=0))
            )
        finally:
            await cert_only.close()
    finally:
        await close_env(env)


async def test_public_port_with_tls(tmp_path: Path, pki: Pki) -> None:
    """The public listener's TLS (ServerOptions.public_tls): TLS clients are served, plaintext
    ones are not."""
    from pyxia.node import standalone

    node = Node(0, tmp_path / "pub", free_port(), free_port())
    sa = standalone(
        node.options(
            public_tls=TlsOptions(cert_file=pki.dir / "n0.crt", key_file=pki.dir / "n0.key"),
            tso=None,
        ),
        [NamespaceConfig(NS, 1, 1)],
    )
    await sa.start()
    try:
        creds = grpc.ssl_channel_credentials((pki.dir / "ca.crt").read_bytes())
        async with grpc.aio.secure_channel(node.public, creds) as ch:
            write = unary(ch, "/io.oxia.proto.v1.OxiaClient/Write", client_pb2.WriteResponse)
            res = await write(
                client_pb2.WriteRequest(
                    shard=0, puts=[client_pb2.PutRequest(key="/a", value=b"1")]
                ),
                timeout=10,
            )
            assert res.puts[0].status == client_pb2.OK
        async with grpc.aio.insecure_channel(node.public) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await unary(ch, "/io.oxia.proto.v1.OxiaClient/Write", client_pb2.WriteResponse)(
                    client_pb2.WriteRequest(shard=0), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await sa.close()


# -- processes ------------------------------------------------------------------------------------


def test_server_and_coordinator_refuse_to_start_without_proof_of_membership(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "c.yaml").write_text(
        "namespaces: [{name: default, initialShardCount: 1, replicationFactor: 1}]\n"
        "servers: [{public: '127.0.0.1:1', internal: '127.0.0.1:2'}]\n"
    )
    commands = [
        ["server", "--data-dir", str(tmp_path / "db"), "--wal-dir", str(tmp_path / "wal")],
        ["coordinator", "-f", str(tmp_path / "c.yaml"), "--metadata", "memory"],
        # TLS without client authentication proves nothing about the caller.
        [
            "server",
            "--data-dir",
            str(tmp_path / "db"),
            *tls_args("internal", pki.dir, "n0"),
            *tls_args("peer", pki.dir, "n0"),
        ],
        # A half-configured TLS flag set is one line too.
        ["server", "--internal-tls-cert-file", str(pki.dir / "n0.crt")],
    ]
    for args in commands:
        p = subprocess.run(
            [sys.executable, "-m", "pyxia", *args, "--metrics-addr", ""],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode != 0, args
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert "--cluster-secret-file" in lines[0] or "--internal-tls-*" in lines[0], lines[0]
    assert not (tmp_path / "db").exists()  # refused before touching anything


def write(cluster: ProcCluster, keys: list[str]) -> list[str]:
    """Writes ``keys`` through any server that takes them; returns those acknowledged."""
    done = []
    for k in keys:
        for m in cluster.members:
            if not m.alive:
                continue
            try:
                with cluster.public_channel(m.public) as ch:
                    res = unary_sync(ch, "Write", client_pb2.WriteResponse)(
                        client_pb2.WriteRequest(
                            shard=shard_of(cluster, k),
                            puts=[client_pb2.PutRequest(key=k, value=k.encode())],
                        ),
                        timeout=5,
                    )
            except grpc.RpcError:
                continue
            if res.puts[0].status == client_pb2.OK:
                done.append(k)
                break
    return done


def unary_sync(ch: grpc.Channel, method: str, resp: Any) -> Any:
    return ch.unary_unary(
        f"/io.oxia.proto.v1.OxiaClient/{method}",
        request_serializer=_ser,
        response_deserializer=resp.FromString,
    )


def shard_of(cluster: ProcCluster, key: str) -> int:
    """The shard of ``key`` (the cluster's 3 shards, ids 0..2 as the coordinator numbers
    them)."""
    return route(routing_hash(key), generate_shards(3))


def read_back(cluster: ProcCluster, keys: list[str]) -> None:
    for k in keys:
        leader, _ = cluster.shard_leader(shard_of(cluster, k))
        assert leader is not None
        with cluster.public_channel(leader.public) as ch:
            call = ch.unary_stream(
                "/io.oxia.proto.v1.OxiaClient/Read",
                request_serializer=_ser,
                response_deserializer=client_pb2.ReadResponse.FromString,
            )
            req = client_pb2.ReadRequest(
                shard=shard_of(cluster, k), gets=[client_pb2.GetRequest(key=k, include_value=True)]
            )
            got = [g for r in call(req, timeout=10) for g in r.gets]
        assert got[0].status == client_pb2.OK and got[0].value == k.encode(), k


@pytest.fixture
def mtls_cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster.start(tmp_path, secret=False, tls=True)
    try:
        yield c
    finally:
        c.close()


def kill_leader(cluster: ProcCluster, shard: int) -> None:
    victim, term = cluster.shard_leader(shard)
    assert victim is not None
    victim.kill()

    def moved() -> bool:
        m, t = cluster.shard_leader(shard)
        return m is not None and m is not victim and t > term

    wait_for(moved, timeout=60, interval=0.05, what=f"a new leader of shard {shard}")


def test_mtls_process_cluster_serves_and_survives_a_leader_kill(
    mtls_cluster: ProcCluster,
) -> None:
    """Mutual TLS between the members (no secret), TLS on the coordinator's port and, in a
    build with public-port TLS, on the public ports."""
    c = mtls_cluster
    acked = write(c, [f"/a/{i}" for i in range(30)])
    assert len(acked) == 30
    if c.public_tls:  # a plaintext client gets nowhere
        with grpc.insecure_channel(c.members[0].public) as ch:
            with pytest.raises(grpc.RpcError) as e:
                unary_sync(ch, "Write", client_pb2.WriteResponse)(
                    client_pb2.WriteRequest(shard=0), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    kill_leader(c, 0)
    acked += write(c, [f"/b/{i}" for i in range(30)])
    assert len(acked) == 60
    read_back(c, acked)


def serial_presented(address: str, cluster: ProcCluster) -> int:
    pki = cluster.pki
    pem, _ = fetch_peer_certificate(
        address, ((pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes())
    )
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def test_certificate_rotation_without_restart(mtls_cluster: ProcCluster) -> None:
    c = mtls_cluster
    acked = write(c, [f"/r/{i}" for i in range(20)])
    before = {m.internal: serial_presented(m.internal, c) for m in c.members}
    ca = CertificateAuthority.load(c.pki / "ca.crt", c.pki / "ca.key")
    for name in [*(m.base.name for m in c.members), "coordinator"]:
        ca.issue_files(c.pki, name)  # a new pair over the files in use
    for m in c.members:
        wait_for(
            lambda m=m: serial_presented(m.internal, c) != before[m.internal],
            timeout=15,
            interval=0.2,
            what=f"{m.internal} serving its new certificate",
        )
        new_serial = int(
            x509.load_pem_x509_certificate(
                (c.pki / f"{m.base.name}.crt").read_bytes()
            ).serial_number
        )
        assert serial_presented(m.internal, c) == new_serial
    # New connections between the servers use the new certificates: a leader change makes the
    # new leader dial its followers, and everything written before and after is there.
    kill_leader(c, 0)
    acked += write(c, [f"/s/{i}" for i in range(20)])
    assert len(acked) == 40
    read_back(c, acked)
