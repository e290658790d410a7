"""The coordinator's pure decision code: election choice, placement,
rebalancing plans, configuration validation."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.config import ConfigError, parse_cluster_config
from pyxia.coordinator.election import Head, choose_leader, majority
from pyxia.coordinator.placement import (
    AntiAffinityRule,
    PlacementError,
    plan_leader_rebalance,
    plan_rebalance,
    replace_member,
    select_ensemble,
)

nodes = st.sampled_from([f"n{i}" for i in range(6)])
heads = st.builds(Head, st.integers(-1, 5), st.integers(-1, 100))


def test_majority() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


@given(st.dictionaries(nodes, heads, min_size=1), st.dictionaries(nodes, st.integers(0, 9)))
def test_leader_has_the_highest_head_then_fewest_leaderships(
    hs: dict[str, Head], counts: dict[str, int]
) -> None:
    ensemble = sorted(hs)
    leader = choose_leader(hs, ensemble, counts)
    assert leader is not None
    best = max(hs.values())
    assert hs[leader] == best  # never a node with a shorter (or older-term) log
    tied = [n for n in ensemble if hs[n] == best]
    assert counts.get(leader, 0) == min(counts.get(n, 0) for n in tied)


def test_term_beats_offset_and_non_members_are_ignored() -> None:
    hs = {"a": Head(2, 10), "b": Head(3, 5), "outsider": Head(9, 99)}
    assert choose_leader(hs, ["a", "b"], {}) == "b"
    assert choose_leader({}, ["a"], {}) is None


@given(st.integers(1, 6), st.dictionaries(nodes, st.integers(0, 20)))
def test_select_ensemble_distinct_and_least_loaded(rf: int, load: dict[str, int]) -> None:
    servers = [f"n{i}" for i in range(6)]
    ens = select_ensemble(servers, rf, load)
    assert len(ens) == rf == len(set(ens))
    # the rf least loaded servers (ties broken by name)
    expected = sorted(servers, key=lambda s: (load.get(s, 0), s))[:rf]
    assert sorted(ens) == sorted(expected)


def test_anti_affinity_strict_and_relaxed() -> None:
    servers = ["a1", "a2", "b1", "c1"]
    labels = {"a1": {"zone": "a"}, "a2": {"zone": "a"}, "b1": {"zone": "b"}, "c1": {"zone": "c"}}
    strict = [AntiAffinityRule(("zone",), True)]
    ens = select_ensemble(servers, 3, {}, rules=strict, labels=labels)
    assert len({labels[s]["zone"] for s in ens}) == 3
    with pytest.raises(PlacementError, match="anti-affinity"):
        select_ensemble(servers[:3], 3, {}, rules=strict, labels=labels)
    relaxed = [AntiAffinityRule(("zone",), False)]
    assert len(select_ensemble(servers[:3], 3, {}, rules=relaxed, labels=labels)) == 3
    with pytest.raises(PlacementError, match="servers"):
        select_ensemble(servers, 5, {})
    assert (
        replace_member(["a1", "b1", "c1"], "a1", servers, {}, rules=strict, labels=labels) == "a2"
    )
    with pytest.raises(PlacementError):
        replace_member(["a1", "b1", "c1"], "b1", ["a2"], {}, rules=strict, labels=labels)


@given(
    st.dictionaries(
        st.integers(0, 20), st.lists(nodes, min_size=1, max_size=3, unique=True), min_size=1
    )
)
def test_rebalance_moves_narrow_the_gap(replicas: dict[int, list[str]]) -> None:
    servers = [f"n{i}" for i in range(6)]
    load = Counter(s for ens in replicas.values() for s in ens)
    move = plan_rebalance(replicas, servers)
    spread = max(load[s] for s in servers) - min(load[s] for s in servers)
    if move is None:
        # only when balanced, or no shard can move from the busiest server
        return
    assert move.source in replicas[move.shard] and move.target not in replicas[move.shard]
    assert load[move.source] - load[move.target] >= 2
    assert spread >= 2


def test_leader_rebalance() -> None:
    ensembles = {s: ["a", "b", "c"] for s in range(4)}
    assert plan_leader_rebalance(dict.fromkeys(range(4), "a"), ensembles) is not None
    assert plan_leader_rebalance({0: "a", 1: "b", 2: "c", 3: "a"}, ensembles) is None


GOOD = {
    "namespaces": [
        {
            "name": "default",
            "initialShardCount": 2,
            "replicationFactor": 3,
            "antiAffinities": [{"labels": ["zone"], "mode": "relaxed"}],
        }
    ],
    "servers": [
        {"public": f"h{i}:6648", "internal": f"h{i}:6649", "name": f"s{i}"} for i in range(3)
    ],
    "serverMetadata": {"s0": {"labels": {"zone": "a"}}},
    "loadBalancer": {"scheduleInterval": "30s", "quarantineTime": "5m"},
}


def test_config_parses() -> None:
    cfg = parse_cluster_config(GOOD)
    assert cfg.namespaces[0].anti_affinities[0].mode == "relaxed"
    assert cfg.load_balancer.schedule_interval == 30 and cfg.load_balancer.quarantine_time == 300
    assert cfg.labels_by_internal() == {"h0:6649": {"zone": "a"}}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["namespaces"][0].update(replicationFactor=4), "larger than the number"),
        (lambda c: c["namespaces"][0].update(initialShardCount=0), "initialShardCount"),
        (lambda c: c["namespaces"][0].update(keySorting="random"), "keySorting"),
        (lambda c: c["namespaces"][0].update(bogus=1), "unknown field"),
        (lambda c: c["namespaces"].append(dict(c["namespaces"][0])), "duplicate"),
        (lambda c: c["servers"][0].update(public="nope"), "host:port"),
        (lambda c: c["servers"][1].update(internal="h0:6649"), "share an internal"),
        (lambda c: c["loadBalancer"].update(scheduleInterval="soon"), "invalid duration"),
        (lambda c: c["namespaces"][0]["antiAffinities"][0].update(mode="maybe"), "mode"),
        (lambda c: c.update(namespaces=[]), "at least one namespace"),
    ],
)
def test_config_errors_are_clear(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    import copy

    cfg = copy.deepcopy(GOOD)
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        parse_cluster_config(cfg)
