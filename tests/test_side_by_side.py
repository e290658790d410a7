"""benches/side_by_side.py without the peers: it reads ``oxia perf``'s and ``pyxia perf``'s
reports, its summary gives per-round ratios and their medians, and without the binaries it
skips with a message and exits 0 (CI has neither ``oxia`` nor ``tsoracle``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "side_by_side.py"

# One report of ``oxia perf -j`` (v0.17.1), as it logs it: one JSON line.
GO_REPORT = (
    '{"level":"info","time":"2026-12-04T23:51:13.839395323Z","message":"Stats - Total ops: '
    "1099.2 ops/s - Failed ops:    0.0 ops/s\\n\\t\\t\\tWrite ops  549.6 w/s  Latency ms: 50%   "
    "6.4 - 95%  33.2 - 99%  64.7 - 99.9%  64.7 - max   64.7\\n\\t\\t\\tRead  ops  549.6 r/s  "
    'Latency ms: 50%   5.1 - 95%   8.4 - 99%  14.3 - 99.9%  18.1 - max   18.1"}'
)
# The same report as ``pyxia perf`` prints it (plain text).
PY_REPORT = (
    "Stats - Total ops: 2000.0 ops/s - Failed ops:    1.5 ops/s\n"
    "\t\t\tWrite ops 2000.0 w/s  Latency ms: 50%   2.0 - 95%   3.0 - 99%   4.0 - 99.9%   5.0 - "
    "max   6.0\n"
    "\t\t\tRead  ops    0.0 r/s  Latency ms: 50%   0.0 - 95%   0.0 - 99%   0.0 - 99.9%   0.0 - "
    "max   0.0"
)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("side_by_side", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_reads_oxia_perf_json_reports(bench: ModuleType) -> None:
    text = "\n".join(['{"level":"warn","message":"slow ops"}', GO_REPORT, GO_REPORT])
    reports = bench.parse_reports(bench.report_lines(text))
    assert len(reports) == 2
    r = reports[0]
    assert r["ops"] == pytest.approx(1099.2)
    assert r["failed"] == 0.0
    assert r["w_ops"] == pytest.approx(549.6)
    assert (r["w_p50"], r["w_p99"], r["w_max"]) == (6.4, 64.7, 64.7)
    assert (r["r_ops"], r["r_p50"], r["r_p999"]) == (549.6, 5.1, 18.1)


def test_reads_pyxia_perf_text_reports(bench: ModuleType) -> None:
    reports = bench.parse_reports(bench.report_lines("connected\n" + PY_REPORT + "\n"))
    assert [(r["ops"], r["failed"], r["w_p50"], r["r_ops"]) for r in reports] == [
        (2000.0, 1.5, 2.0, 0.0)
    ]


def test_log_tail_keeps_a_partial_line_for_the_next_read(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "perf.log"
    half = len(GO_REPORT) // 2
    log.write_text(GO_REPORT[:half])
    tail = bench.LogTail(log)
    assert tail.reports() == []
    with open(log, "a") as f:
        f.write(GO_REPORT[half:] + "\n" + GO_REPORT[:10])
    assert len(tail.reports()) == 1


def figures(ops: float, cpu: float, p50: float) -> dict[str, float]:
    return {
        "ops_per_s": ops,
        "server_cpu_us_per_op": cpu,
        "client_cpu_us_per_op": 5.0,
        "write_p50_ms": p50,
        "read_p50_ms": 0.0,
        "load1": 1.0,
        "others_cores": 0.1,
    }


def test_summary_gives_per_round_ratios_and_their_median(bench: ModuleType) -> None:
    rounds = [
        {"pyxia": figures(30_000, 12.0, 20.0), "oxia": figures(60_000, 6.0, 10.0)},
        {"pyxia": figures(60_000, 6.0, 10.0), "oxia": figures(60_000, 6.0, 10.0)},
        {"pyxia": figures(45_000, 9.0, 10.0), "oxia": figures(50_000, 6.0, 10.0)},
    ]
    text = bench.summarize({"perf": {"w1": rounds}, "tso": {}, "first_connection": {}})
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if "w1:" in line}
    throughput = rows["throughput (pyxia ÷ Oxia server)"].split("|")
    assert throughput[3].strip() == "0.50, 1.00, 0.90"
    assert throughput[4].strip() == "**0.90**"
    assert throughput[5].strip() == "45000"  # pyxia's median figure next to the ratio
    cpu = rows["server_cpu_per_op (pyxia ÷ Oxia server)"].split("|")
    assert cpu[3].strip() == "2.00, 1.00, 1.50"
    assert cpu[4].strip() == "**1.50**"
    # a zero baseline gives no ratio rather than a division error
    assert bench.ratio(1.0, 0.0) is None
    assert bench.med([None, 2.0, 4.0]) == 3.0


def test_skips_with_a_message_without_the_binaries(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("OXIA_BIN", "TSORACLE_BIN", "GETTS_LOAD_BIN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert bench.main(["--rounds", "1", "--quiet-wait", "0"]) == 0
    out = capsys.readouterr().out
    assert "skip: no oxia binary" in out
    assert "skip: no tsoracle binary" in out


def test_summary_gives_client_ratios_on_the_same_server(bench: ModuleType) -> None:
    def run(ops: float, cpu: float) -> dict[str, float]:
        return {
            "ops_per_s": ops,
            "client_cpu_us_per_op": cpu,
            "write_p50_ms": 2.0,
            "load1": 1.0,
        }

    rounds = [
        {
            "pyxia": {"go": run(100.0, 10.0), "py": run(110.0, 8.0), "pyb": run(80.0, 12.0)},
            "oxia": {"go": run(200.0, 5.0), "py": run(150.0, 5.0)},
        },
        {
            "pyxia": {"go": run(100.0, 10.0), "py": run(130.0, 9.0), "pyb": run(70.0, 14.0)},
            "oxia": {"go": run(200.0, 5.0), "py": run(250.0, 6.0)},
        },
    ]
    text = bench.summarize({"perf": {}, "clients": {"cw1": rounds}, "tso": {}})
    rows = [line for line in text.splitlines() if line.startswith("| cw1")]
    throughput = [r for r in rows if "| throughput (" in r]
    assert len(throughput) == 3  # pyxia perf and the baseline on pyxia's server, pyxia on Oxia's
    assert "| pyxia | throughput (pyxia perf ÷ Go) | 1.10, 1.30 | **1.20** |" in throughput[0]
    assert "| 0.80, 0.70 | **0.75** |" in throughput[1]
    assert "| oxia | throughput (pyxia perf ÷ Go) | 0.75, 1.25 | **1.00** |" in throughput[2]
