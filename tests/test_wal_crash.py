"""kill -9 in the middle of appends and syncs: every offset a process
reported durable is there after reopen, with the same bytes."""

from __future__ import annotations

import hashlib
import itertools
import random
import subprocess
import threading
from pathlib import Path

from conftest import Procs, wait_for
from pyxia._native import Wal

CHILD = r"""
import hashlib, random, sys
from pyxia._native import Wal

d, commit, term, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
wal = Wal(d, segment_size=64 * 1024, commit_offset=commit)
print("ready", wal.last_offset, flush=True)
o = wal.last_offset + 1
while True:
    n = rnd.randint(1, 40)
    batch = []
    for i in range(o, o + n):
        v = hashlib.sha256(b"%d" % i).digest() * rnd.randint(1, 8)
        batch.append((term, i, v, i))
    wal.append_batch(batch)
    o += n
    wal.sync()
    print(o - 1, flush=True)
"""


def expected_value(o: int, value: bytes) -> bool:
    unit = hashlib.sha256(b"%d" % o).digest()
    return len(value) % len(unit) == 0 and value == unit * (len(value) // len(unit))


def test_kill_dash_nine_loses_no_durable_entry(tmp_path: Path, procs: Procs) -> None:
    rnd = random.Random(1234)
    durable_term: dict[int, int] = {}  # offset -> term of the run that reported it
    max_durable = -1
    for run in range(1, 9):
        p = procs.python(
            CHILD,
            str(tmp_path),
            str(max_durable),
            str(run),
            str(run),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        first = p.stdout.readline().split()
        assert first[0] == "ready"
        start_last = int(first[1])
        assert start_last >= max_durable
        reported: list[int] = []

        def pump(out=p.stdout, acc=reported) -> None:  # type: ignore[no-untyped-def]
            for line in out:
                acc.append(int(line))

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        wait_for(lambda acc=reported: len(acc) >= 5, timeout=30, what="some durable offsets")
        threading.Event().wait(rnd.uniform(0.0, 0.3))
        p.kill()
        p.wait(10)
        t.join(10)
        # Entries up to `start_last` were written by earlier runs (some were
        # never reported but survived); this run wrote everything after it.
        prev = start_last
        for last in reported:
            for o in range(prev + 1, last + 1):
                durable_term[o] = run
            prev = max(prev, last)
        max_durable = max(max_durable, *reported)
        with Wal(tmp_path, segment_size=64 * 1024, commit_offset=max_durable) as wal:
            assert wal.last_offset >= max_durable
            for e in wal.read_batch(0, max_entries=10**7, max_bytes=1 << 40):
                if e.offset in durable_term:
                    assert e.term == durable_term[e.offset], e.offset
                assert expected_value(e.offset, e.value), e.offset
            missing = [o for o in durable_term if o > wal.last_offset]
            assert not missing
            # the CRC chain is unbroken across all segments
            entries = wal.read_batch(0, max_entries=10**7, max_bytes=1 << 40)
            assert [e.offset for e in entries] == list(range(len(entries)))
            for a, b in itertools.pairwise(entries):
                assert b.previous_crc == a.crc
    assert max_durable > 100
    assert len(list(tmp_path.glob("*.txnx"))) > 2  # rollovers happened
