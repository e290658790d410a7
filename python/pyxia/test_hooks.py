"""Opt-in test hooks shared by servers, coordinator and client.

Dial map: ``PYXIA_DIAL_MAP="dest=proxy[,dest=proxy...]"`` makes this process dial ``proxy``
whenever it would dial ``dest`` (the gRPC channels of replication, of the coordinator and of
the client). The robustness suite gives each process its own map, so every (source,
destination) link goes through its own TCP proxy, which can partition, delay or cut it. Unset
(the normal case), :func:`dial` returns the address unchanged.
"""

from __future__ import annotations

import os

DIAL_MAP_ENV = "PYXIA_DIAL_MAP"


def parse_dial_map(spec: str) -> dict[str, str]:
    """``"a=b,c=d"`` as ``{"a": "b", "c": "d"}``; raises ValueError on a bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        dest, sep, via = item.partition("=")
        if not sep or not dest.strip() or not via.strip():
            raise ValueError(f"bad {DIAL_MAP_ENV} item {item!r}: use dest=proxy")
        out[dest.strip()] = via.strip()
    return out


def format_dial_map(m: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in m.items())


_dial_map: dict[str, str] = parse_dial_map(os.environ.get(DIAL_MAP_ENV, ""))


def set_dial_map(m: dict[str, str]) -> None:
    """Replaces this process's dial map (channels created from now on use it)."""
    global _dial_map
    _dial_map = dict(m)


def dial(address: str) -> str:
    """The address to connect to in order to reach ``address``."""
    return _dial_map.get(address, address) if _dial_map else address
