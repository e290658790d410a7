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
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pyxia.config import ClusterConfig, ConfigError
from pyxia.dirs import DirError
from pyxia.errors import PyxiaError

log = logging.getLogger("pyxia.cli")
T = TypeVar("T")

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


def bound_address(addr: str | None, port: int) -> str:
    """``addr`` (host:port) with the port the listener got (``:0`` asks for any); ``off`` for no
    listener."""
    if not addr or not port:
        return "off"
    host = addr.rpartition(":")[0] or "0.0.0.0"
    return f"{host}:{port}"


def make_dirs_private(*dirs: Path | None) -> None:
    """The process's files private (umask 0o077) and its directories 0700 (existing ones
    tightened); a directory that cannot be created ends the command with one line."""
    from pyxia.security.file_modes import make_private

    try:
        make_private(dirs)
    except OSError as e:
        fail(f"cannot prepare directory: {e}")


def guard_dirs(open_dirs: Callable[[], T], *dirs: Path | None) -> T:
    """How a process that owns directories takes them, once its flags are checked: what it
    creates is private from now on (umask 0o077); ``open_dirs`` locks and checks them
    (``pyxia.dirs``: a directory in use, of another kind or contradicting what is asked is
    refused before anything in it is touched); only then are their modes tightened
    (:func:`make_dirs_private`). A refusal ends the command with one line."""
    from pyxia.security.file_modes import use_private_umask

    use_private_umask()
    try:
        opened = open_dirs()
    except DirError as e:
        fail(str(e))
    make_dirs_private(*dirs)
    return opened


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    ready_line: Callable[[], str],
) -> None:
    """Starts, logs one ready line, waits for SIGINT/SIGTERM, closes. A signal while starting
    (a standalone replaying its WAL) cancels the start and closes at once; a start that fails
    closes what it started before the error goes on."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def start_and_announce() -> None:
        await start()
        log.info(ready_line())  # in the same step: nothing else runs in between

    starting = loop.create_task(start_and_announce(), name="start")
    signalled = loop.create_task(stop.wait(), name="signalled")
    await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("shutting down while starting")
        starting.cancel()
        await asyncio.wait((starting,))
        if not starting.cancelled() and starting.exception() is not None:
            log.warning("the interrupted start failed: %s", starting.exception())
        await close()
        log.info("stopped")
        return
    signalled.cancel()
    if starting.cancelled() or starting.exception() is not None:
        await close()  # nothing started may outlive the loop (and print noise after the error)
    starting.result()  # a start that failed raises here
    await stop.wait()
    log.info("shutting down")
    await close()
    log.info("stopped")
