"""pyxia's client against a real 3-server cluster (``pyxia server`` x3 +
``pyxia coordinator``, RF=3) while the leader of a shard is killed -9:
notifications neither lose nor repeat a batch, sequence keys stay
contiguous, sessions (and their ephemeral records) survive the leader change
and expire when their client dies, and a lock stays held by its owner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pyxia
from proc_cluster import Member, ProcCluster
from pyxia.client.errors import KeyNotFound, RequestIndeterminate
from pyxia.client.recipes.lock import SyncLock
from pyxia.client.results import NotificationBatch, NotificationType
from servers import wait_for


def key_on_shard(client: pyxia.Client, shard: int, prefix: str) -> str:
    for i in range(10_000):
        k = f"{prefix}{i}"
        if client.shard_for(k) == shard:
            return k
    raise AssertionError(f"no key of {prefix!r} maps to shard {shard}")


def holds_for(cond: Callable[[], bool], seconds: float) -> None:
    """Asserts ``cond`` stays true through an observation window (a property
    over time, not a wait for something to happen)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert cond()
        time.sleep(0.1)


def kill_leader(proc_cluster: ProcCluster, shard: int) -> Member:
    """kill -9 the leader of ``shard``; returns once another server leads it
    at a higher term."""
    victim, term = proc_cluster.shard_leader(shard)
    assert victim is not None
    victim.kill()

    def new_leader() -> bool:
        member, t = proc_cluster.shard_leader(shard)
        return member is not None and member is not victim and t > term

    wait_for(new_leader, timeout=60, interval=0.05, what=f"a new leader for shard {shard}")
    return victim


def test_notifications_and_sequences_across_leader_change(proc_cluster: ProcCluster) -> None:
    batches: list[NotificationBatch] = []
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    with pyxia.Client(proc_cluster.service_addresses, request_timeout_s=30.0) as client:
        feed = client.get_notifications()
        feed.wait_connected(30)

        def collect() -> None:
            while not stop.is_set():
                b = feed.get(timeout=0.2)
                if b is not None:
                    batches.append(b)

        def write() -> None:
            i = 0
            while not stop.is_set():
                key = f"/n/{i:06d}"
                try:
                    client.put(key, b"v")
                except Exception as e:  # the test decides
                    errors.append(e)
                    continue
                acked.append(key)
                i += 1

        seq_part = "seq"
        seq_shard = client.shard_for("/s/", seq_part)
        seq_acked: list[str] = []
        seq_indeterminate = 0

        def sequences() -> None:
            nonlocal seq_indeterminate
            while not stop.is_set():
                try:
                    r = client.put("/s/", b"x", partition_key=seq_part, sequence_key_deltas=[1])
                except RequestIndeterminate:
                    seq_indeterminate += 1  # may or may not be applied: the server decides
                    continue
                except Exception as e:
                    errors.append(e)
                    continue
                seq_acked.append(r.key)

        threads = [threading.Thread(target=f) for f in (collect, write, sequences)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(acked) >= 200 and len(seq_acked) >= 50, timeout=60)
            kill_leader(proc_cluster, seq_shard)
            n, s = len(acked), len(seq_acked)
            wait_for(
                lambda: len(acked) >= n + 200 and len(seq_acked) >= s + 50,
                timeout=60,
                what="writes after the leader change",
            )
            last = set(acked)
            wait_for(
                lambda: (
                    last
                    <= {
                        x.key
                        for b in list(batches)
                        for x in b
                        if x.type is NotificationType.KEY_CREATED
                    }
                ),
                timeout=60,
                what="a notification for every acknowledged write",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        feed.close()
        assert not errors, errors[:3]

        # No batch lost or repeated: per shard, offsets strictly increase.
        per_shard: dict[int, list[int]] = {}
        for b in batches:
            per_shard.setdefault(b.shard, []).append(b.offset)
        assert set(per_shard) == {0, 1, 2}
        for shard, offsets in per_shard.items():
            assert offsets == sorted(set(offsets)), f"shard {shard} repeated or reordered"

        # Sequence keys: acknowledged ones increase in acknowledgement order, and what the
        # shard holds is contiguous (no number lost or given twice by the new leader).
        assert seq_acked == sorted(seq_acked) and len(set(seq_acked)) == len(seq_acked)
        stored = client.list("/s/", "/s/~", partition_key=seq_part)
        assert set(seq_acked) <= set(stored)
        numbers = [int(k.rsplit("-", 1)[-1]) for k in stored]
        assert numbers == list(range(1, len(stored) + 1))
        assert len(stored) <= len(seq_acked) + seq_indeterminate


HOLDER = textwrap.dedent(
    """
    import sys, pyxia
    addrs, key = sys.argv[1].split(","), sys.argv[2]
    c = pyxia.Client(addrs, session_timeout_s=4.0, request_timeout_s=30.0)
    c.put(key, b"alive", ephemeral=True)
    print("ready", flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_session_survives_leader_change_and_expires_with_its_client(
    proc_cluster: ProcCluster,
) -> None:
    with pyxia.Client(proc_cluster.service_addresses, request_timeout_s=30.0) as client:
        key = key_on_shard(client, 0, "/eph/")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, ",".join(proc_cluster.service_addresses), key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ready"
            assert client.get(key).version.is_ephemeral

            kill_leader(proc_cluster, 0)
            # The new leader restored the session; the holder's keep-alives reach it and the
            # record stays for well over a session timeout.
            wait_for(lambda: proc_cluster.steady(), timeout=60, interval=0.05)
            holds_for(lambda: client.get(key).value == b"alive", seconds=8.0)
            assert holder.poll() is None

            # The holder dies without closing its session: the new leader expires it.
            holder.kill()
            holder.wait(30)

            def gone() -> bool:
                try:
                    client.get(key)
                except KeyNotFound:
                    return True
                return False

            wait_for(gone, timeout=30, interval=0.1, what="the ephemeral record to expire")
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(30)


def test_lock_held_across_leader_change(proc_cluster: ProcCluster) -> None:
    with (
        pyxia.Client(proc_cluster.service_addresses, session_timeout_s=5.0) as a,
        pyxia.Client(proc_cluster.service_addresses, session_timeout_s=5.0) as b,
    ):
        key = key_on_shard(a, 1, "/locks/")
        lock_a = SyncLock(a, key)
        token = lock_a.acquire(timeout=30)
        lock_b = SyncLock(b, key)
        assert not lock_b.try_acquire()

        kill_leader(proc_cluster, 1)
        wait_for(lambda: proc_cluster.steady(), timeout=60, interval=0.05)
        # The owner keeps it through the change (no loss within two session timeouts) ...
        assert not lock_a.wait_lost(timeout=10)
        assert lock_a.held and lock_a.fencing_token == token
        assert a.get(key).version.version_id == token
        # ... the other client still cannot take it ...
        assert not lock_b.try_acquire()
        # ... until the owner lets go.
        lock_a.release()
        token_b = lock_b.acquire(timeout=30)
        assert token_b > token
        lock_b.release()
