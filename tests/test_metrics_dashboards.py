"""Oxia's Grafana dashboards read a pyxia cluster unchanged: every metric their PromQL queries
name (tests/data/oxia_dashboard_queries.json, copied from Oxia's deploy/dashboards/*.json) is
exported by a running cluster of real processes (a coordinator and three data servers), with
every label the queries select or group by that an exporter (not Prometheus's relabelling)
provides.

What no pyxia process can export is listed in NOT_EXPORTED with the reason; the test fails if
that list names something the dashboards no longer use, or something pyxia does export.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pyxia
from cluster import free_port
from proc_cluster import Member, ProcCluster
from servers import wait_for

QUERIES = Path(__file__).parent / "data" / "oxia_dashboard_queries.json"

RELABELLED = {
    "oxia_cluster",
    "kubernetes_pod_name",
    "kubernetes_namespace",
    "app_kubernetes_io_component",
    "pod",
    "namespace",
    "container",
    "le",
    "quantile",
}
"""Labels that Prometheus's Kubernetes service discovery adds (or PromQL's own)."""

NOT_EXPORTED = {
    "container_": "cAdvisor's container metrics come from the kubelet, not from the process",
    "go_": "the Go runtime's metrics (pyxia's Python runtime exports python_gc_*/python_info)",
    "grpc_server_client_total": "no exporter has it (Oxia neither): the panel's query is a "
    "typo in Oxia's oxia-grpc dashboard",
}
"""Metric names (or prefixes ending in ``_``) no pyxia process exports, and why."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless"}


def queries() -> list[str]:
    data = json.loads(QUERIES.read_text())
    return [q for qs in data["dashboards"].values() for q in qs]


def metric_selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """``(metric name, label names of its selector)`` for every metric an expression reads."""
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*", expr)
    if m:
        yield m.group(1), {m.group(2)}
        return
    if expr.strip() == "prometheus":  # a datasource query, not PromQL
        return
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == '"':
            i = expr.index('"', i + 1) + 1
            continue
        if c == "[":
            i = expr.index("]", i) + 1
            continue
        word = _NAME.match(expr, i)
        if word is None or (i > 0 and (expr[i - 1].isalnum() or expr[i - 1] in "_.")):
            i += 1
            continue
        name, j = word.group(0), word.end()
        rest = expr[j:].lstrip()
        if name in _KEYWORDS:
            # by (...): labels, not metrics
            i = expr.index(")", j) + 1 if rest.startswith("(") else j
            continue
        if rest.startswith("(") or re.match(r"(by|without)\s*\(", rest):
            i = j  # a function, or an aggregation with its grouping first
            continue
        labels: set[str] = set()
        if rest.startswith("{"):
            start = expr.index("{", j)
            end = expr.index("}", start)
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", expr[start + 1 : end]))
            i = end + 1
        else:
            i = j
        if not name.replace("_", "").isdigit():
            yield name, labels


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }


def not_exported(name: str) -> bool:
    return any(name.startswith(key) if key.endswith("_") else name == key for key in NOT_EXPORTED)


def test_the_query_parser_reads_names_and_labels() -> None:
    expr = (
        'sum(rate(oxia_server_db_puts_total{oxia_cluster=~"$c", shard=~"$s"}[1m]) '
        '+ rate(oxia_server_db_gets_total{oxia_namespace="x"}[1m])) by (oxia_namespace, pod)'
    )
    assert dict(metric_selectors(expr)) == {
        "oxia_server_db_puts_total": {"oxia_cluster", "shard"},
        "oxia_server_db_gets_total": {"oxia_namespace"},
    }
    assert grouping_labels(expr) == {"oxia_namespace", "pod"}
    assert dict(metric_selectors("label_values(oxia_coordinator_node_running, oxia_cluster)")) == {
        "oxia_coordinator_node_running": {"oxia_cluster"}
    }
    q = 'histogram_quantile(0.99, sum by (le) (x_bucket{a="1"}))'
    assert dict(metric_selectors(q)) == {"x_bucket": {"a"}}


def scrape(port: int, totals: dict[str, float] | None = None) -> dict[str, set[str]]:
    """``{sample name: label names}`` of one process's exposition; ``totals`` gets the sum of
    each sample name's values added."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
            if totals is not None:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return out


CHARTED = (
    "oxia_server_leader_write_latency_milliseconds_count",
    "oxia_server_wal_append_latency_milliseconds_count",
    "oxia_server_wal_sync_latency_milliseconds_count",
    "oxia_server_wal_read_latency_milliseconds_count",
    "oxia_server_wal_append_bytes_total",
    "oxia_server_wal_read_bytes_total",
    "oxia_server_wal_entries",
    "oxia_server_db_puts_total",
    "oxia_server_db_gets_total",
    "oxia_server_db_lists_total",
    "oxia_server_db_deletes_total",
    "oxia_server_db_delete_ranges_total",
    "oxia_server_kv_batch_commit_latency_milliseconds_count",
    "oxia_server_kv_write_bytes_total",
    "oxia_server_kv_pebble_memtable_size_bytes",
    "oxia_server_leader_commit_offset",
    "oxia_server_follower_ack_offset",
    "oxia_server_sessions_created_total",
    "oxia_server_notifications_read_total",
    "oxia_coordinator_node_running",
    "oxia_coordinator_leader_election_latency_milliseconds_count",
    "oxia_coordinator_metadata_store_latency_milliseconds_count",
    "oxia_coordinator_metadata_size_bytes",
    "grpc_server_handled_total",
    "grpc_client_handled_total",
    "grpc_client_msg_sent_total",
    "grpc_client_msg_received_total",
)
"""Series the dashboards chart that the workload must have moved above zero (the panels show
data, not only empty series)."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ProcCluster, list[int]]]:
    ports = [free_port() for _ in range(4)]
    c = ProcCluster(
        tmp_path,
        [Member(tmp_path / f"s{i}") for i in range(3)],
        [{"name": "default", "initialShardCount": 2, "replicationFactor": 3}],
    )
    c.extra_coordinator_args = ("--metrics-addr", f"127.0.0.1:{ports[3]}")
    c.write_config()
    try:
        for m, port in zip(c.members, ports, strict=False):
            m.start("--metrics-addr", f"127.0.0.1:{port}")
        c.start_coordinator()
        c.wait_steady()
        yield c, ports
    finally:
        c.close()


def workload(c: ProcCluster) -> None:
    """Every kind of call a dashboard charts: writes, reads, lists, scans, deletes, sessions,
    notifications."""
    with pyxia.Client(c.service_addresses, request_timeout_s=30.0) as client:
        notifications = client.get_notifications()
        notifications.wait_connected(30)
        for i in range(40):
            client.put(f"k{i:03d}", b"v" * 100)
        client.put("session-key", b"x", ephemeral=True)
        for i in range(40):
            client.get(f"k{i:03d}")
        client.list("k000", "k999")
        list(client.range_scan("k000", "k999"))
        client.delete("k000")
        client.delete_range("k001", "k005")
        wait_for(lambda: notifications.get(timeout=1) is not None, 30, what="a notification")
        notifications.close()


def test_every_metric_of_oxias_dashboards_is_exported(
    cluster: tuple[ProcCluster, list[int]],
) -> None:
    c, ports = cluster
    workload(c)
    exported: dict[str, set[str]] = {}

    def gathered() -> bool:
        exported.clear()
        for port in ports:
            for name, labels in scrape(port).items():
                exported.setdefault(name, set()).update(labels)
        return "oxia_server_wal_read_latency_milliseconds_bucket" in exported and any(
            "grpc_code" in labels for n, labels in exported.items() if n.startswith("grpc_")
        )

    wait_for(gathered, 30, interval=0.5, what="every process's metrics")
    totals: dict[str, float] = {}

    def moved() -> bool:
        totals.clear()
        for port in ports:
            scrape(port, totals)
        return all(totals.get(name, 0) > 0 for name in CHARTED)

    try:
        wait_for(moved, 30, interval=0.5, what="the charted series above zero")
    except Exception:
        zero = [name for name in CHARTED if totals.get(name, 0) <= 0]
        raise AssertionError(f"series still at zero after the workload: {zero}") from None
    assert totals["oxia_coordinator_node_running"] == 3
    missing: list[str] = []
    used_exclusions: set[str] = set()
    checked = 0
    for expr in queries():
        names = dict(metric_selectors(expr))
        for name, labels in names.items():
            if not_exported(name):
                used_exclusions.update(k for k in NOT_EXPORTED if name.startswith(k) or name == k)
                assert name not in exported, f"{name} is exported: drop it from NOT_EXPORTED"
                continue
            checked += 1
            if name not in exported:
                missing.append(f"{name} (in {expr})")
                continue
            lacking = labels - RELABELLED - exported[name]
            if lacking:
                missing.append(f"{name} lacks labels {sorted(lacking)} (in {expr})")
        grouped = grouping_labels(expr) - RELABELLED
        offered = set().union(*(exported.get(n, set()) for n in names))
        if names and grouped - offered and not all(not_exported(n) for n in names):
            missing.append(f"labels {sorted(grouped - offered)} grouped by in {expr}")
    assert not missing, "\n".join(missing)
    assert checked > 100
    assert used_exclusions == set(NOT_EXPORTED), set(NOT_EXPORTED) - used_exclusions


def test_the_metrics_port_serves_metrics_only(cluster: tuple[ProcCluster, list[int]]) -> None:
    _, ports = cluster
    for port in ports:
        assert scrape(port)
        for path in ("/", "/metrics/", "/debug/pprof", "/health"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert e.value.code == 404
