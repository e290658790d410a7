"""Replication across real processes: three ``pyxia server`` processes on
loopback, driven through the coordination RPCs as a coordinator would (a
Handshake when a server starts, the cluster's instance id on every call, the
shard in the pushed assignments before its first NewTerm);
kill -9 a follower under load and restart it; kill -9 the leader, fence the
survivors with a higher term, elect the highest head. No acknowledged write
may be lost, and every replica's log must agree on the committed prefix,
CRC chain included."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from cluster import free_port
from grpc_stubs import OxiaClientStub, OxiaCoordinationStub
from pyxia._native import Wal
from pyxia.proto import client_pb2, replication_pb2
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import internal_channel
from pyxia.security.tls import ClientTls
from servers import ServerProcess, cluster_secret_file, wait_for

SHARD = 0
NS = "default"
INSTANCE_ID = "pyxia-test-processes"
MD = (("instance-id", INSTANCE_ID),)


class Proc:
    """One ``pyxia server``; the processes under one directory share its cluster secret."""

    def __init__(self, base: Path, *extra: str) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.secret_file = cluster_secret_file(base.parent)
        self.secret = ClusterSecret.from_file(self.secret_file)
        self.extra = extra
        self.internal_tls: ClientTls | None = None  # the driver's TLS to internal ports
        self.public = f"127.0.0.1:{free_port()}"
        self.internal = f"127.0.0.1:{free_port()}"
        self.proc: ServerProcess | None = None

    def start(self) -> None:
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
                "--cluster-secret-file",
                str(self.secret_file),
                *self.extra,
            ],
            self.base,
        ).start()
        self.join()

    def join(self) -> None:
        """What the coordinator does when a server comes up: Handshake, then the assignments
        (the shard, leaderless: a server creates a replica only for a shard they know)."""
        res = self.coord().Handshake(
            replication_pb2.HandshakeRequest(instance_id=INSTANCE_ID), timeout=30
        )
        assert res.status != replication_pb2.HANDSHAKE_STATUS_MISMATCH
        a = client_pb2.ShardAssignments()
        nsa = a.namespaces[NS]
        nsa.assignments.add(
            shard=SHARD,
            int32_hash_range=client_pb2.Int32HashRange(
                min_hash_inclusive=0, max_hash_inclusive=0xFFFFFFFF
            ),
        )
        self.coord().PushShardAssignments(iter([a]), timeout=30, metadata=MD)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def coord(self) -> OxiaCoordinationStub:
        return OxiaCoordinationStub(internal_channel(self.internal, self.internal_tls, self.secret))


def new_term(p: Proc, term: int) -> replication_pb2.EntryId:
    res = p.coord().NewTerm(
        replication_pb2.NewTermRequest(
            namespace=NS,
            shard=SHARD,
            term=term,
            options=replication_pb2.NewTermOptions(
                enable_notifications=True, key_sorting=replication_pb2.HIERARCHICAL
            ),
        ),
        timeout=30,
        metadata=MD,
    )
    return res.head_entry_id


def become_leader(leader: Proc, term: int, followers: dict[str, replication_pb2.EntryId]) -> None:
    leader.coord().BecomeLeader(
        replication_pb2.BecomeLeaderRequest(
            namespace=NS, shard=SHARD, term=term, replication_factor=3, follower_maps=followers
        ),
        timeout=60,
        metadata=MD,
    )


def writer(p: Proc, tag: str, acked: list[str], stop: threading.Event) -> None:
    with grpc.insecure_channel(p.public) as ch:
        stub = OxiaClientStub(ch)
        i = 0
        while not stop.is_set():
            keys = [f"/{tag}/{i}-{j}" for j in range(10)]
            try:
                res = stub.Write(
                    client_pb2.WriteRequest(
                        shard=SHARD,
                        puts=[client_pb2.PutRequest(key=k, value=k.encode()) for k in keys],
                    ),
                    timeout=5,
                )
            except grpc.RpcError:
                return
            assert all(r.status == client_pb2.OK for r in res.puts)
            acked.extend(keys)
            i += 1


def read_all(p: Proc, keys: list[str]) -> list[client_pb2.GetResponse]:
    out: list[client_pb2.GetResponse] = []
    with grpc.insecure_channel(p.public) as ch:
        stub = OxiaClientStub(ch)
        for k in range(0, len(keys), 500):
            req = client_pb2.ReadRequest(
                shard=SHARD,
                gets=[client_pb2.GetRequest(key=x, include_value=True) for x in keys[k : k + 500]],
            )
            for r in stub.Read(req, timeout=30):
                out.extend(r.gets)
    return out


def load_for(p: Proc, tag: str, acked: list[str], n: int) -> None:
    stop = threading.Event()
    t = threading.Thread(target=writer, args=(p, tag, acked, stop))
    t.start()
    before = len(acked)
    try:
        wait_for(lambda: len(acked) >= before + n, timeout=60, what=f"{n} writes")
    finally:
        stop.set()
        t.join(30)


def log_of(p: Proc) -> list[tuple[int, int, int]]:
    """(offset, term, crc) of every WAL entry of the shard, read offline."""
    with Wal(p.base / "wal" / NS / f"shard-{SHARD}", commit_offset=-1) as w:
        return (
            [(e.offset, e.term, e.crc) for e in w.read_batch(w.first_offset, 10**7, 1 << 40)]
            if w.last_offset >= 0
            else []
        )


def test_processes_kill_follower_then_leader(tmp_path: Path) -> None:
    procs = [Proc(tmp_path / f"n{i}") for i in range(3)]
    try:
        for p in procs:
            p.start()
        a, b, c = procs
        term = 1
        heads = {p.internal: new_term(p, term) for p in procs}
        become_leader(a, term, {k: v for k, v in heads.items() if k != a.internal})
        acked: list[str] = []
        load_for(a, "w1", acked, 300)

        # kill -9 a follower under load; writes go on (leader + the other)
        stop = threading.Event()
        t = threading.Thread(target=writer, args=(a, "w2", acked, stop))
        t.start()
        wait_for(lambda: len(acked) >= 500, timeout=60, what="writes")
        c.kill()
        n = len(acked)
        wait_for(lambda: len(acked) >= n + 200, timeout=60, what="writes without c")
        c.start()  # it rejoins the same term and catches up
        wait_for(lambda: len(acked) >= n + 400, timeout=60, what="writes with c back")
        stop.set()
        t.join(30)

        # kill -9 the leader in the middle of the load
        stop = threading.Event()
        t = threading.Thread(target=writer, args=(a, "w3", acked, stop))
        t.start()
        wait_for(lambda: len(acked) >= n + 600, timeout=60, what="writes")
        a.kill()
        stop.set()
        t.join(30)

        # fence the survivors with a higher term, elect the highest head
        term = 2
        heads = {p: new_term(p, term) for p in (b, c)}
        best = max(heads, key=lambda p: (heads[p].term, heads[p].offset))
        other = c if best is b else b
        become_leader(best, term, {other.internal: heads[other]})
        got = read_all(best, acked)
        lost = [k for k, g in zip(acked, got, strict=True) if g.status != client_pb2.OK]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        load_for(best, "w4", acked, 100)

        # the old leader returns as a follower (a coordinator would AddFollower it)
        a.start()
        head = new_term(a, term)
        best.coord().AddFollower(
            replication_pb2.AddFollowerRequest(
                namespace=NS,
                shard=SHARD,
                term=term,
                follower_name=a.internal,
                follower_head_entry_id=head,
            ),
            timeout=30,
            metadata=MD,
        )
        load_for(best, "w5", acked, 50)

        def statuses() -> bool:
            st = [
                p.coord().GetStatus(
                    replication_pb2.GetStatusRequest(shard=SHARD), timeout=5, metadata=MD
                )
                for p in procs
            ]
            return len({s.head_offset for s in st}) == 1

        wait_for(statuses, timeout=60, what="every replica at the same head")
    finally:
        for p in procs:
            p.kill()
    # Offline: the three logs agree entry by entry, CRC chain included.
    logs = [log_of(p) for p in procs]
    assert logs[0] == logs[1] == logs[2]
    assert len(logs[0]) > 100
