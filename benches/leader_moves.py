"""Failed client operations while leaders move: Oxia's own ``oxia perf`` (Go client v0.17.1)
writes to a 3-server RF=3 pyxia cluster while the coordinator moves shard leaders on purpose
(``PyxiaAdmin/MoveLeader``), optionally followed by a SIGTERM of a server that leads shards.

    python benches/leader_moves.py --oxia PATH/TO/oxia [--moves 10] [--rate 200000] [--sigterm]
        [--server-pythonpath /work/main/python]

``--server-pythonpath`` runs the data servers from another pyxia tree (the coordinator is always
this one, it is the one that can be told to move a leader): a tree without the planned handoff
(``Handoff/StepDown`` unimplemented) makes every move the unplanned election it was before.
Build ``oxia`` as docs in /work/shared/reference/peer-binaries.md say. Prints one JSON line:
moves, their durations, perf's failed operations (by error) and its throughput blocks.
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
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--rate", type=float, default=200_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between moves")
    ap.add_argument("--sigterm", action="store_true", help="then SIGTERM a leading server")
    ap.add_argument("--server-pythonpath", default=None)
    args = ap.parse_args()

    env = {"PYTHONPATH": args.server_pythonpath} if args.server_pythonpath else None
    base = Path(tempfile.mkdtemp(prefix="pyxia-leader-moves-"))
    ns = [{"name": "default", "initialShardCount": args.shards, "replicationFactor": 3}]
    cluster = ProcCluster.start(base, 3, ns, server_env=env)
    perf_log = base / "perf.log"
    perf: subprocess.Popen[bytes] | None = None
    moves: list[dict[str, object]] = []
    sigterm: dict[str, object] = {}
    try:
        entry = cluster.members[0]
        with open(perf_log, "wb") as out:
            perf = subprocess.Popen(
                [args.oxia, "perf", "-a", entry.public, "-r", str(args.rate), "-p", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        time.sleep(args.warmup)
        for i in range(args.moves):
            shard = i % args.shards
            before, term = cluster.shard_leader(shard)
            t0 = time.monotonic()
            leader, new_term = cluster.move_leader(shard)
            moves.append(
                {
                    "shard": shard,
                    "from": before.internal if before else None,
                    "to": leader,
                    "terms": [term, new_term],
                    "ms": round((time.monotonic() - t0) * 1000),
                }
            )
            time.sleep(args.gap)
        if args.sigterm:
            victim = next(
                m
                for m in cluster.members[1:]
                if any(cluster.shard_leader(s)[0] is m for s in range(args.shards))
            )
            t0 = time.monotonic()
            rc = victim.terminate(60)
            ms = round((time.monotonic() - t0) * 1000)
            sigterm = {"server": victim.internal, "rc": rc, "ms": ms}
            time.sleep(args.gap)
            victim.start()
            cluster.wait_steady()
            time.sleep(args.gap)
    finally:
        stop_perf(perf)
        cluster.close()
    report = read_perf_log(perf_log)
    failed, blocks = report.failed, report.blocks
    print(
        json.dumps(
            {
                "servers": args.server_pythonpath or "this tree",
                "rate": args.rate,
                "moves": moves,
                "sigterm": sigterm,
                "failed_ops": sum(failed.values()),
                "failed_by_error": dict(failed.most_common(10)),
                "ops_per_s_blocks": [b[0] for b in blocks],
                "dir": str(base),
            }
        )
    )


if __name__ == "__main__":
    main()
