"""Pieces shared by clients, data servers and the coordinator; nothing here imports the
storage, the data server, the coordinator, the TSO or the client.

- :mod:`~pyxia.common.keys` — Oxia's key formats and key orders (pure).
- :mod:`~pyxia.common.sharding` — hashing and shard ranges (pure).
- :mod:`~pyxia.common.validation` — bounds and names checked at every port (pure).
- :mod:`~pyxia.common.grpc_options` — gRPC channel and server options.
- :mod:`~pyxia.common.grpc_runtime` — gRPC's I/O settings for pyxia's own processes.
- :mod:`~pyxia.common.channels` — the pool of channels to data servers' internal ports.
- :mod:`~pyxia.common.instance_id` — the cluster's instance id header on internal calls.
- :mod:`~pyxia.common.handoff_protocol` — the wire contract of a planned leadership handoff.
- :mod:`~pyxia.common.signals` — a wake-up signal that cannot lose notifications.
- :mod:`~pyxia.common.metrics_http` — the Prometheus endpoint.
- :mod:`~pyxia.common.ports` — loopback ports for processes started by tests.
"""
