"""A full disk under the WAL must fail the append with a WalError, not kill the process.

The WAL's segments are memory-mapped: a segment preallocated as a sparse file gets its pages on
first write, and on a full file system that page fault is a SIGBUS that kills the whole server
(every shard of it). Segments are therefore allocated for real (fallocate) when created, so a
full disk shows up as an error of the append that needs a new segment. Needs a tmpfs mount
(root); skipped otherwise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyxia.robustness.diskfull import TmpfsMount, can_mount_tmpfs

pytestmark = pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and tmpfs mounts")

SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from pyxia._native import Wal, WalError
    wal_dir, filler = sys.argv[1], sys.argv[2]
    w = Wal(wal_dir, segment_size=1024 * 1024)
    w.append(1, 0, b"first", 0)
    w.sync()
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the file system
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    os.close(fd)
    last = 0
    try:
        for i in range(1, 1000):
            w.append(1, i, b"y" * 40000, 0)
            w.sync()
            last = i
    except WalError as e:
        print("wal-error", last, type(e).__name__, e, flush=True)
    try:
        w.close()  # may fail to write the (rebuildable) index: the disk is full
    except WalError:
        pass
    os.unlink(filler)
    w = Wal(wal_dir)  # everything appended before the error is still there
    assert w.last_offset == last, (w.last_offset, last)
    print("ok", flush=True)
    """
)


def test_disk_full_fails_the_append_not_the_process(tmp_path: Path) -> None:
    with TmpfsMount(tmp_path / "mnt", size_bytes=6 * 1024 * 1024) as mnt:
        p = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(mnt / "wal"), str(mnt / "filler")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "wal-error" in p.stdout and "ok" in p.stdout, p.stdout


async def test_follower_recovers_once_its_disk_has_room(tmp_path: Path) -> None:
    """Found by the robustness suite: a follower whose WAL hit a full disk stays NOT_MEMBER;
    its NODE_IS_NOT_MEMBER answer ends the leader's stream while the leader is still sending,
    which gRPC reports to the leader as INTERNAL, so the leader never sent it a snapshot and
    the replica stayed failed after the disk had room again. The leader's cursor now asks a
    follower for its status after a failed stream, and sends a snapshot to a follower that is
    NOT_MEMBER or holds less than it acknowledged."""
    from cluster import Cluster, leader_controller
    from pyxia.proto import client_pb2
    from pyxia.server.leader_controller import FOLLOWER
    from servers import wait_until

    mount = TmpfsMount(tmp_path / "n2" / "wal", size_bytes=8 * 1024 * 1024)
    mount.mount()
    c = await Cluster.start(tmp_path, 3, wal_segment_size=64 * 1024)
    try:
        n0, n1, n2 = c.nodes
        await c.elect(0, n0, [n0, n1, n2])
        lc = leader_controller(n0, 0)
        write = c.channel(n0.public).unary_unary(
            "/io.oxia.proto.v1.OxiaClient/Write",
            request_serializer=client_pb2.WriteRequest.SerializeToString,
            response_deserializer=client_pb2.WriteResponse.FromString,
        )

        async def put(key: str) -> None:
            req = client_pb2.WriteRequest(
                shard=0, puts=[client_pb2.PutRequest(key=key, value=b"v" * 1000)]
            )
            res = await write(req, timeout=10)
            assert res.puts[0].status == client_pb2.OK

        await put("/a")
        mount.fill()
        for i in range(150):  # the leader and n1 keep committing
            await put(f"/b{i}")
        # n2 fails (NOT_MEMBER, its failure kept); the leader's snapshot may already have brought
        # it back (installing one clears the WAL, which frees room), so wait on the failure.
        await wait_until(lambda: n2.s.director.followers[0].failure is not None, what="n2 to fail")
        mount.free()
        await put("/c")

        def recovered() -> bool:
            fc = n2.s.director.followers[0]
            return fc.status == FOLLOWER and fc.storage.commit_offset >= lc.commit_offset - 1

        await wait_until(recovered, timeout=30, what="n2 to recover")
    finally:
        await c.close()
        mount.unmount()
