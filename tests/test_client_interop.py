"""Interoperability with the official ``oxia`` Python client: what one writes, the other reads
back identically (values, versions, keys, index entries). The official client 0.2.1 routes with
XXH64 instead of Oxia's XXH3 (see ``pyxia.common.sharding``), so the server has one shard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from oxia_official import import_oxia
from pyxia import Client, ComparisonType
from servers import ServerProcess, standalone_args

oxia = import_oxia()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("interop")
    s = ServerProcess(standalone_args(base, "--shards", "1"), base).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def official(server: ServerProcess) -> Iterator[Any]:
    c = oxia.Client(server.public)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ours(server: ServerProcess) -> Iterator[Client]:
    with Client(server.public) as c:
        yield c


@pytest.fixture
def p() -> str:
    return f"/i-{uuid.uuid4().hex[:8]}"


def same_version(theirs: Any, mine: Any) -> None:
    assert mine.version_id == theirs.version_id()
    assert mine.modifications_count == theirs.modifications_count()
    # the official client gives naive local datetimes, pyxia the milliseconds on the wire
    assert mine.created_timestamp == round(theirs.created_timestamp().timestamp() * 1000)
    assert mine.modified_timestamp == round(theirs.modified_timestamp().timestamp() * 1000)


def test_official_writes_pyxia_reads(official: Any, ours: Client, p: str) -> None:
    values = {f"{p}/a": b"\x00\xffbinary", f"{p}/b": b"", f"{p}/c/d": "ünïcode".encode()}
    versions = {k: official.put(k, v)[1] for k, v in values.items()}
    official.put(f"{p}/b", b"again")
    values[f"{p}/b"] = b"again"
    for k, v in values.items():
        g = ours.get(k)
        assert g.value == v
        if k != f"{p}/b":
            same_version(versions[k], g.version)
    assert ours.list(f"{p}/", f"{p}//") == [f"{p}/a", f"{p}/b"]
    assert [(r.key, r.value) for r in ours.range_scan(f"{p}/", f"{p}//")] == [
        (f"{p}/a", values[f"{p}/a"]),
        (f"{p}/b", b"again"),
    ]
    assert ours.get(f"{p}/az", comparison=ComparisonType.FLOOR).key == f"{p}/a"
    # sequence keys and secondary indexes written by the official client
    pk = f"{p}-pk"
    k1, _ = official.put(f"{p}/s", b"x", partition_key=pk, sequence_keys_deltas=[2])
    assert ours.get(k1, partition_key=pk).value == b"x"
    official.put(f"{p}/u1", b"alice", secondary_indexes={"n": f"{p}-alice"})
    g = ours.get(f"{p}-alice", use_index="n")
    assert (g.key, g.value) == (f"{p}/u1", b"alice")


def test_pyxia_writes_official_reads(official: Any, ours: Client, p: str) -> None:
    r = ours.put(f"{p}/x", b"from pyxia")
    key, value, v = official.get(f"{p}/x")
    assert (key, value) == (f"{p}/x", b"from pyxia")
    same_version(v, r.version)
    ours.put(f"{p}/y", b"2", secondary_indexes={"idx": f"{p}-y"})
    assert official.list(f"{p}/", f"{p}//") == [f"{p}/x", f"{p}/y"]
    assert official.list(f"{p}-", f"{p}-~", use_index="idx") == [f"{p}/y"]
    e = ours.put(f"{p}/e", b"eph", ephemeral=True)
    _, _, ev = official.get(f"{p}/e")
    assert ev.is_ephemeral()
    assert ev.session_id() == e.version.session_id
    assert ours.delete(f"{p}/x")
    with pytest.raises(oxia.ex.KeyNotFound):
        official.get(f"{p}/x")
    # a conditional write by pyxia against a version the official client read
    _, _, vy = official.get(f"{p}/y")
    ours.put(f"{p}/y", b"3", expected_version_id=vy.version_id())
    assert official.get(f"{p}/y")[1] == b"3"
