"""ClusterStatus <-> protojson, the readable form every provider stores
(camelCase field names, int64 as strings, as Oxia's protojson codec).

:class:`StatusEncoder` writes the same JSON as ``json.dumps(status_to_dict(status),
sort_keys=True)`` (compact separators) without converting every shard each time: each shard's
JSON is kept with the shard's serialized bytes and reused while they are unchanged. Converting
10,000 shards with ``json_format`` took about 0.15 s of every status write (holding the GIL);
a write that changes a few hundred shards now converts only those.

Invariants: ``json.loads(StatusEncoder().encode(s)) == status_to_dict(s)`` for every status
(the tests check it); an encoder's cache holds only shards of the status it last encoded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from pyxia.errors import StorageFailure
from pyxia.proto.metadata_pb2 import ClusterStatus, ShardMetadata

_COMPACT = (",", ":")


def status_to_dict(status: ClusterStatus) -> dict[str, Any]:
    return json_format.MessageToDict(status)


def status_from_dict(d: Any, where: str) -> ClusterStatus:
    try:
        return json_format.ParseDict(d, ClusterStatus(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as e:
        raise StorageFailure(f"corrupt cluster status in {where}: {e}") from e


def encode_status(status: ClusterStatus, *, indent: int | None = None) -> str:
    return json.dumps(status_to_dict(status), indent=indent, sort_keys=True)


def decode_status(text: str | bytes, where: str) -> ClusterStatus:
    try:
        d = json.loads(text)
    except ValueError as e:
        raise StorageFailure(f"corrupt cluster status in {where}: {e}") from e
    return status_from_dict(d, where)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=_COMPACT)


_Cache = dict[str, dict[int, tuple[bytes, str]]]


class StatusEncoder:
    """Compact protojson of a cluster status, each shard's JSON reused while the shard's
    record is unchanged. Thread-safe (providers encode in a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: _Cache = {}
        self.converted = 0
        """Shards converted by the last ``encode`` (the others came from the cache)."""

    def encode(self, status: ClusterStatus) -> str:
        with self._lock:
            parts: list[str] = []
            self._encode(status, parts)
            return "".join(parts)

    def _encode(self, status: ClusterStatus, out: list[str]) -> None:
        self.converted = 0
        # Everything but the shards through json_format (small), the shards from the cache.
        rest = ClusterStatus()
        rest.CopyFrom(status)
        for ns in rest.namespaces.values():
            ns.ClearField("shards")
        top = status_to_dict(rest)
        ns_dicts: dict[str, dict[str, Any]] = top.pop("namespaces", {})
        cache: _Cache = {}
        keys = sorted([*top, *(["namespaces"] if status.namespaces else [])])
        out.append("{")
        for i, key in enumerate(keys):
            out.append(("," if i else "") + _dumps(key) + ":")
            if key != "namespaces":
                out.append(_dumps(top[key]))
                continue
            out.append("{")
            for j, name in enumerate(sorted(status.namespaces)):
                out.append(("," if j else "") + _dumps(name) + ":")
                ns = status.namespaces[name]
                ns_dict = dict(ns_dicts.get(name, {}))
                if ns.shards:
                    ns_dict["shards"] = None  # a place in the key order
                out.append("{")
                for k, field in enumerate(sorted(ns_dict)):
                    out.append(("," if k else "") + _dumps(field) + ":")
                    if field == "shards":
                        cache[name] = self._shards_json(name, ns.shards, out)
                    else:
                        out.append(_dumps(ns_dict[field]))
                out.append("}")
            out.append("}")
        out.append("}")
        self._shards = cache

    def _shards_json(
        self, name: str, shards: Mapping[int, ShardMetadata], out: list[str]
    ) -> dict[int, tuple[bytes, str]]:
        """Appends the namespace's ``shards`` map (ids in ``sort_keys`` order: as strings);
        returns its cache entries."""
        old = self._shards.get(name, {})
        new: dict[int, tuple[bytes, str]] = {}
        out.append("{")
        for n, sid in enumerate(sorted(shards, key=str)):
            shard = shards[sid]
            raw = shard.SerializeToString(deterministic=True)
            hit = old.get(sid)
            if hit is not None and hit[0] == raw:
                new[sid] = hit
            else:
                hit = new[sid] = (raw, _dumps(json_format.MessageToDict(shard)))
                self.converted += 1
            out.append(f'{"," if n else ""}"{sid}":{hit[1]}')
        out.append("}")
        return new
