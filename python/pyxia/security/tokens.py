"""A client's bearer token (Oxia's ``--auth-token`` / ``--auth-token-file``, and a provider
callable for tokens that are refreshed), sent as ``authorization: Bearer <token>`` call
metadata on every call.

Call metadata rather than gRPC call credentials: those refuse plaintext channels, and the
server decides whether a token without TLS is acceptable (it warns). Oxia's Go client sends
the token on plaintext channels too (``requireTransportSecurity`` false).

- a fixed token: the same metadata every call;
- a file: re-read when its ``(inode, size, mtime)`` changes (checked at most once per
  ``check_interval_s``), so a token rotated on disk is used without reconnecting;
- a provider: a callable returning the current token, called at most once per
  ``check_interval_s`` (it runs on the client's event loop: return a cached token, refresh it
  elsewhere). A provider that raises keeps the previous token, logged once per failure streak.

``generation`` changes whenever the token does: a long-lived stream opened with an older token
can be reopened with the new one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("pyxia.client")

AUTHORIZATION = "authorization"
DEFAULT_CHECK_INTERVAL_S = 1.0


class TokenError(ValueError):
    """A token option that cannot work (two sources, an unreadable or empty file)."""


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise TokenError(f"cannot read auth token file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TokenError(f"auth token file {path} is not text") from None
    if not token:
        raise TokenError(f"auth token file {path} is empty")
    return token


def _stat(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, -1, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _clean(token: str) -> str:
    token = token.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token or any(c in token for c in "\r\n"):
        raise TokenError("an auth token must be one non-empty line")
    return token


class TokenSource:
    """Where a client's token comes from; :meth:`metadata` is called for every call."""

    def __init__(
        self,
        token: str | None = None,
        token_file: str | Path | None = None,
        provider: Callable[[], str] | None = None,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
    ) -> None:
        given = [x for x in (token, token_file, provider) if x is not None]
        if len(given) != 1:
            raise TokenError(
                "give one of auth_token, auth_token_file or auth_token_provider"
                if given
                else "no auth token source given"
            )
        self._file = Path(token_file) if token_file is not None else None
        self._provider = provider
        self._interval = check_interval_s
        self._checked = time.monotonic()
        self._sig: tuple[int, int, int] | None = None
        self._failing = False
        self.generation = 0
        if token is not None:
            current = _clean(token)
        elif self._file is not None:
            self._sig = _stat(self._file)
            current = _clean(_read_token(self._file))
        else:
            assert provider is not None
            first = self._call_provider(None)
            if first is None:
                raise TokenError("the auth token provider gave no token")
            current = first
        self._set(current)

    @classmethod
    def of(
        cls,
        token: str | None = None,
        token_file: str | Path | None = None,
        provider: Callable[[], str] | None = None,
    ) -> TokenSource | None:
        """A source for the options given, or None when none is."""
        if token is None and token_file is None and provider is None:
            return None
        return cls(token, token_file, provider)

    def _set(self, token: str) -> None:
        self.token = token
        self._metadata = ((AUTHORIZATION, f"Bearer {token}"),)
        self.generation += 1

    def _call_provider(self, previous: str | None) -> str | None:
        assert self._provider is not None
        try:
            got = _clean(self._provider())
        except Exception as e:
            if not self._failing:
                log.warning("the auth token provider failed (keeping the previous token): %s", e)
            self._failing = True
            return previous
        self._failing = False
        return got

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The ``authorization`` metadata with the current token."""
        if self._file is None and self._provider is None:
            return self._metadata
        now = time.monotonic()
        if now - self._checked < self._interval:
            return self._metadata
        self._checked = now
        if self._file is not None:
            sig = _stat(self._file)
            if sig != self._sig:
                self._sig = sig
                try:
                    fresh = _clean(_read_token(self._file))
                except TokenError as e:
                    log.warning("keeping the previous auth token: %s", e)
                    return self._metadata
                if fresh != self.token:
                    self._set(fresh)
        else:
            got = self._call_provider(self.token)
            if got is not None and got != self.token:
                self._set(got)
        return self._metadata
