"""Cluster configuration in Oxia's YAML form, validated with clear errors.

namespaces:
  - name: default
    initialShardCount: 3
    replicationFactor: 3
    notificationsEnabled: true
    keySorting: hierarchical      # or natural
servers:
  - public: host1:6648
    internal: host1:6649
loadBalancer:
  scheduleInterval: 30s
  quarantineTime: 5m
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyxia.common.validation import MAX_REPLICATION_FACTOR, address_problem, namespace_problem
from pyxia.storage.keys import KeyEncoding, encoding_by_name


class ConfigError(ValueError):
    """The cluster configuration is invalid; the message says where and why."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_duration(value: Any, where: str) -> float:
    """``30s``, ``5m``, ``100ms``, ``1h`` or a number of seconds → seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            n = float(m.group(1))
            return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    raise ConfigError(f"{where}: invalid duration {value!r} (use e.g. 100ms, 30s, 5m, 1h)")


@dataclass(frozen=True)
class AntiAffinity:
    """Replicas of a shard should not share a value of these labels;
    ``strict`` makes it a hard rule, ``relaxed`` a preference."""

    labels: tuple[str, ...]
    mode: str = "strict"


@dataclass(frozen=True)
class NamespaceConfig:
    name: str
    initial_shard_count: int = 1
    replication_factor: int = 1
    notifications_enabled: bool = True
    key_sorting: str = "hierarchical"
    tso: bool = False
    anti_affinities: tuple[AntiAffinity, ...] = ()

    @property
    def encoding(self) -> KeyEncoding:
        return encoding_by_name(self.key_sorting)


@dataclass(frozen=True)
class ServerAddress:
    public: str
    internal: str
    name: str | None = None


@dataclass(frozen=True)
class LoadBalancerConfig:
    schedule_interval: float = 30.0
    quarantine_time: float = 300.0


@dataclass(frozen=True)
class ClusterConfig:
    namespaces: tuple[NamespaceConfig, ...]
    servers: tuple[ServerAddress, ...] = ()
    load_balancer: LoadBalancerConfig = field(default_factory=LoadBalancerConfig)
    # server name (or internal address) -> labels, for anti-affinity
    server_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def labels_by_internal(self) -> dict[str, dict[str, str]]:
        named = {k: dict(v) for k, v in self.server_labels}
        out: dict[str, dict[str, str]] = {}
        for s in self.servers:
            labels = named.get(s.name or "", named.get(s.internal))
            if labels:
                out[s.internal] = labels
        return out


def _expect(d: Any, kind: type, where: str) -> Any:
    if not isinstance(d, kind):
        raise ConfigError(f"{where}: expected a {kind.__name__}, got {type(d).__name__}")
    return d


def parse_namespace(raw: Any, where: str) -> NamespaceConfig:
    d = _expect(raw, dict, where)
    known = {
        "name",
        "initialShardCount",
        "replicationFactor",
        "notificationsEnabled",
        "keySorting",
        "tso",
        "antiAffinities",
    }
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    problem = namespace_problem(name)
    if problem is not None:
        # The name becomes a directory under --data-dir and --wal-dir on every server.
        raise ConfigError(f"{where}: namespace name {name!r} {problem}")
    shards = d.get("initialShardCount", 1)
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= 65536:
        raise ConfigError(f"{where} ({name}): initialShardCount must be an integer >= 1")
    rf = d.get("replicationFactor", 1)
    if not isinstance(rf, int) or isinstance(rf, bool) or not 1 <= rf <= MAX_REPLICATION_FACTOR:
        raise ConfigError(
            f"{where} ({name}): replicationFactor must be an integer in 1..{MAX_REPLICATION_FACTOR}"
        )
    notifications = d.get("notificationsEnabled", True)
    if not isinstance(notifications, bool):
        raise ConfigError(f"{where} ({name}): notificationsEnabled must be true or false")
    sorting = d.get("keySorting", "hierarchical")
    if sorting not in ("hierarchical", "natural"):
        raise ConfigError(
            f"{where} ({name}): keySorting must be 'hierarchical' or 'natural', got {sorting!r}"
        )
    tso = d.get("tso", False)
    if not isinstance(tso, bool):
        raise ConfigError(f"{where} ({name}): tso must be true or false")
    if tso and shards != 1:
        raise ConfigError(f"{where} ({name}): a tso namespace must have exactly one shard")
    rules = []
    for j, aa in enumerate(
        _expect(d.get("antiAffinities", []) or [], list, f"{where}.antiAffinities")
    ):
        aw = f"{where}.antiAffinities[{j}]"
        ad = _expect(aa, dict, aw)
        labels = ad.get("labels")
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) and x for x in labels)
        ):
            raise ConfigError(f"{aw}: 'labels' must be a non-empty list of label names")
        mode = ad.get("mode", "strict")
        if mode not in ("strict", "relaxed"):
            raise ConfigError(f"{aw}: mode must be 'strict' or 'relaxed', got {mode!r}")
        rules.append(AntiAffinity(tuple(labels), mode))
    return NamespaceConfig(name, shards, rf, notifications, sorting, tso, tuple(rules))


def parse_cluster_config(raw: Any, *, require_servers: bool = True) -> ClusterConfig:
    d = _expect(raw, dict, "cluster config")
    unknown = set(d) - {
        "namespaces",
        "servers",
        "loadBalancer",
        "allowExtraAuthorities",
        "serverMetadata",
    }
    if unknown:
        raise ConfigError(f"cluster config: unknown field(s) {sorted(unknown)}")
    nss_raw = _expect(d.get("namespaces", []), list, "namespaces")
    namespaces = tuple(parse_namespace(n, f"namespaces[{i}]") for i, n in enumerate(nss_raw))
    names = [n.name for n in namespaces]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"namespaces: duplicate name(s) {sorted(dup)}")
    tso = [n.name for n in namespaces if n.tso]
    if len(tso) > 1:
        raise ConfigError(f"namespaces: only one namespace may set tso: true, got {tso}")
    if not namespaces:
        raise ConfigError("namespaces: at least one namespace is required")
    servers: list[ServerAddress] = []
    for i, s in enumerate(_expect(d.get("servers", []), list, "servers")):
        sd = _expect(s, dict, f"servers[{i}]")
        pub, internal = sd.get("public"), sd.get("internal")
        for what, v in (("public", pub), ("internal", internal)):
            problem = address_problem(v)
            if problem is not None:
                raise ConfigError(f"servers[{i}]: '{what}' {v!r} {problem}")
        assert isinstance(pub, str) and isinstance(internal, str)
        name = sd.get("name")
        servers.append(ServerAddress(pub, internal, name if isinstance(name, str) else None))
    internals = [s.internal for s in servers]
    if len(set(internals)) != len(internals):
        raise ConfigError("servers: two servers share an internal address")
    if require_servers:
        if not servers:
            raise ConfigError("servers: at least one data server is required")
        for ns in namespaces:
            if ns.replication_factor > len(servers):
                raise ConfigError(
                    f"namespace {ns.name}: replicationFactor {ns.replication_factor} is larger "
                    f"than the number of servers ({len(servers)})"
                )
    lb_raw = _expect(d.get("loadBalancer", {}) or {}, dict, "loadBalancer")
    lb = LoadBalancerConfig(
        parse_duration(lb_raw.get("scheduleInterval", "30s"), "loadBalancer.scheduleInterval"),
        parse_duration(lb_raw.get("quarantineTime", "5m"), "loadBalancer.quarantineTime"),
    )
    labels: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for key, md in (_expect(d.get("serverMetadata", {}) or {}, dict, "serverMetadata")).items():
        mw = f"serverMetadata.{key}"
        lab = _expect(_expect(md, dict, mw).get("labels", {}) or {}, dict, f"{mw}.labels")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in lab.items()):
            raise ConfigError(f"{mw}.labels: labels must map strings to strings")
        labels.append((str(key), tuple(sorted(lab.items()))))
    return ClusterConfig(namespaces, tuple(servers), lb, tuple(sorted(labels)))


def load_cluster_config(path: Path, *, require_servers: bool = True) -> ClusterConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from e
    try:
        return parse_cluster_config(raw, require_servers=require_servers)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
