"""A real, local OIDC issuer for tests: an HTTP server (a thread on 127.0.0.1, port chosen at
runtime) serving a discovery document and the JWKS of keys generated here, and tokens signed
with them (PyJWT). Keys rotate on demand; every fetch is counted."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class SigningKey:
    def __init__(self, kind: str = "RS256") -> None:
        self.alg = kind
        self.kid = uuid.uuid4().hex[:12]
        if kind.startswith("ES"):
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        algo = (
            jwt.algorithms.ECAlgorithm if self.alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
        )
        d: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        d.update(kid=self.kid, use="sig", alg=self.alg)
        return d

    def public_pem(self) -> bytes:
        out: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return out


class Issuer:
    """``url`` is the issuer; ``token(...)`` mints a signed token; ``rotate()`` adds a key and
    signs with it from then on."""

    def __init__(self, kind: str = "RS256") -> None:
        self.keys = [SigningKey(kind)]
        self.discovery_fetches = 0
        self.jwks_fetches = 0
        self.delay_s = 0.0
        self.requests_started = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests_started += 1
                if issuer.delay_s:
                    time.sleep(issuer.delay_s)
                if self.path == "/.well-known/openid-configuration":
                    issuer.discovery_fetches += 1
                    body = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/jwks",
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = {"keys": [k.jwk() for k in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, kind: str | None = None, *, drop_old: bool = False) -> SigningKey:
        k = SigningKey(kind or self.key.alg)
        self.keys = [k] if drop_old else [*self.keys, k]
        return k

    def claims(
        self, sub: str = "alice", aud: str | list[str] = "oxia", **extra: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        c: dict[str, Any] = {"iss": self.url, "sub": sub, "aud": aud, "iat": now, "exp": now + 600}
        c.update(extra)
        return c

    def token(
        self,
        sub: str = "alice",
        *,
        key: SigningKey | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        k = key or self.key
        headers = {"kid": kid or k.kid}
        return jwt.encode(self.claims(sub, **claims), k.private, algorithm=k.alg, headers=headers)

    def params(self, audiences: str = "oxia", **extra: Any) -> str:
        cfg: dict[str, Any] = {"allowedAudiences": audiences, **extra}
        return json.dumps({"issuers": {self.url: cfg}})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
