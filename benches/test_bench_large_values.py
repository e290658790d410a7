"""The audit's large-value scenario (issue 15 §6), at the audit's size: a 60 MiB value on
shard 0 of a two-shard ``pyxia standalone``, the server restarted, then a Write of 1,000 puts
next to it while the other shard takes writes and the health service is probed.

    pytest benches/test_bench_large_values.py -s

Prints the time to apply the batch, the slowest other-shard write and health check during it,
and the latency of point lookups next to the large value. ``tests/test_large_values.py`` runs
the same scenario with a smaller value and asserts the 100 ms bound.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import ServerProcess, standalone_args
from stall_probe import MIB, batch_next_to_large_value, point_lookups, store_large_value


@pytest.mark.parametrize("puts", [1000, 10_000])
def test_batch_next_to_60_mib_value(tmp_path: Path, puts: int) -> None:
    args = standalone_args(
        tmp_path,
        "--shards",
        "2",
        "--max-value-size",
        str(64 * MIB),
        "--max-write-operations",
        str(puts),
    )
    s = ServerProcess(args, tmp_path).start()
    try:
        store_large_value(s.public, 60 * MIB)
        assert s.terminate() == 0
        s = ServerProcess(args, tmp_path).start()
        absent = point_lookups(s.public, 20)
        r = batch_next_to_large_value(s.public, puts)
        present = point_lookups(s.public, 20)
    finally:
        s.kill()
    print(
        f"\n{puts} puts next to a 60 MiB value: applied in {r.batch_seconds * 1e3:,.0f} ms; "
        f"meanwhile the slowest other-shard write {r.worst_other_shard_write * 1e3:.1f} ms "
        f"({r.other_shard_writes} writes), slowest health check "
        f"{r.worst_health_check * 1e3:.1f} ms ({r.health_checks} checks), longest time "
        f"without an answer {r.longest_silence * 1e3:.1f} ms; point lookups next to "
        f"it: absent median {statistics.median(absent) * 1e3:.2f} ms max "
        f"{max(absent) * 1e3:.2f} ms, present median {statistics.median(present) * 1e3:.2f} ms "
        f"max {max(present) * 1e3:.2f} ms"
    )
    assert not r.errors
