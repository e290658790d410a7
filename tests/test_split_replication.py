"""The data server's side of a shard split, driven by hand through the real internal RPCs on an
in-process cluster: split observers seed the children's replicas from the parent (snapshot and
log, unfiltered), a freeze drains the parent, the children are elected in their own term, cut
down to their ranges, and serve the parent's records with the parent's versions; plus the
boundary checks of the new fields and headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cluster import Cluster, Node
from pyxia.common.grpc_errors import error_from_rpc
from pyxia.common.sharding import MAX_HASH, routing_hash
from pyxia.proto import client_pb2, replication_pb2
from servers import wait_until

PARENT, LEFT, RIGHT = 0, 1, 2
MID = MAX_HASH // 2
RANGES = {PARENT: (0, MAX_HASH), LEFT: (0, MID), RIGHT: (MID + 1, MAX_HASH)}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await Cluster.start(tmp_path, 3)
    try:
        yield c
    finally:
        await c.close()


def hash_range(lo: int, hi: int) -> client_pb2.Int32HashRange:
    return client_pb2.Int32HashRange(min_hash_inclusive=lo, max_hash_inclusive=hi)


def assignments(
    leaders: dict[int, str], pending: tuple[int, ...] = ()
) -> client_pb2.ShardAssignments:
    a = client_pb2.ShardAssignments()
    nsa = a.namespaces["default"]
    nsa.shard_key_router = client_pb2.XXHASH3
    for shard, leader in sorted(leaders.items()):
        lo, hi = RANGES[shard]
        nsa.assignments.add(
            shard=shard,
            leader=leader,
            int32_hash_range=hash_range(lo, hi),
        )
    for shard in pending:
        lo, hi = RANGES[shard]
        nsa.pending_split_assignments.add(
            shard=shard,
            int32_hash_range=hash_range(lo, hi),
        )
    return a


async def push(c: Cluster, a: client_pb2.ShardAssignments) -> None:
    for node in c.nodes:
        await c.bind(node)
        call = c.channel(node.internal).stream_unary(
            "/replication.OxiaCoordination/PushShardAssignments",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=replication_pb2.CoordinationShardAssignmentsResponse.FromString,
        )
        await call(iter([a]), timeout=10, metadata=c.metadata)


async def write(
    c: Cluster, node: Node, shard: int, puts: list[client_pb2.PutRequest]
) -> client_pb2.WriteResponse:
    stub = c.channel(node.public).unary_unary(
        "/io.oxia.proto.v1.OxiaClient/Write",
        request_serializer=client_pb2.WriteRequest.SerializeToString,
        response_deserializer=client_pb2.WriteResponse.FromString,
    )
    return await stub(client_pb2.WriteRequest(shard=shard, puts=puts), timeout=10)  # type: ignore[no-any-return]


async def get(c: Cluster, node: Node, shard: int, key: str) -> client_pb2.GetResponse:
    stub = c.channel(node.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/Read",
        request_serializer=client_pb2.ReadRequest.SerializeToString,
        response_deserializer=client_pb2.ReadResponse.FromString,
    )
    req = client_pb2.ReadRequest(shard=shard, gets=[client_pb2.GetRequest(key=key)])
    async for r in stub(req, timeout=10):
        return r.gets[0]
    raise AssertionError("no answer")


async def list_keys(c: Cluster, node: Node, shard: int) -> list[str]:
    stub = c.channel(node.public).unary_stream(
        "/io.oxia.proto.v1.OxiaClient/List",
        request_serializer=client_pb2.ListRequest.SerializeToString,
        response_deserializer=client_pb2.ListResponse.FromString,
    )
    out: list[str] = []
    async for r in stub(client_pb2.ListRequest(shard=shard), timeout=10):
        out.extend(r.keys)
    return out


async def call(c: Cluster, node: Node, method: str, req: object, resp: type) -> object:
    return await c.coordination(node, method, req, resp)


async def new_term(c: Cluster, node: Node, shard: int, term: int) -> replication_pb2.EntryId:
    """NewTerm as the coordinator sends it (the map pushed here is the test's own)."""
    res = await call(
        c,
        node,
        "NewTerm",
        replication_pb2.NewTermRequest(
            namespace="default",
            shard=shard,
            term=term,
            options=replication_pb2.NewTermOptions(
                enable_notifications=True, key_sorting=replication_pb2.HIERARCHICAL
            ),
        ),
        replication_pb2.NewTermResponse,
    )
    return res.head_entry_id  # type: ignore[attr-defined,no-any-return]


async def elect(c: Cluster, shard: int, leader: Node, term: int) -> None:
    heads = {n.internal: await new_term(c, n, shard, term) for n in c.nodes}
    await call(
        c,
        leader,
        "BecomeLeader",
        replication_pb2.BecomeLeaderRequest(
            namespace="default",
            shard=shard,
            term=term,
            replication_factor=len(c.nodes),
            follower_maps={k: v for k, v in heads.items() if k != leader.internal},
        ),
        replication_pb2.BecomeLeaderResponse,
    )


async def add_observer(
    c: Cluster, leader: Node, term: int, follower: Node, child: int, **over: object
) -> None:
    lo, hi = RANGES[child]
    req = replication_pb2.AddFollowerRequest(
        namespace="default",
        shard=PARENT,
        term=term,
        follower_name=follower.internal,
        follower_head_entry_id=replication_pb2.EntryId(term=-1, offset=-1),
        observer=True,
        target_shard=child,
        split_hash_range=client_pb2.Int32HashRange(min_hash_inclusive=lo, max_hash_inclusive=hi),
    )
    for k, v in over.items():
        if v is None:
            req.ClearField(k)  # type: ignore[arg-type]
        else:
            setattr(req, k, v)
    await call(c, leader, "AddFollower", req, replication_pb2.AddFollowerResponse)


async def freeze(c: Cluster, leader: Node, term: int, frozen: bool = True) -> int:
    res = await call(
        c,
        leader,
        "FreezeShard",
        replication_pb2.FreezeShardRequest(
            namespace="default", shard=PARENT, term=term, frozen=frozen
        ),
        replication_pb2.FreezeShardResponse,
    )
    return res.head_offset  # type: ignore[attr-defined,no-any-return]


def keys_on(lo: int, hi: int, n: int, prefix: str) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        k = f"{prefix}{i}"
        if lo <= routing_hash(k) <= hi:
            out.append(k)
        i += 1
    return out


async def seed_parent(c: Cluster) -> tuple[int, dict[str, int]]:
    """Parent shard 0 led by n0 (RF=3), children 1 and 2 pending; some records on both
    sides. Returns the parent's term and the version of every record."""
    n0 = c.nodes[0]
    await push(c, assignments({PARENT: ""}, (LEFT, RIGHT)))
    term = 1
    await elect(c, PARENT, n0, term)
    versions: dict[str, int] = {}
    ks = keys_on(*RANGES[LEFT], 10, "a") + keys_on(*RANGES[RIGHT], 10, "a")
    res = await write(c, n0, PARENT, [client_pb2.PutRequest(key=k, value=b"1") for k in ks])
    for k, pr in zip(ks, res.puts, strict=True):
        versions[k] = pr.version.version_id
    return term, versions


async def observe(c: Cluster, term: int) -> None:
    """Fences every child replica at the parent's term and attaches them as observers."""
    n0 = c.nodes[0]
    for child in (LEFT, RIGHT):
        for node in c.nodes:
            await new_term(c, node, child, term)
            await add_observer(c, n0, term, node, child)


async def heads(c: Cluster, shard: int) -> list[int]:
    return [(await c.status(n, shard)).head_offset for n in c.nodes]


async def test_observers_seed_children_and_a_cutover_loses_nothing(cluster: Cluster) -> None:
    c = cluster
    n0 = c.nodes[0]
    term, versions = await seed_parent(c)
    await observe(c, term)
    # Writes go on while the children catch up (their log is the parent's).
    more = keys_on(*RANGES[LEFT], 5, "b") + keys_on(*RANGES[RIGHT], 5, "b")
    res = await write(c, n0, PARENT, [client_pb2.PutRequest(key=k, value=b"2") for k in more])
    versions.update({k: pr.version.version_id for k, pr in zip(more, res.puts, strict=True)})
    # The observers do not count towards the parent's quorum: it has its two followers.
    lc = n0.s.director.leaders[PARENT]
    assert lc.tracker is not None and set(lc.tracker.followers) == {
        c.nodes[1].internal,
        c.nodes[2].internal,
    }
    assert len(lc.observers) == 6

    frozen_head = await freeze(c, n0, term)
    assert frozen_head == lc.head_offset == lc.commit_offset
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await write(c, n0, PARENT, [client_pb2.PutRequest(key="late", value=b"x")])
    assert error_from_rpc(e.value).reason == "NODE_IS_NOT_LEADER"
    for child in (LEFT, RIGHT):
        await wait_until(
            lambda ch=child: _all_reached(c, ch, frozen_head), what=f"child {child} at the head"
        )
    # Fence the parent (the point of no return), elect the children in their own term.
    for node in c.nodes:
        await new_term(c, node, PARENT, term + 1)
    assert not n0.s.director.leaders[PARENT].observers
    leaders = {LEFT: c.nodes[1], RIGHT: c.nodes[2]}
    for child, leader in leaders.items():
        await elect(c, child, leader, term + 1)
    await push(c, assignments({LEFT: leaders[LEFT].public, RIGHT: leaders[RIGHT].public}))

    for child, leader in leaders.items():
        lo, hi = RANGES[child]
        mine = sorted(k for k in versions if lo <= routing_hash(k) <= hi)
        assert sorted(await list_keys(c, leader, child)) == mine
        for k in mine:
            g = await get(c, leader, child, k)
            assert g.status == client_pb2.OK and g.version.version_id == versions[k]
        assert leader.s.director._storages[child].split_filter is None  # cut before leading
    # The children take writes, continuing the parent's log and version counter.
    (k,) = keys_on(*RANGES[LEFT], 1, "c")
    res = await write(c, leaders[LEFT], LEFT, [client_pb2.PutRequest(key=k, value=b"3")])
    assert res.puts[0].version.version_id > max(versions.values())
    # A follower of the child cuts its copy before it applies the child's first entry (it
    # learns that entry is committed from the next one).
    await write(c, leaders[LEFT], LEFT, [client_pb2.PutRequest(key=k, value=b"4")])
    follower = c.nodes[0].s.director._storages[LEFT]
    await wait_until(lambda: follower.commit_offset > frozen_head, what="follower applied")
    assert follower.split_filter is None
    user = [
        follower.db.encoding.decode(ek)
        for ek, _ in follower.db.scan(None, follower.db.encoding.internal_region[0])
    ]
    assert sorted(user) == sorted([*(x for x in versions if routing_hash(x) <= MID), k])


async def _all_reached(c: Cluster, shard: int, offset: int) -> bool:
    return all(h >= offset for h in await heads(c, shard))


async def test_thawing_an_aborted_split_takes_writes_again(cluster: Cluster) -> None:
    c = cluster
    n0 = c.nodes[0]
    term, _ = await seed_parent(c)
    await observe(c, term)
    await freeze(c, n0, term)
    await freeze(c, n0, term, frozen=False)
    for child in (LEFT, RIGHT):
        for node in c.nodes:
            await call(
                c,
                n0,
                "RemoveObserver",
                replication_pb2.RemoveObserverRequest(
                    namespace="default",
                    shard=PARENT,
                    term=term,
                    follower_name=node.internal,
                    target_shard=child,
                ),
                replication_pb2.RemoveObserverResponse,
            )
    assert not n0.s.director.leaders[PARENT].observers
    res = await write(c, n0, PARENT, [client_pb2.PutRequest(key="after", value=b"x")])
    assert res.puts[0].status == client_pb2.OK
    # The children are dropped from the map: their replicas are deleted.
    await push(c, assignments({PARENT: n0.public}))
    for child in (LEFT, RIGHT):
        for node in c.nodes:
            await call(
                c,
                node,
                "DeleteShard",
                replication_pb2.DeleteShardRequest(namespace="default", shard=child, term=term),
                replication_pb2.DeleteShardResponse,
            )
            assert child not in node.s.director._storages


async def test_clients_never_see_pending_children(cluster: Cluster) -> None:
    c = cluster
    await push(c, assignments({PARENT: c.nodes[0].public}, (LEFT, RIGHT)))
    d = c.nodes[1].s.assignments
    assert d.knows("default", LEFT) and d.is_pending_split("default", LEFT)
    assert not d.is_pending_split("default", PARENT)
    served = d.served
    assert served is not None
    nsa = served.namespaces["default"]
    assert [a.shard for a in nsa.assignments] == [PARENT]
    assert not nsa.pending_split_assignments


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"target_shard": None}, "needs target_shard"),
        ({"split_hash_range": None}, "needs target_shard"),
        ({"target_shard": PARENT}, "another shard"),
        (
            {
                "split_hash_range": client_pb2.Int32HashRange(
                    min_hash_inclusive=9, max_hash_inclusive=3
                )
            },
            "invalid split range",
        ),
        ({"target_shard": -4}, "target shard"),
    ],
)
async def test_observer_fields_are_checked(
    cluster: Cluster, over: dict[str, object], message: str
) -> None:
    c = cluster
    term, _ = await seed_parent(c)
    req_over = dict(over)
    rng = req_over.pop("split_hash_range", None)
    if rng is not None:
        attempt = _add_observer_with_range(c, term, rng, **req_over)
    else:
        if "split_hash_range" in over:
            req_over["split_hash_range"] = None
        attempt = add_observer(c, c.nodes[0], term, c.nodes[1], LEFT, **req_over)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await attempt
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (e.value.details() or "")


async def _add_observer_with_range(c: Cluster, term: int, rng: object, **over: object) -> None:
    req = replication_pb2.AddFollowerRequest(
        namespace="default",
        shard=PARENT,
        term=term,
        follower_name=c.nodes[1].internal,
        follower_head_entry_id=replication_pb2.EntryId(term=-1, offset=-1),
        observer=True,
        target_shard=LEFT,
    )
    req.split_hash_range.CopyFrom(rng)  # type: ignore[arg-type]
    await call(c, c.nodes[0], "AddFollower", req, replication_pb2.AddFollowerResponse)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ((("split-hash-range-min", "0"),), "needs both"),
        ((("split-hash-range-min", "0"), ("split-hash-range-max", "x")), "bad split"),
        ((("split-hash-range-min", "9"), ("split-hash-range-max", "3")), "invalid split range"),
        ((("split-hash-range-min", "0"), ("split-hash-range-max", "99999999999")), "bounds"),
        ((("split-hash-range-min", "0"), ("split-hash-range-max", "5")), "not the child"),
    ],
)
async def test_split_stream_headers_are_checked(
    cluster: Cluster, headers: tuple[tuple[str, str], ...], message: str
) -> None:
    c = cluster
    term, _ = await seed_parent(c)
    n1 = c.nodes[1]
    # Shard PARENT is a regular shard: no split stream may target it.
    stream = c.channel(n1.internal).stream_stream(
        "/replication.OxiaLogReplication/Replicate",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=replication_pb2.Ack.FromString,
    )(
        iter([]),
        metadata=(
            ("namespace", "default"),
            ("shard-id", str(PARENT)),
            ("term", str(term)),
            *headers,
            *c.metadata,
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stream:
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (e.value.details() or "")
    # The replica is untouched: still a plain follower of the parent.
    assert n1.s.director._storages[PARENT].split_filter is None


async def test_freeze_needs_the_current_term_and_a_leader(cluster: Cluster) -> None:
    c = cluster
    term, _ = await seed_parent(c)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await freeze(c, c.nodes[0], term + 5)
    assert error_from_rpc(e.value).reason == "INVALID_TERM"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await freeze(c, c.nodes[1], term)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION or (
        error_from_rpc(e.value).reason == "NODE_IS_NOT_MEMBER"
    )
