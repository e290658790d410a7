"""Proof of cluster membership on internal calls when mutual TLS is off: a shared secret.

Every process of a cluster (data servers, coordinators) reads the same secret from a file
(``--cluster-secret-file``, mode 0600). An internal call carries, in the ``x-pyxia-cluster-auth``
metadata, ``v1.<unix ms>.<nonce>.<mac>`` where ``mac = HMAC-SHA256(secret,
"v1|<method>|<unix ms>|<nonce>")``: the secret itself never crosses the wire, a proof is bound to
the one method it was made for, it expires after ``MAX_SKEW_MS`` and a server accepts each
nonce once (a replayed call is refused).

What it does not do: encrypt. On a network where someone can read or alter traffic between the
nodes, use mutual TLS on the internal port (docs/security.md).

Invariants:
- :meth:`ClusterSecret.verify` accepts a proof only if its MAC matches (compared in constant
  time), its clock is within ``MAX_SKEW_MS`` of the verifier's, and its nonce was not seen in
  that window; the nonce memory is bounded (oldest dropped first, and a proof older than the
  oldest remembered nonce is refused as if replayed).
- A secret file readable by group or others, empty, or shorter than ``MIN_SECRET_BYTES`` is
  refused at start with a message naming the file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

METADATA_KEY = "x-pyxia-cluster-auth"
VERSION = "v1"
MIN_SECRET_BYTES = 16
MAX_SKEW_MS = 60_000
MAX_REMEMBERED_NONCES = 200_000


class SecretFileError(ValueError):
    """The secret file cannot be used; the message names it and says why."""


def check_private_file(path: Path, what: str) -> None:
    """Refuses a secret file that group or others can read or write (like ssh does)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SecretFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretFileError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
        )


def generate_secret_file(path: Path) -> None:
    """Writes a new random secret (256 bits, hex) with mode 0600; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


class ClusterSecret:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretFileError(
                f"the cluster secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
            )
        self._key = secret
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._forgotten_before = 0  # proofs older than this may have been forgotten

    @classmethod
    def from_file(cls, path: Path) -> ClusterSecret:
        check_private_file(path, "cluster secret file")
        try:
            data = path.read_bytes().strip()
        except OSError as e:
            raise SecretFileError(f"cannot read cluster secret file {path}: {e}") from None
        if not data:
            raise SecretFileError(f"cluster secret file {path} is empty")
        try:
            return cls(data)
        except SecretFileError as e:
            raise SecretFileError(f"cluster secret file {path}: {e}") from None

    def _mac(self, method: str, ts: int, nonce: str) -> str:
        msg = f"{VERSION}|{method}|{ts}|{nonce}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, method: str, now_ms: int | None = None) -> tuple[str, str]:
        """The metadata item proving membership for one call of ``method``
        (``/package.Service/Method``)."""
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        nonce = secrets.token_hex(12)
        return METADATA_KEY, f"{VERSION}.{ts}.{nonce}.{self._mac(method, ts, nonce)}"

    def verify(self, method: str, proof: str | None, now_ms: int | None = None) -> str | None:
        """None if ``proof`` is a fresh, valid proof for ``method``; else why not."""
        if not proof:
            return "no cluster credentials"
        parts = proof.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            return "malformed cluster credentials"
        _, ts_s, nonce, mac = parts
        try:
            ts = int(ts_s)
        except ValueError:
            return "malformed cluster credentials"
        if not (0 < len(nonce) <= 64) or len(mac) != 64:
            return "malformed cluster credentials"
        if not hmac.compare_digest(mac, self._mac(method, ts, nonce)):
            return "bad cluster credentials"
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now - ts) > MAX_SKEW_MS:
            return f"expired cluster credentials (clock {now - ts:+d} ms apart)"
        with self._lock:
            self._expire(now)
            if nonce in self._seen or ts < self._forgotten_before:
                return "replayed cluster credentials"
            self._seen[nonce] = ts
        return None

    def _expire(self, now: int) -> None:
        seen = self._seen
        while seen:
            _, ts = next(iter(seen.items()))
            if now - ts > MAX_SKEW_MS:
                seen.popitem(last=False)
            elif len(seen) >= MAX_REMEMBERED_NONCES:
                seen.popitem(last=False)
                self._forgotten_before = max(self._forgotten_before, ts + 1)
            else:
                break
