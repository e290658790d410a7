"""A real proc_cluster: three ``pyxia server`` processes and ``pyxia coordinator``
(file metadata), RF=3. kill -9 the leader of a shard under a write load:
a new leader serves, no acknowledged write is lost, and the killed server
returns as a follower."""

from __future__ import annotations

import threading

import pyxia
from proc_cluster import ProcCluster
from pyxia.proto import replication_pb2
from servers import wait_for


def writer(
    addresses: list[str], acked: list[str], stop: threading.Event, errors: list[BaseException]
) -> None:
    with pyxia.Client(addresses, request_timeout_s=20.0) as client:
        i = 0
        while not stop.is_set():
            key = f"/load/{i:06d}"
            try:
                client.put(key, key.encode())
            except Exception as e:  # recorded: the test decides
                errors.append(e)
                continue
            acked.append(key)
            i += 1


def test_kill_leader_under_load(proc_cluster: ProcCluster) -> None:
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    t = threading.Thread(target=writer, args=(proc_cluster.service_addresses, acked, stop, errors))
    t.start()
    try:
        wait_for(lambda: len(acked) >= 200, timeout=60, what="writes before the kill")
        victim, term = proc_cluster.shard_leader(0)
        victim.kill()
        n = len(acked)
        wait_for(
            lambda: proc_cluster.steady() and proc_cluster.shard_leader(0)[0] is not victim,
            timeout=60,
            interval=0.05,
            what="a new leader for shard 0",
        )
        assert proc_cluster.shard_leader(0)[1] > term
        wait_for(lambda: len(acked) >= n + 300, timeout=60, what="writes after the failover")
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors[:3]
    # every acknowledged write is there
    with pyxia.Client(proc_cluster.service_addresses) as client:
        missing = [k for k in acked if client.get(k).value != k.encode()]
    assert not missing, missing[:5]
    # the killed server returns and follows again
    victim.start()

    def follows() -> bool:
        _, term = proc_cluster.shard_leader(0)
        try:
            st = proc_cluster.replica_status(victim, 0)
        except Exception:
            return False
        return st.status == replication_pb2.FOLLOWER and st.term == term

    wait_for(follows, timeout=60, interval=0.1, what="the killed server to follow again")
