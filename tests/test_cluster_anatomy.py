"""benches/cluster_anatomy.py without the peers: it reads the gRPC and WAL counters from
``/metrics`` text, labels each thread of a process (the event loop's is the process's own), and
without an ``oxia`` binary it skips with a message and exits 0."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture(scope="module")
def anatomy() -> ModuleType:
    sys.path.insert(0, str(BENCHES))
    try:
        spec = importlib.util.spec_from_file_location(
            "cluster_anatomy", BENCHES / "cluster_anatomy.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["cluster_anatomy"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHES))


def test_skips_with_a_message_without_oxia(
    anatomy: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OXIA_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert anatomy.main(["--seconds", "1"]) == 0
    assert "no oxia binary" in capsys.readouterr().out


def test_counted_lines(anatomy: ModuleType) -> None:
    text = "\n".join(
        [
            'grpc_server_started_total{grpc_method="Read",grpc_service="x",grpc_type="s"} 12.0',
            'grpc_server_msg_received_total{grpc_method="Replicate"} 3e+02',
            'oxia_server_wal_sync_latency_milliseconds_count{shard="0"} 7',
            'grpc_server_handled_total{grpc_method="Read"} 99',
        ]
    )
    got = {}
    for line in text.splitlines():
        m = anatomy.COUNTED.match(line)
        if m:
            meth = anatomy.METHOD.search(m.group(2) or "")
            got[(m.group(1), meth.group(1) if meth else "")] = float(m.group(3))
    assert got == {
        ("grpc_server_started_total", "Read"): 12.0,
        ("grpc_server_msg_received_total", "Replicate"): 300.0,
        ("oxia_server_wal_sync_latency_milliseconds_count", ""): 7.0,
    }
    assert anatomy.metrics_port(["oxia", "server", "-m", "127.0.0.1:9"]) == "127.0.0.1:9"
    assert anatomy.metrics_port(["pyxia", "server", "-m", ""]) is None


def test_threads_label_the_event_loop(anatomy: ModuleType) -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="helper")
    t.start()
    try:
        ts = anatomy.threads(os.getpid())
    finally:
        stop.set()
        t.join()
    assert ts[str(os.getpid())][0] == "event loop"
    assert len(ts) >= 2
    assert all(ticks >= 0 and switches >= 0 for _, ticks, switches in ts.values())
