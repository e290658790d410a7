"""gRPC channel and server options shared by every pyxia process: the data server's ports, the
coordinator's port, and the channels a data server or the coordinator opens to data servers'
internal ports (:mod:`pyxia.common.channels`).

Invariants: both sides allow the same message size (256 MiB on internal channels; a server's
ports allow what its caller asks, 64 MiB by default); servers permit the keepalive pings the
internal channels send (every 10 s, even without calls)."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""The largest message on an internal channel (a snapshot chunk, a replication batch)."""


def grpc_client_options() -> list[tuple[str, Any]]:
    """Options of a channel to a data server's internal port."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def grpc_server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of a gRPC server (a data server's public and internal ports, the
    coordinator's port)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]
