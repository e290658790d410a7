"""A scaled-down run of the sessions and notifications harness (benches/scale/sessions.py) on
a real 3-server cluster: 600 sessions with ephemeral keys, 300 of which expire at once in
batched log entries; 20 notification subscribers of which 2 stall, are cut off and resume
without a gap. Guards that the harness runs from a fresh clone and what it measures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches" / "scale"))
from sessions import measure, parser  # noqa: E402

pytestmark = pytest.mark.slow  # starts pyxia processes


def test_sessions_and_notifications_harness(tmp_path: Path) -> None:
    args = parser().parse_args(
        [
            "--sessions=600",
            "--expire=300",
            "--expire-timeout=3",
            "--keepalives=300",
            "--concurrency=64",
            "--subscribers=20",
            "--slow=2",
            "--notify-writes=10",
            "--notifications-send-timeout=1",
        ]
    )
    out = measure(tmp_path, args)
    s = out["sessions"]
    assert s["sessions"] == 600 and s["expire"] == 300
    # Batched: one entry per expiry round per shard, not one per session.
    assert 1 <= s["expiry_log_entries"] <= 60, s
    assert s["expiry_s_after_timeout"] < 10, s
    assert s["keepalive_server_cpu_us"] > 0, s
    n = out["notifications"]
    assert n["fast_complete"] == 18, n
    assert n["slow_cut_off"] == 2, n
    assert n["slow_resumed_without_gap"] == 2, n
