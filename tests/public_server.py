"""An in-process standalone server on its own event loop thread (so blocking clients and raw
blocking gRPC calls can be used from the test thread), and raw-call helpers for the public
port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from pyxia.config import NamespaceConfig
from pyxia.node import standalone
from pyxia.security.public import PublicAuthOptions
from pyxia.security.tls import TlsOptions
from pyxia.server.data_server import ServerOptions
from pyxia.server.standalone import Standalone

T = TypeVar("T")

SERVICE = "/io.oxia.proto.v1.OxiaClient/"


class ServerThread:
    """A standalone (namespaces ``default`` with 2 shards = shards 0-1, ``other`` = shard 2,
    the TSO namespace = shard 3)."""

    def __init__(
        self,
        base: Path,
        *,
        tls: TlsOptions | None = None,
        auth: PublicAuthOptions | None = None,
        namespaces: Sequence[tuple[str, int]] = (("default", 2), ("other", 1)),
    ) -> None:
        options = ServerOptions(
            public_addr="127.0.0.1:0",
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            data_dir=base / "db",
            wal_dir=base / "wal",
            wal_sync_data=False,
            public_tls=tls,
            public_auth=auth or PublicAuthOptions(),
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        nss = [NamespaceConfig(n, s, 1) for n, s in namespaces]
        try:
            self.node = self.run(self._make(options, nss))
            self.run(self.node.start())
        except BaseException:
            self._stop_loop()
            raise
        self.address = self.node.server.public_address

    @staticmethod
    async def _make(options: ServerOptions, nss: list[NamespaceConfig]) -> Standalone:
        return standalone(options, nss)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()

    def close(self) -> None:
        try:
            self.run(self.node.close())
        finally:
            self._stop_loop()


def call(
    channel: grpc.Channel,
    method: str,
    request: bytes | Any,
    *,
    kind: str = "unary_stream",
    token: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> list[bytes]:
    """One raw call; returns the response messages (bytes). ``method`` without a leading
    slash is a method of the OxiaClient service."""
    if not method.startswith("/"):
        method = SERVICE + method
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    md = list(metadata)
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if kind == "unary_unary":
        mc: Any = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return [mc(raw, metadata=md, timeout=timeout)]
    if kind == "unary_stream":
        mc = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        return list(mc(raw, metadata=md, timeout=timeout))
    if kind == "stream_unary":
        mc = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
        return [mc(iter([raw]), metadata=md, timeout=timeout)]
    mc = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    return list(mc(iter([raw]), metadata=md, timeout=timeout))


def code_of(fn: Any) -> grpc.StatusCode:
    """The status code a call raises (AssertionError if it succeeds)."""
    try:
        fn()
    except grpc.RpcError as e:
        c: grpc.StatusCode = e.code()  # type: ignore[attr-defined]
        return c
    raise AssertionError("the call succeeded")


def error_of(fn: Any) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded")
