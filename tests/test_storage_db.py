"""The shard DB's durability rules that do not go through pyxia's WAL: the term survives a
kill -9 right after ``update_term`` returns, without a memtable flush (it is synced through
RocksDB's own WAL), while applied batches may be lost (pyxia's WAL replays them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyxia.common.keys import HierarchicalEncoding
from pyxia.storage.db import ShardDB, TermOptions

WRITER = """
import os, sys
from pathlib import Path
from pyxia.storage.db import ShardDB, TermOptions
from pyxia.common.keys import HierarchicalEncoding
db = ShardDB(Path(sys.argv[1]), HierarchicalEncoding())
b = db.new_batch(); db.put_commit_offset(b, 7); db.write(b); db.flush()
b = db.new_batch(); db.put_commit_offset(b, 9); db.write(b)
db.update_term(5, TermOptions(notifications_enabled=False, key_sorting="natural"))
b = db.new_batch(); db.put_commit_offset(b, 11); db.write(b)
os._exit(0)  # no close, no flush: as a kill -9
"""


def test_the_term_survives_a_crash_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "db"
    subprocess.run([sys.executable, "-c", WRITER, str(path)], check=True, timeout=60)
    db = ShardDB(path, HierarchicalEncoding())
    try:
        assert db.read_term() == (5, TermOptions(False, "natural"))
        # The applied batches are only as durable as the last flush: the WAL replays the rest.
        assert db.commit_offset() in (7, 9, 11)
    finally:
        db.close()
