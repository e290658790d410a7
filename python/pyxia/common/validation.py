"""Rules for the fields that cross a trust boundary: names that become paths, numbers that
become terms or offsets, addresses that become dial targets, assignment maps clients route by.

Pure: no I/O, no clock. Each ``check_*`` returns its (unchanged) argument or raises
:class:`pyxia.errors.InvalidArgument` whose message names the field and the rule; the
internal port answers that as INVALID_ARGUMENT, the config loader turns it into a
``ConfigError``. ``is_*`` are the boolean forms.

The bounds, and why:

- **namespace**: Oxia's rule (``common/validation/namespace.go``:
  ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``, no ``..``, no ``/`` or ``\\``) plus at most
  :data:`MAX_NAMESPACE_LEN` (128) characters, so ``<dir>/<namespace>/shard-<id>`` is always
  one fresh path component under the data and WAL directories (Linux allows 255 bytes a
  component). The names of the files pyxia keeps at the top of ``--data-dir`` and
  ``--wal-dir`` (:data:`RESERVED_NAMESPACE_NAMES`: ``pyxia.lock``, ``MANIFEST.json``, ...)
  are refused too, in any letter case.
- **shard id**: ``0 <= id < 2^63`` (int64 on the wire; negative ids do not exist).
- **term**: ``0 <= term <= MAX_TERM = 2^62``. Every ``term + 1`` the code computes (an
  election, a standalone restart) stays far below ``2^63 - 1``, the largest term the WAL
  (i64) holds. A request above the bound is refused before it touches state; it can never
  fence a shard for good. Terms *read back* from storage may be larger (written before this
  bound existed): :func:`accepts_term` and :func:`standalone_term` say how a replica recovers.
- **offset**: ``-1`` (none) or more.
- **head entry id** (a replica reporting what its log holds): term and offset ``>= -1``. No
  upper bound on the term: a log written before the term bound existed may hold one above it,
  and refusing to hear it would stop the election that heals the shard. One exception:
  :data:`REBUILDING_HEAD` ``(-1, -2)``, what a replica being rebuilt after corruption reports
  to NewTerm (below an empty replica's ``(-1, -1)``, so no election picks it while another
  can lead); the coordinator hands it on to the leader in BecomeLeader and AddFollower.
- **replication factor**: ``1 ..`` :data:`MAX_REPLICATION_FACTOR` (64).
- **address** (``host:port``: follower names, leaders in assignments, config servers): a DNS
  name or IPv4 address (letters, digits, ``.``, ``-``, ``_``) or a bracketed IPv6 address,
  a port 1..65535, at most :data:`MAX_ADDRESS_LEN` (261) characters in all.
- **instance id** (the cluster identity a Handshake binds): 1..128 characters of
  ``[A-Za-z0-9._:-]`` (Oxia sends a UUID).
- **data server name** (admin API; Oxia names a server by its name, else its internal
  address): 1..:data:`MAX_ADDRESS_LEN` characters of letters, digits, ``.``, ``_``, ``:``,
  ``-``, ``[``, ``]``, starting with a letter, digit or ``[`` (so an internal address is a
  valid name). It appears in logs and metrics labels, never in a path.
- **labels** (a data server's, for anti-affinity): at most :data:`MAX_LABELS` (64); a key is
  1..:data:`MAX_LABEL_LEN` (253) characters of letters, digits, ``.``, ``_``, ``/``, ``-``
  starting and ending with a letter or digit; a value at most 253 printable characters.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Final, Protocol, TypeVar

from pyxia.dirs.names import TOP_LEVEL_FILES
from pyxia.errors import InvalidArgument
from pyxia.proto import client_pb2

__all__ = [
    "INT64_MAX",
    "MAX_ADDRESS_LEN",
    "MAX_INSTANCE_ID_LEN",
    "MAX_NAMESPACE_LEN",
    "MAX_REPLICATION_FACTOR",
    "MAX_TERM",
    "REBUILDING_HEAD",
    "RESERVED_NAMESPACE_NAMES",
    "accepts_term",
    "address_problem",
    "check_address",
    "check_data_server_name",
    "check_entry_id",
    "check_follower_map",
    "check_instance_id",
    "check_key_sorting",
    "check_labels",
    "check_namespace",
    "check_offset",
    "check_replication_factor",
    "check_shard_assignments",
    "check_shard_id",
    "check_storable_term",
    "check_term",
    "is_valid_address",
    "is_valid_namespace",
    "namespace_problem",
    "standalone_term",
]

INT64_MAX: Final = 2**63 - 1
MAX_TERM: Final = 2**62
"""The largest term a request may carry (see the module docstring)."""
MAX_NAMESPACE_LEN: Final = 128
MAX_REPLICATION_FACTOR: Final = 64
MAX_HOST_LEN: Final = 253  # a DNS name; a bracketed IPv6 address is far shorter
MAX_ADDRESS_LEN: Final = MAX_HOST_LEN + 1 + 2 + 5  # host, ':', brackets, port
MAX_INSTANCE_ID_LEN: Final = 128
MAX_LABELS: Final = 64
MAX_LABEL_LEN: Final = 253
MAX_HASH: Final = 0xFFFFFFFF
REBUILDING_HEAD: Final = (-1, -2)
"""(term, offset) of the head a replica being rebuilt reports: the one head entry id whose
offset is below -1 (see the module docstring)."""
RESERVED_NAMESPACE_NAMES: Final = TOP_LEVEL_FILES
"""Files pyxia keeps at the top of ``--data-dir`` and ``--wal-dir``, next to the namespace
directories (:data:`pyxia.dirs.names.TOP_LEVEL_FILES`: the lock, the manifest, the temporary
file earlier versions wrote it through); refused as namespace names, case-insensitively."""
_RESERVED_FOLDED: Final = frozenset(n.casefold() for n in RESERVED_NAMESPACE_NAMES)

_NAMESPACE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._\-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_DATA_SERVER_NAME = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:\-\[\]]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/\-]*[A-Za-z0-9])?")
_KEY_SORTINGS: Final = frozenset({0, 1, 2})  # UNKNOWN (= hierarchical), NATURAL, HIERARCHICAL

T = TypeVar("T")


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: an error message never echoes a huge field."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


# -- names ----------------------------------------------------------------------------------------


def namespace_problem(name: object) -> str | None:
    """Why ``name`` is not a valid namespace name, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAMESPACE_LEN:
        return f"is longer than {MAX_NAMESPACE_LEN} characters"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if not _NAMESPACE.fullmatch(name):
        return "must start with a letter or digit and hold only letters, digits, '_', '.', '-'"
    if name.casefold() in _RESERVED_FOLDED:
        return "is the name of a file the data server keeps in its data directory"
    return None


def is_valid_namespace(name: object) -> bool:
    return namespace_problem(name) is None


def check_namespace(name: str, what: str = "namespace") -> str:
    problem = namespace_problem(name)
    if problem is not None:
        raise InvalidArgument(f"oxia: {what} {_shown(name)} {problem}")
    return name


def address_problem(address: object) -> str | None:
    """Why ``address`` is not a valid ``host:port``, or None."""
    if not isinstance(address, str) or not address:
        return "must be a non-empty host:port"
    if len(address) > MAX_ADDRESS_LEN:
        return f"is longer than {MAX_ADDRESS_LEN} characters"
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "must be host:port"
    if len(host) > MAX_HOST_LEN + 2 or not _HOST.fullmatch(host):
        return "has an invalid host (a DNS name, an IPv4 address or a bracketed IPv6 address)"
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return "has an invalid port (1..65535)"
    return None


def is_valid_address(address: object) -> bool:
    return address_problem(address) is None


def check_address(address: str, what: str = "address") -> str:
    problem = address_problem(address)
    if problem is not None:
        raise InvalidArgument(f"oxia: {what} {_shown(address)} {problem}")
    return address


def check_instance_id(instance_id: str) -> str:
    if (
        not isinstance(instance_id, str)
        or not 1 <= len(instance_id) <= MAX_INSTANCE_ID_LEN
        or not _INSTANCE_ID.fullmatch(instance_id)
    ):
        raise InvalidArgument(
            f"oxia: instance id {_shown(instance_id)} must be 1..{MAX_INSTANCE_ID_LEN} "
            "characters of letters, digits, '.', '_', ':', '-'"
        )
    return instance_id


def check_data_server_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_ADDRESS_LEN
        or not _DATA_SERVER_NAME.fullmatch(name)
    ):
        raise InvalidArgument(
            f"oxia: data server name {_shown(name)} must be 1..{MAX_ADDRESS_LEN} characters of "
            "letters, digits, '.', '_', ':', '-', '[', ']' starting with a letter, digit or '['"
        )
    return name


def check_labels(labels: Mapping[str, str], what: str = "labels") -> Mapping[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"oxia: {what}: {len(labels)} labels, at most {MAX_LABELS}")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_LEN or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"oxia: {what}: label key {_shown(key)} must be 1..{MAX_LABEL_LEN} characters "
                "of letters, digits, '.', '_', '/', '-' starting and ending with a letter or digit"
            )
        if len(value) > MAX_LABEL_LEN or not value.isprintable():
            raise InvalidArgument(
                f"oxia: {what}: the value of label {key!r} must be at most {MAX_LABEL_LEN} "
                "printable characters"
            )
    return labels


# -- numbers --------------------------------------------------------------------------------------


def _integer(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"oxia: {what} must be an integer, got {_shown(value)}")
    return value


def check_shard_id(shard: int, what: str = "shard") -> int:
    if not 0 <= _integer(shard, what) <= INT64_MAX:
        raise InvalidArgument(f"oxia: {what} id {shard} is out of range (0 .. 2^63-1)")
    return shard


def check_term(term: int, what: str = "term") -> int:
    if not 0 <= _integer(term, what) <= MAX_TERM:
        raise InvalidArgument(
            f"oxia: {what} {term} is out of range (0 .. {MAX_TERM}, the largest term pyxia "
            "accepts: every term + 1 must stay far from overflowing)"
        )
    return term


def check_storable_term(term: int) -> int:
    """``0 .. 2^63-1``: what the WAL (i64) holds. The controllers' last line of defence
    (requests are held to :data:`MAX_TERM` at the boundary; a standalone re-basing a forged
    term may re-lead at a term above it, never above this)."""
    if not 0 <= _integer(term, "term") <= INT64_MAX:
        raise InvalidArgument(f"oxia: term {term} is out of range (0 .. 2^63-1)")
    return term


def check_offset(offset: int, what: str = "offset") -> int:
    if not -1 <= _integer(offset, what) <= INT64_MAX:
        raise InvalidArgument(f"oxia: {what} {offset} is out of range (-1 .. 2^63-1)")
    return offset


class EntryIdLike(Protocol):
    @property
    def term(self) -> int: ...
    @property
    def offset(self) -> int: ...


def check_entry_id(entry: EntryIdLike, what: str = "head entry id") -> EntryIdLike:
    if not -1 <= _integer(entry.term, what) <= INT64_MAX:
        raise InvalidArgument(f"oxia: {what} has term {entry.term}, out of range")
    if (entry.term, entry.offset) == REBUILDING_HEAD:
        return entry
    check_offset(entry.offset, f"{what} offset")
    return entry


def check_replication_factor(rf: int) -> int:
    if not 1 <= _integer(rf, "replication factor") <= MAX_REPLICATION_FACTOR:
        raise InvalidArgument(
            f"oxia: replication factor {rf} is out of range (1 .. {MAX_REPLICATION_FACTOR})"
        )
    return rf


def check_follower_map(followers: Mapping[str, T], replication_factor: int) -> Mapping[str, T]:
    """A BecomeLeader's followers: addresses, each with a head entry id; at most RF - 1."""
    if len(followers) > replication_factor - 1:
        raise InvalidArgument(
            f"oxia: {len(followers)} followers for a replication factor of {replication_factor}"
        )
    for name, head in followers.items():
        check_address(name, "follower")
        check_entry_id(head, f"head entry id of follower {name}")  # type: ignore[arg-type]
    return followers


def check_key_sorting(value: int) -> int:
    if value not in _KEY_SORTINGS:
        raise InvalidArgument(f"oxia: unknown key sorting {_shown(value)}")
    return value


# -- assignments ----------------------------------------------------------------------------------


def check_hash_range(lo: int, hi: int, what: str = "hash range") -> tuple[int, int]:
    """An inclusive key-hash range: ``0 <= lo <= hi <= 2^32-1``."""
    if not 0 <= lo <= hi <= MAX_HASH:
        raise InvalidArgument(f"oxia: invalid {what} {lo}..{hi}")
    return lo, hi


def check_shard_assignments(a: client_pb2.ShardAssignments) -> None:
    """A pushed assignment map: valid namespace names, shard ids unique across the map,
    leaders empty (none elected yet) or ``host:port``, leader terms in range, hash ranges
    within ``0..2^32-1`` with ``min <= max`` and no overlap inside a namespace, known key
    sortings, and allowed authorities that are addresses."""
    seen: dict[int, str] = {}
    for ns_name, nsa in a.namespaces.items():
        check_namespace(ns_name)
        check_key_sorting(nsa.key_sorting)
        ranges: list[tuple[int, int, int]] = []
        for sa in nsa.assignments:
            check_shard_id(sa.shard)
            if sa.shard in seen:
                raise InvalidArgument(
                    f"oxia: shard {sa.shard} is assigned twice (namespaces {seen[sa.shard]!r} "
                    f"and {ns_name!r})"
                )
            seen[sa.shard] = ns_name
            if sa.leader:
                check_address(sa.leader, f"leader of shard {sa.shard}")
            check_term(sa.leader_term, f"leader term of shard {sa.shard}")
            r = sa.int32_hash_range
            lo, hi = r.min_hash_inclusive, r.max_hash_inclusive
            if not 0 <= lo <= hi <= MAX_HASH:
                raise InvalidArgument(
                    f"oxia: shard {sa.shard} has an invalid hash range {lo}..{hi}"
                )
            ranges.append((lo, hi, sa.shard))
        ranges.sort()
        for (_, hi, s1), (lo, _, s2) in itertools.pairwise(ranges):
            if lo <= hi:
                raise InvalidArgument(
                    f"oxia: shards {s1} and {s2} of namespace {ns_name!r} have overlapping "
                    "hash ranges"
                )
        # Children of a split in progress (pyxia's extension): they overlap their parent by
        # design, never each other, and have no leader yet.
        pending: list[tuple[int, int, int]] = []
        for sa in nsa.pending_split_assignments:
            check_shard_id(sa.shard)
            if sa.shard in seen:
                raise InvalidArgument(f"oxia: shard {sa.shard} is assigned twice")
            seen[sa.shard] = ns_name
            if sa.leader:
                raise InvalidArgument(
                    f"oxia: pending split shard {sa.shard} cannot have a leader yet"
                )
            r = sa.int32_hash_range
            lo, hi = r.min_hash_inclusive, r.max_hash_inclusive
            if not 0 <= lo <= hi <= MAX_HASH:
                raise InvalidArgument(
                    f"oxia: shard {sa.shard} has an invalid hash range {lo}..{hi}"
                )
            pending.append((lo, hi, sa.shard))
        pending.sort()
        for (_, hi, s1), (lo, _, s2) in itertools.pairwise(pending):
            if lo <= hi:
                raise InvalidArgument(
                    f"oxia: pending split shards {s1} and {s2} of namespace {ns_name!r} have "
                    "overlapping hash ranges"
                )
    for authority in a.allowed_authorities:
        check_address(authority, "allowed authority")


# -- terms read back from storage -----------------------------------------------------------------


def accepts_term(requested: int, current: int, head_term: int) -> bool:
    """Whether a replica at term ``current``, whose log's last entry has term ``head_term``
    (-1: empty), may move to ``requested`` (already checked ``<= MAX_TERM``).

    A term never goes back — except a ``current`` at or above :data:`MAX_TERM`: no valid
    request could have set one above it (it was forged before the bound existed), and a
    replica there could never move forward again. Such a replica accepts a term that is not
    older than anything in its log: the stored term was the only thing wrong, and the
    coordinator's term is where the healthy replicas are. A replica whose *log* holds
    entries above ``requested`` keeps refusing (its data would outrank the new leader's)."""
    if requested >= current:
        return True
    return current >= MAX_TERM and head_term <= requested


def standalone_term(current: int, head_term: int) -> int:
    """The term a standalone server (the only replica of its shards, and their coordinator)
    leads a shard in after a restart: ``current + 1``; or, when that would pass
    :data:`MAX_TERM` (a term forged before the bound existed), the smallest safe term: one
    more than the last entry's term in the log, or that term itself if it is already at or
    above the bound (re-leading in the same term is safe for a sole replica: nothing else
    holds entries of that term). The result is never above ``2^63 - 1`` (the WAL's i64)."""
    if current < MAX_TERM:
        return max(current, -1) + 1
    if head_term < MAX_TERM:
        return max(head_term, -1) + 1
    return min(head_term, INT64_MAX)
