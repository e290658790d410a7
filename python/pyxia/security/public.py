"""Who may call the public port, and what they may do there.

:class:`PublicAccess` joins the token authenticator (:mod:`pyxia.security.oidc`), the access
policy (:mod:`pyxia.security.policy`) and the migration-fields switch. With authentication on,
one server interceptor wraps every method of the public server — whatever service registered it
(the OxiaClient service under both names, the TSO, anything added later) — except the gRPC
health service, which stays open so load balancers and orchestrators can probe a server without
a token (it reveals serving status only). A method cannot be forgotten: the wrapping is by
interception, not by a list.

Per RPC: the ``authorization`` metadata (``Bearer <token>``) is verified once when the call
opens (a cache hit is a dict lookup); a refusal is ``UNAUTHENTICATED`` with the reason. The
caller (:class:`~pyxia.security.oidc.Principal`) is put in a context variable that the
handlers read through :meth:`PublicAccess.check` once they know the namespace (the namespace
of the shard the request targets). A stream does not outlive its token: each message received
(WriteStream) or sent (reads, notifications, assignments; whether the handler yields its
messages or writes them with ``context.write``) after the token's ``exp`` ends the
stream with ``UNAUTHENTICATED`` — writes received before are answered, the refused message is
not applied — so a client reopens it with a fresh token, and a user whose tokens are no longer
issued cannot keep writing on an old stream. An idle stream sends and accepts nothing, so it
is ended at its next message.

Without authentication every caller may read and write everything; the privileged fields
(``override_version_id``, ``override_modifications_count``, ``include_internal_keys``) are
refused unless ``allow_migration_fields`` is set, with or without authentication.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter

from pyxia.common.grpc_errors import abort
from pyxia.errors import PermissionDenied, Unauthenticated
from pyxia.security.oidc import AuthConfigError, OidcAuthenticator, Principal, bearer_token
from pyxia.security.policy import (
    INTERNAL_KEYS,
    MIGRATE,
    READ,
    WRITE,
    AccessPolicy,
    PolicyError,
    load_policy,
)

log = logging.getLogger("pyxia.auth")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods served without a token: health probes."""

MAX_GRANTS_MEMO = 64
PROVIDERS = ("oidc",)

REFUSED = Counter(
    "pyxia_public_auth_refused",
    "Public calls refused for want of a valid token (UNAUTHENTICATED) or of a grant",
    ["code"],
)

_CALLER: ContextVar[Principal | None] = ContextVar("pyxia_public_caller", default=None)


@dataclass(frozen=True)
class PublicAuthOptions:
    """The public port's authentication and authorization settings (Oxia's
    ``--auth-provider-name``/``--auth-provider-params``; pyxia's ``--auth-policy-file`` and
    ``--allow-migration-fields``)."""

    provider: str | None = None
    provider_params: str = ""
    policy_file: Path | None = None
    allow_migration_fields: bool = False
    key_refresh_interval_s: float = 900.0
    key_min_refresh_interval_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.provider)


def _who(p: Principal | None) -> str:
    return f"user {p.name!r}" if p is not None else "an unauthenticated caller"


class PublicAccess:
    """Authentication and authorization of the public port. ``start``/``close``."""

    def __init__(
        self,
        authenticator: OidcAuthenticator | None = None,
        policy: AccessPolicy | None = None,
        *,
        allow_migration_fields: bool = False,
    ) -> None:
        if policy is not None and authenticator is None:
            raise AuthConfigError("an access policy needs authentication (--auth-provider-name)")
        self.authenticator = authenticator
        self.policy = policy or AccessPolicy.default()
        self.allow_migration_fields = allow_migration_fields
        self.open = authenticator is None
        extra = {MIGRATE, INTERNAL_KEYS} if allow_migration_fields else set()
        self._open_grants = frozenset({READ, WRITE, *extra})

    @classmethod
    def from_options(cls, o: PublicAuthOptions) -> PublicAccess:
        """Parses the options (raises :class:`AuthConfigError`); keys load at :meth:`start`."""
        authn: OidcAuthenticator | None = None
        if o.provider:
            if o.provider not in PROVIDERS:
                raise AuthConfigError(
                    f"unsupported --auth-provider-name {o.provider!r} (supported: oidc)"
                )
            authn = OidcAuthenticator.from_params(
                o.provider_params,
                refresh_interval_s=o.key_refresh_interval_s,
                min_refresh_interval_s=o.key_min_refresh_interval_s,
            )
        elif o.provider_params:
            raise AuthConfigError("--auth-provider-params needs --auth-provider-name")
        policy = None
        if o.policy_file is not None:
            if authn is None:
                raise AuthConfigError("--auth-policy-file needs --auth-provider-name")
            try:
                policy = load_policy(o.policy_file)
            except PolicyError as e:
                raise AuthConfigError(str(e)) from None
        return cls(authn, policy, allow_migration_fields=o.allow_migration_fields)

    async def start(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.start()

    async def close(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.close()

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The public server's interceptors (none without authentication)."""
        return [] if self.open else [AuthInterceptor(self)]

    # -- authorization (called by the handlers) ---------------------------------------------------

    def grants(self, namespace: str) -> frozenset[str]:
        """What the current caller may do in ``namespace``."""
        p = _CALLER.get()
        if p is None:
            if self.open:
                return self._open_grants
            raise Unauthenticated("oxia: unauthenticated: the call was not authenticated")
        g = p.grants.get(namespace)
        if g is None:
            g = self.policy.grants(p.name, p.claims, namespace)
            if self.allow_migration_fields:
                extra = set()
                if WRITE in g:
                    extra.add(MIGRATE)
                if READ in g:
                    extra.add(INTERNAL_KEYS)
                g = g | extra
            if len(p.grants) < MAX_GRANTS_MEMO:
                p.grants[namespace] = g
        return g

    def has_any(self, namespace: str) -> bool:
        return bool(self.grants(namespace))

    def check(self, namespace: str, action: str) -> None:
        """Raises :class:`PermissionDenied` unless the caller may do ``action`` in
        ``namespace``."""
        if self.open and action in self._open_grants:
            return
        if action not in self.grants(namespace):
            REFUSED.labels("PERMISSION_DENIED").inc()
            raise PermissionDenied(_denied(_CALLER.get(), action, namespace))

    def check_any(self, namespace: str) -> None:
        """Raises :class:`PermissionDenied` unless the caller has some grant in
        ``namespace``."""
        if self.open:
            return
        if not self.grants(namespace):
            REFUSED.labels("PERMISSION_DENIED").inc()
            raise PermissionDenied(
                f"oxia: permission denied: {_who(_CALLER.get())} has no access to namespace "
                f"{namespace!r}"
            )


def _denied(p: Principal | None, action: str, namespace: str) -> str:
    what = {
        READ: "read",
        WRITE: "write",
        MIGRATE: "use override_version_id / override_modifications_count in",
        INTERNAL_KEYS: "list internal keys (include_internal_keys) of",
    }.get(action, action)
    hint = ""
    if action in (MIGRATE, INTERNAL_KEYS):
        hint = (
            " (privileged: granted by the access policy, or to everyone by "
            "--allow-migration-fields)"
        )
    return f"oxia: permission denied: {_who(p)} may not {what} namespace {namespace!r}{hint}"


# -- the interceptor ------------------------------------------------------------------------------

Ctx = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every public method (but health) so it runs only for a verified caller."""

    def __init__(self, access: PublicAccess) -> None:
        assert access.authenticator is not None
        self.access = access
        self.authenticator = access.authenticator
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = hit[1]
            return wrapped
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def authenticate(self, context: Ctx) -> Principal:
        """The caller of the RPC, or the RPC is ended with UNAUTHENTICATED."""
        header: str | None = None
        for item in context.invocation_metadata() or ():
            if item[0] == "authorization":
                v = item[1]
                header = v if isinstance(v, str) else v.decode(errors="replace")
                break
        try:
            token = bearer_token(header)
            p = self.authenticator.cached(token)
            if p is None:
                p = await self.authenticator.authenticate(token)
        except Unauthenticated as e:
            REFUSED.labels("UNAUTHENTICATED").inc()
            log.debug("refused a call from %s: %s", context.peer(), e)
            await abort(context, e)
            raise AssertionError("unreachable") from None
        _CALLER.set(p)
        return p

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        h: Any = handler
        authenticate = self.authenticate
        if h.unary_unary is not None:
            inner_uu = h.unary_unary
            _require_async(inner_uu, method, generator=False)

            async def unary_unary(request: Any, context: Ctx) -> Any:
                await authenticate(context)
                return await inner_uu(request, context)

            out: Any = h._replace(unary_unary=unary_unary)
        elif h.unary_stream is not None and inspect.iscoroutinefunction(h.unary_stream):
            # A handler that sends with ``context.write`` (GetNotifications: it bounds how
            # long a send may wait): each write checks the token's expiry.
            inner_uw = h.unary_stream

            async def unary_stream_writer(request: Any, context: Ctx) -> None:
                p = await authenticate(context)
                await inner_uw(request, _ExpiringWrites(context, p))

            out = h._replace(unary_stream=unary_stream_writer)
        elif h.unary_stream is not None:
            inner_us = h.unary_stream
            _require_async(inner_us, method, generator=True)

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                p = await authenticate(context)
                async for item in _until_expiry(inner_us(request, context), p, context):
                    yield item

            out = h._replace(unary_stream=unary_stream)
        elif h.stream_unary is not None:
            inner_su = h.stream_unary
            _require_async(inner_su, method, generator=False)

            async def stream_unary(requests: AsyncIterator[Any], context: Ctx) -> Any:
                p = await authenticate(context)
                try:
                    return await inner_su(_incoming_until_expiry(requests, p), context)
                except Unauthenticated as e:
                    await abort(context, e)

            out = h._replace(stream_unary=stream_unary)
        else:
            inner_ss = h.stream_stream
            _require_async(inner_ss, method, generator=True)

            async def stream_stream(
                requests: AsyncIterator[Any], context: Ctx
            ) -> AsyncIterator[Any]:
                p = await authenticate(context)
                gen = inner_ss(_incoming_until_expiry(requests, p), context)
                async for item in _until_expiry(gen, p, context):
                    yield item

            out = h._replace(stream_stream=stream_stream)
        return out  # type: ignore[no-any-return]


def _require_async(fn: Any, method: str, *, generator: bool) -> None:
    ok = inspect.isasyncgenfunction(fn) if generator else inspect.iscoroutinefunction(fn)
    if not ok:
        raise TypeError(
            f"public method {method} cannot be authenticated: its handler is not an async "
            f"{'generator' if generator else 'coroutine'} function"
        )


def _expired() -> Unauthenticated:
    return Unauthenticated("oxia: unauthenticated: the token has expired (open a new stream)")


async def _until_expiry(
    gen: AsyncGenerator[Any, None], p: Principal, context: Ctx
) -> AsyncIterator[Any]:
    """The items of ``gen`` until the token expires (then UNAUTHENTICATED). ``gen`` is closed
    when this ends, however it ends (its cleanup runs now, not when it is collected)."""
    exp = p.expires_at
    try:
        async with contextlib.aclosing(gen):
            async for item in gen:
                if time.time() >= exp:
                    await abort(context, _expired())
                yield item
    except Unauthenticated as e:  # raised by an expired request stream
        await abort(context, e)


class _ExpiringWrites:
    """A servicer context whose ``write`` ends the stream with UNAUTHENTICATED once the
    token has expired (what :func:`_until_expiry` does for a generator handler); every other
    attribute is the wrapped context's."""

    __slots__ = ("_context", "_expires_at")

    def __init__(self, context: Ctx, p: Principal) -> None:
        self._context = context
        self._expires_at = p.expires_at

    async def write(self, message: Any) -> None:
        if time.time() >= self._expires_at:
            await abort(self._context, _expired())
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _incoming_until_expiry(requests: AsyncIterator[Any], p: Principal) -> AsyncIterator[Any]:
    """The messages of a request stream; one arriving after the token expired ends it."""
    exp = p.expires_at
    async for m in requests:
        if time.time() >= exp:
            raise _expired()
        yield m
