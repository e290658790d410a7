"""A scaled-down run of the coordinator scale harness (benches/scale/coordinator.py): a
``pyxia coordinator`` process against 10 simulated data servers with 300 shards (RF 3), through
every scenario: cold start, a server dying and coming back, a coordinator failover, a rolling
restart of every server, servers removed and added; and a coordinator failover on etcd (a
standby takes over once the dead leader's lease ends). Guards what made 10,000 shards
expensive: one status write per shard edit, a NewTerm per follower at each coordinator start,
one balancer move per step, an assignment push per server per status write."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches" / "scale"))
from coordinator import Phase, run  # noqa: E402

SERVERS = 10
SHARDS = 300
RF = 3


@pytest.mark.slow  # a coordinator process against simulated servers
def test_the_coordinator_scales_against_simulated_servers(tmp_path: Path) -> None:
    phases = {
        p.name: p
        for p in run(
            tmp_path,
            servers=SERVERS,
            shards=SHARDS,
            namespaces=3,
            rf=RF,
            change=2,
            balance_seconds=60,
            timeout=60,
        )
    }
    cold: Phase = phases["cold_start"]
    # Every shard elected once: NewTerm to each member, BecomeLeader to one, two edits each.
    assert cold.rpcs["BecomeLeader"] == SHARDS
    assert cold.shard_edits >= 2 * SHARDS
    # Batched: a handful of writes, not one per edit (600 edits took 600 writes).
    assert cold.status_writes * 10 <= cold.shard_edits, cold

    dies = phases["server_dies"]
    assert dies.extra["leaderships"] > 0
    assert dies.rpcs["BecomeLeader"] == dies.extra["leaderships"]
    assert dies.status_writes * 4 <= dies.shard_edits, dies
    # The re-election's map changes are coalesced: about one push per live server (the build
    # before sent two to six each: one per status write, unchanged maps included).
    assert dies.pushes < 3 * (SERVERS - 1), dies
    # Back, its replicas follow again (a leadership the balancer moves back to it makes one of
    # them lead instead).
    back = phases["server_back"].rpcs["AddFollower"]
    assert dies.extra["replicas"] - dies.extra["leaderships"] <= back <= dies.extra["replicas"]

    failover = phases["coordinator_failover"]
    # Nothing re-elected, and no NewTerm per follower: one GetStatus per replica verifies.
    assert "BecomeLeader" not in failover.rpcs, failover
    assert "NewTerm" not in failover.rpcs, failover
    assert failover.rpcs["GetStatus"] >= SHARDS * RF
    # One write: the new leader records itself (where standbys point admin clients).
    assert failover.status_writes <= 1, failover

    rolling = phases["rolling_restart"]
    assert rolling.extra["restarted"] == SERVERS
    # Every leadership of every server ended once and was re-elected: none left without one.
    assert rolling.extra["outages"] >= SHARDS, rolling
    assert rolling.rpcs["BecomeLeader"] >= SHARDS, rolling
    assert rolling.extra["outage_max_s"] < 10, rolling
    # A server restarted faster than it is seen unavailable (one that leads nothing) has its
    # replicas checked at once, not at the periodic check a minute later.
    assert rolling.extra["step_max_s"] < 30, rolling
    assert rolling.status_writes * 4 <= rolling.shard_edits, rolling

    removed = phases["remove_servers"]
    assert removed.rpcs["BecomeLeader"] >= 1
    assert removed.status_writes * 4 <= removed.shard_edits, removed

    added = phases["add_servers"]
    assert added.extra["balanced"], added
    assert added.extra["replicas_min"] >= 1


@pytest.mark.slow  # a coordinator process, its standby and etcd
def test_a_standby_coordinator_on_etcd_takes_over_after_a_kill(tmp_path: Path) -> None:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    (failover,) = (
        p
        for p in run(
            tmp_path,
            servers=SERVERS,
            shards=SHARDS,
            namespaces=3,
            rf=RF,
            change=2,
            balance_seconds=60,
            timeout=60,
            provider="etcd",
            etcd_lease_ttl=2,
            scenarios=frozenset({"coordinator_failover"}),
        )
        if p.name == "coordinator_failover"
    )
    assert failover.extra["provider"] == "etcd"
    # The standby leads once the lease (2 s) ended, not before the kill (checked by run()).
    assert failover.extra["leads_s"] < 15, failover
    assert "BecomeLeader" not in failover.rpcs, failover
    assert "NewTerm" not in failover.rpcs, failover
    assert failover.rpcs["GetStatus"] >= SHARDS * RF
    assert failover.status_writes <= 1, failover
