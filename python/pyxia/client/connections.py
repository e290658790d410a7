"""One gRPC channel per server address (TLS when configured), and the Oxia client RPCs on it;
with a token source every call carries the ``authorization`` metadata."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from pyxia.proto import client_pb2 as pb
from pyxia.security.tls import ClientTls
from pyxia.security.tokens import TokenSource
from pyxia.test_hooks import dial

log = logging.getLogger("pyxia.client")

SERVICE = "/io.oxia.proto.v1.OxiaClient/"
COMPAT_SERVICE = "/io.streamnative.oxia.proto.OxiaClient/"
"""The same service under the package name of Oxia before 0.12: the only one older servers
serve (newer ones serve both)."""


def _ser(msg: Any) -> bytes:
    out: bytes = msg.SerializeToString()
    return out


class WithToken:
    """A multi-callable whose calls carry the token source's current ``authorization``
    metadata (after any metadata the caller gives)."""

    __slots__ = ("_call", "_tokens")

    def __init__(self, call: Any, tokens: TokenSource) -> None:
        self._call = call
        self._tokens = tokens

    def __call__(self, *args: Any, metadata: Any = None, **kw: Any) -> Any:
        md = self._tokens.metadata()
        if metadata:
            md = (*metadata, *md)
        return self._call(*args, metadata=md, **kw)


class Stub:
    """The multi-callables of the client service on one channel (created once)."""

    __slots__ = (
        "address",
        "channel",
        "close_session",
        "create_session",
        "get_notifications",
        "get_sequence_updates",
        "get_shard_assignments",
        "keep_alive",
        "list",
        "range_scan",
        "read",
        "write_stream",
    )

    def __init__(
        self,
        address: str,
        channel: grpc.aio.Channel,
        service: str = SERVICE,
        tokens: TokenSource | None = None,
    ) -> None:
        self.address = address
        self.channel = channel
        ch: Any = channel if tokens is None else _TokenChannel(channel, tokens)
        self.get_shard_assignments = ch.unary_stream(
            service + "GetShardAssignments", _ser, pb.ShardAssignments.FromString
        )
        self.write_stream = ch.stream_stream(
            service + "WriteStream", _ser, pb.WriteResponse.FromString
        )
        self.read = ch.unary_stream(service + "Read", _ser, pb.ReadResponse.FromString)
        self.list = ch.unary_stream(service + "List", _ser, pb.ListResponse.FromString)
        self.range_scan = ch.unary_stream(
            service + "RangeScan", _ser, pb.RangeScanResponse.FromString
        )
        self.get_sequence_updates = ch.unary_stream(
            service + "GetSequenceUpdates", _ser, pb.GetSequenceUpdatesResponse.FromString
        )
        self.get_notifications = ch.unary_stream(
            service + "GetNotifications", _ser, pb.NotificationBatch.FromString
        )
        self.create_session = ch.unary_unary(
            service + "CreateSession", _ser, pb.CreateSessionResponse.FromString
        )
        self.keep_alive = ch.unary_unary(
            service + "KeepAlive", _ser, pb.KeepAliveResponse.FromString
        )
        self.close_session = ch.unary_unary(
            service + "CloseSession", _ser, pb.CloseSessionResponse.FromString
        )


class _TokenChannel:
    """A channel whose multi-callables add the token (only the four factories are used)."""

    def __init__(self, channel: Any, tokens: TokenSource) -> None:
        self._channel = channel
        self._tokens = tokens

    def unary_unary(self, *a: Any) -> WithToken:
        return WithToken(self._channel.unary_unary(*a), self._tokens)

    def unary_stream(self, *a: Any) -> WithToken:
        return WithToken(self._channel.unary_stream(*a), self._tokens)

    def stream_stream(self, *a: Any) -> WithToken:
        return WithToken(self._channel.stream_stream(*a), self._tokens)


MAX_RECONNECT_BACKOFF_MS = 250
"""The longest wait of a channel between connection attempts."""


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Reconnect fast after a server restart, and to a server that starts after its client
        # (gRPC's default starts at 1 s and grows to 2 min): a connection attempt to a down
        # server is one refused SYN, so at most 250 ms between them.
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]


class Connections:
    """Channels by address; must be used from the client's event loop."""

    def __init__(
        self,
        max_message_bytes: int,
        tls: ClientTls | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        self._options = channel_options(max_message_bytes)
        self.tls = tls
        self.tokens = tokens
        self._stubs: dict[str, Stub] = {}
        self._closed = False
        self.service = SERVICE

    def stub(self, address: str) -> Stub:
        s = self._stubs.get(address)
        if s is None:
            if self._closed:
                raise RuntimeError("connections are closed")
            target = dial(address)
            if self.tls is not None:
                channel = self.tls.secure_channel(target, self._options)
            else:
                channel = grpc.aio.insecure_channel(target, options=self._options)
            s = Stub(address, channel, self.service, self.tokens)
            self._stubs[address] = s
        return s

    def use_compat_service(self) -> bool:
        """Switches every stub to the pre-0.12 service name (a server answered UNIMPLEMENTED
        for the current one). Returns False if already switched."""
        if self.service == COMPAT_SERVICE:
            return False
        self.service = COMPAT_SERVICE
        for address, s in list(self._stubs.items()):
            self._stubs[address] = Stub(address, s.channel, COMPAT_SERVICE, self.tokens)
        log.info("the server does not serve %s: using %s", SERVICE, COMPAT_SERVICE)
        return True

    def token_generation(self) -> int:
        """Changes whenever the token does (0 without a token)."""
        t = self.tokens
        if t is None:
            return 0
        t.metadata()
        return t.generation

    async def close(self) -> None:
        self._closed = True
        stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            await s.channel.close(grace=None)
