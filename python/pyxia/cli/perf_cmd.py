"""``pyxia perf``: Oxia's ``oxia perf`` (same flags), through pyxia's client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import click

from pyxia.cli.oxia_flags import GO_DURATION
from pyxia.cli.security_flags import client_security_flags, client_security_from_flags
from pyxia.client.perf import PerfConfig, report_text, run_perf


@click.command()
@click.option("-a", "--service-address", default="localhost:6648", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "-r",
    "--rate",
    type=float,
    default=100.0,
    show_default=True,
    help="Request rate, ops/s (0: as fast as it goes).",
)
@click.option(
    "-p",
    "--read-write-percent",
    type=float,
    default=80.0,
    show_default=True,
    help="Percentage of read requests, compared to total requests.",
)
@click.option("--keys-cardinality", type=int, default=1000, show_default=True)
@click.option("-s", "--value-size", type=int, default=128, show_default=True)
@click.option("--random-payload", is_flag=True, help="A random value for each write.")
@click.option("--batch-linger", type=GO_DURATION, default="5ms", show_default=True)
@click.option("--max-requests-per-batch", type=int, default=1000, show_default=True)
@click.option("--request-timeout", type=GO_DURATION, default="30s", show_default=True)
@click.option(
    "--duration",
    type=GO_DURATION,
    default="0",
    show_default=True,
    help="Run time (0: until Ctrl-C).",
)
@click.option("--report-interval", type=GO_DURATION, default="5s", show_default=True)
@click.option(
    "--max-outstanding",
    type=int,
    default=1000,
    show_default=True,
    help="Operations in flight at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final report as one JSON object.")
@client_security_flags()
def perf(
    service_address: str,
    namespace: str,
    rate: float,
    read_write_percent: float,
    keys_cardinality: int,
    value_size: int,
    random_payload: bool,
    batch_linger: float,
    max_requests_per_batch: int,
    request_timeout: float,
    duration: float,
    report_interval: float,
    max_outstanding: int,
    as_json: bool,
    **security: Any,
) -> None:
    """Load an Oxia-compatible service with puts and gets; report throughput and latency."""
    cfg = PerfConfig(
        service_address=service_address,
        namespace=namespace,
        rate=rate,
        read_percentage=read_write_percent,
        keys_cardinality=keys_cardinality,
        value_size=value_size,
        random_payload=random_payload,
        batch_linger_s=batch_linger,
        max_requests_per_batch=max_requests_per_batch,
        request_timeout_s=request_timeout,
        duration_s=duration,
        report_interval_s=report_interval,
        max_outstanding=max_outstanding,
        security=client_security_from_flags(security),
    )

    async def main() -> dict[str, object]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_perf(cfg, sys.stderr, stop)

    try:
        result = asyncio.run(main())
    except Exception as e:  # one line, no traceback (e.g. nothing answers at the address)
        raise click.ClickException(" ".join(str(e).split())) from None
    window = result.pop("_window")
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(report_text(window, float(result["duration_s"]), "Final"))  # type: ignore[arg-type]
