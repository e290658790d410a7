"""The kubernetes provider, with the official client's asyncio flavour
(``kubernetes.aio``).

- Status: ConfigMap ``status_name``, data key ``status`` = protojson.
  Version = the ConfigMap's ``resourceVersion``; ``store`` replaces it with
  ``metadata.resourceVersion = expected`` (create when NOT_EXISTS), so the API
  server's optimistic concurrency is the compare-and-set: a 409 Conflict (or
  AlreadyExists) is MetadataBadVersion and fires the leadership-lost signal.
- Leadership: a ``coordination.k8s.io/v1`` Lease ``lease_name``, acquired and
  renewed as client-go's leader election does: a contender takes the lease when
  its holder is empty or has not renewed it for ``lease_duration`` measured on
  the contender's own monotonic clock since it last saw the record change
  (no clock-skew assumptions); each write is a resourceVersion CAS. The leader
  renews every ``retry_period``; it has lost leadership when the Lease shows
  another holder, or when no renewal succeeded for ``renew_deadline``
  (< ``lease_duration``, so it steps down before anyone can take over).
  ``close()`` releases the lease (holder cleared) so a standby takes over at once.

Security (docs/security.md): the API server is reached with the client's TLS as
the in-cluster config (service account token, the cluster CA) or the kubeconfig
sets it up; pyxia never turns verification off. A kubeconfig that does
(``insecure-skip-tls-verify: true``), or a plaintext ``http://`` API server
that is not on loopback, gets one warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException

from pyxia.errors import MetadataBadVersion, ResourceUnavailable
from pyxia.proto.metadata_pb2 import ClusterStatus

from .codec import decode_status, encode_status
from .etcd import default_identity
from .provider import NOT_EXISTS, LeadershipLost, MetadataProvider, Version

log = logging.getLogger("pyxia.coordinator.metadata.kubernetes")

STATUS_DATA_KEY = "status"
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _now() -> datetime:
    """A MicroTime: always with a fractional part, which the API server requires."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


def _warn_if_unverified(cfg: k8s.Configuration) -> None:
    """One warning when the API server connection is not verified TLS."""
    host = str(cfg.host or "")
    if not cfg.verify_ssl:
        log.warning(
            "kubernetes: the API server's certificate is NOT verified "
            "(insecure-skip-tls-verify in the kubeconfig): anyone on the path can impersonate it",
            extra={"host": host},
        )
    elif host.startswith("http://"):
        hostname = host[len("http://") :].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if hostname not in ("localhost", "127.0.0.1", "::1"):
            log.warning("kubernetes: the API server is plaintext http", extra={"host": host})


class KubernetesMetadataProvider(MetadataProvider):
    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str = "default",
        status_name: str = "oxia-cluster-status",
        lease_name: str = "pyxia-coordinator",
        identity: str | None = None,
        host: str | None = None,
        kubeconfig: str | None = None,
        api_client: k8s.ApiClient | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        request_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.namespace = namespace
        self.status_name = status_name
        self.lease_name = lease_name
        self.identity = identity or default_identity()
        self._host = host
        self._kubeconfig = kubeconfig
        self._api: k8s.ApiClient | None = api_client
        self._own_api = api_client is None
        self._core: k8s.CoreV1Api | None = None
        self._coord: k8s.CoordinationV1Api | None = None
        self._lease_duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._timeout = request_timeout
        self._closing = asyncio.Event()
        self._start_lock = asyncio.Lock()
        # The last lease record seen, and when (monotonic) it was first seen.
        self._observed: tuple[str, str, str] | None = None  # holder, renewTime, resourceVersion
        self._observed_at = 0.0
        self._lost: LeadershipLost | None = None
        self._renewer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._check_open()
        if self._core is not None:
            return
        async with self._start_lock:
            if self._core is not None:
                return
            if self._api is None:
                cfg = k8s.Configuration()
                if self._host is not None:
                    cfg.host = self._host
                elif self._kubeconfig is not None:
                    await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=self._kubeconfig, client_configuration=cfg
                    )
                else:
                    try:
                        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                            client_configuration=cfg
                        )
                    except k8s_config.ConfigException:
                        await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                            client_configuration=cfg
                        )
                _warn_if_unverified(cfg)
                self._api = k8s.ApiClient(cfg)
            self._api.user_agent = f"pyxia-coordinator/{self.identity}"
            self._coord = k8s.CoordinationV1Api(self._api)
            self._core = k8s.CoreV1Api(self._api)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        lost = self._lost
        was_leading = lost is not None and not lost.fired
        if lost is not None:
            lost.fire("kubernetes metadata provider closed")
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if was_leading:
                with contextlib.suppress(ApiException, *_TRANSPORT_ERRORS):
                    await self._release()
        finally:
            if self._api is not None and self._own_api:
                await self._api.close()  # type: ignore[no-untyped-call]

    # -- status ----------------------------------------------------------------

    async def get(self) -> tuple[ClusterStatus | None, Version]:
        await self.start()
        assert self._core is not None
        try:
            cm = await self._core.read_namespaced_config_map(
                self.status_name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                return None, NOT_EXISTS
            raise ResourceUnavailable(
                f"kubernetes: reading ConfigMap: {e.status} {e.reason}"
            ) from e
        except _TRANSPORT_ERRORS as e:
            raise ResourceUnavailable(f"kubernetes: reading ConfigMap: {e!r}") from e
        text = (cm.data or {}).get(STATUS_DATA_KEY)
        version = (cm.metadata.resource_version if cm.metadata else None) or ""
        if text is None:
            return None, Version(version)  # exists without a status: store with this version
        where = f"ConfigMap {self.namespace}/{self.status_name}"
        return decode_status(text, where), Version(version)

    async def store(self, status: ClusterStatus, expected_version: Version) -> Version:
        await self.start()
        assert self._core is not None
        lost = self._lost
        if lost is None or lost.fired:
            raise MetadataBadVersion(f"kubernetes: {self.identity} is not the leading coordinator")
        body = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(
                name=self.status_name,
                namespace=self.namespace,
                resource_version=None if expected_version == NOT_EXISTS else expected_version.token,
            ),
            data={STATUS_DATA_KEY: encode_status(status, indent=2)},
        )
        try:
            if expected_version == NOT_EXISTS:
                cm = await self._core.create_namespaced_config_map(
                    self.namespace, body, _request_timeout=self._timeout
                )
            else:
                cm = await self._core.replace_namespaced_config_map(
                    self.status_name, self.namespace, body, _request_timeout=self._timeout
                )
        except ApiException as e:
            if e.status in (404, 409):
                what = "conflict" if e.status == 409 else "not found"
                if lost.fire(f"kubernetes ConfigMap {what} on store"):
                    log.warning("kubernetes leadership lost", extra={"reason": what})
                raise MetadataBadVersion(
                    f"metadata bad version in ConfigMap {self.namespace}/{self.status_name}:"
                    f" expected {expected_version} ({e.status} {e.reason})"
                ) from e
            raise ResourceUnavailable(
                f"kubernetes: storing ConfigMap: {e.status} {e.reason}"
            ) from e
        except _TRANSPORT_ERRORS as e:
            raise ResourceUnavailable(f"kubernetes: storing ConfigMap: {e!r}") from e
        return Version((cm.metadata.resource_version if cm.metadata else None) or "")

    # -- leadership --------------------------------------------------------------

    async def wait_to_become_leader(self) -> LeadershipLost | None:
        await self.start()
        while True:
            self._check_open()
            current = self._lost
            if current is not None and not current.fired:
                return current
            try:
                acquired = await self._try_acquire_or_renew()
            except (ApiException, *_TRANSPORT_ERRORS) as e:
                log.warning("kubernetes lease acquisition failed", extra={"error": repr(e)})
                acquired = False
            self._check_open()
            if acquired:
                lost = LeadershipLost()
                self._lost = lost
                self._renewer = asyncio.create_task(self._renew_loop(lost), name="lease-renew")
                log.info("kubernetes: leading coordinator", extra={"identity": self.identity})
                return lost
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._retry_period)

    def _observe(self, lease: k8s.V1Lease) -> None:
        spec = lease.spec or k8s.V1LeaseSpec()
        record = (
            spec.holder_identity or "",
            spec.renew_time.isoformat() if spec.renew_time else "",
            (lease.metadata.resource_version if lease.metadata else None) or "",
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    async def _try_acquire_or_renew(self) -> bool:
        """One client-go style attempt; True if we hold the lease afterwards.
        Raises _LeaseTaken when another holder is seen while we lead."""
        assert self._coord is not None
        now = _now()
        duration = max(1, round(self._lease_duration))
        try:
            lease = await self._coord.read_namespaced_lease(
                self.lease_name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status != 404:
                raise
            fresh = k8s.V1Lease(
                api_version="coordination.k8s.io/v1",
                kind="Lease",
                metadata=k8s.V1ObjectMeta(name=self.lease_name, namespace=self.namespace),
                spec=k8s.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=duration,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                created = await self._coord.create_namespaced_lease(
                    self.namespace, fresh, _request_timeout=self._timeout
                )
            except ApiException as e2:
                if e2.status == 409:
                    return False
                raise
            self._observe(created)
            return True
        self._observe(lease)
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity or ""
        if holder and holder != self.identity:
            held_for = spec.lease_duration_seconds or duration
            if self._lost is not None and not self._lost.fired:
                raise _LeaseTaken(holder)
            if time.monotonic() < self._observed_at + held_for:
                return False  # held by someone else, not expired
        lease.spec = k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=duration,
            acquire_time=spec.acquire_time if holder == self.identity else now,
            renew_time=now,
            lease_transitions=(spec.lease_transitions or 0) + (0 if holder == self.identity else 1),
        )
        try:
            updated = await self._coord.replace_namespaced_lease(
                self.lease_name, self.namespace, lease, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 409:  # someone wrote the lease since we read it
                return False
            raise
        self._observe(updated)
        return True

    async def _renew_loop(self, lost: LeadershipLost) -> None:
        last_renewed = time.monotonic()
        while not lost.fired and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._retry_period)
            if lost.fired or self._closed:
                return
            left = self._renew_deadline - (time.monotonic() - last_renewed)
            try:
                # Bounded by the renew deadline: a hung API server cannot keep
                # us believing we lead.
                if await asyncio.wait_for(self._try_acquire_or_renew(), max(0.01, left)):
                    last_renewed = time.monotonic()
            except _LeaseTaken as e:
                if lost.fire(f"kubernetes lease taken by {e.holder}"):
                    log.warning("kubernetes leadership lost", extra={"holder": e.holder})
                return
            except (ApiException, *_TRANSPORT_ERRORS) as e:
                log.warning("kubernetes lease renewal failed", extra={"error": repr(e)})
            if time.monotonic() - last_renewed >= self._renew_deadline:
                if lost.fire("kubernetes lease not renewed within the renew deadline"):
                    log.warning("kubernetes leadership lost", extra={"reason": "renew deadline"})
                return

    async def _release(self) -> None:
        """Clears the holder (if still us) so a standby need not wait for expiry."""
        assert self._coord is not None
        lease = await self._coord.read_namespaced_lease(
            self.lease_name, self.namespace, _request_timeout=self._timeout
        )
        spec = lease.spec
        if spec is None or spec.holder_identity != self.identity:
            return
        spec.holder_identity = None
        spec.lease_duration_seconds = 1
        spec.renew_time = _now()
        await self._coord.replace_namespaced_lease(
            self.lease_name, self.namespace, lease, _request_timeout=self._timeout
        )


class _LeaseTaken(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder
