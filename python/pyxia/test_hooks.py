"""Opt-in test hooks shared by servers, coordinator and client, and the test mode that gates
them.

Test mode: the environment arms test hooks only when ``PYXIA_TEST_MODE=1`` (the test suites,
the robustness harness). Outside test mode a process ignores them; either way a process that
finds hook variables in its environment says so, once, as a warning naming each of them
(:func:`announce`, called by ``pyxia.logs.setup`` and by the first hook that takes effect).
The hooks:

- ``PYXIA_FAILPOINTS`` (:mod:`pyxia.failpoints`): failpoints armed at start.
- ``PYXIA_DIAL_MAP="dest=proxy[,dest=proxy...]"``: this process dials ``proxy`` whenever it
  would dial ``dest`` (the gRPC channels of replication, of the coordinator and of the client).
  The robustness suite gives each process its own map, so every (source, destination) link goes
  through its own TCP proxy, which can partition, delay or cut it. Unset (the normal case),
  :func:`dial` returns the address unchanged.
- ``PYXIA_WAL_SYNCED_MARK`` and ``PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS``: read by the Rust WAL
  (``rust/src/wal/test_hooks.rs``), which applies the same test-mode rule; the second exists
  only in a test build (``pyxia._native.TEST_HOOKS``).

Arming hooks explicitly in code (``failpoints.arm``, :func:`set_dial_map`, the debug RPC of
``pyxia server --enable-test-hooks``) is not gated: those calls are explicit already.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("pyxia.test_hooks")

TEST_MODE_ENV = "PYXIA_TEST_MODE"
FAILPOINTS_ENV = "PYXIA_FAILPOINTS"
DIAL_MAP_ENV = "PYXIA_DIAL_MAP"
WAL_SYNCED_MARK_ENV = "PYXIA_WAL_SYNCED_MARK"
WAL_ACK_BEFORE_FSYNC_ENV = "PYXIA_WAL_TEST_ACK_BEFORE_FSYNC_MS"
HOOK_ENVS = (FAILPOINTS_ENV, DIAL_MAP_ENV, WAL_SYNCED_MARK_ENV, WAL_ACK_BEFORE_FSYNC_ENV)
TEST_BUILD_HINT = (
    "build one with `maturin develop --release --features python,test-hooks` "
    "(or `MATURIN_PEP517_ARGS='--features python,test-hooks' pip install -e .`)"
)


def test_mode() -> bool:
    """Whether this process is in test mode (``PYXIA_TEST_MODE=1``)."""
    return os.environ.get(TEST_MODE_ENV) == "1"


def _set(name: str) -> str:
    """The variable's value when it is set to something that arms (the WAL's rule: not empty,
    not "0")."""
    value = os.environ.get(name, "")
    return "" if value in ("", "0") else value


def hook_env(name: str) -> str:
    """The value of a hook variable, or "" outside test mode (it is then ignored)."""
    return _set(name) if test_mode() else ""


def native_test_build() -> bool:
    """Whether the native extension is a test build (has the ack-before-fsync hook)."""
    from pyxia import _native

    return bool(getattr(_native, "TEST_HOOKS", False))


def hooks_in_environment() -> tuple[dict[str, str], dict[str, str]]:
    """(armed, ignored): the hook variables set in the environment, by name, and why the
    ignored ones are."""
    armed: dict[str, str] = {}
    ignored: dict[str, str] = {}
    on = test_mode()
    for name in HOOK_ENVS:
        value = _set(name)
        if not value:
            continue
        if not on:
            ignored[name] = f"not in test mode ({TEST_MODE_ENV}=1 arms it)"
        elif name == WAL_ACK_BEFORE_FSYNC_ENV and not native_test_build():
            ignored[name] = "this build of pyxia._native has no such hook (not a test build)"
        else:
            armed[name] = value
    return armed, ignored


_announced = False
_announce_lock = threading.Lock()


def announce() -> None:
    """Logs, once per process, a warning naming every hook variable of the environment: the
    armed ones, and the ignored ones with why."""
    global _announced
    if _announced:
        return
    with _announce_lock:
        if _announced:
            return
        _announced = True
    armed, ignored = hooks_in_environment()
    for name, value in armed.items():
        log.warning(
            "TEST HOOK ARMED from the environment: this process is not fit for production",
            extra={"hook": name, "value": value},
        )
    for name, why in ignored.items():
        log.warning("test hook in the environment IGNORED", extra={"hook": name, "reason": why})


def parse_dial_map(spec: str) -> dict[str, str]:
    """``"a=b,c=d"`` as ``{"a": "b", "c": "d"}``; raises ValueError on a bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        dest, sep, via = item.partition("=")
        if not sep or not dest.strip() or not via.strip():
            raise ValueError(f"bad {DIAL_MAP_ENV} item {item!r}: use dest=proxy")
        out[dest.strip()] = via.strip()
    return out


def format_dial_map(m: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in m.items())


_dial_map: dict[str, str] = parse_dial_map(hook_env(DIAL_MAP_ENV))


def set_dial_map(m: dict[str, str]) -> None:
    """Replaces this process's dial map (channels created from now on use it)."""
    global _dial_map
    _dial_map = dict(m)


def dial(address: str) -> str:
    """The address to connect to in order to reach ``address``."""
    if not _dial_map:
        return address
    if not _announced:
        announce()
    return _dial_map.get(address, address)


if logging.getLogger().handlers:  # logging is configured already: say it now
    announce()
