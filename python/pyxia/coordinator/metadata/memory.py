"""The in-process provider: tests and standalone. Always leads; nothing to lose."""

from __future__ import annotations

from pyxia.proto.metadata_pb2 import ClusterStatus

from .provider import NOT_EXISTS, LeadershipLost, MetadataProvider, Version, bad_version


class MemoryMetadataProvider(MetadataProvider):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: bytes | None = None  # serialized, so callers never alias it
        self._counter = -1

    @property
    def _version(self) -> Version:
        return NOT_EXISTS if self._counter < 0 else Version(str(self._counter))

    async def get(self) -> tuple[ClusterStatus | None, Version]:
        self._check_open()
        if self._data is None:
            return None, NOT_EXISTS
        return ClusterStatus.FromString(self._data), self._version

    async def store(self, status: ClusterStatus, expected_version: Version) -> Version:
        self._check_open()
        if expected_version != self._version:
            raise bad_version(expected_version, self._version, "memory")
        self._data = status.SerializeToString()
        self._counter += 1
        return self._version

    async def wait_to_become_leader(self) -> LeadershipLost | None:
        self._check_open()
        return None

    async def close(self) -> None:
        self._closed = True
