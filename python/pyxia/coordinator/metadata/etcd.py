"""The etcd provider, over etcd's v3 gRPC-JSON gateway (``/v3/...`` HTTP+JSON,
served by every etcd >= 3.4 on its client port) with httpx.

Why the gateway: the PyPI ``etcd3`` client is unmaintained and its generated
stubs break on protobuf >= 4; generating our own stubs would mean vendoring
etcd's protos with their gogoproto and google.api imports. The gateway is
etcd's documented, stable JSON mapping of the same RPCs, async through httpx.

Keys (under ``prefix``): ``<prefix>/cluster-status`` holds the status protojson;
``<prefix>/coordinator-leader`` holds the leader's identity, attached to its lease.

- Version = the status key's ``mod_revision`` (NOT_EXISTS: ``create_revision == 0``).
- Election: grant a lease, then a txn creates the leader key with that lease iff it does not
  exist; else retry every ``campaign_interval``.
- ``store`` is one txn: compare the status key's revision AND the leader key's
  create_revision (our leadership, as a fence), then put. A failed compare is a
  conflict: MetadataBadVersion, and the signal fires at once (we step down and
  revoke our lease). A transport error with an unknown outcome raises
  ResourceUnavailable (a retry with the same expected version is safe: CAS).

The lease is kept alive from a thread of its own (:class:`LeaseKeeper`: its own event loop
and its own HTTP client to etcd), every ttl/3, so a coordinator whose event loop is busy for
seconds (a cold start of 10,000 shards) keeps its lease. That is safe because the lease is
not what fences the store: every write is a txn conditioned on our leader key's
create_revision, so a coordinator that is slow while its lease lives writes nothing a newer
leader could lose, and once the key is gone (lease revoked or expired, or deleted) its every
write fails. Leadership is lost (the signal fires, from the keeper's thread: the signal is
thread-safe and wakes the coordinator's loop; ``store`` refuses at once) when:

- a keepalive answers TTL 0 (the lease expired or was revoked);
- no keepalive succeeded for ttl - ttl/3 (etcd unreachable);
- the leader key is no longer ours (checked after every keepalive while leading); the lease
  is then revoked;
- the coordinator's event loop ran nothing for ``loop_stall_limit`` seconds (a call the keeper
  queued on it did not run): a process stuck for good must not hold the leadership for ever,
  so the lease is revoked and a standby takes over at once.

A lease whose keeper ended is never used again: the next campaign grants a new one.

Security (docs/security.md):
- TLS (``tls``, the coordinator's ``--etcd-tls-*`` flags): ``https://``
  endpoints, verified against the trusted CA (default: the system's), with a
  client certificate and key for etcd's ``--client-cert-auth`` (mutual TLS).
  With TLS options given, every endpoint is ``https``: an ``http://`` one is
  refused, never a silent plaintext downgrade. ``server_name`` is the name
  etcd's certificate must carry (default: the endpoint's host). Changed
  certificate, key or CA
  files are used by the next connections (checked once a second).
- etcd users (``username`` + ``password``): the provider authenticates
  (``/v3/auth/authenticate``) and sends the token on every request; an expired
  token is renewed and the request retried once (etcd refused it before
  executing it). etcd 3.4+ ignores a client certificate's CN on the JSON
  gateway and refuses gateway requests that carry a client certificate while
  auth is on, so password auth pairs with server-only TLS, and mutual TLS is
  the access control on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from pyxia.errors import MetadataBadVersion, ResourceUnavailable
from pyxia.proto.metadata_pb2 import ClusterStatus
from pyxia.security.tls import TLS12, TLS13, ClientTls, TlsOptions

from .codec import StatusEncoder, decode_status
from .provider import NOT_EXISTS, LeadershipLost, MetadataProvider, Version, counter_of

log = logging.getLogger("pyxia.coordinator.metadata.etcd")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _endpoint_url(endpoint: str, tls: bool = False) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        return f"{'https' if tls else 'http'}://{endpoint}"
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {endpoint!r}: use http:// or https://")
    if tls and scheme != "https":
        raise ValueError(f"etcd endpoint {endpoint!r} is plaintext while TLS options are given")
    return endpoint


_SSL_VERSIONS = {TLS12: ssl.TLSVersion.TLSv1_2, TLS13: ssl.TLSVersion.TLSv1_3}


def ssl_context(options: TlsOptions | None) -> ssl.SSLContext:
    """The client TLS context for etcd: the trusted CA (default: the system's), the client
    certificate for mutual TLS, TLS >= 1.2."""
    o = options or TlsOptions()
    ca = str(o.trusted_ca_file) if o.trusted_ca_file is not None else None
    ctx = ssl.create_default_context(cafile=ca)
    if o.cert_file is not None and o.key_file is not None:
        ctx.load_cert_chain(str(o.cert_file), str(o.key_file))
    ctx.minimum_version = _SSL_VERSIONS.get(o.min_version, ssl.TLSVersion.TLSv1_2)
    if o.max_version:
        ctx.maximum_version = _SSL_VERSIONS[o.max_version]
    if o.insecure_skip_verify:  # tests only; ClientTls logs the warning
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _InvalidToken(Exception):
    """etcd refused the auth token (expired, or auth was re-enabled)."""


DEFAULT_LEASE_TTL = 5
"""Seconds: a standby takes over within about this long after the leader died."""


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _Gateway:
    """The HTTP client of one event loop to etcd's gateway: endpoint failover, the auth token
    (renewed once when etcd refuses it), a new TLS context once the TLS files changed. Used
    from the loop that created it only."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        tls: ClientTls | None,
        extensions: dict[str, Any],
        credentials: tuple[str, str] | None,
        request_timeout: float,
    ) -> None:
        self.endpoints = endpoints
        self._tls = tls
        self._extensions = extensions
        self._credentials = credentials
        self._request_timeout = request_timeout
        self._token: str | None = None
        self._tls_generation = 0
        self._endpoint = 0
        self._retired: set[asyncio.Task[None]] = set()  # clients closed once idle
        self._client: httpx.AsyncClient | None = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        # trust_env=False: etcd is cluster-internal; an HTTP proxy picked up
        # from the environment would only add a hop to the lease's timing.
        verify: ssl.SSLContext | bool = True
        if self._tls is not None:
            self._tls_generation = self._tls.generation()
            try:
                verify = ssl_context(self._tls.options)
            except (OSError, ssl.SSLError) as e:
                raise ResourceUnavailable(f"etcd TLS files: {e}") from e
        return httpx.AsyncClient(timeout=self._request_timeout, trust_env=False, verify=verify)

    def _current_client(self) -> httpx.AsyncClient:
        """The client; a new one (new TLS context) once the TLS files changed. The old one is
        closed when its requests had time to finish."""
        client = self._client
        if client is None:
            raise ResourceUnavailable("etcd metadata provider is closed")
        if self._tls is not None and self._tls.generation() != self._tls_generation:
            try:
                fresh = self._new_client()
            except ResourceUnavailable as e:  # a half-written file: keep the old context
                log.warning("etcd TLS files changed but do not load", extra={"error": str(e)})
                self._tls_generation = self._tls.generation()
                return client
            self._client = fresh
            task = asyncio.create_task(self._close_later(client), name="etcd-retire-client")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.info("etcd TLS files changed: new connections use them")
            return fresh
        return client

    async def _close_later(self, client: httpx.AsyncClient) -> None:
        try:
            await asyncio.sleep(2 * self._request_timeout)
        finally:
            await client.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self) -> None:
        assert self._credentials is not None
        name, password = self._credentials
        self._token = None
        data = await self.call(
            "/v3/auth/authenticate",
            {"name": name, "password": password},
            idempotent=True,
            authenticated=False,
        )
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ResourceUnavailable("etcd /v3/auth/authenticate: no token in the answer")
        self._token = token

    async def call(
        self, path: str, body: dict[str, Any], *, idempotent: bool, authenticated: bool = True
    ) -> dict[str, Any]:
        """POSTs to the gateway, failing over between endpoints while the
        request surely was not sent (or is idempotent)."""
        if authenticated and self._credentials is not None and self._token is None:
            await self._authenticate()
        try:
            return await self._post(path, body, idempotent=idempotent)
        except _InvalidToken:
            if not authenticated or self._credentials is None:
                raise ResourceUnavailable(f"etcd {path}: invalid auth token") from None
        # The token expired: etcd refused the request without executing it.
        await self._authenticate()
        try:
            return await self._post(path, body, idempotent=idempotent)
        except _InvalidToken:
            raise ResourceUnavailable(f"etcd {path}: invalid auth token") from None

    async def _post(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        client = self._current_client()
        errors: list[str] = []
        n = len(self.endpoints)
        for attempt in range(n):
            i = (self._endpoint + attempt) % n
            url = self.endpoints[i] + path
            try:
                resp = await client.post(
                    url, json=body, headers=self._headers(), extensions=self._extensions
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                errors.append(f"{url}: {e!r}")
                continue
            except (httpx.TransportError, ssl.SSLError) as e:
                # ssl.SSLError: a TLS 1.3 server refuses a client certificate after the
                # client's side of the handshake is done, and httpcore lets the alert through.
                if idempotent:
                    errors.append(f"{url}: {e!r}")
                    continue
                raise ResourceUnavailable(f"etcd {path}: outcome unknown: {e!r}") from e
            self._endpoint = i
            # Streaming RPCs (keepalive) answer newline-delimited JSON.
            text = resp.text.strip().split("\n", 1)[0] if resp.text else "{}"
            try:
                data: dict[str, Any] = json.loads(text)
            except ValueError as e:
                raise ResourceUnavailable(f"etcd {path}: bad response {text[:200]!r}") from e
            if resp.status_code != 200 or "error" in data:
                message = data.get("message") or data.get("error") or resp.reason_phrase
                if "invalid auth token" in str(message):
                    raise _InvalidToken(str(message))
                raise ResourceUnavailable(f"etcd {path}: {message} (code {data.get('code')})")
            return data
        raise ResourceUnavailable("no etcd endpoint reachable: " + "; ".join(errors))

    async def range(self, key: bytes) -> dict[str, Any] | None:
        data = await self.call("/v3/kv/range", {"key": _b64(key)}, idempotent=True)
        kvs: list[dict[str, Any]] = data.get("kvs") or []
        return kvs[0] if kvs else None

    async def revoke(self, lease: int) -> None:
        """Revokes ``lease`` (its keys go at once); an error is logged, not raised: the lease
        then ends at its TTL."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)
        except ResourceUnavailable as e:
            log.info("etcd lease revoke failed", extra={"lease": lease, "error": str(e)})

    async def aclose(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            for task in list(self._retired):
                task.cancel()
            for task in list(self._retired):
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class LeaseKeeper:
    """Keeps one etcd lease alive from a thread of its own, with its own event loop and its
    own :class:`_Gateway`, so that a busy coordinator loop cannot starve the keepalives.

    Lifecycle: ``start()`` starts the thread; ``attach(lost, leader_revision)`` (once the
    campaign won) makes it watch the leader key and fire ``lost`` on any loss; ``stop()``
    ends the thread (cancelling a request in flight) and waits for it; ``join()`` waits for
    a keeper that ended on its own. ``done`` is set,
    before any signal fires, once the lease must not be used again (lost or stopping):
    ``attach`` after that refuses, so a campaign that raced the loss does not lead."""

    def __init__(
        self,
        lease: int,
        *,
        ttl: int,
        gateway: Callable[[], _Gateway],
        leader_key: bytes,
        owner_loop: asyncio.AbstractEventLoop,
        loop_stall_limit: float,
    ) -> None:
        self.lease = lease
        self._ttl = ttl
        self._make_gateway = gateway
        self._leader_key = leader_key
        self._owner_loop = owner_loop
        self._loop_stall_limit = loop_stall_limit
        self._lock = threading.Lock()
        self._done = False
        self._lost: LeadershipLost | None = None
        self._leader_revision = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ping_sent: float | None = None  # a call queued on the owner loop, not yet run
        self._thread = threading.Thread(
            target=self._main, name=f"etcd-lease-{lease:x}", daemon=True
        )

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> None:
        self._thread.start()

    def attach(self, lost: LeadershipLost, leader_revision: int) -> bool:
        """From now on a loss fires ``lost``; False if the lease is already done."""
        with self._lock:
            if self._done:
                return False
            self._lost = lost
            self._leader_revision = leader_revision
            return True

    async def stop(self) -> None:
        """Ends the keepalives (the lease itself is left to the caller) and waits for the
        thread to exit."""
        with self._lock:
            self._done = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed: it ended
                loop.call_soon_threadsafe(task.cancel)
        await self.join()

    async def join(self) -> None:
        """Waits for the thread to exit (after ``stop``, or once ``done``: it then ends on its
        own, after its last revoke)."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            with self._lock:
                if self._done:
                    return
                self._loop = loop
                self._task = loop.create_task(self._run())
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self) -> None:
        gateway: _Gateway | None = None
        try:
            gateway = self._make_gateway()
            await self._keep_alive(gateway)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must not leave a leader whose lease lapses unseen
            log.exception("etcd lease keeper failed")
            self._lose(f"etcd lease keeper failed: {e!r}")
        finally:
            if gateway is not None:
                await gateway.aclose()

    async def _keep_alive(self, gateway: _Gateway) -> None:
        interval = self._ttl / 3
        last_ok = time.monotonic()
        while not self._done:
            await asyncio.sleep(interval)
            if self._done:
                return
            stalled = self._owner_stalled()
            if stalled is not None:
                self._lose(stalled)
                await gateway.revoke(self.lease)
                return
            sent = time.monotonic()
            try:
                # Bounded, so a hung endpoint cannot outlast the lease unnoticed.
                data = await asyncio.wait_for(
                    gateway.call("/v3/lease/keepalive", {"ID": str(self.lease)}, idempotent=True),
                    interval,
                )
                ttl = int((data.get("result") or {}).get("TTL", 0))
                if ttl <= 0:
                    self._lose("etcd lease expired or revoked")
                    return
                last_ok = sent
                if self._lost is not None and not self._done:
                    kv = await asyncio.wait_for(gateway.range(self._leader_key), interval)
                    if kv is None or int(kv.get("create_revision", 0)) != self._leader_revision:
                        self._lose("etcd leader key changed")
                        await gateway.revoke(self.lease)
                        return
            except (ResourceUnavailable, TimeoutError) as e:
                if time.monotonic() - last_ok >= self._ttl - interval:
                    self._lose(f"etcd lease could not be kept alive: {e!r}")
                    return

    def _owner_stalled(self) -> str | None:
        """Queues a no-op on the coordinator's loop (if none is pending) and says why
        leadership must go if the one queued earlier has not run for ``loop_stall_limit``."""
        now = time.monotonic()
        sent = self._ping_sent
        if sent is None:
            self._ping_sent = now
            try:
                self._owner_loop.call_soon_threadsafe(self._pong)
            except RuntimeError:  # the coordinator's loop is closed
                return "the coordinator's event loop is closed"
            return None
        if now - sent >= self._loop_stall_limit:
            return f"the coordinator's event loop ran nothing for {now - sent:.1f} s"
        return None

    def _pong(self) -> None:
        self._ping_sent = None

    def _lose(self, reason: str) -> None:
        """The lease is done; fires the leadership-lost signal if we lead (thread-safe)."""
        with self._lock:
            self._done = True
            lost = self._lost
        if lost is not None and lost.fire(reason):
            log.warning("etcd leadership lost", extra={"reason": reason})
        elif lost is None:
            log.info("etcd lease lost before leading", extra={"reason": reason})


class EtcdMetadataProvider(MetadataProvider):
    name = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        prefix: str = "/pyxia",
        identity: str | None = None,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        campaign_interval: float = 0.5,
        request_timeout: float = 5.0,
        tls: TlsOptions | None = None,
        username: str | None = None,
        password: str | None = None,
        loop_stall_limit: float = 30.0,
    ) -> None:
        super().__init__()
        self._encoder = StatusEncoder()  # reuses the JSON of unchanged shards
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._tls: ClientTls | None = tls.client() if tls is not None else None
        self.endpoints = [_endpoint_url(e, self._tls is not None) for e in endpoints if e.strip()]
        if (username is None) != (password is None):
            raise ValueError("etcd authentication needs both a user name and a password")
        self._credentials = None if username is None else (username, password or "")
        # --etcd-tls-server-name: the name etcd's certificate must carry (also sent as SNI).
        server_name = tls.server_name if tls is not None else None
        self._extensions: dict[str, Any] = {"sni_hostname": server_name} if server_name else {}
        if not self.endpoints:
            raise ValueError("etcd metadata provider needs at least one endpoint")
        if lease_ttl < 2:
            raise ValueError("etcd lease_ttl must be at least 2 seconds")
        if loop_stall_limit <= 0:
            raise ValueError("etcd loop_stall_limit must be positive")
        prefix = prefix.rstrip("/")
        self.status_key = f"{prefix}/cluster-status".encode()
        self.leader_key = f"{prefix}/coordinator-leader".encode()
        self.identity = identity or default_identity()
        self._ttl = lease_ttl
        self._campaign_interval = campaign_interval
        self._request_timeout = request_timeout
        self._loop_stall_limit = loop_stall_limit
        self._gateway: _Gateway | None = None
        self._closing = asyncio.Event()
        self._keeper: LeaseKeeper | None = None  # keeps our current lease alive
        self._leader_revision = 0  # create_revision of our leader key
        self._lost: LeadershipLost | None = None

    # -- transport ---------------------------------------------------------------

    def _new_gateway(self) -> _Gateway:
        return _Gateway(
            self.endpoints,
            tls=self._tls,
            extensions=self._extensions,
            credentials=self._credentials,
            request_timeout=self._request_timeout,
        )

    async def start(self) -> None:
        self._check_open()
        if self._gateway is None:
            self._gateway = self._new_gateway()

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        gateway = self._gateway
        if gateway is None:
            raise ResourceUnavailable("etcd metadata provider is not started")
        return await gateway.call(path, body, idempotent=idempotent)

    # -- the contract ----------------------------------------------------------

    async def get(self) -> tuple[ClusterStatus | None, Version]:
        await self.start()
        assert self._gateway is not None
        kv = await self._gateway.range(self.status_key)
        if kv is None:
            return None, NOT_EXISTS
        where = f"etcd key {self.status_key.decode()}"
        return decode_status(_unb64(kv.get("value", "")), where), Version(kv["mod_revision"])

    async def store(self, status: ClusterStatus, expected_version: Version) -> Version:
        await self.start()
        lost = self._lost
        if lost is None or lost.fired:
            raise MetadataBadVersion(f"etcd: {self.identity} is not the leading coordinator")
        if expected_version == NOT_EXISTS:
            status_cmp = {"target": "CREATE", "create_revision": "0"}
        else:
            status_cmp = {"target": "MOD", "mod_revision": str(counter_of(expected_version))}
        body = {
            "compare": [
                {"key": _b64(self.status_key), "result": "EQUAL", **status_cmp},
                {
                    "key": _b64(self.leader_key),
                    "result": "EQUAL",
                    "target": "CREATE",
                    "create_revision": str(self._leader_revision),
                },
            ],
            "success": [
                {
                    "request_put": {
                        "key": _b64(self.status_key),
                        "value": _b64(self._encoder.encode(status).encode()),
                    }
                }
            ],
            "failure": [
                {"request_range": {"key": _b64(self.status_key)}},
                {"request_range": {"key": _b64(self.leader_key)}},
            ],
        }
        data = await self._call("/v3/kv/txn", body, idempotent=False)
        if data.get("succeeded"):
            return Version(data["header"]["revision"])
        found, leader = self._describe_failure(data)
        reason = f"etcd compare failed: status version {found}, leader key {leader}"
        await self._step_down(lost, reason)
        raise MetadataBadVersion(
            f"metadata bad version in etcd: expected {expected_version}, found {found}"
            f" (leader key {leader})"
        )

    def _describe_failure(self, data: dict[str, Any]) -> tuple[str, str]:
        kvs: list[list[dict[str, Any]]] = []
        for r in data.get("responses") or []:
            kvs.append((r.get("response_range") or {}).get("kvs") or [])
        while len(kvs) < 2:
            kvs.append([])
        found = kvs[0][0]["mod_revision"] if kvs[0] else NOT_EXISTS.token
        if not kvs[1]:
            leader = "absent"
        else:
            kv = kvs[1][0]
            owner = _unb64(kv.get("value", "")).decode(errors="replace")
            mine = int(kv.get("create_revision", 0)) == self._leader_revision
            leader = f"held by {owner!r}" + ("" if mine else " (not ours)")
        return found, leader

    # -- leadership --------------------------------------------------------------

    async def wait_to_become_leader(self) -> LeadershipLost | None:
        await self.start()
        while True:
            self._check_open()
            current = self._lost
            if current is not None and not current.fired:
                return current
            try:
                keeper = await self._ensure_lease()
                won = await self._campaign(keeper)
            except ResourceUnavailable as e:
                log.warning("etcd campaign failed", extra={"error": str(e)})
                won = None
            self._check_open()
            if won is not None:
                return won
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._campaign_interval)

    async def _campaign(self, keeper: LeaseKeeper) -> LeadershipLost | None:
        key = _b64(self.leader_key)
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [
                    {
                        "request_put": {
                            "key": key,
                            "value": _b64(self.identity.encode()),
                            "lease": str(keeper.lease),
                        }
                    }
                ],
                "failure": [{"request_range": {"key": key}}],
            },
            idempotent=False,
        )
        if not data.get("succeeded") or self._closed or self._keeper is not keeper:
            return None
        revision = int(data["header"]["revision"])
        lost = LeadershipLost()
        # Refused if the lease ended meanwhile: the key went (or goes) with it.
        if not keeper.attach(lost, revision):
            return None
        self._leader_revision = revision
        self._lost = lost
        log.info("etcd: leading coordinator", extra={"identity": self.identity})
        return lost

    async def _ensure_lease(self) -> LeaseKeeper:
        """Our lease, kept alive by its keeper; a new one once the last one is done."""
        keeper = self._keeper
        if keeper is not None and not keeper.done:
            return keeper
        if keeper is not None:
            self._keeper = None
            await keeper.join()  # it ended or is ending (its revoke): one keeper at a time
        data = await self._call("/v3/lease/grant", {"TTL": self._ttl}, idempotent=False)
        lease = int(data["ID"])
        self._check_open()
        keeper = LeaseKeeper(
            lease,
            ttl=self._ttl,
            gateway=self._new_gateway,
            leader_key=self.leader_key,
            owner_loop=asyncio.get_running_loop(),
            loop_stall_limit=self._loop_stall_limit,
        )
        self._keeper = keeper
        keeper.start()
        return keeper

    async def _step_down(self, lost: LeadershipLost, reason: str) -> None:
        """Fires the signal, then revokes our lease so our leader key goes."""
        if lost.fire(reason):
            log.warning("etcd leadership lost", extra={"reason": reason})
        if self._lost is lost:
            await self._revoke()

    async def _revoke(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        await keeper.stop()
        if self._gateway is not None:
            await self._gateway.revoke(keeper.lease)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._lost is not None:
            self._lost.fire("etcd metadata provider closed")
        try:
            await self._revoke()  # releases the leader key at once
        finally:
            gateway, self._gateway = self._gateway, None
            if gateway is not None:
                await gateway.aclose()
