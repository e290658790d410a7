"""kill -9 a standalone server in the middle of a write load, restart it on
the same directories: every acknowledged write is there, versions go on
increasing, sessions survive (then expire without keep-alives)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc

from conftest import wait_for
from grpc_stubs import OxiaClientStub
from pyxia.proto import client_pb2
from servers import ServerProcess, standalone_args


def writer(
    address: str, shard: int, start: int, acked: dict[str, tuple[bytes, int]], stop: threading.Event
) -> None:
    """Writes batches until the server dies; records what was acknowledged."""
    with grpc.insecure_channel(address) as ch:
        stub = OxiaClientStub(ch)
        i = start
        while not stop.is_set():
            puts = [
                client_pb2.PutRequest(key=f"/crash/{shard}/{j}", value=b"v%d" % j)
                for j in range(i, i + 20)
            ]
            try:
                res = stub.Write(client_pb2.WriteRequest(shard=shard, puts=puts), timeout=5)
            except grpc.RpcError:
                return
            for p, r in zip(puts, res.puts, strict=True):
                assert r.status == client_pb2.OK
                acked[p.key] = (p.value, r.version.version_id)
            i += 20


def test_kill_dash_nine_keeps_acknowledged_writes(tmp_path: Path) -> None:
    args = standalone_args(tmp_path, "--shards", "2")
    acked: dict[str, tuple[bytes, int]] = {}
    next_index = {0: 0, 1: 0}
    max_version = {0: -1, 1: -1}
    session_key = "/crash/ephemeral"
    for rnd in range(3):
        s = ServerProcess(args, tmp_path).start()
        try:
            with grpc.insecure_channel(s.public) as ch:
                stub = OxiaClientStub(ch)
                # Everything acknowledged before the crash is there.
                keys = sorted(acked)
                for k0 in range(0, len(keys), 500):
                    chunk = keys[k0 : k0 + 500]
                    by_shard: dict[int, list[str]] = {0: [], 1: []}
                    for k in chunk:
                        by_shard[int(k.split("/")[2])].append(k)
                    for shard, ks in by_shard.items():
                        if not ks:
                            continue
                        got = [
                            g
                            for r in stub.Read(
                                client_pb2.ReadRequest(
                                    shard=shard,
                                    gets=[
                                        client_pb2.GetRequest(key=k, include_value=True) for k in ks
                                    ],
                                )
                            )
                            for g in r.gets
                        ]
                        for k, g in zip(ks, got, strict=True):
                            assert g.status == client_pb2.OK, f"lost acknowledged write {k}"
                            assert g.value == acked[k][0]
                            assert g.version.version_id >= acked[k][1]
                if rnd > 0:
                    # The session made before the crash survived the restart ...
                    r = next(
                        iter(
                            stub.Read(
                                client_pb2.ReadRequest(
                                    shard=0, gets=[client_pb2.GetRequest(key=session_key)]
                                )
                            )
                        )
                    )
                    assert r.gets[0].status == client_pb2.OK

                    # ... and, with nobody keeping it alive, expires.
                    def gone(stub: OxiaClientStub = stub) -> bool:
                        r = next(
                            iter(
                                stub.Read(
                                    client_pb2.ReadRequest(
                                        shard=0, gets=[client_pb2.GetRequest(key=session_key)]
                                    )
                                )
                            )
                        )
                        return r.gets[0].status == client_pb2.KEY_NOT_FOUND

                    wait_for(gone, timeout=15, what="expiry of the pre-crash session")
                # Versions continue above everything acknowledged.
                for shard in (0, 1):
                    res = stub.Write(
                        client_pb2.WriteRequest(
                            shard=shard,
                            puts=[client_pb2.PutRequest(key=f"/crash/probe{shard}", value=b"")],
                        )
                    )
                    v = res.puts[0].version.version_id
                    assert v > max_version[shard]
                    max_version[shard] = v
                sid = stub.CreateSession(
                    client_pb2.CreateSessionRequest(
                        shard=0, session_timeout_ms=3000, client_identity="crash-test"
                    )
                ).session_id
                res = stub.Write(
                    client_pb2.WriteRequest(
                        shard=0,
                        puts=[client_pb2.PutRequest(key=session_key, value=b"e", session_id=sid)],
                    )
                )
                assert res.puts[0].status == client_pb2.OK
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=writer,
                    args=(s.public, shard, next_index[shard] + 1_000_000 * rnd, acked, stop),
                )
                for shard in (0, 1)
            ]
            for t in threads:
                t.start()
            before = len(acked)
            wait_for(lambda b=before: len(acked) > b + 400, timeout=30, what="acknowledged writes")
            s.kill()  # kill -9 in the middle of the load
            stop.set()
            for t in threads:
                t.join(15)
            for k, (_, v) in acked.items():
                shard = int(k.split("/")[2])
                max_version[shard] = max(max_version[shard], v)
        finally:
            s.kill()
    assert len(acked) > 1200


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    s = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    with grpc.insecure_channel(s.public) as ch:
        stub = OxiaClientStub(ch)
        stub.Write(
            client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="/clean", value=b"1")])
        )
    t0 = time.monotonic()
    assert s.terminate(timeout=30) == 0
    assert time.monotonic() - t0 < 10
    assert "stopped" in s.output()
    s2 = ServerProcess(standalone_args(tmp_path), tmp_path).start()
    try:
        with grpc.insecure_channel(s2.public) as ch:
            stub = OxiaClientStub(ch)
            r = next(
                iter(
                    stub.Read(
                        client_pb2.ReadRequest(
                            shard=0, gets=[client_pb2.GetRequest(key="/clean", include_value=True)]
                        )
                    )
                )
            )
            assert r.gets[0].value == b"1"
    finally:
        s2.kill()
