"""The cost of TLS on replication: RF=3 write throughput of two clusters of 3 ``pyxia server``
processes, one whose members prove membership with the cluster secret only (replication in
plaintext) and one with mutual TLS on the internal ports and peer connections as well, measured
in interleaved rounds (the same load on one, then the other), medians reported: throughput,
and the CPU time the three servers spent per put (less sensitive to a busy machine).

    pytest benches/test_bench_tls.py --benchmark-enable -s
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from load import write_stream_load
from proc_cluster import tls_args
from pyxia.security.pki import CertificateAuthority
from pyxia.security.tls import TlsOptions
from test_bench_replication import elect
from test_replication_processes import Proc

ROUNDS = 7
SECONDS = 5.0


def _cluster(base: Path, tls: bool) -> list[Proc]:
    base.mkdir(parents=True)
    pki = base / "pki"
    if tls:
        ca = CertificateAuthority.create()
        ca.save(pki)
        for name in ("n0", "n1", "n2", "driver"):
            ca.issue_files(pki, name)
    procs = []
    for i in range(3):
        extra = []
        if tls:
            extra = [
                *tls_args("internal", pki, f"n{i}", client_auth=True),
                *tls_args("peer", pki, f"n{i}"),
            ]
        p = Proc(base / f"n{i}", *extra)
        if tls:
            p.internal_tls = TlsOptions(
                cert_file=pki / "driver.crt",
                key_file=pki / "driver.key",
                trusted_ca_file=pki / "ca.crt",
            ).client()
        procs.append(p)
    return procs


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Proc]]]:
    base = tmp_path_factory.mktemp("tls")
    groups = {"secret": _cluster(base / "secret", False), "mtls": _cluster(base / "mtls", True)}
    try:
        for procs in groups.values():
            for p in procs:
                p.start()
            elect(procs)
        yield groups
    finally:
        for procs in groups.values():
            for p in procs:
                p.kill()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_internal_tls_throughput(
    benchmark: BenchmarkFixture, clusters: dict[str, list[Proc]]
) -> None:
    rates: dict[str, list[float]] = {name: [] for name in clusters}
    cpu_us: dict[str, list[float]] = {name: [] for name in clusters}

    def rounds() -> None:
        for _ in range(ROUNDS):
            for name, procs in clusters.items():
                pids = [p.proc.pid for p in procs if p.proc is not None]
                c0 = cpu_seconds(pids)
                res = asyncio.run(write_stream_load(procs[0].public, 0, SECONDS))
                cpu_us[name].append((cpu_seconds(pids) - c0) * 1e6 / res.ops)
                rates[name].append(res.ops_per_s)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    plain = statistics.median(rates["secret"])
    mtls = statistics.median(rates["mtls"])
    per_round = [m / s for m, s in zip(rates["mtls"], rates["secret"], strict=True)]
    benchmark.extra_info.update(
        {
            "secret_puts_per_s": round(plain),
            "mtls_puts_per_s": round(mtls),
            "ratio": round(mtls / plain, 3),
            "median_round_ratio": round(statistics.median(per_round), 3),
            "per_round_ratios": [round(r, 3) for r in per_round],
            "secret_cpu_us_per_put": round(statistics.median(cpu_us["secret"]), 2),
            "mtls_cpu_us_per_put": round(statistics.median(cpu_us["mtls"]), 2),
        }
    )
    print(
        f"\nRF=3 WriteStream, {ROUNDS} interleaved rounds of {SECONDS:.0f} s: "
        f"secret only {plain:,.0f} puts/s, mutual TLS {mtls:,.0f} puts/s (medians), "
        f"ratio {mtls / plain:.3f}; per round {', '.join(f'{r:.2f}' for r in per_round)} "
        f"(median {statistics.median(per_round):.3f})"
    )
    for name, values in rates.items():
        print(
            f"  {name:>6}: " + ", ".join(f"{v:,.0f}" for v in values) + " puts/s; "
            f"servers' CPU per put (median) {statistics.median(cpu_us[name]):.2f} us: "
            + ", ".join(f"{v:.2f}" for v in cpu_us[name])
        )
