"""Close racing sync, appends and reads, from Python threads, many rounds.
Runs in a subprocess: a segfault or abort shows up as a signal exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import Procs

CHILD = r"""
import random, sys, tempfile, threading
from pyxia._native import Wal, WalError, WalClosed, EntryNotFound

rounds = int(sys.argv[1])
base = sys.argv[2]
rnd = random.Random(7)
for r in range(rounds):
    d = f"{base}/r{r}"
    wal = Wal(d, segment_size=8192)
    stop = threading.Event()
    errors = []

    def appender():
        o = 0
        try:
            while not stop.is_set():
                wal.append_batch([(1, i, b"x" * rnd.randint(1, 300), 0) for i in range(o, o + 5)])
                o += 5
                wal.request_sync()
        except WalClosed:
            pass
        except Exception as e:
            errors.append(e)

    def syncer():
        try:
            while not stop.is_set():
                wal.sync()
                wal.wait_synced(wal.last_offset, timeout=0.01)
        except WalClosed:
            pass
        except Exception as e:
            errors.append(e)

    def reader():
        try:
            while not stop.is_set():
                last = wal.last_offset
                if last >= 0:
                    try:
                        wal.read(last)
                        for e in wal.reader(max(0, last - 20)):
                            pass
                    except EntryNotFound:
                        pass
        except WalClosed:
            pass
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (appender, syncer, syncer, reader)]
    for t in threads:
        t.start()
    stop.wait(rnd.uniform(0.001, 0.02))
    wal.close()
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"round {r}: {errors[0]!r}")
    last = wal.last_offset
    with Wal(d, segment_size=8192, commit_offset=last) as again:
        assert again.last_offset == last, (again.last_offset, last)
print("ok", flush=True)
"""


def test_close_races_sync_append_read(tmp_path: Path, procs: Procs) -> None:
    p = procs.python(
        CHILD, "60", str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-3000:]}"
    assert out.strip() == "ok"
