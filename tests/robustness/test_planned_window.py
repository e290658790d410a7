"""Which operations the robustness report counts as run during planned faults: inside a
planned fault, from 5 s after the last unplanned fault ended, harness operations excluded."""

from __future__ import annotations

from pyxia.robustness.faults import FaultRecord, FaultSpec
from pyxia.robustness.history import INFO, OK, PUT, History
from pyxia.robustness.runner import PLANNED_SETTLE_NS, during_planned

S = 1_000_000_000


def fault(kind: str, start: float, end: float) -> FaultRecord:
    return FaultRecord(
        FaultSpec(start, kind, end - start, (0.0,) * 6), int(start * S), int(end * S)
    )


def test_the_planned_window_starts_after_the_last_unplanned_fault_settled() -> None:
    assert PLANNED_SETTLE_NS == 5 * S
    faults = [
        fault("kill", 0, 10),
        fault("planned-move", 12, 30),
        fault("graceful-restart", 40, 50),
    ]
    h = History()

    def op(invoke: float, complete: float, status: str, process: int = 1) -> None:
        o = h.new(process, PUT, "/k", int(invoke * S))
        o.complete, o.status = int(complete * S), status
        if status != OK:
            o.error = "RequestIndeterminate: boom"

    op(13, 14, INFO)  # within 5 s of the kill: an effect of it, not counted
    op(16, 17, OK)
    op(20, 21, INFO)
    op(29, 31, OK)  # completes after the planned fault: not counted
    op(35, 36, INFO)  # between faults
    op(41, 42, OK)
    op(43, 44, OK, process=-1)  # the harness's own read-back
    statuses, errors = during_planned(h.ops, faults)
    assert statuses == {OK: 2, INFO: 1}
    assert errors == {"RequestIndeterminate: boom": 1}
