"""Real pyxia processes for tests: started on loopback ports chosen at
runtime (port 0; the ready line tells which), always killed at teardown.

The one launcher of ``pyxia`` processes (:class:`ServerProcess`: data servers, standalone
nodes, coordinators) and the waits on conditions with a deadline that every test uses
(:func:`wait_for` in a thread, :func:`wait_until` in an event loop): never a fixed sleep."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any


def wait_for(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005, what: str = "condition"
) -> Any:
    """Polls ``cond`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until(
    cond: Callable[[], Any | Awaitable[Any]],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.005,
) -> Any:
    """Awaits ``cond`` (a function, or a coroutine function) until it returns a truthy value
    or the deadline passes; returns that value."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


READY = re.compile(
    r"ready: public=(?P<public>\S+) internal=(?P<internal>\S+)"
    r"(?: metrics=(?:\S*:(?P<metrics>\d+)|off))?"
)
"""The ready line of ``pyxia standalone`` and ``pyxia server``."""
COORDINATOR_READY = re.compile(r"coordinator ready: internal=(?P<internal>\S+)")
"""The ready line of ``pyxia coordinator``."""


class ServerProcess:
    """A ``pyxia`` child process (``standalone``, ``server``, ``coordinator``): ``ready`` is
    the pattern of its ready line (its named groups ``public``, ``internal`` and ``metrics``
    become the addresses below); ``log_path``: every line of its stderr is also appended
    there (kept for a post-mortem)."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        ready: re.Pattern[str] = READY,
        log_path: Path | None = None,
    ):
        self.args = list(args)
        self.workdir = workdir
        self.env = env
        self.ready = ready
        self.log_path = log_path
        self.ready_line: re.Match[str] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.public = ""
        self.internal = ""
        self.metrics_port = 0
        self.log: list[str] = []
        self._lock = threading.Lock()

    def start(self, timeout: float = 60.0, *, wait_ready: bool = True) -> ServerProcess:
        """Starts the process and (unless ``wait_ready`` is false) waits for its ready line."""
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyxia", *self.args],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = threading.Event()
        proc = self.proc
        log_file = open(self.log_path, "a") if self.log_path is not None else None  # noqa: SIM115

        def pump() -> None:
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    with self._lock:
                        self.log.append(line.rstrip())
                    if log_file is not None:
                        log_file.write(line)
                        log_file.flush()
                    m = self.ready.search(line)
                    if m and not ready.is_set():
                        found = m.groupdict()
                        self.public = found.get("public") or ""
                        self.internal = found.get("internal") or ""
                        self.metrics_port = int(found.get("metrics") or 0)
                        self.ready_line = m
                        ready.set()
            finally:
                if log_file is not None:
                    log_file.close()
                ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not wait_ready:
            return self
        if not ready.wait(timeout) or self.ready_line is None:
            self.kill()
            raise RuntimeError("server did not become ready:\n" + self.output())
        return self

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.log[-200:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def cluster_secret_file(directory: Path) -> Path:
    """The cluster secret shared by the processes under ``directory`` (made on first use)."""
    from pyxia.security.cluster_auth import generate_secret_file

    path = directory / "cluster.secret"
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        generate_secret_file(path)
    return path


def standalone_args(
    base: Path, *extra: str, public: str = "127.0.0.1:0", internal: str | None = None
) -> list[str]:
    """``pyxia standalone`` on loopback; no internal port (its default) unless ``internal``."""
    return [
        "standalone",
        "--public-addr",
        public,
        *(("--internal-addr", internal) if internal is not None else ()),
        "--metrics-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(base / "db"),
        "--wal-dir",
        str(base / "wal"),
        *extra,
    ]
