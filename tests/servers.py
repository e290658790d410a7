"""Real pyxia processes for tests: started on loopback ports chosen at
runtime (port 0; the ready line tells which), always killed at teardown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
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


READY = re.compile(r"ready: public=(\S+) internal=(\S+)(?: metrics=:(\d+))?")


class ServerProcess:
    """A ``pyxia standalone`` (or other server command) child process."""

    def __init__(self, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.workdir = workdir
        self.env = env
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

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                with self._lock:
                    self.log.append(line.rstrip())
                m = READY.search(line)
                if m and not ready.is_set():
                    self.public, self.internal = m.group(1), m.group(2)
                    self.metrics_port = int(m.group(3) or 0)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not wait_ready:
            return self
        if not ready.wait(timeout) or not self.public:
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
