"""The cost of public-port security, measured with ``pyxia perf`` against four standalones
(plain, TLS, OIDC auth, TLS + auth; a local issuer from tests/oidc_issuer.py):

    python benches/public_security_cost.py [--rounds 7] [--seconds 5] [--rate 5000]

At a fixed ``--rate`` every server keeps up, so the figure compared is the server process's CPU
time per operation (user + system, from /proc); at a rate above what the machine sustains it is
throughput. The machine is shared and noisy, so each round runs every configuration once, in a
shuffled order, and the medians of the figures and of the per-round ratios to "plain" are
printed. Then the hot-path pieces alone (best of several repeats): a call with a cached token, a
token's first verification, an authorization check, the migration-field detection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from oidc_issuer import Issuer  # noqa: E402
from pyxia.security.pki import CertificateAuthority  # noqa: E402
from servers import ServerProcess, standalone_args  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(rounds: int, seconds: float, rate: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="pyxia-sec-bench-"))
    ca = CertificateAuthority.create()
    ca_files = ca.save(base / "ca")
    cert = ca.issue_files(base, "server")
    issuer = Issuer()
    token = base / "token"
    token.write_text(issuer.token("bench", exp=int(time.time()) + 7200))
    tls_srv = ["--tls-cert-file", str(cert.cert), "--tls-key-file", str(cert.key)]
    auth_srv = ["--auth-provider-name", "oidc", "--auth-provider-params", issuer.params()]
    tls_cli = ["--tls-trusted-ca-file", str(ca_files.cert)]
    auth_cli = ["--auth-token-file", str(token)]
    configs = {
        "plain": ([], []),
        "tls": (tls_srv, tls_cli),
        "auth": (auth_srv, auth_cli),
        "tls+auth": (tls_srv + auth_srv, tls_cli + auth_cli),
    }
    servers: dict[str, ServerProcess] = {}
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in configs}
    rng = random.Random(7)
    try:
        for name, (server_args, _) in configs.items():
            d = base / name
            d.mkdir()
            servers[name] = ServerProcess(standalone_args(d, "--shards", "2", *server_args), d)
            servers[name].start()
        for r in range(rounds):
            order = list(configs.items())
            rng.shuffle(order)
            for name, (_, client_args) in order:
                s = servers[name]
                c0 = _cpu_s(s.pid)
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pyxia",
                        "perf",
                        "-a",
                        s.public,
                        *client_args,
                        "--duration",
                        f"{seconds}s",
                        "--rate",
                        str(rate),
                        "--report-interval",
                        "1000s",
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=seconds * 10 + 60,
                    check=True,
                )
                j = json.loads(out.stdout.strip().splitlines()[-1])
                ops = max(1.0, j["ops_per_s"] * j["duration_s"])
                j["cpu_us_per_op"] = (_cpu_s(s.pid) - c0) * 1e6 / ops
                results[name].append(j)
                print(
                    f"round {r}: {name:9s} {j['ops_per_s']:9.1f} ops/s "
                    f"{j['cpu_us_per_op']:6.1f} us CPU/op",
                    flush=True,
                )
    finally:
        for s in servers.values():
            s.kill()
        issuer.close()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    plain = results["plain"]
    for name, js in results.items():
        cpu = [j["cpu_us_per_op"] for j in js]
        ratios = [j["cpu_us_per_op"] / p["cpu_us_per_op"] for j, p in zip(js, plain, strict=True)]
        tput = [j["ops_per_s"] / p["ops_per_s"] for j, p in zip(js, plain, strict=True)]
        print(
            f"{name:9s} ops/s {statistics.median(j['ops_per_s'] for j in js):9.1f} "
            f"(x{statistics.median(tput):.2f})  CPU/op {statistics.median(cpu):6.1f} us "
            f"(x{statistics.median(ratios):.2f})  write p50 "
            f"{statistics.median(j['write_latency_ms']['p50'] for j in js):.2f} ms  "
            f"failed {sum(j['failed_ops_per_s'] for j in js)}"
        )


def hot_path() -> None:
    from pyxia.proto import client_pb2 as pb
    from pyxia.security.oidc import OidcAuthenticator, parse_oidc_params
    from pyxia.security.public import AuthInterceptor, PublicAccess
    from pyxia.storage.apply import override_fields_used, validate_write_request

    def best(fn: Any, n: int) -> float:
        return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6

    issuer = Issuer()

    async def measure() -> None:
        authn = OidcAuthenticator(parse_oidc_params(issuer.params()))
        await authn.start()
        access = PublicAccess(authn)
        interceptor = AuthInterceptor(access)
        token = issuer.token("bench")

        class Context:
            def invocation_metadata(self) -> Any:
                return (("user-agent", "grpc-python"), ("authorization", "Bearer " + token))

            def peer(self) -> str:
                return "bench"

        ctx: Any = Context()
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(20_000):
                await interceptor.authenticate(ctx)
            times.append((time.perf_counter() - t0) / 20_000 * 1e6)
        print(f"a call with a cached token: {min(times):.2f} us")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(100):
                authn._cache.clear()
                await authn.authenticate(token)
            times.append((time.perf_counter() - t0) / 100 * 1e6)
        print(f"a token's first verification (RS256): {min(times):.0f} us")
        check = best(lambda: access.check("default", "write"), 20_000)
        print(f"authorization check: {check:.3f} us")
        await authn.close()

    asyncio.run(measure())
    issuer.close()
    for value, label in ((b"x" * 100, "text values"), (os.urandom(100), "random binary values")):
        req = pb.WriteRequest(puts=[pb.PutRequest(key=f"key-{k}", value=value) for k in range(64)])
        raw = req.SerializeToString()
        validate = best(lambda r=req: validate_write_request(r), 2000)
        detect = best(lambda r=req, b=raw: override_fields_used(r, b), 2000)
        print(f"64 puts, {label}: validation {validate:.1f} us, field detection {detect:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=5000)
    args = ap.parse_args()
    end_to_end(args.rounds, args.seconds, args.rate)
    hot_path()


if __name__ == "__main__":
    main()
