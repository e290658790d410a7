"""A real cluster of processes for tests and benchmarks: N ``pyxia server``
processes and a ``pyxia coordinator`` on loopback, ports chosen at runtime
(fixed per member, so a restarted process keeps its addresses); every
process is killed at teardown.

Every process proves cluster membership on internal calls: with a cluster secret (the default,
written next to the config by :meth:`ProcCluster.write_config`), or with ``tls=True`` by mutual
TLS with certificates of a CA made for the cluster (internal port with client authentication,
peer connections and the coordinator's port, and the public ports when this build has
``--tls-*`` on ``pyxia server``; ``secret=False`` leaves mTLS as the only proof)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from cluster import free_port
from pyxia.proto import admin_pb2, metadata_pb2, replication_pb2
from pyxia.security.cluster_auth import ClusterSecret, generate_secret_file
from pyxia.security.internal_auth import SigningInterceptor, internal_channel
from pyxia.security.pki import CertificateAuthority
from pyxia.security.tls import ClientTls, TlsOptions
from servers import COORDINATOR_READY, ServerProcess, wait_for


def tls_args(prefix: str, pki: Path, name: str, *, client_auth: bool = False) -> list[str]:
    """The ``--{prefix}-tls-*`` flags of a process holding ``pki/name.{crt,key}``."""
    flag = f"--{prefix}-tls" if prefix else "--tls"
    out = [
        f"{flag}-cert-file",
        str(pki / f"{name}.crt"),
        f"{flag}-key-file",
        str(pki / f"{name}.key"),
        f"{flag}-trusted-ca-file",
        str(pki / "ca.crt"),
    ]
    return [*out, f"{flag}-client-auth"] if client_auth else out


@dataclass
class Member:
    base: Path
    public: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    internal: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    proc: ServerProcess | None = None
    security: tuple[str, ...] = ()
    """Flags proving cluster membership (set by the cluster's write_config)."""
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
                *self.security,
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
    coordinator: ServerProcess | None = None
    metadata: str = "file"
    extra_coordinator_args: tuple[str, ...] = ()
    secret: bool = True
    tls: bool = False
    _client_tls: ClientTls | None = field(default=None, init=False, repr=False)

    @property
    def public_tls(self) -> bool:
        """Whether the public ports speak TLS (``tls`` and a build with public-port TLS)."""
        from pyxia.robustness.cluster import public_tls_available

        return self.tls and public_tls_available()

    def public_channel(self, address: str) -> grpc.Channel:
        """A blocking channel to a public port (TLS when the cluster's public ports are)."""
        tls = self.client_tls() if self.public_tls else None
        return (
            tls.sync_secure_channel(address) if tls is not None else grpc.insecure_channel(address)
        )

    @property
    def config_path(self) -> Path:
        return self.base / "cluster.yaml"

    @property
    def secret_file(self) -> Path:
        return self.base / "cluster.secret"

    @property
    def pki(self) -> Path:
        return self.base / "pki"

    def cluster_secret(self) -> ClusterSecret | None:
        return ClusterSecret.from_file(self.secret_file) if self.secret else None

    def client_tls(self) -> ClientTls | None:
        """TLS of a harness client (certificate ``client``), None without TLS."""
        if not self.tls:
            return None
        if self._client_tls is None:
            self._client_tls = TlsOptions(
                cert_file=self.pki / "client.crt",
                key_file=self.pki / "client.key",
                trusted_ca_file=self.pki / "ca.crt",
            ).client()
        return self._client_tls

    def _security(self, name: str, *, server: bool) -> tuple[str, ...]:
        out: list[str] = []
        if self.secret:
            out += ["--cluster-secret-file", str(self.secret_file)]
        if self.tls:
            if server:
                out += tls_args("internal", self.pki, name, client_auth=True)
                if self.public_tls:
                    out += tls_args("", self.pki, name)[:4]  # certificate and key
            else:
                out += tls_args("", self.pki, name, client_auth=True)
            out += tls_args("peer", self.pki, name)
        return tuple(out)

    def write_config(self) -> None:
        """The cluster config, the secret and (``tls``) the CA and every certificate."""
        if self.secret and not self.secret_file.exists():
            generate_secret_file(self.secret_file)
        if self.tls and not (self.pki / "ca.crt").exists():
            ca = CertificateAuthority.create()
            ca.save(self.pki)
            for name in [*(m.base.name for m in self.members), "coordinator", "client"]:
                ca.issue_files(self.pki, name)
        for m in self.members:
            m.security = self._security(m.base.name, server=True)
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
        *,
        secret: bool = True,
        tls: bool = False,
        server_env: dict[str, str] | None = None,
        server_args: Sequence[str] = (),
    ) -> ProcCluster:
        """Writes the config, starts ``n`` servers (with ``server_args``) and the coordinator,
        and waits for every shard to be steady; leaves nothing running if that fails."""
        c = ProcCluster(
            base,
            [Member(base / f"s{i}", env=server_env) for i in range(n)],
            namespaces or [{"name": "default", "initialShardCount": 3, "replicationFactor": 3}],
            metadata=metadata,
            secret=secret,
            tls=tls,
        )
        c.write_config()
        try:
            for m in c.members:
                m.start(*server_args)
            c.start_coordinator()
            c.wait_steady()
        except BaseException:
            c.close()  # a cluster that never became steady leaves no process behind
            raise
        return c

    def start_coordinator(self) -> None:
        self.coordinator = ServerProcess(
            [
                "coordinator",
                "--cluster-config",
                str(self.config_path),
                "--metadata",
                self.metadata,
                "--metadata-dir",
                str(self.base / "coordinator"),
                "--internal-addr",
                self.coordinator_addr,
                "--admin-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "",
                *self._security("coordinator", server=False),
                *self.extra_coordinator_args,
            ],
            self.base,
            ready=COORDINATOR_READY,
            log_path=self.base / "coordinator.log",
        ).start(wait_ready=False)

    def kill_coordinator(self) -> None:
        if self.coordinator is not None:
            self.coordinator.kill()

    def status(self) -> admin_pb2.GetClusterStatusResponse | None:
        tls = self.client_tls()
        try:
            with (
                tls.sync_secure_channel(self.coordinator_addr)
                if tls is not None
                else grpc.insecure_channel(self.coordinator_addr)
            ) as ch:
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

    def move_leader(
        self, shard: int, to: str = "", timeout: float = 30.0, namespace: str = "default"
    ) -> tuple[str, int]:
        """A planned leader move (``PyxiaAdmin/MoveLeader``): the new leader's internal address
        and term."""
        tls = self.client_tls()
        channel = (
            tls.sync_secure_channel(self.coordinator_addr)
            if tls is not None
            else grpc.insecure_channel(self.coordinator_addr)
        )
        secret = self.cluster_secret()
        if secret is not None:  # a change needs the proof of membership
            channel = grpc.intercept_channel(channel, SigningInterceptor(secret))
        with channel as ch:
            res = ch.unary_unary(
                "/pyxia.admin.v1.PyxiaAdmin/MoveLeader",
                request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
                response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
            )(
                admin_pb2.MoveLeaderRequest(
                    namespace=namespace, shard=shard, to=to, timeout_ms=int(timeout * 1000)
                ),
                timeout=timeout + 5,
            )
        return res.leader, int(res.term)

    def split_shard(
        self,
        shard: int,
        *,
        namespace: str = "default",
        split_point: int | None = None,
        wait: bool = False,
        timeout: float = 120.0,
    ) -> admin_pb2.SplitShardResponse:
        """A shard split (``PyxiaAdmin/SplitShard``): the children's ids (``wait``: and how it
        ended, with the time of each phase)."""
        tls = self.client_tls()
        channel = (
            tls.sync_secure_channel(self.coordinator_addr)
            if tls is not None
            else grpc.insecure_channel(self.coordinator_addr)
        )
        secret = self.cluster_secret()
        if secret is not None:
            channel = grpc.intercept_channel(channel, SigningInterceptor(secret))
        req = admin_pb2.SplitShardRequest(namespace=namespace, shard=shard, wait=wait)
        if split_point is not None:
            req.split_point = split_point
        with channel as ch:
            res: admin_pb2.SplitShardResponse = ch.unary_unary(
                "/pyxia.admin.v1.PyxiaAdmin/SplitShard",
                request_serializer=admin_pb2.SplitShardRequest.SerializeToString,
                response_deserializer=admin_pb2.SplitShardResponse.FromString,
            )(req, timeout=timeout + 130 if wait else 30)
        return res

    def replica_status(self, m: Member, shard: int) -> replication_pb2.GetStatusResponse:
        """GetStatus of ``m``'s replica, asked as the coordinator asks (with the cluster's
        instance id, which the data servers require)."""
        st = self.status()
        iid = st.status.instance_id if st is not None else ""
        with internal_channel(m.internal, self.client_tls(), self.cluster_secret()) as ch:
            return ch.unary_unary(
                "/replication.OxiaCoordination/GetStatus",
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )(
                replication_pb2.GetStatusRequest(shard=shard),
                timeout=5,
                metadata=(("instance-id", iid),),
            )

    @property
    def service_addresses(self) -> list[str]:
        return [m.public for m in self.members]

    def close(self) -> None:
        self.kill_coordinator()
        for m in self.members:
            m.kill()
