"""Guarded directories, in process: the pure layout rules (with properties), manifests,
adoption of unlabelled directories, and the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.dirs import DirError, DirInUse, DirLock, LayoutAsk, MetadataDir, NodeDirs, holder
from pyxia.dirs.layout import NamespaceLayout, infer_layout, legacy_first_shards, plan_layout
from pyxia.dirs.manifest import check_manifest, sniff


def ask(name: str, shards: int = 1, sorting: str = "hierarchical") -> LayoutAsk:
    return LayoutAsk(name, shards, sorting, f"--shards {shards}", f"--key-sorting {sorting}")


# -- layout rules --------------------------------------------------------------------------------


def test_plan_keeps_stored_ids_and_places_new_namespaces_after_them() -> None:
    stored = {"a": NamespaceLayout(0, 2, "hierarchical"), "b": NamespaceLayout(2, 2, "natural")}
    out = plan_layout(stored, [ask("c", 3), ask("b", 2, "natural"), ask("a", 2)], "d")
    assert out["a"] == stored["a"] and out["b"] == stored["b"]
    assert out["c"] == NamespaceLayout(4, 3, "hierarchical")


def test_plan_refuses_another_shard_count_or_key_sorting() -> None:
    stored = {"default": NamespaceLayout(0, 1, "hierarchical")}
    with pytest.raises(DirError) as e:
        plan_layout(stored, [ask("default", 4)], "data/db")
    assert str(e.value) == (
        "namespace 'default' in data/db has 1 shard, but --shards 4 asks for 4: "
        "the shard count of a namespace cannot change"
    )
    with pytest.raises(DirError) as e:
        plan_layout(stored, [ask("default", 1, "natural")], "data/db")
    assert str(e.value) == (
        "namespace 'default' in data/db uses hierarchical key sorting, "
        "but --key-sorting natural asks for natural"
    )


def test_plan_never_reuses_reserved_ids() -> None:
    out = plan_layout({}, [ask("n", 2)], "d", reserved=[0, 5])
    assert out["n"].first_shard == 6


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 5)), min_size=1, max_size=8).map(
        lambda xs: list(dict(xs).items())
    ),
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 5)), min_size=1, max_size=8).map(
        lambda xs: list(dict(xs).items())
    ),
)
def test_plan_ranges_never_overlap_and_stored_ones_never_move(
    first: list[tuple[str, int]], second: list[tuple[str, int]]
) -> None:
    """Whatever order namespaces come in across starts, each keeps its ids and no two
    namespaces share a shard id."""
    layout = plan_layout({}, [ask(n, k) for n, k in first], "d")
    asks = [ask(n, layout[n].shards if n in layout else k) for n, k in second]
    again = plan_layout(layout, asks, "d")
    for n in layout:
        assert again[n] == layout[n]
    ids = [
        i for lay in again.values() for i in range(lay.first_shard, lay.first_shard + lay.shards)
    ]
    assert len(ids) == len(set(ids))


def test_infer_reads_contiguous_layouts_back_and_flags_the_rest() -> None:
    layout, ambiguous = infer_layout(
        {
            "a": {0: "hierarchical", 1: "hierarchical"},
            "b": {2: "natural"},
            "gap": {5: None, 7: None},
            "mixed": {8: "natural", 9: "hierarchical"},
            "x": {10: None, 11: None},
            "y": {11: None},  # overlaps x: an earlier version renumbered them
        }
    )
    assert layout == {
        "a": NamespaceLayout(0, 2, "hierarchical"),
        "b": NamespaceLayout(2, 1, "natural"),
    }
    assert ambiguous == ["gap", "mixed", "x", "y"]
    assert legacy_first_shards([ask("a", 2), ask("b", 3), ask("c")]) == {"a": 0, "b": 2, "c": 5}


# -- manifests -----------------------------------------------------------------------------------


def test_check_manifest_refuses_other_kinds_and_newer_formats(tmp_path: Path) -> None:
    doc = {"kind": "wal", "format": 1, "node_id": "n"}
    with pytest.raises(DirError) as e:
        check_manifest(doc, "data", "data dir", tmp_path)
    assert "are --data-dir and --wal-dir swapped?" in str(e.value)
    with pytest.raises(DirError) as e:
        check_manifest({**doc, "format": 9}, "wal", "wal dir", tmp_path)
    assert f"wal dir {tmp_path} has format version 9; this pyxia" in str(e.value)
    assert check_manifest({"instance_id": "x"}, "data", "data dir", tmp_path) is None
    m = check_manifest({**doc, "data_dir": "/d"}, "wal", "wal dir", tmp_path)
    assert m is not None and m.extra == {"data_dir": "/d"}


def test_sniff_recognises_kinds_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "db/default/shard-0").mkdir(parents=True)
    (tmp_path / "db/default/shard-0/CURRENT").write_text("MANIFEST-000001\n")
    (tmp_path / "db/default/shard-0/pyxia-key-encoding").write_text("natural\n")
    (tmp_path / "db/default/shard-0.corrupt-20260101T000000Z").mkdir()
    (tmp_path / "db/lost+found").mkdir()
    (tmp_path / "wal/default/shard-0").mkdir(parents=True)
    (tmp_path / "wal/default/shard-0/00000000000000000000.txnx").write_bytes(b"")
    s = sniff(tmp_path / "db")
    assert set(s.evidence) == {"data"} and not s.unknown
    assert s.shards == {"default": {0: "natural"}}
    assert set(sniff(tmp_path / "wal").evidence) == {"wal"}
    assert sniff(tmp_path / "wal").shards == {"default": {0: None}}
    (tmp_path / "db/notes.txt").write_text("mine")
    assert sniff(tmp_path / "db").unknown == ["notes.txt"]
    assert sniff(tmp_path / "missing").empty


# -- node dirs -----------------------------------------------------------------------------------


def test_node_dirs_label_pair_and_lock(tmp_path: Path) -> None:
    data, wal = tmp_path / "db", tmp_path / "wal"
    dirs = NodeDirs.open(data, wal, "standalone")
    try:
        d = json.loads((data / "MANIFEST.json").read_text())
        w = json.loads((wal / "MANIFEST.json").read_text())
        assert (d["kind"], w["kind"], d["format"]) == ("data", "wal", 1)
        assert d["node_id"] == w["node_id"] and d["mode"] == "standalone"
        assert w["data_dir"] == str(data.resolve())
        with pytest.raises(DirInUse) as e:
            NodeDirs.open(data, tmp_path / "wal2", "standalone")
        assert str(e.value) == f"data dir {data} is in use by pid {os.getpid()}"
        assert holder(data) == os.getpid()
    finally:
        dirs.close()
    assert holder(data) is None
    # a WAL dir of another node
    other = NodeDirs.open(tmp_path / "db2", tmp_path / "wal2", "standalone")
    other.close()
    with pytest.raises(DirError) as e2:
        NodeDirs.open(data, tmp_path / "wal2", "standalone")
    assert "belong to different nodes" in str(e2.value)
    with pytest.raises(DirError) as e2:
        NodeDirs.open(data, wal, "server")
    assert str(e2.value).startswith(f"data dir {data} belongs to a pyxia standalone")
    with pytest.raises(DirError, match="nested"):
        NodeDirs.open(tmp_path, wal, "standalone")


def test_instance_id_written_by_the_coordinator_keeps_the_manifest(tmp_path: Path) -> None:
    from pyxia.server.internal_rpc import Manifest

    dirs = NodeDirs.open(tmp_path / "db", tmp_path / "wal", "server")
    m = Manifest(tmp_path / "db" / "MANIFEST.json")
    assert m.instance_id() is None
    m.bind("cluster-1")
    dirs.close()
    assert m.instance_id() == "cluster-1"
    doc = json.loads((tmp_path / "db" / "MANIFEST.json").read_text())
    assert doc["kind"] == "data" and doc["instance_id"] == "cluster-1"
    NodeDirs.open(tmp_path / "db", tmp_path / "wal", "server").close()
    assert Manifest(tmp_path / "db" / "MANIFEST.json").instance_id() == "cluster-1"


def test_the_instance_id_is_a_field_of_the_one_manifest_read_once(tmp_path: Path) -> None:
    from pyxia.common.instance_id import INSTANCE_ID_HEADER
    from pyxia.errors import StorageFailure
    from pyxia.server.manifest import MANIFEST_FILE, Manifest

    dirs = NodeDirs.open(tmp_path / "db", tmp_path / "wal", "server")
    path = tmp_path / "db" / MANIFEST_FILE
    m = Manifest(path)
    assert m.instance_id() is None and m.call_metadata() == ()
    m.bind("cluster-1")
    assert m.call_metadata() == ((INSTANCE_ID_HEADER, "cluster-1"),)
    doc = json.loads(path.read_text())
    assert doc["node_id"] == dirs.node_id and doc["mode"] == "server"
    # read once and kept: the file is not read again on the hot path
    path.write_text("not json")
    assert m.instance_id() == "cluster-1"
    # ... but a fresh reader of an unreadable manifest fails, never "unbound"
    with pytest.raises(StorageFailure):
        Manifest(path).instance_id()
    dirs.close()
    with pytest.raises(DirError, match="is not valid JSON"):
        NodeDirs.open(tmp_path / "db", tmp_path / "wal", "server")


def test_no_namespace_can_be_named_like_a_file_at_the_top_of_a_dir(tmp_path: Path) -> None:
    from pyxia.common.validation import is_valid_namespace
    from pyxia.server.manifest import Manifest

    data, wal = tmp_path / "db", tmp_path / "wal"
    (data / "default" / "shard-0").mkdir(parents=True)
    (data / "default" / "shard-0" / "pyxia-key-encoding").write_text("hierarchical\n")
    (data / "MANIFEST.tmp").write_text("{}")  # an earlier version's, left by a crash
    dirs = NodeDirs.open(data, wal, "server")
    Manifest(data / "MANIFEST.json").bind("cluster-1")
    files = [p.name for d in (data, wal) for p in d.iterdir() if not p.is_dir()]
    assert {"MANIFEST.json", "pyxia.lock", "MANIFEST.tmp"} <= set(files)
    for name in files:
        for variant in (name, name.upper(), name.lower()):
            assert not is_valid_namespace(variant), variant
    dirs.close()


def test_an_earlier_cluster_servers_manifest_is_adopted_as_a_server(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "MANIFEST.json").write_text('{"instance_id": "c"}')
    (tmp_path / "db" / "MANIFEST.tmp").write_text('{"instance_id": "c"}')  # its temporary file
    with pytest.raises(DirError, match="belongs to a pyxia server"):
        NodeDirs.open(tmp_path / "db", tmp_path / "wal", "standalone")
    NodeDirs.open(tmp_path / "db", tmp_path / "wal", "server").close()
    doc = json.loads((tmp_path / "db" / "MANIFEST.json").read_text())
    assert (doc["kind"], doc["instance_id"], doc["mode"]) == ("data", "c", "server")


def test_metadata_dir_provider_is_fixed(tmp_path: Path) -> None:
    (tmp_path / "cluster-status.json").write_text("{}")
    with pytest.raises(DirError) as e:
        MetadataDir.open(tmp_path, "raft")
    assert str(e.value) == (
        f"metadata dir {tmp_path} holds the file provider's cluster status; "
        "--metadata raft would start from an empty one"
    )
    m = MetadataDir.open(tmp_path, "file")
    with pytest.raises(DirInUse):
        MetadataDir.open(tmp_path, "file")
    m.close()


_HOLD = """
import sys, time
from pathlib import Path
from pyxia.dirs import DirLock
DirLock.acquire(Path(sys.argv[1]), "data dir")
print("held", flush=True)
time.sleep(600)
"""


def test_lock_is_released_by_the_kernel_on_kill_9(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        with pytest.raises(DirInUse) as e:
            DirLock.acquire(tmp_path, "data dir")
        assert e.value.pid == p.pid
        p.kill()
        p.wait(10)
        DirLock.acquire(tmp_path, "data dir").release()
    finally:
        p.kill()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()
