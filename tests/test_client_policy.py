"""The client's pure decisions: batch composition, backoff, retry classes, merging shards in
key order, picking a fan-out get's answer, error translation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pyxia.client.batcher import MIN_SHARE, Batcher
from pyxia.client.core import GetFanIn
from pyxia.client.errors import KeyNotFound, RequestIndeterminate, Unavailable, UnexpectedVersion
from pyxia.client.ops import status_error
from pyxia.client.policy import (
    DELETE,
    DELETE_RANGE,
    NOT_READY_RETRY_MAX_S,
    PUT,
    Backoff,
    Retry,
    can_join,
    classify,
    leader_hint,
)
from pyxia.client.results import ComparisonType, GetResult, Version
from pyxia.client.shard_map import KeyOrder
from pyxia.client.streams import merge_sorted
from pyxia.common.keys import HIERARCHICAL
from pyxia.errors import InvalidArgument, NodeIsNotLeader, NotInitialized, SessionNotFound
from pyxia.proto import client_pb2


@given(st.lists(st.sampled_from([PUT, DELETE, DELETE_RANGE]), max_size=30))
def test_batches_keep_the_apply_order(kinds: list[int]) -> None:
    """Cutting a sequence of operations into batches with ``can_join`` and applying each batch
    as a WriteRequest does (puts, deletes, range deletes) gives the submission order."""
    batches: list[list[tuple[int, int]]] = []
    phase = -1
    for i, k in enumerate(kinds):
        if not batches or not can_join(phase, k):
            batches.append([])
        batches[-1].append((k, i))
        phase = k
    applied = [i for b in batches for _, i in sorted(b, key=lambda x: x[0])]
    assert applied == list(range(len(kinds)))


def test_backoff_grows_and_is_bounded() -> None:
    b = Backoff(0.02, 1.0)
    assert b.delay(0, 0.0) == 0.01 and b.delay(0, 0.999) < 0.02
    assert b.delay(3, 0.999) <= 0.16
    assert b.delay(50, 0.999) <= 1.0
    assert b.delay(50, 0.0) == 0.5


def test_a_server_not_ready_yet_is_asked_again_soon() -> None:
    b = Backoff(0.02, 1.0)
    not_ready = NotInitialized("oxia: server not initialized yet")
    assert b.after(not_ready, 50, 0.999) <= NOT_READY_RETRY_MAX_S
    assert b.after(not_ready, 0, 0.5) == b.delay(0, 0.5)  # never longer than the backoff
    assert b.after(Unavailable("down"), 50, 0.0) == b.delay(50, 0.0) == 0.5


def test_channels_reconnect_within_a_quarter_second() -> None:
    """A server that starts after its client (or restarts) is tried again at most 250 ms
    later; gRPC's default backoff grows to 2 minutes."""
    from pyxia.client.connections import MAX_RECONNECT_BACKOFF_MS, channel_options

    opts = dict(channel_options(1 << 20))
    assert opts["grpc.max_reconnect_backoff_ms"] == MAX_RECONNECT_BACKOFF_MS <= 250
    assert opts["grpc.initial_reconnect_backoff_ms"] <= opts["grpc.max_reconnect_backoff_ms"]


def test_retry_classes() -> None:
    assert classify(NodeIsNotLeader(leader_hint="h:1")) is Retry.ALWAYS
    assert leader_hint(NodeIsNotLeader(leader_hint="h:1")) == "h:1"
    assert classify(Unavailable()) is Retry.IF_SAFE
    assert classify(InvalidArgument()) is Retry.NEVER
    assert classify(RequestIndeterminate()) is Retry.NEVER


def test_per_op_statuses() -> None:
    assert isinstance(status_error(client_pb2.KEY_NOT_FOUND, "k"), KeyNotFound)
    assert isinstance(status_error(client_pb2.UNEXPECTED_VERSION_ID, "k"), UnexpectedVersion)
    assert isinstance(status_error(client_pb2.SESSION_DOES_NOT_EXIST, "k"), SessionNotFound)


class _Fut:
    def __init__(self) -> None:
        self.result: Any = None
        self.exc: BaseException | None = None
        self.is_done = False

    def done(self) -> bool:
        return self.is_done

    def set_result(self, r: Any) -> None:
        self.result, self.is_done = r, True

    def set_exception(self, e: BaseException) -> None:
        self.exc, self.is_done = e, True


def _r(key: str) -> GetResult:
    return GetResult(key, b"", Version(1, 0, 0, 0))


def test_fan_in_picks_by_the_namespace_order() -> None:
    order = KeyOrder(client_pb2.KEY_SORTING_HIERARCHICAL)
    # hierarchical: "/a/z" (depth 2) sorts after "/b" (depth 1)
    for ct, want in ((ComparisonType.FLOOR, "/a/z"), (ComparisonType.CEILING, "/b")):
        t = _Fut()
        fan = GetFanIn(3, "/x", ct, order, None, t)
        fan.answer(_r("/b"))
        fan.answer(None)
        assert not t.done()
        fan.answer(_r("/a/z"))
        assert t.result.key == want
    t = _Fut()
    fan = GetFanIn(2, "/x", ComparisonType.LOWER, order, None, t)
    fan.answer(None)
    fan.answer(None)
    assert isinstance(t.exc, KeyNotFound)


@given(st.lists(st.lists(st.text("ab/", min_size=1, max_size=5), max_size=12), max_size=5))
def test_merge_sorted_matches_a_sort(shards: list[list[str]]) -> None:
    key = HIERARCHICAL.encode
    uniq: set[str] = set()
    parts = []
    for s in shards:
        own = sorted({k for k in s if k not in uniq}, key=key)
        uniq.update(own)
        parts.append(own)

    async def source(keys: list[str]) -> AsyncIterator[list[str]]:
        for i in range(0, len(keys), 3):
            yield keys[i : i + 3]

    async def run() -> list[str]:
        out: list[str] = []
        async for chunk in merge_sorted([source(p) for p in parts] or [source([])], key):
            out.extend(chunk)
        return out

    assert asyncio.run(run()) == sorted(uniq, key=key)


def test_batcher_sends_at_once_when_idle_and_batches_when_busy() -> None:
    async def run() -> list[list[int]]:
        sent: list[list[int]] = []
        busy = {"v": False}

        class Op:
            size = 1
            kind = PUT

            def __init__(self, i: int) -> None:
                self.i = i

        b = Batcher(
            asyncio.get_running_loop(),
            lambda ops: sent.append([o.i for o in ops]),
            lambda: not busy["v"],
            max_ops=4,
            max_bytes=1000,
            linger=0.05,
            ordered=True,
            window=2,
        )
        b.add(Op(0))
        await asyncio.sleep(0)
        busy["v"] = True  # the pipeline is full now: hold until room or linger
        for i in range(1, 7):
            b.add(Op(i))  # 1..4 fill a batch, 5..6 wait
        await asyncio.sleep(0)
        assert sent == [[0], [1, 2, 3, 4]]
        busy["v"] = False
        b.room_freed(7)
        await asyncio.sleep(0)
        return sent

    assert asyncio.run(run()) == [[0], [1, 2, 3, 4], [5, 6]]


class _Op:
    size = 1
    kind = PUT

    def __init__(self, i: int) -> None:
        self.i = i


def test_batcher_splits_a_returning_wave_of_callers_across_the_window() -> None:
    """64 operations outstanding, window 2: the 64 callers that come back in one iteration leave
    as two batches of 32, the first before the rest have even submitted."""

    async def run() -> list[list[int]]:
        sent: list[list[int]] = []
        inflight = {"n": 0}

        def emit(ops: list[_Op]) -> None:
            sent.append([o.i for o in ops])
            inflight["n"] += 1

        b = Batcher(
            asyncio.get_running_loop(),
            emit,
            lambda: inflight["n"] < 2,
            max_ops=1000,
            max_bytes=1 << 20,
            linger=0.05,
            ordered=True,
            window=2,
        )
        b.room_freed(64)
        for i in range(32):
            b.add(_Op(i))
        assert sent == [list(range(32))], "the first share leaves at once"
        for i in range(32, 64):
            b.add(_Op(i))
        assert sent == [list(range(32)), list(range(32, 64))]
        # The window is full: a third share waits for room (or the linger).
        for i in range(64, 96):
            b.add(_Op(i))
        await asyncio.sleep(0)
        assert len(sent) == 2
        inflight["n"] = 1
        b.room_freed(96)
        await asyncio.sleep(0)
        return sent

    sent = asyncio.run(run())
    assert sent[2] == list(range(64, 96))
    assert [i for batch in sent for i in batch] == list(range(96)), "submission order kept"


def test_batcher_keeps_few_callers_in_one_batch_per_iteration() -> None:
    """Below MIN_SHARE per batch, the callers of one iteration still share one batch."""

    async def run() -> list[list[int]]:
        sent: list[list[int]] = []
        b = Batcher(
            asyncio.get_running_loop(),
            lambda ops: sent.append([o.i for o in ops]),
            lambda: True,
            max_ops=1000,
            max_bytes=1 << 20,
            linger=0.05,
            ordered=True,
            window=2,
        )
        b.room_freed(2 * MIN_SHARE - 1)
        for i in range(2 * MIN_SHARE - 1):
            b.add(_Op(i))
        assert sent == []
        await asyncio.sleep(0)
        return sent

    assert asyncio.run(run()) == [list(range(2 * MIN_SHARE - 1))]
