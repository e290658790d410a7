"""ClusterStatus <-> protojson, the readable form every provider stores
(camelCase field names, int64 as strings, as Oxia's protojson codec)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from pyxia.errors import StorageFailure
from pyxia.proto.metadata_pb2 import ClusterStatus


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
