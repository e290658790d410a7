"""Only members of the cluster call the internal port: the check, and the tools' side of it.

A data server's internal port serves coordination (``replication.OxiaCoordination``: NewTerm,
BecomeLeader, DeleteShard, Handshake, PushShardAssignments, ...), replication
(``replication.OxiaLogReplication``: Replicate, Truncate, SendSnapshot) and pyxia's
``ShardEvents``. Two locks guard it, either or both:

- mutual TLS (``--internal-tls-client-auth`` with ``--internal-tls-trusted-ca-file``): gRPC
  itself refuses a connection whose client certificate the cluster's CA did not sign;
- a cluster secret (``--cluster-secret-file``): :class:`ClusterAuthInterceptor` runs before any
  handler and refuses, with UNAUTHENTICATED, a call that carries no fresh proof
  (:class:`~pyxia.security.cluster_auth.ClusterSecret`) for its exact method. The refused call
  reaches no handler and reads no request: it changes nothing.

The standard gRPC health service stays open on the internal port (liveness probes of
orchestrators; it tells nothing but SERVING / NOT_SERVING). Everything else, including services
added later (the test hooks), needs the proof.

The interceptor works once per call, never per message: a Replicate stream is checked when it
opens. The refusal reads no request; a caller of a bidirectional stream (Replicate) that is
still sending when it arrives may see INTERNAL ("Internal error from Core", a grpc-python
client race) instead of UNAUTHENTICATED: the server's log and counter tell what happened.

Refusals are logged at warning, at most one line per ``LOG_INTERVAL_S`` (with the count
of those not logged), so a flood of bad calls cannot flood the log; every refusal is counted in
``pyxia_server_internal_calls_refused{reason}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from pyxia.metrics import INTERNAL_CALLS_REFUSED
from pyxia.security.cluster_auth import METADATA_KEY, ClusterSecret
from pyxia.security.tls import ClientTls

log = logging.getLogger("pyxia.internal.auth")

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
LOG_INTERVAL_S = 10.0
REASONS = ("no", "malformed", "bad", "expired", "replayed")


def is_open(method: str) -> bool:
    """Whether ``method`` is served on the internal port without proof (health only)."""
    return method.startswith(OPEN_PREFIXES)


def proof_of(metadata: Any) -> str | None:
    """The membership proof in a call's invocation metadata, if any."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def reason_label(reason: str) -> str:
    """A bounded label for a refusal reason (``ClusterSecret.verify``'s first word)."""
    head = reason.split(" ", 1)[0]
    return head if head in REASONS else "other"


class RefusalLog:
    """Logs refused calls at warning, at most once per ``interval_s``; counts the rest."""

    def __init__(
        self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self.suppressed = 0
        self.lines = 0

    def refused(self, method: str, peer: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next:
                self.suppressed += 1
                return
            self._next = now + self.interval_s
            suppressed, self.suppressed = self.suppressed, 0
            self.lines += 1
        log.warning(
            "internal call refused: %s from %s: %s%s",
            method,
            peer,
            reason,
            f" ({suppressed} more refused since the last line)" if suppressed else "",
        )


class ClusterAuthInterceptor(grpc.aio.ServerInterceptor):
    """The internal server's gate: a call runs only with a fresh proof for its method."""

    def __init__(self, secret: ClusterSecret, refusals: RefusalLog | None = None) -> None:
        self.secret = secret
        self.refusals = refusals or RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        if is_open(method):
            return await continuation(handler_call_details)
        proof = proof_of(handler_call_details.invocation_metadata)
        reason = self.secret.verify(method, proof)
        if reason is None:
            return await continuation(handler_call_details)
        INTERNAL_CALLS_REFUSED.labels(reason_label(reason)).inc()
        return self._refusal(method, reason)

    def _refusal(self, method: str, reason: str) -> grpc.RpcMethodHandler[Any, Any]:
        refusals = self.refusals

        # A streaming handler answers any kind of call without reading a request.
        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            refusals.refused(method, context.peer(), reason)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"pyxia: {reason} for {method}: the internal port serves only members of "
                "the cluster (the cluster secret, or a certificate of the cluster's CA)",
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


# -- tools and tests: a blocking channel that proves membership -------------------------------


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the proof of membership to every call of a blocking channel."""

    def __init__(self, secret: ClusterSecret) -> None:
        self.secret = secret

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        method = d.method.decode() if isinstance(d.method, bytes) else d.method
        proof: tuple[str, str | bytes] = self.secret.sign(method)
        return _CallDetails(d, (*(d.metadata or ()), proof))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def internal_channel(
    address: str, tls: ClientTls | None = None, secret: ClusterSecret | None = None
) -> grpc.Channel:
    """A blocking channel to a data server's internal port for tools and tests: TLS when
    ``tls`` is given, a proof on every call when ``secret`` is."""
    ch = tls.sync_secure_channel(address) if tls is not None else grpc.insecure_channel(address)
    if secret is not None:
        ch = grpc.intercept_channel(ch, SigningInterceptor(secret))
    return ch
