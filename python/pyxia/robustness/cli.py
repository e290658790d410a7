"""``pyxia robustness``: the fault-injection suite with a linearizability checker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

T = TypeVar("T")


HARNESS_MARGIN_S = 900.0
"""How long the harness may take beyond the run itself (start, heal, read back, check)."""


def dump_tasks(out: TextIO) -> None:
    """Every asyncio task of the running loop and where it waits."""
    buf = io.StringIO()
    for t in asyncio.all_tasks():
        buf.write(f"--- task {t.get_name()}: {t.get_coro()}\n")
        t.print_stack(limit=15, file=buf)
    out.write(buf.getvalue())
    out.flush()


async def _bounded(main: Coroutine[Any, Any, T], budget: float) -> T:
    """Runs ``main`` for at most ``budget`` seconds; SIGUSR1 prints every task's stack
    (``kill -USR1 <pid>``), and so does running out of time."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks, sys.stderr)
    task = loop.create_task(main)
    done, _ = await asyncio.wait({task}, timeout=budget)
    if not done:
        click.echo(f"robustness harness: still running after {budget:.0f}s; its tasks:", err=True)
        dump_tasks(sys.stderr)
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 60)
        raise TimeoutError(f"the harness did not finish within {budget:.0f}s")
    return task.result()


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
    "partition-leader, delay, flaky, disk-full, power-loss, cluster-power-loss, failpoint, wipe, "
    "planned-move, graceful-restart, split, split-kill ('all': every kind; 'none': no fault).",
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
@click.option(
    "--tls",
    is_flag=True,
    help="Run the cluster with a CA made for the run: mutual TLS on the internal ports and "
    "peer connections, TLS on the coordinator's and the public ports (the harness's clients "
    "too); without it the members prove membership with a cluster secret.",
)
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
    tls: bool,
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
    from pyxia.test_hooks import TEST_BUILD_HINT, TEST_MODE_ENV, native_test_build

    if positive_control and not native_test_build():
        click.echo(
            "--positive-control needs a test build of pyxia._native (its WAL's "
            f"ack-before-fsync hook is compiled only into test builds): {TEST_BUILD_HINT}",
            err=True,
        )
        sys.exit(2)
    # The harness and every process it starts are a test: their test hooks may arm.
    os.environ[TEST_MODE_ENV] = "1"

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
        tls=tls,
    )
    # The run has its own bounded waits; this bounds the whole of it, so that a hang in the
    # harness fails the run (exit status 2, every task's stack printed) instead of blocking CI.
    budget = minutes * 60 + HARNESS_MARGIN_S
    try:
        result = asyncio.run(_bounded(run(opts), budget))
    except Exception as e:
        click.echo(f"robustness harness failed: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    sys.exit(1 if result.violations else 0)
