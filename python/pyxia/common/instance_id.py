"""The cluster's instance id on internal calls: the metadata header that carries it.

A data server is bound to one cluster by the coordinator's first Handshake (it records the id in
its data dir's manifest, :mod:`pyxia.server.manifest`); every later internal call, the
coordinator's and the server's own to its peers, carries the bound id in the ``instance-id``
header (Oxia's ``constant.MetadataInstanceId``), and a server refuses a call with another id.
"""

from __future__ import annotations

INSTANCE_ID_HEADER = "instance-id"

CallMetadata = tuple[tuple[str, str], ...]
"""The metadata a caller adds to its internal calls (the instance-id header, or nothing while
unbound)."""

__all__ = ["INSTANCE_ID_HEADER", "CallMetadata"]
