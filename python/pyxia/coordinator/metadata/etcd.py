"""The etcd provider, over etcd's v3 gRPC-JSON gateway (``/v3/...`` HTTP+JSON,
served by every etcd >= 3.4 on its client port) with httpx.

Why the gateway: the PyPI ``etcd3`` client is unmaintained and its generated
stubs break on protobuf >= 4; generating our own stubs would mean vendoring
etcd's protos with their gogoproto and google.api imports. The gateway is
etcd's documented, stable JSON mapping of the same RPCs, async through httpx.

Keys (under ``prefix``): ``<prefix>/cluster-status`` holds the status protojson;
``<prefix>/coordinator-leader`` holds the leader's identity, attached to its lease.

- Version = the status key's ``mod_revision`` (NOT_EXISTS: ``create_revision == 0``).
- Election: grant a lease (kept alive every ttl/3), then a txn creates the
  leader key with that lease iff it does not exist; else retry every
  ``campaign_interval``.
- ``store`` is one txn: compare the status key's revision AND the leader key's
  create_revision (our leadership, as a fence), then put. A failed compare is a
  conflict: MetadataBadVersion, and the signal fires at once (we step down and
  revoke our lease). A transport error with an unknown outcome raises
  ResourceUnavailable (a retry with the same expected version is safe: CAS).
- Leadership is lost when a keepalive answers TTL 0 (lease expired or revoked),
  when no keepalive succeeded for ttl - ttl/3, or when the leader key is no
  longer ours (checked on every keepalive).

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
import time
import uuid
from collections.abc import Sequence
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


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class EtcdMetadataProvider(MetadataProvider):
    name = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        prefix: str = "/pyxia",
        identity: str | None = None,
        lease_ttl: int = 10,
        campaign_interval: float = 1.0,
        request_timeout: float = 5.0,
        tls: TlsOptions | None = None,
        username: str | None = None,
        password: str | None = None,
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
        self._extensions = {"sni_hostname": server_name} if server_name else {}
        self._token: str | None = None
        if not self.endpoints:
            raise ValueError("etcd metadata provider needs at least one endpoint")
        if lease_ttl < 2:
            raise ValueError("etcd lease_ttl must be at least 2 seconds")
        prefix = prefix.rstrip("/")
        self.status_key = f"{prefix}/cluster-status".encode()
        self.leader_key = f"{prefix}/coordinator-leader".encode()
        self.identity = identity or default_identity()
        self._ttl = lease_ttl
        self._campaign_interval = campaign_interval
        self._request_timeout = request_timeout
        self._client: httpx.AsyncClient | None = None
        self._tls_generation = 0
        self._retired: set[asyncio.Task[None]] = set()  # clients closed once idle
        self._endpoint = 0
        self._closing = asyncio.Event()
        self._lease_id: int | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._leader_revision = 0  # create_revision of our leader key
        self._lost: LeadershipLost | None = None

    # -- transport ---------------------------------------------------------------

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

    async def start(self) -> None:
        self._check_open()
        if self._client is None:
            self._client = self._new_client()

    def _current_client(self) -> httpx.AsyncClient:
        """The client; a new one (new TLS context) once the TLS files changed. The old one is
        closed when its requests had time to finish."""
        client = self._client
        if client is None:
            raise ResourceUnavailable("etcd metadata provider is not started")
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
        data = await self._call(
            "/v3/auth/authenticate",
            {"name": name, "password": password},
            idempotent=True,
            authenticated=False,
        )
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ResourceUnavailable("etcd /v3/auth/authenticate: no token in the answer")
        self._token = token

    async def _call(
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

    async def _range(self, key: bytes) -> dict[str, Any] | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)}, idempotent=True)
        kvs: list[dict[str, Any]] = data.get("kvs") or []
        return kvs[0] if kvs else None

    # -- the contract ----------------------------------------------------------

    async def get(self) -> tuple[ClusterStatus | None, Version]:
        await self.start()
        kv = await self._range(self.status_key)
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
                lease = await self._ensure_lease()
                won = await self._campaign(lease)
            except ResourceUnavailable as e:
                log.warning("etcd campaign failed", extra={"error": str(e)})
                won = None
            self._check_open()
            if won is not None:
                return won
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._campaign_interval)

    async def _campaign(self, lease: int) -> LeadershipLost | None:
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
                            "lease": str(lease),
                        }
                    }
                ],
                "failure": [{"request_range": {"key": key}}],
            },
            idempotent=False,
        )
        if not data.get("succeeded") or self._closed or self._lease_id != lease:
            return None
        self._leader_revision = int(data["header"]["revision"])
        lost = LeadershipLost()
        self._lost = lost
        log.info("etcd: leading coordinator", extra={"identity": self.identity})
        return lost

    async def _ensure_lease(self) -> int:
        if self._lease_id is not None:
            return self._lease_id
        data = await self._call("/v3/lease/grant", {"TTL": self._ttl}, idempotent=False)
        lease = int(data["ID"])
        self._check_open()
        self._lease_id = lease
        self._keepalive = asyncio.create_task(self._keep_alive(lease), name="etcd-keepalive")
        return lease

    async def _keep_alive(self, lease: int) -> None:
        interval = self._ttl / 3
        last_ok = time.monotonic()
        while not self._closed and self._lease_id == lease:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)
            if self._closed or self._lease_id != lease:
                return
            sent = time.monotonic()
            try:
                # Bounded, so a hung endpoint cannot outlast the lease unnoticed.
                data = await asyncio.wait_for(
                    self._call("/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True),
                    interval,
                )
                ttl = int((data.get("result") or {}).get("TTL", 0))
                if ttl <= 0:
                    await self._lease_gone(lease, "etcd lease expired or revoked")
                    return
                last_ok = sent
                lost = self._lost
                if lost is not None and not lost.fired and self._lease_id == lease:
                    kv = await asyncio.wait_for(self._range(self.leader_key), interval)
                    if kv is None or int(kv.get("create_revision", 0)) != self._leader_revision:
                        await self._step_down(lost, "etcd leader key changed")
                        return
            except (ResourceUnavailable, TimeoutError) as e:
                if time.monotonic() - last_ok >= self._ttl - interval:
                    await self._lease_gone(lease, f"etcd lease could not be kept alive: {e!r}")
                    return

    async def _lease_gone(self, lease: int, reason: str) -> None:
        if self._lease_id != lease:
            return
        self._lease_id = None
        lost = self._lost
        if lost is not None and lost.fire(reason):
            log.warning("etcd leadership lost", extra={"reason": reason})

    async def _step_down(self, lost: LeadershipLost, reason: str) -> None:
        """Fires the signal, then revokes our lease so our leader key goes."""
        if lost.fire(reason):
            log.warning("etcd leadership lost", extra={"reason": reason})
        if self._lost is lost:
            await self._revoke()

    async def _revoke(self) -> None:
        lease, self._lease_id = self._lease_id, None
        task, self._keepalive = self._keepalive, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if lease is not None:
            with contextlib.suppress(ResourceUnavailable):
                await self._call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)

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
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()
            for task in list(self._retired):
                task.cancel()
            for task in list(self._retired):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
