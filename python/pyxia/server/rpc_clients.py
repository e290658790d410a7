"""gRPC channels from this process to other data servers (replication) and
from the coordinator to data servers, one per address, closed together."""

from __future__ import annotations

import grpc

from pyxia.server.data_server_options import grpc_client_options
from pyxia.test_hooks import dial


class ChannelPool:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    def get(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise RuntimeError("the channel pool is closed")
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(dial(address), options=grpc_client_options())
            self._channels[address] = ch
        return ch

    async def drop(self, address: str) -> None:
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()
