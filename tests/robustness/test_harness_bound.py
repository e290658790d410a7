"""The robustness harness's overall time bound: a hung run fails (with every task's stack
printed) instead of blocking CI."""

from __future__ import annotations

import asyncio

import pytest

from pyxia.robustness.cli import _bounded


async def _forever(ready: asyncio.Event) -> None:
    ready.set()
    await asyncio.Event().wait()  # never set: a hang


def test_a_hung_run_times_out_and_prints_the_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        ready = asyncio.Event()
        await _bounded(_forever(ready), 0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    err = capsys.readouterr().err
    assert "still running after" in err
    assert "_forever" in err  # the hung coroutine's stack


def test_a_run_within_its_budget_returns_its_result() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(_bounded(quick(), 5.0)) == 7
