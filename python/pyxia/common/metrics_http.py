"""The Prometheus endpoint of every pyxia process (``--metrics-addr``): ``/metrics`` and nothing
else.

prometheus_client's own ``start_http_server`` answers the exposition on every path; this one
puts its WSGI app behind a check, served by the standard library's WSGI server with a thread
per request (as prometheus_client does).

Invariants:
- ``GET`` or ``HEAD /metrics`` (any query string) gets the exposition; ``HEAD`` gets its headers
  without a body.
- Any other path is 404, any other method on ``/metrics`` is 405 (``Allow: GET, HEAD``); no
  request reaches prometheus_client's app otherwise.
- Requests are not logged; a request thread never outlives the process (daemon threads).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

METRICS_PATH = "/metrics"
ALLOWED_METHODS = ("GET", "HEAD")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def only_metrics(app: WsgiApp) -> WsgiApp:
    """``app`` behind the path and method check."""

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _answer(start_response, "404 Not Found", b"not found\n")
        method = environ.get("REQUEST_METHOD", "")
        if method not in ALLOWED_METHODS:
            return _answer(
                start_response,
                "405 Method Not Allowed",
                b"method not allowed\n",
                [("Allow", ", ".join(ALLOWED_METHODS))],
            )
        if method == "HEAD":
            body = app({**environ, "REQUEST_METHOD": "GET"}, start_response)
            close = getattr(body, "close", None)
            if close is not None:
                close()
            return [b""]
        return app(environ, start_response)

    return guarded


def _answer(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged."""


class MetricsServer:
    """A running endpoint; :meth:`close` stops it."""

    def __init__(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        server_class = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(
                host,
                int(port),
                only_metrics(make_wsgi_app()),
                server_class,
                handler_class=_QuietHandler,
            )
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise OSError(f"cannot listen on metrics address {addr}: {reason}") from e
        self.port = int(self._httpd.server_port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
