"""Oxia's options files (``--sconfig``) for ``pyxia server`` and ``pyxia coordinator``: Oxia's
keys set the same things as the flags, the command line wins over the file, unknown keys and
wrong types are refused with one line naming them, keys pyxia has no use for are ignored with a
warning. Also: Go durations, and the start log (version, effective configuration)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import free_port
from pyxia.config import (
    COORDINATOR_FILE_KEYS,
    SERVER_FILE_KEYS,
    ConfigError,
    load_options_file,
    parse_go_duration,
)
from servers import ServerProcess, cluster_secret_file

SERVER_FILE = {
    "server": {
        "public": {"bindAddress": "127.0.0.1:7100", "tls": {"clientAuth": False}},
        "internal": {"bindAddress": "127.0.0.1:7101"},
    },
    "storage": {
        "wal": {"dir": "w", "sync": False, "retention": "2h"},
        "database": {"dir": "d", "readCacheSizeMB": 64},
        "notification": {"retention": "30m"},
    },
    "scheduler": {"checksum": {"interval": "5m"}},
    "observability": {"metric": {"bindAddress": "127.0.0.1:7102"}, "log": {"level": "warn"}},
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("30s", 30), ("500ms", 0.5), ("1h30m", 5400), ("1.5s", 1.5), ("0", 0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "-1s", "1h 2m", "h", "inf"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_go_duration(text)


def test_a_server_file_reads_with_oxias_keys(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(SERVER_FILE))
    values, warnings = load_options_file(path, SERVER_FILE_KEYS)
    assert values == {
        "public_addr": "127.0.0.1:7100",
        "tls_client_auth": False,
        "internal_addr": "127.0.0.1:7101",
        "wal_dir": "w",
        "wal_sync_data": False,
        "wal_retention_time": 7200.0,
        "data_dir": "d",
        "db_cache_size_mb": 64,
        "notifications_retention_time": 1800.0,
        "metrics_addr": "127.0.0.1:7102",
        "log_level": "warn",
    }
    assert len(warnings) == 1 and "scheduler.checksum.interval is ignored" in warnings[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"storage": {"wal": {"dirr": "x"}}}, "unknown key storage.wal.dirr"),
        ({"storage": {"wal": {"sync": "yes"}}}, "storage.wal.sync: expected true or false"),
        ({"storage": {"wal": {"retention": "soon"}}}, "storage.wal.retention"),
        ({"storage": {"database": {"readCacheSizeMB": "big"}}}, "expected an integer"),
        ({"storage": ["x"]}, "unknown key storage .keys under storage: storage.database.dir"),
    ],
)
def test_a_bad_server_file_is_refused(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_options_file(path, SERVER_FILE_KEYS)


def test_a_coordinator_file_reads_with_oxias_keys(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cluster": {"configPath": "cluster.yaml"},
                "server": {"internal": {"bindAddress": "127.0.0.1:7200"}},
                "metadata": {
                    "providerName": "configmap",
                    "kubernetes": {"namespace": "oxia", "statusName": "status"},
                    "raft": {"bootstrapNodes": ["a:1", "b:1"]},
                },
            }
        )
    )
    values, _ = load_options_file(path, COORDINATOR_FILE_KEYS)
    assert values == {
        "cluster_config": "cluster.yaml",
        "internal_addr": "127.0.0.1:7200",
        "metadata": "configmap",
        "k8s_namespace": "oxia",
        "k8s_configmap_name": "status",
        "raft_bootstrap_nodes": ["a:1", "b:1"],
    }


def test_a_server_runs_from_its_file_and_the_command_line_wins(tmp_path: Path) -> None:
    public, internal, metrics = (f"127.0.0.1:{free_port()}" for _ in range(3))
    flag_metrics = f"127.0.0.1:{free_port()}"
    cfg = {
        "server": {"public": {"bindAddress": public}, "internal": {"bindAddress": internal}},
        "storage": {
            "wal": {"dir": str(tmp_path / "w"), "retention": "2h"},
            "database": {"dir": str(tmp_path / "d")},
        },
        "observability": {"metric": {"bindAddress": metrics}},
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(cfg))
    secret = cluster_secret_file(tmp_path)
    p = ServerProcess(
        [
            "server",
            "-j",
            "--sconfig",
            str(path),
            "--cluster-secret-file",
            str(secret),
            "--metrics-addr",
            flag_metrics,
        ],
        tmp_path,
    ).start()
    try:
        assert p.public == public and p.internal == internal
        ready = next(line for line in p.log if "ready:" in line)
        assert f"metrics={flag_metrics} " in ready  # the flag won over the file
        start = json.loads(next(line for line in p.log if "effective configuration" in line))
        assert start["version"] and start["config"]["wal_retention_time"] == 7200.0
        assert start["config"]["data_dir"] == str(tmp_path / "d")
        assert start["time"].endswith("Z") and "T" in start["time"]  # ISO-8601
        assert (tmp_path / "d").is_dir() and (tmp_path / "w").is_dir()
    finally:
        assert p.terminate() == 0


def test_a_bad_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("storage:\n  wal:\n    retention: forever\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyxia", "server", "--sconfig", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "storage.wal.retention" in r.stderr and "Traceback" not in r.stderr


def test_the_coordinator_takes_its_cluster_config_from_its_file(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "namespaces": [{"name": "default", "initialShardCount": 1, "replicationFactor": 1}],
                "servers": [{"public": "127.0.0.1:1", "internal": "127.0.0.1:2"}],
            }
        )
    )
    internal = f"127.0.0.1:{free_port()}"
    admin = f"127.0.0.1:{free_port()}"
    path = tmp_path / "coordinator.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cluster": {"configPath": str(cluster)},
                "server": {
                    "internal": {"bindAddress": internal},
                    "public": {"bindAddress": admin},
                },
                "metadata": {"providerName": "memory"},
                "observability": {"metric": {"enabled": False}},
            }
        )
    )
    secret = cluster_secret_file(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxia",
            "coordinator",
            "--sconfig",
            str(path),
            "--cluster-secret-file",
            str(secret),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        ready = ""
        for line in proc.stderr:
            if "coordinator ready" in line:
                ready = line
                break
        assert (
            f"internal={internal} admin={admin} metrics=off metadata=memory config={cluster}"
            in ready
        )
    finally:
        proc.terminate()
        proc.wait(30)


def test_deprecated_conf_flags_still_work_and_warn(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pyxia", "coordinator", "--cconfig", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr  # a path like -f's
    path = tmp_path / "c.yaml"
    path.write_text("namespaces: [\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyxia", "coordinator", "--conf", str(path), "--metadata", "memory"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert "Flag --conf has been deprecated, use --cluster-config" in r.stderr
    assert r.returncode != 0 and "Traceback" not in r.stderr
