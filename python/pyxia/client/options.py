"""Client options, with the defaults of Oxia's Go client (``oxia/options_client.go``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyxia.security.tls import ClientTls, TlsOptions
    from pyxia.security.tokens import TokenSource

DEFAULT_NAMESPACE = "default"
DEFAULT_BATCH_LINGER_S = 0.005
DEFAULT_MAX_REQUESTS_PER_BATCH = 1000
DEFAULT_MAX_BATCH_BYTES = 128 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_SESSION_TIMEOUT_S = 15.0


def _identity() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a client talks to the service.

    ``batch_linger_s`` bounds how long an operation waits for others to share its batch. A batch
    leaves earlier when it is full (``max_requests_per_batch`` operations or
    ``max_batch_bytes``) or when fewer than ``max_inflight_batches`` batches of its shard are on
    the wire (so a lone caller never waits for the linger, and a busy shard gets full batches).

    Security: ``tls`` is a :class:`~pyxia.security.tls.TlsOptions` (CA file, client certificate
    for mutual TLS, server name) or ``True`` for TLS with the system's trusted roots. A bearer
    token comes from one of ``auth_token``, ``auth_token_file`` (re-read when it changes) or
    ``auth_token_provider`` (a callable returning the current token, called at most once a
    second); it travels as ``authorization: Bearer <token>`` metadata on every call.
    """

    service_addresses: tuple[str, ...]
    namespace: str = DEFAULT_NAMESPACE
    batch_linger_s: float = DEFAULT_BATCH_LINGER_S
    max_requests_per_batch: int = DEFAULT_MAX_REQUESTS_PER_BATCH
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_inflight_batches: int = 2
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    session_keep_alive_s: float | None = None
    identity: str = field(default_factory=_identity)
    retry_initial_backoff_s: float = 0.02
    retry_max_backoff_s: float = 1.0
    max_message_bytes: int = 256 * 1024 * 1024
    tls: TlsOptions | bool | None = None
    auth_token: str | None = None
    auth_token_file: str | Path | None = None
    auth_token_provider: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if not self.service_addresses:
            raise ValueError("at least one service address is needed")
        if self.batch_linger_s < 0:
            raise ValueError("batch_linger_s must be >= 0")
        if self.max_requests_per_batch < 1 or self.max_batch_bytes < 1:
            raise ValueError("batch limits must be >= 1")
        if self.max_inflight_batches < 1:
            raise ValueError("max_inflight_batches must be >= 1")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")
        if not 2.0 <= self.session_timeout_s <= 300.0:
            raise ValueError("session_timeout_s must be between 2 and 300 seconds (Oxia's bounds)")
        sources = (self.auth_token, self.auth_token_file, self.auth_token_provider)
        if sum(x is not None for x in sources) > 1:
            raise ValueError("give one of auth_token, auth_token_file or auth_token_provider")

    def client_tls(self) -> ClientTls | None:
        """The dialer's TLS (None: plaintext)."""
        return client_tls(self.tls)

    def token_source(self) -> TokenSource | None:
        """The bearer token's source (None: no token); reads a token file now."""
        from pyxia.security.tokens import TokenSource

        return TokenSource.of(self.auth_token, self.auth_token_file, self.auth_token_provider)

    @property
    def keep_alive_interval_s(self) -> float:
        """Time between two heartbeats of a session: a fifth of its timeout by default, so four
        heartbeats in a row can be lost before the server expires it."""
        if self.session_keep_alive_s is not None:
            return self.session_keep_alive_s
        return self.session_timeout_s / 5.0


def addresses(service_address: str | Sequence[str]) -> tuple[str, ...]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` as a tuple of addresses."""
    if isinstance(service_address, str):
        items = service_address.split(",")
    else:
        items = list(service_address)
    out = tuple(a.strip() for a in items if a.strip())
    if not out:
        raise ValueError("at least one service address is needed")
    return out


def client_tls(tls: TlsOptions | bool | None) -> ClientTls | None:
    """``True``: TLS with the system's roots; a TlsOptions: those; None/False: plaintext."""
    from pyxia.security.tls import TlsOptions

    if tls is None or tls is False:
        return None
    if tls is True:
        tls = TlsOptions(enabled=True)
    return tls.client()
