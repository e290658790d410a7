"""The pure rules of stamping leases (pyxia.tso.leases): acquire (idempotent, supersede,
refuse older epochs), renew, release, expiry, the cap, the write a mutation makes, the record
encoding, and the safe point / frontier — with a hypothesis model check that a holder never
has two live, non-superseded leases and that a renewal never lowers a bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.errors import InvalidArgument
from pyxia.tso.errors import LeaseNotFound, LeaseRefused, LeasesExhausted, TsoStateCorrupt
from pyxia.tso.leases import (
    LeaseRecord,
    LeaseTable,
    Mutation,
    check_acquire,
    decode_record,
    encode_record,
    max_safe,
    record_key,
    safe_frontier,
)

NOW = 1_800_000_000_000


def acquire(t: LeaseTable, holder: bytes, epoch: int, now: int, ttl: int = 5000) -> LeaseRecord:
    d = t.prepare_acquire(holder, epoch, now)
    if isinstance(d, LeaseRecord):
        return d
    r = t.new_record(holder, epoch, ttl, now)
    t.apply(Mutation(upsert=r, supersede=d), now)
    return r


def test_check_acquire() -> None:
    check_acquire(b"h", 5000, 5000, 300_000)
    check_acquire(b"x" * 128, 300_000, 5000, 300_000)
    for holder, ttl in [(b"", 5000), (b"x" * 129, 5000), (b"h", 4999), (b"h", 300_001)]:
        with pytest.raises(InvalidArgument):
            check_acquire(holder, ttl, 5000, 300_000)


def test_acquire_supersede_refuse_renew_release() -> None:
    t = LeaseTable()
    a = acquire(t, b"g", 5, NOW)
    assert (a.lease_id, a.ts_upper_bound, a.expires_at_ms) == (1, NOW + 5000, NOW + 5000)
    assert acquire(t, b"g", 5, NOW + 10) == a
    with pytest.raises(LeaseRefused):
        t.prepare_acquire(b"g", 4, NOW + 10)
    b = acquire(t, b"g", 6, NOW + 20)
    assert b.lease_id == 2 and t.get(1) is not None and t.get(1).superseded  # type: ignore[union-attr]
    with pytest.raises(LeaseRefused, match="superseded by holder epoch 6"):
        t.prepare_renew(1, NOW + 30)
    with pytest.raises(LeaseNotFound):
        t.prepare_renew(99, NOW)
    r = t.renewed(t.prepare_renew(2, NOW + 1000), NOW + 1000)
    assert r.ts_upper_bound == NOW + 6000 and r.expires_at_ms == NOW + 6000
    t.apply(Mutation(upsert=r), NOW + 1000)
    # The superseded lease still holds the frontier until it expires.
    assert t.min_unexpired_bound(NOW + 1000) == a.ts_upper_bound
    assert t.min_unexpired_bound(NOW + 5000) == NOW + 6000
    with pytest.raises(LeaseRefused, match="expired"):
        t.prepare_renew(2, NOW + 6000)
    t.apply(Mutation(remove=2), NOW + 1001)
    assert t.get(2) is None
    assert acquire(t, b"g", 6, NOW + 1002).lease_id == 3  # ids are never reused


def test_a_renewal_never_lowers_the_bound() -> None:
    r = LeaseRecord(1, b"h", 1, 5000, NOW + 9000, NOW + 5000)
    assert LeaseTable.renewed(r, NOW - 60_000).ts_upper_bound == NOW + 9000  # clock went back


def test_the_cap_counts_live_leases() -> None:
    t = LeaseTable(max_leases=2)
    acquire(t, b"a", 1, NOW)
    acquire(t, b"b", 1, NOW)
    with pytest.raises(LeasesExhausted):
        t.prepare_acquire(b"c", 1, NOW)
    assert acquire(t, b"a", 1, NOW).lease_id == 1  # idempotent still answers
    assert acquire(t, b"c", 1, NOW + 5000).lease_id == 3  # the others expired


def test_the_write_of_a_mutation_deletes_expired_records() -> None:
    t = LeaseTable()
    acquire(t, b"old", 1, NOW, ttl=5000)
    a = acquire(t, b"a", 1, NOW + 10)
    r = t.new_record(b"a", 2, 5000, NOW + 5005)
    puts, deletes = t.write_for(Mutation(upsert=r, supersede=a.lease_id), NOW + 5005)
    assert deletes == [1]
    assert [p.lease_id for p in puts] == [a.lease_id, r.lease_id] and puts[0].superseded


def test_seed_drops_expired_records_but_keeps_the_last_id() -> None:
    t = LeaseTable()
    recs = [LeaseRecord(7, b"x", 1, 5000, NOW, NOW), LeaseRecord(3, b"y", 1, 5000, NOW, NOW + 1)]
    t.seed(recs, NOW, last_id=5)
    assert [r.lease_id for r in t.records()] == [3] and t.last_id == 7


def test_record_encoding() -> None:
    r = LeaseRecord(12, b"\x00\xffh", 2**63, 5000, 2**46, 2**46 + 1, True)
    assert decode_record(record_key(12), encode_record(r)) == r
    for key, raw in [
        (record_key(12), b"{"),
        (record_key(12), b'{"holder":"zz"}'),
        ("__oxia/tso/lease/12", encode_record(r)),
        (record_key(12), encode_record(r).replace(b"true", b"1")),
    ]:
        with pytest.raises(TsoStateCorrupt):
            decode_record(key, raw)


def test_safe_point_and_frontier() -> None:
    assert max_safe(10_000, 3000) == 6999
    assert max_safe(100, 3000) == 0
    assert safe_frontier(500, None) == 500
    assert safe_frontier(500, 400) == 400 and safe_frontier(500, 600) == 500


ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "renew", "release"]),
        st.sampled_from([b"a", b"b"]),
        st.integers(0, 4),  # holder epoch, or which lease
        st.integers(0, 3000),  # time step
    ),
    max_size=60,
)


@given(ops)
def test_a_holder_never_has_two_live_leases(script: list[tuple[str, bytes, int, int]]) -> None:
    t = LeaseTable(max_leases=10)
    now = NOW
    bounds: dict[int, int] = {}
    for op, holder, n, step in script:
        now += step
        try:
            if op == "acquire":
                r = acquire(t, holder, n, now)
                bounds[r.lease_id] = max(bounds.get(r.lease_id, 0), r.ts_upper_bound)
            elif op == "renew" and bounds:
                lid = sorted(bounds)[n % len(bounds)]
                r = t.renewed(t.prepare_renew(lid, now), now)
                assert r.ts_upper_bound >= bounds[lid]
                t.apply(Mutation(upsert=r), now)
                bounds[lid] = r.ts_upper_bound
            elif op == "release" and bounds:
                t.apply(Mutation(remove=sorted(bounds)[n % len(bounds)]), now)
        except (LeaseRefused, LeaseNotFound, LeasesExhausted):
            pass
        for h in (b"a", b"b"):
            live = [r for r in t.live(now) if r.holder == h and not r.superseded]
            assert len(live) <= 1
        assert len(t.live(now)) <= 10
