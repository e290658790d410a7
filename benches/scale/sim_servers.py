"""Simulated data servers for the coordinator scale harness (issue 21 §1).

One process serves the internal port of many data servers, one gRPC server (and port) per
server identity, with in-memory shard state: it answers what the coordinator calls —
Handshake, health Check/Watch, PushShardAssignments, ShardEvents/Watch, NewTerm, BecomeLeader,
AddFollower, GetStatus, DeleteShard, Handoff/StepDown — by the data server's rules, cheaply,
so that the coordinator, not the simulator, is what gets measured:

- every call but health needs the cluster secret's proof (the real server's
  ``ClusterAuthInterceptor``) and every call but Handshake and health the bound instance id
  (``instance-id`` header), as ``server/internal_rpc.py`` checks them;
- a replica's term only grows: NewTerm for a lower term is INVALID_TERM, for its current term
  INVALID_STATUS unless fenced; BecomeLeader needs the replica fenced at that term; the
  followers a leader is given (BecomeLeader's follower map, AddFollower) follow it at once
  when their server is up (the replication stream is not simulated);
- assignment pushes are received as bytes and counted, never decoded (a real server decodes
  each one: the fan-out cost measured is the coordinator's);
- a shard's unavailability is timed: from the moment its leader stops leading (its server is
  killed, it steps down for a handoff, or a NewTerm fences it) until a replica becomes leader
  (BecomeLeader) — the span in which no replica takes writes.

A killed server stops listening (its connections are refused, as for a killed process) and
keeps its replicas' terms and heads, as a disk would; restarted, every replica is fenced at
its term, as a restarted data server's replicas are until the coordinator adds them back.

Run as a process it reads commands from stdin, one JSON object a line, and answers each with
one JSON line on stdout (see :func:`serve_commands`):

    {"op": "start", "count": 100}            -> {"servers": ["127.0.0.1:P", ...]}
    {"op": "kill", "servers": [3]}           -> {"ok": true}
    {"op": "restart", "servers": [3]}        -> {"ok": true}
    {"op": "stats"}                          -> counters, leaders per server, pushes
    {"op": "leaders"}                        -> {"leaders": {"<shard>": [address, term]}}
    {"op": "outages", "since": 0}            -> {"outages": [seconds, ...] (from the
                                                 since-th on), "unavailable": shards now}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from pyxia.common import grpc_errors
from pyxia.common.grpc_options import grpc_server_options
from pyxia.common.instance_id import INSTANCE_ID_HEADER
from pyxia.errors import (
    InvalidStatus,
    InvalidTerm,
    NodeIsNotMember,
    NotInitialized,
    PermissionDenied,
    PyxiaError,
    Unauthenticated,
)
from pyxia.proto import admin_pb2, replication_pb2
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import ClusterAuthInterceptor
from pyxia.server.internal_rpc import COORDINATION, SHARD_EVENTS, health_handler

NOT_MEMBER = replication_pb2.NOT_MEMBER
FENCED = replication_pb2.FENCED
FOLLOWER = replication_pb2.FOLLOWER
LEADER = replication_pb2.LEADER
HANDOFF = "pyxia.admin.v1.Handoff"


@dataclass(slots=True)
class Replica:
    term: int = -1
    status: int = NOT_MEMBER
    head_term: int = -1
    head_offset: int = -1


Ctx = grpc.aio.ServicerContext[Any, Any]


class SimulatedServer:
    """One data server identity: its own gRPC server and port, its replicas in memory."""

    def __init__(self, cluster: SimulatedCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.port = 0
        self.instance_id: str | None = None
        self.replicas: dict[int, Replica] = {}
        self.calls: Counter[str] = Counter()
        self.pushes = 0
        self.push_bytes = 0
        self.last_push_bytes = 0
        self.last_push_at = 0.0  # time.monotonic() (CLOCK_MONOTONIC: the harness's clock too)
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._stopping = asyncio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        interceptors = (
            [ClusterAuthInterceptor(self.cluster.secret)] if self.cluster.secret is not None else []
        )
        server = grpc.aio.server(interceptors=interceptors, options=grpc_server_options(64 << 20))
        server.add_generic_rpc_handlers(self._handlers())
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if port == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{self.port}")
        self.port = port
        self._stopping = asyncio.Event()
        await server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server

    async def kill(self) -> None:
        """Stops listening at once, as a killed process: connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        for shard, r in self.replicas.items():
            if r.status == LEADER:
                self.cluster.leader_lost(shard)
        await server.stop(0)
        # A new servicer: the old one's Watch streams are gone with the server.
        self._health = health_aio.HealthServicer()

    async def restart(self) -> None:
        await self.kill()
        for r in self.replicas.values():
            if r.status != NOT_MEMBER:
                r.status = FENCED
        await self.start()

    # -- rules ------------------------------------------------------------------------------------

    def _verify(self, context: Ctx) -> None:
        if self.instance_id is None:
            raise NotInitialized("oxia: this data server is not bound to a cluster yet")
        given = [v for k, v in context.invocation_metadata() or () if k == INSTANCE_ID_HEADER]
        if not given:
            raise Unauthenticated("oxia: instance id not identified")
        if given[0] != self.instance_id:
            raise PermissionDenied(f"oxia: unexpected instance id {given[0]!r}")

    def _replica(self, shard: int) -> Replica:
        r = self.replicas.get(shard)
        if r is None:
            raise NodeIsNotMember(f"oxia: node is not a member of shard {shard}", shard=shard)
        return r

    def _fence(self, shard: int, term: int) -> replication_pb2.NewTermResponse:
        r = self.replicas.setdefault(shard, Replica())
        if term < r.term:
            raise InvalidTerm(f"oxia: invalid term {term}, the shard is at term {r.term}")
        if term == r.term and r.status != FENCED:
            raise InvalidStatus(f"oxia: NewTerm for the current term {term}")
        if r.status == LEADER:
            self.cluster.leader_lost(shard)
        r.term, r.status = term, FENCED
        return replication_pb2.NewTermResponse(
            head_entry_id=replication_pb2.EntryId(term=r.head_term, offset=r.head_offset)
        )

    def _follow(self, follower: str, shard: int, term: int) -> None:
        """A leader at ``term`` streams to ``follower``: it follows once it gets the stream."""
        s = self.cluster.by_address.get(follower)
        if s is None or not s.up:
            return
        r = s.replicas.get(shard)
        if r is not None and r.term == term and r.status == FENCED:
            r.status = FOLLOWER

    # -- handlers ---------------------------------------------------------------------------------

    def _unary(
        self, name: str, req_type: Any, fn: Callable[[Any], Any], *, verify: bool = True
    ) -> grpc.RpcMethodHandler[Any, Any]:
        async def handle(raw: bytes, context: Ctx) -> Any:
            self.calls[name] += 1
            try:
                if verify:
                    self._verify(context)
                return fn(req_type.FromString(raw))
            except PyxiaError as e:
                await grpc_errors.abort(context, e)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=_serialize
        )

    def _handshake(self, req: replication_pb2.HandshakeRequest) -> Any:
        if self.instance_id is None:
            self.instance_id = req.instance_id
            status = replication_pb2.HANDSHAKE_STATUS_BOUND
        elif self.instance_id == req.instance_id:
            status = replication_pb2.HANDSHAKE_STATUS_ALREADY_BOUND
        else:
            status = replication_pb2.HANDSHAKE_STATUS_MISMATCH
        return replication_pb2.HandshakeResponse(status=status)

    def _new_term(self, req: replication_pb2.NewTermRequest) -> Any:
        return self._fence(req.shard, req.term)

    def _become_leader(self, req: replication_pb2.BecomeLeaderRequest) -> Any:
        r = self._replica(req.shard)
        if r.term != req.term or r.status != FENCED:
            raise InvalidStatus(f"oxia: BecomeLeader for term {req.term} at term {r.term}")
        r.status = LEADER
        self.cluster.leader_elected(req.shard)
        for follower in req.follower_maps:
            self._follow(follower, req.shard, req.term)
        return replication_pb2.BecomeLeaderResponse()

    def _add_follower(self, req: replication_pb2.AddFollowerRequest) -> Any:
        r = self._replica(req.shard)
        if r.status != LEADER or r.term != req.term:
            raise InvalidStatus(f"oxia: AddFollower for term {req.term} at term {r.term}")
        self._follow(req.follower_name, req.shard, req.term)
        return replication_pb2.AddFollowerResponse()

    def _get_status(self, req: replication_pb2.GetStatusRequest) -> Any:
        r = self._replica(req.shard)
        return replication_pb2.GetStatusResponse(
            term=r.term, status=r.status, head_offset=r.head_offset, commit_offset=r.head_offset
        )

    def _delete_shard(self, req: replication_pb2.DeleteShardRequest) -> Any:
        self.replicas.pop(req.shard, None)
        return replication_pb2.DeleteShardResponse()

    def _step_down(self, req: admin_pb2.StepDownRequest) -> Any:
        r = self._replica(req.shard)
        if r.status != LEADER or r.term != req.term:
            raise InvalidStatus(f"oxia: StepDown for term {req.term} at term {r.term}")
        self.cluster.leader_lost(req.shard)  # it takes no more writes
        return admin_pb2.StepDownResponse(
            head_term=r.head_term, head_offset=r.head_offset, drained=True
        )

    async def _push_assignments(
        self, requests: AsyncIterator[bytes], context: Ctx
    ) -> replication_pb2.CoordinationShardAssignmentsResponse:
        self.calls["PushShardAssignments"] += 1
        try:
            self._verify(context)
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
        async for raw in requests:
            self.pushes += 1
            self.push_bytes += len(raw)
            self.last_push_bytes = len(raw)
            self.last_push_at = time.monotonic()
        return replication_pb2.CoordinationShardAssignmentsResponse()

    async def _watch_events(self, raw: bytes, context: Ctx) -> AsyncIterator[bytes]:
        """No replica of a simulated server fails on its own: the stream stays open, empty."""
        self.calls["ShardEvents.Watch"] += 1
        try:
            self._verify(context)
        except PyxiaError as e:
            await grpc_errors.abort(context, e)
        await self._stopping.wait()
        return
        yield b""  # an async generator

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        coordination = {
            "Handshake": self._unary(
                "Handshake", replication_pb2.HandshakeRequest, self._handshake, verify=False
            ),
            "NewTerm": self._unary("NewTerm", replication_pb2.NewTermRequest, self._new_term),
            "BecomeLeader": self._unary(
                "BecomeLeader", replication_pb2.BecomeLeaderRequest, self._become_leader
            ),
            "AddFollower": self._unary(
                "AddFollower", replication_pb2.AddFollowerRequest, self._add_follower
            ),
            "GetStatus": self._unary(
                "GetStatus", replication_pb2.GetStatusRequest, self._get_status
            ),
            "DeleteShard": self._unary(
                "DeleteShard", replication_pb2.DeleteShardRequest, self._delete_shard
            ),
            "PushShardAssignments": grpc.stream_unary_rpc_method_handler(
                self._push_assignments, request_deserializer=None, response_serializer=_serialize
            ),
        }
        events = {
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch_events, request_deserializer=None, response_serializer=None
            )
        }
        handoff = {"StepDown": self._unary("StepDown", admin_pb2.StepDownRequest, self._step_down)}
        return [
            health_handler(self._health),
            grpc.method_handlers_generic_handler(COORDINATION, coordination),
            grpc.method_handlers_generic_handler(SHARD_EVENTS, events),
            grpc.method_handlers_generic_handler(HANDOFF, handoff),
        ]


def _serialize(m: Any) -> bytes:
    out: bytes = m.SerializeToString()
    return out


class SimulatedCluster:
    """Many simulated data servers in one process."""

    def __init__(self, secret: ClusterSecret | None) -> None:
        self.secret = secret
        self.servers: list[SimulatedServer] = []
        self.by_address: dict[str, SimulatedServer] = {}
        self.unavailable_since: dict[int, float] = {}
        """Shards without a leader taking writes, and since when (monotonic)."""
        self.outages: list[float] = []
        """How long each finished outage lasted (seconds), in the order they ended."""

    def leader_lost(self, shard: int) -> None:
        self.unavailable_since.setdefault(shard, time.monotonic())

    def leader_elected(self, shard: int) -> None:
        since = self.unavailable_since.pop(shard, None)
        if since is not None:
            self.outages.append(time.monotonic() - since)

    async def start(self, count: int) -> list[str]:
        """Starts ``count`` more servers; returns their addresses."""
        new = [SimulatedServer(self, len(self.servers) + i) for i in range(count)]
        for s in new:
            await s.start()
            self.servers.append(s)
            self.by_address[s.address] = s
        return [s.address for s in new]

    async def close(self) -> None:
        for s in self.servers:
            await s.kill()

    def leaders(self) -> dict[int, tuple[str, int]]:
        """Shard -> (address, term) of the replica leading the highest term, on live servers."""
        out: dict[int, tuple[str, int]] = {}
        for s in self.servers:
            if not s.up:
                continue
            for shard, r in s.replicas.items():
                if r.status == LEADER and (shard not in out or out[shard][1] < r.term):
                    out[shard] = (s.address, r.term)
        return out

    def stats(self) -> dict[str, Any]:
        calls: Counter[str] = Counter()
        for s in self.servers:
            calls.update(s.calls)
        leaders = Counter(a for a, _ in self.leaders().values())
        return {
            "calls": dict(calls),
            "pushes": sum(s.pushes for s in self.servers),
            "push_bytes": sum(s.push_bytes for s in self.servers),
            "last_push_bytes": max((s.last_push_bytes for s in self.servers), default=0),
            "last_push_at": max((s.last_push_at for s in self.servers), default=0.0),
            "leaders_per_server": [leaders.get(s.address, 0) for s in self.servers],
            "serving_per_server": [
                sum(1 for r in s.replicas.values() if r.status in (FOLLOWER, LEADER))
                for s in self.servers
            ],
            "replicas_per_server": [
                sum(1 for r in s.replicas.values() if r.status != NOT_MEMBER) for s in self.servers
            ],
        }


async def serve_commands(cluster: SimulatedCluster) -> None:
    """The stdin/stdout command loop (module docstring)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}

    async def start(cmd: dict[str, Any]) -> dict[str, Any]:
        return {"servers": await cluster.start(int(cmd["count"]))}

    async def kill(cmd: dict[str, Any]) -> dict[str, Any]:
        await asyncio.gather(*(cluster.servers[int(i)].kill() for i in cmd["servers"]))
        return {"ok": True}

    async def restart(cmd: dict[str, Any]) -> dict[str, Any]:
        for i in cmd["servers"]:
            await cluster.servers[int(i)].restart()
        return {"ok": True}

    async def stats(cmd: dict[str, Any]) -> dict[str, Any]:
        return cluster.stats()

    async def leaders(cmd: dict[str, Any]) -> dict[str, Any]:
        return {"leaders": {str(k): list(v) for k, v in cluster.leaders().items()}}

    async def outages(cmd: dict[str, Any]) -> dict[str, Any]:
        return {
            "outages": [round(d, 4) for d in cluster.outages[int(cmd.get("since", 0)) :]],
            "unavailable": len(cluster.unavailable_since),
        }

    ops.update(
        start=start, kill=kill, restart=restart, stats=stats, leaders=leaders, outages=outages
    )
    while line := await reader.readline():
        try:
            cmd = json.loads(line)
            out = await ops[cmd["op"]](cmd)
        except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


async def _main(secret_file: Path | None) -> None:
    cluster = SimulatedCluster(ClusterSecret.from_file(secret_file) if secret_file else None)
    try:
        await serve_commands(cluster)
    finally:
        await cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster-secret-file", type=Path, default=None)
    args = ap.parse_args()
    asyncio.run(_main(args.cluster_secret_file))


if __name__ == "__main__":
    main()
