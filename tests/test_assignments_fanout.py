"""The data server's assignment streams (server/assignments.py): every subscribed client gets
the map again on each change, and each view is encoded once per change and shared by the
streams that send it (1,000 clients on a 10,000-shard map serialized it 1,000 times)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pyxia.proto import client_pb2
from pyxia.server.assignments import MAX_ENCODED_VIEWS, AssignmentsDispatcher


def assignments(leader: str, *, pending: bool = False) -> client_pb2.ShardAssignments:
    m = client_pb2.ShardAssignments(allowed_authorities=["a:1"])
    for i, name in enumerate(("ns1", "ns2", "ns3")):
        ns = m.namespaces[name]
        ns.assignments.add(shard=i, leader=leader)
        if pending:
            ns.pending_split_assignments.add(shard=100 + i, leader=leader)
    return m


async def first(
    d: AssignmentsDispatcher, namespace: str = "", visible: Callable[[str], bool] | None = None
) -> bytes:
    stream = d.stream(namespace, visible)
    try:
        return await anext(stream)
    finally:
        await stream.aclose()


async def test_streams_of_one_view_share_its_bytes_encoded_once_per_change() -> None:
    d = AssignmentsDispatcher()
    d.update(assignments("l1:6648", pending=True))
    streams = [d.stream("") for _ in range(50)]
    got = [await anext(s) for s in streams]
    assert all(g is got[0] for g in got)  # one encoding, shared
    assert d.encodings == 1
    decoded = client_pb2.ShardAssignments.FromString(got[0])
    assert decoded == assignments("l1:6648")  # the pending split children are not served

    # A change: every stream gets the new map, again encoded once.
    nexts = [asyncio.ensure_future(anext(s)) for s in streams]
    d.update(assignments("l2:6648"))
    after = await asyncio.gather(*nexts)
    assert all(a is after[0] for a in after)
    assert client_pb2.ShardAssignments.FromString(after[0]) == assignments("l2:6648")
    assert d.encodings == 2
    for s in streams:
        await s.aclose()


async def test_each_view_is_encoded_for_itself() -> None:
    d = AssignmentsDispatcher()
    d.update(assignments("l1:6648"))
    ns2 = client_pb2.ShardAssignments.FromString(await first(d, "ns2"))
    assert list(ns2.namespaces) == ["ns2"] and list(ns2.allowed_authorities) == ["a:1"]
    # Callers with grants see only their namespaces; the same grants share one encoding.
    some = [await first(d, "", lambda n: n != "ns1") for _ in range(3)]
    assert all(s is some[0] for s in some)
    assert sorted(client_pb2.ShardAssignments.FromString(some[0]).namespaces) == ["ns2", "ns3"]
    assert client_pb2.ShardAssignments.FromString(await first(d)) == assignments("l1:6648")
    assert d.encodings == 3


async def test_the_encoded_views_are_bounded() -> None:
    d = AssignmentsDispatcher()
    m = client_pb2.ShardAssignments()
    for i in range(MAX_ENCODED_VIEWS + 10):
        m.namespaces[f"ns{i}"].assignments.add(shard=i, leader="l:1")
    d.update(m)
    for i in range(MAX_ENCODED_VIEWS + 10):
        view = client_pb2.ShardAssignments.FromString(await first(d, f"ns{i}"))
        assert list(view.namespaces) == [f"ns{i}"]
    assert len(d._encoded) <= MAX_ENCODED_VIEWS
