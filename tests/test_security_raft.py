"""Security regressions of the raft metadata provider (issue 16).

The audit's attack: a pickle whose ``__reduce__`` runs a shell command, zlib-compressed and
framed as PySyncObj frames it (``int32 length + zlib(pickle)``), sent to the raft port, ran the
command in the coordinator. Here it must not run: without the secret the frame is not
authenticated (the connection is dropped before anything is unpickled); with the secret, the
allowlist refuses the pickle (the connection is dropped, the coordinator keeps working). The
raft listener binds only the given host, and ``--metadata raft`` without a secret refuses to
start with one line.

Each attack waits for the server to drop the connection (EOF on our socket): that is the proof
the frame was read and refused, so the marker file's absence afterwards means something.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import ipaddress
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pysyncobj.journal
import pysyncobj.pickle
import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.monotonic import monotonic
from pysyncobj.node import TCPNode

from conftest import wait_for
from pyxia.common.ports import free_port
from pyxia.coordinator.metadata import NOT_EXISTS, raft_unpickler
from pyxia.coordinator.metadata.raft import RaftMetadataProvider
from servers import cluster_secret_file
from test_metadata_providers import DEADLINE, RAFT_SECRET, RaftBackend, sample_status


class _RunsCommand:
    """The audit's payload: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _frame(message: Any, secret: bytes | None) -> bytes:
    """A frame exactly as PySyncObj's TcpConnection.send builds it."""
    data = zlib.compress(pickle.dumps(message, 2), 3)
    if secret is not None:
        data = getEncryptor(secret).encrypt_at_time(data, int(monotonic()))
    return struct.pack("i", len(data)) + data


def _read_frame(sock: socket.socket, secret: bytes) -> Any:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + struct.unpack("i", buf[:4])[0]:
        chunk = sock.recv(65536)
        assert chunk, "the raft port closed the connection"
        buf += chunk
    (n,) = struct.unpack("i", buf[:4])
    return raft_unpickler.loads(zlib.decompress(getEncryptor(secret).decrypt(buf[4 : 4 + n])))


def _dropped_after(address: str, payload: bytes) -> bool:
    """Sends ``payload`` on a fresh connection; True once the server closes it (EOF or reset),
    False if it answers instead."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as s:
        s.sendall(payload)
        try:
            return s.recv(65536) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
async def raft() -> AsyncIterator[RaftBackend]:
    b = RaftBackend()
    await b.start()
    try:
        yield b
    finally:
        await b.cleanup()


async def _still_works(b: RaftBackend) -> None:
    leader, _ = await b.lead()
    _, version = await leader.get()
    await leader.store(sample_status(7), version)
    assert (await leader.get())[0] == sample_status(7)


async def test_frame_with_the_secret_is_answered(raft: RaftBackend) -> None:
    """Control: our framing is PySyncObj's. A benign first frame made with the secret gets the
    handshake's answer (the server's random key), so the refusals below are real refusals."""
    host, port = raft.addresses[0].rsplit(":", 1)

    mine = os.urandom(32)

    def handshake() -> Any:
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as s:
            s.sendall(_frame(mine, RAFT_SECRET))
            return _read_frame(s, RAFT_SECRET)

    # (our key, echoed as the server's frames' tag; the key our frames must carry)
    echoed, theirs = await asyncio.to_thread(handshake)
    assert echoed == mine and isinstance(theirs, bytes) and len(theirs) == 32


async def test_audit_exploit_without_the_secret_does_not_run(
    raft: RaftBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    frame = _frame(_RunsCommand(marker), None)  # the audit's unauthenticated frame
    assert await asyncio.to_thread(_dropped_after, raft.addresses[0], frame)
    wrong = _frame(_RunsCommand(marker), b"not-the-secret-0123456789abcdef")
    assert await asyncio.to_thread(_dropped_after, raft.addresses[1], wrong)
    assert not marker.exists()
    await _still_works(raft)
    assert not marker.exists()


async def test_malicious_pickle_with_the_secret_is_refused(
    raft: RaftBackend, tmp_path: Path
) -> None:
    """A holder of the secret still cannot make PySyncObj run code: the allowlist refuses the
    pickle, as the first frame and after a completed handshake."""
    marker = tmp_path / "pwned"
    first = _frame(_RunsCommand(marker), RAFT_SECRET)
    assert await asyncio.to_thread(_dropped_after, raft.addresses[0], first)

    host, port = raft.addresses[1].rsplit(":", 1)

    def after_handshake() -> bool:
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as s:
            mine = os.urandom(32)
            s.sendall(_frame(mine, RAFT_SECRET))
            _, theirs = _read_frame(s, RAFT_SECRET)
            s.sendall(_frame((theirs, {"type": "x", "v": _RunsCommand(marker)}), RAFT_SECRET))
            try:
                return s.recv(65536) == b""
            except ConnectionResetError:
                return True

    assert await asyncio.to_thread(after_handshake)
    assert not marker.exists()
    await _still_works(raft)
    assert not marker.exists()


def test_allowlist_refuses_code_and_accepts_pysyncobj_data(tmp_path: Path) -> None:
    assert raft_unpickler.installed(), "importing the raft provider installs the allowlist"
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_RunsCommand(marker), 2)
    for loads in (pysyncobj.pickle.loads, pysyncobj.journal.loads):
        with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
            loads(evil)
    # Snapshots are gzip(pickle), read with pysyncobj.pickle.load.
    with pytest.raises(pickle.UnpicklingError):
        pysyncobj.pickle.load(gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(evil))))
    # Globals that would be harmless to call are refused too: only data comes back.
    for obj in (print, int.from_bytes, io.BytesIO, Path("/")):
        with pytest.raises(pickle.UnpicklingError):
            pysyncobj.pickle.loads(pickle.dumps(obj, 2))
    # The allowed constructors take only PySyncObj's own arguments.
    with pytest.raises(pickle.UnpicklingError):
        pysyncobj.pickle.loads(
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x03\x00\x00\x00hexq\x00\x86R."
        )
    with pytest.raises(pickle.UnpicklingError):
        pysyncobj.pickle.loads(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")
    assert not marker.exists()
    # What PySyncObj really sends and stores comes back intact.
    nodes = {TCPNode("127.0.0.1:1"), TCPNode("127.0.0.1:2")}
    message = {
        "type": "append_entries",
        "term": 3,
        "commit_index": 7,
        "entries": [(b"\x00" + pickle.dumps((1, ("tok",)), 2), 8, 3), (b"", 9, 3)],
        "serialized": (b"\x1f\x8b\xff", True, False),
        "prevLogIdx": 7,
        "prevLogTerm": 2,
        "ok": None,
        "f": 1.5,
    }
    snapshot = ([{"_x": 1}, {"snapshot": ("{}", 4), "leader_token": "t"}], (b"", 9, 3), nodes)
    assert pysyncobj.pickle.loads(pickle.dumps(message, 2)) == message
    got = pysyncobj.pickle.loads(pickle.dumps(snapshot, 2))
    assert got == snapshot
    assert {n.address for n in got[2]} == {"127.0.0.1:1", "127.0.0.1:2"}


def test_importing_pysyncobj_leaves_socket_inet_ntop_working() -> None:
    """PySyncObj replaces socket.inet_ntop with a Windows-only function; the raft module
    restores it."""
    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"


async def test_raft_binds_only_the_given_host() -> None:
    address = f"127.0.0.1:{free_port()}"
    port = int(address.rsplit(":", 1)[1])
    p = RaftMetadataProvider(address, [address], secret=RAFT_SECRET, election_timeout=(1.0, 2.0))
    await p.start()
    try:
        assert _listeners(port) == ["127.0.0.1"]
        other = _non_loopback_address()
        if other is not None:
            with (
                pytest.raises(ConnectionRefusedError),
                socket.create_connection((other, port), timeout=5),
            ):
                pass
    finally:
        await p.close()


def _listeners(port: int) -> list[str]:
    """The local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                host, p = local.split(":")
                if int(p, 16) != port or state != "0A":  # 0A = LISTEN
                    continue
                raw = bytes.fromhex(host)  # little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(words)))
    return found


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") else addr


def test_raft_provider_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        RaftMetadataProvider("127.0.0.1:1", [], secret=b"short")


def test_raft_provider_refuses_python_dash_o() -> None:
    code = (
        "import asyncio, sys\n"
        "from pyxia.coordinator.metadata.raft import RaftMetadataProvider\n"
        "from pyxia.errors import ResourceUnavailable\n"
        "p = RaftMetadataProvider('127.0.0.1:1', [], secret=b'x' * 32)\n"
        "try:\n"
        "    asyncio.run(p.start())\n"
        "except ResourceUnavailable as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "python -O" in r.stdout


def _coordinator(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "namespaces:\n  - name: default\n    initialShardCount: 1\n    replicationFactor: 1\n"
        "servers:\n  - public: 127.0.0.1:1\n    internal: 127.0.0.1:2\n"
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxia",
            "coordinator",
            "--cluster-config",
            str(config),
            "--cluster-secret-file",
            str(cluster_secret_file(tmp_path)),
            "--metadata",
            "raft",
            "--metadata-dir",
            str(tmp_path / "meta"),
            "--raft-address",
            f"127.0.0.1:{free_port()}",
            "--internal-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_raft_without_a_secret_exits_with_one_line(tmp_path: Path) -> None:
    r = _coordinator(tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--raft-secret-file" in lines[0]


def test_cli_raft_refuses_a_readable_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "raft.secret"
    secret.write_bytes(RAFT_SECRET)
    secret.chmod(0o644)
    r = _coordinator(tmp_path, "--raft-secret-file", str(secret))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "chmod 600" in lines[0] and str(secret) in lines[0]


# PySyncObj 0.3.17 reads its journal's .meta file without closing it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_snapshots_and_restart_work_through_the_allowlist(tmp_path: Path) -> None:
    """Everything PySyncObj unpickles goes through the allowlist: a follower that lost its disk
    is sent a snapshot (gzip(pickle), streamed and loaded), and a full restart reloads journals
    and snapshots; the status survives all of it."""
    assert raft_unpickler.installed()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    def node(i: int) -> RaftMetadataProvider:
        return RaftMetadataProvider(
            addresses[i],
            addresses,
            data_dir=tmp_path / f"node{i}",
            heartbeat_interval=0.05,
            election_timeout=(0.3, 0.6),
            connection_retry=0.2,
            secret=RAFT_SECRET,
        )

    b = RaftBackend()
    b.addresses, b.nodes = addresses, [node(i) for i in range(3)]
    b.providers = list(b.nodes)
    try:
        await b.start()
        leader, _ = await b.lead()
        version = NOT_EXISTS
        for i in range(5):
            version = await leader.store(sample_status(i), version)
        lagging = next(i for i, n in enumerate(b.nodes) if n is not leader)
        await b.nodes[lagging].close()
        shutil.rmtree(tmp_path / f"node{lagging}")  # its disk is gone
        for i in range(5, 10):
            version = await leader.store(sample_status(i), version)
        for n in b.nodes:
            if n._machine is not None:
                n._machine.forceLogCompaction()
        dumps = [tmp_path / f"node{i}" / "raft.dump" for i in range(3) if i != lagging]
        await asyncio.to_thread(
            wait_for, lambda: all(d.exists() for d in dumps), DEADLINE, 0.02, "log compaction"
        )
        b.nodes[lagging] = node(lagging)
        b.providers.append(b.nodes[lagging])
        await b.nodes[lagging].start()

        deadline = time.monotonic() + DEADLINE
        while (await b.nodes[lagging].get())[1] != version:
            assert time.monotonic() < deadline, "the follower never caught up"
            await asyncio.sleep(0.02)
        assert (tmp_path / f"node{lagging}" / "raft.dump").exists(), "not sent a snapshot"
        assert (await b.nodes[lagging].get())[0] == sample_status(9)
    finally:
        await b.cleanup()
    again = RaftBackend()
    again.addresses, again.nodes = addresses, [node(i) for i in range(3)]
    again.providers = list(again.nodes)
    try:
        await again.start()
        leader, _ = await again.lead()
        assert await leader.get() == (sample_status(9), version)
        await leader.store(sample_status(10), version)
    finally:
        await again.cleanup()
