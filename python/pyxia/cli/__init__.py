"""The ``pyxia`` command line.

Each command's module is imported when the command runs (or its help is shown), not before:
the process of one command loads only what that command needs (``pyxia coordinator`` none of
the data server, its storage or RocksDB). The commands are also this package's attributes
(``pyxia.cli.server``, loaded on first access), as the docs' flag tables name them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pyxia.cli.oxia_flags import add_global_flags
from pyxia.common import grpc_runtime
from pyxia.version import __version__

COMMANDS: dict[str, str] = {
    "admin": "pyxia.cli.coordinator_cmd",
    "certs": "pyxia.cli.certs_cmd",
    "client": "pyxia.cli.client_cmd",
    "coordinator": "pyxia.cli.coordinator_cmd",
    "health": "pyxia.cli.coordinator_cmd",
    "perf": "pyxia.cli.perf_cmd",
    "robustness": "pyxia.robustness.cli",
    "server": "pyxia.cli.server_cmd",
    "standalone": "pyxia.cli.server_cmd",
    "wal": "pyxia.cli.wal_cmd",
}
"""Every command, by name: the module that defines it (as an attribute of the same name)."""

SERVER_COMMANDS = frozenset({"coordinator", "server", "standalone"})
"""The commands that run pyxia's servers: gRPC's I/O settings for servers are set before their
module loads gRPC (``pyxia.common.grpc_runtime``); client commands keep gRPC's defaults."""


def _load(name: str) -> click.Command:
    if name in SERVER_COMMANDS:
        grpc_runtime.configure()  # before the module imports gRPC (no-op if it is loaded)
    command = getattr(importlib.import_module(COMMANDS[name]), name)
    if not isinstance(command, click.Command):  # pragma: no cover - a wrong table entry
        raise TypeError(f"{COMMANDS[name]}.{name} is not a click command")
    # Oxia's persistent flags (-l/--log-level, -j/--log-json, ...) on every command; adding
    # them twice is a no-op.
    add_global_flags(command)
    return command


class _LazyGroup(click.Group):
    """A group whose commands are imported by name when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return _load(cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyxia")
def main() -> None:
    """pyxia: a sharded, replicated metadata store speaking Oxia's protocol."""


add_global_flags(main)


def __getattr__(name: str) -> Any:
    if name in COMMANDS:
        return _load(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "main"]
