"""The composition root of a data-server process: the data server (:mod:`pyxia.server`) with
the services built on it (the timestamp oracle, :mod:`pyxia.tso`), as its options ask.

Every data server of the product is built here (``pyxia server``, ``pyxia standalone``, the
tests' clusters), so the layers below stay ignorant of the ones above: ``pyxia.server`` never
imports ``pyxia.tso`` (the oracle plugs into it as a
:class:`~pyxia.server.data_server.ServerExtension`).
"""

from __future__ import annotations

from pathlib import Path

from pyxia.config import NamespaceConfig
from pyxia.server.data_server import DataServer, ExtensionFactory, ServerOptions
from pyxia.server.standalone import Standalone
from pyxia.tso.service import TsoService


def data_server(options: ServerOptions) -> DataServer:
    """A data server with its timestamp oracle when ``options.tso`` is set."""
    tso = options.tso
    extensions: list[ExtensionFactory] = []
    if tso is not None:
        extensions.append(lambda server: TsoService.on_data_server(server, tso))
    return DataServer(options, extensions)


def standalone(
    options: ServerOptions, namespaces: list[NamespaceConfig], *, config_file: Path | None = None
) -> Standalone:
    """A standalone node (one data server, its own coordinator) built by :func:`data_server`."""
    return Standalone(options, namespaces, config_file=config_file, build=data_server)


def tso_of(server: DataServer) -> TsoService | None:
    """The timestamp oracle serving on ``server``, if it has one."""
    return TsoService.of(server)


__all__ = ["data_server", "standalone", "tso_of"]
