"""Running ``pyxia`` commands that are expected to stop: their one line on stderr, their exit
status, with a deadline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(
    *args: str, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyxia", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The only line the failed command printed on stderr (no traceback, no noise)."""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line (after informational log lines), with no traceback anywhere."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines, r.stderr
    return lines[-1]
