"""Named failpoints: no-ops unless a test arms them.

A failpoint is named for where it sits (``wal.after_append_before_sync``).
Code calls :func:`failpoint` (or :func:`afailpoint` in coroutines) at that
spot; when disarmed the call is a dictionary truthiness check.

Arm them programmatically (:func:`arm`, which logs a warning) or, for child
processes in test mode (``PYXIA_TEST_MODE=1``, see :mod:`pyxia.test_hooks`;
outside it the variable is ignored, with a warning), with the
``PYXIA_FAILPOINTS`` environment variable: ``name=action[,name=action...]``
where ``action`` is one of

- ``crash``: kill the process with SIGKILL (a kill -9 at exactly that spot);
- ``raise``: raise :class:`FailpointError`;
- ``sleep(MS)``: block (or, in coroutines, await) for MS milliseconds;
- any of these prefixed by ``N*`` to fire only the next N times.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

from pyxia import test_hooks

ENV_VAR = test_hooks.FAILPOINTS_ENV
log = logging.getLogger("pyxia.failpoints")


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with ``raise``."""


@dataclass
class _Action:
    kind: str  # "crash" | "raise" | "sleep"
    arg: float = 0.0
    remaining: int | None = None  # None = unlimited


_armed: dict[str, _Action] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()
_ACTION_RE = re.compile(r"^(?:(\d+)\*)?(crash|raise|sleep\((\d+(?:\.\d+)?)\))$")


def parse_action(spec: str) -> _Action:
    """Parses ``[N*]crash|raise|sleep(MS)``; raises ValueError otherwise."""
    m = _ACTION_RE.match(spec.strip())
    if not m:
        raise ValueError(f"bad failpoint action {spec!r}: use crash, raise or sleep(MS)")
    count = int(m.group(1)) if m.group(1) else None
    kind = m.group(2)
    if kind.startswith("sleep"):
        return _Action("sleep", float(m.group(3)) / 1000.0, count)
    return _Action(kind, 0.0, count)


def arm(name: str, action: str) -> None:
    _arm(name, action)
    log.warning("failpoint armed", extra={"failpoint": name, "action": action})


def _arm(name: str, action: str) -> None:
    with _lock:
        _armed[name] = parse_action(action)


def disarm(name: str | None = None) -> None:
    """Disarms one failpoint, or all of them."""
    with _lock:
        if name is None:
            _armed.clear()
        else:
            _armed.pop(name, None)


def hits(name: str) -> int:
    """How many times an armed failpoint fired."""
    return _hits.get(name, 0)


def load_env(value: str | None = None) -> None:
    """Arms the failpoints listed in ``value``, or in ``PYXIA_FAILPOINTS`` in test mode
    (:func:`pyxia.test_hooks.announce` reports them, or that they are ignored)."""
    spec = test_hooks.hook_env(ENV_VAR) if value is None else value
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, action = item.partition("=")
        if not sep:
            raise ValueError(f"bad {ENV_VAR} item {item!r}: use name=action")
        _arm(name.strip(), action)


def _take(name: str) -> _Action | None:
    test_hooks.announce()  # a no-op after the first call
    with _lock:
        a = _armed.get(name)
        if a is None:
            return None
        _hits[name] = _hits.get(name, 0) + 1
        if a.remaining is not None:
            a.remaining -= 1
            if a.remaining <= 0:
                del _armed[name]
        return a


def _fire_now(name: str, a: _Action) -> None:
    if a.kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if a.kind == "raise":
        raise FailpointError(f"failpoint {name} fired")


def failpoint(name: str) -> None:
    """Fires ``name`` if armed (blocking sleep)."""
    if not _armed:
        return
    a = _take(name)
    if a is None:
        return
    if a.kind == "sleep":
        time.sleep(a.arg)
    else:
        _fire_now(name, a)


async def afailpoint(name: str) -> None:
    """Fires ``name`` if armed; ``sleep`` awaits instead of blocking."""
    if not _armed:
        return
    a = _take(name)
    if a is None:
        return
    if a.kind == "sleep":
        await asyncio.sleep(a.arg)
    else:
        _fire_now(name, a)


load_env()
