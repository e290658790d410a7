"""The metadata provider contract: versioned compare-and-set of the cluster
status, and leadership among coordinators.

Invariants every provider keeps (the shared contract tests check them):

- ``get()`` returns ``(None, NOT_EXISTS)`` until something was stored.
- ``store(status, expected)`` is a compare-and-set: it writes only if the stored
  version is ``expected`` and returns the new version, which differs from every
  earlier one. On a mismatch it raises :class:`~pyxia.errors.MetadataBadVersion`
  and leaves the stored value as it was. It never retries with a re-read
  version: that could overwrite what a newer leader wrote.
- Providers with an election (raft, etcd, kubernetes) store only while the
  caller leads: after the leadership-lost signal fired, ``store`` raises
  ``MetadataBadVersion`` until ``wait_to_become_leader`` succeeds again. A
  conflict reported by the backing store fires the signal at once.
- ``wait_to_become_leader()`` blocks until this provider leads and returns its
  :class:`LeadershipLost` signal; ``None`` for memory and file, whose leadership
  cannot be lost while the process lives.
- ``close()`` is idempotent, releases leadership, fires the signal, and makes a
  pending ``wait_to_become_leader`` raise :class:`~pyxia.errors.AlreadyClosed`.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

from pyxia.errors import AlreadyClosed, MetadataBadVersion
from pyxia.proto.metadata_pb2 import ClusterStatus


@dataclass(frozen=True, slots=True)
class Version:
    """A provider's opaque version of the stored status: a counter (memory,
    file, raft), an etcd mod revision, a Kubernetes resourceVersion. Compare
    versions for equality only."""

    token: str

    def __str__(self) -> str:
        return self.token


NOT_EXISTS = Version("-1")
"""The version of a status that was never stored; pass it to create one."""


class LeadershipLost:
    """Fires exactly once, when this provider's lease or Raft leadership is
    lost (or the provider is closed). Thread-safe: a backing library's own
    thread may fire it; waiters and callbacks run on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._future: asyncio.Future[str] = self._loop.create_future()
        self._lock = threading.Lock()
        self._reason: str | None = None

    @property
    def fired(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """Why leadership was lost; ``None`` while it holds."""
        return self._reason

    def fire(self, reason: str) -> bool:
        """Signals the loss; returns False if it had already fired."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._resolve()
        else:
            try:
                self._loop.call_soon_threadsafe(self._resolve)
            except RuntimeError:  # the loop is closed: nobody is left to wake
                pass
        return True

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(self._reason or "")

    async def wait(self) -> str:
        """Returns the reason once leadership is lost."""
        return await asyncio.shield(self._future)

    def add_callback(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(reason)`` on the event loop once leadership is lost."""
        self._future.add_done_callback(lambda f: callback(f.result()))

    def __repr__(self) -> str:
        return f"LeadershipLost(reason={self._reason!r})"


class MetadataProvider(ABC):
    """Versioned compare-and-set storage of the ClusterStatus plus leadership.

    Construction does no I/O; ``start()`` (implied by the first call) acquires
    the provider's resources, ``close()`` releases them.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed(f"{self.name} metadata provider is closed")

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Acquires resources (sockets, threads, clients). Idempotent."""

    @abstractmethod
    async def get(self) -> tuple[ClusterStatus | None, Version]:
        """The stored status (None if there is none) and its version."""

    @abstractmethod
    async def store(self, status: ClusterStatus, expected_version: Version) -> Version:
        """Compare-and-set; returns the new version or raises MetadataBadVersion."""

    @abstractmethod
    async def wait_to_become_leader(self) -> LeadershipLost | None:
        """Blocks until this provider leads; returns its leadership-lost signal."""

    @abstractmethod
    async def close(self) -> None:
        """Releases leadership and resources; idempotent."""

    async def __aenter__(self) -> MetadataProvider:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def bad_version(expected: Version, actual: Version | str, where: str) -> MetadataBadVersion:
    return MetadataBadVersion(
        f"metadata bad version in {where}: expected {expected}, found {actual}"
    )


def counter_of(version: Version) -> int:
    """The integer a counter-based provider keeps for ``version``; -1 for
    NOT_EXISTS. A version that is no counter raises MetadataBadVersion."""
    try:
        return int(version.token)
    except ValueError:
        raise MetadataBadVersion(f"metadata bad version: {version} is not a counter") from None
