"""pyxia's lock-free counters and histograms expose exactly what prometheus_client's own would
for the same observations (a property over random values, bucket bounds included)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from pyxia.common.fast_metrics import FastCounter, FastHistogram
from pyxia.metrics import LATENCY_BUCKETS_MS

_names = (f"fast_metrics_test_{n}" for n in itertools.count())


def samples(collector: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in collector.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


values = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS_MS),  # exactly on a bound: counted in that bucket
        st.floats(min_value=0, max_value=100_000, allow_nan=False),
    ),
    max_size=50,
)


@settings(max_examples=50, deadline=None)
@given(values)
def test_a_fast_histogram_exposes_what_prometheus_client_would(observed: list[float]) -> None:
    name = next(_names)
    fast = FastHistogram(name, "doc", ("shard",), buckets=LATENCY_BUCKETS_MS)
    reference = Histogram(
        name, "doc", ("shard",), buckets=LATENCY_BUCKETS_MS, registry=CollectorRegistry()
    )
    f, r = fast.labels("1"), reference.labels("1")
    for v in observed:
        f.observe(v)
        r.observe(v)
    got, want = samples(fast), samples(reference)
    assert got.keys() == want.keys()
    for key in want:
        if key[0].endswith("_sum"):  # the same additions, maybe in another float rounding
            assert abs(got[key] - want[key]) <= 1e-6 * max(1.0, abs(want[key]))
        else:
            assert got[key] == want[key], key


@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
def test_a_fast_counter_exposes_what_prometheus_client_would(increments: list[int]) -> None:
    name = next(_names)
    fast = FastCounter(name, "doc", ("shard",))
    reference = Counter(name, "doc", ("shard",), registry=CollectorRegistry())
    for n in increments:
        fast.labels("1").inc(n)
        reference.labels("1").inc(n)
    assert samples(fast) == samples(reference)


def test_a_removed_child_leaves_the_exposition() -> None:
    fast = FastCounter(next(_names), "doc", ("shard",))
    fast.labels("1").inc()
    fast.labels("2").inc()
    fast.remove("1")
    assert [s.labels for f in fast.collect() for s in f.samples] == [{"shard": "2"}]
