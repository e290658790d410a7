"""``pyxia robustness``: the fault-injection suite with a linearizability checker."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click


@click.command()
@click.option("--minutes", type=float, default=1.0, show_default=True, help="Length of the run.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the schedule.")
@click.option(
    "--positive-control",
    is_flag=True,
    help="Run a deliberately broken cluster (WALs acknowledge before fsync) with power losses: "
    "the checkers must report violations (exit status 1).",
)
@click.option(
    "--faults",
    default="all",
    show_default=True,
    help="Comma-separated fault kinds to inject: kill, kill-leader, pause, partition, "
    "partition-leader, delay, flaky, disk-full, power-loss, cluster-power-loss, failpoint, wipe "
    "('all': every kind; 'none': no fault).",
)
@click.option("--clients", type=int, default=4, show_default=True)
@click.option("--processes", type=int, default=3, show_default=True, help="Per client.")
@click.option(
    "--keys", type=int, default=48, show_default=True, help="Keys of the register workload."
)
@click.option("--shards", type=int, default=4, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the history, schedule and logs (default: a temporary directory, "
    "removed after a run without violations).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory even without violations.")
@click.option("-v", "--verbose", is_flag=True, help="Log the harness's progress.")
def robustness(
    minutes: float,
    seed: int,
    positive_control: bool,
    faults: str,
    clients: int,
    processes: int,
    keys: int,
    shards: int,
    out: Path | None,
    keep: bool,
    verbose: bool,
) -> None:
    """Run pyxia's robustness suite: a real cluster (3 data servers + coordinator, RF=3), a
    random workload from concurrent clients, faults on a seeded schedule, and checkers
    (linearizability, versions, notifications, sequences, ephemeral records).

    Exit status: 0 without violation, 1 with violations (expected with --positive-control),
    2 if the harness itself failed."""
    from pyxia.robustness.faults import KINDS
    from pyxia.robustness.runner import RunOptions, run
    from pyxia.robustness.workload import WorkloadOptions

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if faults == "all":
        kinds = list(KINDS)
    elif faults == "none":
        kinds = []
    else:
        kinds = [k.strip() for k in faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise click.UsageError(f"unknown fault kind(s) {unknown}; known: {', '.join(KINDS)}")
    opts = RunOptions(
        minutes=minutes,
        seed=seed,
        positive_control=positive_control,
        faults=kinds,
        workload=WorkloadOptions(clients=clients, processes_per_client=processes, keys=keys),
        shards=shards,
        out=out,
        keep=keep,
    )
    try:
        result = asyncio.run(run(opts))
    except Exception as e:
        click.echo(f"robustness harness failed: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    sys.exit(1 if result.violations else 0)
