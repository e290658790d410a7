"""A real cluster of processes for tests and benchmarks: N ``pyxia server``
processes and a ``pyxia coordinator`` on loopback, ports chosen at runtime
(fixed per member, so a restarted process keeps its addresses); every
process is killed at teardown."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from cluster import free_port
from pyxia.proto import admin_pb2, metadata_pb2, replication_pb2
from servers import ServerProcess, wait_for


@dataclass
class Member:
    base: Path
    public: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    internal: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    proc: ServerProcess | None = None
    env: dict[str, str] | None = None
    """Extra environment of the process (PYTHONPATH: another pyxia, for a before/after)."""

    def start(self, *extra: str) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc = ServerProcess(
            [
                "server",
                "--public-addr",
                self.public,
                "--internal-addr",
                self.internal,
                "--metrics-addr",
                "",
                "--data-dir",
                str(self.base / "db"),
                "--wal-dir",
                str(self.base / "wal"),
                *extra,
            ],
            self.base,
            self.env,
        ).start()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful shutdown) and wait for the exit; returns the exit code."""
        assert self.proc is not None
        return self.proc.terminate(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


@dataclass
class ProcCluster:
    base: Path
    members: list[Member]
    namespaces: list[dict[str, object]]
    coordinator_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    coordinator: subprocess.Popen[str] | None = None
    metadata: str = "file"
    extra_coordinator_args: tuple[str, ...] = ()

    @property
    def config_path(self) -> Path:
        return self.base / "cluster.yaml"

    def write_config(self) -> None:
        cfg = {
            "namespaces": self.namespaces,
            "servers": [{"public": m.public, "internal": m.internal} for m in self.members],
            "loadBalancer": {"scheduleInterval": "1h", "quarantineTime": "5m"},
        }
        self.config_path.write_text(yaml.safe_dump(cfg))

    @staticmethod
    def start(
        base: Path,
        n: int = 3,
        namespaces: list[dict[str, object]] | None = None,
        metadata: str = "file",
        server_env: dict[str, str] | None = None,
    ) -> ProcCluster:
        c = ProcCluster(
            base,
            [Member(base / f"s{i}", env=server_env) for i in range(n)],
            namespaces or [{"name": "default", "initialShardCount": 3, "replicationFactor": 3}],
            metadata=metadata,
        )
        c.write_config()
        try:
            for m in c.members:
                m.start()
            c.start_coordinator()
            c.wait_steady()
        except BaseException:
            c.close()  # a cluster that never became steady leaves no process behind
            raise
        return c

    def start_coordinator(self) -> None:
        log = open(self.base / "coordinator.log", "a")  # noqa: SIM115 - lives with the process
        self.coordinator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxia",
                "coordinator",
                "--cluster-config",
                str(self.config_path),
                "--metadata",
                self.metadata,
                "--metadata-dir",
                str(self.base / "coordinator"),
                "--internal-addr",
                self.coordinator_addr,
                "--metrics-addr",
                "",
                *self.extra_coordinator_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )

    def kill_coordinator(self) -> None:
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.coordinator.kill()
            self.coordinator.wait(30)

    def status(self) -> admin_pb2.GetClusterStatusResponse | None:
        try:
            with grpc.insecure_channel(self.coordinator_addr) as ch:
                return ch.unary_unary(
                    "/pyxia.admin.v1.PyxiaAdmin/GetClusterStatus",
                    request_serializer=admin_pb2.GetClusterStatusRequest.SerializeToString,
                    response_deserializer=admin_pb2.GetClusterStatusResponse.FromString,
                )(admin_pb2.GetClusterStatusRequest(), timeout=2)
        except grpc.RpcError:
            return None

    def steady(self) -> bool:
        st = self.status()
        if st is None or not st.leader or not st.status.namespaces:
            return False
        return all(
            m.status == metadata_pb2.SteadyState and m.HasField("leader")
            for ns in st.status.namespaces.values()
            for m in ns.shards.values()
        )

    def wait_steady(self, timeout: float = 60) -> None:
        wait_for(self.steady, timeout=timeout, interval=0.05, what="every shard steady")

    def shard_leader(self, shard: int) -> tuple[Member | None, int]:
        """The member leading ``shard`` (None during an election) and its
        term, from one status snapshot."""
        st = self.status()
        if st is None:
            return None, -1
        for ns in st.status.namespaces.values():
            if shard in ns.shards:
                meta = ns.shards[shard]
                member = next((m for m in self.members if m.internal == meta.leader.internal), None)
                if meta.status != metadata_pb2.SteadyState:
                    member = None
                return member, int(meta.term)
        raise KeyError(shard)

    def move_leader(self, shard: int, to: str = "", timeout: float = 30.0) -> tuple[str, int]:
        """A planned leader move (``PyxiaAdmin/MoveLeader``): the new leader's internal address
        and term."""
        with grpc.insecure_channel(self.coordinator_addr) as ch:
            res = ch.unary_unary(
                "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
                request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
                response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
            )(
                admin_pb2.MoveLeaderRequest(
                    namespace="default", shard=shard, to=to, timeout_ms=int(timeout * 1000)
                ),
                timeout=timeout + 5,
            )
        return res.leader, int(res.term)

    def replica_status(self, m: Member, shard: int) -> replication_pb2.GetStatusResponse:
        with grpc.insecure_channel(m.internal) as ch:
            return ch.unary_unary(
                "/replication.OxiaCoordination/GetStatus",
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )(replication_pb2.GetStatusRequest(shard=shard), timeout=5)

    @property
    def service_addresses(self) -> list[str]:
        return [m.public for m in self.members]

    def close(self) -> None:
        self.kill_coordinator()
        for m in self.members:
            m.kill()
