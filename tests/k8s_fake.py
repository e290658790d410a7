"""A fake of the few Kubernetes API endpoints the kubernetes metadata provider
uses: ConfigMap get/create/replace and coordination.k8s.io/v1 Lease
get/create/replace, with the API server's optimistic concurrency (a PUT whose
metadata.resourceVersion is stale -> 409 Conflict, a POST of an existing
object -> 409 AlreadyExists, a missing object -> 404 NotFound).

It runs a stdlib HTTP server on a loopback port chosen at runtime, in a thread.
Knobs for tests: ``block(identity)`` answers 503 to every request whose
User-Agent names that coordinator (a partition); ``mutate(...)`` changes an
object behind the clients' backs (another writer)."""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATHS = [
    (re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/?]+))?$"), "ConfigMap", "v1"),
    (
        re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?$"),
        "Lease",
        "coordination.k8s.io/v1",
    ),
]
# MicroTime as the API server parses it: RFC 3339 with exactly 6 fractional digits.
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


class FakeKubernetes:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.blocked: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, user agent)
        self._rv = 100
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    # -- test knobs --------------------------------------------------------------

    def block(self, identity: str) -> None:
        with self._lock:
            self.blocked.add(identity)

    def unblock(self, identity: str) -> None:
        with self._lock:
            self.blocked.discard(identity)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self.objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def mutate(
        self, kind: str, namespace: str, name: str, fn: Callable[[dict[str, Any]], None]
    ) -> str:
        """Applies ``fn`` to the stored object, as another writer would; returns
        the new resourceVersion."""
        with self._lock:
            obj = self.objects[(kind, namespace, name)]
            fn(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            return str(obj["metadata"]["resourceVersion"])

    # -- the API -------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        agent = h.headers.get("User-Agent", "")
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, path, agent))
            if any(agent.endswith("/" + ident) for ident in self.blocked):
                return self._reply(h, 503, _status(503, "ServiceUnavailable", "blocked by test"))
            for pattern, kind, api_version in _PATHS:  # noqa: B007 - used after the loop
                m = pattern.match(path)
                if m:
                    break
            else:
                return self._reply(h, 404, _status(404, "NotFound", f"no route {path}"))
            namespace, name = m.group(1), m.group(2)
            body = json.loads(raw) if raw else {}
            if method == "GET" and name:
                obj = self.objects.get((kind, namespace, name))
                if obj is None:
                    return self._reply(h, 404, _status(404, "NotFound", f"{kind} {name}"))
                return self._reply(h, 200, obj)
            if method == "POST" and not name:
                return self._create(h, kind, api_version, namespace, body)
            if method == "PUT" and name:
                return self._replace(h, kind, api_version, namespace, name, body)
            return self._reply(h, 405, _status(405, "MethodNotAllowed", method))

    def _validate(self, kind: str, body: dict[str, Any]) -> str | None:
        if kind == "Lease":
            spec = body.get("spec") or {}
            for field in ("acquireTime", "renewTime"):
                value = spec.get(field)
                if value is not None and not _MICRO_TIME.match(value):
                    return f"spec.{field}: {value!r} is not a MicroTime"
        if kind == "ConfigMap":
            for k, v in (body.get("data") or {}).items():
                if not isinstance(v, str):
                    return f"data.{k} must be a string"
        return None

    def _create(
        self,
        h: BaseHTTPRequestHandler,
        kind: str,
        api_version: str,
        namespace: str,
        body: dict[str, Any],
    ) -> None:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return self._reply(h, 422, _status(422, "Invalid", "metadata.name required"))
        if (err := self._validate(kind, body)) is not None:
            return self._reply(h, 422, _status(422, "Invalid", err))
        if (kind, namespace, name) in self.objects:
            return self._reply(h, 409, _status(409, "AlreadyExists", f"{kind} {name} exists"))
        if meta.get("resourceVersion"):
            return self._reply(
                h, 422, _status(422, "Invalid", "resourceVersion must not be set on create")
            )
        body["kind"], body["apiVersion"] = kind, api_version
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp="2026-01-01T00:00:00Z",
        )
        self.objects[(kind, namespace, name)] = body
        return self._reply(h, 201, body)

    def _replace(
        self,
        h: BaseHTTPRequestHandler,
        kind: str,
        api_version: str,
        namespace: str,
        name: str,
        body: dict[str, Any],
    ) -> None:
        current = self.objects.get((kind, namespace, name))
        if current is None:
            return self._reply(h, 404, _status(404, "NotFound", f"{kind} {name}"))
        if (err := self._validate(kind, body)) is not None:
            return self._reply(h, 422, _status(422, "Invalid", err))
        meta = body.setdefault("metadata", {})
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            return self._reply(
                h,
                409,
                _status(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {kind} {name!r}: the object has been"
                    " modified; please apply your changes to the latest version and try again",
                ),
            )
        body["kind"], body["apiVersion"] = kind, api_version
        meta.update(
            name=name,
            namespace=namespace,
            uid=current["metadata"]["uid"],
            creationTimestamp=current["metadata"]["creationTimestamp"],
            resourceVersion=self._next_rv(),
        )
        self.objects[(kind, namespace, name)] = body
        return self._reply(h, 200, body)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
