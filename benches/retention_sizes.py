"""Each replica's WAL and DB size over time under a sustained overwrite (docs/retention.md).

Starts 3 ``pyxia server`` processes (RF=3, one shard) and a ``pyxia coordinator`` in a
temporary directory, overwrites keys ``/k0000``..``/k0999`` with 1 KiB values from 8 writers
for SECONDS, samples every replica's WAL and DB directories every 0.2 s and prints a table.
Arguments after ``--`` go to every server (e.g. ``--wal-retention-size-mb 8``). The servers run
the pyxia found on PYTHONPATH, so the same script measures another checkout::

    python benches/retention_sizes.py 180 -- --wal-retention-time 3600
    PYTHONPATH=/other/checkout/python python benches/retention_sizes.py 60 -- ...
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pyxia
from test_retention_processes import run_load, start_cluster


async def main(seconds: float, server_args: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as d:
        c = start_cluster(Path(d), server_args)
        try:
            samples, _, writes = await run_load(c, server_args, seconds, faults=False)
        finally:
            c.close()
    print(f"pyxia {pyxia.__file__}, server flags {' '.join(server_args) or '(defaults)'}")
    print(f"{writes * 20 / seconds:.0f} puts/s of 1 KiB for {seconds:.0f} s; sizes in MiB")
    print(samples.table(max(1.0, seconds / 12)))
    for name in sorted(samples.dirs):
        print(
            f"{name}: max WAL {samples.max_wal(name) / 2**20:.1f} MiB, "
            f"max DB {samples.max_db(name) / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    extra: tuple[str, ...] = ()
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], tuple(args[i + 1 :])
    asyncio.run(main(float(args[0]) if args else 60.0, extra))
