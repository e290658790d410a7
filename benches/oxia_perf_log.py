"""Go ``oxia perf`` as a load generator for the fault benchmarks: stopping it, reading its log.

``oxia perf`` prints one "Total ops: X ops/s - Failed ops: Y ops/s" line per report block and a
line per failed operation ("Write operation has failed error=..."), with ANSI colours.
:func:`read_perf_log` turns that into the failures by error text (first 160 characters) and the
(ops/s, failed ops/s) of every block; :func:`stop_perf` ends the process the way a person does
(SIGINT, so it prints its last block), killing it after a deadline.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FAILED = re.compile(r"(Write|Read) operation has failed error=(?:\{\"error\":\")?(.*)$")
STATS = re.compile(r"Total ops:\s*([\d.]+) ops/s - Failed ops:\s*([\d.]+) ops/s")


@dataclass
class PerfLog:
    """What one ``oxia perf`` run reported."""

    failed: Counter[str] = field(default_factory=Counter)
    blocks: list[tuple[float, float]] = field(default_factory=list)


def stop_perf(perf: subprocess.Popen[bytes] | None, deadline: float = 15.0) -> None:
    """SIGINT, then kill if it has not exited within ``deadline`` seconds."""
    if perf is None:
        return
    perf.send_signal(signal.SIGINT)
    try:
        perf.wait(deadline)
    except subprocess.TimeoutExpired:
        perf.kill()
        perf.wait()


def read_perf_log(path: Path) -> PerfLog:
    """Failures by error and the throughput of every report block in an ``oxia perf`` log."""
    log = PerfLog()
    for raw in path.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        m = FAILED.search(line)
        if m:
            log.failed[m.group(2)[:160]] += 1
        s = STATS.search(line)
        if s:
            log.blocks.append((float(s.group(1)), float(s.group(2))))
    return log
