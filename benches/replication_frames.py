"""Per-entry CPU of the replication path, the old Python path next to the native frames.

Leader: reading entries back and building + serializing ``Append`` in Python (the old cursor)
against ``Wal.read_appends``. Follower: decoding the frame, copying the value out and appending
(the old follower) against decoding and ``Wal.append_replicated``. Process CPU per entry, medians
of interleaved runs, for a small and a batch-sized entry value. Run:
``PYTHONPATH=python python benches/replication_frames.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

from pyxia._native import Wal
from pyxia.proto import replication_pb2

ENTRIES = 256
RUNS = 15


def old_leader(wal: Wal, term: int, commit: int) -> list[bytes]:
    return [
        replication_pb2.Append(
            term=term,
            entry=replication_pb2.LogEntry(
                term=e.term, offset=e.offset, value=e.value, timestamp=e.timestamp
            ),
            commit_offset=commit,
            previous_entry_crc=e.previous_crc,
            cumulative_acks_supported=True,
        ).SerializeToString()
        for e in wal.read_batch(1, max_entries=ENTRIES)
    ]


def new_leader(wal: Wal, term: int, commit: int) -> list[bytes]:
    return wal.read_appends(1, term, commit, max_entries=ENTRIES)[0]


def old_follower(wal: Wal, frames: list[bytes]) -> None:
    for raw in frames:
        a = replication_pb2.Append.FromString(raw)
        e = a.entry
        prev = a.previous_entry_crc if a.HasField("previous_entry_crc") else None
        wal.append(e.term, e.offset, e.value, e.timestamp, prev)


def new_follower(wal: Wal, frames: list[bytes]) -> None:
    for raw in frames:
        e = replication_pb2.Append.FromString(raw).entry
        wal.append_replicated(raw, e.term, e.offset)


def cpu_us_per_entry(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) / ENTRIES * 1e6


def measure(value_size: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {
        "old leader": [],
        "new leader": [],
        "old follower": [],
        "new follower": [],
    }
    with tempfile.TemporaryDirectory() as d, Wal(f"{d}/leader", sync_data=False) as leader:
        for i in range(ENTRIES):
            leader.append(3, i + 1, b"v" * value_size, 1_700_000_000_000 + i)
        frames = new_leader(leader, 3, ENTRIES)
        for run in range(RUNS):
            runs["old leader"].append(cpu_us_per_entry(lambda: old_leader(leader, 3, ENTRIES)))
            runs["new leader"].append(cpu_us_per_entry(lambda: new_leader(leader, 3, ENTRIES)))
            for name, append in (("old follower", old_follower), ("new follower", new_follower)):
                with Wal(f"{d}/{name}-{run}", sync_data=False) as follower:
                    runs[name].append(cpu_us_per_entry(lambda: append(follower, frames)))  # noqa: B023
                    follower.delete()
    return {name: statistics.median(v) for name, v in runs.items()}


def main() -> None:
    for size in (200, 20_000):
        figures = ", ".join(f"{k} {v:.2f}" for k, v in measure(size).items())
        print(f"value {size} B, µs of CPU per entry: {figures}")


if __name__ == "__main__":
    main()
