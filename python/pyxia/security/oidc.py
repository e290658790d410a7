"""OIDC bearer-token authentication for the public port, as Oxia does it
(``--auth-provider-name oidc --auth-provider-params '{...}'``).

The parameters are Oxia's JSON (``oxiad/common/rpc/auth/oidc.go``): the legacy form
``{"allowedIssueURLs": "a,b", "allowedAudiences": "x,y", "userNameClaim": "sub"}`` or the
per-issuer form ``{"issuers": {"<url>": {"allowedAudiences": "x", "userNameClaim": "sub",
"staticKeyFile": "keys.pem"}}}``. At least one issuer, and audiences for each, are required.

Keys: an issuer with a ``staticKeyFile`` uses the public keys (or certificates) in that PEM
file; any other issuer's keys come from its discovery document
(``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must be the configured URL) and
the JWKS it names. They are fetched at start (an unreachable issuer stops the start, as in
Oxia), refreshed every ``refresh_interval_s`` and when a token names a key id the set lacks —
at most once per ``min_refresh_interval_s`` per issuer, so tokens with made-up key ids cannot
make the server hammer the issuer. Fetches run on the event loop with an async HTTP client and
a timeout; a call whose key is already known never waits for one.

A token is accepted when: its header names an asymmetric algorithm the key supports (never
``none``, never an HMAC: a public key is not a shared secret); the signature verifies; ``iss``
is a configured issuer; ``aud`` holds one of that issuer's audiences; ``exp`` is in the future
and ``nbf``/``iat`` not in the future (``LEEWAY_S`` of clock skew); the user-name claim is a
string. Signature and claim checks are PyJWT's.

Verified tokens are cached (bounded LRU of ``cache_size``), each until its ``exp`` or
``CACHE_TTL_S`` after verification, whichever is first: the per-call cost of a known token is
a dict lookup and a clock read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from pyxia.errors import Unauthenticated

log = logging.getLogger("pyxia.auth")

DEFAULT_USER_NAME_CLAIM = "sub"
LEEWAY_S = 30.0
CACHE_TTL_S = 300.0
DISCOVERY_PATH = "/.well-known/openid-configuration"

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGS = RSA_ALGS | frozenset(EC_ALGS_BY_CURVE.values()) | {"EdDSA", "ES256K"}


class AuthConfigError(ValueError):
    """Authentication options that cannot work; the message says which and why."""


# -- parameters (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted issuer: its URL (the ``iss`` claim), the audiences accepted from it, the claim
    that names the user, and optionally a PEM file of its public keys (no discovery then)."""

    url: str
    audiences: frozenset[str]
    user_name_claim: str = DEFAULT_USER_NAME_CLAIM
    static_key_file: Path | None = None


_LEGACY_KEYS = {"allowedIssueURLs", "allowedAudiences", "userNameClaim", "issuers"}
_ISSUER_KEYS = {"allowedAudiences", "userNameClaim", "staticKeyFile"}


def _audiences(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, str):
        raise AuthConfigError(f"{where}: allowedAudiences must be a comma-separated string")
    auds = frozenset(a.strip() for a in value.split(",") if a.strip())
    if not auds:
        raise AuthConfigError(f"{where}: allowedAudiences is empty (at least one is required)")
    return auds


def _claim(value: Any, where: str) -> str:
    if value is None or value == "":
        return DEFAULT_USER_NAME_CLAIM
    if not isinstance(value, str):
        raise AuthConfigError(f"{where}: userNameClaim must be a string")
    return value


def _issuer_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AuthConfigError(f"{where}: issuer {url!r} is not an http(s) URL")
    return url


def parse_oidc_params(text: str) -> list[IssuerConfig]:
    """Oxia's OIDC provider parameters (both forms) as issuer configurations."""
    if not text or not text.strip():
        raise AuthConfigError("--auth-provider-params is required with the oidc provider")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise AuthConfigError(f"--auth-provider-params is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise AuthConfigError("--auth-provider-params must be a JSON object")
    unknown = set(raw) - _LEGACY_KEYS
    if unknown:
        raise AuthConfigError(
            f"--auth-provider-params: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_LEGACY_KEYS))})"
        )
    issuers = raw.get("issuers") or {}
    if not isinstance(issuers, dict):
        raise AuthConfigError("--auth-provider-params: issuers must be an object keyed by URL")
    out: list[IssuerConfig] = []
    if issuers:
        for url, cfg in issuers.items():
            where = f"--auth-provider-params issuer {url!r}"
            if not isinstance(cfg, dict):
                raise AuthConfigError(f"{where}: must be an object")
            bad = set(cfg) - _ISSUER_KEYS
            if bad:
                raise AuthConfigError(
                    f"{where}: unknown key(s) {', '.join(sorted(bad))} "
                    f"(known: {', '.join(sorted(_ISSUER_KEYS))})"
                )
            if not url.strip():
                raise AuthConfigError("--auth-provider-params: an issuer URL is empty")
            key_file = cfg.get("staticKeyFile") or None
            if key_file is not None and not isinstance(key_file, str):
                raise AuthConfigError(f"{where}: staticKeyFile must be a path")
            out.append(
                IssuerConfig(
                    url=_issuer_url(url, where),
                    audiences=_audiences(cfg.get("allowedAudiences", ""), where),
                    user_name_claim=_claim(cfg.get("userNameClaim"), where),
                    static_key_file=Path(key_file) if key_file else None,
                )
            )
        return out
    urls = raw.get("allowedIssueURLs", "")
    if not isinstance(urls, str) or not urls.strip():
        raise AuthConfigError("--auth-provider-params: no issuer (set allowedIssueURLs or issuers)")
    where = "--auth-provider-params"
    auds = _audiences(raw.get("allowedAudiences", ""), where)
    claim = _claim(raw.get("userNameClaim"), where)
    for url in urls.split(","):
        if url.strip():
            out.append(IssuerConfig(_issuer_url(url, where), auds, claim))
    if not out:
        raise AuthConfigError("--auth-provider-params: allowedIssueURLs names no issuer")
    return out


# -- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    """A public key, its key id (None when the source gives none) and the algorithms a token
    signed with it may name."""

    key: Any
    kid: str | None
    algorithms: frozenset[str]


def algorithms_for(public_key: Any, declared: str | None = None) -> frozenset[str]:
    """The asymmetric algorithms a key may verify (``declared``: the JWK's ``alg``)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        family = RSA_ALGS
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        name = public_key.curve.name
        family = frozenset({EC_ALGS_BY_CURVE[name]} if name in EC_ALGS_BY_CURVE else ())
        if name == "secp256k1":
            family = frozenset({"ES256K"})
    elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        family = frozenset({"EdDSA"})
    else:
        family = frozenset()
    if declared is not None:
        return family & {declared}
    return family


def keys_from_jwks(doc: Any) -> list[VerificationKey]:
    """The usable signing keys of a JWKS document (others, e.g. encryption keys or symmetric
    ones, are skipped)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no keys list)")
    out: list[VerificationKey] = []
    for item in doc["keys"]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        if item.get("kty") == "oct":
            continue  # a shared secret never verifies tokens here
        try:
            jwk = jwt.PyJWK(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            log.warning("skipping an unusable JWKS key (kid %s): %s", item.get("kid"), e)
            continue
        algs = algorithms_for(jwk.key, item.get("alg"))
        if algs:
            out.append(VerificationKey(jwk.key, jwk.key_id, algs))
    return out


def keys_from_pem_file(path: Path) -> list[VerificationKey]:
    """Public keys and certificates in a PEM file (Oxia's ``staticKeyFile``)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AuthConfigError(f"cannot read static key file {path}: {e.strerror or e}") from None
    out: list[VerificationKey] = []
    marker = b"-----BEGIN "
    for chunk in data.split(marker)[1:]:
        block = marker + chunk
        kind = chunk.split(b"-----", 1)[0].decode(errors="replace")
        try:
            if kind == "CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(block).public_key()
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY", "EC PUBLIC KEY"):
                key = serialization.load_pem_public_key(block)
            else:
                continue
        except ValueError as e:
            raise AuthConfigError(f"static key file {path}: bad {kind} block: {e}") from None
        algs = algorithms_for(key)
        if algs:
            out.append(VerificationKey(key, None, algs))
    if not out:
        raise AuthConfigError(f"static key file {path} holds no usable public key")
    return out


# -- the authenticated caller ---------------------------------------------------------------------


@dataclass(eq=False)
class Principal:
    """A verified token's caller: the user name (the configured claim), every claim, and when
    the token expires (epoch seconds). ``grants`` caches what the access policy gives it per
    namespace."""

    name: str
    issuer: str
    claims: dict[str, Any]
    expires_at: float
    grants: dict[str, frozenset[str]] = field(default_factory=dict)


def bearer_token(header: str | None) -> str:
    """The token of an ``authorization`` metadata value (``Bearer <token>``; Oxia's server also
    accepts a bare token)."""
    if header is None or not header.strip():
        raise Unauthenticated(
            "oxia: unauthenticated: the call carries no bearer token "
            "(authorization metadata 'Bearer <token>')"
        )
    parts = header.strip().split(None, 1)
    value = parts[0]
    if value.lower() == "bearer":
        value = parts[1].strip() if len(parts) > 1 else ""
    elif len(parts) > 1:
        raise Unauthenticated(
            "oxia: unauthenticated: the authorization metadata is not a bearer token"
        )
    if not value:
        raise Unauthenticated("oxia: unauthenticated: empty bearer token")
    return value


# -- the authenticator ----------------------------------------------------------------------------


class _IssuerKeys:
    """The keys of one issuer, and their refreshing."""

    def __init__(self, config: IssuerConfig, authn: OidcAuthenticator) -> None:
        self.config = config
        self.authn = authn
        self.keys: list[VerificationKey] = []
        self.static = config.static_key_file is not None
        self.last_attempt = -1e18
        self.fetched_at = 0.0
        self._fetch: asyncio.Task[bool] | None = None

    def find(self, kid: str | None, alg: str) -> list[VerificationKey]:
        return [
            k
            for k in self.keys
            if alg in k.algorithms and (kid is None or k.kid is None or k.kid == kid)
        ]

    async def load(self) -> None:
        """First load: static keys, or discovery + JWKS (raises :class:`AuthConfigError`)."""
        if self.config.static_key_file is not None:
            self.keys = keys_from_pem_file(self.config.static_key_file)
            return
        try:
            await self._download()
        except (OSError, ValueError) as e:
            raise AuthConfigError(
                f"cannot load the keys of OIDC issuer {self.config.url}: {e}"
            ) from None

    async def _download(self) -> None:
        import httpx

        self.last_attempt = time.monotonic()
        url = self.config.url.rstrip("/") + DISCOVERY_PATH
        timeout = self.authn.fetch_timeout_s
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            try:
                r = await http.get(url)
                r.raise_for_status()
                disco = r.json()
                if not isinstance(disco, dict):
                    raise ValueError(f"{url} is not a discovery document")
                if disco.get("issuer") != self.config.url:
                    raise ValueError(
                        f"{url} names issuer {disco.get('issuer')!r}, not {self.config.url!r}"
                    )
                jwks_uri = disco.get("jwks_uri")
                if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in (
                    "http",
                    "https",
                ):
                    raise ValueError(f"{url} has no http(s) jwks_uri")
                r = await http.get(jwks_uri)
                r.raise_for_status()
                keys = keys_from_jwks(r.json())
            except httpx.HTTPError as e:
                raise OSError(f"{type(e).__name__}: {e}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"not JSON: {e}") from None
        if not keys:
            raise ValueError(f"the JWKS of {self.config.url} holds no usable signing key")
        self.keys = keys
        self.fetched_at = time.monotonic()
        log.info(
            "OIDC keys of %s loaded: %s",
            self.config.url,
            ",".join(sorted(k.kid or "-" for k in keys)),
        )

    async def _guarded_download(self) -> bool:
        try:
            await self._download()
            return True
        except (OSError, ValueError) as e:
            log.warning("refreshing the OIDC keys of %s failed: %s", self.config.url, e)
            return False

    def refresh(self) -> asyncio.Task[bool] | None:
        """Starts a fetch of the JWKS unless one runs or the last began less than
        ``min_refresh_interval_s`` ago; returns the fetch to wait for, if any."""
        if self.static:
            return None
        if self._fetch is not None and not self._fetch.done():
            return self._fetch
        if time.monotonic() - self.last_attempt < self.authn.min_refresh_interval_s:
            return None
        self.last_attempt = time.monotonic()
        self._fetch = asyncio.get_running_loop().create_task(
            self._guarded_download(), name=f"pyxia-oidc-refresh-{self.config.url}"
        )
        return self._fetch

    async def close(self) -> None:
        t, self._fetch = self._fetch, None
        if t is not None and not t.done():
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass


class OidcAuthenticator:
    """Verifies bearer tokens against the configured issuers. ``start``/``close``; closing
    twice is safe. ``cached`` is the hot path (no await); ``authenticate`` verifies a token not
    seen yet (awaiting a key refresh when its key id is new)."""

    def __init__(
        self,
        issuers: list[IssuerConfig],
        *,
        refresh_interval_s: float = 900.0,
        min_refresh_interval_s: float = 10.0,
        fetch_timeout_s: float = 10.0,
        cache_size: int = 10_000,
        leeway_s: float = LEEWAY_S,
    ) -> None:
        if not issuers:
            raise AuthConfigError("OIDC authentication needs at least one issuer")
        self.refresh_interval_s = refresh_interval_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.fetch_timeout_s = fetch_timeout_s
        self.cache_size = cache_size
        self.leeway_s = leeway_s
        self._issuers = {c.url: _IssuerKeys(c, self) for c in issuers}
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_params(cls, text: str, **kw: Any) -> OidcAuthenticator:
        return cls(parse_oidc_params(text), **kw)

    @property
    def issuers(self) -> list[IssuerConfig]:
        return [i.config for i in self._issuers.values()]

    async def start(self) -> None:
        """Loads every issuer's keys (raises :class:`AuthConfigError` when one cannot be) and
        starts the periodic refresh."""
        await asyncio.gather(*(i.load() for i in self._issuers.values()))
        if any(not i.static for i in self._issuers.values()):
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="pyxia-oidc-keys"
            )

    async def _refresh_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.refresh_interval_s)
            for i in list(self._issuers.values()):
                t = i.refresh()
                if t is not None:
                    await asyncio.shield(t)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for i in self._issuers.values():
            await i.close()
        self._cache.clear()

    # -- verification -----------------------------------------------------------------------------

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified recently and still valid, else None."""
        hit = self._cache.get(token)
        if hit is None:
            return None
        if time.time() >= hit[1]:
            del self._cache[token]
            return None
        self._cache.move_to_end(token)
        return hit[0]

    async def authenticate(self, token: str) -> Principal:
        """Verifies ``token`` (raises :class:`Unauthenticated` saying why)."""
        p = self.cached(token)
        if p is not None:
            return p
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"oxia: unauthenticated: malformed token ({e})") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGS:
            raise Unauthenticated(
                f"oxia: unauthenticated: token algorithm {alg!r} is not accepted "
                "(asymmetric signatures only)"
            )
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated(f"oxia: unauthenticated: unknown token issuer {iss!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("oxia: unauthenticated: malformed key id in the token header")
        keys = issuer.find(kid, alg)
        if not keys:
            fetch = issuer.refresh()
            if fetch is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(fetch), self.fetch_timeout_s)
                except TimeoutError:
                    pass
                keys = issuer.find(kid, alg)
            if not keys:
                raise Unauthenticated(
                    f"oxia: unauthenticated: no key of issuer {iss} matches the token "
                    f"(kid {kid!r}, alg {alg})"
                )
        principal = self._verify(token, alg, keys, issuer.config)
        self._remember(token, principal)
        return principal

    def _verify(
        self, token: str, alg: str, keys: list[VerificationKey], cfg: IssuerConfig
    ) -> Principal:
        claims: dict[str, Any] | None = None
        last: jwt.PyJWTError | None = None
        for k in keys:
            try:
                claims = jwt.decode(
                    token,
                    k.key,
                    algorithms=[alg],
                    audience=sorted(cfg.audiences),
                    issuer=cfg.url,
                    leeway=self.leeway_s,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError as e:
                last = e
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("oxia: unauthenticated: the token has expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("oxia: unauthenticated: the token is not valid yet") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated(
                    "oxia: unauthenticated: the token's audience is not allowed"
                ) from None
            except jwt.MissingRequiredClaimError as e:
                raise Unauthenticated(f"oxia: unauthenticated: {e}") from None
            except jwt.PyJWTError as e:
                raise Unauthenticated(f"oxia: unauthenticated: invalid token ({e})") from None
        if claims is None:
            raise Unauthenticated(
                f"oxia: unauthenticated: bad token signature ({last or 'no key verified it'})"
            )
        name = claims.get(cfg.user_name_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(
                f"oxia: unauthenticated: the token has no user name claim {cfg.user_name_claim!r}"
            )
        exp = float(claims["exp"])
        return Principal(name=name, issuer=cfg.url, claims=claims, expires_at=exp)

    def _remember(self, token: str, p: Principal) -> None:
        until = min(p.expires_at, time.time() + CACHE_TTL_S)
        cache = self._cache
        cache[token] = (p, until)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
