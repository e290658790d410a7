"""Oxia's admin API (``io.oxia.proto.v1.OxiaAdmin``) on the coordinator: each RPC with good
and bad input, the rule that the cluster config file wins for what it defines, who may change
the cluster, persistence through the metadata provider across a coordinator failover, and
``pyxia admin namespace|dataserver|shard``. In process: data servers and the coordinator in one
event loop on loopback ports chosen at runtime."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from cluster import Cluster, Node
from pyxia.config import ClusterConfig, LoadBalancerConfig, NamespaceConfig, ServerAddress
from pyxia.coordinator import admin_config
from pyxia.coordinator.admin_service import AdminAccess, is_loopback_peer
from pyxia.coordinator.coordinator import Coordinator, CoordinatorOptions
from pyxia.coordinator.dataserver_controller import LivenessOptions
from pyxia.coordinator.metadata.file import FileMetadataProvider
from pyxia.coordinator.metadata.memory import MemoryMetadataProvider
from pyxia.coordinator.metadata.provider import NOT_EXISTS, MetadataProvider
from pyxia.coordinator.model import STEADY, shards
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from pyxia.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceUnavailable,
)
from pyxia.proto import client_pb2, metadata_pb2
from pyxia.proto import oxia_admin_pb2 as pb
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import SigningInterceptor
from pyxia.security.pki import CertificateAuthority
from pyxia.security.tls import TlsOptions
from servers import wait_until
from test_go_client_interop import interop_binary  # noqa: F401 - the fixture

SERVICE = "io.oxia.proto.v1.OxiaAdmin"
SOURCE = "/etc/pyxia/cluster.yaml"


def options(**kw: Any) -> CoordinatorOptions:
    return CoordinatorOptions(
        liveness=LivenessOptions(probe_interval=0.2, probe_timeout=1.0, failures=2),
        config_poll_interval=0.1,
        balance=False,
        config_source=SOURCE,
        **kw,
    )


def make_config(nodes: list[Node], namespaces: tuple[NamespaceConfig, ...]) -> ClusterConfig:
    return ClusterConfig(
        namespaces=namespaces,
        servers=tuple(ServerAddress(n.public, n.internal) for n in nodes),
        load_balancer=LoadBalancerConfig(schedule_interval=0.2, quarantine_time=0.0),
    )


@dataclass
class Env:
    cluster: Cluster
    server: CoordinatorServer
    config: list[ClusterConfig]
    provider: MetadataProvider

    @property
    def coordinator(self) -> Coordinator:
        assert self.server.coordinator is not None
        return self.server.coordinator

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.server.admin_port}"

    def call(
        self, method: str, req: Any, res_type: Any, *, secret: ClusterSecret | None = None
    ) -> Any:
        """One blocking OxiaAdmin call (run it in a thread)."""
        channel = grpc.insecure_channel(self.admin)
        if secret is not None:
            channel = grpc.intercept_channel(channel, SigningInterceptor(secret))
        with channel as ch:
            return ch.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=type(req).SerializeToString,
                response_deserializer=res_type.FromString,
            )(req, timeout=30)

    async def acall(self, method: str, req: Any, res_type: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(self.call, method, req, res_type, **kw)

    async def refused(self, method: str, req: Any, res_type: Any, **kw: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            await self.acall(method, req, res_type, **kw)
        return info.value


async def start_env(
    base: Path,
    n_nodes: int = 3,
    *,
    in_config: int = 3,
    provider: MetadataProvider | None = None,
    cluster: Cluster | None = None,
    **server_kw: Any,
) -> Env:
    cluster = cluster or await Cluster.start(base, n_nodes)
    cfg = [make_config(cluster.nodes[:in_config], (NamespaceConfig("default", 2, 3),))]
    provider = provider or MemoryMetadataProvider()
    coord = server_kw.pop("coordinator", None) or options()
    server = CoordinatorServer(
        provider,
        lambda: cfg[0],
        CoordinatorServerOptions(
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            admin_addr="127.0.0.1:0",
            coordinator=coord,
            **server_kw,
        ),
    )
    await server.start()
    await server.wait_leading()
    return Env(cluster, server, cfg, provider)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await start_env(tmp_path, 4)
    try:
        yield e
    finally:
        await e.server.close()
        await e.cluster.close()


def steady(env: Env, namespace: str) -> bool:
    ns = env.coordinator.status.namespaces.get(namespace)
    return (
        ns is not None
        and bool(ns.shards)
        and all(m.status == STEADY and m.HasField("leader") for m in ns.shards.values())
    )


def node_of(env: Env, internal: str) -> Node:
    return next(n for n in env.cluster.nodes if n.internal == internal)


async def write(env: Env, shard: int, key: str) -> None:
    """A put on the shard's leader, retried while the shard answers retryably (a planned move
    the balancer started may still be handing over)."""

    async def attempt() -> bool:
        meta = next(m for _, s, m in shards(env.coordinator.status) if s == shard)
        if not meta.HasField("leader"):
            return False
        node = node_of(env, meta.leader.internal)
        try:
            res = await env.cluster.channel(node.public).unary_unary(
                "/io.oxia.proto.v1.OxiaClient/Write",
                request_serializer=client_pb2.WriteRequest.SerializeToString,
                response_deserializer=client_pb2.WriteResponse.FromString,
            )(
                client_pb2.WriteRequest(
                    shard=shard, puts=[client_pb2.PutRequest(key=key, value=b"v")]
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                return False
            raise
        assert res.puts[0].status == client_pb2.OK
        return True

    await wait_until(attempt, timeout=30, what=f"a write on shard {shard}")


def namespace(name: str, shards_: int = 2, rf: int = 3, **kw: Any) -> metadata_pb2.Namespace:
    return metadata_pb2.Namespace(
        name=name,
        initial_shard_count=shards_,
        replication_factor=rf,
        key_sorting=kw.pop("key_sorting", "hierarchical"),
        **kw,
    )


def data_server(name: str, node: Node, **labels: str) -> metadata_pb2.DataServer:
    return metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(
            name=name, public=node.public, internal=node.internal
        ),
        metadata=metadata_pb2.DataServerMetadata(labels=labels),
    )


# -- the proto is Oxia's --------------------------------------------------------------------------

OXIA_REPO = Path("/work/.mirror/oxia-db+oxia/repo")


def _oxia_admin_proto() -> str:
    if not OXIA_REPO.exists():
        pytest.skip("Oxia's source snapshot is not on this machine")
    r = subprocess.run(
        ["git", "-C", str(OXIA_REPO), "show", "v0.17.1:common/proto/admin.proto"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"Oxia v0.17.1's admin.proto unavailable: {r.stderr[-200:]}")
    return r.stdout


def test_field_numbers_and_methods_match_oxia_0_17() -> None:
    text = _oxia_admin_proto()
    messages = dict(re.findall(r"message (\w+) \{(.*?)\n\}", text, re.S))
    assert messages, "no messages parsed"
    for name, body in messages.items():
        ours = getattr(pb, name).DESCRIPTOR
        fields = re.findall(r"(?:optional |repeated )?([\w.]+) (\w+) = (\d+);", body)
        assert {f.name: f.number for f in ours.fields} == {
            fname: int(num) for _, fname, num in fields
        }, name
        for ftype, fname, _ in fields:
            f = ours.fields_by_name[fname]
            if f.message_type is not None:
                assert f.message_type.name == ftype.split(".")[-1], (name, fname)
    methods = re.findall(r"rpc (\w+)\((\w+)\) returns \((\w+)\)", text)
    service = pb.DESCRIPTOR.services_by_name["OxiaAdmin"]
    assert service.full_name == SERVICE
    assert {(m.name, m.input_type.name, m.output_type.name) for m in service.methods} == set(
        methods
    )
    # and the metadata messages the admin API carries
    assert {f.name: f.number for f in metadata_pb2.DataServerStatus.DESCRIPTOR.fields} == {
        "state": 1,
        "supported_features": 2,
    }
    assert metadata_pb2.DataServerState.Value("DATA_SERVER_STATE_DRAINING") == 3


# -- pure rules -----------------------------------------------------------------------------------


def _file() -> ClusterConfig:
    return ClusterConfig(
        namespaces=(NamespaceConfig("default", 1, 1),),
        servers=(ServerAddress("h1:6648", "h1:6649"), ServerAddress("h2:6648", "h2:6649", "s2")),
    )


def test_the_file_wins_for_what_it_defines_and_a_reload_keeps_the_rest() -> None:
    managed = metadata_pb2.ClusterConfiguration()
    status = metadata_pb2.ClusterStatus()
    admin_config.create_namespace(managed, _file(), status, namespace("api", 1, 2), SOURCE)
    ds = metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(name="s3", public="h3:6648", internal="h3:6649"),
        metadata=metadata_pb2.DataServerMetadata(labels={"zone": "a"}),
    )
    admin_config.create_data_server(managed, _file(), ds, SOURCE)
    eff = admin_config.effective_config(_file(), managed)
    assert [n.name for n in eff.namespaces] == ["default", "api"]
    assert [s.internal for s in eff.servers] == ["h1:6649", "h2:6649", "h3:6649"]
    assert eff.labels_by_internal() == {"h3:6649": {"zone": "a"}}
    # the API cannot change what the file defines; the error names the file
    for fn in (
        lambda: admin_config.delete_namespace(managed, _file(), "default", SOURCE),
        lambda: admin_config.patch_namespace(
            managed, _file(), metadata_pb2.Namespace(name="default", replication_factor=1), SOURCE
        ),
        lambda: admin_config.delete_data_server(managed, _file(), "s2", SOURCE),
        lambda: admin_config.delete_data_server(managed, _file(), "h1:6649", SOURCE),
    ):
        with pytest.raises(FailedPrecondition, match=re.escape(SOURCE)):
            fn()
    # a reload that does not mention the API's items keeps them
    edited = replace(_file(), namespaces=(*_file().namespaces, NamespaceConfig("more", 1, 1)))
    assert admin_config.take_over(managed, edited) == []
    eff = admin_config.effective_config(edited, managed)
    assert [n.name for n in eff.namespaces] == ["default", "more", "api"]
    # a file that defines them takes them over, and says so
    taking = replace(
        edited,
        namespaces=(*edited.namespaces, NamespaceConfig("api", 1, 1)),
        servers=(*edited.servers, ServerAddress("h3:6648", "h3:6649")),
    )
    notes = admin_config.take_over(managed, taking)
    assert len(notes) == 2 and "namespace 'api'" in notes[0] and "'s3'" in notes[1]
    assert "replicationFactor=2" in notes[0]
    assert not managed.namespaces and not managed.servers and not managed.server_metadata


def test_the_effective_config_keeps_every_other_setting_of_the_file() -> None:
    """Only namespaces, servers and labels are merged; the file's auto-split and balancer
    settings stay (the merge once rebuilt the config and dropped auto-split: never split)."""
    from pyxia.config import AutoSplitConfig

    file = replace(
        _file(),
        auto_split=AutoSplitConfig(enabled=True, max_throughput_ops=5),
        load_balancer=LoadBalancerConfig(),
    )
    managed = metadata_pb2.ClusterConfiguration()
    admin_config.create_namespace(
        managed, file, metadata_pb2.ClusterStatus(), namespace("api", 1, 1), SOURCE
    )
    eff = admin_config.effective_config(file, managed)
    assert eff.auto_split == file.auto_split
    assert eff.load_balancer == file.load_balancer
    assert [n.name for n in eff.namespaces] == ["default", "api"]


def test_requests_are_validated_before_anything_changes() -> None:
    managed = metadata_pb2.ClusterConfiguration()
    status = metadata_pb2.ClusterStatus()
    f = _file()
    bad_namespaces: list[tuple[metadata_pb2.Namespace, type[Exception]]] = [
        (namespace("../etc", 1, 1), InvalidArgument),
        (namespace("", 1, 1), InvalidArgument),
        (namespace("x" * 200, 1, 1), InvalidArgument),
        (namespace("ok", 0, 1), InvalidArgument),
        (namespace("ok", admin_config.MAX_INITIAL_SHARDS + 1, 1), InvalidArgument),
        (namespace("ok", 1, 0), InvalidArgument),
        (namespace("ok", 1, 3), FailedPrecondition),  # 2 servers
        (namespace("ok", 1, 1, key_sorting=""), InvalidArgument),
        (namespace("ok", 1, 1, key_sorting="random"), InvalidArgument),
        (namespace("default", 1, 1), AlreadyExists),
    ]
    with_aa = namespace("ok", 1, 1)
    with_aa.anti_affinities.add(labels=["zone"], mode="strict")
    bad_namespaces.append((with_aa, InvalidArgument))
    for req, err in bad_namespaces:
        with pytest.raises(err):
            admin_config.create_namespace(managed, f, status, req, SOURCE)
    # a namespace whose shards are still being deleted cannot come back yet
    status.namespaces["gone"].shards[7].status = metadata_pb2.Deleting
    with pytest.raises(FailedPrecondition, match="still being deleted"):
        admin_config.create_namespace(managed, f, status, namespace("gone", 1, 1), SOURCE)

    def ds(name: str = "x", public: str = "a:1", internal: str = "a:2", **labels: str) -> Any:
        return metadata_pb2.DataServer(
            identity=metadata_pb2.DataServerIdentity(name=name, public=public, internal=internal),
            metadata=metadata_pb2.DataServerMetadata(labels=labels),
        )

    unnamed = ds()
    unnamed.identity.ClearField("name")
    bad_servers: list[tuple[metadata_pb2.DataServer, type[Exception]]] = [
        (metadata_pb2.DataServer(), InvalidArgument),
        (unnamed, InvalidArgument),
        (ds(public="a"), InvalidArgument),
        (ds(internal="a:0"), InvalidArgument),
        (ds(name="x/../y"), InvalidArgument),
        (ds(name="s2"), AlreadyExists),
        (ds(internal="h1:6649"), AlreadyExists),
        (ds(**{"bad key!": "v"}), InvalidArgument),
        (ds(k="line\nbreak"), InvalidArgument),
    ]
    for req, err in bad_servers:
        with pytest.raises(err):
            admin_config.create_data_server(managed, f, req, SOURCE)
    with pytest.raises(NotFound):
        admin_config.delete_namespace(managed, f, "nope", SOURCE)
    with pytest.raises(NotFound):
        admin_config.delete_data_server(managed, f, "nope", SOURCE)
    for patch in (
        metadata_pb2.Namespace(name="x", initial_shard_count=2),
        metadata_pb2.Namespace(name="x", key_sorting="natural"),
    ):
        with pytest.raises(InvalidArgument, match="cannot be patched"):
            admin_config.patch_namespace(managed, f, patch, SOURCE)
    assert managed == metadata_pb2.ClusterConfiguration()  # nothing was changed


def test_split_requests_are_checked_against_the_namespace_and_the_shard() -> None:
    cfg = replace(
        _file(), namespaces=(NamespaceConfig("default", 2, 1), NamespaceConfig("b", 1, 1))
    )
    status = metadata_pb2.ClusterStatus()
    for ns, shard, lo, hi in (("default", 0, 0, 0x7FFFFFFF), ("default", 1, 0x80000000, 0xFFFFFFFF),
                              ("b", 2, 0, 0xFFFFFFFF), ("b", 3, 5, 5)):  # fmt: skip
        r = status.namespaces[ns].shards[shard].int32_hash_range
        r.min, r.max = lo, hi
    # a namespace being deleted (gone from the configuration, shards left) is not found
    status.namespaces["leaving"].shards[9].int32_hash_range.max = 10

    def check(ns: str, shard: int, point: int | None) -> None:
        admin_config.check_split_request(cfg, status, ns, shard, point)

    refused: list[tuple[str, int, int | None, type[Exception], str]] = [
        ("", 0, None, InvalidArgument, "must not be empty"),
        ("bad/name", 0, None, InvalidArgument, "path separator"),
        ("nope", 0, None, NotFound, "namespace 'nope' not found"),
        ("leaving", 9, None, NotFound, "namespace 'leaving' not found"),
        ("default", -1, None, InvalidArgument, "out of range"),
        ("default", 7, None, NotFound, "shard 7 not found in namespace 'default'"),
        ("default", 2, None, NotFound, "shard 2 not found in namespace 'default'"),  # b's
        ("b", 3, None, InvalidArgument, "too small to split"),
        ("b", 3, 5, InvalidArgument, "too small to split"),
        ("default", 1, 0x7FFFFFFF, InvalidArgument, "outside shard 1's hash range"),  # below
        ("default", 1, 0xFFFFFFFF, InvalidArgument, "below 4294967295"),  # the range's end
        ("default", 0, 0x7FFFFFFF, InvalidArgument, "outside"),
    ]
    for ns, shard, point, err, why in refused:
        with pytest.raises(err, match=re.escape(why)):
            check(ns, shard, point)
    # Oxia's rule: min <= point < max (left child [min, point], right child [point+1, max])
    for ns, shard, point in (("default", 0, None), ("default", 0, 0), ("default", 0, 0x7FFFFFFE),
                             ("default", 1, 0x80000000), ("b", 2, 0xFFFFFFFE)):  # fmt: skip
        check(ns, shard, point)


def test_a_server_hosting_replicas_keeps_its_internal_address() -> None:
    managed = metadata_pb2.ClusterConfiguration()
    f = _file()
    ds = metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(name="s3", public="h3:1", internal="h3:2")
    )
    admin_config.create_data_server(managed, f, ds, SOURCE)
    move = metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(name="s3", internal="h4:2")
    )
    with pytest.raises(FailedPrecondition, match="create a data server"):
        admin_config.patch_data_server(managed, f, move, SOURCE, lambda _: True)
    out, before = admin_config.patch_data_server(managed, f, move, SOURCE, lambda _: False)
    assert (before.internal, out.identity.internal) == ("h3:2", "h4:2")


def test_loopback_peers() -> None:
    assert is_loopback_peer("ipv4:127.0.0.1:5000")
    assert is_loopback_peer("ipv4:127.3.2.1:1")
    assert is_loopback_peer("ipv6:[::1]:5000")
    assert not is_loopback_peer("ipv4:10.0.0.1:5000")
    assert not is_loopback_peer("ipv6:[2001:db8::1]:5000")
    assert not is_loopback_peer("unix:/tmp/sock")
    assert not is_loopback_peer("ipv4:not-an-ip:1")
    assert not is_loopback_peer(None)
    secret = ClusterSecret(b"k" * 32)
    access = AdminAccess(secret=secret)
    assert access.refusal("/m", (), "ipv4:127.0.0.1:1") is not None
    assert (
        AdminAccess(secret=secret, trust_loopback=True).refusal("/m", (), "ipv4:127.0.0.1:1")
        is None
    )
    assert AdminAccess(secret=secret, trust_loopback=True).refusal("/m", (), "ipv4:10.1.1.1:1")
    assert access.refusal("/m", (secret.sign("/m"),), "ipv4:10.1.1.1:1") is None
    assert access.refusal("/other", (secret.sign("/m"),), "ipv4:10.1.1.1:1") is not None
    assert AdminAccess(mutual_tls=True).refusal("/m", (), None) is None
    assert "no cluster secret" in (AdminAccess().refusal("/m", (), None) or "")


# -- RPCs on a running cluster --------------------------------------------------------------------


async def test_namespace_create_get_patch_delete(env: Env) -> None:
    await wait_until(lambda: steady(env, "default"), what="default elected")
    res = await env.acall(
        "CreateNamespace",
        pb.CreateNamespaceRequest(namespace=namespace("orders", 2, 3)),
        pb.CreateNamespaceResponse,
    )
    assert res.namespace.name == "orders" and res.namespace.notifications_enabled
    await wait_until(lambda: steady(env, "orders"), what="the new namespace's shards elected")
    created = sorted(env.coordinator.status.namespaces["orders"].shards)
    assert len(created) == 2
    for s in created:
        await write(env, s, f"/order-{s}")
    got = await env.acall(
        "GetNamespace", pb.GetNamespaceRequest(namespace="orders"), pb.GetNamespaceResponse
    )
    assert got.namespace.namespace.replication_factor == 3
    assert sorted(got.namespace.namespace_status.shards) == created
    listed = await env.acall(
        "ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse
    )
    assert sorted(v.namespace.name for v in listed.namespaces) == ["default", "orders"]
    # patch what Oxia lets change
    patched = await env.acall(
        "PatchNamespace",
        pb.PatchNamespaceRequest(
            namespace=metadata_pb2.Namespace(
                name="orders", replication_factor=2, notifications_enabled=False
            )
        ),
        pb.PatchNamespaceResponse,
    )
    assert patched.namespace.replication_factor == 2
    assert not patched.namespace.notifications_enabled
    assert patched.namespace.initial_shard_count == 2
    cfg = env.coordinator.namespace_config("orders")
    assert cfg is not None and not cfg.notifications_enabled and cfg.replication_factor == 2
    # delete: the shards go, on the servers too
    deleted = await env.acall(
        "DeleteNamespace", pb.DeleteNamespaceRequest(namespace="orders"), pb.DeleteNamespaceResponse
    )
    assert deleted.namespace.name == "orders"
    await wait_until(
        lambda: "orders" not in env.coordinator.status.namespaces,
        timeout=30,
        what="the namespace's shards deleted",
    )
    for node in env.cluster.nodes:
        assert node.server is not None
        assert not any(s in node.s.director.leaders for s in created)
        d = node.base / "db" / "orders"
        assert not d.exists() or not any(d.iterdir())
    e = await env.refused(
        "GetNamespace", pb.GetNamespaceRequest(namespace="orders"), pb.GetNamespaceResponse
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requests_get_clear_codes_and_change_nothing(env: Env) -> None:
    await wait_until(lambda: steady(env, "default"), what="default elected")
    first = env.cluster.nodes[0].internal
    cases: list[tuple[str, Any, Any, grpc.StatusCode, str]] = [
        ("CreateNamespace", pb.CreateNamespaceRequest(), pb.CreateNamespaceResponse,
         grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
        ("CreateNamespace", pb.CreateNamespaceRequest(namespace=namespace("a/b")),
         pb.CreateNamespaceResponse, grpc.StatusCode.INVALID_ARGUMENT, "path separator"),
        ("CreateNamespace", pb.CreateNamespaceRequest(namespace=namespace("n", 0)),
         pb.CreateNamespaceResponse, grpc.StatusCode.INVALID_ARGUMENT, "initial shard count"),
        ("CreateNamespace", pb.CreateNamespaceRequest(namespace=namespace("n", 1, 9)),
         pb.CreateNamespaceResponse, grpc.StatusCode.FAILED_PRECONDITION, "only 3 data servers"),
        ("CreateNamespace", pb.CreateNamespaceRequest(namespace=namespace("default")),
         pb.CreateNamespaceResponse, grpc.StatusCode.ALREADY_EXISTS, "already exists"),
        ("DeleteNamespace", pb.DeleteNamespaceRequest(namespace="default"),
         pb.DeleteNamespaceResponse, grpc.StatusCode.FAILED_PRECONDITION, SOURCE),
        ("DeleteNamespace", pb.DeleteNamespaceRequest(namespace="nope"),
         pb.DeleteNamespaceResponse, grpc.StatusCode.NOT_FOUND, "not found"),
        ("PatchNamespace", pb.PatchNamespaceRequest(
            namespace=metadata_pb2.Namespace(name="default", notifications_enabled=False)),
         pb.PatchNamespaceResponse, grpc.StatusCode.FAILED_PRECONDITION, "the file wins"),
        ("GetNamespace", pb.GetNamespaceRequest(namespace=""), pb.GetNamespaceResponse,
         grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
        ("GetDataServer", pb.GetDataServerRequest(data_server="nope"), pb.GetDataServerResponse,
         grpc.StatusCode.NOT_FOUND, "not found"),
        ("CreateDataServer", pb.CreateDataServerRequest(
            data_server=metadata_pb2.DataServer(identity=metadata_pb2.DataServerIdentity(
                name="x", public="not an address", internal="h:1"))),
         pb.CreateDataServerResponse, grpc.StatusCode.INVALID_ARGUMENT, "public address"),
        ("DeleteDataServer", pb.DeleteDataServerRequest(data_server=first),
         pb.DeleteDataServerResponse, grpc.StatusCode.FAILED_PRECONDITION, SOURCE),
        ("SplitShard", pb.SplitShardRequest(namespace="nope", shard=0), pb.SplitShardResponse,
         grpc.StatusCode.NOT_FOUND, "not found"),
        ("SplitShard", pb.SplitShardRequest(namespace="default", shard=99), pb.SplitShardResponse,
         grpc.StatusCode.NOT_FOUND, "shard 99"),
        ("SplitShard", pb.SplitShardRequest(namespace="default", shard=-1), pb.SplitShardResponse,
         grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ]  # fmt: skip

    def state() -> tuple[bytes, list[tuple[str, int]]]:
        st = env.coordinator.status
        return st.admin_managed.SerializeToString(deterministic=True), [
            (ns, s) for ns, s, _ in shards(st)
        ]

    before = state()
    for method, req, res_type, code, text in cases:
        e = await env.refused(method, req, res_type)
        assert e.code() == code, (method, e.code(), e.details())
        assert text in (e.details() or ""), (method, e.details())
    assert state() == before
    listed = await env.acall(
        "ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse
    )
    assert [v.namespace.name for v in listed.namespaces] == ["default"]


async def test_split_shard_is_wired_to_the_coordinator(env: Env) -> None:
    """SplitShard checks the request at the boundary and hands only a valid one to the
    coordinator's ``split_shard`` (a fake here), whose refusals come back with their codes."""
    await wait_until(lambda: steady(env, "default"), what="default elected")
    shard0 = min(env.coordinator.status.namespaces["default"].shards)
    r = env.coordinator.status.namespaces["default"].shards[shard0].int32_hash_range

    async def split(req: pb.SplitShardRequest) -> pb.SplitShardResponse:
        res: pb.SplitShardResponse = await env.acall("SplitShard", req, pb.SplitShardResponse)
        return res

    async def refused(req: pb.SplitShardRequest) -> tuple[grpc.StatusCode, str]:
        e = await env.refused("SplitShard", req, pb.SplitShardResponse)
        return e.code(), e.details() or ""

    calls: list[tuple[str, int, int | None]] = []
    answer: list[BaseException | tuple[int, int]] = [(100, 101)]

    async def split_shard(ns: str, shard: int, split_point: int | None) -> tuple[int, int]:
        calls.append((ns, shard, split_point))
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    vars(env.coordinator)["split_shard"] = split_shard  # the coordinator's method, faked
    bad = [
        (pb.SplitShardRequest(namespace="", shard=shard0), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.SplitShardRequest(namespace="../x", shard=shard0), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.SplitShardRequest(namespace="nope", shard=shard0), grpc.StatusCode.NOT_FOUND),
        (pb.SplitShardRequest(namespace="default", shard=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.SplitShardRequest(namespace="default", shard=9999), grpc.StatusCode.NOT_FOUND),
        (pb.SplitShardRequest(namespace="default", shard=shard0, split_point=r.max),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]  # fmt: skip
    if r.min > 0:
        req = pb.SplitShardRequest(namespace="default", shard=shard0, split_point=r.min - 1)
        bad.append((req, grpc.StatusCode.INVALID_ARGUMENT))
    for req, code in bad:
        got, why = await refused(req)
        assert got == code and why.startswith("oxia: "), (req, got, why)
    assert calls == []  # nothing invalid reached the coordinator
    res = await split(pb.SplitShardRequest(namespace="default", shard=shard0))
    assert (res.left_child_shard, res.right_child_shard) == (100, 101)
    await split(pb.SplitShardRequest(namespace="default", shard=shard0, split_point=r.min))
    await split(pb.SplitShardRequest(namespace="default", shard=shard0, split_point=r.max - 1))
    assert calls == [
        ("default", shard0, None),
        ("default", shard0, r.min),
        ("default", shard0, r.max - 1),
    ]
    # what the coordinator refuses (a shard not steady now, say) comes back with its code
    answer[0] = ResourceUnavailable(f"oxia: shard {shard0} is not in steady state")
    code, why = await refused(pb.SplitShardRequest(namespace="default", shard=shard0))
    assert code == grpc.StatusCode.UNAVAILABLE and "steady" in why


async def test_data_server_added_is_used_and_removed_is_evacuated(tmp_path: Path) -> None:
    coord = replace(options(), balance=True)
    env = await start_env(tmp_path, 4, coordinator=coord)
    n3 = env.cluster.nodes[3]
    try:
        await wait_until(lambda: steady(env, "default"), what="default elected")
        res = await env.acall(
            "CreateDataServer",
            pb.CreateDataServerRequest(data_server=data_server("fourth", n3, zone="b")),
            pb.CreateDataServerResponse,
        )
        assert res.data_server.identity.name == "fourth"

        async def running() -> bool:
            v = await env.acall(
                "GetDataServer", pb.GetDataServerRequest(data_server="fourth"),
                pb.GetDataServerResponse,
            )  # fmt: skip
            return v.data_server.data_server_status.state == metadata_pb2.DATA_SERVER_STATE_RUNNING

        await wait_until(running, what="the new server probed and running")
        view = await env.acall(
            "ListDataServers", pb.ListDataServersRequest(), pb.ListDataServersResponse
        )
        assert [v.data_server.identity.name for v in view.data_servers][-1] == "fourth"
        assert dict(view.data_servers[-1].data_server.metadata.labels) == {"zone": "b"}
        assert view.data_servers[0].data_server.identity.name == env.cluster.nodes[0].internal

        def hosts(node: Node) -> bool:
            return any(
                any(m.internal == node.internal for m in meta.ensemble)
                for _, _, meta in shards(env.coordinator.status)
            )

        await wait_until(lambda: hosts(n3), timeout=30, what="the balancer moving a replica")
        # the patch of its public address reaches the shard records
        patched = await env.acall(
            "PatchDataServer",
            pb.PatchDataServerRequest(
                data_server=metadata_pb2.DataServer(
                    identity=metadata_pb2.DataServerIdentity(name="fourth"),
                    metadata=metadata_pb2.DataServerMetadata(labels={"zone": "c"}),
                )
            ),
            pb.PatchDataServerResponse,
        )
        assert dict(patched.data_server.metadata.labels) == {"zone": "c"}
        e = await env.refused(
            "PatchDataServer",
            pb.PatchDataServerRequest(
                data_server=metadata_pb2.DataServer(
                    identity=metadata_pb2.DataServerIdentity(name="fourth", internal="h:9")
                )
            ),
            pb.PatchDataServerResponse,
        )
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        # removing it moves its replicas back to the others
        await env.acall(
            "DeleteDataServer",
            pb.DeleteDataServerRequest(data_server="fourth"),
            pb.DeleteDataServerResponse,
        )
        await wait_until(
            lambda: not hosts(n3) and steady(env, "default"),
            timeout=40,
            what="the removed server evacuated",
        )
        for s in env.coordinator.status.namespaces["default"].shards:
            await write(env, s, f"/after-{s}")
        # RF 3 with 3 servers left: none can go
        e = await env.refused(
            "CreateNamespace",
            pb.CreateNamespaceRequest(namespace=namespace("big", 1, 4)),
            pb.CreateNamespaceResponse,
        )
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await env.server.close()
        await env.cluster.close()


async def test_changes_need_the_cluster_proof(tmp_path: Path) -> None:
    secret = ClusterSecret(b"s" * 32)
    env = await start_env(tmp_path, 3, coordinator=options(cluster_secret=secret))
    try:
        req = pb.CreateNamespaceRequest(namespace=namespace("guarded", 1, 1))
        e = await env.refused("CreateNamespace", req, pb.CreateNamespaceResponse)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "--cluster-secret-file" in (e.details() or "")
        assert "guarded" not in env.coordinator.status.namespaces
        # SplitShard too, before its request is even looked at
        e = await env.refused("SplitShard", pb.SplitShardRequest(), pb.SplitShardResponse)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        other = ClusterSecret(b"o" * 32)
        e = await env.refused("CreateNamespace", req, pb.CreateNamespaceResponse, secret=other)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        # reads stay open; the proof admits a change
        await env.acall("ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse)
        await env.acall("CreateNamespace", req, pb.CreateNamespaceResponse, secret=secret)
        assert "guarded" in env.coordinator.status.namespaces
        # pyxia's MoveLeader follows the same rule
        with grpc.insecure_channel(env.admin) as ch:
            from pyxia.proto import admin_pb2

            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(
                    ch.unary_unary(
                        "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
                        request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
                        response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
                    ),
                    admin_pb2.MoveLeaderRequest(namespace="default", shard=0),
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await env.server.close()
        await env.cluster.close()


async def test_loopback_trust_admits_a_client_without_proof(tmp_path: Path) -> None:
    secret = ClusterSecret(b"s" * 32)
    env = await start_env(
        tmp_path, 3, coordinator=options(cluster_secret=secret), admin_trust_loopback=True
    )
    try:
        await env.acall(
            "CreateNamespace",
            pb.CreateNamespaceRequest(namespace=namespace("local", 1, 1)),
            pb.CreateNamespaceResponse,
        )
        assert "local" in env.coordinator.status.namespaces
    finally:
        await env.server.close()
        await env.cluster.close()


async def test_changes_survive_a_coordinator_failover_and_a_file_reload(tmp_path: Path) -> None:
    cluster = await Cluster.start(tmp_path / "nodes", 4)
    meta_dir = tmp_path / "metadata"
    env = await start_env(tmp_path, cluster=cluster, provider=FileMetadataProvider(meta_dir))
    n3 = cluster.nodes[3]
    try:
        await wait_until(lambda: steady(env, "default"), what="default elected")
        await env.acall(
            "CreateNamespace",
            pb.CreateNamespaceRequest(namespace=namespace("kept", 2, 2)),
            pb.CreateNamespaceResponse,
        )
        await env.acall(
            "CreateDataServer",
            pb.CreateDataServerRequest(data_server=data_server("extra", n3, rack="r1")),
            pb.CreateDataServerResponse,
        )
        await wait_until(lambda: steady(env, "kept"), what="kept elected")
        kept_shards = sorted(env.coordinator.status.namespaces["kept"].shards)
        for s in kept_shards:
            await write(env, s, f"/kept-{s}")
        # the file changes (a new namespace): the API's items stay
        env.config[0] = replace(
            env.config[0],
            namespaces=(*env.config[0].namespaces, NamespaceConfig("from-file", 1, 1)),
        )
        await wait_until(lambda: steady(env, "from-file"), what="the file's new namespace")
        assert [n.name for n in env.coordinator.config.namespaces] == [
            "default",
            "from-file",
            "kept",
        ]
        assert n3.internal in {s.internal for s in env.coordinator.config.servers}
        await env.server.close()
        # another coordinator takes over from the same metadata
        env2 = await start_env(tmp_path, cluster=cluster, provider=FileMetadataProvider(meta_dir))
        env2.config[0] = env.config[0]
        env = env2
        c = env.coordinator
        assert [n.name for n in c.status.admin_managed.namespaces] == ["kept"]
        assert sorted(c.status.namespaces["kept"].shards) == kept_shards  # not created again
        got = await env.acall(
            "GetDataServer", pb.GetDataServerRequest(data_server="extra"), pb.GetDataServerResponse
        )
        assert dict(got.data_server.data_server.metadata.labels) == {"rack": "r1"}
        await wait_until(lambda: steady(env, "kept"), what="kept led again")
        for s in kept_shards:
            await write(env, s, f"/kept-again-{s}")
        # the file takes "kept" over: the API's definition leaves the status, the shards stay
        env.config[0] = replace(
            env.config[0],
            namespaces=(*env.config[0].namespaces, NamespaceConfig("kept", 2, 2)),
        )
        await wait_until(
            lambda: not env.coordinator.status.admin_managed.namespaces,
            what="the file taking the namespace over",
        )
        assert sorted(env.coordinator.status.namespaces["kept"].shards) == kept_shards
        e = await env.refused(
            "DeleteNamespace",
            pb.DeleteNamespaceRequest(namespace="kept"),
            pb.DeleteNamespaceResponse,
        )
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await env.server.close()
        await cluster.close()


async def test_a_reload_that_breaks_an_api_namespace_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused file is said once, kept as it was, and tried again after each admin change
    (which may have made it fit) — not only when the file changes."""

    def refusals() -> int:
        return sum("cluster config not reloaded" in r.getMessage() for r in caplog.records)

    caplog.set_level(logging.WARNING, logger="pyxia.coordinator")
    n3 = env.cluster.nodes[3]
    await env.acall(
        "CreateDataServer",
        pb.CreateDataServerRequest(data_server=data_server("d4", n3)),
        pb.CreateDataServerResponse,
    )
    await env.acall(
        "CreateNamespace",
        pb.CreateNamespaceRequest(namespace=namespace("wide", 1, 4)),
        pb.CreateNamespaceResponse,
    )
    file_before = env.coordinator.file_config
    # the file drops a server: 3 left for an RF-4 namespace; the reload is refused, nothing lost
    env.config[0] = replace(env.config[0], servers=env.config[0].servers[:2])
    await wait_until(
        lambda: env.coordinator._refused_file == env.config[0], what="the reload refused"
    )
    assert env.coordinator.file_config == file_before
    assert len(env.coordinator.config.servers) == 4
    assert refusals() == 1
    # an admin change that still leaves the file unfit: tried again, refused again
    await env.acall(
        "PatchDataServer",
        pb.PatchDataServerRequest(data_server=data_server("d4", n3, zone="b")),
        pb.PatchDataServerResponse,
    )
    await wait_until(lambda: refusals() == 2, what="the reload tried and refused again")
    assert env.coordinator._refused_file == env.config[0]
    assert env.coordinator.file_config == file_before
    # an admin change that makes the file fit: the refused file applies without being edited
    await env.acall(
        "DeleteNamespace", pb.DeleteNamespaceRequest(namespace="wide"), pb.DeleteNamespaceResponse
    )
    await wait_until(
        lambda: env.coordinator.file_config == env.config[0],
        what="the refused file applied after the admin change",
    )
    assert env.coordinator._refused_file is None
    assert [admin_config.server_key(s) for s in env.coordinator.config.servers] == [
        *(admin_config.server_key(s) for s in env.config[0].servers),
        "d4",
    ]


# -- pyxia admin ... ------------------------------------------------------------------------------


def run_cli(args: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from pyxia.cli import main

    r = CliRunner().invoke(main, ["admin", *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # a bug, not a refusal: show it
    return r.exit_code, r.output


async def test_cli_mirrors_oxia_admin(env: Env) -> None:
    async def cli(*args: str) -> tuple[int, str]:
        return await asyncio.to_thread(run_cli, [*args, "--admin-address", env.admin])

    await wait_until(lambda: steady(env, "default"), what="default elected")
    code, out = await cli("namespace", "create", "cli-ns", "--initial-shards", "2",
                          "--replication-factor", "2", "--key-sorting", "natural")  # fmt: skip
    assert code == 0, out
    assert out.split("\n")[0].split() == ["NAME", "INITIAL_SHARDS", "REPLICATION_FACTOR"]
    assert out.split("\n")[1].split() == ["cli-ns", "2", "2"]
    code, out = await cli("namespace", "get", "cli-ns", "-o", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc[0]["namespace"]["key_sorting"] == "natural"
    code, out = await cli("namespace", "list", "-o", "yaml")
    assert code == 0, out
    names = [v["namespace"]["name"] for v in yaml.safe_load(out)]
    assert names == ["default", "cli-ns"]
    code, out = await cli("namespace", "get")
    assert code == 0 and "cli-ns" in out and "default" in out
    code, out = await cli("namespace", "patch", "cli-ns", "--no-notifications", "-o", "json")
    assert code == 0 and json.loads(out)["notifications_enabled"] is False, out
    code, out = await cli("namespace", "patch", "cli-ns")
    assert code != 0 and "at least one field" in out
    code, out = await cli("namespace", "delete", "default")
    assert code == 1 and "FAILED_PRECONDITION" in out and SOURCE in out, out
    code, out = await cli("namespace", "create", "bad/name", "--initial-shards", "1",
                          "--replication-factor", "1")  # fmt: skip
    assert code == 1 and "INVALID_ARGUMENT" in out, out
    n3 = env.cluster.nodes[3]
    code, out = await cli("dataserver", "create", "d4", "--public", n3.public, "--internal",
                          n3.internal, "--label", "zone=a")  # fmt: skip
    assert code == 0, out
    assert out.split("\n")[1].split() == ["d4", n3.public, n3.internal, "zone=a"]
    code, out = await cli("dataserver", "list")
    assert code == 0 and out.split("\n")[0].split() == ["NAME", "PUBLIC", "INTERNAL", "STATE"]
    assert len(out.strip().split("\n")) == 5
    code, out = await cli("dataserver", "get", "d4", "-o", "json")
    assert code == 0 and json.loads(out)[0]["data_server"]["identity"]["name"] == "d4", out
    code, out = await cli("dataserver", "patch", "d4", "--label", "zone=b", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out)["metadata"]["labels"] == {"zone": "b"}, out
    code, out = await cli("dataserver", "delete", "d4")
    assert code == 0 and "d4" in out
    code, out = await cli("dataserver", "get", "d4")
    assert code == 1 and "NOT_FOUND" in out
    code, out = await cli("shard", "split", "--shard", "0", "--split-point", "1")
    assert code == 0 and "LEFT_CHILD_SHARD" in out, out
    code, out = await cli("namespace", "delete", "cli-ns")
    assert code == 0, out


def test_cli_points_at_a_wrong_port_with_one_line() -> None:
    from pyxia.common.ports import free_port

    code, out = run_cli(["namespace", "list", "--admin-address", f"127.0.0.1:{free_port()}"])
    assert code == 1 and out.startswith("Error: ") and out.count("\n") == 1, out


# -- Oxia's own admin CLI against pyxia's coordinator ---------------------------------------------

OXIA_BINARY = Path("/work/peers/oxia")
needs_oxia = pytest.mark.skipif(
    not OXIA_BINARY.exists(), reason=f"Oxia's binary is not at {OXIA_BINARY}"
)


def oxia_admin(admin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OXIA_BINARY), "admin", "--admin-address", admin, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_oxia
async def test_oxias_admin_cli_drives_pyxia(tmp_path: Path) -> None:
    secret = ClusterSecret(b"s" * 32)
    # Oxia's CLI sends no proof and speaks no TLS: the coordinator trusts its own host
    env = await start_env(
        tmp_path, 4, coordinator=options(cluster_secret=secret), admin_trust_loopback=True
    )
    n3 = env.cluster.nodes[3]

    async def oxia(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(oxia_admin, env.admin, *args)

    try:
        await wait_until(lambda: steady(env, "default"), what="default elected")
        r = await oxia("namespace", "create", "go-ns", "--initial-shards", "2",
                       "--replication-factor", "2", "-o", "json")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["initial_shard_count"] == 2
        await wait_until(lambda: steady(env, "go-ns"), what="go-ns elected")
        r = await oxia("namespace", "get", "-o", "yaml")
        assert r.returncode == 0, r.stderr
        assert "go-ns" in r.stdout and "default" in r.stdout
        r = await oxia("namespace", "get", "go-ns")
        assert r.returncode == 0 and r.stdout.split("\n")[1].split() == ["go-ns", "2", "2"]
        r = await oxia("namespace", "patch", "go-ns", "--notifications=false", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout).get("notifications_enabled") is False
        cfg = env.coordinator.namespace_config("go-ns")
        assert cfg is not None and not cfg.notifications_enabled
        r = await oxia("dataserver", "create", "go-ds", "--public", n3.public,
                       "--internal", n3.internal, "--label", "zone=z1")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert n3.internal in {s.internal for s in env.coordinator.config.servers}
        r = await oxia("dataserver", "get", "-o", "json")
        assert r.returncode == 0, r.stderr
        names = [v["data_server"]["identity"]["name"] for v in json.loads(r.stdout)]
        assert names[-1] == "go-ds" and len(names) == 4
        r = await oxia("dataserver", "patch", "go-ds", "--label", "zone=z2", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["metadata"]["labels"] == {"zone": "z2"}
        r = await oxia("dataserver", "delete", "go-ds")
        assert r.returncode == 0, r.stderr
        # refusals come back as errors naming the reason
        r = await oxia("namespace", "delete", "default")
        assert r.returncode != 0 and SOURCE in r.stdout + r.stderr
        r = await oxia("dataserver", "get", "nope")
        assert r.returncode != 0 and "not found" in r.stdout + r.stderr
        r = await oxia("shard", "split", "--namespace", "go-ns", "--shard", "999")
        assert r.returncode != 0 and "not found" in r.stdout + r.stderr
        r = await oxia("namespace", "delete", "go-ns")
        assert r.returncode == 0, r.stderr
        await wait_until(
            lambda: "go-ns" not in env.coordinator.status.namespaces,
            timeout=30,
            what="go-ns deleted",
        )
    finally:
        await env.server.close()
        await env.cluster.close()


@needs_oxia
async def test_oxias_admin_cli_is_refused_without_trust(tmp_path: Path) -> None:
    env = await start_env(tmp_path, 3, coordinator=options(cluster_secret=ClusterSecret(b"s" * 32)))
    try:
        r = await asyncio.to_thread(
            oxia_admin, env.admin, "namespace", "create", "x", "--initial-shards", "1",
            "--replication-factor", "1",
        )  # fmt: skip
        assert r.returncode != 0 and "unauthenticated" in (r.stdout + r.stderr).lower()
        assert "x" not in env.coordinator.status.namespaces
        r = await asyncio.to_thread(oxia_admin, env.admin, "namespace", "get")
        assert r.returncode == 0 and "default" in r.stdout, r.stderr  # reads stay open
    finally:
        await env.server.close()
        await env.cluster.close()


# -- Oxia's Go admin client (tests/go/interop, `interop admin`) against pyxia's coordinator -------


async def go_admin(binary: Path, env: Env, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Runs the Go admin checks (tests/go/interop/admin.go) against ``env``'s admin port; the
    data server they create is the cluster's node outside the config file."""
    spare = env.cluster.nodes[3]
    args = [str(binary), "admin", env.admin, env.cluster.nodes[0].public,
            spare.public, spare.internal]  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run,
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **extra_env},
    )


async def check_go_admin_run(env: Env, r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0 and r.stdout.strip().endswith("ADMIN OK"), r.stdout + r.stderr
    if hasattr(env.coordinator, "split_shard"):
        assert "split: children" in r.stdout, r.stdout
    else:
        assert "split: unimplemented" in r.stdout, r.stdout
    # what the Go client deleted is gone from the coordinator and its persisted status
    await wait_until(
        lambda: "go-admin" not in env.coordinator.status.namespaces,
        timeout=30,
        what="go-admin's shards deleted",
    )
    spare = env.cluster.nodes[3]
    assert spare.internal not in {s.internal for s in env.coordinator.config.servers}
    assert not env.coordinator.status.admin_managed.namespaces
    assert not env.coordinator.status.admin_managed.servers


async def test_oxias_go_admin_client_drives_pyxia(
    tmp_path: Path,
    interop_binary: Path,  # noqa: F811 - the imported fixture
) -> None:
    # the Go client sends no cluster proof: the coordinator trusts its own host
    env = await start_env(
        tmp_path, 4, coordinator=options(cluster_secret=ClusterSecret(b"s" * 32)),
        admin_trust_loopback=True,
    )  # fmt: skip
    try:
        await wait_until(lambda: steady(env, "default"), what="default elected")
        await check_go_admin_run(env, await go_admin(interop_binary, env))
    finally:
        await env.server.close()
        await env.cluster.close()


async def test_oxias_go_admin_client_over_mutual_tls(
    tmp_path: Path,
    interop_binary: Path,  # noqa: F811 - the imported fixture
) -> None:
    """The admin port demands client certificates of the cluster's CA: Oxia's Go admin client
    with one (its tls.Config) may change the cluster, without loopback trust or a proof."""
    ca = CertificateAuthority.create()
    ca_files = ca.save(tmp_path / "ca")
    server = ca.issue_files(tmp_path, "coordinator")
    client = ca.issue_files(tmp_path, "go-admin")
    tls = TlsOptions(
        cert_file=server.cert,
        key_file=server.key,
        trusted_ca_file=ca_files.cert,
        client_auth=True,
    )
    env = await start_env(
        tmp_path, 4, coordinator=options(cluster_secret=ClusterSecret(b"s" * 32)), tls=tls
    )
    try:
        assert env.server.access.mutual_tls and not env.server.access.trust_loopback
        await wait_until(lambda: steady(env, "default"), what="default elected")
        r = await go_admin(
            interop_binary,
            env,
            INTEROP_TLS_CA=str(ca_files.cert),
            INTEROP_TLS_CERT=str(client.cert),
            INTEROP_TLS_KEY=str(client.key),
        )
        await check_go_admin_run(env, r)
    finally:
        await env.server.close()
        await env.cluster.close()


async def test_oxias_go_admin_client_is_refused_without_trust(
    tmp_path: Path,
    interop_binary: Path,  # noqa: F811 - the imported fixture
) -> None:
    env = await start_env(tmp_path, 4, coordinator=options(cluster_secret=ClusterSecret(b"s" * 32)))
    try:
        r = await go_admin(interop_binary, env, INTEROP_EXPECT_UNAUTHENTICATED="1")
        assert r.returncode == 0 and "REFUSED OK" in r.stdout, r.stdout + r.stderr
        assert "refused" not in env.coordinator.status.namespaces
    finally:
        await env.server.close()
        await env.cluster.close()


# -- a coordinator that does not lead points at the one that does --------------------------------


async def test_a_standby_coordinator_points_admin_clients_at_the_leader(
    tmp_path: Path,
    interop_binary: Path,  # noqa: F811 - the imported fixture
) -> None:
    """As Oxia's: NODE_IS_NOT_LEADER (ABORTED) with the leader's admin address in the
    "coordinator-leader" ErrorInfo metadata, which Oxia's Go admin client and ``pyxia admin``
    follow; the standby that takes over records itself."""
    from pyxia.common.grpc_errors import coordinator_leader_hint

    secret = ClusterSecret(b"s" * 32)
    cluster = await Cluster.start(tmp_path / "nodes", 4)
    meta_dir = tmp_path / "metadata"
    a = await start_env(
        tmp_path, cluster=cluster, provider=FileMetadataProvider(meta_dir),
        coordinator=options(cluster_secret=secret), admin_trust_loopback=True,
    )  # fmt: skip
    standby = CoordinatorServer(
        FileMetadataProvider(meta_dir),
        lambda: a.config[0],
        CoordinatorServerOptions(
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            admin_addr="127.0.0.1:0",
            coordinator=options(cluster_secret=secret),
            admin_trust_loopback=True,
        ),
    )
    await standby.start()
    b = Env(cluster, standby, a.config, standby.provider)
    try:
        await wait_until(lambda: steady(a, "default"), what="default elected")
        assert not standby.is_leader
        assert a.coordinator.status.leader_coordinator.public_address == a.admin
        e = await b.refused("ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse)
        assert e.code() == grpc.StatusCode.ABORTED and a.admin in (e.details() or "")
        assert coordinator_leader_hint(e.trailing_metadata()) == a.admin
        # Oxia's Go admin client, pointed at the standby, does everything on the leader
        await check_go_admin_run(a, await go_admin(interop_binary, b))
        # and so does pyxia admin
        code, out = await asyncio.to_thread(
            run_cli, ["namespace", "list", "--admin-address", b.admin]
        )
        assert code == 0 and out.split("\n")[1].split()[0] == "default", out
        # the leader goes: the standby leads, records itself, answers
        await a.server.close()
        await standby.wait_leading()
        assert b.coordinator.status.leader_coordinator.public_address == b.admin
        listed = await b.acall(
            "ListNamespaces", pb.ListNamespacesRequest(), pb.ListNamespacesResponse
        )
        assert [v.namespace.name for v in listed.namespaces] == ["default"]
    finally:
        await standby.close()
        await a.server.close()
        await cluster.close()


async def test_a_standby_without_a_known_leader_is_not_initialized() -> None:
    from pyxia.errors import CoordinatorIsNotLeader, NotInitialized
    from pyxia.proto.metadata_pb2 import ClusterStatus, CoordinatorInfo

    async def standby(recorded: str | None) -> CoordinatorServer:
        """A coordinator server that does not lead (never started), advertising me:6651,
        over a status that records ``recorded`` as the leader's admin address."""
        provider = MemoryMetadataProvider()
        if recorded is not None:
            status = ClusterStatus(leader_coordinator=CoordinatorInfo(public_address=recorded))
            await provider.store(status, NOT_EXISTS)
        server = CoordinatorServer(provider, _file, CoordinatorServerOptions(metrics_addr=None))
        server.admin_advertised = "me:6651"
        return server

    assert isinstance(await (await standby(None)).not_leading(), NotInitialized)  # no status
    assert isinstance(await (await standby("")).not_leading(), NotInitialized)  # no leader
    assert isinstance(await (await standby("me:6651")).not_leading(), NotInitialized)  # itself
    err = await (await standby("other:6651")).not_leading()
    assert isinstance(err, CoordinatorIsNotLeader) and err.metadata == {
        "coordinator-leader": "other:6651"
    }


def test_coordinator_process_serves_the_admin_port(tmp_path: Path) -> None:
    """``pyxia coordinator -p``: the ready line names the admin port; ``pyxia admin`` reaches
    it; a bad ``--admin-addr`` is one line."""
    import sys

    from pyxia.common.ports import free_port
    from servers import cluster_secret_file, wait_for

    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        "namespaces: [{name: default, initialShardCount: 1, replicationFactor: 1}]\n"
        f"servers: [{{public: '127.0.0.1:{free_port()}', internal: '127.0.0.1:{free_port()}'}}]\n"
    )
    secret = cluster_secret_file(tmp_path)
    base = [sys.executable, "-m", "pyxia", "coordinator", "-f", str(cfg), "--metadata", "memory",
            "-i", "127.0.0.1:0", "--metrics-addr", "",
            "--cluster-secret-file", str(secret)]  # fmt: skip
    bad = subprocess.run([*base, "-p", "127.0.0.1:99999"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--admin-addr" in bad.stderr and "Traceback" not in bad.stderr
    proc = subprocess.Popen(
        [*base, "-p", "127.0.0.1:0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stderr is not None
        stderr = proc.stderr
        line = wait_for(
            lambda: (lambda s: s if "coordinator ready" in s else None)(stderr.readline()),
            timeout=30,
            what="the ready line",
        )
        m = re.search(r"admin=\S*:(\d+)", line)
        assert m, line
        admin = f"127.0.0.1:{m.group(1)}"
        code, out = run_cli(["namespace", "list", "--admin-address", admin])
        assert code == 0 and out.split("\n")[1].split() == ["default", "1", "1"], out
        code, out = run_cli(["namespace", "create", "p", "--initial-shards", "1",
                             "--replication-factor", "1", "--admin-address", admin])  # fmt: skip
        assert code == 1 and "UNAUTHENTICATED" in out, out
        code, out = run_cli(["namespace", "create", "p", "--initial-shards", "1",
                             "--replication-factor", "1", "--admin-address", admin,
                             "--cluster-secret-file", str(secret)])  # fmt: skip
        assert code == 0, out
        code, out = run_cli(["status", "--admin-address", admin])
        assert code == 0 and "namespace p " in out, out
    finally:
        proc.kill()
        proc.wait(30)
