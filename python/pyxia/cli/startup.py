"""Startup failures a person can read: one line on stderr, a non-zero exit, no traceback.

Every long-running command (``standalone``, ``server``, ``coordinator``) checks its flags here
before it opens anything (:func:`check_addr`) and runs through :func:`run`, which turns what
stops a start into one line ``pyxia: <what went wrong>`` and exit status 1:

- the domain's own refusals (:class:`StartupError`, a directory's :class:`~pyxia.dirs.DirError`,
  a corrupt replica's :class:`~pyxia.errors.ReplicaCorrupt`, a bad config) say it themselves;
- an ``OSError`` says which file and why (a port in use, a read-only disk);
- anything else is named with its type, its traceback logged at debug level only.

Whoever started something before failing closes it first (``run_until_signalled`` does), so no
background thread or gRPC server outlives the event loop and prints noise after the line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

from pyxia.config import ClusterConfig, ConfigError
from pyxia.dirs import DirError
from pyxia.errors import PyxiaError

log = logging.getLogger("pyxia.cli")

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(?P<port>\d{1,5})$")


class StartupError(Exception):
    """A reason the process cannot start, already said in one line."""


def fail(message: str, status: int = 1) -> NoReturn:
    """Prints ``pyxia: <message>`` on stderr and exits."""
    sys.stderr.write(f"pyxia: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def check_addr(flag: str, value: str | None, *, allow_empty: bool = False) -> str | None:
    """``value`` if it is ``host:port`` with a port from 0 to 65535 (``[v6]:port`` too);
    None for an empty value when ``allow_empty``. Raises :class:`StartupError` otherwise."""
    if not value:
        if allow_empty:
            return None
        raise StartupError(f"{flag} is empty: expected host:port")
    m = _HOST_PORT.match(value)
    if m is None:
        raise StartupError(f"invalid {flag} {value!r}: expected host:port")
    if int(m.group("port")) > 65535:
        raise StartupError(
            f"invalid {flag} {value!r}: port {int(m.group('port'))} is out of range (0-65535)"
        )
    return value


def describe(e: BaseException) -> str:
    """The one line for an exception that stopped a start."""
    if isinstance(e, StartupError | DirError | ConfigError | PyxiaError):
        return str(e)
    if isinstance(e, OSError):
        if e.strerror and e.filename is not None:
            return f"{e.filename}: {e.strerror}"
        return e.strerror or str(e)
    from pyxia._native import WalError
    from pyxia.security.oidc import AuthConfigError
    from pyxia.security.tls import TlsConfigError

    if isinstance(e, AuthConfigError | TlsConfigError):
        return str(e)
    if isinstance(e, WalError):
        return f"write-ahead log: {e}"
    return f"{type(e).__name__}: {e}"


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs ``main`` in a fresh event loop; a failure becomes one line and exit status 1."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:
        log.debug("start failed", exc_info=True)
        fail(describe(e))


def standalone_config_note(cfg: ClusterConfig, path: Path) -> str | None:
    """What a standalone ignores in a cluster config: replication factors above 1 and the
    servers list. None when nothing is ignored."""
    parts: list[str] = []
    above = [n for n in cfg.namespaces if n.replication_factor > 1]
    if above:
        parts.append(
            "replicationFactor "
            + ", ".join(f"{n.replication_factor} (namespace {n.name})" for n in above)
        )
    if cfg.servers:
        parts.append(f"the {len(cfg.servers)} servers listed")
    if not parts:
        return None
    return (
        f"standalone runs every namespace with replication factor 1: "
        f"{' and '.join(parts)} in {path} are ignored"
    )
