"""The cluster status's JSON encoder (coordinator/metadata/codec.py): the text is exactly
``json.dumps(status_to_dict(status), sort_keys=True)`` (compact), so every provider reads it as
before, and only the shards that changed since the previous encode are converted."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.coordinator.metadata.codec import StatusEncoder, decode_status, status_to_dict
from pyxia.proto import metadata_pb2

COMPACT = (",", ":")


def reference(status: metadata_pb2.ClusterStatus) -> str:
    return json.dumps(status_to_dict(status), sort_keys=True, separators=COMPACT)


def server(i: int) -> metadata_pb2.DataServerIdentity:
    return metadata_pb2.DataServerIdentity(public=f"h{i}:6648", internal=f"h{i}:6649")


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
shard_records = st.builds(
    lambda status, term, members, leader, split: _shard(status, term, members, leader, split),
    st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 2**40),
    st.lists(st.integers(0, 30), max_size=4),
    st.booleans(),
    st.booleans(),
)


def _shard(
    status: int, term: int, members: list[int], leader: bool, split: bool
) -> metadata_pb2.ShardMetadata:
    m = metadata_pb2.ShardMetadata(status=status, term=term)  # type: ignore[arg-type]
    m.ensemble.extend(server(i) for i in members)
    if leader and members:
        m.leader.CopyFrom(server(members[0]))
    m.int32_hash_range.max = term % 2**32
    if split:
        m.split.parent_shard_id = term
        m.split.child_leaders_at_bootstrap[term + 1] = "a"
        m.split.child_leaders_at_bootstrap[term + 2] = "b"
    return m


statuses = st.builds(
    lambda nss, gen, instance, coordinator: _status(nss, gen, instance, coordinator),
    st.dictionaries(
        names,
        st.tuples(st.integers(0, 5), st.dictionaries(st.integers(0, 2**62), shard_records)),
        max_size=4,
    ),
    st.integers(0, 2**62),
    names,
    st.booleans(),
)


def _status(
    nss: dict[str, tuple[int, dict[int, metadata_pb2.ShardMetadata]]],
    gen: int,
    instance: str,
    coordinator: bool,
) -> metadata_pb2.ClusterStatus:
    s = metadata_pb2.ClusterStatus(shard_id_generator=gen, instance_id=instance)
    for name, (rf, shards) in nss.items():
        ns = s.namespaces[name]
        ns.replication_factor = rf
        for sid, record in shards.items():
            ns.shards[sid].CopyFrom(record)
    if coordinator:
        s.leader_coordinator.identity = instance
        s.admin_managed.servers.append(server(1))
    return s


@settings(max_examples=200, deadline=None)
@given(statuses, statuses)
def test_the_encoding_is_the_sorted_protojson_one_encode_after_another(
    first: metadata_pb2.ClusterStatus, second: metadata_pb2.ClusterStatus
) -> None:
    encoder = StatusEncoder()
    for status in (first, second, first):
        text = encoder.encode(status)
        assert text == reference(status)
        assert decode_status(text, "test") == status


def test_only_the_changed_shards_are_converted() -> None:
    s = metadata_pb2.ClusterStatus()
    for ns in ("a", "b"):
        for sid in range(100):
            s.namespaces[ns].shards[sid].CopyFrom(_shard(1, sid, [1, 2, 3], True, False))
    encoder = StatusEncoder()
    encoder.encode(s)
    assert encoder.converted == 200
    assert encoder.encode(s) == reference(s)
    assert encoder.converted == 0
    s.namespaces["a"].shards[7].term += 1
    s.namespaces["b"].shards[10].ClearField("leader")
    s.namespaces["b"].shards[100].status = metadata_pb2.Election  # a new shard
    assert encoder.encode(s) == reference(s)
    assert encoder.converted == 3
    # A shard removed and then re-created with other contents is converted again.
    del s.namespaces["a"].shards[3]
    assert encoder.encode(s) == reference(s)
    s.namespaces["a"].shards[3].term = 99
    assert encoder.encode(s) == reference(s)
    assert encoder.converted == 1
