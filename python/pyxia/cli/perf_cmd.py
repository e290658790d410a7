"""``pyxia perf``: Oxia's ``oxia perf`` (same flags), through pyxia's client."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from typing import Any

import click

from pyxia.cli.security_flags import client_security_flags, client_security_from_flags
from pyxia.client.perf import PerfConfig, report_text, run_perf

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go-style durations ("5ms", "1m30s", "10s"); a bare number means seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


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
@click.option("--batch-linger", default="5ms", show_default=True)
@click.option("--max-requests-per-batch", type=int, default=1000, show_default=True)
@click.option("--request-timeout", default="30s", show_default=True)
@click.option("--duration", default="0", show_default=True, help="Run time (0: until Ctrl-C).")
@click.option("--report-interval", default="5s", show_default=True)
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
    batch_linger: str,
    max_requests_per_batch: int,
    request_timeout: str,
    duration: str,
    report_interval: str,
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
        batch_linger_s=parse_duration(batch_linger),
        max_requests_per_batch=max_requests_per_batch,
        request_timeout_s=parse_duration(request_timeout),
        duration_s=parse_duration(duration),
        report_interval_s=parse_duration(report_interval),
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
