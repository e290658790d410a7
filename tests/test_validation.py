"""Properties of ``pyxia.common.validation``: names that become paths never leave their base
directory, terms never overflow, the re-base rules never let a log's entries outrank the term,
addresses and assignment maps are well formed; and the config loader applies the same rules."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pyxia.common.sharding import generate_shards
from pyxia.common.validation import (
    INT64_MAX,
    MAX_ADDRESS_LEN,
    MAX_NAMESPACE_LEN,
    MAX_REPLICATION_FACTOR,
    MAX_TERM,
    REBUILDING_HEAD,
    RESERVED_NAMESPACE_NAMES,
    accepts_term,
    check_address,
    check_entry_id,
    check_follower_map,
    check_instance_id,
    check_namespace,
    check_replication_factor,
    check_shard_assignments,
    check_shard_id,
    check_storable_term,
    check_term,
    is_valid_address,
    is_valid_namespace,
    standalone_term,
)
from pyxia.config import ConfigError, parse_cluster_config
from pyxia.errors import InvalidArgument
from pyxia.proto import client_pb2, replication_pb2

NAME_CHARS = "abcXYZ019_.-"
OXIA_RULE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")

valid_names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=MAX_NAMESPACE_LEN).filter(
    lambda s: (
        s[0].isalnum()
        and ".." not in s
        and s.casefold() not in {n.casefold() for n in RESERVED_NAMESPACE_NAMES}
    )
)


# -- namespaces -----------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_an_accepted_namespace_is_one_path_component_under_the_base(name: str) -> None:
    if not is_valid_namespace(name):
        with pytest.raises(InvalidArgument):
            check_namespace(name)
        return
    base = PurePosixPath("/srv/data")
    p = base / name / "shard-7"
    assert p.parts[:-2] == base.parts  # nothing climbed out, nothing absolute replaced the base
    assert p.parent.name == name
    assert os.path.normpath(str(p)) == str(p)
    assert OXIA_RULE.fullmatch(name) and ".." not in name and len(name) <= MAX_NAMESPACE_LEN


@given(valid_names)
def test_names_by_oxias_rule_within_the_bound_are_accepted(name: str) -> None:
    assert check_namespace(name) == name


@given(
    st.text(alphabet=NAME_CHARS, max_size=20),
    st.sampled_from(["/", "\\", "..", "\n", "\x00", " ", "é"]),
    st.text(alphabet=NAME_CHARS, max_size=20),
)
def test_separators_traversal_and_foreign_characters_are_refused(
    pre: str, bad: str, post: str
) -> None:
    assert not is_valid_namespace(pre + bad + post)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        ".",
        "../../x",
        "/abs/path",
        "a/b",
        "a\\b",
        "-x",
        "_x",
        ".hidden",
        "x\n",
        "x" * (MAX_NAMESPACE_LEN + 1),
        *sorted(RESERVED_NAMESPACE_NAMES),
        "pyxia.lock",
        "PYXIA.LOCK",
        "manifest.json",
        "Manifest.Json",
        "MANIFEST.tmp",
    ],
)
def test_known_bad_namespaces(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_namespace(name)


def test_the_files_pyxia_keeps_in_its_dirs_are_reserved() -> None:
    from pyxia.dirs import LOCK_FILE, MANIFEST_FILE
    from pyxia.server.manifest import MANIFEST_FILE as SERVER_MANIFEST_FILE

    assert {LOCK_FILE, MANIFEST_FILE, SERVER_MANIFEST_FILE} <= RESERVED_NAMESPACE_NAMES


def test_the_longest_name_fits_a_path_component() -> None:
    assert check_namespace("n" * MAX_NAMESPACE_LEN)
    assert len(("n" * MAX_NAMESPACE_LEN).encode()) < 255


# -- numbers --------------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_terms_are_bounded_far_from_overflow(term: int) -> None:
    if 0 <= term <= MAX_TERM:
        assert check_term(term) == term
        assert term + 1 <= INT64_MAX  # an election or a restart never overflows
    else:
        with pytest.raises(InvalidArgument):
            check_term(term)


def test_the_term_bound() -> None:
    assert MAX_TERM == 2**62
    check_term(MAX_TERM)
    for bad in (MAX_TERM + 1, INT64_MAX, 2**63, -1):
        with pytest.raises(InvalidArgument):
            check_term(bad)
    check_storable_term(INT64_MAX)
    with pytest.raises(InvalidArgument):
        check_storable_term(2**63)
    with pytest.raises(InvalidArgument):
        check_term(True)


@given(st.integers(min_value=-(2**64), max_value=2**64))
def test_shard_ids(shard: int) -> None:
    if 0 <= shard <= INT64_MAX:
        assert check_shard_id(shard) == shard
    else:
        with pytest.raises(InvalidArgument):
            check_shard_id(shard)


@given(st.integers(min_value=-5, max_value=MAX_REPLICATION_FACTOR + 5))
def test_replication_factor(rf: int) -> None:
    if 1 <= rf <= MAX_REPLICATION_FACTOR:
        check_replication_factor(rf)
    else:
        with pytest.raises(InvalidArgument):
            check_replication_factor(rf)


@given(
    st.integers(min_value=-3, max_value=INT64_MAX), st.integers(min_value=-3, max_value=INT64_MAX)
)
def test_head_entry_ids(term: int, offset: int) -> None:
    e = replication_pb2.EntryId(term=term, offset=offset)
    if (term >= -1 and offset >= -1) or (term, offset) == REBUILDING_HEAD:
        check_entry_id(e)
    else:
        with pytest.raises(InvalidArgument):
            check_entry_id(e)


# -- terms read back from storage -----------------------------------------------------------------


@given(
    st.integers(min_value=-1, max_value=2**64),
    st.integers(min_value=-1, max_value=INT64_MAX),
)
def test_standalone_term_never_overflows_and_never_goes_below_the_log(
    current: int, head: int
) -> None:
    assume(current >= MAX_TERM or head <= current)  # a healthy log never outruns its term
    t = standalone_term(current, head)
    assert 0 <= t <= INT64_MAX
    assert t >= head  # the log's entries never outrank the term it leads in
    if current < MAX_TERM:
        assert t == current + 1
    else:
        assert accepts_term(t, current, head)  # the controller takes the re-base


@given(st.integers(min_value=-1, max_value=2**64), st.integers(min_value=-1, max_value=INT64_MAX))
def test_standalone_restarts_settle_below_the_wal_limit(current: int, head: int) -> None:
    assume(current >= MAX_TERM or head <= current)
    for _ in range(3):
        nxt = standalone_term(current, head)
        assert nxt <= INT64_MAX
        assert nxt >= current or current >= MAX_TERM
        current = nxt


@given(
    st.integers(min_value=0, max_value=MAX_TERM),
    st.integers(min_value=-1, max_value=MAX_TERM),
    st.integers(min_value=-1, max_value=MAX_TERM),
)
def test_valid_terms_never_go_back(requested: int, current: int, head: int) -> None:
    assume(current < MAX_TERM)
    assert accepts_term(requested, current, head) == (requested >= current)


@given(
    st.integers(min_value=0, max_value=MAX_TERM),
    st.integers(min_value=MAX_TERM, max_value=2**64),
    st.integers(min_value=-1, max_value=INT64_MAX),
)
def test_a_forged_term_re_bases_only_below_nothing_in_the_log(
    requested: int, current: int, head: int
) -> None:
    assert accepts_term(requested, current, head) == (requested >= current or head <= requested)


# -- addresses, ids, maps -------------------------------------------------------------------------

hosts = st.one_of(
    st.from_regex(
        r"[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?){0,3}",
        fullmatch=True,
    ),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)


@given(hosts, st.integers(min_value=1, max_value=65535))
def test_host_port_addresses_are_accepted(host: str, port: int) -> None:
    assert check_address(f"{host}:{port}")


@given(st.text(max_size=300))
def test_an_accepted_address_is_host_colon_port(address: str) -> None:
    if is_valid_address(address):
        host, _, port = address.rpartition(":")
        assert host and 1 <= int(port) <= 65535 and len(address) <= MAX_ADDRESS_LEN
        assert not any(c in address for c in "/\\ \n@?#")


@pytest.mark.parametrize(
    "address",
    ["", "host", ":80", "host:0", "host:65536", "host:80x", "a b:1", "a/b:1", "h" * 300 + ":1"],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(InvalidArgument):
        check_address(address)


def test_instance_ids() -> None:
    check_instance_id("9fe83f2a-2869-4604-95c1-2e824c215cef")
    for bad in ("", "a b", "x" * 129, "é"):
        with pytest.raises(InvalidArgument):
            check_instance_id(bad)


def test_follower_maps() -> None:
    head = replication_pb2.EntryId(term=1, offset=3)
    check_follower_map({"n1:6649": head, "n2:6649": head}, 3)
    with pytest.raises(InvalidArgument):
        check_follower_map({"n1:6649": head, "n2:6649": head}, 2)  # more than RF - 1
    with pytest.raises(InvalidArgument):
        check_follower_map({"../x": head}, 3)


def _assignments(
    ranges: list[tuple[int, int]], namespace: str = "default"
) -> client_pb2.ShardAssignments:
    a = client_pb2.ShardAssignments()
    nsa = a.namespaces[namespace]
    for shard, (lo, hi) in enumerate(ranges):
        nsa.assignments.add(
            shard=shard,
            leader="n0:6648" if shard % 2 else "",
            int32_hash_range=client_pb2.Int32HashRange(
                min_hash_inclusive=lo, max_hash_inclusive=hi
            ),
        )
    return a


@given(st.integers(min_value=1, max_value=64))
def test_generated_shard_maps_are_accepted(n: int) -> None:
    check_shard_assignments(
        _assignments([(r.min_inclusive, r.max_inclusive) for r in generate_shards(n)])
    )


@pytest.mark.parametrize(
    "ranges",
    [[(0, 10), (10, 20)], [(0, 10), (3, 4)], [(5, 4)]],
    ids=["touch", "inside", "inverted"],
)
def test_bad_hash_ranges(ranges: list[tuple[int, int]]) -> None:
    with pytest.raises(InvalidArgument):
        check_shard_assignments(_assignments(ranges))


def test_bad_maps() -> None:
    with pytest.raises(InvalidArgument):
        check_shard_assignments(_assignments([(0, 2**32 - 1)], namespace="../x"))
    a = _assignments([(0, 2**32 - 1)])
    a.namespaces["default"].assignments[0].leader = "evil/path:1"
    with pytest.raises(InvalidArgument):
        check_shard_assignments(a)
    a = _assignments([(0, 2**32 - 1)])
    a.namespaces["other"].assignments.add(shard=0)  # shard ids are cluster-wide
    with pytest.raises(InvalidArgument):
        check_shard_assignments(a)
    a = _assignments([(0, 2**32 - 1)])
    a.allowed_authorities.append("not an address")
    with pytest.raises(InvalidArgument):
        check_shard_assignments(a)


# -- the config loader ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "/abs/path", "a/b", "x" * 200, "MANIFEST.json", "pyxia.lock"]
)
def test_config_refuses_bad_namespace_names(name: str) -> None:
    with pytest.raises(ConfigError, match="namespace name"):
        parse_cluster_config({"namespaces": [{"name": name}]}, require_servers=False)


def test_config_refuses_bad_server_addresses() -> None:
    cfg = {
        "namespaces": [{"name": "default"}],
        "servers": [{"public": "a/b:1", "internal": "h:2"}],
    }
    with pytest.raises(ConfigError, match="servers\\[0\\]"):
        parse_cluster_config(cfg)


def test_config_bounds_the_replication_factor() -> None:
    with pytest.raises(ConfigError, match="replicationFactor"):
        parse_cluster_config(
            {"namespaces": [{"name": "d", "replicationFactor": MAX_REPLICATION_FACTOR + 1}]},
            require_servers=False,
        )
