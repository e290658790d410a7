"""The ``pyxia`` command line."""

from __future__ import annotations

import click

from pyxia import __version__
from pyxia.cli.certs_cmd import certs
from pyxia.cli.client_cmd import client
from pyxia.cli.coordinator_cmd import admin, coordinator, health
from pyxia.cli.perf_cmd import perf
from pyxia.cli.server_cmd import server, standalone
from pyxia.cli.wal_cmd import wal
from pyxia.robustness.cli import robustness


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyxia")
def main() -> None:
    """pyxia: a sharded, replicated metadata store speaking Oxia's protocol."""


main.add_command(wal)
main.add_command(standalone)
main.add_command(server)
main.add_command(coordinator)
main.add_command(admin)
main.add_command(health)
main.add_command(client)
main.add_command(perf)
main.add_command(robustness)
main.add_command(certs)
