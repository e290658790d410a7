"""A real ``pyxia standalone`` process driven by the official ``oxia``
client from PyPI: everything a single node offers."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from oxia_official import import_oxia
from servers import ServerProcess, standalone_args

oxia = import_oxia()
CT = oxia.ComparisonType


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("standalone")
    s = ServerProcess(standalone_args(base, "--shards", "3"), base).start()
    yield s
    s.kill()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    c = oxia.Client(server.public)
    yield c
    c.close()


@pytest.fixture
def p() -> str:
    """A key prefix unique to the test."""
    return f"/t-{uuid.uuid4().hex[:8]}"


def test_put_get_versions(client: Any, p: str) -> None:
    k, v1 = client.put(f"{p}/a", b"one")
    assert k == f"{p}/a"
    assert v1.modifications_count() == 0
    key, value, v = client.get(f"{p}/a")
    assert (key, value) == (f"{p}/a", b"one")
    assert v.version_id() == v1.version_id()
    _, v2 = client.put(f"{p}/a", "two")
    assert v2.version_id() > v1.version_id()
    assert v2.modifications_count() == 1
    assert v2.created_timestamp() == v1.created_timestamp()
    assert v2.modified_timestamp() >= v1.modified_timestamp()
    assert client.get(f"{p}/a")[1] == b"two"
    with pytest.raises(oxia.ex.KeyNotFound):
        client.get(f"{p}/missing")


def test_conditional_puts_and_deletes(client: Any, p: str) -> None:
    _, v = client.put(f"{p}/c", b"x", expected_version_id=oxia.EXPECTED_RECORD_DOES_NOT_EXIST)
    with pytest.raises(oxia.ex.UnexpectedVersionId):
        client.put(f"{p}/c", b"y", expected_version_id=oxia.EXPECTED_RECORD_DOES_NOT_EXIST)
    with pytest.raises(oxia.ex.UnexpectedVersionId):
        client.put(f"{p}/c", b"y", expected_version_id=v.version_id() + 1000)
    _, v2 = client.put(f"{p}/c", b"y", expected_version_id=v.version_id())
    with pytest.raises(oxia.ex.UnexpectedVersionId):
        client.delete(f"{p}/c", expected_version_id=v.version_id())
    assert client.delete(f"{p}/c", expected_version_id=v2.version_id()) is True
    assert client.delete(f"{p}/c") is False
    # delete + recreate starts over
    _, v3 = client.put(f"{p}/c", b"z")
    assert v3.modifications_count() == 0


def test_delete_range_and_list_hierarchical(client: Any, p: str) -> None:
    for k in ["a", "b", "b/x", "b/y", "c", "c/d/e"]:
        client.put(f"{p}/{k}", b"v")
    # hierarchical: List over direct children only
    assert client.list(f"{p}/", f"{p}//") == [f"{p}/a", f"{p}/b", f"{p}/c"]
    assert client.list(f"{p}/b/", f"{p}/b//") == [f"{p}/b/x", f"{p}/b/y"]
    scanned = [(k, v) for k, v, _ in client.range_scan(f"{p}/", f"{p}//")]
    assert scanned == [(f"{p}/a", b"v"), (f"{p}/b", b"v"), (f"{p}/c", b"v")]
    client.delete_range(f"{p}/b/", f"{p}/b//")
    assert client.list(f"{p}/b/", f"{p}/b//") == []
    assert client.get(f"{p}/b")[1] == b"v"
    assert client.get(f"{p}/c/d/e")[1] == b"v"


def test_five_comparisons(client: Any, p: str) -> None:
    pk = f"{p}-pk"  # one shard, so results are exact
    for k in ["b", "d", "f"]:
        client.put(f"{p}/{k}", k.encode(), partition_key=pk)

    def g(key: str, ct: Any) -> str | None:
        # The shard also holds other tests' keys: anything outside this
        # test's prefix counts as "nothing found here".
        try:
            found = str(client.get(f"{p}/{key}", partition_key=pk, comparison_type=ct)[0])
        except oxia.ex.KeyNotFound:
            return None
        return found if found.startswith(f"{p}/") else None

    assert g("d", CT.EQUAL) == f"{p}/d"
    assert g("c", CT.EQUAL) is None
    assert g("d", CT.FLOOR) == f"{p}/d"
    assert g("c", CT.FLOOR) == f"{p}/b"
    assert g("a", CT.FLOOR) is None
    assert g("d", CT.CEILING) == f"{p}/d"
    assert g("e", CT.CEILING) == f"{p}/f"
    assert g("g", CT.CEILING) is None
    assert g("d", CT.LOWER) == f"{p}/b"
    assert g("b", CT.LOWER) is None
    assert g("d", CT.HIGHER) == f"{p}/f"
    assert g("f", CT.HIGHER) is None
    key, value, _ = client.get(
        f"{p}/e", partition_key=pk, comparison_type=CT.FLOOR, include_value=False
    )
    assert key == f"{p}/d"
    assert not value


def test_several_shards_hold_data(client: Any, server: ServerProcess, p: str) -> None:
    keys = [f"{p}/k{i:03d}" for i in range(60)]
    for k in keys:
        client.put(k, k.encode())
    assert client.list(f"{p}/", f"{p}//") == keys  # merged across shards in order
    for k in keys[::7]:
        assert client.get(k)[1] == k.encode()


def test_ephemeral_vanishes_after_session_close(server: ServerProcess, p: str) -> None:
    c1 = oxia.Client(server.public, session_timeout_ms=5000)
    _, v = c1.put(f"{p}/eph", b"e", ephemeral=True)
    assert v.is_ephemeral()
    observer = oxia.Client(server.public)
    try:
        assert observer.get(f"{p}/eph")[1] == b"e"
        c1.close()  # closes its sessions
        wait_for(lambda: _missing(observer, f"{p}/eph"), timeout=10, what="ephemeral delete")
    finally:
        observer.close()


def _missing(c: Any, key: str) -> bool:
    try:
        c.get(key)
    except oxia.ex.KeyNotFound:
        return True
    return False


CRASHING_CLIENT = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from oxia_official import import_oxia
oxia = import_oxia()
c = oxia.Client(sys.argv[1], session_timeout_ms=2000)
c.put(sys.argv[2], b"owned", ephemeral=True)
print("ok", flush=True)
time.sleep(600)
"""


def test_ephemeral_vanishes_after_session_expiry(server: ServerProcess, p: str) -> None:
    key = f"{p}/expiring"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CLIENT, server.public, key, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ok"
        observer = oxia.Client(server.public)
        try:
            assert observer.get(key)[1] == b"owned"
            child.kill()  # no more keep-alives
            child.wait(10)
            # gone within the 2 s session timeout plus the expiry check
            wait_for(lambda: _missing(observer, key), timeout=8, what="session expiry")
        finally:
            observer.close()
    finally:
        child.kill()
        child.wait(10)


def test_notifications(server: ServerProcess, p: str) -> None:
    c = oxia.Client(server.public)
    try:
        notifications = c.get_notifications()
        seen: list[tuple[str, Any]] = []
        done = threading.Event()

        def consume() -> None:
            for n in notifications:
                if n.key().startswith(p):
                    seen.append((n.key(), n.notification_type()))
                    if len(seen) >= 4:
                        done.set()
                        return

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        c.put(f"{p}/n1", b"1")
        c.put(f"{p}/n1", b"2")
        c.delete(f"{p}/n1")
        c.delete_range(f"{p}/r/", f"{p}/r//")
        assert done.wait(15), seen
        NT = oxia.NotificationType
        assert seen[:3] == [
            (f"{p}/n1", NT.KEY_CREATED),
            (f"{p}/n1", NT.KEY_MODIFIED),
            (f"{p}/n1", NT.KEY_DELETED),
        ]
        assert (f"{p}/r/", NT.KEY_RANGE_DELETED) in seen
        notifications.close()
    finally:
        c.close()


def test_sequence_keys_and_updates(client: Any, p: str) -> None:
    pk = f"{p}-seq"
    updates = client.get_sequence_updates(f"{p}/s", partition_key=pk)
    try:
        k1, _ = client.put(f"{p}/s", b"a", partition_key=pk, sequence_keys_deltas=[1])
        k2, _ = client.put(f"{p}/s", b"b", partition_key=pk, sequence_keys_deltas=[5])
        assert k1 == f"{p}/s-{1:020d}"
        assert k2 == f"{p}/s-{6:020d}"
        k3, _ = client.put(f"{p}/s", b"c", partition_key=pk, sequence_keys_deltas=[1, 2])
        assert k3 == f"{p}/s-{7:020d}-{2:020d}"
        got = wait_for(lambda: _last_update(updates, k3), timeout=10, what="sequence update")
        assert got
    finally:
        updates.close()
    with pytest.raises(oxia.ex.InvalidOptions):
        client.put(f"{p}/s", b"x", sequence_keys_deltas=[1])  # needs a partition key


def _last_update(updates: Any, want: str) -> bool:
    return any(key == want for key in updates)


def test_secondary_indexes(client: Any, p: str) -> None:
    client.put(f"{p}/u1", b"alice", secondary_indexes={"name": "alice"})
    client.put(f"{p}/u2", b"bob", secondary_indexes={"name": "bob"})
    client.put(f"{p}/u3", b"carol", secondary_indexes={"name": "carol"})
    assert client.list("b", "c", use_index="name") == [f"{p}/u2"]
    assert [k for k, _, _ in client.range_scan("a", "c", use_index="name")] == [
        f"{p}/u1",
        f"{p}/u2",
    ]
    key, value, _ = client.get("bob", use_index="name")
    assert (key, value) == (f"{p}/u2", b"bob")
    # moving the index entry with the record
    client.put(f"{p}/u2", b"bobby", secondary_indexes={"name": "robert"})
    assert client.list("b", "c", use_index="name") == []
    client.delete(f"{p}/u3")
    assert client.list("c", "d", use_index="name") == []


def test_partition_keys_colocate(client: Any, p: str) -> None:
    pk = f"{p}-group"
    for i in range(10):
        client.put(f"{p}/g{i}", b"x", partition_key=pk)
    assert client.list(f"{p}/", f"{p}//", partition_key=pk) == [f"{p}/g{i}" for i in range(10)]
    client.delete_range(f"{p}/", f"{p}//", partition_key=pk)
    assert client.list(f"{p}/", f"{p}//", partition_key=pk) == []
