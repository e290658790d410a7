"""How pyxia's own processes configure gRPC's C core before it loads.

gRPC ≥ 1.6x moves its I/O onto the EventEngine (experiments ``event_engine_listener``,
``event_engine_client``, ...; on by default in 1.85): a message read on an accepted connection
is handled on an event-engine thread, handed to grpc.aio's poller thread, then to the asyncio
loop — three threads and their context switches per message event, which on this kind of
machine cost more than the message itself (docs/benchmarks.md, "Read lease": about ten
context switches per message event across the threads of an RF=3 cluster). With those
experiments off, the poller thread does the socket I/O itself (gRPC's iomgr path, still
shipped and tested by gRPC), one hop fewer.

Only the ``pyxia`` command line calls :func:`configure`, for the commands that run servers
(``server``, ``standalone``, ``coordinator``; measured there): client commands (``perf``,
``client``, ``admin``) and the client library keep gRPC's defaults, and the library never
changes the gRPC settings of an application that imports it. An
operator's own ``GRPC_EXPERIMENTS`` wins (it is left as it is), and so does
``PYXIA_GRPC_EVENT_ENGINE=1``, which keeps gRPC's defaults.
"""

from __future__ import annotations

import os
import sys

LEGACY_IO_EXPERIMENTS = (
    "-event_engine_listener,-event_engine_client,-event_engine_for_all_other_endpoints,"
    "-event_engine_callback_cq"
)
"""The EventEngine experiments a pyxia process turns off."""


def configure() -> bool:
    """Sets ``GRPC_EXPERIMENTS`` for this process unless the operator chose otherwise or gRPC
    is already loaded (too late: it read its configuration). Whether it was set."""
    env = os.environ
    if (
        "grpc" in sys.modules
        or "GRPC_EXPERIMENTS" in env
        or env.get("PYXIA_GRPC_EVENT_ENGINE") == "1"
    ):
        return False
    os.environ["GRPC_EXPERIMENTS"] = LEGACY_IO_EXPERIMENTS
    return True
