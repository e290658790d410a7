"""Failed client operations and time per phase while shards split: Oxia's own ``oxia perf``
(Go client v0.17.1) writes (and reads) against a 3-server RF=3 pyxia cluster while the
coordinator splits shards (``PyxiaAdmin/SplitShard``, waiting for each to end).

    python benches/split_oxia_perf.py --oxia PATH/TO/oxia [--splits 3] [--rate 2000]
        [--read-percent 50]

Prints one JSON line: each split (parent, children, outcome, milliseconds per phase, how long
the parent refused writes), perf's failed operations (by error) and its throughput blocks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from oxia_perf_log import read_perf_log, stop_perf  # noqa: E402
from proc_cluster import ProcCluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oxia", required=True, help="the oxia binary (v0.17.1)")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--read-percent", type=float, default=50)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--gap", type=float, default=4.0, help="seconds between splits")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pyxia-split-perf-"))
    ns = [{"name": "default", "initialShardCount": args.shards, "replicationFactor": 3}]
    cluster = ProcCluster.start(base, 3, ns)
    perf_log = base / "perf.log"
    perf: subprocess.Popen[bytes] | None = None
    splits: list[dict[str, object]] = []
    try:
        entry = cluster.members[0]
        with open(perf_log, "wb") as out:
            perf = subprocess.Popen(
                [
                    args.oxia,
                    "perf",
                    "-a",
                    entry.public,
                    "-r",
                    str(args.rate),
                    "-p",
                    str(args.read_percent),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        time.sleep(args.warmup)
        for _ in range(args.splits):
            st = cluster.status()
            assert st is not None
            shards = st.status.namespaces["default"].shards
            # The widest shard: a split halves it.
            parent = max(
                shards,
                key=lambda s: shards[s].int32_hash_range.max - shards[s].int32_hash_range.min,
            )
            t0 = time.monotonic()
            res = cluster.split_shard(int(parent), wait=True)
            splits.append(
                {
                    "parent": int(parent),
                    "children": [res.left_shard, res.right_shard],
                    "outcome": res.outcome,
                    "ms": round((time.monotonic() - t0) * 1000),
                    "phase_ms": {k: round(v) for k, v in sorted(res.phase_ms.items())},
                    "writes_refused_ms": round(res.frozen_ms),
                }
            )
            time.sleep(args.gap)
    finally:
        stop_perf(perf)
        cluster.close()
    report = read_perf_log(perf_log)
    failed, blocks = report.failed, report.blocks
    print(
        json.dumps(
            {
                "rate": args.rate,
                "read_percent": args.read_percent,
                "splits": splits,
                "failed_ops": sum(failed.values()),
                "failed_by_error": dict(failed.most_common(10)),
                "ops_per_s_blocks": [b[0] for b in blocks],
                "failed_ops_per_s_blocks": [b[1] for b in blocks],
                "dir": str(base),
            }
        )
    )


if __name__ == "__main__":
    main()
