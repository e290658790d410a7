"""Configuration in Oxia's YAML forms, validated with clear errors: the cluster config (below),
the data server's ``--sconfig`` file and the coordinator's (:data:`SERVER_FILE_KEYS`,
:data:`COORDINATOR_FILE_KEYS`), and Go durations (``1h30m``, ``500ms``) wherever Oxia takes one.

The cluster config:

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
autoSplit:                        # Oxia 0.17's keys and defaults
  enabled: false
  maxShardSizeMb: 1024
  maxThroughputOps: 10000
  stabilizationPeriod: 1m
  cooldownPeriod: 5m
  maxShardsPerNamespace: 64
  collectionInterval: 30s
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyxia.common.keys import KeyEncoding, encoding_by_name
from pyxia.common.validation import MAX_REPLICATION_FACTOR, address_problem, namespace_problem


class ConfigError(ValueError):
    """The cluster configuration is invalid; the message says where and why."""


_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """A Go duration (``time.ParseDuration``: ``1h``, ``1h30m``, ``1.5s``, ``500ms``, ``300us``,
    ``0``) in seconds; a plain number is taken as seconds (pyxia's older form). Raises
    ValueError for anything else and for negative durations."""
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        pass
    else:
        if seconds < 0 or seconds != seconds or seconds == float("inf"):
            raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
        return seconds
    if t.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    body = t[1:] if t.startswith("+") else t
    pos, total = 0, 0.0
    for m in _GO_TERM.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(
            f"invalid duration {text!r} (Go form: e.g. 500ms, 30s, 5m, 1h30m; or seconds)"
        )
    return total


def parse_duration(value: Any, where: str) -> float:
    """A duration in Oxia's form (``30s``, ``5m``, ``1h30m``) or a number of seconds → seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
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
class AutoSplitConfig:
    """Oxia's ``autoSplit``: split a shard whose DB size or operation rate stays over its
    limit for ``stabilization_period``, at most one split per ``cooldown_period``, never past
    ``max_shards_per_namespace`` (also the limit of a manual split)."""

    enabled: bool = False
    max_shard_size_mb: int = 1024
    max_throughput_ops: int = 10000
    stabilization_period: float = 60.0
    cooldown_period: float = 300.0
    max_shards_per_namespace: int = 64
    collection_interval: float = 30.0


@dataclass(frozen=True)
class ClusterConfig:
    namespaces: tuple[NamespaceConfig, ...]
    servers: tuple[ServerAddress, ...] = ()
    load_balancer: LoadBalancerConfig = field(default_factory=LoadBalancerConfig)
    # server name (or internal address) -> labels, for anti-affinity
    server_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    auto_split: AutoSplitConfig = field(default_factory=AutoSplitConfig)

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
        "autoSplit",
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
    auto_split = parse_auto_split(d.get("autoSplit", {}) or {})
    return ClusterConfig(namespaces, tuple(servers), lb, tuple(sorted(labels)), auto_split)


def parse_auto_split(raw: Any) -> AutoSplitConfig:
    """Oxia's ``autoSplit`` section; absent or zero values take Oxia's defaults."""
    d = _expect(raw, dict, "autoSplit")
    known = {
        "enabled",
        "maxShardSizeMb",
        "maxThroughputOps",
        "stabilizationPeriod",
        "cooldownPeriod",
        "maxShardsPerNamespace",
        "collectionInterval",
    }
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"autoSplit: unknown field(s) {sorted(unknown)}")
    dflt = AutoSplitConfig()
    enabled = d.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("autoSplit.enabled must be true or false")

    def count(key: str, v: Any, default: int) -> int:
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**32 - 1:
            raise ConfigError(f"autoSplit.{key} must be an integer in 0..{2**32 - 1}")
        return v or default

    def duration(key: str, v: Any, default: float) -> float:
        if v is None or v == "":
            return default
        return parse_duration(v, f"autoSplit.{key}")

    interval = duration("collectionInterval", d.get("collectionInterval"), dflt.collection_interval)
    if interval <= 0:
        raise ConfigError("autoSplit.collectionInterval must be positive")
    return AutoSplitConfig(
        enabled,
        count("maxShardSizeMb", d.get("maxShardSizeMb"), dflt.max_shard_size_mb),
        count("maxThroughputOps", d.get("maxThroughputOps"), dflt.max_throughput_ops),
        duration("stabilizationPeriod", d.get("stabilizationPeriod"), dflt.stabilization_period),
        duration("cooldownPeriod", d.get("cooldownPeriod"), dflt.cooldown_period),
        count(
            "maxShardsPerNamespace",
            d.get("maxShardsPerNamespace"),
            dflt.max_shards_per_namespace,
        ),
        interval,
    )


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


# -- the processes' own config files (Oxia's --sconfig) -------------------------------------------


@dataclass(frozen=True)
class FileKey:
    """What one key of an Oxia options file means to pyxia: the command's parameter it sets
    (``param``) and how its value reads (``kind``: str, bool, int, duration, list), or, with no
    ``param``, why pyxia ignores it (``note``, logged as a warning)."""

    param: str | None
    kind: str = "str"
    note: str = ""


def _tls_keys(yaml_prefix: str, param_prefix: str, *, listener: bool) -> dict[str, FileKey]:
    p = f"{param_prefix}_tls_" if param_prefix else "tls_"
    keys = {
        "certFile": FileKey(p + "cert_file"),
        "keyFile": FileKey(p + "key_file"),
        "trustedCaFile": FileKey(p + "trusted_ca_file"),
        "minVersion": FileKey(p + "min_version", "int"),
        "maxVersion": FileKey(p + "max_version", "int"),
        "insecureSkipVerify": FileKey(p + "insecure_skip_verify", "bool"),
        "enabled": FileKey(None, note="TLS is on when a certificate file is given"),
        "cipherSuites": FileKey(None, note="gRPC's own TLS cipher suites are used"),
    }
    if listener:
        keys["clientAuth"] = FileKey(p + "client_auth", "bool")
    else:
        keys["serverName"] = FileKey(p + "server_name")
    return {f"{yaml_prefix}.{k}": v for k, v in keys.items()}


_OBSERVABILITY = {
    "observability.metric.enabled": FileKey("metrics_enabled", "bool"),
    "observability.metric.bindAddress": FileKey("metrics_addr"),
    "observability.log.level": FileKey("log_level"),
    **{
        k: FileKey(
            None, note="pyxia's metrics endpoint is plain HTTP (bind it to a private address)"
        )
        for k in _tls_keys("observability.metric.tls", "", listener=True)
    },
}

SERVER_FILE_KEYS: dict[str, FileKey] = {
    "server.public.bindAddress": FileKey("public_addr"),
    "server.public.auth.provider": FileKey("auth_provider_name"),
    "server.public.auth.providerParams": FileKey("auth_provider_params"),
    "server.public.auth.enabled": FileKey(None, note="authentication is on with a provider"),
    **_tls_keys("server.public.tls", "", listener=True),
    "server.internal.bindAddress": FileKey("internal_addr"),
    "server.internal.auth.provider": FileKey(
        None, note="internal calls prove cluster membership (--cluster-secret-file or mTLS)"
    ),
    "server.internal.auth.providerParams": FileKey(None, note="see server.internal.auth"),
    "server.internal.auth.enabled": FileKey(None, note="see server.internal.auth"),
    **_tls_keys("server.internal.tls", "internal", listener=True),
    **_tls_keys("replication.tls", "peer", listener=False),
    "storage.wal.dir": FileKey("wal_dir"),
    "storage.wal.sync": FileKey("wal_sync_data", "bool"),
    "storage.wal.retention": FileKey("wal_retention_time", "duration"),
    "storage.database.dir": FileKey("data_dir"),
    "storage.database.readCacheSizeMB": FileKey("db_cache_size_mb", "int"),
    "storage.notification.retention": FileKey("notifications_retention_time", "duration"),
    "scheduler.checksum.interval": FileKey(
        None, note="pyxia records no periodic DB checksum (its WAL entries are CRC-chained)"
    ),
    "featureFlags.authorityValidation": FileKey(
        None, note="pyxia always checks a request's shard against the assignments"
    ),
    **_OBSERVABILITY,
}
"""Keys of Oxia's data server options file (``oxia server --sconfig``), as pyxia reads them."""

COORDINATOR_FILE_KEYS: dict[str, FileKey] = {
    "cluster.configPath": FileKey("cluster_config"),
    "server.public.bindAddress": FileKey("admin_addr"),
    "server.public.auth.provider": FileKey(None, note="see docs/security.md"),
    "server.public.auth.providerParams": FileKey(None, note="see docs/security.md"),
    "server.public.auth.enabled": FileKey(None, note="see docs/security.md"),
    "server.internal.bindAddress": FileKey("internal_addr"),
    "server.internal.auth.provider": FileKey(None, note="see docs/security.md"),
    "server.internal.auth.providerParams": FileKey(None, note="see docs/security.md"),
    "server.internal.auth.enabled": FileKey(None, note="see docs/security.md"),
    **_tls_keys("server.internal.tls", "", listener=True),
    **_tls_keys("controller.tls", "peer", listener=False),
    "metadata.providerName": FileKey("metadata"),
    "metadata.kubernetes.namespace": FileKey("k8s_namespace"),
    "metadata.kubernetes.statusName": FileKey("k8s_configmap_name"),
    "metadata.kubernetes.configName": FileKey(
        None, note="the cluster config is a file (cluster.configPath / --cluster-config)"
    ),
    "metadata.file.dir": FileKey("metadata_dir"),
    "metadata.file.statusName": FileKey("file_clusters_status_path"),
    "metadata.file.configName": FileKey(
        None, note="the cluster config is a file (cluster.configPath / --cluster-config)"
    ),
    "metadata.raft.address": FileKey("raft_address"),
    "metadata.raft.bootstrapNodes": FileKey("raft_bootstrap_nodes", "list"),
    "metadata.raft.dataDir": FileKey("raft_data_dir"),
    **_OBSERVABILITY,
}
"""Keys of Oxia's coordinator options file (``oxia coordinator --sconfig``)."""


def _flatten(d: Any, prefix: str, out: dict[str, Any], where: Path) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: {prefix or 'the file'} must be a mapping")
    for k, v in d.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} under {prefix or 'the top'} is not a string")
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _flatten(v, key, out, where)
        else:
            out[key] = v


def _file_value(key: str, spec: FileKey, value: Any, where: Path) -> Any:
    at = f"{where}: {key}"
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{at}: expected true or false, got {value!r}")
    if spec.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{at}: expected an integer, got {value!r}")
    if spec.kind == "duration":
        return parse_duration(value, at)
    if spec.kind == "list":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{at}: expected a list of strings, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{at}: expected a string, got {value!r}")


def load_options_file(path: Path, keys: dict[str, FileKey]) -> tuple[dict[str, Any], list[str]]:
    """An Oxia options file (``--sconfig``) read with ``keys``: ``({parameter: value},
    [warning for each key pyxia ignores])``. A key Oxia does not have, or a value of the wrong
    type, raises :class:`ConfigError` naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    flat: dict[str, Any] = {}
    _flatten(raw or {}, "", flat, path)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in flat.items():
        spec = keys.get(key)
        if spec is None:
            near = sorted(k for k in keys if k.split(".")[0] == key.split(".")[0])
            hint = f" (keys under {key.split('.')[0]}: {', '.join(near)})" if near else ""
            raise ConfigError(f"{path}: unknown key {key}{hint}")
        if value is None:
            continue
        if spec.param is None:
            warnings.append(f"{path}: {key} is ignored: {spec.note}")
            continue
        values[spec.param] = _file_value(key, spec, value, path)
    return values, warnings
