"""The client workload: several :class:`pyxia.AsyncClient` instances, each with a few
sequential "processes" (Jepsen's word) issuing random operations on a small set of keys, and
recording every one of them in the :class:`History`; notification and sequence-update
subscribers; ephemeral-record owners in child processes that get killed.

Every value written is unique (``p<process>-<n>``), so a read tells which write it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyxia.client import (
    AsyncClient,
    KeyNotFound,
    Notifications,
    UnexpectedVersion,
)
from pyxia.robustness.checkers import (
    Batch,
    EphemeralOwner,
    Notif,
    Subscription,
    TsoCall,
    TsoLeaseCall,
    TsoSeqCall,
)
from pyxia.robustness.history import (
    CAS,
    CDELETE,
    DELETE,
    FAIL,
    GET,
    INFO,
    LIST,
    OK,
    PUT,
    SCAN,
    SEQ,
    History,
    Op,
    Record,
)
from pyxia.security.tls import TlsOptions
from pyxia.test_hooks import DIAL_MAP_ENV, TEST_MODE_ENV, format_dial_map

log = logging.getLogger("pyxia.robustness")

NOTIF_TYPES = {0: "created", 1: "modified", 2: "deleted", 3: "range_deleted"}
LIN_PREFIX = "/lin/"
SEQ_PREFIXES = (("/seq/a", "seq-a"), ("/seq/b", "seq-b"))
EPH_PREFIX = "/eph/"

# operation mix: (kind, weight)
MIX: tuple[tuple[str, float], ...] = (
    (GET, 30),
    (PUT, 20),
    (CAS, 15),
    (DELETE, 5),
    (CDELETE, 5),
    (LIST, 6),
    (SCAN, 4),
    (SEQ, 8),
)


def lin_key(i: int) -> str:
    return f"{LIN_PREFIX}k{i:03d}"


def _wall_ms() -> int:
    """The wall clock in ms (what lease expiries are compared with)."""
    return time.time_ns() // 1_000_000


def _err(e: BaseException) -> str:
    s = str(e).replace("\n", " ")
    return f"{type(e).__name__}: {s[:160]}"


@dataclass
class WorkloadOptions:
    clients: int = 4
    processes_per_client: int = 3
    keys: int = 48
    request_timeout_s: float = 5.0
    think_ms: float = 4.0
    session_timeout_s: float = 3.0
    owners: int = 2
    owner_life_s: tuple[float, float] = (4.0, 15.0)
    tso_processes: int = 0
    """Processes asking the timestamp oracle (0: none; needs the ``tso`` namespace)."""


class Workload:
    def __init__(
        self,
        addresses: list[str],
        history: History,
        t0: int,
        seed: int,
        options: WorkloadOptions,
        client_dial_map: dict[str, str],
        tls: TlsOptions | None = None,
    ) -> None:
        self.addresses = addresses
        self.tls = tls
        # Public-port TLS for the clients (passed only when on: builds without it still run).
        self._tls_kw: dict[str, Any] = {"tls": tls} if tls is not None else {}
        self.history = history
        self.t0 = t0
        self.seed = seed
        self.o = options
        self.client_dial_map = client_dial_map
        self.clients: list[AsyncClient] = []
        self.aux: AsyncClient | None = None
        self.keys = [lin_key(i) for i in range(options.keys)]
        self.subscriptions: list[Subscription] = []
        self.sequence_updates: dict[str, list[list[str]]] = {p: [] for p, _ in SEQ_PREFIXES}
        self.owners: list[EphemeralOwner] = []
        self.positions: dict[str, dict[int, int]] = {}
        self.tso_calls: list[TsoCall] = []
        self.tso_errors: list[str] = []
        self.tso_seq_calls: list[TsoSeqCall] = []
        self.tso_lease_calls: list[TsoLeaseCall] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._owner_procs: list[asyncio.subprocess.Process] = []

    def now(self) -> int:
        return time.monotonic_ns() - self.t0

    def _client(self, i: int) -> AsyncClient:
        # each client follows the assignments from a different server (the first address)
        k = i % len(self.addresses)
        return AsyncClient(
            self.addresses[k:] + self.addresses[:k],
            request_timeout_s=self.o.request_timeout_s,
            session_timeout_s=max(2.0, self.o.session_timeout_s),
            **self._tls_kw,
        )

    async def start(self) -> None:
        for i in range(self.o.clients):
            c = self._client(i)
            await c.start()
            self.clients.append(c)
        self.aux = self._client(self.o.clients)
        await self.aux.start()
        loop = asyncio.get_running_loop()
        for ci, c in enumerate(self.clients):
            for j in range(self.o.processes_per_client):
                pid = ci * self.o.processes_per_client + j
                self._tasks.append(loop.create_task(self._process(c, pid)))
        self._tasks.append(loop.create_task(self._subscriber("notifications-0", resume=False)))
        self._tasks.append(loop.create_task(self._subscriber("notifications-1", resume=True)))
        for prefix, pk in SEQ_PREFIXES:
            self._tasks.append(loop.create_task(self._sequence_updates(prefix, pk)))
        if self.o.owners > 0:
            self._tasks.append(loop.create_task(self._owners()))
        for i in range(self.o.tso_processes):
            self._tasks.append(loop.create_task(self._tso_process(1000 + i)))
        if self.o.tso_processes > 0:
            for i in range(2):
                self._tasks.append(loop.create_task(self._tso_seq_process(1100 + i)))
            self._tasks.append(loop.create_task(self._tso_lease_process(1200)))

    async def stop(self) -> None:
        """Stops issuing operations; waits for the ones in flight."""
        self._stop.set()
        for t in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(t), self.o.request_timeout_s * 3)
            except (TimeoutError, Exception):
                t.cancel()
        for p in self._owner_procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for c in [*self.clients, *([self.aux] if self.aux else [])]:
            try:
                await asyncio.wait_for(c.close(), 10)
            except Exception:
                pass

    # -- one process ------------------------------------------------------------------------------

    async def _process(self, client: AsyncClient, pid: int) -> None:
        rng = random.Random(f"pyxia-robustness-process-{self.seed}-{pid}")
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        versions: dict[str, int] = {}  # what this process last saw of each key
        n = 0
        while not self._stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            n += 1
            try:
                await self.execute(client, pid, kind, rng, versions, f"p{pid}-{n}")
            except Exception:  # a bug of the harness, not of the cluster
                log.exception("process %d: %s failed", pid, kind)
            if self.o.think_ms > 0:
                await asyncio.sleep(rng.random() * self.o.think_ms / 1000.0)

    async def execute(
        self,
        client: AsyncClient,
        pid: int,
        kind: str,
        rng: random.Random,
        versions: dict[str, int],
        value: str,
    ) -> Op:
        key = rng.choice(self.keys)
        h = self.history
        if kind in (PUT, CAS):
            expected: int | None = None
            if kind == CAS:
                expected = versions.get(key, -1) if rng.random() < 0.85 else -1
            op = h.new(pid, kind, key, self.now(), value=value, expected=expected)
            op.shard = client.shard_for(key)
            try:
                r = await client.put(key, value, expected_version_id=expected)
            except UnexpectedVersion:
                self._done(op, OK, result="bad_version")
                versions.pop(key, None)
            except Exception as e:
                self._done(op, INFO, error=_err(e))
            else:
                v = r.version
                self._done(
                    op, OK, result="ok", version=v.version_id, mod_count=v.modifications_count
                )
                versions[key] = v.version_id
            return op
        if kind == SEQ:
            prefix, pk = rng.choice(SEQ_PREFIXES)
            op = h.new(pid, SEQ, prefix, self.now(), value=value, partition_key=pk)
            op.shard = client.shard_for(prefix, pk)
            try:
                r = await client.put(prefix, value, partition_key=pk, sequence_key_deltas=[1])
            except Exception as e:
                self._done(op, INFO, error=_err(e))
            else:
                v = r.version
                self._done(
                    op,
                    OK,
                    result="ok",
                    version=v.version_id,
                    mod_count=v.modifications_count,
                    result_key=r.key,
                )
            return op
        if kind in (DELETE, CDELETE):
            cexp: int | None = None
            if kind == CDELETE:
                cexp = versions.get(key)
                if cexp is None:
                    kind = DELETE
            op = h.new(pid, kind, key, self.now(), expected=cexp)
            op.shard = client.shard_for(key)
            try:
                deleted = await client.delete(key, expected_version_id=cexp)
            except UnexpectedVersion:
                self._done(op, OK, result="bad_version")
            except Exception as e:
                self._done(op, INFO, error=_err(e))
            else:
                self._done(op, OK, result="deleted" if deleted else "not_found")
            versions.pop(key, None)
            return op
        if kind == GET:
            op = await self.execute_get(client, pid, key)
            if op.result == "found" and op.version is not None:
                versions[key] = op.version
            elif op.result == "not_found":
                versions.pop(key, None)
            return op
        # list / scan over a random range of the keys
        a, b = sorted(rng.sample(range(len(self.keys) + 1), 2))
        start, end = lin_key(a), lin_key(b)
        op = h.new(pid, kind, start, self.now(), end=end)
        try:
            if kind == LIST:
                keys = await client.list(start, end)
                self._done(op, OK, keys=list(keys))
            else:
                recs = []
                async for g in client.range_scan(start, end):
                    v = g.version
                    recs.append(
                        Record(
                            g.key, (g.value or b"").decode(), v.version_id, v.modifications_count
                        )
                    )
                self._done(op, OK, records=recs)
        except Exception as e:
            self._done(op, FAIL, error=_err(e))
        return op

    async def execute_get(self, client: AsyncClient, pid: int, key: str) -> Op:
        op = self.history.new(pid, GET, key, self.now())
        op.shard = client.shard_for(key)
        try:
            g = await client.get(key)
        except KeyNotFound:
            self._done(op, OK, result="not_found")
        except Exception as e:
            self._done(op, FAIL, error=_err(e))
        else:
            v = g.version
            self._done(
                op,
                OK,
                result="found",
                read_value=(g.value or b"").decode(),
                version=v.version_id,
                mod_count=v.modifications_count,
            )
        return op

    def _done(self, op: Op, status: str, **kw: Any) -> None:
        op.complete = self.now()
        op.status = status
        for k, v in kw.items():
            setattr(op, k, v)

    # -- notifications ----------------------------------------------------------------------------

    async def _subscriber(self, name: str, resume: bool) -> None:
        """Follows every shard's notifications; with ``resume``, closes the feed now and then
        and opens a new one after the position it reached."""
        assert self.aux is not None
        client = self.aux
        rng = random.Random(f"pyxia-robustness-{name}-{self.seed}")
        sub: Subscription | None = None
        position: dict[int, int] | None = None
        while not self._stop.is_set():
            feed: Notifications | None = None
            try:
                feed = await client.get_notifications(start_after=position)
                await asyncio.wait_for(feed.wait_connected(), 30)
            except Exception as e:
                log.info("%s: cannot (re)open the feed: %s", name, e)
                if feed is not None:
                    await feed.close()
                await asyncio.sleep(0.5)
                continue
            if sub is None:
                sub = Subscription(name, self.now())
                self.subscriptions.append(sub)
            else:
                sub.resumes += 1
            until = time.monotonic() + (rng.uniform(5, 25) if resume else 1e9)
            try:
                while time.monotonic() < until and not self._stop.is_set():
                    b = await feed.get(timeout=0.5)
                    if b is not None:
                        sub.batches.append(_batch(self.now(), b))
            finally:
                position = feed.position
                self.positions[name] = dict(position)
                await feed.close()

    async def drain_subscribers(self, markers: dict[int, int], timeout: float) -> None:
        """Reads on (a new feed, after where each subscriber stopped) until every subscriber
        received the marker version of every shard, or ``timeout``."""
        assert self.aux is not None
        deadline = time.monotonic() + timeout
        for sub in self.subscriptions:
            got = {
                b.shard
                for b in sub.batches
                for n in b.notifications
                if markers.get(b.shard) == n.version
            }
            if set(markers) <= got:
                sub.caught_up = True
                continue
            try:
                feed = await self.aux.get_notifications(start_after=self.positions.get(sub.name))
            except Exception as e:
                log.warning("%s: cannot reopen the feed to drain it: %s", sub.name, e)
                continue
            try:
                while time.monotonic() < deadline:
                    b = await feed.get(timeout=0.5)
                    if b is None:
                        continue
                    nb = _batch(self.now(), b)
                    sub.batches.append(nb)
                    for n in nb.notifications:
                        if markers.get(nb.shard) == n.version:
                            got.add(nb.shard)
                    if set(markers) <= got:
                        sub.caught_up = True
                        break
            finally:
                await feed.close()

    async def _sequence_updates(self, prefix: str, pk: str) -> None:
        assert self.aux is not None
        while not self._stop.is_set():
            feed = None
            delivered: list[str] = []
            self.sequence_updates[prefix].append(delivered)
            try:
                feed = await self.aux.get_sequence_updates(prefix, partition_key=pk)
                while not self._stop.is_set():
                    k = await feed.get(timeout=0.5)
                    if k is not None:
                        delivered.append(k)
            except Exception as e:
                log.info("sequence updates of %s: %s", prefix, e)
                await asyncio.sleep(0.5)
            finally:
                if feed is not None:
                    await feed.close()

    # -- timestamp oracle -------------------------------------------------------------------------

    async def _tso_process(self, pid: int) -> None:
        """Asks for timestamps (one, or a batch) in a loop; records what each call got."""
        from pyxia.tso.client import AsyncTsoClient
        from pyxia.tso.errors import TimestampFallback

        rng = random.Random(f"pyxia-robustness-tso-{self.seed}-{pid}")
        k = pid % len(self.addresses)
        tso = AsyncTsoClient(self.addresses[k:] + self.addresses[:k], timeout_s=5.0, **self._tls_kw)
        try:
            while not self._stop.is_set():
                count = 1 if rng.random() < 0.5 else rng.randint(2, 64)
                t0 = self.now()
                try:
                    if count == 1:
                        ts = await tso.get_ts()
                        first = ts
                    else:
                        r = await tso.get_ts_batch(count)
                        first = r.start
                except TimestampFallback as e:
                    self.tso_errors.append(f"p{pid} at {t0 / 1e9:.3f}s: {e}")
                    continue
                except Exception:
                    await asyncio.sleep(0.1)
                    continue
                self.tso_calls.append(TsoCall(pid, t0, self.now(), first, count))
                if self.o.think_ms > 0:
                    await asyncio.sleep(rng.random() * self.o.think_ms / 1000.0)
        finally:
            await tso.close()

    async def _tso_seq_process(self, pid: int) -> None:
        """Asks for dense sequence blocks (one key, or a batch of two) in a loop; records what
        each call got, or that its outcome is unknown (SeqUncertain)."""
        from pyxia.tso.client import AsyncTsoClient
        from pyxia.tso.errors import SeqUncertain

        rng = random.Random(f"pyxia-robustness-tso-seq-{self.seed}-{pid}")
        k = pid % len(self.addresses)
        tso = AsyncTsoClient(self.addresses[k:] + self.addresses[:k], timeout_s=5.0, **self._tls_kw)
        try:
            while not self._stop.is_set():
                entries = [("seq-a", rng.randint(1, 5))]
                if rng.random() < 0.3:
                    entries.append(("seq-b", rng.randint(1, 3)))
                t0 = self.now()
                try:
                    blocks = await tso.get_seq_batch(entries)
                except SeqUncertain:
                    for key, n in entries:
                        self.tso_seq_calls.append(TsoSeqCall(pid, t0, self.now(), key, n, None))
                    continue
                except Exception:
                    # A definite refusal (nothing spent) or a timeout before sending.
                    await asyncio.sleep(0.1)
                    continue
                t1 = self.now()
                for b in blocks:
                    self.tso_seq_calls.append(TsoSeqCall(pid, t0, t1, b.key, b.count, b.start))
                if self.o.think_ms > 0:
                    await asyncio.sleep(rng.random() * self.o.think_ms / 1000.0)
        finally:
            await tso.close()

    async def _tso_lease_process(self, pid: int) -> None:
        """Two holder groups acquire, renew, supersede (a higher holder epoch) and release
        stamping leases; records every answer."""
        from pyxia.tso.client import AsyncTsoClient

        rng = random.Random(f"pyxia-robustness-tso-lease-{self.seed}-{pid}")
        tso = AsyncTsoClient(self.addresses, timeout_s=5.0, **self._tls_kw)
        epochs = {b"holder-0": 1, b"holder-1": 1}
        try:
            while not self._stop.is_set():
                holder = rng.choice(sorted(epochs))
                if rng.random() < 0.3:
                    epochs[holder] += 1  # supersede
                epoch = epochs[holder]
                t0, w0 = self.now(), _wall_ms()
                try:
                    lease = await tso.acquire_lease(holder, epoch, ttl_s=5.0)
                except Exception:
                    await asyncio.sleep(0.1)
                    continue
                self.tso_lease_calls.append(
                    TsoLeaseCall(
                        pid,
                        t0,
                        self.now(),
                        w0,
                        _wall_ms(),
                        "acquire",
                        holder,
                        epoch,
                        lease.lease_id,
                        lease.ts_upper_bound,
                        lease.expires_at_ms,
                    )
                )
                for _ in range(rng.randint(0, 2)):
                    await asyncio.sleep(0.1)
                    t0, w0 = self.now(), _wall_ms()
                    try:
                        r = await tso.renew_lease(lease.lease_id)
                    except Exception:
                        break
                    self.tso_lease_calls.append(
                        TsoLeaseCall(
                            pid,
                            t0,
                            self.now(),
                            w0,
                            _wall_ms(),
                            "renew",
                            holder,
                            epoch,
                            lease.lease_id,
                            r.ts_upper_bound,
                            r.expires_at_ms,
                        )
                    )
                if rng.random() < 0.4:
                    t0, w0 = self.now(), _wall_ms()
                    kind = "release"
                    try:
                        await tso.release_lease(lease.lease_id)
                    except Exception:
                        kind = "release-unknown"  # it may have happened
                    self.tso_lease_calls.append(
                        TsoLeaseCall(
                            pid, t0, self.now(), w0, _wall_ms(), kind, holder, epoch, lease.lease_id
                        )
                    )
                await asyncio.sleep(0.05)
        finally:
            await tso.close()

    # -- ephemeral owners -------------------------------------------------------------------------

    async def _owners(self) -> None:
        rng = random.Random(f"pyxia-robustness-owners-{self.seed}")
        i = 0
        running: list[asyncio.Task[None]] = []
        while not self._stop.is_set():
            running = [t for t in running if not t.done()]
            if len(running) < self.o.owners:
                i += 1
                running.append(
                    asyncio.get_running_loop().create_task(
                        self._owner(f"owner-{i}", rng.uniform(*self.o.owner_life_s))
                    )
                )
            try:
                await asyncio.wait_for(self._stop.wait(), rng.uniform(1.0, 4.0))
            except TimeoutError:
                pass
        for t in running:
            await asyncio.gather(t, return_exceptions=True)

    async def _owner(self, name: str, life: float) -> None:
        owner = EphemeralOwner(name, {})
        self.owners.append(owner)
        env = {DIAL_MAP_ENV: format_dial_map(self.client_dial_map), TEST_MODE_ENV: "1"}
        import os

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pyxia.robustness.owner",
            ",".join(self.addresses),
            f"{EPH_PREFIX}{name}",
            "3",
            str(self.o.session_timeout_s),
            *([str(self.tls.trusted_ca_file)] if self.tls is not None else []),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        self._owner_procs.append(proc)
        assert proc.stdout is not None

        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                d = json.loads(line)
                if "key" in d:
                    owner.keys[d["key"]] = int(d["shard"])

        reader = asyncio.get_running_loop().create_task(read())
        try:
            await asyncio.wait_for(self._stop.wait(), life)
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            proc.kill()
        await proc.wait()
        owner.died_at = self.now()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await self.poll_ephemerals(owner, until_stop=True)

    async def poll_ephemerals(
        self, owner: EphemeralOwner, until_stop: bool, timeout: float = 0
    ) -> None:
        """Reads the owner's records until each was seen gone (or the run stops / ``timeout``)."""
        assert self.aux is not None
        deadline = time.monotonic() + timeout
        pending = set(owner.keys) - {k for _, k, present in owner.observations if not present}
        while pending:
            if until_stop and self._stop.is_set():
                return
            if not until_stop and time.monotonic() > deadline:
                return
            for key in sorted(pending):
                t = self.now()
                try:
                    await self.aux.get(key)
                except KeyNotFound:
                    owner.observations.append((t, key, False))
                    pending.discard(key)
                except Exception:
                    continue
                else:
                    owner.observations.append((t, key, True))
            await asyncio.sleep(0.25)


def _batch(received: int, b: Any) -> Batch:
    return Batch(
        received,
        int(b.shard),
        int(b.offset),
        tuple(
            Notif(NOTIF_TYPES.get(int(n.type), str(n.type)), n.key, n.version_id)
            for n in b.notifications
        ),
    )


async def retry(
    fn: Callable[[], Awaitable[Any]], timeout: float, what: str
) -> Any:  # pragma: no cover - used by the runner
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except Exception as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {e}") from e
            await asyncio.sleep(0.3)
