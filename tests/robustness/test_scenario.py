"""One short scenario of the robustness suite (the default test run's only long test, ~40 s):
a real cluster under a workload, leader kills, power losses, failpoints and pauses; every
checker must pass. The full suite runs through ``pyxia robustness`` (README; CI runs it with
every fault kind, partitions included)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pyxia.robustness.runner import RunOptions, run
from pyxia.robustness.workload import WorkloadOptions


@pytest.mark.slow
async def test_short_scenario_has_no_violation(tmp_path: Path) -> None:
    out = io.StringIO()
    result = await run(
        RunOptions(
            minutes=0.5,
            seed=11,
            faults=["kill-leader", "power-loss", "failpoint", "pause"],
            workload=WorkloadOptions(clients=2, processes_per_client=3, keys=24, owners=1),
            out=tmp_path / "run",
        ),
        out,
    )
    text = out.getvalue()
    assert result.violations == 0, text
    assert result.ops > 1000 and result.faults, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("ops=") and last.endswith("violations=0"), text
