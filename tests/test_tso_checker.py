"""The history checker itself, with violations injected (its positive control)."""

from __future__ import annotations

from pyxia.tso.checker import Record, check, longest_gap


def test_a_clean_history_passes() -> None:
    records = [
        Record(0, 0.0, 1.0, 10, 10),
        Record(1, 0.5, 1.5, 5, 9),  # overlapped in time with the first: any order is fine
        Record(0, 1.0, 2.0, 11, 20),
        Record(1, 2.5, 3.0, 21, 21),
    ]
    assert check(records) == []


def test_real_time_regression_is_caught_across_clients() -> None:
    records = [Record(0, 0.0, 1.0, 100, 100), Record(1, 1.5, 2.0, 50, 50)]
    (v,) = check(records)
    assert v.kind == "real-time" and v.record.client == 1


def test_overlaps_and_duplicates_are_caught() -> None:
    records = [Record(0, 0.0, 1.0, 10, 20), Record(1, 0.0, 1.0, 20, 30)]
    assert [v.kind for v in check(records)] == ["overlap"]


def test_malformed_records() -> None:
    assert [v.kind for v in check([Record(0, 2.0, 1.0, 1, 1)])] == ["malformed"]
    assert [v.kind for v in check([Record(0, 0.0, 1.0, 2, 1)])] == ["malformed"]


def test_longest_gap() -> None:
    records = [Record(0, 0.0, t, i, i) for i, t in enumerate([1.0, 1.5, 4.0])]
    assert longest_gap(records, 0.0, 5.0) == 2.5
