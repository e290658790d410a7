"""In-process clusters for replication tests: several DataServers in one
event loop on loopback ports chosen at runtime, driven through their real
coordination RPCs, exactly as a coordinator would drive them: each server is
bound by a Handshake first, every call carries the cluster's instance id, and
a shard is in the pushed assignments (leaderless) before its first NewTerm."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pyxia.common.instance_id import INSTANCE_ID_HEADER
from pyxia.common.ports import free_port
from pyxia.common.sharding import generate_shards
from pyxia.node import data_server
from pyxia.proto import client_pb2, replication_pb2
from pyxia.server.data_server import DataServer, ServerOptions
from pyxia.server.leader_controller import LEADER

INSTANCE_ID = "pyxia-test-cluster"


@dataclass(eq=False)
class Node:
    index: int
    base: Path
    public_port: int
    internal_port: int
    server: DataServer | None = None

    @property
    def public(self) -> str:
        return f"127.0.0.1:{self.public_port}"

    @property
    def internal(self) -> str:
        return f"127.0.0.1:{self.internal_port}"

    def options(self, **overrides: object) -> ServerOptions:
        opts = ServerOptions(
            public_addr=self.public,
            internal_addr=self.internal,
            metrics_addr=None,
            data_dir=self.base / "db",
            wal_dir=self.base / "wal",
            maintenance_interval_s=3600,
        )
        for k, v in overrides.items():
            setattr(opts, k, v)
        return opts

    async def start(self, **overrides: object) -> DataServer:
        self.server = data_server(self.options(**overrides))
        await self.server.start()
        return self.server

    async def stop(self, *, graceful: bool = False) -> None:
        """Stops the server; ``graceful``: as on SIGTERM (its leaderships handed over first),
        else without moving them (as a test of failover wants)."""
        if self.server is not None:
            await self.server.close(grace=0.2, hand_off=graceful)
            self.server = None

    @property
    def s(self) -> DataServer:
        assert self.server is not None, f"node {self.index} is down"
        return self.server


@dataclass
class Cluster:
    nodes: list[Node]
    namespace: str = "default"
    terms: dict[int, int] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    instance_id: str = INSTANCE_ID
    # shard -> advertised leader ("" before the first election): the map pushed to servers
    assigned: dict[int, str] = field(default_factory=dict)
    # node index -> (the DataServer object, whether it holds the current map): a restarted
    # node is a new object, unbound to nothing in memory until handshaken and pushed again
    _bound: dict[int, DataServer] = field(default_factory=dict)
    _pushed: dict[int, DataServer] = field(default_factory=dict)

    @staticmethod
    async def start(base: Path, n: int = 3, **overrides: object) -> Cluster:
        nodes = [Node(i, base / f"n{i}", free_port(), free_port()) for i in range(n)]
        for node in nodes:
            await node.start(**overrides)
        return Cluster(nodes)

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self.channels.get(address)
        if ch is None:
            ch = self.channels[address] = grpc.aio.insecure_channel(address)
        return ch

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((INSTANCE_ID_HEADER, self.instance_id),)

    async def bind(self, node: Node) -> None:
        """Handshakes ``node`` (once per server process) with this cluster's instance id."""
        if self._bound.get(node.index) is node.server:
            return
        res = await self.channel(node.internal).unary_unary(
            "/replication.OxiaCoordination/Handshake",
            request_serializer=replication_pb2.HandshakeRequest.SerializeToString,
            response_deserializer=replication_pb2.HandshakeResponse.FromString,
        )(replication_pb2.HandshakeRequest(instance_id=self.instance_id), timeout=30)
        assert res.status != replication_pb2.HANDSHAKE_STATUS_MISMATCH
        assert node.server is not None
        self._bound[node.index] = node.server

    async def coordination(
        self, node: Node, method: str, req: object, resp_type: type, *, bind: bool = True
    ) -> object:
        """One coordination call, as the coordinator makes it (``bind=False``: raw, no
        Handshake first)."""
        if bind:
            await self.bind(node)
        return await self.channel(node.internal).unary_unary(
            f"/replication.OxiaCoordination/{method}",
            request_serializer=lambda m: m.SerializeToString(),  # type: ignore[attr-defined]
            response_deserializer=resp_type.FromString,  # type: ignore[attr-defined]
        )(req, timeout=30, metadata=self.metadata)

    async def publish(self, shard: int, node: Node) -> None:
        """Makes sure ``node`` holds a map that knows ``shard`` (a data server creates a
        replica only for a shard the assignments know)."""
        if shard not in self.assigned:
            self.assigned[shard] = ""
            self._pushed.clear()
        if self._pushed.get(node.index) is not node.server:
            await self._push(node)

    async def rejoin(self, node: Node) -> None:
        """What the coordinator does when a server comes back (maybe wiped): Handshake, then
        the current assignments."""
        await self.bind(node)
        await self._push(node)

    async def new_term(self, node: Node, shard: int, term: int) -> replication_pb2.EntryId:
        await self.publish(shard, node)
        res = await self.coordination(  # type: ignore[misc]
            node,
            "NewTerm",
            replication_pb2.NewTermRequest(
                namespace=self.namespace,
                shard=shard,
                term=term,
                options=replication_pb2.NewTermOptions(
                    enable_notifications=True, key_sorting=replication_pb2.HIERARCHICAL
                ),
            ),
            replication_pb2.NewTermResponse,
        )
        return res.head_entry_id  # type: ignore[no-any-return]

    async def elect(
        self, shard: int, leader: Node, ensemble: list[Node], term: int | None = None
    ) -> int:
        """Fences ``ensemble`` at a new term and makes ``leader`` lead it."""
        term = self.terms.get(shard, 0) + 1 if term is None else term
        heads = await self._fence(shard, ensemble, term)
        await self._become_leader(shard, leader, term, len(ensemble), heads)
        return term

    async def elect_freshest(self, shard: int, ensemble: list[Node]) -> Node:
        """Fences ``ensemble`` at a new term and makes the member with the highest head lead it,
        as the coordinator would (any other choice may have to drop committed entries, which
        the replicas refuse). Returns the new leader."""
        term = self.terms.get(shard, 0) + 1
        heads = await self._fence(shard, ensemble, term)
        best = max(heads, key=lambda k: (heads[k].term, heads[k].offset))
        leader = next(n for n in ensemble if n.internal == best)
        await self._become_leader(shard, leader, term, len(ensemble), heads)
        return leader

    async def _fence(
        self, shard: int, ensemble: list[Node], term: int
    ) -> dict[str, replication_pb2.EntryId]:
        """NewTerm on every running member of ``ensemble``: their heads."""
        self.terms[shard] = term
        return {
            node.internal: await self.new_term(node, shard, term)
            for node in ensemble
            if node.server is not None
        }

    async def _become_leader(
        self,
        shard: int,
        leader: Node,
        term: int,
        replication_factor: int,
        heads: dict[str, replication_pb2.EntryId],
    ) -> None:
        await self.coordination(  # type: ignore[misc]
            leader,
            "BecomeLeader",
            replication_pb2.BecomeLeaderRequest(
                namespace=self.namespace,
                shard=shard,
                term=term,
                replication_factor=replication_factor,
                follower_maps={k: v for k, v in heads.items() if k != leader.internal},
            ),
            replication_pb2.BecomeLeaderResponse,
        )

    async def add_follower(self, shard: int, leader: Node, follower: Node) -> None:
        head = await self.new_term(follower, shard, self.terms[shard])
        await self.coordination(  # type: ignore[misc]
            leader,
            "AddFollower",
            replication_pb2.AddFollowerRequest(
                namespace=self.namespace,
                shard=shard,
                term=self.terms[shard],
                follower_name=follower.internal,
                follower_head_entry_id=head,
            ),
            replication_pb2.AddFollowerResponse,
        )

    def assignments(self) -> client_pb2.ShardAssignments:
        a = client_pb2.ShardAssignments()
        nsa = a.namespaces[self.namespace]
        nsa.shard_key_router = client_pb2.XXHASH3
        ranges = generate_shards(len(self.assigned)) if self.assigned else []
        for (shard, leader), r in zip(sorted(self.assigned.items()), ranges, strict=True):
            nsa.assignments.add(
                shard=shard,
                leader=leader,
                leader_term=self.terms.get(shard, 0) if leader else 0,
                int32_hash_range=(
                    client_pb2.Int32HashRange(
                        min_hash_inclusive=r.min_inclusive, max_hash_inclusive=r.max_inclusive
                    )
                ),
            )
        return a

    async def _push(self, node: Node) -> None:
        await self.bind(node)
        call = self.channel(node.internal).stream_unary(
            "/replication.OxiaCoordination/PushShardAssignments",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=replication_pb2.CoordinationShardAssignmentsResponse.FromString,
        )
        await call(iter([self.assignments()]), timeout=10, metadata=self.metadata)
        assert node.server is not None
        self._pushed[node.index] = node.server

    async def push_assignments(self, leaders: dict[int, Node]) -> None:
        """Publishes ``leaders`` (with the other shards known so far) to every live node."""
        for shard, node in leaders.items():
            self.assigned[shard] = node.public
        self._pushed.clear()
        for node in self.nodes:
            if node.server is not None:
                await self._push(node)

    async def status(self, node: Node, shard: int) -> replication_pb2.GetStatusResponse:
        return await self.coordination(  # type: ignore[no-any-return,misc]
            node,
            "GetStatus",
            replication_pb2.GetStatusRequest(shard=shard),
            replication_pb2.GetStatusResponse,
        )

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()
        self.channels.clear()
        for node in self.nodes:
            await node.stop()


def leader_controller(node: Node, shard: int):  # type: ignore[no-untyped-def]
    lc = node.s.director.leaders.get(shard)
    assert lc is not None and lc.status == LEADER
    return lc
