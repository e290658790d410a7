"""Shared test helpers: waiting on conditions with deadlines, subprocesses
that are always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import wait_for

REPO = Path(__file__).resolve().parent.parent

# The suite is a test: test hooks (failpoints, dial maps, the WAL's) may arm from the environment
# here and in every process it starts (they inherit it). See pyxia.test_hooks.
os.environ["PYXIA_TEST_MODE"] = "1"
__all__ = ["REPO", "Procs", "wait_for"]


class Procs:
    """Starts child processes and kills whatever is left at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen([sys.executable, "-c", code, *args], **kw)
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.kill(p.pid, signal.SIGKILL)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()
