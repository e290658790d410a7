"""The cluster under test: three ``pyxia server`` processes and a ``pyxia coordinator`` on
loopback ports chosen at runtime (fixed per member, so a restart keeps its addresses), every
link between them through its own proxy (:mod:`pyxia.robustness.proxy`).

Links: ``sI->sJ`` (replication from server I to server J's internal port), ``coord->sJ``
(coordinator to server J's internal port) and ``client->sJ`` (the harness's clients to server
J's public port). Each process gets a ``PYXIA_DIAL_MAP`` sending it through its own links.

Servers run with ``--enable-test-hooks`` (failpoints armed at runtime) and
``PYXIA_WAL_SYNCED_MARK=1``: after a kill -9, :meth:`Node.cut_unsynced` cuts every WAL of the
node back to what was really made durable (a power loss). One server's WAL directory is a
size-limited tmpfs (when this process may mount one) for the disk-full fault.

Every process proves cluster membership on internal calls: with the cluster secret
(``cluster.secret``), or, with ``ClusterSpec.tls``, by mutual TLS with certificates of a CA made
for the run (``pki/``: the internal ports demand a client certificate of that CA, servers and
the coordinator present theirs to their peers, the coordinator's port is TLS too). The proxies
forward bytes, so TLS passes through them; certificates name 127.0.0.1 and localhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from pyxia.common.channels import ChannelPool
from pyxia.common.ports import free_port
from pyxia.proto import admin_pb2, metadata_pb2
from pyxia.robustness.diskfull import TmpfsMount, can_mount_tmpfs
from pyxia.robustness.proxy import ProxyControl
from pyxia.security.cluster_auth import ClusterSecret, generate_secret_file
from pyxia.security.pki import CertificateAuthority
from pyxia.security.tls import ClientTls, TlsOptions
from pyxia.test_hooks import (
    DIAL_MAP_ENV,
    TEST_MODE_ENV,
    WAL_ACK_BEFORE_FSYNC_ENV,
    WAL_SYNCED_MARK_ENV,
    format_dial_map,
)

log = logging.getLogger("pyxia.robustness")

MARK_ENV = WAL_SYNCED_MARK_ENV
ACK_BEFORE_FSYNC_ENV = WAL_ACK_BEFORE_FSYNC_ENV
MARK_FILE = "synced-offset.mark"
COORDINATOR = "coord"


@dataclass
class Node:
    """One process of the cluster (a data server or the coordinator)."""

    name: str
    base: Path
    args: list[str]
    env: dict[str, str]
    public: str = ""
    internal: str = ""
    proc: subprocess.Popen[bytes] | None = None
    desired: str = "running"  # running | stopped | paused
    incarnation: int = 0
    expect_crash: bool = False
    """A crash failpoint is armed: an exit by SIGKILL is expected."""
    next_start_env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the next start only (failpoints armed at start)."""
    exits: list[tuple[int, int]] = field(default_factory=list)
    """(time, return code) of exits the harness did not cause."""

    @property
    def is_server(self) -> bool:
        return self.name != COORDINATOR

    @property
    def wal_dir(self) -> Path:
        return self.base / "wal"

    @property
    def data_dir(self) -> Path:
        return self.base / "db"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.incarnation += 1
        env = {**os.environ, TEST_MODE_ENV: "1", **self.env, **self.next_start_env}
        self.next_start_env = {}
        log_f = open(self.base / f"{self.name}.log", "ab")  # noqa: SIM115 - lives with the process
        log_f.write(f"==== start #{self.incarnation} at {time.time():.3f}\n".encode())
        log_f.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyxia", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=log_f,
            stderr=log_f,
            env=env,
        )
        log_f.close()
        self.desired = "running"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 (and reap)."""
        self.desired = "stopped"
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)  # a paused process dies as well
            p.kill()
        if p is not None:
            p.wait(30)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM (a graceful shutdown) and wait for the exit: its return code, or None if it
        did not exit within ``timeout`` (then it is killed)."""
        self.desired = "stopped"
        p = self.proc
        if p is None or p.poll() is not None:
            return p.returncode if p is not None else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)
            return None

    def pause(self) -> None:
        if self.alive and self.proc is not None:
            self.desired = "paused"
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.desired == "paused":
            self.desired = "running"
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)

    def shard_wal_dirs(self) -> list[Path]:
        if not self.wal_dir.exists():
            return []
        return sorted(p for p in self.wal_dir.glob("*/shard-*") if p.is_dir())

    def cut_unsynced(self) -> dict[str, int]:
        """Power loss: cuts each WAL back to the last offset it made durable (the node must be
        dead). Returns, per shard directory, how many entries were dropped."""
        from pyxia._native import Wal

        assert not self.alive, "cut the WAL of a dead node only"
        dropped: dict[str, int] = {}
        for d in self.shard_wal_dirs():
            try:
                mark = int((d / MARK_FILE).read_text().strip())
            except (OSError, ValueError):
                continue
            wal = Wal(d)
            try:
                last = wal.last_offset
                if mark < last:
                    wal.truncate(mark)
                    dropped[d.name] = last - max(mark, wal.first_offset - 1)
            finally:
                wal.close()
        return dropped

    def wipe(self) -> None:
        """Loses every file of the node (a replaced disk); the node must be dead."""
        assert not self.alive
        for d in (self.data_dir, self.wal_dir):
            if d.exists():
                for p in d.iterdir():
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)


def tso_available() -> bool:
    """Whether this pyxia has the timestamp oracle (its client and the ``tso`` namespace)."""
    try:
        import pyxia.tso.client  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ClusterSpec:
    servers: int = 3
    shards: int = 4
    replication_factor: int = 3
    wal_segment_size: int = 128 * 1024
    tmpfs_wal_bytes: int = 192 * 1024 * 1024
    disk_full_node: int = 0
    broken_ack_before_fsync_ms: int | None = None
    """Positive control: the servers' WALs acknowledge before fsync (flushing every N ms)."""
    tso: bool = False
    """Declare the timestamp oracle's one-shard namespace (``tso``)."""
    tls: bool = False
    """Mutual TLS on the internal ports and peer connections, TLS on the coordinator's port
    (instead of the cluster secret), and TLS on the public ports when this build has it
    (:func:`public_tls_available`)."""


def public_tls_available() -> bool:
    """Whether ``pyxia server`` has ``--tls-*`` for its public port and pyxia's clients take
    ``tls=`` (the public port's TLS; the internal port's does not depend on it)."""
    import dataclasses

    from pyxia.cli.server_cmd import server
    from pyxia.client.options import ClientOptions

    flags = {p.name for p in server.params}
    fields = {f.name for f in dataclasses.fields(ClientOptions)}
    return "tls_cert_file" in flags and "tls" in fields


def _tls_flags(prefix: str, pki: Path, name: str, *, client_auth: bool = False) -> list[str]:
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


class Cluster:
    def __init__(self, base: Path, spec: ClusterSpec) -> None:
        self.base = base
        self.spec = spec
        self.servers: list[Node] = []
        self.coordinator: Node | None = None
        self.proxies = ProxyControl()
        self.links: dict[str, str] = {}  # link name -> proxy address
        self.client_dial_map: dict[str, str] = {}
        self.tmpfs: TmpfsMount | None = None
        self.coordinator_addr = f"127.0.0.1:{free_port()}"
        self._channel: grpc.aio.Channel | None = None
        self.secret: ClusterSecret | None = None
        self.harness_tls: ClientTls | None = None
        """The harness's own TLS (certificate ``harness``) toward internal ports and the
        coordinator."""
        self._internal: ChannelPool | None = None
        self.public_tls = spec.tls and public_tls_available()

    @property
    def pki(self) -> Path:
        return self.base / "pki"

    @property
    def client_tls(self) -> TlsOptions | None:
        """TLS for the harness's clients of the public ports (None: plaintext)."""
        return TlsOptions(trusted_ca_file=self.pki / "ca.crt") if self.public_tls else None

    def _security(self, name: str) -> list[str]:
        """The flags proving membership for process ``name`` (a server or the coordinator)."""
        if not self.spec.tls:
            return ["--cluster-secret-file", str(self.base / "cluster.secret")]
        if name == COORDINATOR:
            listener = _tls_flags("", self.pki, name, client_auth=True)
        else:
            listener = _tls_flags("internal", self.pki, name, client_auth=True)
            if self.public_tls:
                listener += _tls_flags("", self.pki, name)[:4]  # certificate and key
        return [*listener, *_tls_flags("peer", self.pki, name)]

    def _make_credentials(self, names: list[str]) -> None:
        if not self.spec.tls:
            path = self.base / "cluster.secret"
            generate_secret_file(path)
            self.secret = ClusterSecret.from_file(path)
            return
        ca = CertificateAuthority.create("pyxia robustness CA")
        ca.save(self.pki)
        for name in [*names, COORDINATOR, "harness"]:
            ca.issue_files(self.pki, name)
        self.harness_tls = TlsOptions(
            cert_file=self.pki / "harness.crt",
            key_file=self.pki / "harness.key",
            trusted_ca_file=self.pki / "ca.crt",
        ).client()

    @property
    def nodes(self) -> list[Node]:
        return [*self.servers, *([self.coordinator] if self.coordinator else [])]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def by_internal(self, internal: str) -> Node | None:
        return next((n for n in self.servers if n.internal == internal), None)

    @property
    def public_addresses(self) -> list[str]:
        return [n.public for n in self.servers]

    async def start(self) -> None:
        spec = self.spec
        self.base.mkdir(parents=True, exist_ok=True)
        await self.proxies.start()
        publics = [f"127.0.0.1:{free_port()}" for _ in range(spec.servers)]
        internals = [f"127.0.0.1:{free_port()}" for _ in range(spec.servers)]
        names = [f"s{i}" for i in range(spec.servers)]
        self._make_credentials(names)
        for j, dest in enumerate(names):
            for i, src in enumerate(names):
                if i != j:
                    self.links[f"{src}->{dest}"] = await self.proxies.add(
                        f"{src}->{dest}", internals[j]
                    )
            self.links[f"{COORDINATOR}->{dest}"] = await self.proxies.add(
                f"{COORDINATOR}->{dest}", internals[j]
            )
            self.links[f"client->{dest}"] = await self.proxies.add(f"client->{dest}", publics[j])
        self.client_dial_map = {publics[j]: self.links[f"client->{d}"] for j, d in enumerate(names)}
        namespaces: list[dict[str, object]] = [
            {
                "name": "default",
                "initialShardCount": spec.shards,
                "replicationFactor": spec.replication_factor,
                "notificationsEnabled": True,
            }
        ]
        if spec.tso:
            namespaces.append(
                {
                    "name": "tso",
                    "initialShardCount": 1,
                    "replicationFactor": spec.replication_factor,
                    "tso": True,
                }
            )
        cfg = {
            "namespaces": namespaces,
            "servers": [
                {"public": p, "internal": i} for p, i in zip(publics, internals, strict=True)
            ],
            "loadBalancer": {"scheduleInterval": "1h", "quarantineTime": "5m"},
        }
        config = self.base / "cluster.yaml"
        config.write_text(yaml.safe_dump(cfg))
        for i, name in enumerate(names):
            base = self.base / name
            dial = {
                internals[j]: self.links[f"{name}->{names[j]}"]
                for j in range(spec.servers)
                if j != i
            }
            env = {DIAL_MAP_ENV: format_dial_map(dial), MARK_ENV: "1"}
            if spec.broken_ack_before_fsync_ms is not None:
                env[ACK_BEFORE_FSYNC_ENV] = str(spec.broken_ack_before_fsync_ms)
            node = Node(
                name,
                base,
                [
                    "server",
                    "--public-addr",
                    publics[i],
                    "--internal-addr",
                    internals[i],
                    "--metrics-addr",
                    "",
                    "--data-dir",
                    str(base / "db"),
                    "--wal-dir",
                    str(base / "wal"),
                    "--wal-segment-size",
                    str(spec.wal_segment_size),
                    "--enable-test-hooks",
                    *self._security(name),
                ],
                env,
                public=publics[i],
                internal=internals[i],
            )
            self.servers.append(node)
        if can_mount_tmpfs():
            node = self.servers[spec.disk_full_node % spec.servers]
            self.tmpfs = TmpfsMount(node.wal_dir, spec.tmpfs_wal_bytes)
            self.tmpfs.mount()
        coord_dial = {internals[j]: self.links[f"{COORDINATOR}->{d}"] for j, d in enumerate(names)}
        self.coordinator = Node(
            COORDINATOR,
            self.base / COORDINATOR,
            [
                "coordinator",
                "--cluster-config",
                str(config),
                "--metadata",
                "file",
                "--metadata-dir",
                str(self.base / COORDINATOR / "metadata"),
                "--internal-addr",
                self.coordinator_addr,
                "--admin-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "",
                *self._security(COORDINATOR),
            ],
            {DIAL_MAP_ENV: format_dial_map(coord_dial)},
            internal=self.coordinator_addr,
        )
        for n in self.nodes:
            n.start()

    @property
    def disk_full_node(self) -> Node | None:
        return self.servers[self.spec.disk_full_node % len(self.servers)] if self.tmpfs else None

    # -- status -----------------------------------------------------------------------------------

    async def status(self, timeout: float = 2.0) -> admin_pb2.GetClusterStatusResponse | None:
        if self._channel is None:
            if self.harness_tls is not None:
                self._channel = self.harness_tls.secure_channel(self.coordinator_addr, [])
            else:
                self._channel = grpc.aio.insecure_channel(self.coordinator_addr)
        call = self._channel.unary_unary(
            "/pyxia.admin.v1.PyxiaAdmin/GetClusterStatus",
            request_serializer=admin_pb2.GetClusterStatusRequest.SerializeToString,
            response_deserializer=admin_pb2.GetClusterStatusResponse.FromString,
        )
        try:
            res: admin_pb2.GetClusterStatusResponse = await call(
                admin_pb2.GetClusterStatusRequest(), timeout=timeout
            )
            return res
        except (TimeoutError, grpc.aio.AioRpcError):
            return None

    def internal_channels(self) -> ChannelPool:
        """Channels to the servers' internal ports proving membership like a peer would."""
        if self._internal is None:
            self._internal = ChannelPool(self.harness_tls, self.secret)
        return self._internal

    async def replica_status(self, n: Node, shard: int, instance_id: str) -> Any:
        """GetStatus of ``shard`` on server ``n`` (its internal port, bypassing the proxies),
        asked as the coordinator asks: with the cluster's instance id."""
        from pyxia.common.instance_id import INSTANCE_ID_HEADER
        from pyxia.proto import replication_pb2

        return await (
            self.internal_channels()
            .get(n.internal)
            .unary_unary(
                "/replication.OxiaCoordination/GetStatus",
                request_serializer=replication_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=replication_pb2.GetStatusResponse.FromString,
            )(
                replication_pb2.GetStatusRequest(shard=shard),
                timeout=3,
                metadata=((INSTANCE_ID_HEADER, instance_id),),
            )
        )

    async def debug(self, n: Node, method: str, req: dict[str, Any]) -> Any:
        """Calls the test hooks (debug service) of server ``n``."""
        from pyxia.server.debug_rpc import call_debug

        return await asyncio.to_thread(
            call_debug, n.internal, method, req, 3.0, tls=self.harness_tls, secret=self.secret
        )

    @staticmethod
    def shards_of(st: admin_pb2.GetClusterStatusResponse) -> dict[int, metadata_pb2.ShardMetadata]:
        out: dict[int, metadata_pb2.ShardMetadata] = {}
        for ns in st.status.namespaces.values():
            for sid, meta in ns.shards.items():
                out[int(sid)] = meta
        return out

    async def led_shards(self) -> list[tuple[str, int, Node]]:
        """(namespace, shard, leader) of every steady shard whose leader is known, sorted."""
        st = await self.status()
        if st is None or not st.leader:
            return []
        out = []
        for ns_name, ns in st.status.namespaces.items():
            for sid, meta in ns.shards.items():
                node = self.by_internal(meta.leader.internal) if meta.HasField("leader") else None
                if node is not None and meta.status == metadata_pb2.SteadyState:
                    out.append((ns_name, int(sid), node))
        return sorted(out, key=lambda x: (x[0], x[1]))

    async def move_leader(self, namespace: str, shard: int, timeout: float) -> tuple[str, int]:
        """A planned leader move (``PyxiaAdmin/MoveLeader``): the new leader and its term."""
        if self._channel is None:
            if self.harness_tls is not None:
                self._channel = self.harness_tls.secure_channel(self.coordinator_addr, [])
            else:
                self._channel = grpc.aio.insecure_channel(self.coordinator_addr)
        method = "/pyxia.admin.v1.PyxiaAdmin/MoveLeader"
        # A change of the cluster: the coordinator wants the cluster's proof of membership.
        proof = (self.secret.sign(method),) if self.secret is not None else None
        call = self._channel.unary_unary(
            method,
            request_serializer=admin_pb2.MoveLeaderRequest.SerializeToString,
            response_deserializer=admin_pb2.MoveLeaderResponse.FromString,
        )
        res: admin_pb2.MoveLeaderResponse = await call(
            admin_pb2.MoveLeaderRequest(
                namespace=namespace, shard=shard, timeout_ms=int(timeout * 1000)
            ),
            timeout=timeout + 5,
            metadata=proof,
        )
        return res.leader, int(res.term)

    async def split_shard(
        self, namespace: str, shard: int, *, wait: bool, timeout: float
    ) -> admin_pb2.SplitShardResponse:
        """A shard split (``PyxiaAdmin/SplitShard``), answered once started (``wait``: ended)."""
        if self._channel is None:
            if self.harness_tls is not None:
                self._channel = self.harness_tls.secure_channel(self.coordinator_addr, [])
            else:
                self._channel = grpc.aio.insecure_channel(self.coordinator_addr)
        method = "/pyxia.admin.v1.PyxiaAdmin/SplitShard"
        proof = (self.secret.sign(method),) if self.secret is not None else None
        call = self._channel.unary_unary(
            method,
            request_serializer=admin_pb2.SplitShardRequest.SerializeToString,
            response_deserializer=admin_pb2.SplitShardResponse.FromString,
        )
        res: admin_pb2.SplitShardResponse = await call(
            admin_pb2.SplitShardRequest(
                namespace=namespace, shard=shard, wait=wait, timeout_ms=int(timeout * 1000)
            ),
            timeout=timeout + 150 if wait else 30,
            metadata=proof,
        )
        return res

    async def leaders(self) -> dict[int, tuple[Node | None, int]]:
        """shard -> (leader node or None, term), from one status snapshot ({} if unknown)."""
        st = await self.status()
        if st is None or not st.leader:
            return {}
        out: dict[int, tuple[Node | None, int]] = {}
        for sid, meta in self.shards_of(st).items():
            node = self.by_internal(meta.leader.internal) if meta.HasField("leader") else None
            if meta.status != metadata_pb2.SteadyState:
                node = None
            out[sid] = (node, int(meta.term))
        return out

    async def steady(self) -> bool:
        st = await self.status()
        if st is None or not st.leader or not st.status.namespaces:
            return False
        if not all(s.available for s in st.servers):
            return False
        shards = self.shards_of(st)
        return bool(shards) and all(
            m.status == metadata_pb2.SteadyState and m.HasField("leader") for m in shards.values()
        )

    async def wait_steady(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.steady():
                return True
            await asyncio.sleep(0.2)
        return False

    # -- teardown ---------------------------------------------------------------------------------

    async def close(self) -> None:
        for n in self.nodes:
            try:
                n.kill()
            except Exception:  # pragma: no cover - best effort at teardown
                log.exception("killing %s", n.name)
        await self.proxies.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._internal is not None:
            await self._internal.close()
            self._internal = None
        if self.tmpfs is not None:
            self.tmpfs.unmount()
