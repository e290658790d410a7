"""``pyxia.Client``: the synchronous face. The same core as ``AsyncClient``, driven by an
event loop on a background thread; any number of threads may call it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from pyxia.client.async_client import make_options
from pyxia.client.core import ClientCore, SecondaryIndexes
from pyxia.client.errors import ClientClosed
from pyxia.client.options import ClientOptions
from pyxia.client.results import (
    ComparisonType,
    GetResult,
    NotificationBatch,
    PutResult,
    SessionEvent,
)
from pyxia.client.streams import NotificationsFeed, SequenceUpdatesFeed
from pyxia.client.waiter import Waiter

T = TypeVar("T")


class _SyncIterator(Generic[T]):
    """Iterates an async iterator of chunks living on the client's loop, a chunk at a time."""

    def __init__(self, client: Client, chunks: Any) -> None:
        self._client = client
        self._chunks = chunks
        self._buf: list[T] = []
        self._i = 0
        self._done = False

    def __iter__(self) -> _SyncIterator[T]:
        return self

    def __next__(self) -> T:
        while self._i >= len(self._buf):
            if self._done:
                raise StopIteration
            try:
                self._buf = self._client._call(self._chunks.__anext__())
            except StopAsyncIteration:
                self._done = True
                raise StopIteration from None
            self._i = 0
        item = self._buf[self._i]
        self._i += 1
        return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._client._call(self._chunks.aclose())

    def __enter__(self) -> _SyncIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncNotifications:
    """Iterator of :class:`NotificationBatch` (see ``AsyncClient.get_notifications``)."""

    def __init__(self, client: Client, feed: NotificationsFeed) -> None:
        self._client = client
        self._feed = feed

    @property
    def position(self) -> dict[int, int]:
        return self._client._call(_copy(self._feed.position))

    def wait_connected(self, timeout: float | None = None) -> None:
        self._client._call(asyncio.wait_for(self._feed.wait_connected(), timeout))

    def __iter__(self) -> SyncNotifications:
        return self

    def __next__(self) -> NotificationBatch:
        try:
            return self._client._call(self._feed.next())
        except (ClientClosed, StopAsyncIteration):
            raise StopIteration from None

    def get(self, timeout: float | None = None) -> NotificationBatch | None:
        """The next batch, or None if none comes within ``timeout`` seconds."""
        try:
            return self._client._call(asyncio.wait_for(self._feed.next(), timeout))
        except TimeoutError:
            return None

    def close(self) -> None:
        if not self._client._loop.is_closed():
            self._client._call(self._feed.close())
            self._client._loop.call_soon_threadsafe(self._client._core.forget_feed, self._feed)

    def __enter__(self) -> SyncNotifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncSequenceUpdates:
    def __init__(self, client: Client, feed: SequenceUpdatesFeed) -> None:
        self._client = client
        self._feed = feed

    def __iter__(self) -> SyncSequenceUpdates:
        return self

    def __next__(self) -> str:
        try:
            return self._client._call(self._feed.next())
        except (ClientClosed, StopAsyncIteration):
            raise StopIteration from None

    def get(self, timeout: float | None = None) -> str | None:
        try:
            return self._client._call(asyncio.wait_for(self._feed.next(), timeout))
        except TimeoutError:
            return None

    def close(self) -> None:
        if not self._client._loop.is_closed():
            self._client._call(self._feed.close())
            self._client._loop.call_soon_threadsafe(self._client._core.forget_feed, self._feed)

    def __enter__(self) -> SyncSequenceUpdates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _copy(d: dict[int, int]) -> dict[int, int]:
    return dict(d)


class Client:
    """An Oxia client for threads. Same methods as :class:`AsyncClient`, blocking; iterators
    instead of async iterators. ``with Client("localhost:6648") as client: ...``"""

    def __init__(
        self,
        service_address: str | Sequence[str] = "localhost:6648",
        *,
        options: ClientOptions | None = None,
        **kw: Any,
    ) -> None:
        self.options = make_options(service_address, options, kw)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="pyxia-client", daemon=True)
        self._thread.start()
        self._core = ClientCore(self.options, self._loop)
        self._wait = self.options.request_timeout_s + 10.0
        self._closed = False
        try:
            self._call(self._core.start())
        except BaseException:
            self.close()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(_await(coro), self._loop)
        return fut.result(timeout)

    def close(self) -> None:
        """Sends and waits for pending operations, closes sessions and streams, stops the
        loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _shutdown(self) -> None:
        await self._core.close()
        # Let gRPC deliver the completions of the cancelled calls, then end what is left.
        await asyncio.sleep(0.05)
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: bytes | str,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
        ephemeral: bool = False,
        sequence_key_deltas: Sequence[int] | None = None,
        secondary_indexes: SecondaryIndexes | None = None,
    ) -> PutResult:
        """See :meth:`AsyncClient.put`."""
        w = Waiter()
        if (
            expected_version_id is None
            and partition_key is None
            and not ephemeral
            and sequence_key_deltas is None
            and secondary_indexes is None
        ):
            self._loop.call_soon_threadsafe(
                self._core.submit_write,
                self._core.plain_put_op(key, value, w),  # type: ignore[arg-type]
            )
            done: PutResult = w.wait(self._wait)
            return done
        op = self._core.put_op(
            key,
            value,
            w,
            expected_version_id=expected_version_id,
            partition_key=partition_key,
            sequence_key_deltas=sequence_key_deltas,
            secondary_indexes=secondary_indexes,
        )
        if ephemeral:
            self._call(self._core.put_ephemeral(op))
            result: PutResult = w.wait(self._wait)
            return result
        self._loop.call_soon_threadsafe(self._core.submit_write, op)
        out: PutResult = w.wait(self._wait)
        return out

    def delete(
        self,
        key: str,
        *,
        expected_version_id: int | None = None,
        partition_key: str | None = None,
    ) -> bool:
        w = Waiter()
        op = self._core.delete_op(
            key, w, expected_version_id=expected_version_id, partition_key=partition_key
        )
        self._loop.call_soon_threadsafe(self._core.submit_write, op)
        out: bool = w.wait(self._wait)
        return out

    def delete_range(
        self, start_inclusive: str, end_exclusive: str, *, partition_key: str | None = None
    ) -> None:
        waiters: list[Waiter] = []

        def target() -> Waiter:
            w = Waiter()
            waiters.append(w)
            return w

        ops = self._core.delete_range_ops(start_inclusive, end_exclusive, target, partition_key)
        self._loop.call_soon_threadsafe(self._core.submit_writes, ops)
        for w in waiters:
            w.wait(self._wait)

    # -- reads ------------------------------------------------------------------------------------

    def get(
        self,
        key: str,
        *,
        comparison: ComparisonType = ComparisonType.EQUAL,
        include_value: bool = True,
        partition_key: str | None = None,
        use_index: str | None = None,
    ) -> GetResult:
        w = Waiter()
        ops = self._core.get_ops(
            key,
            w,
            comparison=comparison,
            include_value=include_value,
            partition_key=partition_key,
            use_index=use_index,
        )
        if len(ops) == 1:
            self._loop.call_soon_threadsafe(self._core.submit_read, ops[0])
        else:
            self._loop.call_soon_threadsafe(self._core.submit_reads, ops)
        out: GetResult = w.wait(self._wait)
        return out

    def list(
        self,
        start_inclusive: str,
        end_exclusive: str,
        *,
        partition_key: str | None = None,
        use_index: str | None = None,
        include_internal_keys: bool = False,
    ) -> list[str]:
        with self._scan(
            False, start_inclusive, end_exclusive, partition_key, use_index, include_internal_keys
        ) as it:
            return [k for k in it]

    def range_scan(
        self,
        start_inclusive: str,
        end_exclusive: str,
        *,
        partition_key: str | None = None,
        use_index: str | None = None,
        include_internal_keys: bool = False,
    ) -> _SyncIterator[GetResult]:
        """An iterator of records in key order (close it, or exhaust it)."""
        return self._scan(
            True, start_inclusive, end_exclusive, partition_key, use_index, include_internal_keys
        )

    def _scan(
        self,
        records: bool,
        start: str,
        end: str,
        partition_key: str | None,
        use_index: str | None,
        include_internal_keys: bool,
    ) -> _SyncIterator[Any]:
        async def make() -> Any:
            return self._core.scan(
                records,
                start,
                end,
                partition_key=partition_key,
                use_index=use_index,
                include_internal_keys=include_internal_keys,
            )

        return _SyncIterator(self, self._call(make()))

    # -- streams of changes -----------------------------------------------------------------------

    def get_notifications(
        self, *, start_after: Mapping[int, int] | None = None
    ) -> SyncNotifications:
        async def make() -> NotificationsFeed:
            return self._core.notifications(start_after)

        return SyncNotifications(self, self._call(make()))

    def get_sequence_updates(self, prefix: str, *, partition_key: str) -> SyncSequenceUpdates:
        async def make() -> SequenceUpdatesFeed:
            return self._core.sequence_updates(prefix, partition_key)

        return SyncSequenceUpdates(self, self._call(make()))

    # -- sessions ---------------------------------------------------------------------------------

    def add_session_listener(self, fn: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """``fn`` runs on the client's loop thread: keep it short, never block in it."""
        return self._core.sessions.add_listener(fn)

    def session_id(self, shard: int) -> int:
        return self._call(self._core.sessions.session_id(shard))

    def shard_for(self, key: str, partition_key: str | None = None) -> int:
        m = self._core.shard_map
        if m is None:
            raise ClientClosed("oxia: the client has no shard assignments")
        return m.shard_for(key, partition_key)

    @property
    def core(self) -> ClientCore:
        return self._core

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop


async def _await(aw: Awaitable[T]) -> T:
    return await aw
