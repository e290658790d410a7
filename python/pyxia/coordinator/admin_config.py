"""The cluster configuration the admin API manages, and how it joins the cluster config file
(pure code, no I/O, no clock).

Two sources define namespaces and data servers:

- the **cluster config file** (``pyxia coordinator -f``), re-read while the coordinator runs;
- the **admin API** (``io.oxia.proto.v1.OxiaAdmin``): what it creates or changes is kept in
  ``ClusterStatus.admin_managed`` (a ``ClusterConfiguration``), so the metadata provider
  persists it with the status, in the same compare-and-set as the shards it creates, and a
  coordinator that takes over after a failover starts from it.

The rule (invariants):

1. **The file wins for what it defines.** A namespace is the file's if the file names it; a
   data server is the file's if the file names it (its name, else its internal address) or
   uses its internal address. The admin API refuses to patch or delete what the file defines
   (FAILED_PRECONDITION, naming the file) and refuses to create what either source defines
   (ALREADY_EXISTS).
2. **A reload never drops an API change silently.** The effective configuration is the
   file's items plus every admin-managed item the file does not define; a reload changes only
   what the file defines. When an edited file newly defines an admin-managed item, the file
   takes it over: the item leaves ``admin_managed`` (persisted) and
   :func:`take_over` reports it, so the coordinator logs the definition it replaced.
3. Every request is validated before it touches anything (names, counts, replication factor,
   addresses, labels: :mod:`pyxia.common.validation`); a refused request changes nothing. The
   effective configuration keeps every namespace's replication factor within the number of
   data servers (FAILED_PRECONDITION otherwise, as Oxia).

Data servers are named as Oxia names them: their name, else their internal address. pyxia
identifies a replica by the server's internal address, so a server hosting replicas cannot get
a new internal address (create a new server and delete this one: its shards are moved).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from pyxia.common.validation import (
    MAX_REPLICATION_FACTOR,
    check_address,
    check_data_server_name,
    check_labels,
    check_namespace,
)
from pyxia.config import AntiAffinity, ClusterConfig, NamespaceConfig, ServerAddress
from pyxia.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyxia.proto import metadata_pb2

MAX_NAMESPACES: Final = 1024
"""Namespaces the cluster may have in all (file and API): each one's shards are controllers."""
MAX_DATA_SERVERS: Final = 1024
"""Data servers the cluster may have in all: each one is probed and pushed to."""
MAX_INITIAL_SHARDS: Final = 1024
"""Shards a namespace created through the API may start with."""
KEY_SORTINGS: Final = ("hierarchical", "natural")

Managed = metadata_pb2.ClusterConfiguration


def server_key(s: ServerAddress) -> str:
    """A data server's name in the admin API: its name, else its internal address."""
    return s.name or s.internal


def identity_key(ident: metadata_pb2.DataServerIdentity) -> str:
    return ident.name if ident.HasField("name") else ident.internal


# -- conversions ----------------------------------------------------------------------------------


def namespace_config(ns: metadata_pb2.Namespace) -> NamespaceConfig:
    return NamespaceConfig(
        name=ns.name,
        initial_shard_count=ns.initial_shard_count,
        replication_factor=ns.replication_factor,
        notifications_enabled=(
            ns.notifications_enabled if ns.HasField("notifications_enabled") else True
        ),
        key_sorting=(ns.key_sorting or "hierarchical").lower(),
        anti_affinities=tuple(
            AntiAffinity(tuple(a.labels), a.mode or "strict") for a in ns.anti_affinities
        ),
    )


def namespace_proto(ns: NamespaceConfig) -> metadata_pb2.Namespace:
    out = metadata_pb2.Namespace(
        name=ns.name,
        initial_shard_count=ns.initial_shard_count,
        replication_factor=ns.replication_factor,
        notifications_enabled=ns.notifications_enabled,
        key_sorting=ns.key_sorting,
    )
    for a in ns.anti_affinities:
        out.anti_affinities.add(labels=a.labels, mode=a.mode)
    return out


def server_address(ident: metadata_pb2.DataServerIdentity) -> ServerAddress:
    return ServerAddress(
        ident.public, ident.internal, ident.name if ident.HasField("name") else None
    )


def data_server_proto(s: ServerAddress, labels: Mapping[str, str]) -> metadata_pb2.DataServer:
    """Oxia's view of a server: the name always set (defaulted to the internal address)."""
    return metadata_pb2.DataServer(
        identity=metadata_pb2.DataServerIdentity(
            name=server_key(s), public=s.public, internal=s.internal
        ),
        metadata=metadata_pb2.DataServerMetadata(labels=dict(labels)),
    )


# -- joining the two sources ----------------------------------------------------------------------


def _file_defines_server(file: ClusterConfig, ident: metadata_pb2.DataServerIdentity) -> bool:
    key = identity_key(ident)
    return any(server_key(s) == key or s.internal == ident.internal for s in file.servers)


def effective_config(file: ClusterConfig, managed: Managed) -> ClusterConfig:
    """The file's configuration plus every admin-managed item the file does not define."""
    file_ns = {n.name for n in file.namespaces}
    namespaces = list(file.namespaces)
    namespaces += [namespace_config(n) for n in managed.namespaces if n.name not in file_ns]
    servers = list(file.servers)
    labels = dict(file.server_labels)
    for ident in managed.servers:
        if _file_defines_server(file, ident):
            continue
        s = server_address(ident)
        servers.append(s)
        md = managed.server_metadata.get(identity_key(ident))
        if md is not None and md.labels:
            labels[server_key(s)] = tuple(sorted(md.labels.items()))
    # replace(), not a new ClusterConfig: every other setting of the file (auto-split, load
    # balancer, any added later) carries over.
    return dataclasses.replace(
        file,
        namespaces=tuple(namespaces),
        servers=tuple(servers),
        server_labels=tuple(sorted(labels.items())),
    )


def take_over(managed: Managed, file: ClusterConfig) -> list[str]:
    """Removes from ``managed`` (in place) every item ``file`` now defines; returns one line
    per item taken over, with the admin-managed definition it replaced (for the log)."""
    notes: list[str] = []
    file_ns = {n.name for n in file.namespaces}
    kept_ns = []
    for n in managed.namespaces:
        if n.name in file_ns:
            notes.append(
                f"namespace {n.name!r} is now defined by the cluster config file; its admin API "
                f"definition is replaced: {_describe_namespace(n)}"
            )
        else:
            kept_ns.append(n)
    kept_servers = []
    for ident in managed.servers:
        if _file_defines_server(file, ident):
            key = identity_key(ident)
            notes.append(
                f"data server {key!r} is now defined by the cluster config file; its admin API "
                f"definition is replaced: public={ident.public} internal={ident.internal}"
            )
            if key in managed.server_metadata:
                del managed.server_metadata[key]
        else:
            kept_servers.append(ident)
    if notes:
        del managed.namespaces[:]
        managed.namespaces.extend(kept_ns)
        del managed.servers[:]
        managed.servers.extend(kept_servers)
    return notes


def config_problem(cfg: ClusterConfig) -> str | None:
    """Why the effective configuration cannot be applied, or None."""
    for ns in cfg.namespaces:
        if ns.replication_factor > len(cfg.servers):
            return (
                f"namespace {ns.name!r} has replicationFactor={ns.replication_factor} but only "
                f"{len(cfg.servers)} data servers are configured"
            )
    return None


def _describe_namespace(n: metadata_pb2.Namespace) -> str:
    notifications = n.notifications_enabled if n.HasField("notifications_enabled") else True
    return (
        f"initialShardCount={n.initial_shard_count} replicationFactor={n.replication_factor} "
        f"notificationsEnabled={str(notifications).lower()} keySorting={n.key_sorting}"
    )


def _file_owned(what: str, name: str, source: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"oxia: {what} {name!r} is defined in the cluster config file {source}: the file wins "
        f"for what it defines, so change it there (the admin API manages only {what}s the "
        "file does not define)"
    )


# -- namespaces -----------------------------------------------------------------------------------


def _check_replication_factor(rf: int, servers: int, name: str) -> None:
    if not 1 <= rf <= MAX_REPLICATION_FACTOR:
        raise InvalidArgument(
            f"oxia: namespace {name!r}: replication factor {rf} is out of range "
            f"(1 .. {MAX_REPLICATION_FACTOR})"
        )
    if rf > servers:
        raise FailedPrecondition(
            f"oxia: namespace {name!r} has replicationFactor={rf} but only {servers} data "
            "servers are configured"
        )


def create_namespace(
    managed: Managed,
    file: ClusterConfig,
    status: metadata_pb2.ClusterStatus,
    req: metadata_pb2.Namespace,
    source: str,
) -> metadata_pb2.Namespace:
    """Validates ``req`` and adds it to ``managed``; returns the namespace as stored."""
    check_namespace(req.name)
    if not 1 <= req.initial_shard_count <= MAX_INITIAL_SHARDS:
        raise InvalidArgument(
            f"oxia: namespace {req.name!r}: initial shard count {req.initial_shard_count} is "
            f"out of range (1 .. {MAX_INITIAL_SHARDS})"
        )
    sorting = req.key_sorting.lower()
    if sorting not in KEY_SORTINGS:
        raise InvalidArgument(
            f'oxia: namespace {req.name!r}: key sorting must be one of "natural" or '
            f'"hierarchical", got {req.key_sorting!r}'
        )
    if req.anti_affinities:
        raise InvalidArgument(
            f"oxia: namespace {req.name!r}: anti-affinities cannot be set on create"
        )
    current = effective_config(file, managed)
    if any(n.name == req.name for n in current.namespaces):
        if any(n.name == req.name for n in file.namespaces):
            raise AlreadyExists(
                f"oxia: namespace {req.name!r} already exists (defined in the cluster config "
                f"file {source})"
            )
        raise AlreadyExists(f"oxia: namespace {req.name!r} already exists")
    old = status.namespaces.get(req.name)
    if old is not None and old.shards:
        raise FailedPrecondition(
            f"oxia: namespace {req.name!r} is still being deleted ({len(old.shards)} shards "
            "left): create it again once they are gone"
        )
    if len(current.namespaces) >= MAX_NAMESPACES:
        raise FailedPrecondition(f"oxia: the cluster has {MAX_NAMESPACES} namespaces already")
    _check_replication_factor(req.replication_factor, len(current.servers), req.name)
    stored = metadata_pb2.Namespace()
    stored.CopyFrom(req)
    stored.key_sorting = sorting
    if not stored.HasField("notifications_enabled"):
        stored.notifications_enabled = True
    managed.namespaces.append(stored)
    return stored


def _managed_namespace(
    managed: Managed, file: ClusterConfig, name: str, source: str
) -> metadata_pb2.Namespace:
    check_namespace(name)
    if any(n.name == name for n in file.namespaces):
        raise _file_owned("namespace", name, source)
    for n in managed.namespaces:
        if n.name == name:
            return n
    raise NotFound(f"oxia: namespace {name!r} not found")


def patch_namespace(
    managed: Managed, file: ClusterConfig, req: metadata_pb2.Namespace, source: str
) -> metadata_pb2.Namespace:
    """Changes what Oxia lets change: the replication factor (non-zero; shards created from
    now on use it) and whether notifications are on (from each shard's next term)."""
    check_namespace(req.name)
    if req.initial_shard_count:
        raise InvalidArgument("oxia: namespace initial shard count cannot be patched")
    if req.key_sorting:
        raise InvalidArgument("oxia: namespace key sorting cannot be patched")
    if req.anti_affinities:
        raise InvalidArgument("oxia: namespace anti-affinities cannot be patched")
    ns = _managed_namespace(managed, file, req.name, source)
    if req.replication_factor:
        servers = len(effective_config(file, managed).servers)
        _check_replication_factor(req.replication_factor, servers, req.name)
        ns.replication_factor = req.replication_factor
    if req.HasField("notifications_enabled"):
        ns.notifications_enabled = req.notifications_enabled
    out = metadata_pb2.Namespace()
    out.CopyFrom(ns)
    return out


def delete_namespace(
    managed: Managed, file: ClusterConfig, name: str, source: str
) -> metadata_pb2.Namespace:
    ns = _managed_namespace(managed, file, name, source)
    out = metadata_pb2.Namespace()
    out.CopyFrom(ns)
    kept = [n for n in managed.namespaces if n.name != name]
    del managed.namespaces[:]
    managed.namespaces.extend(kept)
    return out


# -- data servers ---------------------------------------------------------------------------------


def _labels_of(req: metadata_pb2.DataServer, name: str) -> dict[str, str] | None:
    """The labels a request sets (None: it sets none)."""
    if not req.HasField("metadata") or not req.metadata.labels:
        return None
    labels = dict(req.metadata.labels)
    check_labels(labels, f"labels of data server {name!r}")
    return labels


def create_data_server(
    managed: Managed, file: ClusterConfig, req: metadata_pb2.DataServer, source: str
) -> metadata_pb2.DataServer:
    if not req.HasField("identity"):
        raise InvalidArgument("oxia: data server identity must not be empty")
    ident = req.identity
    if not ident.HasField("name") or not ident.name:
        raise InvalidArgument("oxia: data server identity name must not be empty")
    name = check_data_server_name(ident.name)
    check_address(ident.public, f"public address of data server {name!r}")
    check_address(ident.internal, f"internal address of data server {name!r}")
    labels = _labels_of(req, name)
    current = effective_config(file, managed)
    for s in current.servers:
        owner = "the cluster config file " + source if s in file.servers else "the admin API"
        if server_key(s) == name:
            raise AlreadyExists(f"oxia: data server {name!r} already exists (from {owner})")
        for addr in (ident.internal, ident.public):
            if addr in (s.internal, s.public):
                raise AlreadyExists(
                    f"oxia: data server {server_key(s)!r} (from {owner}) already uses the "
                    f"address {addr}"
                )
    if len(current.servers) >= MAX_DATA_SERVERS:
        raise FailedPrecondition(f"oxia: the cluster has {MAX_DATA_SERVERS} data servers already")
    stored = metadata_pb2.DataServerIdentity(
        name=name, public=ident.public, internal=ident.internal
    )
    managed.servers.append(stored)
    if labels:
        managed.server_metadata[name].labels.update(labels)
    return data_server_proto(server_address(stored), labels or {})


def _managed_server(
    managed: Managed, file: ClusterConfig, name: str, source: str
) -> metadata_pb2.DataServerIdentity:
    if not name:
        raise InvalidArgument("oxia: data server must not be empty")
    check_data_server_name(name)
    if any(server_key(s) == name for s in file.servers):
        raise _file_owned("data server", name, source)
    for ident in managed.servers:
        if identity_key(ident) == name:
            return ident
    raise NotFound(f"oxia: data server {name!r} not found")


def patch_data_server(
    managed: Managed,
    file: ClusterConfig,
    req: metadata_pb2.DataServer,
    source: str,
    hosts_replicas: Callable[[str], bool],
) -> tuple[metadata_pb2.DataServer, ServerAddress]:
    """Changes a server's public address, internal address (only while it hosts no replica:
    ``hosts_replicas(internal)``) and labels (replaced when given). Returns Oxia's view and
    the server's previous address."""
    if not req.HasField("identity"):
        raise InvalidArgument("oxia: data server identity must not be empty")
    if not req.identity.HasField("name") or not req.identity.name:
        raise InvalidArgument("oxia: data server identity name must not be empty")
    name = req.identity.name
    ident = _managed_server(managed, file, name, source)
    before = server_address(ident)
    public, internal = req.identity.public, req.identity.internal
    if public:
        check_address(public, f"public address of data server {name!r}")
    if internal:
        check_address(internal, f"internal address of data server {name!r}")
    labels = _labels_of(req, name)
    others = [s for s in effective_config(file, managed).servers if server_key(s) != name]
    for addr in (public, internal):
        for s in others:
            if addr and addr in (s.internal, s.public):
                raise AlreadyExists(
                    f"oxia: data server {server_key(s)!r} already uses the address {addr}"
                )
    if internal and internal != ident.internal and hosts_replicas(ident.internal):
        raise FailedPrecondition(
            f"oxia: data server {name!r} hosts shard replicas at {ident.internal}: pyxia "
            "identifies a replica by its server's internal address, so create a data server "
            "with the new address and delete this one (its shards are moved)"
        )
    if public:
        ident.public = public
    if internal:
        ident.internal = internal
    if labels is not None:
        md = managed.server_metadata[name]
        md.labels.clear()
        md.labels.update(labels)
    current = dict(managed.server_metadata[name].labels) if name in managed.server_metadata else {}
    return data_server_proto(server_address(ident), current), before


def delete_data_server(
    managed: Managed, file: ClusterConfig, name: str, source: str
) -> metadata_pb2.DataServer:
    """Removes the server; its replicas are then moved off it (the coordinator evacuates a
    server the configuration no longer has)."""
    ident = _managed_server(managed, file, name, source)
    current = effective_config(file, managed)
    remaining = len(current.servers) - 1
    for ns in current.namespaces:
        if ns.replication_factor > remaining:
            raise FailedPrecondition(
                f"oxia: cannot delete data server {name!r}: namespace {ns.name!r} has "
                f"replicationFactor={ns.replication_factor} and {remaining} data servers would "
                "remain"
            )
    labels = dict(managed.server_metadata[name].labels) if name in managed.server_metadata else {}
    out = data_server_proto(server_address(ident), labels)
    kept = [i for i in managed.servers if identity_key(i) != name]
    del managed.servers[:]
    managed.servers.extend(kept)
    if name in managed.server_metadata:
        del managed.server_metadata[name]
    return out


def labels_of(cfg: ClusterConfig, s: ServerAddress) -> dict[str, str]:
    return cfg.labels_by_internal().get(s.internal, {})


def find_server(cfg: ClusterConfig, name: str) -> ServerAddress:
    if not name:
        raise InvalidArgument("oxia: data server must not be empty")
    check_data_server_name(name)
    for s in cfg.servers:
        if server_key(s) == name:
            return s
    raise NotFound(f"oxia: data server {name!r} not found")


def find_namespace(cfg: ClusterConfig, name: str) -> NamespaceConfig:
    if not name:
        raise InvalidArgument("oxia: namespace must not be empty")
    check_namespace(name)
    for n in cfg.namespaces:
        if n.name == name:
            return n
    raise NotFound(f"oxia: namespace {name!r} not found")


MAX_SHARD_ID: Final = 2**63 - 1


def check_split_request(
    cfg: ClusterConfig,
    status: metadata_pb2.ClusterStatus,
    namespace: str,
    shard: int,
    split_point: int | None,
) -> None:
    """What SplitShard can tell from the request alone, before the coordinator plans the
    split: the namespace is configured (else NOT_FOUND), the shard is one of its shards (else
    NOT_FOUND), its hash range holds two values at least, and an explicit split point lies in
    that range below its end — Oxia's rule: ranges are inclusive, the left child keeps
    ``[min, point]`` and the right one ``[point + 1, max]``. Whether the shard can be split
    *now* (steady, no split or ensemble change under way) is the coordinator's to say."""
    find_namespace(cfg, namespace)
    if not 0 <= shard <= MAX_SHARD_ID:
        raise InvalidArgument(f"oxia: shard id {shard} is out of range (0 .. 2^63-1)")
    ns_status = status.namespaces.get(namespace)
    if ns_status is None or shard not in ns_status.shards:
        raise NotFound(f"oxia: shard {shard} not found in namespace {namespace!r}")
    r = ns_status.shards[shard].int32_hash_range
    if r.max <= r.min:
        raise InvalidArgument(
            f"oxia: shard {shard}'s hash range [{r.min}, {r.max}] is too small to split"
        )
    if split_point is not None and not r.min <= split_point < r.max:
        raise InvalidArgument(
            f"oxia: split point {split_point} is outside shard {shard}'s hash range "
            f"[{r.min}, {r.max}]: it must be at least {r.min} and below {r.max} (the left "
            "child keeps [min, point], the right one [point+1, max])"
        )


def rewrite_identities(
    status: metadata_pb2.ClusterStatus, before: ServerAddress, after: ServerAddress
) -> None:
    """Every shard's record of the server (leader, ensemble, removed and pending-delete
    members) with its new public address, so the assignments send clients there."""

    def fix(idents: Iterable[metadata_pb2.DataServerIdentity]) -> None:
        for i in idents:
            if i.internal == before.internal:
                i.public = after.public
                i.internal = after.internal

    for ns in status.namespaces.values():
        for meta in ns.shards.values():
            if meta.HasField("leader"):
                fix([meta.leader])
            fix(meta.ensemble)
            fix(meta.removed_nodes)
            fix(meta.pending_delete_shard_nodes)
