"""TLS for every gRPC port and connection, with Oxia's options.

One :class:`TlsOptions` describes one side of one kind of connection (Oxia's ``--tls-*``
for the public port, ``--internal-tls-*`` for the internal port, ``--peer-tls-*`` for the
connections a process opens to other data servers). A listener uses
:meth:`TlsOptions.server_credentials`; a dialer uses :class:`ClientTls`.

Rotation without restart: certificate, key and CA files are watched by their
``(inode, size, mtime)``. A listener picks up changed files at its next TLS handshake (gRPC's
dynamic server credentials, checked at most once per ``RELOAD_CHECK_S``); a dialer builds its
credentials anew when the files change, and the channel pools that use it open new channels
with them (:meth:`ClientTls.generation`). A changed file that does not load (a half-written
key, a certificate that does not match its key) is refused with one log line and the
previous credentials stay in use.

Invariants:
- TLS is on exactly when a certificate file is given, or (dialers) when a CA file is given, or
  ``enabled`` says so; a key without a certificate, or a certificate without its key, is a
  configuration error raised at start, never a silent downgrade to plaintext.
- Nothing below TLS 1.2 is ever negotiated (gRPC's own floor); versions gRPC cannot be told to
  enforce are refused with a clear error instead of being ignored.
- ``insecure_skip_verify`` on a dialer trusts whatever certificate the peer presents (it is
  pinned as the trust root for that address); it is for tests only and logs a warning.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("pyxia.tls")

TLS12 = 0x0303
TLS13 = 0x0304
RELOAD_CHECK_S = 1.0
PEER_CERT_FETCH_TIMEOUT_S = 3.0


class TlsConfigError(ValueError):
    """A TLS option that cannot work; the message says which and why."""


def parse_tls_version(value: str | int | None) -> int:
    """Oxia's uint16 form (771 = TLS 1.2, 772 = TLS 1.3, also 0x0303) or ``1.2``/``1.3``;
    0 / empty = the default."""
    if value is None or value == "" or value == 0:
        return 0
    if isinstance(value, int):
        v = value
    else:
        s = value.strip().lower()
        names = {"1.2": TLS12, "tls1.2": TLS12, "1.3": TLS13, "tls1.3": TLS13}
        if s in names:
            return names[s]
        try:
            v = int(s, 0)
        except ValueError:
            raise TlsConfigError(f"bad TLS version {value!r}: use 1.2, 1.3, 771 or 772") from None
    if v not in (0, TLS12, TLS13) and v < TLS12:
        raise TlsConfigError(f"TLS version 0x{v:04x} is below TLS 1.2 (0x0303): refused")
    if v not in (0, TLS12, TLS13):
        raise TlsConfigError(f"unknown TLS version 0x{v:04x}: use 771 (1.2) or 772 (1.3)")
    return v


def _file_signature(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append((0, -1, 0))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsConfigError(f"cannot read TLS {what} file {path}: {e.strerror or e}") from None
    if not data.strip():
        raise TlsConfigError(f"TLS {what} file {path} is empty")
    return data


def _check_pair(cert: bytes, key: bytes, cert_path: Path, key_path: Path) -> None:
    """Refuses a key that does not belong to the certificate (gRPC would only fail at the
    first handshake)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        c = x509.load_pem_x509_certificate(cert)
    except ValueError as e:
        msg = f"TLS certificate file {cert_path} holds no PEM certificate: {e}"
        raise TlsConfigError(msg) from None
    try:
        k = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise TlsConfigError(f"TLS key file {key_path} holds no unencrypted PEM key: {e}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if c.public_key().public_bytes(enc, pub) != k.public_key().public_bytes(enc, pub):
        raise TlsConfigError(f"TLS key file {key_path} does not match certificate {cert_path}")


def _check_ca(ca: bytes, path: Path) -> None:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(ca)
    except ValueError as e:
        raise TlsConfigError(f"TLS CA file {path} holds no PEM certificate: {e}") from None
    if not certs:
        raise TlsConfigError(f"TLS CA file {path} holds no PEM certificate")


@dataclass(frozen=True)
class TlsOptions:
    """Oxia's ``TLSOptions`` (``common/security/tls.go``), one per port or connection kind."""

    cert_file: Path | None = None
    key_file: Path | None = None
    trusted_ca_file: Path | None = None
    insecure_skip_verify: bool = False
    client_auth: bool = False
    server_name: str | None = None
    min_version: int = 0
    max_version: int = 0
    enabled: bool | None = None

    @property
    def is_enabled(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return self.cert_file is not None or self.trusted_ca_file is not None

    def validate(self, *, server: bool) -> None:
        """Raises :class:`TlsConfigError` for options that cannot work."""
        if not self.is_enabled:
            return
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsConfigError("TLS needs both a certificate file and a key file (or neither)")
        if server and self.cert_file is None:
            raise TlsConfigError("a TLS listener needs a certificate file and a key file")
        if server and self.client_auth and self.trusted_ca_file is None:
            raise TlsConfigError(
                "TLS client authentication needs the CA that signs client certificates "
                "(trusted CA file)"
            )
        lo, hi = self.min_version, self.max_version
        if lo and hi and hi < lo:
            raise TlsConfigError(f"TLS max version 0x{hi:04x} is below min version 0x{lo:04x}")
        # gRPC negotiates TLS 1.2 or 1.3 and offers no knob for either bound.
        if lo == TLS13:
            raise TlsConfigError("TLS min version 1.3 cannot be enforced by grpcio (1.2 is)")
        if hi == TLS12:
            raise TlsConfigError("TLS max version 1.2 cannot be enforced by grpcio (1.3 is)")
        if self.cert_file is not None and self.key_file is not None:
            cert = _read(self.cert_file, "certificate")
            key = _read(self.key_file, "key")
            _check_pair(cert, key, self.cert_file, self.key_file)
        if self.trusted_ca_file is not None:
            _check_ca(_read(self.trusted_ca_file, "CA"), self.trusted_ca_file)

    def _files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.trusted_ca_file) if p]

    # -- listeners ------------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a listener that reload the files when they change."""
        self.validate(server=True)
        return _ReloadingServerCredentials(self).credentials()

    # -- dialers --------------------------------------------------------------------------------

    def client(self) -> ClientTls | None:
        """A dialer's TLS (None when TLS is off)."""
        if not self.is_enabled:
            return None
        self.validate(server=False)
        return ClientTls(self)


class _ReloadingServerCredentials:
    def __init__(self, options: TlsOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature = _file_signature(options._files())
        self._refused: tuple[tuple[int, int, int], ...] | None = None

    def _config(self) -> Any:
        o = self.options
        assert o.cert_file is not None and o.key_file is not None
        cert = _read(o.cert_file, "certificate")
        key = _read(o.key_file, "key")
        _check_pair(cert, key, o.cert_file, o.key_file)
        ca = None
        if o.trusted_ca_file is not None:
            ca = _read(o.trusted_ca_file, "CA")
            _check_ca(ca, o.trusted_ca_file)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> Any:
        """Called by gRPC before each handshake: a new configuration, or None (unchanged)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < RELOAD_CHECK_S:
                return None
            self._checked = now
            sig = _file_signature(self.options._files())
            if sig == self._signature or sig == self._refused:
                return None
            try:
                config = self._config()
            except TlsConfigError as e:
                self._refused = sig
                log.error("TLS files changed but cannot be loaded, keeping the previous: %s", e)
                return None
            self._signature = sig
            self._refused = None
        log.info("TLS certificate reloaded: %s", self.options.cert_file)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(),
            self._fetch,
            require_client_authentication=self.options.client_auth,
        )


class ClientTls:
    """A dialer's TLS: channel credentials and options per target address, rebuilt when
    the files change (:meth:`generation` tells channel pools to reconnect)."""

    def __init__(self, options: TlsOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature = _file_signature(options._files())
        self._generation = 0
        self._creds: grpc.ChannelCredentials | None = None
        self._pinned: dict[str, tuple[bytes, str | None]] = {}
        if options.insecure_skip_verify:
            log.warning(
                "TLS certificate verification is OFF for outgoing connections "
                "(insecure-skip-verify): any server is trusted; use it only in tests"
            )

    def generation(self) -> int:
        """Bumped when the certificate, key or CA files changed (checked once a second)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_S:
                self._checked = now
                sig = _file_signature(self.options._files())
                if sig != self._signature:
                    self._signature = sig
                    self._generation += 1
                    self._creds = None
                    log.info("TLS client files changed: new connections use them")
            return self._generation

    def _key_pair(self) -> tuple[bytes | None, bytes | None]:
        o = self.options
        if o.cert_file is None or o.key_file is None:
            return None, None
        return _read(o.key_file, "key"), _read(o.cert_file, "certificate")

    def credentials(self, address: str) -> grpc.ChannelCredentials:
        key, cert = self._key_pair()
        if self.options.insecure_skip_verify:
            pinned, _ = self._pin(address)
            return grpc.ssl_channel_credentials(pinned, key, cert)
        with self._lock:
            if self._creds is None:
                ca = None
                if self.options.trusted_ca_file is not None:
                    ca = _read(self.options.trusted_ca_file, "CA")
                self._creds = grpc.ssl_channel_credentials(ca, key, cert)
            return self._creds

    def channel_options(self, address: str) -> list[tuple[str, Any]]:
        name = self.options.server_name
        if self.options.insecure_skip_verify:
            _, pinned_name = self._pin(address)
            name = name or pinned_name
        return [("grpc.ssl_target_name_override", name)] if name else []

    def secure_channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        """An asyncio channel to ``target`` with TLS."""
        return grpc.aio.secure_channel(
            target, self.credentials(target), options=[*options, *self.channel_options(target)]
        )

    def sync_secure_channel(
        self, target: str, options: list[tuple[str, Any]] | None = None
    ) -> grpc.Channel:
        return grpc.secure_channel(
            target,
            self.credentials(target),
            options=[*(options or []), *self.channel_options(target)],
        )

    def _pin(self, address: str) -> tuple[bytes, str | None]:
        """insecure-skip-verify: the peer's own certificate becomes the trust root."""
        with self._lock:
            got = self._pinned.get(address)
        if got is None:
            got = fetch_peer_certificate(address, self._key_pair())
            with self._lock:
                self._pinned[address] = got
        return got


def fetch_peer_certificate(
    address: str, key_pair: tuple[bytes | None, bytes | None] = (None, None)
) -> tuple[bytes, str | None]:
    """The PEM certificate a TLS server presents (unverified) and a name it is valid for."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    key, cert = key_pair
    if key is not None and cert is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            kp, cp = Path(d) / "k.pem", Path(d) / "c.pem"
            kp.write_bytes(key)
            cp.write_bytes(cert)
            ctx.load_cert_chain(cp, kp)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=PEER_CERT_FETCH_TIMEOUT_S) as s,
            ctx.wrap_socket(s, server_hostname=host) as t,
        ):
            der = t.getpeercert(binary_form=True)
    except (OSError, ValueError) as e:
        raise TlsConfigError(f"cannot fetch the TLS certificate of {address}: {e}") from None
    if der is None:
        raise TlsConfigError(f"{address} presented no TLS certificate")
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    return pem, _a_name_of(der)


def _a_name_of(der: bytes) -> str | None:
    from cryptography import x509

    c = x509.load_der_x509_certificate(der)
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return str(dns[0])
        ips = san.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
    except x509.ExtensionNotFound:
        pass
    cn = c.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else None


def peer_identity(context: Any) -> str | None:
    """The verified client certificate's subject of an RPC (mTLS), or None."""
    ac: dict[str, list[bytes]] = context.auth_context() or {}
    subj = ac.get("x509_subject") or ac.get("x509_common_name")
    return subj[0].decode() if subj else None
